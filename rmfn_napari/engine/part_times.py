"""Where a run's time goes: wall-clock seconds per named part, collected stage by stage.

The reconstruction driver wraps each part of a stage — the stage's data, the global search,
the structure steps, the pose steps, the stage-end evaluation (maps, half-maps, FSCs,
alignment), ``--advance auto``'s checks, checkpoints — in :meth:`PartTimes.part`; each stage's
seconds go to ``metrics.json`` (``stages[i].time_s``) and ``benchmarks/time_breakdown.py``
prints them as a table.

On a CPU every part is timed exactly (torch runs synchronously). On a GPU kernels run
asynchronously: a part's clock stops when its Python code returns, not when its kernels finish,
so time spent by one part's kernels can be counted in the next part that waits for them (the
structure steps' kernels finish while the pose steps wait on the loss). A batch's total is exact
there (its losses are read back at its end), and so is every part that reads results back
(the search, the evaluation, checkpoints).
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Callable, Iterator


class PartTimes:
    """Seconds per part name, accumulated until :meth:`take`.

    ``clock``: seconds (``time.perf_counter`` by default; tests pass a fake one)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self._seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def part(self, name: str) -> Iterator[None]:
        """Count the time spent inside the ``with`` block towards ``name`` (also when it raises)."""
        start = self.clock()
        try:
            yield
        finally:
            self._seconds[name] += self.clock() - start

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` towards ``name`` (a part timed elsewhere)."""
        self._seconds[name] += float(seconds)

    def take(self) -> dict[str, float]:
        """The seconds per part since the last call (rounded to ms), and start again."""
        out = {name: round(s, 3) for name, s in self._seconds.items()}
        self._seconds.clear()
        return out
