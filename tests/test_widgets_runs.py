"""A run's life in the real reconstruct widget, end to end under Xvfb: stopped at a stage end,
resumed from its checkpoint with "Resume…", then reopened in a fresh viewer with "Open run…".

Tiny data (as tests/test_widgets_reconstruct.py): the 1OL5 map block-averaged to 16³ (4 Å),
128 simulated particles, the "tiny" preset (1 epoch per stage, 2 batches of 64).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from rmfn_napari._widgets import ReconstructWidget  # noqa: E402
from rmfn_napari._widgets.reconstruct import DATASET_SIMULATE, DATASET_STAR, REF_FILE  # noqa: E402
from rmfn_napari._widgets.runner import RunState  # noqa: E402
from rmfn_napari.engine.events import StageStarted  # noqa: E402


@pytest.fixture(scope="module")
def sim16(tmp_path_factory):
    """128 particles from the 1OL5 map block-averaged to 16³; returns (result, map path)."""
    from rmfn_napari._sample_data import load_map
    from rmfn_napari.cryoem.io import write_map
    from rmfn_napari.cryoem.simulate import simulate_particles

    base = tmp_path_factory.mktemp("runs16")
    vol, apix = load_map("1ol5_32")
    ref = write_map(base / "map16.mrc", vol.reshape(16, 2, 16, 2, 16, 2).mean((1, 3, 5)), apix * 2)
    return simulate_particles(ref, base / "sim", n=128, snr=0.1, seed=0, overwrite=True), Path(ref)


def _widget(viewer, sim, ref, out):
    w = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(w, name="Reconstruct (cryo-EM)")
    w.preset.setCurrentText("tiny")
    w.batch.setValue(64)
    w.device.setCurrentText("cpu")
    w.dataset_kind.setCurrentText(DATASET_STAR)
    w.star_path.edit.setText(str(sim.star))
    w.true_poses_path.edit.setText(str(sim.true_poses))
    w.reference.setCurrentText(REF_FILE)
    w.reference_path.edit.setText(str(ref))
    w.out_dir.set_path(str(out))
    return w


def _mrc(path):
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, np.float32)


def test_stop_resume_and_reopen_a_run(make_napari_viewer, qtbot, tmp_path, sim16):
    sim, ref = sim16
    out = tmp_path / "run"
    viewer = make_napari_viewer()
    w = _widget(viewer, sim, ref, out)
    stages: list[int] = []
    w.runner.event.connect(lambda ev: stages.append(ev.stage) if isinstance(ev, StageStarted) else None)

    # 1) pause at the end of stage 1, then Stop: a stopped run with its checkpoint
    w.panel.pause_at_stage_end.setChecked(True)
    w.start()
    qtbot.waitUntil(lambda: w.runner.state == RunState.PAUSED and w.stage == 1, timeout=60000)
    with qtbot.waitSignal(w.runner.finished, timeout=60000):
        w.panel.stop_button.click()
    assert w.runner.finished_event.stopped
    assert (out / "checkpoint.pt").is_file()
    stopped = json.loads((out / "metrics.json").read_text())
    # stopped while paused at the start of stage 2: stage 2 is evaluated after 0 epochs
    assert [(s["stage"], s["epochs_done"]) for s in stopped["stages"]] == [(1, 1), (2, 0)]
    assert stages == [0, 1]

    # 2) Resume… the same folder: stages 2 and 3 run, no stage 1 again, the run finishes there.
    #    The form was changed meanwhile (as a later napari session remembers another run's):
    #    the run continues with its own settings and particles, from its checkpoint.
    w.panel.pause_at_stage_end.setChecked(False)
    w.preset.setCurrentText("cpu-small")
    w.dataset_kind.setCurrentText(DATASET_SIMULATE)
    stages.clear()
    w.choose_folder = lambda parent, caption, start: str(out)
    w.ask_about_results = lambda *a: pytest.fail("resuming continues in its folder: no question")
    assert not w.panel.resume_button.isHidden()
    with qtbot.waitSignal(w.runner.finished, timeout=90000):
        w.panel.resume_button.click()
    assert w.runner.failure is None, w.runner.failure
    assert not w.runner.finished_event.stopped
    assert stages == [1, 2]
    assert w.preset.currentText() == "tiny" and w.batch.value() == 64  # the form shows the run
    done = json.loads((out / "metrics.json").read_text())
    assert [s["stage"] for s in done["stages"]] == [1, 2, 3]
    assert w.run_out_dir == str(out)

    # 3) a fresh viewer: Open run… shows the finished run's maps and its plots
    viewer2 = make_napari_viewer()
    w2 = ReconstructWidget(viewer2)
    viewer2.window.add_dock_widget(w2, name="Reconstruct (cryo-EM)")
    w2.choose_folder = lambda parent, caption, start: str(out)
    for stale in ("rMFN scale 4", "rMFN spectrum 4", "rMFN scale 1 (previous run)"):
        viewer2.add_image(np.ones((4, 4, 4), np.float32), name=stale)  # an earlier, longer run's
    w2.panel.open_run_button.click()
    own = sorted(layer.name for layer in viewer2.layers if layer.name.startswith("rMFN"))
    assert own == ["rMFN scale 1", "rMFN scale 2", "rMFN scale 3"]  # nothing of the 4-scale run
    # the stepper steps through the opened scales: the finest first, then scale 1 alone
    assert w2.stepper.spin.value() == 3 and w2.stepper.isEnabled()
    assert [viewer2.layers[f"rMFN scale {k}"].visible for k in (1, 2, 3)] == [False, False, True]
    w2.stepper.spin.setValue(1)
    assert [viewer2.layers[f"rMFN scale {k}"].visible for k in (1, 2, 3)] == [True, False, False]
    for k in (1, 2, 3):
        np.testing.assert_array_equal(np.asarray(viewer2.layers[f"rMFN scale {k}"].data, np.float32),
                                      _mrc(out / f"scale_{k}.mrc"))
    for name, stem in (("half map 1", "half_map_1"), ("half map 2", "half_map_2"),
                       ("map (backprojected)", "map")):
        np.testing.assert_array_equal(np.asarray(viewer2.layers[name].data, np.float32),
                                      _mrc(out / f"{stem}.mrc"))
    gs = done["gold_standard"]
    assert w2.fsc_plot.n_gold_curves == len(gs["curves"])
    assert w2.fsc_plot.n_curves == 3  # each scale against the reference
    np.testing.assert_array_equal(w2.pose_plot.counts, done["pose_errors"]["hist_counts"])
    # the summary once (issue 29: it was shown twice): in the headline; the status says what is shown
    assert w2.resolution_label.text().startswith("run: reconstruct, 3 scales, 128 particles")
    assert w2.panel.status.text() == f"Showing the run in {out}"


def test_a_stop_before_the_first_checkpoint_says_nothing_can_be_resumed(
        make_napari_viewer, qtbot, tmp_path, sim16):
    """Stopped at once (before its first epoch's checkpoint), a run says that nothing can be
    resumed, and the panel is idle again: Start enabled, the bar not left at "starting…"."""
    sim, ref = sim16
    out = tmp_path / "run"
    w = _widget(make_napari_viewer(), sim, ref, out)
    with qtbot.waitSignal(w.runner.finished, timeout=120000):
        w.panel.start_button.click()
        w.panel.stop_button.click()  # before any event of the run is handled
    assert not (out / "checkpoint.pt").exists()
    assert "nothing can be resumed" in w.panel.status.text(), w.panel.status.text()
    assert w.panel.progress.format() != "starting…" and "stopped" in w.panel.progress.format()
    assert w.runner.state == RunState.FINISHED and w.panel.start_button.isEnabled()
    assert w.panel.resume_button.isEnabled() and not w.panel.stop_button.isEnabled()


def test_a_worker_stopped_before_its_first_event_leaves_the_panel_idle(make_napari_viewer, qtbot,
                                                                       tmp_path):
    """An event source that ends on a stop before the engine's RunStarted (as the widget's
    simulation step does) sends no RunFinished: the panel still ends idle, saying so."""
    from rmfn_napari._widgets._base import RunWidgetBase

    class Simulating(RunWidgetBase):
        task = "fake"

        def build_source(self, out_dir, resume=False):
            def source(control):
                control.request_stop()  # as if Stop came while the stack was being simulated
                if control.stop_requested:
                    return
                yield  # pragma: no cover

            return source

    viewer = make_napari_viewer()
    w = Simulating(viewer)
    viewer.window.add_dock_widget(w, name="fake")
    w.out_dir.set_path(str(tmp_path / "run"))
    with qtbot.waitSignal(w.runner.finished, timeout=20000):
        w.start()
    assert w.panel.progress.format() == "stopped before training"
    assert "nothing can be resumed" in w.panel.status.text()
    assert w.runner.state == RunState.FINISHED and w.panel.start_button.isEnabled()
