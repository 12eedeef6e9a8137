"""GUI tests of the reconstruct dock widget (run under Xvfb: ``bash scripts/run_tests.sh``).

Tiny data only: a 16³ map (the 1OL5 32³ sample block-averaged 2×, 4 Å voxels), 128 simulated
particles, the "tiny" preset (1 epoch per stage). A run takes ~10 s on a 2-core CPU.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("rmfn_napari.cryoem.reconstruct")

from rmfn_napari._widgets import ReconstructWidget  # noqa: E402
from rmfn_napari._widgets.reconstruct import (  # noqa: E402
    DATASET_SIMULATE, DATASET_STAR, MAP_FILE, REF_FILE, REF_NONE, REF_SIMULATION,
)
from rmfn_napari._widgets.runner import RunState  # noqa: E402
from rmfn_napari.errors import InputError  # noqa: E402

APIX16 = 4.0


@pytest.fixture(scope="module")
def map16(tmp_path_factory) -> Path:
    """The 1OL5 32³ sample block-averaged to 16³ (4 Å voxels)."""
    from rmfn_napari._sample_data import load_map
    from rmfn_napari.cryoem.io import write_map

    vol, apix = load_map("1ol5_32")
    small = vol.reshape(16, 2, 16, 2, 16, 2).mean((1, 3, 5))
    path = tmp_path_factory.mktemp("map16") / "map16.mrc"
    write_map(path, small, apix * 2)
    return path


@pytest.fixture(scope="module")
def sim16(map16, tmp_path_factory):
    """128 particles simulated from ``map16`` (a ``SimulationResult``: ``.star``, ``.true_poses``)."""
    from rmfn_napari.cryoem.simulate import simulate_particles

    out = tmp_path_factory.mktemp("sim16")
    return simulate_particles(map16, out, n=128, snr=0.1, seed=0, overwrite=True)


@pytest.fixture(scope="module")
def star16(sim16) -> Path:
    return sim16.star


def _widget(make_napari_viewer, tmp_out):
    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(w, name="Reconstruct (cryo-EM)")
    w.preset.setCurrentText("tiny")
    w.batch.setValue(64)
    w.device.setCurrentText("cpu")
    w.out_dir.set_path(str(tmp_out))
    return viewer, w


def test_preset_fills_parameters(make_napari_viewer):
    from rmfn_napari.cryoem.reconstruct import ReconstructConfig

    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    for name in ("paper", "cpu-small"):
        w.preset.setCurrentText(name)
        cfg = ReconstructConfig.from_preset(name)
        assert w.n_layers.value() == cfg.n_layers and w.hidden.value() == cfg.hidden
        assert w.batch.value() == cfg.batch_size
        assert w.epochs.text() == ",".join(map(str, cfg.epochs_per_stage))
        assert (w.lambda1.value(), w.lambda2.value()) == pytest.approx(cfg.lambdas)
        assert w.lr_structure.value() == pytest.approx(cfg.lr_structure)
        assert w.lr_pose.value() == pytest.approx(cfg.lr_pose)
        assert w.pose_init.currentText() == cfg.pose_init
        assert w.box.value() == (cfg.box or 0)
        assert w.shift_search.value() == pytest.approx(cfg.shift_range_px)
        form = w.config()
        assert (form.pose_search, form.search_in_finest) == (cfg.pose_search, cfg.search_in_finest)
        assert form.mode == "coarse-to-fine"
        assert (form.box, form.pose_init) == (cfg.box, cfg.pose_init)
        assert form.shift_range_px == pytest.approx(cfg.shift_range_px)
    assert w.pose_search.currentText() == "every stage"  # cpu-small searches in stages 2 and 3
    w.mode.setCurrentText("full-scale")
    w.pose_search.setCurrentText("off (gradient only)")
    assert w.config().mode == "full-scale" and not w.config().pose_search
    w.pose_search.setCurrentText("coarse stages")
    assert w.config().pose_search and not w.config().search_in_finest
    from rmfn_napari.engine.devices import available_devices

    assert [w.device.itemText(i) for i in range(w.device.count())] == available_devices()
    # box (0 = the stack's size), shift search (0 = off), pose init
    assert [w.pose_init.itemText(i) for i in range(w.pose_init.count())] == [
        "auto", "random", "perturb", "star"]
    assert w.box.singleStep() == 2
    w.box.setValue(0)
    assert w.box.text() == "stack's size" and w.config().box is None
    w.box.setValue(16)
    w.shift_search.setValue(0.0)
    assert w.shift_search.text() == "off"
    w.pose_init.setCurrentText("random")
    form = w.config()
    assert (form.box, form.shift_range_px, form.pose_init) == (16, 0.0, "random")
    w.shift_search.setValue(2.5)
    w.pose_init.setCurrentText("auto")
    assert (w.config().shift_range_px, w.config().pose_init) == (2.5, "auto")
    assert w.config().invert_contrast is False
    w.invert_contrast.setChecked(True)
    assert w.config().invert_contrast is True
    w.invert_contrast.setChecked(False)
    w.box.setValue(15)
    with pytest.raises(InputError, match="box"):
        w.config()
    # 3D image layers are offered as references, 2D ones are not
    viewer.add_image(np.zeros((8, 8, 8), np.float32), name="vol")
    viewer.add_image(np.zeros((8, 8), np.float32), name="flat")
    items = [w.reference.itemText(i) for i in range(w.reference.count())]
    assert "vol" in items and "flat" not in items and REF_SIMULATION in items


def test_reconstruct_from_simulation_streams_volumes_and_plots(
        make_napari_viewer, qtbot, tmp_out, map16, artifacts_dir):
    viewer, w = _widget(make_napari_viewer, tmp_out)
    w.dataset_kind.setCurrentText(DATASET_SIMULATE)
    w.sim_map.setCurrentText(MAP_FILE)
    w.sim_map_path.edit.setText(str(map16))
    w.sim_n.setValue(128)
    assert w.sim_max_shift.value() == 2.0  # off-centre particles by default
    w.reference.setCurrentText(REF_SIMULATION)
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value.name))
    with qtbot.waitSignal(w.runner.finished, timeout=120000):
        w.panel.start_button.click()
    assert w.runner.failure is None, w.runner.failure
    assert viewer.dims.ndisplay == 3
    ref = viewer.layers["reference"]
    assert ref.data.shape == (16, 16, 16) and tuple(ref.scale) == (APIX16,) * 3
    assert not ref.visible and ref.blending == "translucent"  # not added over the sample map it equals
    for k in (1, 2, 3):
        vol, spec = viewer.layers[f"rMFN scale {k}"], viewer.layers[f"rMFN spectrum {k}"]
        assert vol.data.shape == (16, 16, 16) and spec.data.shape == (16, 16, 16)
        assert tuple(vol.scale) == (APIX16,) * 3 and tuple(spec.scale) == (APIX16,) * 3
        assert inserted.count(f"rMFN scale {k}") == 1
    # FSC vs the reference: one curve per scale, a resolution in Å never coarser than the box,
    # or "not resolved" (NaN; a 1-epoch run may well be); pose errors: every particle counted
    assert w.fsc_plot.n_curves == 3 and w.fsc_plot.has_reference_threshold_line
    for k, r in w.fsc_plot.resolutions.items():
        assert math.isnan(r) or 2 * APIX16 <= r <= 16 * APIX16
        text = "not resolved" if math.isnan(r) else f"{r:.1f} Å"
        assert f"scale {k + 1}: {text}" in w.fsc_plot.legend_text()
    # the gold-standard FSC between the half-maps (0.143) on the same plot, and its headline
    assert w.fsc_plot.n_gold_curves == 3 and w.fsc_plot.has_gold_threshold_line
    assert "FSC = 0.143 (half-maps)" in w.fsc_plot.legend_text()
    assert "FSC = 0.5 (vs reference)" in w.fsc_plot.legend_text()
    assert w.gold_standard is not None and w.gold_standard["stage"] == 2
    assert "gold standard (auto mask): " in w.resolution_label.text()
    assert "gold standard (auto mask): " in w.panel.status.text()  # the run-end status
    # the backprojected half-maps and map: one layer each, updated at every stage end
    for name in ("half map 1", "half map 2", "map (backprojected)"):
        layer = viewer.layers[name]
        assert layer.data.shape == (16, 16, 16) and tuple(layer.scale) == (APIX16,) * 3
        assert inserted.count(name) == 1
    assert w.events_seen["VolumeSnapshot"] == 9  # 3 maps × 3 stages
    assert viewer.layers["map (backprojected)"].visible
    assert not viewer.layers["half map 1"].visible
    assert w.pose_plot.total == 128  # pose errors against the simulation's true_poses.star
    assert w.fsc_plot.n_redraws >= 3 and w.pose_plot.n_redraws >= 3
    docks = set(viewer.window.dock_widgets.keys())
    assert {"FSC", "pose errors"} <= docks
    assert w.panel.percent() == pytest.approx(100.0)
    assert "epoch" in w.panel.progress.format() or "done" in w.panel.progress.format()
    out = Path(tmp_out)
    assert (out / "scale_3.mrc").is_file() and (out / "simulated" / "particles.star").is_file()
    assert (out / "simulated" / "true_poses.star").is_file()
    shot = viewer.screenshot(canvas_only=False, flash=False)
    import imageio.v3 as iio

    iio.imwrite(artifacts_dir / "widget_reconstruct.png", shot)
    iio.imwrite(artifacts_dir / "widget_reconstruct_fsc.png", w.fsc_plot.grab_image())
    assert shot.std() > 1


def test_reconstruct_pause_next_stop(make_napari_viewer, qtbot, tmp_out, sim16, map16):
    viewer, w = _widget(make_napari_viewer, tmp_out)
    w.dataset_kind.setCurrentText(DATASET_STAR)
    w.star_path.edit.setText(str(sim16.star))
    w.true_poses_path.edit.setText(str(sim16.true_poses))
    w.reference.setCurrentText(REF_NONE)
    w.epochs.setText("50,50,50")
    w.start()
    qtbot.waitUntil(lambda: w.steps_done >= 1, timeout=30000)
    w.panel.pause_button.click()
    qtbot.waitUntil(lambda: w.runner.state == RunState.PAUSED, timeout=30000)
    qtbot.wait(500)  # the step in flight when Pause was clicked lands
    held = w.steps_done
    qtbot.wait(500)
    assert w.steps_done == held
    assert "epoch" in w.panel.progress.format()
    w.panel.next_button.click()
    qtbot.waitUntil(lambda: w.stage == 1 and w.steps_done > held, timeout=30000)
    with qtbot.waitSignal(w.runner.finished, timeout=60000):
        w.panel.stop_button.click()
    assert w.runner.finished_event.stopped
    assert (Path(tmp_out) / "scale_1.mrc").is_file()
    assert (Path(tmp_out) / "metrics.json").is_file()
    assert "rMFN scale 2" in viewer.layers
    assert w.fsc_plot.n_curves == 0  # no reference: no FSC against one ...
    assert w.fsc_plot.n_gold_curves == 3  # ... but the half-map FSC, and no stale wording
    assert not w.fsc_plot.has_reference_threshold_line
    assert "reference" not in w.fsc_plot.legend_text()
    assert "gold standard (auto mask): " in w.resolution_label.text()
    assert "map (backprojected)" in viewer.layers
    assert w.pose_plot.total == 128  # the true poses were given


def test_reconstruct_errors_in_status(make_napari_viewer, qtbot, tmp_out, star16):
    viewer, w = _widget(make_napari_viewer, tmp_out)
    w.dataset_kind.setCurrentText(DATASET_STAR)
    w.star_path.edit.setText(str(Path(tmp_out) / "missing.star"))
    assert w.start() is None
    assert ".star" in w.panel.status.text()
    w.star_path.edit.setText(str(star16))
    w.epochs.setText("1,1")  # 3 layers need 3 values
    assert w.start() is None
    assert "epochs_per_stage" in w.panel.status.text()
    # a reference of the wrong size: the engine's InputError, at Start, before any run
    from rmfn_napari._sample_data import map_path

    w.epochs.setText("1,1,1")
    w.reference.setCurrentText(REF_FILE)
    w.reference_path.edit.setText(str(map_path("1ol5_32")))
    assert w.start() is None and w.runner.state != RunState.FAILED
    assert "reference map is 32^3 at 2 Å but the particles are 16 px at 4 Å" in w.panel.status.text()


def _capture_reconstruct(monkeypatch) -> dict:
    """Replace the engine's ``reconstruct`` by a stub that records its arguments."""
    import rmfn_napari.cryoem.reconstruct as engine

    seen: dict = {}

    def fake(dataset, config, control, **kwargs):
        seen.update(dataset=Path(dataset), config=config, **kwargs)
        yield from ()

    monkeypatch.setattr(engine, "reconstruct", fake)
    return seen


def test_true_poses_reach_the_engine(make_napari_viewer, qtbot, tmp_out, map16, sim16, monkeypatch):
    """The simulate path writes true_poses.star (with the form's shift and CTF settings) and
    passes it on; the STAR path passes the "true poses" field (None when empty)."""
    import json

    seen = _capture_reconstruct(monkeypatch)
    viewer, w = _widget(make_napari_viewer, tmp_out)
    assert w.row_label(w.true_poses_path).isHidden()  # simulate: no field to fill
    assert "without it no pose errors" in w.true_poses_path.toolTip()
    w.sim_map.setCurrentText(MAP_FILE)
    w.sim_map_path.edit.setText(str(map16))
    w.sim_n.setValue(10)
    w.sim_max_shift.setValue(1.5)
    w.sim_defocus_min.setValue(1.0)
    w.sim_defocus_max.setValue(2.0)
    w.sim_astig_max.setValue(300.0)
    w.box.setValue(8)
    w.shift_search.setValue(1.0)
    w.reference.setCurrentText(REF_NONE)
    with qtbot.waitSignal(w.runner.finished, timeout=30000):
        w.start()
    assert w.runner.failure is None, w.runner.failure
    sim = Path(tmp_out) / "simulated"
    assert seen["dataset"] == sim / "particles.star"
    assert Path(seen["true_poses"]) == sim / "true_poses.star" and Path(seen["true_poses"]).is_file()
    assert (seen["config"].box, seen["config"].shift_range_px) == (8, 1.0)
    meta = json.loads((sim / "simulation.json").read_text())
    assert meta["max_shift_px"] == 1.5 and meta["n"] == 10
    assert (meta["defocus_min"], meta["defocus_max"]) == pytest.approx((10000.0, 20000.0))
    assert (meta["astig_min"], meta["astig_max"]) == (0.0, 300.0)
    # an empty defocus range is refused at Start
    w.sim_defocus_min.setValue(3.0)
    assert w.start() is None and "defocus" in w.panel.status.text()

    # a STAR file: the "true poses" field, optional, checked at Start
    w.dataset_kind.setCurrentText(DATASET_STAR)
    assert not w.row_label(w.true_poses_path).isHidden()
    assert w.row_label(w.sim_ctf).isHidden()
    w.star_path.edit.setText(str(sim16.star))
    w.true_poses_path.edit.setText(str(Path(tmp_out) / "missing.star"))
    assert w.start() is None and "true poses" in w.panel.status.text()
    w.true_poses_path.edit.setText(str(sim16.true_poses))
    with qtbot.waitSignal(w.runner.finished, timeout=30000):
        w.start()
    assert seen["dataset"] == sim16.star and Path(seen["true_poses"]) == sim16.true_poses
    w.true_poses_path.edit.setText("")
    with qtbot.waitSignal(w.runner.finished, timeout=30000):
        w.start()
    assert seen["true_poses"] is None
    assert "no pose errors" in w.pose_plot.legend.text()
