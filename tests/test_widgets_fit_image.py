"""GUI tests of the fit-image dock widget (run under Xvfb: ``bash scripts/run_tests.sh``).

Tiny runs only (32×32 image, width 16): each test takes a few seconds on a 2-core CPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from rmfn_napari._widgets import FitImageWidget  # noqa: E402
from rmfn_napari._widgets.runner import RunState  # noqa: E402


def _image(n=32, rgb=False):
    y, x = np.mgrid[0:n, 0:n] / n
    img = 0.5 + 0.25 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y) + 0.2 * (x > 0.5)
    img = np.clip(img, 0, 1).astype(np.float32)
    return np.stack([img, img[::-1], img.T], -1) if rgb else img


def _widget(make_napari_viewer, tmp_out, *, schedule="10,10,20", rgb=False, downsample=1):
    viewer = make_napari_viewer()
    viewer.add_image(_image(rgb=rgb), name="target", rgb=rgb)
    w = FitImageWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fit image (2D)")
    w.layer_combo.setCurrentText("target")
    w.schedule.setText(schedule)
    w.hidden.setValue(16)
    w.downsample.setValue(downsample)
    w.device.setCurrentText("cpu")
    w.out_dir.set_path(str(tmp_out))
    return viewer, w


def _wait_until(qtbot, cond, timeout=20000):
    qtbot.waitUntil(cond, timeout=timeout)


def test_fit_image_run_streams_layers_and_metrics(make_napari_viewer, qtbot, tmp_out, artifacts_dir):
    viewer, w = _widget(make_napari_viewer, tmp_out)
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value.name))
    with qtbot.waitSignal(w.runner.finished, timeout=60000):
        w.panel.start_button.click()
        assert not w.panel.start_button.isEnabled()
        assert w.panel.stop_button.isEnabled()
    assert w.runner.state == RunState.FINISHED
    assert w.runner.failure is None, w.runner.failure
    for k in (1, 2, 3):
        img, spec = viewer.layers[f"rMFN scale {k}"], viewer.layers[f"rMFN spectrum {k}"]
        assert img.data.shape == (32, 32) and spec.data.shape == (32, 32)
        assert tuple(img.scale) == (1.0, 1.0) and tuple(spec.scale) == (1.0, 1.0)
        # created once, then updated in place
        assert inserted.count(f"rMFN scale {k}") == 1
        assert inserted.count(f"rMFN spectrum {k}") == 1
    assert w.layers.n_applied >= 6  # 3 stage ends + 3 end-of-run snapshots
    assert w.panel.percent() == pytest.approx(100.0)
    assert w.steps_done == 40
    # PSNR per stage and drift per scale in the table
    for k in range(3):
        assert float(w.table.value_text(k, 0)) > 5
        assert w.table.value_text(k, 1) != ""
    assert float(w.table.value_text(2, 1)) == pytest.approx(0.0, abs=1e-6)
    files = {p.name for p in Path(tmp_out).iterdir()}
    assert {"scale_1.tif", "spectrum_3.tif", "metrics.json"} <= files
    assert str(tmp_out) in w.panel.status.text()
    # one scale at a time, then all
    w.stepper.spin.setValue(2)
    assert viewer.layers["rMFN scale 2"].visible and not viewer.layers["rMFN scale 1"].visible
    assert viewer.layers["rMFN spectrum 2"].visible and not viewer.layers["rMFN spectrum 3"].visible
    w.stepper.all_button.click()
    assert all(viewer.layers[f"rMFN scale {k}"].visible for k in (1, 2, 3))
    shot = viewer.screenshot(canvas_only=False, flash=False)
    import imageio.v3 as iio

    iio.imwrite(artifacts_dir / "widget_fit_image.png", shot)
    assert shot.shape[-1] in (3, 4) and shot.std() > 1


def test_fit_image_rgb_layer(make_napari_viewer, qtbot, tmp_out):
    viewer, w = _widget(make_napari_viewer, tmp_out, schedule="5,5", rgb=True, downsample=2)
    with qtbot.waitSignal(w.runner.finished, timeout=60000):
        w.start()
    assert w.runner.failure is None, w.runner.failure
    layer = viewer.layers["rMFN scale 2"]
    assert layer.rgb and layer.data.shape == (16, 16, 3)
    assert viewer.layers["rMFN spectrum 2"].data.shape == (16, 16)


def test_fit_image_pause_next_stage_stop(make_napari_viewer, qtbot, tmp_out):
    viewer, w = _widget(make_napari_viewer, tmp_out, schedule="100000,100000,100000")
    w.start()
    _wait_until(qtbot, lambda: w.steps_done >= 5 and w.stage == 0)
    w.panel.pause_button.click()
    _wait_until(qtbot, lambda: w.runner.state == RunState.PAUSED)
    assert w.panel.pause_button.text() == "Resume"
    qtbot.wait(300)  # the step in flight when Pause was clicked lands
    first = w.steps_done
    qtbot.wait(500)
    assert w.steps_done == first  # paused: no step
    assert w.runner.control.paused and "Paused" in w.panel.status.text()
    # Next stage (while paused mid-stage) ends stage 1 and resumes into stage 2
    w.panel.next_button.click()
    _wait_until(qtbot, lambda: w.stage == 1 and w.steps_done > first)
    assert w.runner.state == RunState.RUNNING
    assert viewer.layers["rMFN scale 1"].data.shape == (32, 32)
    with qtbot.waitSignal(w.runner.finished, timeout=30000):
        w.panel.stop_button.click()
    ev = w.runner.finished_event
    assert ev is not None and ev.stopped
    assert w.runner.worker is None and w.panel.start_button.isEnabled()
    assert (Path(tmp_out) / "metrics.json").is_file()
    assert (Path(tmp_out) / "scale_1.tif").is_file()
    assert "Stopped" in w.panel.status.text()


def test_fit_image_pause_at_stage_end(make_napari_viewer, qtbot, tmp_out):
    viewer, w = _widget(make_napari_viewer, tmp_out, schedule="10,10")
    w.panel.pause_at_stage_end.setChecked(True)
    w.start()
    _wait_until(qtbot, lambda: w.runner.state == RunState.PAUSED)
    assert w.steps_done == 10 and "rMFN scale 1" in viewer.layers
    with qtbot.waitSignal(w.runner.finished, timeout=30000):
        w.panel.next_button.click()  # at a stage boundary: goes on with stage 2
    assert w.steps_done == 20 and not w.runner.finished_event.stopped


def test_fit_image_input_errors_show_in_status(make_napari_viewer, qtbot, tmp_out):
    viewer = make_napari_viewer()
    w = FitImageWidget(viewer)
    assert w.start() is None  # no image layer
    assert "image" in w.panel.status.text() and not w.runner.busy
    viewer.add_image(_image(), name="target")
    assert w.layer_combo.currentText() == "target"
    viewer.add_image(np.zeros((4, 8, 8)), name="stack")  # 3D: not offered
    assert w.layer_combo.findText("stack") == -1
    w.schedule.setText("10,abc")
    assert w.start() is None
    assert "schedule" in w.panel.status.text()
    # an InputError raised by the engine (in the worker) lands in the label, not a traceback
    w.schedule.setText("5")
    w.device.addItem("cuda:7")  # a device that does not exist here
    w.device.setCurrentText("cuda:7")
    with qtbot.waitSignal(w.runner.finished, timeout=30000):
        w.start()
    assert w.runner.state == RunState.FAILED
    assert "cuda:7" in w.panel.status.text()
    assert w.panel.start_button.isEnabled()
