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


def test_no_install_path_puts_pyqt5_into_the_users_environment():
    """qtpy picks PyQt5 over PyQt6 whenever both are installed and QT_API is unset, so neither
    the package's dependencies nor any of its extras (what scripts/install.sh installs) may
    name PyQt5; the tests' PyQt5 pass installs it into a folder of its own."""
    import re
    from pathlib import Path

    import pytest

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")

    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        requirements += extra
    names = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements}
    assert "pyqt6" in names
    assert not names & {"pyqt5", "pyside2", "pyside6"}, names
    run_tests = (repo / "scripts" / "run_tests.sh").read_text()
    pip_lines = [line for line in run_tests.splitlines() if "pip install" in line]
    assert all("--target" in line for line in pip_lines if "PYQT5" in line.upper()), pip_lines


def test_the_demo_starts_napari_on_pyqt6_even_with_pyqt5_installed():
    """scripts/launch_napari.py sets QT_API=pyqt6 unless the user chose: in this test
    environment PyQt5 is importable too, and qtpy's own default would pick it."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k not in ("QT_API", "PYTEST_QT_API")}
    code = ("import importlib.util as u; s = u.spec_from_file_location('launch', "
            "'scripts/launch_napari.py'); m = u.module_from_spec(s); s.loader.exec_module(m); "
            "import qtpy; print(qtpy.API_NAME)")
    out = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "PyQt6"
