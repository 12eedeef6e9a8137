"""CI runs the GPU check's dry mode: the same script, toy sizes, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_times_every_stage():
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    # one row per stage of D = 32, at float32 and at bf16
    for stage in (1, 2, 3):
        assert out.count(f"| 32 | {stage} | 16 | after |") == 2, out
    assert "dry run passed" in out


def test_gpu_check_refuses_unknown_options():
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--fast"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown option --fast" in proc.stderr
