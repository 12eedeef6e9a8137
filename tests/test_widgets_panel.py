"""The dock's run panel: it fits a small screen, its status / bar / ETA agree, it never
overwrites results silently, the log panel, notifications, "Open run…" and "Resume…".

Most GUI tests drive :class:`RunWidgetBase` through a small subclass whose event source is a
generator of engine events (no training), so each takes about a second.
"""

from __future__ import annotations

import math
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from rmfn_napari.engine.control import honour_requests  # noqa: E402
from rmfn_napari.engine.eta import EtaEstimator  # noqa: E402
from rmfn_napari.engine.events import (  # noqa: E402
    Log, Progress, RunFinished, RunPaused, RunResumed, RunStarted, StageFinished, StageStarted,
)
from rmfn_napari.engine.outdir import existing_results, new_run_dir, next_free_dir  # noqa: E402
from rmfn_napari.errors import InputError  # noqa: E402


# ------------------------------------------------------------------------------ the ETA
class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _steps(eta: EtaEstimator, clock: FakeClock, stage: int, seconds: list[float], first: int = 1):
    for k, s in enumerate(seconds):
        clock.t += s
        eta.step_done(stage, first + k)


def test_eta_is_nan_before_the_first_step_and_zero_after_the_last():
    clock = FakeClock()
    eta = EtaEstimator([3], clock=clock)
    assert math.isnan(eta.remaining_s())
    _steps(eta, clock, 0, [2.0, 2.0])
    assert eta.remaining_s() == pytest.approx(2.0)
    _steps(eta, clock, 0, [2.0], first=3)
    assert eta.remaining_s() == 0.0


def test_eta_excludes_paused_time():
    clock = FakeClock()
    eta = EtaEstimator([10], clock=clock)
    _steps(eta, clock, 0, [1.0, 1.0])

    def honour():  # what honour_requests yields around a pause of 500 s
        yield RunPaused(2)
        clock.t += 500.0
        yield RunResumed(2)
        return "next"

    seen = []
    gen = eta.around_pauses(honour())
    while True:
        try:
            seen.append(next(gen))
            assert eta.paused == isinstance(seen[-1], RunPaused)
        except StopIteration as end:
            assert end.value == "next"  # the wrapped generator's command comes through
            break
    assert [type(e) for e in seen] == [RunPaused, RunResumed]
    clock.t += 1.0  # the step after the pause took 1 s of work
    eta.step_done(0, 3)
    assert eta.rate(0) == pytest.approx(1.0)
    assert eta.remaining_s() == pytest.approx(7.0)  # 7 steps of 1 s, not (503/3)·7


def test_eta_scales_unrun_stages_by_the_measured_growth():
    clock = FakeClock()
    eta = EtaEstimator([4, 4, 4], clock=clock)
    _steps(eta, clock, 0, [1.0] * 4)
    # one stage measured: later stages assumed as costly (g = 1), no stage change seen yet
    assert eta.remaining_s() == pytest.approx(8 * 1.0)
    _steps(eta, clock, 1, [5.0, 3.0, 3.0, 3.0])  # 5 s: the stage change (evaluation + 1st step)
    assert eta.rate(1) == pytest.approx(3.0)
    # stage 1 not complete: g = 1, so stage 2 costs 3 s/step; one stage change (5 s) left
    assert eta.remaining_s() == pytest.approx(4 * 3.0 + 5.0)
    _steps(eta, clock, 2, [5.0])  # stages 0 and 1 complete: g = 3 → stage 2 at 9 s/step
    assert eta.growth() == pytest.approx(3.0)
    assert eta.remaining_s() == pytest.approx(3 * 9.0)
    _steps(eta, clock, 2, [8.0], first=2)  # now measured: its own rate wins
    assert eta.remaining_s() == pytest.approx(2 * 8.0)
    # the naive rule (elapsed / done × left) would have said 55/6·2 = 18.3 s before that step


def test_eta_growth_is_clamped_and_relative_cost_is_used_when_given():
    clock = FakeClock()
    eta = EtaEstimator([1, 1, 2], clock=clock, max_growth=4.0)
    _steps(eta, clock, 0, [1.0])
    _steps(eta, clock, 1, [100.0])  # a stage change only: stage 1 has no rate of its own
    _steps(eta, clock, 2, [100.0])
    assert eta.growth() == 1.0  # no two complete stages with rates
    clock = FakeClock()
    eta = EtaEstimator([2, 2, 2], relative_cost=[1, 2, 3], clock=clock)
    _steps(eta, clock, 0, [2.0])
    assert eta.remaining_s() == pytest.approx(1 * 2.0 + 2 * 4.0 + 2 * 6.0)
    with pytest.raises(ValueError, match="relative_cost has 2 values for 3 stages"):
        EtaEstimator([1, 1, 1], relative_cost=[1, 2])


def _fit_image_etas(monkeypatch, pause_s: float | None) -> list[float]:
    """Progress.eta_s of a tiny fit-image run whose estimator runs on a fake clock: each step
    takes 0.1 s of it; with ``pause_s``, the run is paused after step 2 for that long."""
    from rmfn_napari.engine.control import RunControl
    from rmfn_napari.fitting import image_fitting
    from rmfn_napari.fitting.image_fitting import FitImageConfig, fit_image

    clock = FakeClock()

    class OnFakeClock(EtaEstimator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, clock=clock, **kwargs)

        def step_done(self, stage, stage_step):
            clock.t += 0.1  # the step's work
            super().step_done(stage, stage_step)

    monkeypatch.setattr(image_fitting, "EtaEstimator", OnFakeClock)
    y, x = np.mgrid[0:32, 0:32] / 32
    img = (0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y)).astype(np.float32)
    control = RunControl()
    config = FitImageConfig(schedule=(4, 4), hidden=16, device="cpu", snapshot_interval_s=1e9,
                            seed=1)
    etas, paused = [], 0
    for ev in fit_image(img, config, control):
        if isinstance(ev, Progress):
            etas.append(ev.eta_s)
            if ev.step == 2 and pause_s is not None:
                control.pause()
        elif isinstance(ev, RunPaused):
            paused += 1
            clock.t += pause_s  # the user's pause, on the estimator's clock
            control.resume()
    assert paused == (pause_s is not None)
    return etas


def test_fit_image_eta_ignores_a_pause(monkeypatch):
    """The engine's Progress.eta_s comes from the estimator, whose clock stops while paused: a
    500 s pause after step 2 leaves every ETA as it is without the pause (the naive rule,
    elapsed / done x left, would give 500/3 x 5 s after step 3). No wall time is measured."""
    plain = _fit_image_etas(monkeypatch, None)
    paused = _fit_image_etas(monkeypatch, 500.0)
    assert len(plain) == 8 and paused == pytest.approx(plain)
    # after step 3 of stage 1: 1 step of 0.1 s, then stage 2's 4 steps at twice the cost
    assert paused[2] == pytest.approx(0.1 + 4 * 0.2)
    assert paused[-1] == 0.0


def test_reconstruct_eta_comes_from_the_estimator(tmp_path, monkeypatch):
    """The driver feeds every batch to the estimator (stage, step within the stage) and sends
    its remaining time as Progress.eta_s."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from analytic_maps import write_sample_map_16

    from rmfn_napari.cryoem.reconstruct import ReconstructConfig, driver, reconstruct
    from rmfn_napari.cryoem.simulate import simulate_particles

    sim = simulate_particles(write_sample_map_16(tmp_path / "map16.mrc"), tmp_path / "sim", n=80,
                             snr=0.5, seed=3)
    made = []

    class Recording(EtaEstimator):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.done, self.sent = [], []
            made.append(self)

        def step_done(self, stage, stage_step):
            super().step_done(stage, stage_step)
            self.done.append((stage, stage_step))

        def remaining_s(self):
            self.sent.append(super().remaining_s())
            return self.sent[-1]

    monkeypatch.setattr(driver, "EtaEstimator", Recording)
    cfg = ReconstructConfig.from_preset("tiny", epochs_per_stage=(1, 2), batch_size=40,
                                        device="cpu", snapshot_interval_s=1e9, n_layers=2,
                                        align_for_fsc=False, seed=4, pose_init="random")
    events = list(reconstruct(sim.star, cfg))
    (eta,) = made
    assert eta.stage_steps == [2, 4]
    assert eta.done == [(0, 1), (0, 2), (1, 1), (1, 2), (1, 3), (1, 4)]
    assert [e.eta_s for e in events if isinstance(e, Progress)] == eta.sent
    assert eta.sent[-1] == 0.0


# ------------------------------------------------------------------ output folder helpers
def test_default_run_folder_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("RMFN_NAPARI_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    when = time.mktime((2026, 3, 4, 5, 6, 7, 0, 0, -1))
    first = new_run_dir("fit-image", when)
    assert first == tmp_path / "home" / "rmfn-napari" / "fit-image-20260304-050607"
    first.mkdir(parents=True)
    assert new_run_dir("fit-image", when) == first.parent / "fit-image-20260304-050607-2"
    monkeypatch.setenv("RMFN_NAPARI_HOME", str(tmp_path / "runs"))
    assert new_run_dir("reconstruct", when).parent == tmp_path / "runs"
    assert next_free_dir(tmp_path / "nothing") == tmp_path / "nothing"


def test_existing_results_names_the_run_files(tmp_path):
    assert existing_results(tmp_path / "missing") == []
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "particles.star").write_text("data_")
    assert existing_results(tmp_path) == []
    for name in ("metrics.json", "scale_2.tif", "run.log", "checkpoint.pt"):
        (tmp_path / name).write_text("x")
    assert existing_results(tmp_path) == ["checkpoint.pt", "metrics.json", "run.log",
                                          "scale_2.tif"]


# ------------------------------------------------------------------------- GUI fixtures
def fake_run(n_stages=2, steps=5, delay=0.0, warn=None, fail=None, out_dir=None):
    """An event source: RunStarted, per stage StageStarted + ``steps`` Progress events (each
    after ``delay`` s, honouring pause / next stage / stop), StageFinished, RunFinished; writes
    ``metrics.json`` into ``out_dir`` at the end."""

    def source(control):
        total = n_stages * steps
        yield RunStarted("fake", n_stages, total, "cpu")
        if warn:
            yield Log(warn, "warning")
        step, stopped = 0, False
        for stage in range(n_stages):
            yield StageStarted(stage, n_stages, steps, 1.0)
            done = 0
            for k in range(1, steps + 1):
                command = yield from honour_requests(control, step)
                if command is not None:
                    stopped = command == "stop"
                    break
                time.sleep(delay)
                step, done = step + 1, k
                yield Progress(stage, step, total, k, steps, 0.5, 0.0, 75.0)
                if fail and step == fail:
                    raise RuntimeError("the fake engine broke")
            yield StageFinished(stage, done, 0.1)
            if stopped:
                break
        outputs = {}
        if out_dir is not None:
            Path(out_dir).mkdir(parents=True, exist_ok=True)
            (Path(out_dir) / "metrics.json").write_text('{"fake": true}')
            outputs["metrics"] = str(Path(out_dir) / "metrics.json")
        yield RunFinished(stopped, step, 0.1, outputs)

    return source


def _classes():
    from rmfn_napari._widgets._base import RunWidgetBase

    class PlainWidget(RunWidgetBase):
        """Start only (no open_run, no resume): like the fit-image widget."""

        task = "fake"

        def __init__(self, viewer, **run):
            super().__init__(viewer)
            self.run_kwargs = run
            self.calls = []

        def build_source(self, out_dir):
            self.calls.append((out_dir, False))
            if self.run_kwargs.get("form_error"):
                raise InputError(self.run_kwargs["form_error"])
            kwargs = {k: v for k, v in self.run_kwargs.items() if k != "form_error"}
            return fake_run(out_dir=out_dir, **kwargs)

    class RunsWidget(PlainWidget):
        """With "Open run…" and "Resume…"."""

        def build_source(self, out_dir, resume=False):
            source = super().build_source(out_dir)
            self.calls[-1] = (out_dir, resume)
            return source

        def open_run(self, folder):
            if not (Path(folder) / "metrics.json").is_file():
                raise InputError(f"{folder}: not a run folder (no metrics.json)")
            self.opened = folder

    return PlainWidget, RunsWidget


def _widget(make_napari_viewer, out, cls_index=0, **run):
    viewer = make_napari_viewer()
    w = _classes()[cls_index](viewer, **run)
    viewer.window.add_dock_widget(w, name="fake run")
    w.out_dir.set_path(str(out))
    return viewer, w


def _run(qtbot, w, start=None):
    with qtbot.waitSignal(w.runner.finished, timeout=20000):
        assert (start or w.start)() is not None
    return w


# ----------------------------------------------------------------------------- the dock
def test_dock_fits_a_1366x768_screen(make_napari_viewer, qtbot, tmp_out):
    """Both real widgets docked: small minimum heights before and after a tiny run."""
    from rmfn_napari._widgets import FitImageWidget, ReconstructWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.random.rand(32, 32).astype(np.float32), name="target")
    fit = FitImageWidget(viewer)
    rec = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(fit, name="Fit image (2D)")
    viewer.window.add_dock_widget(rec, name="Reconstruct")
    assert fit.minimumSizeHint().height() < 400 and rec.minimumSizeHint().height() < 400
    assert fit.scroll.widget() is fit.content and fit.form.parentWidget() is fit.content
    fit.layer_combo.setCurrentText("target")
    fit.schedule.setText("3,3")
    fit.hidden.setValue(16)
    fit.device.setCurrentText("cpu")
    fit.out_dir.set_path(str(tmp_out))
    _run(qtbot, fit)
    assert fit.runner.failure is None, fit.runner.failure
    assert fit.minimumSizeHint().height() < 400
    assert fit.content.minimumSizeHint().height() > fit.minimumSizeHint().height()  # it scrolls
    # the scroll area is never narrower than the form needs
    assert fit.minimumSizeHint().width() > fit.content.minimumSizeHint().width()
    window = viewer.window._qt_window
    assert window.minimumSizeHint().height() < 768, window.minimumSizeHint()


# ------------------------------------------------------- status, bar and ETA agree
def test_pause_status_bar_and_eta_agree_then_next_stage_clears_paused(
        make_napari_viewer, qtbot, tmp_out):
    from rmfn_napari._widgets.runner import RunState

    _viewer, w = _widget(make_napari_viewer, tmp_out, n_stages=2, steps=400, delay=0.01)
    w.start()
    qtbot.waitUntil(lambda: w.steps_done >= 3, timeout=10000)
    w.panel.pause_button.click()
    qtbot.waitUntil(lambda: w.events_seen.get("RunPaused", 0) == 1, timeout=5000)
    qtbot.wait(50)
    step = w.steps_done
    bar = w.panel.progress
    assert bar.value() == step and f"step {step}/800" in bar.format()
    assert "ETA paused" in bar.format() and "01:15" not in bar.format()
    assert w.panel.status.text() == f"Paused at step {step}. Resume, Next stage or Stop."
    w.panel.next_button.click()  # at once: no "Paused" left anywhere
    assert w.runner.state == RunState.RUNNING
    assert "Paused" not in w.panel.status.text() and "ETA paused" not in bar.format()
    assert "going on with stage 2" in w.panel.status.text()
    qtbot.waitUntil(lambda: w.stage == 1, timeout=10000)
    qtbot.waitUntil(lambda: "ETA 01:15" in bar.format(), timeout=5000)
    with qtbot.waitSignal(w.runner.finished, timeout=10000):
        w.panel.stop_button.click()
    assert w.runner.finished_event.stopped


def test_progress_bar_repaints_with_the_window_and_with_the_layers(make_napari_viewer, qtbot, tmp_out):
    """The bar never repaints synchronously (with napari's OpenGL canvas in the window each
    repaint composes the whole window, ~23 ms in software), and a repaint held back by the
    interval is done with the next layer update instead of on its own."""
    from qtpy.QtCore import QEvent, QObject

    viewer = make_napari_viewer(show=True)
    w = _classes()[0](viewer)
    viewer.window.add_dock_widget(w, name="fake run")
    bar = w.panel.progress

    class Paints(QObject):
        n = 0

        def eventFilter(self, obj, ev):  # noqa: N802 - Qt name
            if ev.type() == QEvent.Type.Paint:
                self.n += 1
            return False

    paints = Paints()
    bar.installEventFilter(paints)
    w.panel.set_total(100)
    qtbot.waitUntil(lambda: paints.n > 0, timeout=5000)  # the bar is on screen
    qtbot.wait(100)
    paints.n = 0
    w.panel.show_progress(Progress(0, 7, 100, 7, 50, 0.5, 1.0, 10.0), n_stages=2)
    assert paints.n == 0  # QProgressBar.setValue alone repaints before returning
    assert bar.value() == 7 and "step 7/100" in bar.format()
    qtbot.waitUntil(lambda: paints.n >= 1, timeout=5000)  # with the window's next paint

    w.progress_interval_s = 60.0
    w._last_paint = 0.0
    w._on_event(Progress(0, 8, 100, 8, 50, 0.5, 1.0, 10.0))  # due: painted
    w._on_event(Progress(0, 9, 100, 9, 50, 0.5, 1.0, 10.0))  # within the interval: waits
    assert bar.value() == 8 and w._paint_timer.isActive()
    w.layers.redrawn.emit()
    assert bar.value() == 9 and "step 9/100" in bar.format() and not w._paint_timer.isActive()
    w.layers.redrawn.emit()  # nothing due: nothing painted
    assert bar.value() == 9


# ------------------------------------------------------------- never a silent overwrite
@pytest.mark.parametrize("answer", ["cancel", "new", "overwrite"])
def test_folder_with_results_asks_first(make_napari_viewer, qtbot, tmp_out, answer):
    (tmp_out / "metrics.json").write_text('{"earlier": true}')
    _viewer, w = _widget(make_napari_viewer, tmp_out)
    asked = []

    def ask(parent, folder, names, new_folder):
        asked.append((folder, names, new_folder))
        return answer

    w.ask_about_results = ask
    if answer == "cancel":
        assert w.start() is None
        assert not w.runner.busy and w.calls == []
        assert w.panel.status.text().startswith(f"Not started: {tmp_out} holds results")
        assert (tmp_out / "metrics.json").read_text() == '{"earlier": true}'
    else:
        _run(qtbot, w)
        written = Path(w.run_out_dir) / "metrics.json"
        assert written.read_text() == '{"fake": true}'
        if answer == "new":
            assert w.run_out_dir == f"{tmp_out}-2" and w.out_dir.path() == f"{tmp_out}-2"
            assert (tmp_out / "metrics.json").read_text() == '{"earlier": true}'
        else:
            assert w.run_out_dir == str(tmp_out)
            assert any("WARNING: overwriting the results" in ln for ln in w.log.lines())
    assert asked == [(str(tmp_out), ["metrics.json"], f"{tmp_out}-2")]


def test_automatic_folder_is_new_per_run_under_home(make_napari_viewer, qtbot, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("RMFN_NAPARI_HOME", str(tmp_path / "runs"))
    viewer = make_napari_viewer()
    w = _classes()[0](viewer)
    w.ask_about_results = lambda *a: pytest.fail("an automatic folder never holds results")
    first = Path(w.out_dir.path())
    assert first.parent == tmp_path / "runs" and first.name.startswith("fake-")
    _run(qtbot, w)
    one = w.run_out_dir
    _run(qtbot, w)
    assert Path(one).parent == first.parent and w.run_out_dir != one  # same second: "-2"
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == sorted([Path(one).name, Path(w.run_out_dir).name])
    assert all((tmp_path / "runs" / r / "metrics.json").is_file() for r in runs)


# ----------------------------------------------------------------------------- the log
def test_log_panel_lines_bounded_saved_and_open_folder(make_napari_viewer, qtbot, tmp_out,
                                                       tmp_path):
    _viewer, w = _widget(make_napari_viewer, tmp_out, warn="reference box differs")
    opened = []
    w.log.open_url = lambda url: opened.append(url.toLocalFile()) or True
    assert not w.log.open_folder_button.isEnabled() and not w.log.expanded
    assert w.log.body.isHidden()
    _run(qtbot, w)
    lines = w.log.lines()
    stamp = r"^\[\d\d:\d\d:\d\d\] "
    assert all(re.match(stamp, ln) for ln in lines), lines
    text = "\n".join(lines)
    assert f"output folder: {tmp_out}" in lines[0]
    assert "WARNING: reference box differs" in text
    assert "stage 1/2 started: scale 1, 5 steps" in text and "stage 2 finished: 5 steps" in text
    assert "run finished after 10 steps" in lines[-1]
    w.log.toggle.click()
    assert w.log.expanded and not w.log.body.isHidden()
    assert w.log.toggle.text() == f"▾ Log ({len(lines)} lines)"
    saved = w.log.save(str(tmp_path / "run-log.txt"))
    assert Path(saved).read_text().splitlines() == lines
    w.log.ask_save_path = lambda *a: ""  # cancelled
    assert w.log.save() is None
    w.log.copy_button.click()
    from qtpy.QtWidgets import QApplication
    assert QApplication.clipboard().text() == w.log.text()
    assert w.log.open_folder_button.isEnabled()
    w.log.open_folder_button.click()
    assert opened == [str(Path(tmp_out).resolve())]
    # bounded: only the last max_lines lines stay
    w.log.view.setMaximumBlockCount(5)
    for k in range(20):
        w.log.add(f"line {k}")
    assert len(w.log.lines()) == 5 and w.log.lines()[-1].endswith("line 19")


# ----------------------------------------------------------------------- notifications
def test_errors_and_warnings_become_notifications(make_napari_viewer, qtbot, tmp_out):
    from napari.utils.notifications import NotificationSeverity, notification_manager

    def emitted(since):
        return [(n.severity, n.message) for n in notification_manager.records[since:]]

    _viewer, w = _widget(make_napari_viewer, tmp_out, form_error="schedule: 'abc' is not a number")
    n0 = len(notification_manager.records)
    assert w.start() is None
    assert emitted(n0) == [(NotificationSeverity.ERROR, "schedule: 'abc' is not a number")]
    assert w.panel.status.text() == "schedule: 'abc' is not a number"

    _viewer, w = _widget(make_napari_viewer, tmp_out / "b", warn="reference box differs", fail=3)
    n0 = len(notification_manager.records)
    _run(qtbot, w)
    assert emitted(n0) == [(NotificationSeverity.WARNING, "reference box differs"),
                           (NotificationSeverity.ERROR, "RuntimeError: the fake engine broke")]
    assert w.panel.progress.format() == "failed"
    qtbot.wait(int(1000 * w.progress_interval_s) + 300)  # no late progress repaint over it
    assert w.panel.progress.format() == "failed"
    assert "ERROR: RuntimeError: the fake engine broke" in w.log.lines()[-1]


# ------------------------------------------------------------ "Open run…" and "Resume…"
def test_open_run_and_resume_buttons(make_napari_viewer, qtbot, tmp_out, tmp_path):
    _viewer, plain = _widget(make_napari_viewer, tmp_out, cls_index=0)
    assert plain.panel.open_run_button.isHidden() and plain.panel.resume_button.isHidden()

    _viewer, w = _widget(make_napari_viewer, tmp_out, cls_index=1)
    assert not w.panel.open_run_button.isHidden() and not w.panel.resume_button.isHidden()
    run = tmp_path / "old-run"
    run.mkdir()
    w.choose_folder = lambda parent, caption, start: str(run)
    # not a run yet: the subclass's InputError lands in the status line
    w.panel.open_run_button.click()
    assert "not a run folder" in w.panel.status.text() and not hasattr(w, "opened")
    (run / "metrics.json").write_text("{}")
    w.panel.open_run_button.click()
    assert w.opened == str(run) and w.log.folder == str(run)
    # Resume: no checkpoint, no run
    w.panel.resume_button.click()
    assert "no checkpoint.pt" in w.panel.status.text() and not w.runner.busy and w.calls == []
    (run / "checkpoint.pt").write_bytes(b"x")
    w.ask_about_results = lambda *a: pytest.fail("resume continues in its folder: no question")
    _run(qtbot, w, w.resume_dialog)
    assert w.calls == [(str(run), True)] and w.run_out_dir == str(run)
    assert w.out_dir.path() == str(run)
    # cancelled dialogs do nothing
    w.choose_folder = lambda *a: ""
    assert w.resume_dialog() is None and w.open_run_dialog() is False
    # Start still calls build_source(out_dir) without resume
    w.out_dir.set_path(str(tmp_out))
    _run(qtbot, w)
    assert w.calls[-1] == (str(tmp_out), False)
    # while running the buttons are locked
    _viewer2, w2 = _widget(make_napari_viewer, tmp_out / "c", cls_index=1, steps=400, delay=0.01)
    w2.start()
    qtbot.waitUntil(lambda: w2.steps_done >= 1, timeout=10000)
    assert not w2.panel.open_run_button.isEnabled() and not w2.panel.resume_button.isEnabled()
    with qtbot.waitSignal(w2.runner.finished, timeout=10000):
        w2.stop()


@pytest.mark.parametrize("button, answer", [("Use a new folder out-2", "new"),
                                            ("Overwrite", "overwrite"), ("Cancel", "cancel")])
def test_results_question_buttons(qtbot, tmp_out, button, answer):
    """The real question box: its three buttons and their answers (clicked by a timer, so
    the modal loop ends by itself)."""
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication, QMessageBox

    from rmfn_napari._widgets.controls import ask_about_results

    shown = {}

    def click():
        box = QApplication.activeModalWidget()
        if not isinstance(box, QMessageBox):
            QTimer.singleShot(20, click)
            return
        shown["text"] = box.text()
        shown["buttons"] = sorted(b.text().replace("&", "") for b in box.buttons())
        next(b for b in box.buttons() if b.text().replace("&", "") == button).click()

    QTimer.singleShot(20, click)
    names = ["metrics.json", "run.log", "scale_1.tif", "scale_2.tif", "scale_3.tif"]
    assert ask_about_results(None, str(tmp_out), names, f"{tmp_out}-2") == answer
    assert shown["text"] == (f"{tmp_out} already holds results (metrics.json, run.log, "
                             "scale_1.tif, scale_2.tif and 1 more).")
    assert shown["buttons"] == ["Cancel", "Overwrite", "Use a new folder out-2"]
