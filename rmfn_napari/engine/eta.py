"""Time left in a multi-stage run, from the measured cost of each stage, paused time excluded.

A coarse-to-fine run gets slower per step as it goes (later stages evaluate more scales and
more frequencies), so "elapsed / steps done × steps left" underestimates. :class:`EtaEstimator`
measures *active* seconds (the clock minus the time spent paused) and attributes each interval
between two finished steps to the stage of the step that ends it.

The rule
--------
With ``S_j`` the steps of stage ``j``, ``c`` the current stage and ``s`` its steps done::

    remaining = (S_c - s) · r_c  +  Σ_{j > c} S_j · r̂_j  +  (stage changes left) · b̂

* ``r_c``: the current stage's measured active seconds per step, over its steps after the
  first (the interval that ends with a stage's first step also holds the previous stage's
  evaluation, snapshots and the new stage's set-up: that is a *stage change*, see ``b̂``).
  In the first stage of the run every interval counts (there is no stage change before it).
  While the current stage has no rate yet, ``r_c`` is predicted like ``r̂`` from the last
  stage that has one.
* ``r̂_j``: a stage not run yet costs the last measured rate ``r_m`` scaled by the relative
  cost ``w_j / w_m``. ``w`` is ``relative_cost`` when the engine knows it (fit-image: stage
  ``k`` evaluates ``k + 1`` scales, so ``w_k = k + 1``); otherwise ``w_j = g^j``, where ``g``
  is the geometric mean of ``r_{k+1} / r_k`` over consecutive stages completed in this run,
  clamped to ``[1, max_growth]`` (1 until two stages are completed).
* ``b̂``: the mean measured stage-change time (0 before the first stage change).

Paused time never counts: between :meth:`EtaEstimator.pause` and :meth:`~EtaEstimator.resume`
the clock is stopped; :meth:`~EtaEstimator.around_pauses` does both for an engine's
``honour_requests`` by watching its ``RunPaused`` / ``RunResumed`` events. The time after the
last step (final evaluation, writing files) is not estimated.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Generator, Iterable, Sequence

from .events import Event, RunPaused, RunResumed

__all__ = ["EtaEstimator"]


class EtaEstimator:
    """Estimated seconds left in a run of several stages.

    Parameters
    ----------
    stage_steps : sequence of int
        Steps of each stage (``S_j``), in order.
    relative_cost : sequence of float, optional
        Relative cost of one step of each stage (``w_j``); None measures the growth instead.
    clock : callable returning seconds
        ``time.perf_counter`` by default (tests pass a fake clock).
    max_growth : float
        Largest per-stage growth of the step cost assumed when it is measured.

    The clock starts when the estimator is created (create it just before the first step).
    """

    def __init__(self, stage_steps: Sequence[int], relative_cost: Sequence[float] | None = None,
                 clock: Callable[[], float] = time.perf_counter, max_growth: float = 4.0):
        self.stage_steps = [max(int(n), 0) for n in stage_steps]
        if relative_cost is not None and len(relative_cost) != len(self.stage_steps):
            raise ValueError(f"relative_cost has {len(relative_cost)} values for "
                             f"{len(self.stage_steps)} stages")
        self.relative_cost = None if relative_cost is None else [float(w) for w in relative_cost]
        self.clock = clock
        self.max_growth = float(max_growth)
        self._mark = clock()
        self._paused_at: float | None = None
        self._paused_since_mark = 0.0
        self._seconds = [0.0] * len(self.stage_steps)  # active seconds of counted steps
        self._counted = [0] * len(self.stage_steps)    # steps that count towards the rate
        self._changes: list[float] = []                # stage-change times (s)
        self._stage: int | None = None
        self._stage_step = 0

    # ---- the clock ------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused_at is not None

    def pause(self) -> None:
        """Stop counting time (the run is paused)."""
        if self._paused_at is None:
            self._paused_at = self.clock()

    def resume(self) -> None:
        """Count time again after :meth:`pause`."""
        if self._paused_at is not None:
            self._paused_since_mark += self.clock() - self._paused_at
            self._paused_at = None

    def around_pauses(self, events: Iterable[Event]) -> Generator[Event, None, object]:
        """Yield ``events`` (e.g. ``honour_requests(control, step)``) unchanged, pausing the
        clock from a ``RunPaused`` to the next ``RunResumed``; return the generator's value.

        Use as ``command = yield from eta.around_pauses(honour_requests(control, step))``.
        """
        it = iter(events)
        while True:
            try:
                ev = next(it)
            except StopIteration as end:
                return end.value
            if isinstance(ev, RunPaused):
                self.pause()
            elif isinstance(ev, RunResumed):
                self.resume()
            yield ev

    # ---- measurements ---------------------------------------------------------------
    def step_done(self, stage: int, stage_step: int) -> None:
        """Record that step ``stage_step`` (1-based, within the stage) of ``stage`` (0-based)
        just finished."""
        now = self.clock()
        paused = self._paused_since_mark + (now - self._paused_at if self._paused_at is not None else 0.0)
        active = max(now - self._mark - paused, 0.0)
        self._mark = now
        self._paused_since_mark = 0.0
        if self._paused_at is not None:
            self._paused_at = now
        if self._stage is not None and stage != self._stage:
            self._changes.append(active)  # previous stage's evaluation + this stage's first step
        else:
            self._seconds[stage] += active
            self._counted[stage] += 1
        self._stage, self._stage_step = stage, int(stage_step)

    def rate(self, stage: int) -> float | None:
        """Measured active seconds per step of ``stage`` (None before it has one)."""
        n = self._counted[stage]
        return self._seconds[stage] / n if n else None

    def growth(self) -> float:
        """Measured per-stage growth ``g`` of the step cost (see the module doc)."""
        ratios = []
        for k in range(len(self.stage_steps) - 1):
            a, b = self.rate(k), self.rate(k + 1)
            if a and b and self._stage is not None and k + 1 < self._stage:  # both complete
                ratios.append(b / a)
        if not ratios:
            return 1.0
        g = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        return min(max(g, 1.0), self.max_growth)

    def _weight(self, stage: int, g: float) -> float:
        return self.relative_cost[stage] if self.relative_cost is not None else g ** stage

    def predicted_rate(self, stage: int) -> float:
        """Seconds per step of ``stage``: measured for the current stage once it has steps,
        else scaled from the last measured stage before it (``nan`` before any step)."""
        if stage == self._stage and self.rate(stage) is not None:
            return self.rate(stage)
        g = self.growth()
        for m in range(min(stage, len(self.stage_steps) - 1), -1, -1):
            r = self.rate(m)
            if r is not None:
                return r * self._weight(stage, g) / max(self._weight(m, g), 1e-12)
        return math.nan

    def remaining_s(self) -> float:
        """Estimated active seconds left (``nan`` before the first step; 0 after the last)."""
        c = self._stage
        if c is None:
            return math.nan
        left = max(self.stage_steps[c] - self._stage_step, 0) * self.predicted_rate(c)
        for j in range(c + 1, len(self.stage_steps)):
            if self.stage_steps[j]:
                left += self.stage_steps[j] * self.predicted_rate(j)
        changes = sum(1 for j in range(c + 1, len(self.stage_steps)) if self.stage_steps[j])
        if changes and self._changes:
            left += changes * sum(self._changes) / len(self._changes)
        return left
