"""Reliability of output folders (issue 14): every ``--out`` is checked before any work (a file,
not writable, too little free space), one run per folder at a time (``.rmfn.lock`` with the
owner's pid; stale locks taken over), every file written atomically and all-or-none, and the
temp files of dead runs cleaned up. Each refusal is one line with exit status 2, nothing
half-written, nothing lost.

Classes of faults, one test (or one parametrised test) each: an unusable folder (file /
read-only / full disk) for every command and the APIs; a second run on a folder; a stale lock;
a run killed mid-way (its temps); a disk filling up mid-write; an output finished by another
run meanwhile; the space estimates against what the runs really write.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

from rmfn_napari.cli import main as cli_main
from rmfn_napari.engine import atomic, outdir, runlock
from rmfn_napari.engine.atomic import clean_stale_temps, replace_no_clobber, temp_path_for
from rmfn_napari.engine.outdir import (
    OutputDirError, check_output_dir, estimate_fit_image_bytes, estimate_reconstruct_bytes,
    estimate_simulate_bytes,
)
from rmfn_napari.engine.runlock import LOCK_NAME, RunLock
from rmfn_napari.errors import InputError

REPO = Path(__file__).resolve().parents[1]
MAP32 = str(REPO / "sample_data/maps/1ol5_32_2.0A.mrc")
SIM_OUTPUTS = ["particles.mrcs", "particles.star", "reference.mrc", "simulation.json", "true_poses.star"]
FIT_OUTPUTS_4 = sorted([f"scale_{k}.tif" for k in range(1, 5)] + [f"spectrum_{k}.tif" for k in range(1, 5)]
                       + ["metrics.json", "checkpoint.pt"])  # checkpoint.pt: what --resume continues
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
Usage = namedtuple("Usage", "total used free")


# ----------------------------------------------------------------------------- helpers
def _png(path: Path, size: int = 32, rgb: bool = False) -> Path:
    import imageio.v3 as iio

    y, x = np.mgrid[:size, :size] / size
    img = 0.5 + 0.25 * np.sin(6 * x) * np.cos(4 * y)
    if rgb:
        img = np.stack([img, img[::-1], img.T], -1)
    iio.imwrite(path, (img * 255).astype(np.uint8))
    return path


def _argv(command: str, out: Path, tmp_path: Path, **kw) -> list[str]:
    """A cheap, valid command line of each sub-command writing into ``out``."""
    if command == "simulate":
        return ["simulate", "--map", MAP32, "--n", str(kw.get("n", 12)), "--chunk", "5",
                "--out", str(out), "--quiet", *kw.get("extra", [])]
    if command == "fit-image":
        img = kw.get("image") or _png(tmp_path / "img.png")
        return ["fit-image", str(img), "--schedule", kw.get("schedule", "1,1,1,1"), "--hidden", "8",
                "--downsample", "1", "--device", "cpu", "--out", str(out), "--quiet", *kw.get("extra", [])]
    return ["reconstruct", str(kw.get("star", tmp_path / "particles.star")), "--preset", "tiny",
            "--device", "cpu", "--out", str(out), "--quiet", *kw.get("extra", [])]


def _run(capsys, argv) -> tuple[int, str]:
    rc = cli_main(argv)
    err = capsys.readouterr().err.strip()
    return rc, err


def _one_line(err: str) -> str:
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, f"expected one line, got:\n{err}"
    return err


def _listing(folder: Path) -> list[str]:
    return sorted(os.listdir(folder))


@pytest.fixture
def no_work(monkeypatch):
    """Make the work each command does after its folder checks fail the test if it starts."""
    started: list[str] = []

    def forbid(name):
        def f(*a, **k):
            started.append(name)
            raise AssertionError(f"{name} started although --out is unusable")
        return f

    import rmfn_napari.cli_commands.fit_image as cli_fit
    import rmfn_napari.cli_commands.reconstruct as cli_rec
    import rmfn_napari.cryoem.simulate as sim

    monkeypatch.setattr(cli_fit, "load_image", forbid("fit-image: load_image"))
    monkeypatch.setattr(cli_rec, "reconstruct", forbid("reconstruct"))
    monkeypatch.setattr(sim, "read_map", forbid("simulate: read_map"))
    return started


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ------------------------------------------------------------- unusable folders, every command
COMMANDS = ["simulate", "fit-image", "reconstruct"]


@pytest.mark.parametrize("command", COMMANDS)
def test_out_that_is_a_file_is_one_line_before_any_work(command, tmp_path, capsys, no_work):
    out = tmp_path / "results"
    out.write_text("my notes")
    rc, err = _run(capsys, _argv(command, out, tmp_path))
    assert rc == 2
    assert str(out) in _one_line(err) and "is a file" in err, err
    assert out.read_text() == "my notes"  # untouched
    assert no_work == []
    # a folder below a file: same answer, naming the file in the way
    rc, err = _run(capsys, _argv(command, out / "sub", tmp_path))
    assert rc == 2 and f"{out} is a file" in _one_line(err), err


@pytest.mark.parametrize("how", ["access", "probe", "chmod"])
@pytest.mark.parametrize("command", COMMANDS)
def test_unwritable_out_is_one_line_before_any_work(command, how, tmp_path, capsys, monkeypatch, no_work):
    parent = tmp_path / "ro"
    parent.mkdir()
    real_access, real_open = os.access, os.open
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root ignores mode bits: covered by the 'access' and 'probe' cases")
        parent.chmod(0o555)
    elif how == "access":  # what a non-root user sees on a chmod 555 folder
        monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == parent
                            else real_access(p, m, **k))
    else:  # os.access says yes (root), the file system says no: read-only mount, chattr +i
        def ro_open(p, flags, *a, **k):
            if Path(p).parent == parent and Path(p).name.startswith(".rmfn-probe"):
                raise OSError(errno.EROFS, "Read-only file system", str(p))
            return real_open(p, flags, *a, **k)
        monkeypatch.setattr(os, "open", ro_open)
    try:
        out = parent / "run"
        rc, err = _run(capsys, _argv(command, out, tmp_path))
        assert rc == 2
        _one_line(err)
        assert str(out) in err and f"{parent} is not writable" in err, err
        if how == "probe":
            assert "Read-only file system" in err
        assert not out.exists() and no_work == []
        assert _listing(parent) == []  # the probe file is gone too
    finally:
        parent.chmod(0o755)


@pytest.mark.parametrize("command", COMMANDS)
def test_full_disk_is_one_line_before_any_work(command, tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda p: Usage(10**12, 10**12 - 4096, 4096))
    out = tmp_path / "new" / "run"
    rc, err = _run(capsys, _argv(command, out, tmp_path))
    assert rc == 2
    assert str(out) in _one_line(err) and "not enough free space" in err and "4.0 KiB free" in err, err
    assert not out.exists() and not out.parent.exists()
    assert no_work == []


def test_full_disk_message_gives_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda p: Usage(10**12, 0, 5 * 2**20))
    need = estimate_simulate_bytes(1000, 64)
    with pytest.raises(OutputDirError, match=rf"5\.0 MiB free, about {re.escape(outdir._size(need))} needed"):
        check_output_dir(tmp_path / "o", need, "simulate (1000 particles of 64 px)")
    check_output_dir(tmp_path / "o", 5 * 2**20, "x")  # exactly enough: accepted, created
    assert (tmp_path / "o").is_dir()


def test_apis_check_out_before_any_work(tmp_path, monkeypatch):
    """simulate_particles and fit_image find out about a full disk before reading the map /
    building the network, and leave no folder behind."""
    import rmfn_napari.cryoem.simulate as sim
    import rmfn_napari.fitting.image_fitting as fitting

    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda p: Usage(10**12, 0, 1000))
    read = []
    monkeypatch.setattr(sim, "read_map", lambda *a: read.append(a))
    with pytest.raises(OutputDirError, match="not enough free space for simulate"):
        sim.simulate_particles(MAP32, tmp_path / "sim", n=10)
    assert read == [] and not (tmp_path / "sim").exists()

    built = []
    monkeypatch.setattr(fitting, "ResidualMFN", lambda *a, **k: built.append(1))
    gen = fitting.fit_image(np.random.default_rng(0).random((32, 32)),
                            fitting.FitImageConfig(schedule=(1, 1), hidden=8, device="cpu"),
                            out_dir=tmp_path / "fit")
    with pytest.raises(OutputDirError, match="not enough free space for fit-image"):
        next(gen)  # the first event: nothing trained yet
    assert built == [] and not (tmp_path / "fit").exists()


# --------------------------------------------------------------------- one run per folder
def test_second_run_refused_naming_the_pid_then_stale_lock_taken_over(tmp_path, capsys, caplog):
    out = tmp_path / "run"
    img = _png(tmp_path / "img.png")
    first = subprocess.Popen([sys.executable, "-m", "rmfn_napari.cli",
                              *_argv("fit-image", out, tmp_path, image=img, schedule="1000000")],
                             env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        lock = out / LOCK_NAME
        deadline = time.monotonic() + 120
        while not lock.exists():
            assert first.poll() is None, first.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.1)
        time.sleep(0.3)
        info = json.loads(lock.read_text())
        assert info["pid"] == first.pid and info["host"] and info["started"] > 0

        # a second run of every command on the folder: refused at once, one line naming the pid
        for command in COMMANDS:
            rc, err = _run(capsys, _argv(command, out, tmp_path, image=img))
            assert rc == 2, (command, err)
            assert f"pid {first.pid}" in _one_line(err) and str(out) in err, err
        # and as a process of its own: the exit status is 2
        second = subprocess.run([sys.executable, "-m", "rmfn_napari.cli", *_argv("simulate", out, tmp_path)],
                                env=ENV, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in _one_line(second.stderr.strip()), second.stderr
        assert first.poll() is None  # the first run was not disturbed
        assert json.loads(lock.read_text())["pid"] == first.pid
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
        first.stderr.close()

    # killed: its lock stays behind, stale. Temps of dead runs are planted next to it.
    assert lock.exists()
    dead_tmp = out / f".scale_0.tif.tmp-{first.pid}"
    dead_tmp.write_bytes(b"half")
    old_ckpt = out / ".checkpoint.k2j4h5g6.pt"
    old_ckpt.write_bytes(b"half")
    os.utime(old_ckpt, (time.time() - 3600,) * 2)
    caplog.set_level(logging.WARNING, logger="rmfn_napari.engine")
    rc, err = _run(capsys, _argv("fit-image", out, tmp_path, image=img))
    assert rc == 0, err
    notes = caplog.text
    assert "took over the lock" in notes and f"pid {first.pid}" in notes and "no longer running" in notes
    assert dead_tmp.name in notes and old_ckpt.name in notes
    assert _listing(out) == FIT_OUTPUTS_4  # no lock, no temps: just the 10 outputs


def test_lock_file_content_release_and_release_on_exception(tmp_path):
    with RunLock(tmp_path) as lock:
        info = json.loads((tmp_path / LOCK_NAME).read_text())
        assert info["pid"] == os.getpid() and info["token"] == lock.token
        assert abs(info["started"] - time.time()) < 60 and lock.took_over is None
    assert not (tmp_path / LOCK_NAME).exists()
    with pytest.raises(RuntimeError):
        with RunLock(tmp_path):
            raise RuntimeError("boom")
    assert _listing(tmp_path) == []


def test_lock_is_reentrant_in_its_thread_and_refused_to_others(tmp_path):
    import threading

    with RunLock(tmp_path):
        with RunLock(tmp_path):  # the CLI holds it, the API it calls takes it again
            pass
        assert (tmp_path / LOCK_NAME).exists()  # the inner exit did not release it
        errors = []

        def other():
            try:
                with RunLock(tmp_path):
                    errors.append(None)
            except OutputDirError as exc:
                errors.append(str(exc))

        t = threading.Thread(target=other)
        t.start()
        t.join()
        assert errors[0] and f"pid {os.getpid()}" in errors[0], errors
    assert not (tmp_path / LOCK_NAME).exists()


@pytest.mark.parametrize("case", ["dead pid", "own pid, earlier process", "unreadable, old"])
def test_stale_locks_are_taken_over_with_a_note(case, tmp_path, caplog):
    lock = tmp_path / LOCK_NAME
    if case == "dead pid":
        pid = _dead_pid()
        lock.write_text(json.dumps({"pid": pid, "host": runlock._hostname(), "started": time.time() - 5}))
    elif case == "own pid, earlier process":  # e.g. a restarted container reusing the pid
        pid = os.getpid()
        lock.write_text(json.dumps({"pid": pid, "host": runlock._hostname(), "started": time.time() - 5}))
    else:
        pid = None
        lock.write_text("{garbage")
        os.utime(lock, (time.time() - 60,) * 2)
    caplog.set_level(logging.WARNING, logger="rmfn_napari.engine.runlock")
    with RunLock(tmp_path) as rl:
        assert json.loads(lock.read_text())["token"] == rl.token
        assert rl.took_over is not None
    assert "took over the lock" in caplog.text
    if pid is not None:
        assert f"pid {pid}" in caplog.text and rl.took_over["pid"] == pid
    assert not lock.exists()


def test_live_or_foreign_locks_are_never_taken_over(tmp_path):
    lock = tmp_path / LOCK_NAME
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": runlock._hostname(), "started": time.time()}))
        with pytest.raises(OutputDirError, match=f"pid {sleeper.pid} on "):
            RunLock(tmp_path).__enter__()
    finally:
        sleeper.kill()
        sleeper.wait()
    # another machine's lock cannot be checked from here: refused, however dead the pid looks
    lock.write_text(json.dumps({"pid": _dead_pid(), "host": "elsewhere.example", "started": time.time()}))
    with pytest.raises(OutputDirError, match=r"on elsewhere\.example \(another machine"):
        RunLock(tmp_path).__enter__()
    # a lock being written this very moment (empty, fresh) is not stale either
    lock.write_text("")
    with pytest.raises(OutputDirError, match="creating its lock file"):
        RunLock(tmp_path).__enter__()
    assert lock.exists()


_RACER = """
import sys, time
from pathlib import Path
from rmfn_napari.engine.outdir import OutputDirError
from rmfn_napari.engine.runlock import RunLock
folder = Path(sys.argv[1])
print("ready", flush=True)
while not (folder.parent / "go").exists():
    time.sleep(0.01)
try:
    with RunLock(folder):
        print("got", flush=True)
        time.sleep(3)
except OutputDirError as exc:
    print("refused", exc, flush=True)
"""


def test_racing_runs_on_a_stale_lock_only_one_wins(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": runlock._hostname(),
                                                "started": time.time() - 5}))
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, str(folder)], env=ENV, cwd=REPO,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "ready"
        (tmp_path / "go").touch()
        results = [p.communicate(timeout=60)[0].strip() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert sum(r.startswith("got") for r in results) == 1, results
    assert sum(r.startswith("refused") for r in results) == 3, results
    assert _listing(folder) == []


# ------------------------------------------------------------------------- stale temps
def test_clean_stale_temps_removes_only_dead_runs_temps(tmp_path):
    dead = _dead_pid()
    me = os.getpid()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    old = time.time() - 3600
    files = {
        f".particles.mrcs.tmp-{dead}": True,          # stack temp of a dead run
        f"..particles.star.tmp-{dead}.tmp-{dead}": True,
        f".map.mrc.tmp-{dead}": True,
        f".rmfn-probe-{dead}-0a1b2c3d": True,
        f".particles.mrcs.tmp-{me}": False,           # ours: possibly being written
        f".scale_1.mrc.tmp-{sleeper.pid}": False,     # a live process's (written just now)
        f".old.mrc.tmp-{sleeper.pid}": True,          # written before that process started: reused pid
        ".checkpoint.abc_12xy.pt": True,              # pid-less, older than the lock
        ".metrics.q8w7e6r5.json": True,
        ".scale_0.tif.ab12cd34.tif": True,            # earlier fit-image writer
        ".metrics.json.ab12cd34.json": True,
        "particles.mrcs": False, "checkpoint.pt": False, "scale_0.tif.tmp-1": False,  # not temps
        ".hidden_notes": False,
    }
    try:
        for name in files:
            (tmp_path / name).write_bytes(b"x")
            os.utime(tmp_path / name, (old, old))
        os.utime(tmp_path / f".scale_1.mrc.tmp-{sleeper.pid}", None)
        fresh = tmp_path / ".checkpoint.fresh123.pt"  # written after the lock: a live writer's
        fresh.write_bytes(b"x")
        (tmp_path / f".dir.tmp-{dead}").mkdir()       # not a file: left alone
        before = time.time() - 60

        # without a lock time, pid-less temps are left alone
        removed = clean_stale_temps(tmp_path)
        pidded = {n for n, gone in files.items() if gone and "tmp-" in n or n.startswith(".rmfn-probe")}
        assert {p.name for p in removed} == pidded
        removed = clean_stale_temps(tmp_path, before=before)
        assert {p.name for p in removed} == {n for n, gone in files.items() if gone} - pidded
        expected = sorted([n for n, gone in files.items() if not gone]
                          + [fresh.name, f".dir.tmp-{dead}"])
        assert _listing(tmp_path) == expected
    finally:
        sleeper.kill()
        sleeper.wait()


def test_tmp_names_embed_the_pid():
    from rmfn_napari.cryoem.io import _tmp_name

    assert _tmp_name(Path("/x/particles.mrcs")) == Path(f"/x/.particles.mrcs.tmp-{os.getpid()}")
    assert temp_path_for("/x/metrics.json").name == f".metrics.json.tmp-{os.getpid()}"


# ---------------------------------------------------------------------- atomic writes
def test_atomic_writes_fsync_before_the_rename_and_leave_nothing_on_failure(tmp_path, monkeypatch):
    import mrcfile

    from rmfn_napari.cryoem.io import write_map

    target = write_map(tmp_path / "ref.mrc", np.ones((4, 4, 4), np.float32), 1.0)
    before = target.read_bytes()
    synced = []
    real_fsync = atomic.fsync_file
    monkeypatch.setattr(atomic, "fsync_file", lambda p: (synced.append((Path(p).name, Path(p).exists())),
                                                         real_fsync(p)))
    write_map(target, np.full((4, 4, 4), 2.0, np.float32), 1.0)
    assert synced == [(f".ref.mrc.tmp-{os.getpid()}", True)]  # the temp, before it was renamed
    assert np.all(mrcfile.read(target) == 2.0)

    class HalfWritten:
        def __init__(self, name, **k):
            Path(name).write_bytes(b"half a map")

        def __enter__(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def __exit__(self, *a):
            return False

    after_first = target.read_bytes()
    assert after_first != before
    monkeypatch.setattr(mrcfile, "new", HalfWritten)
    with pytest.raises(OSError, match="No space left"):
        write_map(target, np.zeros((4, 4, 4), np.float32), 1.0)
    assert _listing(tmp_path) == ["ref.mrc"] and target.read_bytes() == after_first


def test_replace_no_clobber_never_replaces(tmp_path):
    tmp = tmp_path / ".a.tmp-1"
    tmp.write_text("mine")
    final = tmp_path / "a"
    final.write_text("theirs")
    with pytest.raises(OutputDirError, match="another run meanwhile"):
        replace_no_clobber(tmp, final)
    assert final.read_text() == "theirs" and tmp.read_text() == "mine"
    final.unlink()
    replace_no_clobber(tmp, final)
    assert final.read_text() == "mine" and not tmp.exists()


# ------------------------------------------------------------------ a disk filling mid-write
@pytest.mark.parametrize("where", ["stack", "star"])
@pytest.mark.parametrize("previous", [False, True])
def test_simulate_disk_full_mid_write(where, previous, tmp_path, capsys, monkeypatch):
    import starfile

    from rmfn_napari.cryoem.io import StackWriter

    out = tmp_path / "sim"
    if previous:  # an earlier run's outputs, to be replaced with --overwrite: must survive
        assert cli_main(_argv("simulate", out, tmp_path, n=6)) == 0
        old = {n: (out / n).read_bytes() for n in SIM_OUTPUTS}
        capsys.readouterr()
    calls = []
    if where == "stack":
        real = StackWriter.write

        def write(self, images):
            calls.append(1)
            if len(calls) == 2:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, images)
        monkeypatch.setattr(StackWriter, "write", write)
    else:
        def write(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(starfile, "write", write)
    extra = ["--overwrite"] if previous else []
    rc, err = _run(capsys, _argv("simulate", out, tmp_path, n=12, extra=extra))
    assert rc == 2
    assert "No space left on device" in _one_line(err) and str(out) in err, err
    if previous:
        assert _listing(out) == SIM_OUTPUTS
        assert {n: (out / n).read_bytes() for n in SIM_OUTPUTS} == old  # nothing lost
    else:
        assert not out.exists() or _listing(out) == []  # nothing half-written, no lock


@pytest.mark.parametrize("previous", [False, True])
def test_fit_image_disk_full_mid_write_leaves_no_partial_set(previous, tmp_path, capsys, monkeypatch):
    import tifffile

    out = tmp_path / "fit"
    img = _png(tmp_path / "img.png")
    if previous:  # an earlier run's outputs (another seed: other bytes) must survive
        assert cli_main(_argv("fit-image", out, tmp_path, image=img, extra=["--seed", "7"])) == 0
        old = {n: (out / n).read_bytes() for n in FIT_OUTPUTS_4}
        capsys.readouterr()
    real = tifffile.imwrite
    calls = []

    def imwrite(*a, **k):
        calls.append(1)
        if len(calls) == 3:  # 2 of the 9 files written, the 3rd finds the disk full
            Path(a[0]).write_bytes(b"half")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*a, **k)
    monkeypatch.setattr(tifffile, "imwrite", imwrite)
    rc, err = _run(capsys, _argv("fit-image", out, tmp_path, image=img))
    assert rc != 0 and rc == 2
    assert "No space left on device" in _one_line(err) and str(out) in err, err
    assert len(calls) == 3
    # the outputs: all or none; checkpoint.pt (complete, written at each stage end) stays, so
    # the fit can be resumed (--resume) once there is room
    outputs = [n for n in FIT_OUTPUTS_4 if n != "checkpoint.pt"]
    if previous:
        assert _listing(out) == FIT_OUTPUTS_4
        assert {n: (out / n).read_bytes() for n in outputs} == {n: old[n] for n in outputs}
    else:
        assert _listing(out) == ["checkpoint.pt"]


# ---------------------------------------------------- outputs finished by another run meanwhile
def test_simulate_without_overwrite_never_replaces_outputs_finished_meanwhile(tmp_path, monkeypatch):
    import rmfn_napari.cryoem.simulate as sim

    out = tmp_path / "sim"
    real = sim.write_map

    def write_map_and_another_run_finishes(*a, **k):  # a writer that does not take the lock
        res = real(*a, **k)
        (out / "particles.star").write_text("another run's STAR")
        return res
    monkeypatch.setattr(sim, "write_map", write_map_and_another_run_finishes)
    with pytest.raises(InputError, match="written by another run meanwhile; nothing replaced"):
        sim.simulate_particles(MAP32, out, n=8, seed=1)
    assert _listing(out) == ["particles.star"]
    assert (out / "particles.star").read_text() == "another run's STAR"

    # and with overwrite it is replaced, as documented
    monkeypatch.setattr(sim, "write_map", real)
    res = sim.simulate_particles(MAP32, out, n=8, seed=1, overwrite=True)
    assert "data_particles" in res.star.read_text()
    assert _listing(out) == SIM_OUTPUTS


def test_simulate_moves_outputs_in_place_fsynced(tmp_path, monkeypatch):
    synced = []
    real = atomic.fsync_file

    def record(p):
        synced.append(Path(p).name)
        real(p)
    monkeypatch.setattr(atomic, "fsync_file", record)
    import rmfn_napari.cryoem.simulate as sim
    sim.simulate_particles(MAP32, tmp_path / "a", n=4)
    sim.simulate_particles(MAP32, tmp_path / "a", n=4, overwrite=True)
    pid = os.getpid()
    for name in SIM_OUTPUTS:  # no overwrite: hard link; overwrite: os.replace; both fsync first
        assert synced.count(f".{name}.tmp-{pid}") == 2, (name, synced)


# ------------------------------------------------------------------------- the estimates
def _total(folder: Path, names) -> int:
    return sum((folder / n).stat().st_size for n in names)


def test_simulate_estimate_covers_what_it_writes(tmp_path, capsys):
    out = tmp_path / "sim"
    assert cli_main(_argv("simulate", out, tmp_path, n=50)) == 0
    assert _listing(out) == SIM_OUTPUTS
    written = _total(out, SIM_OUTPUTS)
    need = estimate_simulate_bytes(50, 32)
    assert written <= need <= written + 128 * 2**10, (written, need)


def test_fit_image_estimate_covers_what_it_writes(tmp_path):
    out = tmp_path / "fit"
    img = _png(tmp_path / "rgb.png", size=64, rgb=True)
    assert cli_main(["fit-image", str(img), "--schedule", "1,1,1,1", "--hidden", "8",
                     "--downsample", "2", "--device", "cpu", "--out", str(out), "--quiet"]) == 0
    assert _listing(out) == FIT_OUTPUTS_4
    written = _total(out, FIT_OUTPUTS_4)
    need = estimate_fit_image_bytes((64, 64, 3), 2, 4, hidden=8)
    assert written <= need <= written + 256 * 2**10, (written, need)


def test_reconstruct_estimate_covers_what_it_writes(tmp_path):
    from analytic_maps import write_sample_map_16

    from rmfn_napari.cryoem.reconstruct import ReconstructConfig
    from rmfn_napari.cryoem.simulate import simulate_particles

    sim = simulate_particles(write_sample_map_16(tmp_path / "m16.mrc"), tmp_path / "sim", n=60, seed=1)
    out = tmp_path / "rec"
    assert cli_main(["reconstruct", str(sim.star), "--preset", "tiny", "--epochs", "1,1,1",
                     "--batch", "30", "--device", "cpu", "--no-align", "--out", str(out), "--quiet"]) == 0
    names = [n for n in _listing(out)]
    assert LOCK_NAME not in names and not any(n.startswith(".") for n in names), names
    written = _total(out, names)
    cfg = ReconstructConfig.from_preset("tiny")
    need = estimate_reconstruct_bytes(box=16, n_particles=60, n_layers=cfg.n_layers, hidden=cfg.hidden)
    assert written <= need <= 2 * written + 4 * 2**20, (written, need)
    # before the STAR is read (box and n unknown) the estimate is a lower bound of that
    assert estimate_reconstruct_bytes(n_layers=cfg.n_layers, hidden=cfg.hidden) < need


def test_failed_run_removes_the_folder_it_created(tmp_path, capsys):
    out = tmp_path / "never"
    rc, err = _run(capsys, ["fit-image", str(tmp_path / "missing.png"), "--out", str(out), "--quiet"])
    assert rc == 2 and "missing.png" in _one_line(err)
    assert not out.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    rc, err = _run(capsys, ["fit-image", str(tmp_path / "missing.png"), "--out", str(kept), "--quiet"])
    assert rc == 2 and kept.is_dir() and _listing(kept) == []  # existed before: kept, empty
