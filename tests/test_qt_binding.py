"""The Qt binding in use is the one the test run asked for (scripts/run_tests.sh runs the GUI
tests under PyQt6 and again under PyQt5): qtpy (napari's), pytest-qt and the viewer's window
must agree, or a "PyQt5 run" could silently be a PyQt6 one."""

from __future__ import annotations

import os


def test_qtpy_pytest_qt_and_the_viewer_use_the_binding_asked_for(make_napari_viewer):
    import qtpy
    from pytestqt.qt_compat import qt_api

    wanted = os.environ["QT_API"].lower()
    assert qtpy.API_NAME.lower() == wanted
    assert qt_api.pytest_qt_api == wanted
    viewer = make_napari_viewer()
    window_module = type(viewer.window._qt_window).__mro__[1].__module__  # QMainWindow's module
    assert window_module.lower().startswith(wanted)
