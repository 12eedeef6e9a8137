"""Open napari with the rMFN plugin docked, on the bundled samples.

    python scripts/launch_napari.py                 # the interactive app (needs a display)
    xvfb-run -a -s "-screen 0 1366x768x24" python scripts/launch_napari.py --screenshots docs/screenshots
                                                    # tiny runs, then README screenshots, exit

The viewer opens with both dock widgets (Plugins ▸ rMFN ▸ "Reconstruct (cryo-EM)" and
"Fit image (2D)", tabbed, under the menu's own dock names: the menu shows and hides these
rather than making second copies), the 1OL5 32³ map (2 Å voxels) and the astronaut test
image. In the Reconstruct tab, Start simulates a particle stack from the bundled 1OL5 map and
reconstructs it; the FSC and pose-error plots dock themselves on the right.

With ``--screenshots DIR`` the script runs, in a 1366×768 window, a short fit of the astronaut
and a tiny reconstruction, then reopens the reconstruction's folder in a fresh viewer with
"Open run…"; it saves ``DIR/fit_image.png``, ``DIR/reconstruct.png``, ``DIR/reopened.png``
(whole window) and ``DIR/fsc.png`` / ``DIR/pose_errors.png`` (the reopened run's plots), and
exits.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# PyQt6, the binding the napari extra installs: qtpy would choose a PyQt5 left in the
# environment (it tries PyQt5 first when QT_API is unset), with napari's deprecation warning.
os.environ.setdefault("QT_API", "pyqt6")

PLUGIN = "rmfn-napari"
RECONSTRUCT = "Reconstruct (cryo-EM)"
FIT_IMAGE = "Fit image (2D)"


def open_viewer(size=(1366, 768), samples=True):
    """A napari viewer with the samples loaded and both rMFN widgets docked (tabbed).

    Returns ``(viewer, reconstruct_widget, fit_image_widget)``.
    """
    import napari

    viewer = napari.Viewer(title="rMFN — napari")
    viewer.window._qt_window.resize(*size)
    if samples:
        viewer.open_sample(PLUGIN, "astronaut")
        viewer.open_sample(PLUGIN, "1ol5_32")
    fit_dock, fit = dock_plugin_widget(viewer, FIT_IMAGE)
    rec_dock, rec = dock_plugin_widget(viewer, RECONSTRUCT, tabify=True)
    fit.dock, rec.dock = fit_dock, rec_dock
    return viewer, rec, fit


def menu_dock_name(widget_name: str) -> str:
    """The name napari gives the dock of one of the plugin's widgets opened from Plugins ▸
    rMFN: ``"<widget> (<plugin display name>)"``, e.g. "Reconstruct (cryo-EM) (rMFN)"."""
    from napari.plugins import menu_item_template
    from npe2 import PluginManager

    return menu_item_template.format(PluginManager.instance().get_manifest(PLUGIN).display_name,
                                     widget_name)


def dock_plugin_widget(viewer, widget_name: str, tabify: bool = False):
    """Dock one of the plugin's widgets as Plugins ▸ rMFN does, under the menu's dock name, so
    that the menu finds it (and shows or hides it) instead of making a second copy.

    ``viewer.window.add_plugin_dock_widget`` would name the dock after the plugin's package
    name ("... (rmfn-napari)") where the menu looks for its display name ("... (rMFN)").
    Returns ``(dock, widget)``.
    """
    from npe2 import PluginManager

    name = menu_dock_name(widget_name)
    if name in viewer.window.dock_widgets:
        widget = viewer.window.dock_widgets[name]
        return widget.parent(), widget
    manifest = PluginManager.instance().get_manifest(PLUGIN)
    contribution = next(w for w in manifest.contributions.widgets if w.display_name == widget_name)
    widget = contribution.get_callable()(viewer)
    dock = viewer.window.add_dock_widget(widget, name=name, area="right", tabify=tabify)
    return dock, widget


def _wait_for(widget, timeout_s: float) -> None:
    """Run the Qt event loop until ``widget``'s run ended (or the timeout)."""
    from qtpy.QtWidgets import QApplication

    t0 = time.monotonic()
    while widget.runner.busy and time.monotonic() - t0 < timeout_s:
        QApplication.processEvents()
        time.sleep(0.01)
    if widget.runner.busy:
        widget.stop()
        while widget.runner.busy:
            QApplication.processEvents()
            time.sleep(0.01)
    for _ in range(20):  # let the last repaints land
        QApplication.processEvents()
        time.sleep(0.02)


def _save(path: Path, image) -> None:
    import imageio.v3 as iio

    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, image)
    print(f"saved {path} {image.shape}")


def _raise_dock(widget) -> None:
    widget.dock.show()
    widget.dock.raise_()


def _hide_notifications(viewer) -> None:
    """Close napari's toast notifications (e.g. the PyQt5 deprecation notice) before a shot."""
    from qtpy.QtWidgets import QApplication

    try:
        from napari._qt.dialogs.qt_notification import NapariQtNotification
    except ImportError:  # pragma: no cover - private module moved
        return
    for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
        toast.hide()
    QApplication.processEvents()


def _shot(viewer):
    _hide_notifications(viewer)
    return viewer.screenshot(canvas_only=False, flash=False)


def take_screenshots(out_dir: Path, timeout_s: float = 240.0) -> None:
    """Tiny runs from both widgets, then the reconstruction reopened from its folder in a fresh
    viewer: screenshots of the windows and the plots."""
    import os
    import tempfile

    from qtpy.QtWidgets import QApplication

    scratch = Path(tempfile.mkdtemp(prefix="rmfn-screenshots-"))
    # the forms as a new user sees them: no remembered settings, outputs in a scratch folder
    os.environ["XDG_CONFIG_HOME"] = str(scratch / "config")
    os.environ["RMFN_NAPARI_HOME"] = str(scratch / "runs")
    # volumes in 3D, as with a GPU (Xvfb's software OpenGL would keep slices while training)
    os.environ.setdefault("RMFN_NAPARI_VOLUMES_3D", "always")
    viewer, rec, fit = open_viewer()
    # ---- 2D: the astronaut, a short schedule at 128² (downsample 4)
    viewer.layers["1OL5 map (32³, 2 Å)"].visible = False
    _raise_dock(fit)
    fit.layer_combo.setCurrentText("astronaut")
    fit.schedule.setText("50,50,100,150")
    fit.start()
    _wait_for(fit, timeout_s)
    viewer.layers["astronaut"].visible = False
    fit.stepper.spin.setValue(4)  # the finest scale and its spectrum
    viewer.reset_view()
    QApplication.processEvents()
    _save(out_dir / "fit_image.png", _shot(viewer))

    # ---- 3D: simulate from the 1OL5 32³ sample, tiny preset, FSC against the loaded map
    for name in [layer.name for layer in viewer.layers if layer.name.startswith("rMFN ")]:
        viewer.layers.remove(name)
    viewer.layers.remove("astronaut")  # keep the 3D view framed on the map
    _raise_dock(rec)
    run_dir = scratch / "tiny-run"
    rec.out_dir.set_path(str(run_dir))
    rec.sim_n.setValue(300)
    rec.reference.setCurrentText("1OL5 map (32³, 2 Å)")
    rec.preset.setCurrentText("tiny")
    rec.batch.setValue(100)
    rec.start()
    _wait_for(rec, timeout_s)
    rec.stepper.all_button.click()
    viewer.layers["1OL5 map (32³, 2 Å)"].visible = True
    viewer.reset_view()
    viewer.camera.angles = (15, -35, 55)
    QApplication.processEvents()
    _save(out_dir / "reconstruct.png", _shot(viewer))
    viewer.close()

    # ---- the run's folder reopened in a fresh viewer ("Open run…")
    viewer, rec, _fit = open_viewer(samples=False)
    _raise_dock(rec)
    rec.choose_folder = lambda *_args: str(run_dir)
    rec.panel.open_run_button.click()
    viewer.camera.angles = (15, -35, 55)
    for _ in range(20):
        QApplication.processEvents()
        time.sleep(0.02)
    print(f"reopened: {rec.panel.status.text()}")
    _save(out_dir / "reopened.png", _shot(viewer))
    _save(out_dir / "fsc.png", rec.fsc_plot.grab_image())
    _save(out_dir / "pose_errors.png", rec.pose_plot.grab_image())
    viewer.close()


def main(argv=None) -> int:
    """Entry point: the interactive viewer, or ``--screenshots DIR``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", type=Path, default=None,
                        help="run tiny fits and save README screenshots into this folder, then exit")
    parser.add_argument("--timeout", type=float, default=240.0,
                        help="seconds allowed for each screenshot run")
    args = parser.parse_args(argv)
    if args.screenshots is not None:
        take_screenshots(args.screenshots, args.timeout)
        return 0
    import napari

    open_viewer()
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
