"""The engine waits after a StageFinished until the GUI has drawn the stage end (issue 15): a
fake engine records when it goes on, the GUI side when it says "drawn"; the tests assert the
order of what happened, never how long it took."""

from __future__ import annotations

import threading
import types

import pytest

pytest.importorskip("napari")

from qtpy.QtCore import QTimer  # noqa: E402

from rmfn_napari._widgets import runner as runner_module  # noqa: E402
from rmfn_napari._widgets.runner import EngineRunner  # noqa: E402
from rmfn_napari.engine.control import RunControl  # noqa: E402
from rmfn_napari.engine.events import Log, StageFinished  # noqa: E402


def _run(qtbot, monkeypatch, hold: bool, say_drawn: bool) -> list[str]:
    """What happened, in order: "seen" (the GUI got StageFinished), "drawn" (the GUI said so,
    an event-loop pass later), "went on" (the engine resumed). The engine's own limit on the
    wait is made far longer than the test, so only "drawn" (or no hold) lets it go on."""
    monkeypatch.setattr(runner_module, "STAGE_END_HOLD_S", 1e6)
    runner = EngineRunner()
    runner.hold_stage_ends = hold
    log: list[str] = []

    def source(control):
        yield StageFinished(0, 1, 0.1)
        log.append("went on")
        yield Log("next stage")

    def drawn():
        log.append("drawn")
        runner.stage_end_drawn()

    def on_event(ev):
        if isinstance(ev, StageFinished):
            log.append("seen")
            if say_drawn:
                QTimer.singleShot(50, drawn)

    runner.event.connect(on_event)
    runner.start(source)
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    return log


def test_the_engine_waits_until_the_stage_end_is_drawn(qtbot, monkeypatch):
    assert _run(qtbot, monkeypatch, hold=True, say_drawn=True) == ["seen", "drawn", "went on"]


def test_without_the_hold_the_engine_goes_on_at_once(qtbot, monkeypatch):
    log = _run(qtbot, monkeypatch, hold=False, say_drawn=False)
    assert sorted(log) == ["seen", "went on"]  # nobody said drawn, and the limit is 1e6 s


def test_a_gui_that_never_says_drawn_delays_the_engine_a_bounded_time(monkeypatch):
    """The worker's wait ends when the gate opens, when a stop is asked, or when its limit has
    passed on the clock -- here a fake one that moves 0.3 s per look."""
    clock = types.SimpleNamespace(t=0.0)

    def monotonic():
        clock.t += 0.3
        return clock.t

    monkeypatch.setattr(runner_module, "time", types.SimpleNamespace(monotonic=monotonic))
    gate, control = threading.Event(), RunControl()
    runner_module._wait_for_gate(gate, control, 2.0)
    assert 2.0 < clock.t - 0.3 <= 2.6  # returned at its first look past the 2 s limit
    clock.t = 0.0
    control.request_stop()
    runner_module._wait_for_gate(gate, control, 2.0)
    assert clock.t == pytest.approx(0.3)  # a stop: at once, no look at the clock after
    clock.t = 0.0
    gate.set()
    runner_module._wait_for_gate(gate, RunControl(), 2.0)
    assert clock.t == pytest.approx(0.3)  # the gate open: at once


def test_the_layer_updater_holds_stage_ends_and_says_when_drawn(make_napari_viewer, qtbot):
    from qtpy.QtCore import QObject

    from rmfn_napari._widgets.layers import LayerUpdater

    class Widget(QObject):
        def __init__(self):
            super().__init__()
            self.runner = EngineRunner(self)

    parent = Widget()
    drawn: list[float] = []
    parent.runner.stage_end_drawn = lambda: drawn.append("drawn")
    updater = LayerUpdater(make_napari_viewer(), spatial_ndim=3, parent=parent)
    assert parent.runner.hold_stage_ends
    updater.stage_finished()
    assert drawn == []  # not inside the handler: after the event-loop pass that repaints
    qtbot.waitUntil(lambda: len(drawn) == 1, timeout=2000)
