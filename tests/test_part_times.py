"""Where a run's time goes (issue 27 item 2): engine/part_times.PartTimes on a fake clock."""

from __future__ import annotations

import pytest

from rmfn_napari.engine.part_times import PartTimes


def test_parts_accumulate_per_name_count_a_raising_block_and_restart_on_take():
    now = [0.0]
    times = PartTimes(clock=lambda: now[0])
    with times.part("search"):
        now[0] += 2.0
    with times.part("steps"):
        now[0] += 0.5
    with times.part("search"):
        now[0] += 1.25
    with pytest.raises(RuntimeError):
        with times.part("steps"):
            now[0] += 0.25
            raise RuntimeError("a failing part still took its time")
    times.add("evaluation", 4.0)
    now[0] += 100.0  # outside any part: not counted
    assert times.take() == {"search": 3.25, "steps": 0.75, "evaluation": 4.0}
    assert times.take() == {}
