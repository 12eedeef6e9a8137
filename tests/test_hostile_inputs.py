"""Hostile inputs and faults of issue 28, one test per class: each gives one line naming the
file or setting and the problem, exit status 2 (the CLI's InputError), no traceback, nothing
half-written and nothing lost.

* A disk filling while ``reconstruct`` writes its checkpoint (``torch.save`` raises a
  RuntimeError without an errno) or its stage-end maps (``OSError`` ENOSPC): handled once, in
  :func:`rmfn_napari.engine.atomic.atomic_path`, for every writer.
"""

from __future__ import annotations

import errno
import os
import types
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import torch

from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem.reconstruct.outputs import load_checkpoint
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.engine import atomic
from rmfn_napari.errors import DiskFullError, InputError

from analytic_maps import write_sample_map_16

Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """60 noisy CTF particles of a 16^3 map."""
    root = tmp_path_factory.mktemp("hostile")
    map_path = write_sample_map_16(root / "map16.mrc")
    return simulate_particles(map_path, root / "sim", n=60, snr=0.5, seed=3)


def _tiny(star, out, *extra) -> list[str]:
    return ["reconstruct", str(star), "--out", str(out), "--preset", "tiny", "--epochs", "2,1,1",
            "--batch", "30", "--device", "cpu", "--seed", "4", "--pose-init", "random", "--threads", "1",
            "--no-align", "--quiet", *extra]


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ------------------------------------------------------------------ a disk filling mid-run
@pytest.mark.parametrize("what", ["checkpoint", "stage-end map"])
def test_disk_full_while_reconstruct_writes_is_one_line_and_keeps_the_earlier_files(
        what, sim, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    kept = {}
    if what == "checkpoint":
        real_save = torch.save
        calls = []

        def save(obj, f, *a, **k):  # the 2nd checkpoint finds the disk full, as torch says it
            calls.append(1)
            if len(calls) == 2:
                kept["checkpoint.pt"] = (out / "checkpoint.pt").read_bytes()
                Path(f).write_bytes(b"PK\x03\x04 half a zip")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
            return real_save(obj, f, *a, **k)
        monkeypatch.setattr(torch, "save", save)
        name = "checkpoint.pt"
    else:
        import mrcfile
        real_new = mrcfile.new
        calls = []

        def new(name, *a, **k):  # the 2nd stage's first map finds the disk full
            calls.append(1)
            if len(calls) == 5:  # stage 1 wrote half_map_1, half_map_2, map, mask_auto
                kept["half_map_1.mrc"] = (out / "half_map_1.mrc").read_bytes()
                Path(name).write_bytes(b"half a map")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_new(name, *a, **k)
        monkeypatch.setattr(mrcfile, "new", new)
        name = "half_map_1.mrc"
    # the disk is full at that point: no room, whatever this machine has
    monkeypatch.setattr(atomic, "shutil", types.SimpleNamespace(disk_usage=lambda p: Usage(10**9, 10**9, 0)))
    rc = cli_main(_tiny(sim.star, out))
    err = capsys.readouterr().err
    assert rc == 2, err
    line = _one_line(err)
    assert str(out / name) in line and "disk full (0 bytes free)" in line, line
    assert kept and all((out / n).read_bytes() == b for n, b in kept.items())  # untouched
    assert load_checkpoint(out / "checkpoint.pt")["state"]["step"] > 0  # the earlier one loads
    assert _temps(out) == [] and not (out / ".rmfn.lock").exists()


def test_atomic_write_failures_for_want_of_room_are_one_line_oserrors_too(tmp_path, monkeypatch):
    """Callers that catch a failed write as OSError (the widgets' Save…) keep working; anything
    else (a bug, another OSError) passes through unchanged."""
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    for exc in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
                RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")):
        with pytest.raises(DiskFullError) as info:
            with atomic.atomic_path(target) as tmp:
                Path(tmp).write_bytes(b"new, half")
                raise exc
        assert isinstance(info.value, OSError) and isinstance(info.value, InputError)
        assert info.value.errno in atomic.NO_ROOM_ERRNOS
        assert str(info.value).startswith(f"{target}: ") and "free" in str(info.value)
        assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]
    for exc in (OSError(errno.EACCES, "Permission denied"), RuntimeError("a bug"), ValueError("bad")):
        with pytest.raises(type(exc)) as info:
            with atomic.atomic_path(target) as tmp:
                raise exc
        assert info.value is exc
    assert np.frombuffer(target.read_bytes(), np.uint8).size == 3
