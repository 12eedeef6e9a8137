"""GUI tests of the layers a run owns (issue 15): a new run replaces the previous run's layers,
fit-image results lie on the original image's grid with their spectrum beside them, and the
stepper shows the scale the engine last trained (also in a full-scale run)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

pytest.importorskip("napari")

from rmfn_napari._widgets import FitImageWidget  # noqa: E402
from rmfn_napari._widgets.display_prep import block_mean, display_array  # noqa: E402
from rmfn_napari._widgets.layers import LayerUpdater  # noqa: E402
from rmfn_napari.cryoem.reconstruct import ReconstructConfig, reconstruct  # noqa: E402
from rmfn_napari.cryoem.simulate import simulate_particles  # noqa: E402
from rmfn_napari._widgets import layers as layers_module  # noqa: E402
from rmfn_napari._widgets import pacing  # noqa: E402
from rmfn_napari._widgets.pacing import (  # noqa: E402
    RedrawCost, is_software_opengl, paced_interval_s, volumes_in_3d_by_default,
)
from rmfn_napari.engine.events import ScaleSnapshot, StageStarted, VolumeSnapshot  # noqa: E402
from rmfn_napari.fitting.metrics import log_spectrum  # noqa: E402

from analytic_maps import write_sample_map_16  # noqa: E402


def _image(n=32):
    y, x = np.mgrid[0:n, 0:n] / n
    return np.clip(0.5 + 0.3 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y), 0, 1).astype(np.float32)


def _fit_widget(make_napari_viewer, tmp_out, *, downsample=2):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="target")
    w = FitImageWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fit image (2D)")
    w.layer_combo.setCurrentText("target")
    w.hidden.setValue(16)
    w.downsample.setValue(downsample)
    w.device.setCurrentText("cpu")
    w.out_dir.set_path(str(tmp_out))
    return viewer, w


def _run(qtbot, w, schedule, stop_after_steps=None):
    w.schedule.setText(schedule)
    with qtbot.waitSignal(w.runner.finished, timeout=60000):
        w.panel.start_button.click()
        if stop_after_steps is not None:
            qtbot.waitUntil(lambda: w.steps_done >= stop_after_steps, timeout=30000)
            w.panel.stop_button.click()
    assert w.runner.failure is None, w.runner.failure


def _pixel_edges(layer, n_y, n_x):
    """World positions of the outer pixel edges (top-left, bottom-right) of a 2D layer."""
    return (np.asarray(layer.data_to_world((-0.5, -0.5))),
            np.asarray(layer.data_to_world((n_y - 0.5, n_x - 0.5))))


def test_second_run_stopped_in_stage_1_replaces_the_first_runs_layers(make_napari_viewer, qtbot, tmp_path):
    viewer, w = _fit_widget(make_napari_viewer, tmp_path / "a")
    _run(qtbot, w, "5,5,5")
    assert all(np.any(viewer.layers[f"rMFN scale {k}"].data) for k in (1, 2, 3))
    first_scale_1 = viewer.layers["rMFN scale 1"].data.copy()
    w.out_dir.set_path(str(tmp_path / "b"))
    # a second run of 2 scales, stopped during its first stage
    _run(qtbot, w, "100000,100000", stop_after_steps=3)
    assert w.runner.finished_event.stopped
    own = sorted(layer.name for layer in viewer.layers if layer.name.startswith("rMFN"))
    assert own == ["rMFN scale 1", "rMFN scale 2", "rMFN spectrum 1", "rMFN spectrum 2"]
    # scale 2 is the new run's placeholder: nothing of the first run, not shown
    for name in ("rMFN scale 2", "rMFN spectrum 2"):
        assert not np.any(viewer.layers[name].data) and not viewer.layers[name].visible
    scale_1 = viewer.layers["rMFN scale 1"]
    assert scale_1.visible and np.any(scale_1.data) and not np.array_equal(scale_1.data, first_scale_1)
    assert w.stepper.spin.value() == 1 and w.layers.n_scales == 1


def test_run_that_shows_nothing_renames_the_previous_runs_layers(make_napari_viewer):
    viewer = make_napari_viewer()
    updater = LayerUpdater(viewer, spatial_ndim=2)
    updater.reset(2)
    for k in range(3):
        img = _image(16) * (k + 1)
        updater.handle(ScaleSnapshot(k, img, log_spectrum(img), 1.0, k, final=True))
    updater.flush()
    updater.reset(2)  # a new run that ends before its first snapshot
    updater.flush()
    names = sorted(layer.name for layer in viewer.layers)
    assert names == sorted([f"rMFN {kind} {k} (previous run)" for kind in ("scale", "spectrum")
                            for k in (1, 2, 3)])
    assert not any(layer.visible for layer in viewer.layers)
    # the next run's first snapshot removes them
    updater.reset(2)
    img = _image(16)
    updater.handle(ScaleSnapshot(0, img, log_spectrum(img), 1.0, 0, final=True))
    updater.stage_finished()
    assert sorted(layer.name for layer in viewer.layers) == ["rMFN scale 1", "rMFN spectrum 1"]


def test_fit_image_layers_cover_the_original_and_spectrum_lies_beside(make_napari_viewer, qtbot, tmp_out):
    viewer, w = _fit_widget(make_napari_viewer, tmp_out, downsample=2)
    _run(qtbot, w, "5,5")
    original = viewer.layers["target"]
    lo, hi = _pixel_edges(original, 32, 32)
    for k in (1, 2):
        layer = viewer.layers[f"rMFN scale {k}"]
        assert layer.data.shape == (16, 16)  # the training resolution
        assert tuple(layer.scale) == (2.0, 2.0) and tuple(layer.translate) == (0.5, 0.5)
        l_lo, l_hi = _pixel_edges(layer, 16, 16)
        np.testing.assert_allclose(l_lo, lo)
        np.testing.assert_allclose(l_hi, hi)
        # napari's extent runs over pixel centres: the training grid's first and last centres
        np.testing.assert_allclose(np.asarray(layer.extent.world),
                                   np.asarray(original.extent.world) + [[0.5], [-0.5]])
        spectrum = viewer.layers[f"rMFN spectrum {k}"]
        s_lo, s_hi = _pixel_edges(spectrum, 16, 16)
        assert s_lo[1] > hi[1]  # right of the image, not on it
        assert s_lo[0] == pytest.approx(lo[0]) and s_hi[0] == pytest.approx(hi[0])


def test_fit_image_widget_places_results_on_a_scaled_source_layer(make_napari_viewer, qtbot, tmp_out):
    """The widget passes the chosen layer's own pixel size and origin to the layers."""
    viewer, w = _fit_widget(make_napari_viewer, tmp_out, downsample=2)
    original = viewer.layers["target"]
    original.scale, original.translate = (0.5, 0.25), (10.0, -3.0)
    _run(qtbot, w, "3")
    layer = viewer.layers["rMFN scale 1"]
    for got, want in zip(_pixel_edges(layer, 16, 16), _pixel_edges(original, 32, 32)):
        np.testing.assert_allclose(got, want)


def test_results_follow_a_source_layers_grid(make_napari_viewer):
    """set_data_grid: an original with its own pixel size and origin gets results on its extent."""
    viewer = make_napari_viewer()
    original = viewer.add_image(_image(32), name="target", scale=(0.5, 0.25), translate=(10.0, -3.0))
    updater = LayerUpdater(viewer, spatial_ndim=2)
    updater.set_data_grid(original.scale, original.translate)
    updater.reset(2)
    train = block_mean(_image(32), 4, 2)
    updater.handle(ScaleSnapshot(0, train, log_spectrum(train), 4.0, 0, final=True))
    updater.stage_finished()
    layer = viewer.layers["rMFN scale 1"]
    for got, want in zip(_pixel_edges(layer, 8, 8), _pixel_edges(original, 32, 32)):
        np.testing.assert_allclose(got, want)


def test_a_stage_end_is_drawn_once_when_the_stage_finishes(make_napari_viewer, qtbot):
    """Final snapshots of every scale and the three maps arrive over seconds (the half-maps are
    computed between them); they are applied together at StageFinished: one redraw."""
    viewer = make_napari_viewer()
    updater = LayerUpdater(viewer, spatial_ndim=3)
    updater.reset(3)
    vol = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    for k in range(2):
        updater.handle(ScaleSnapshot(k, vol * (k + 1), log_spectrum(vol), 2.0, 1, final=True))
    qtbot.wait(50)
    for name in ("half_map_1", "half_map_2", "map"):
        updater.handle_volume(VolumeSnapshot(name, vol, 2.0, 1))
    qtbot.wait(50)
    assert updater.n_redraws == 0 and "rMFN scale 2" not in viewer.layers  # held for the stage's end
    updater.stage_finished()
    assert updater.n_redraws == 1 and updater.n_applied == 2 and updater.n_volumes_applied == 3
    np.testing.assert_allclose(viewer.layers["rMFN scale 2"].data, vol * 2)
    assert viewer.layers["map (backprojected)"].visible and not viewer.layers["half map 1"].visible
    assert viewer.dims.ndisplay == 3


def test_a_stage_end_without_its_stage_finished_is_drawn_after_the_wait(make_napari_viewer, qtbot,
                                                                        monkeypatch):
    monkeypatch.setattr(layers_module, "STAGE_END_WAIT_S", 0.2)
    viewer = make_napari_viewer()
    updater = LayerUpdater(viewer, spatial_ndim=2)
    updater.reset(2)
    img = _image(16)
    updater.handle(ScaleSnapshot(0, img, log_spectrum(img), 1.0, 0, final=True))
    assert updater.n_redraws == 0
    qtbot.waitUntil(lambda: updater.n_redraws == 1, timeout=3000)
    np.testing.assert_allclose(viewer.layers["rMFN scale 1"].data, img)


def test_live_updates_are_paced_by_what_a_redraw_costs():
    """2 % of the GUI's time: a 0.3 s software-OpenGL frame of volumes allows one live update
    per 15 s; a GPU's 5 ms frame the floor (1 s for volumes, 0.5 s for images)."""
    assert paced_interval_s(0.3, 3) == pytest.approx(15.0)
    assert paced_interval_s(0.005, 3) == 1.0
    assert paced_interval_s(0.005, 2) == 0.5
    assert paced_interval_s(0.03, 2) == pytest.approx(1.5)
    assert paced_interval_s(None, 3) == 10.0 and paced_interval_s(None, 2) == 0.5
    assert paced_interval_s(2.0, 3) == 30.0  # capped: a live view, however slow the frames


def test_redraw_cost_includes_the_repaint_that_follows(qapp, qtbot, monkeypatch):
    """A widget whose paint takes 150 ms, asked to repaint by a handler that itself takes 20 ms:
    the measured cost holds both (Qt delivers the repaint before the zero-delay timer). The
    costs are steps of a fake clock, not wall time."""
    import types

    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QWidget

    clock = types.SimpleNamespace(t=100.0)
    monkeypatch.setattr(pacing, "time", types.SimpleNamespace(perf_counter=lambda: clock.t))
    painting = []

    class SlowPaint(QWidget):
        def paintEvent(self, event):  # noqa: N802 (Qt's name)
            if painting:
                clock.t += 0.15

    w = SlowPaint()
    qtbot.addWidget(w)
    w.resize(50, 50)
    w.show()
    qtbot.waitExposed(w)
    qtbot.wait(300)
    cost = RedrawCost()
    assert cost.estimate_s is None

    def handler():
        painting.append(True)
        cost.started()
        w.update()
        clock.t += 0.02

    QTimer.singleShot(0, handler)
    qtbot.waitUntil(lambda: cost.estimate_s is not None, timeout=3000)
    assert cost.estimate_s == pytest.approx(0.17), cost.estimate_s
    cost.forget()
    assert cost.estimate_s is None


def test_software_opengl_is_told_by_the_renderers_name(monkeypatch):
    assert is_software_opengl("llvmpipe (LLVM 15.0.6, 256 bits)")
    assert is_software_opengl("Microsoft Basic Render Driver")
    assert is_software_opengl("Google SwiftShader")
    for gpu in ("NVIDIA GeForce RTX 4090/PCIe/SSE2", "Mesa Intel(R) UHD Graphics 620 (KBL GT2)",
                "AMD Radeon Pro 5500M OpenGL Engine", "Apple M2", ""):
        assert not is_software_opengl(gpu), gpu
    monkeypatch.setattr(pacing, "opengl_renderer", lambda: "llvmpipe (LLVM 15.0.6, 256 bits)")
    for choice, want in (("auto", False), ("always", True), ("never", False)):
        monkeypatch.setenv("RMFN_NAPARI_VOLUMES_3D", choice)
        assert volumes_in_3d_by_default() is want, choice
    monkeypatch.setattr(pacing, "opengl_renderer", lambda: "NVIDIA GeForce RTX 4090/PCIe/SSE2")
    monkeypatch.setenv("RMFN_NAPARI_VOLUMES_3D", "auto")
    assert volumes_in_3d_by_default()
    monkeypatch.setenv("RMFN_NAPARI_VOLUMES_3D", "never")
    assert not volumes_in_3d_by_default()


def test_with_software_opengl_volumes_stay_as_slices_and_the_user_is_told(make_napari_viewer, qtbot,
                                                                         monkeypatch):
    """A 3D frame costs ~0.3 s on llvmpipe: the view stays 2D (central slices), one message."""
    import napari.utils.notifications as notifications

    monkeypatch.setenv("RMFN_NAPARI_VOLUMES_3D", "auto")
    monkeypatch.setattr(pacing, "opengl_renderer", lambda: "llvmpipe (LLVM 15.0.6, 256 bits)")
    told = []
    monkeypatch.setattr(notifications, "show_info", told.append)
    viewer = make_napari_viewer()
    updater = LayerUpdater(viewer, spatial_ndim=3)
    assert not updater.volumes_in_3d
    vol = np.zeros((16, 16, 16), np.float32)
    vol[8, 4:12, 4:12] = 1.0  # a square in the central z plane
    for stage in range(2):
        updater.reset(3)
        updater.handle(ScaleSnapshot(0, vol, log_spectrum(vol), 2.0, stage, final=True))
        updater.handle_volume(VolumeSnapshot("map", vol, 2.0, stage))
        updater.stage_finished()
    assert viewer.dims.ndisplay == 2
    assert len(told) == 1 and "software" in told[0] and "2D/3D" in told[0]
    layer = viewer.layers["rMFN scale 1"]
    z = layer.world_to_data(viewer.dims.point)[0]
    assert abs(z - 8) <= 0.5, viewer.dims.point  # the slice shown is the central one
    # a user who chose 3D keeps it: the next run does not switch back
    viewer.dims.ndisplay = 3
    updater.reset(3)
    updater.handle(ScaleSnapshot(0, vol, log_spectrum(vol), 2.0, 0, final=True))
    updater.stage_finished()
    assert viewer.dims.ndisplay == 3 and len(told) == 1


def test_display_size_keeps_the_extent():
    """A volume above the display size is block-averaged; its extent in Å is unchanged."""
    vol = np.random.default_rng(0).normal(size=(256, 256, 256)).astype(np.float32)
    arr = display_array(vol, 1.5, 0.0)
    assert arr.data.shape == (128, 128, 128) and arr.data.flags["C_CONTIGUOUS"]
    assert arr.pixel == 3.0 and arr.offset == pytest.approx(0.75)
    assert arr.offset - arr.pixel / 2 == pytest.approx(-0.75)  # first edge: as the original's
    assert arr.contrast_limits == (float(arr.data.min()), float(arr.data.max()))


@pytest.fixture(scope="module")
def sim16(tmp_path_factory):
    root = tmp_path_factory.mktemp("fullscale")
    res = simulate_particles(write_sample_map_16(root / "map16.mrc"), root / "sim", n=64, snr=0.5, seed=2)
    return res.star


def test_full_scale_run_stepper_shows_the_trained_scale(make_napari_viewer, qtbot, sim16):
    """A full-scale run trains the finest scale (3) in its only stage, and sends every scale at
    its end: the stepper says 3 and "rMFN scale 3" is the visible layer."""
    from rmfn_napari._widgets import ReconstructWidget

    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(w, name="Reconstruct (cryo-EM)")
    cfg = ReconstructConfig.from_preset("tiny", mode="full-scale", epochs_per_stage=(1, 1, 1), batch_size=32,
                                        device="cpu", snapshot_interval_s=0.0, align_for_fsc=False)
    w.layers.reset(3)
    with qtbot.waitSignal(w.runner.finished, timeout=120000):
        w.runner.start(lambda control: reconstruct(sim16, cfg, control))
    assert w.runner.failure is None, w.runner.failure
    assert w.stepper.spin.value() == 3 and w.layers.n_scales == 3
    visible = sorted(layer.name for layer in viewer.layers
                     if layer.name.startswith("rMFN") and layer.visible)
    assert visible == ["rMFN scale 3", "rMFN spectrum 3"]
    w.stepper.spectra.setChecked(False)  # the stepper's "spectra" box hides them
    visible = sorted(layer.name for layer in viewer.layers
                     if layer.name.startswith("rMFN") and layer.visible)
    assert visible == ["rMFN scale 3"]
    assert all(np.any(viewer.layers[f"rMFN scale {k}"].data) for k in (1, 2, 3))
    # the log says which scale the one stage trained (the status line did say "scale 1")
    assert any("stage 1/1 started: scale 3," in line for line in w.log.lines())


def test_a_stages_layers_exist_before_its_first_training_step(make_napari_viewer, qtbot, tmp_out):
    """A stage's layers (its scale's image and spectrum) are made when it starts, before it
    trains (the worker waits after StageStarted while they are created), not all at Start
    (issue 29: each costs napari 0.15-0.35 s of GUI time), and without being selected."""
    viewer, w = _fit_widget(make_napari_viewer, tmp_out, downsample=1)
    at_stage_start: list[list[str]] = []
    selected: list[str] = []

    def on_event(ev):
        if type(ev).__name__ == "Progress" and ev.stage_step == 1:
            at_stage_start.append(sorted(layer.name for layer in viewer.layers
                                         if layer.name.startswith("rMFN")))
            selected.extend(layer.name for layer in viewer.layers.selection)

    w.runner.event.connect(on_event)
    _run(qtbot, w, "3,3,3")
    expected = [sorted(f"rMFN {kind} {k}" for kind in ("scale", "spectrum") for k in range(1, n + 1))
                for n in (1, 2, 3)]
    assert at_stage_start == expected
    assert not any(name.startswith("rMFN") for name in selected)
    assert w.runner.worker is None and sys.getswitchinterval() == pytest.approx(0.005)


def test_objects_are_frozen_out_of_the_garbage_collector_during_a_run_only(make_napari_viewer, qtbot,
                                                                          tmp_out):
    """While a run is alive the objects that existed at its start are out of the cyclic
    collector's reach (a full collection would stop the GUI for 0.3-0.45 s), and so, by its
    first step, are those its start made: its placeholder layers (a full collection of them
    took 86 ms during training); afterwards all are back."""
    import gc

    from rmfn_napari.engine.events import Progress

    viewer, w = _fit_widget(make_napari_viewer, tmp_out, downsample=1)
    assert gc.get_freeze_count() == 0
    frozen: list[int] = []
    collectable_at_first_step: list[list[str]] = []
    layers_at_first_step: list[int] = []

    def on_event(ev):
        frozen.append(gc.get_freeze_count())
        if isinstance(ev, Progress) and not collectable_at_first_step:
            tracked = {id(o) for o in gc.get_objects()}  # the frozen ones are not listed
            collectable_at_first_step.append([ly.name for ly in viewer.layers if id(ly) in tracked])
            layers_at_first_step.append(len(viewer.layers))

    w.runner.event.connect(on_event)
    _run(qtbot, w, "3,3,3")
    assert frozen and min(frozen) > 1000  # napari, Qt wrappers, torch: many thousands
    assert collectable_at_first_step == [[]]
    assert layers_at_first_step == [3]  # the target and stage 1's 2 layers were all checked
    assert w.runner.worker is None and gc.get_freeze_count() == 0


def test_switch_interval_comes_back_when_the_widget_closes_mid_run(make_napari_viewer, qtbot, tmp_path):
    """The lowered thread switch interval is the run's, not the widget's: closing the widget
    during a run (its runner then never sees the worker finish) still restores Python's."""
    from qtpy.QtCore import QThreadPool

    saved = sys.getswitchinterval()
    viewer, w = _fit_widget(make_napari_viewer, tmp_path / "a")
    w.schedule.setText("100000")
    w.panel.start_button.click()
    qtbot.waitUntil(lambda: w.steps_done >= 1, timeout=30000)
    assert sys.getswitchinterval() < saved
    w.close()  # closeEvent: the run is asked to stop
    w.deleteLater()
    qtbot.wait(50)
    assert QThreadPool.globalInstance().waitForDone(30000)
    assert sys.getswitchinterval() == pytest.approx(saved)


def test_same_shape_data_keeps_the_dims_and_a_new_shape_updates_them(make_napari_viewer, monkeypatch):
    """A live update of the same shape skips napari's dims recomputation (its cost, not its
    result: the extent is unchanged); new data of another shape still updates the dims."""
    from rmfn_napari._widgets.display_prep import DisplayArray
    from rmfn_napari._widgets.layer_ops import assign_array

    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((8, 8, 8), np.float32), scale=(2.0, 2.0, 2.0))
    calls = []
    original = type(viewer)._on_layers_change
    monkeypatch.setattr(type(viewer), "_on_layers_change",
                        lambda self: (calls.append(1), original(self))[1])
    same = DisplayArray(np.ones((8, 8, 8), np.float32), (0.0, 1.0), pixel=2.0, offset=0.0)
    assert assign_array(viewer, layer, same, (2.0,) * 3, (0.0,) * 3, "gray") is layer
    assert calls == [] and np.all(layer.data == 1)
    assert [r.stop for r in viewer.dims.range] == [14.0, 14.0, 14.0]  # (8 - 1) voxels of 2 Å
    bigger = DisplayArray(np.ones((12, 12, 12), np.float32), (0.0, 1.0), pixel=2.0, offset=0.0)
    assign_array(viewer, layer, bigger, (2.0,) * 3, (0.0,) * 3, "gray")
    assert calls and [r.stop for r in viewer.dims.range] == [22.0, 22.0, 22.0]


def test_placeholders_have_the_runs_shape_and_place_so_first_data_is_cheap(make_napari_viewer, qtbot,
                                                                            monkeypatch):
    """With the snapshots' shape in RunStarted, the placeholders are zeros of that shape at
    their final place (positions by hand: 4 Å voxels from 0; maps left of the scales by 1.15
    box widths), the view is framed on them, and the first snapshot neither recomputes the
    viewer's dims nor moves the camera."""
    from rmfn_napari.engine.events import RunStarted

    monkeypatch.setenv("RMFN_NAPARI_VOLUMES_3D", "never")  # slices: the 2D view's plane is set
    viewer = make_napari_viewer()
    updater = LayerUpdater(viewer, spatial_ndim=3, min_interval_s=0.0)
    updater.begin_run(RunStarted("reconstruct", 2, 10, "cpu", config={"n_layers": 2},
                                 snapshot_shape=(32, 32, 32), snapshot_voxel_size=4.0))
    qtbot.wait(50)
    assert not any(name.startswith("rMFN") for name in viewer.layers)  # none made at Start
    for stage in (0, 1):  # each stage's scale at its start (stage 2 adds scale 2)
        updater.stage_started(StageStarted(stage, 2, 5, 0.1 * (stage + 1)))
        qtbot.waitUntil(lambda: not updater._to_create and updater._framed, timeout=10000)
    for name in ("rMFN scale 1", "rMFN scale 2", "rMFN spectrum 2"):
        layer = viewer.layers[name]
        assert layer.data.shape == (32, 32, 32) and not np.any(layer.data) and not layer.visible
        np.testing.assert_allclose(layer.scale, (4.0, 4.0, 4.0))
    np.testing.assert_allclose(viewer.layers["rMFN scale 1"].translate, (0, 0, 0))
    np.testing.assert_allclose(viewer.layers["rMFN spectrum 1"].translate, (0, 0, 1.15 * 32 * 4))
    assert viewer.dims.point[0] == pytest.approx(16 * 4.0)  # the central plane, index D/2

    camera = (tuple(viewer.camera.center), viewer.camera.zoom)
    calls = []
    original = type(viewer)._on_layers_change
    monkeypatch.setattr(type(viewer), "_on_layers_change",
                        lambda self: (calls.append(1), original(self))[1])
    vol = np.random.default_rng(0).standard_normal((32, 32, 32)).astype(np.float32)
    updater.handle(ScaleSnapshot(0, vol, log_spectrum(vol), 4.0, stage=0))
    updater._apply_queue()
    np.testing.assert_array_equal(viewer.layers["rMFN scale 1"].data, vol)
    assert viewer.layers["rMFN scale 1"].visible
    assert calls == [] and (tuple(viewer.camera.center), viewer.camera.zoom) == camera

    # the maps' layers: made at the first stage end, before it is drawn, left of the scales
    monkeypatch.setattr(type(viewer), "_on_layers_change", original)  # napari connects it to new layers
    for key in ("half_map_1", "map"):
        updater.handle_volume(VolumeSnapshot(key, vol, 4.0, 0))
    updater.stage_finished()
    assert updater.n_volumes_applied == 0  # the maps wait for their layers
    qtbot.waitUntil(lambda: updater.n_volumes_applied == 2, timeout=10000)
    assert not any(layer in viewer.layers.selection for layer in viewer.layers
                   if layer.name in ("half map 1", "map (backprojected)"))
    np.testing.assert_array_equal(viewer.layers["map (backprojected)"].data, vol)
    np.testing.assert_allclose(viewer.layers["map (backprojected)"].translate, (0, 0, -1.15 * 32 * 4))
    assert viewer.layers["map (backprojected)"].visible and not viewer.layers["half map 1"].visible


def test_image_placeholders_lie_on_the_original_grid(make_napari_viewer, qtbot):
    """fit-image at downsample 2: training pixel j's centre is original pixel 2j + 0.5, the
    spectrum 1.15 image widths to the right."""
    from rmfn_napari.engine.events import RunStarted

    viewer = make_napari_viewer()
    updater = LayerUpdater(viewer, spatial_ndim=2)
    updater.begin_run(RunStarted("fit-image", 2, 10, "cpu", config={"schedule": [5, 5]},
                                 snapshot_shape=(64, 64), snapshot_voxel_size=2.0))
    updater.stage_started(StageStarted(1, 2, 5, 0.2))  # stage 2 (after stage 1's) needs scales 1 and 2
    qtbot.waitUntil(lambda: not updater._to_create and updater._framed, timeout=10000)
    image, spectrum = viewer.layers["rMFN scale 2"], viewer.layers["rMFN spectrum 2"]
    assert image.data.shape == spectrum.data.shape == (64, 64)
    np.testing.assert_allclose(image.scale, (2.0, 2.0))
    np.testing.assert_allclose(image.translate, (0.5, 0.5))
    np.testing.assert_allclose(spectrum.translate, (0.5, 0.5 + 1.15 * 64 * 2))


def test_placeholders_replacing_a_larger_previous_run_leave_the_dims_right(make_napari_viewer, qtbot):
    """Layers of an earlier, larger run (64³ at 4 Å) reused as this run's placeholders (32³ at
    4 Å): the viewer's z range is this run's (0..124 Å), after the placeholders and after the
    first same-shape snapshot (whose dims update is skipped)."""
    from rmfn_napari.engine.events import RunStarted

    viewer = make_napari_viewer()
    for name in ("rMFN scale 1", "rMFN spectrum 1", "map (backprojected)", "half map 1",
                 "half map 2"):
        viewer.add_image(np.ones((64, 64, 64), np.float32), name=name, scale=(4.0, 4.0, 4.0),
                         visible=False)
    updater = LayerUpdater(viewer, spatial_ndim=3, min_interval_s=0.0)
    updater.begin_run(RunStarted("reconstruct", 1, 10, "cpu", config={"n_layers": 1},
                                 snapshot_shape=(32, 32, 32), snapshot_voxel_size=4.0))
    qtbot.waitUntil(lambda: not updater._to_create and updater._framed, timeout=10000)
    assert viewer.dims.range[0].stop == pytest.approx(31 * 4.0)
    vol = np.ones((32, 32, 32), np.float32)
    updater.handle(ScaleSnapshot(0, vol, log_spectrum(vol), 4.0, stage=0))
    updater._apply_queue()
    assert viewer.dims.range[0].stop == pytest.approx(31 * 4.0)


def test_layer_changes_in_a_batch_rebuild_the_scene_graph_once(make_napari_viewer, monkeypatch):
    """Three layers shown in one batch: napari's canvas rebuilds its scene graph (and draws)
    once, at the end, not once per layer; a batch that shows or hides nothing rebuilds nothing."""
    from rmfn_napari._widgets.layer_ops import batched_layer_changes

    viewer = make_napari_viewer()
    layers = [viewer.add_image(np.zeros((4, 4), np.float32), name=f"l{k}", visible=False)
              for k in range(3)]
    canvas = viewer.window._qt_viewer.canvas
    paused_at_call: list[bool] = []
    original = canvas._update_scenegraph
    monkeypatch.setattr(canvas, "_update_scenegraph",
                        lambda *a, **k: (paused_at_call.append(canvas._pause_scene_graph),
                                         original(*a, **k))[1])
    with batched_layer_changes(viewer):
        for layer in layers:
            layer.visible = True
    assert paused_at_call.count(False) == 1 and paused_at_call[-1] is False
    assert all(layer.visible for layer in layers) and not canvas._pause_scene_graph
    paused_at_call.clear()
    with batched_layer_changes(viewer):
        layers[0].data = np.ones((4, 4), np.float32)
    assert False not in paused_at_call
