"""The engine waits after a StageFinished until the GUI has drawn the stage end (issue 15): a
fake engine records when it goes on; the GUI side says "drawn" 400 ms after it saw the event."""

from __future__ import annotations

import time

import pytest

pytest.importorskip("napari")

from qtpy.QtCore import QTimer  # noqa: E402

from rmfn_napari._widgets import runner as runner_module  # noqa: E402
from rmfn_napari._widgets.runner import EngineRunner  # noqa: E402
from rmfn_napari.engine.events import Log, StageFinished  # noqa: E402


def _engine(times: dict):
    def source(control):
        yield StageFinished(0, 1, 0.1)
        times["went_on"] = time.monotonic()
        yield Log("next stage")
    return source


def _run(qtbot, hold: bool, drawn_after_ms: int | None) -> float:
    """Seconds between the GUI seeing StageFinished and the engine going on."""
    runner = EngineRunner()
    runner.hold_stage_ends = hold
    times: dict = {}

    def on_event(ev):
        if isinstance(ev, StageFinished):
            times["seen"] = time.monotonic()
            if drawn_after_ms is not None:
                QTimer.singleShot(drawn_after_ms, runner.stage_end_drawn)

    runner.event.connect(on_event)
    runner.start(_engine(times))
    qtbot.waitUntil(lambda: not runner.busy, timeout=10000)
    return times["went_on"] - times["seen"]


def test_the_engine_waits_until_the_stage_end_is_drawn(qtbot):
    assert _run(qtbot, hold=True, drawn_after_ms=400) >= 0.35


def test_without_the_hold_the_engine_goes_on_at_once(qtbot):
    assert _run(qtbot, hold=False, drawn_after_ms=400) < 0.3


def test_a_gui_that_never_says_drawn_delays_the_engine_a_bounded_time(qtbot, monkeypatch):
    monkeypatch.setattr(runner_module, "STAGE_END_HOLD_S", 0.5)
    waited = _run(qtbot, hold=True, drawn_after_ms=None)
    assert 0.4 <= waited < 3.0


def test_the_layer_updater_holds_stage_ends_and_says_when_drawn(make_napari_viewer, qtbot):
    from qtpy.QtCore import QObject

    from rmfn_napari._widgets.layers import LayerUpdater

    class Widget(QObject):
        def __init__(self):
            super().__init__()
            self.runner = EngineRunner(self)

    parent = Widget()
    drawn: list[float] = []
    parent.runner.stage_end_drawn = lambda: drawn.append(time.monotonic())
    updater = LayerUpdater(make_napari_viewer(), spatial_ndim=3, parent=parent)
    assert parent.runner.hold_stage_ends
    updater.stage_finished()
    assert drawn == []  # not inside the handler: after the event-loop pass that repaints
    qtbot.waitUntil(lambda: len(drawn) == 1, timeout=2000)
