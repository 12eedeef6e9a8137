"""napari's own ways in: File ▸ Open Folder on a run folder reads it with rMFN (napari's
reader preference, :mod:`rmfn_napari._reader_preference`), and the demo
(scripts/launch_napari.py) docks the widgets the Plugins ▸ rMFN menu opens, not copies."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def napari_settings(monkeypatch):
    """napari's settings in memory only (no file), fresh for this test."""
    import napari.settings
    from napari.settings import NapariSettings

    settings = NapariSettings(config_path=None)
    monkeypatch.setattr(napari.settings, "_SETTINGS", settings)
    return settings


def _fit_run(folder: Path) -> Path:
    """A small fit-image run folder: two scales with spectra and metrics.json."""
    import tifffile

    folder.mkdir(parents=True)
    for k in (1, 2):
        tifffile.imwrite(folder / f"scale_{k}.tif", np.full((8, 8), k, np.float32))
        tifffile.imwrite(folder / f"spectrum_{k}.tif", np.zeros((8, 8), np.float32))
    (folder / "metrics.json").write_text(json.dumps({"train_shape": [8, 8], "eval_shape": [8, 8]}))
    return folder


def test_open_folder_on_a_run_folder_uses_rmfns_reader(napari_settings, make_napari_viewer,
                                                       tmp_path):
    """``viewer.open(path, plugin=None)`` is what File ▸ Open Folder and drag-and-drop do
    (before napari's "Choose reader" dialog). Two installed readers accept folders (napari's
    builtins and rMFN), so without a preference napari cannot choose; once rMFN has opened the
    folder ("Open run…" here, or napari's dialog), the folder's preference names rMFN and the
    next Open Folder reads it with rMFN: its layers, named as the live run's."""
    from napari.errors import MultipleReaderError
    from napari.plugins.utils import get_preferred_reader

    from rmfn_napari._reader_preference import folder_preference_key
    from rmfn_napari._widgets.open_run import open_run_folder

    run = _fit_run(tmp_path / "runs" / "fit-1")
    viewer = make_napari_viewer()
    with pytest.raises(MultipleReaderError):
        viewer.open(str(run), plugin=None)
    assert get_preferred_reader(str(run)) is None
    open_run_folder(viewer, run)
    assert napari_settings.plugins.extension2reader == {folder_preference_key(run): "rmfn-napari"}
    assert get_preferred_reader(str(run)) == "rmfn-napari"
    viewer.layers.clear()
    layers = viewer.open(str(run), plugin=None)
    assert [layer.name for layer in layers] == ["rMFN scale 1", "rMFN spectrum 1", "rMFN scale 2",
                                                "rMFN spectrum 2"]
    np.testing.assert_array_equal(viewer.layers["rMFN scale 2"].data, 2.0)
    # another folder is not claimed: napari still asks there
    other = _fit_run(tmp_path / "runs" / "fit-2")
    with pytest.raises(MultipleReaderError):
        viewer.open(str(other), plugin=None)


def test_the_reader_remembers_rmfn_for_the_folder_and_keeps_a_users_choice(napari_settings,
                                                                           tmp_path):
    """Reading a run folder with rMFN (napari's dialog, or ``plugin="rmfn-napari"``) saves the
    folder's preference; a preference the user saved for that folder is left alone."""
    from rmfn_napari._reader import get_reader
    from rmfn_napari._reader_preference import folder_preference_key

    run = _fit_run(tmp_path / "fit")
    get_reader(str(run))(str(run))
    assert napari_settings.plugins.extension2reader == {folder_preference_key(run): "rmfn-napari"}
    mine = _fit_run(tmp_path / "mine")
    napari_settings.plugins.extension2reader = {folder_preference_key(mine): "napari"}
    get_reader(str(mine))(str(mine))
    assert napari_settings.plugins.extension2reader[folder_preference_key(mine)] == "napari"


def _launch_module():
    spec = importlib.util.spec_from_file_location("launch_napari", REPO / "scripts" / "launch_napari.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_docks_the_widgets_the_plugins_menu_opens(make_napari_viewer, qtbot, monkeypatch):
    """The demo's docks carry the menu's names ("Reconstruct (cryo-EM) (rMFN)"), so choosing
    Plugins ▸ rMFN ▸ Reconstruct (cryo-EM) hides and shows the demo's widget: one dock each."""
    import napari
    from napari._app_model import get_app_model
    from qtpy.QtWidgets import QDockWidget

    launch = _launch_module()
    monkeypatch.setattr(napari, "Viewer", lambda **kw: make_napari_viewer(show=True))
    viewer, rec, fit = launch.open_viewer(samples=False)
    main = viewer.window._qt_window
    assert launch.menu_dock_name(launch.RECONSTRUCT) == "Reconstruct (cryo-EM) (rMFN)"
    assert viewer.window.dock_widgets["Reconstruct (cryo-EM) (rMFN)"] is rec
    assert viewer.window.dock_widgets["Fit image (2D) (rMFN)"] is fit

    def copies(title: str) -> int:
        return sum(title in d.windowTitle() for d in main.findChildren(QDockWidget))

    app = get_app_model()
    for command, widget in (("rmfn-napari.reconstruct_widget", rec),
                            ("rmfn-napari.fit_image_widget", fit)):
        app.commands.execute_command(command).result()  # the menu's action
        qtbot.wait(50)
        assert copies("Reconstruct") == 1 and copies("Fit image") == 1
        assert not rec.dock.isVisible() if widget is rec else not fit.dock.isVisible()
        app.commands.execute_command(command).result()
        qtbot.wait(50)
        assert widget.dock.isVisible() and copies("Reconstruct") == 1


def test_a_widget_run_makes_its_folder_open_with_rmfn(napari_settings, make_napari_viewer, qtbot,
                                                      tmp_path):
    """A run started from the widget names rMFN as its folder's reader at once, so the folder
    opens with rMFN from File ▸ Open Folder later (in this napari or the next)."""
    from napari.plugins.utils import get_preferred_reader

    from rmfn_napari._widgets import FitImageWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="img")
    w = FitImageWidget(viewer)
    qtbot.addWidget(w)
    out = tmp_path / "widget-run"
    w.out_dir.set_path(str(out))
    w.schedule.setText("2,2")
    w.start()
    qtbot.waitUntil(lambda: not w.runner.busy, timeout=60000)
    assert get_preferred_reader(str(out)) == "rmfn-napari"
