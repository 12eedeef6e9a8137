"""``--nproc N``: run a command as N processes on this machine through torchrun's own launcher
(``torch.distributed``'s elastic agent, a c10d rendezvous on a free local port) — what
``torchrun --standalone --nproc-per-node N -m rmfn_napari.cli …`` does, with one line of
explanation instead of the agent's report when a rank fails.

A refused input (an :class:`~rmfn_napari.errors.InputError`) is usually the same on every rank:
the ranks launched here write their error line to a folder of the launch's
(:data:`RANK_ERRORS_ENV`, :func:`report_rank_error`) instead of stderr, and the launcher says
each different line once (``N copies of one line`` was the issue-28 complaint)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

#: Set for the ranks :func:`launch_local` starts: the folder where each writes its error line.
RANK_ERRORS_ENV = "RMFN_RANK_ERRORS"


def report_rank_error(message: str) -> bool:
    """Leave ``message`` (a rank's one-line error) for the launcher to say once; True when it
    was left (the rank then prints nothing), False outside a launch of :func:`launch_local`
    (e.g. under torchrun itself) or when it cannot be written (the rank prints it)."""
    folder, rank = os.environ.get(RANK_ERRORS_ENV), os.environ.get("RANK")
    if not folder or rank is None or os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return False
    try:
        (Path(folder) / f"rank_{int(rank)}.txt").write_text(message, encoding="utf-8")
        return True
    except (OSError, ValueError):
        return False


def _said_once(folder: Path, command: str, nproc: int) -> list[str]:
    """The ranks' error lines left in ``folder``, each different one once; when they differ,
    each names the ranks that said it."""
    said: dict[str, list[int]] = {}
    for f in sorted(folder.glob("rank_*.txt"), key=lambda f: int(f.stem.split("_")[1])):
        try:
            said.setdefault(f.read_text(encoding="utf-8").strip(), []).append(int(f.stem.split("_")[1]))
        except (OSError, ValueError):
            continue
    lines = []
    for message, ranks in said.items():
        who = "" if len(said) == 1 else \
            f" (rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, ranks))} of {nproc})"
        lines.append(f"rmfn {command}{who}: error: {message}")
    return lines


def strip_nproc(argv: list[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N`` (the ranks run the rest)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--nproc":
            skip = True
            continue
        if a.startswith("--nproc="):
            continue
        out.append(a)
    return out


STOP_GRACE_S = 300  # seconds the ranks have to finish their batch and write the outputs after a stop


@contextmanager
def _quiet_agent():
    """The elastic agent logs its configuration and every worker's fate; the ranks speak for
    themselves and :func:`launch_local` sums up."""
    prefixes = ("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")
    names = [n for n in logging.root.manager.loggerDict if n.startswith(prefixes)] + list(prefixes)
    saved = {n: logging.getLogger(n).level for n in names}
    for n in names:
        logging.getLogger(n).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for n, level in saved.items():
            logging.getLogger(n).setLevel(level)


def launch_local(nproc: int, argv: list[str], command: str,
                 out_hint: str | Callable[[], str] = "") -> int:
    """Run ``python -m rmfn_napari.cli *argv`` as ``nproc`` ranks on this machine; return the exit
    status: 0 when every rank succeeded, 130/143 when they were stopped by Ctrl-C/SIGTERM, else
    the first failed rank's status. On a failure stderr says each different error line of the
    ranks once; when every failed rank said the same refusal (exit status 2) that line is all,
    else a line follows naming the first failed rank, its cause and ``out_hint`` (a string, or
    a function called then: what is left in the output folder).

    The ranks run in sessions of their own; the launcher's agent passes Ctrl-C (SIGINT) or
    SIGTERM on to them, so they stop after their batch and rank 0 writes the outputs, and allows
    them :data:`STOP_GRACE_S` before killing them.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if "OMP_NUM_THREADS" not in os.environ:  # without --threads, share the cores between the ranks
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(nproc)))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=int(nproc), run_id=f"rmfn-{uuid.uuid4().hex[:8]}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0,
                          monitor_interval=0.5, start_method="spawn", shutdown_timeout=STOP_GRACE_S)
    errors = Path(tempfile.mkdtemp(prefix="rmfn-rank-errors-"))
    saved_env = os.environ.get(RANK_ERRORS_ENV)
    os.environ[RANK_ERRORS_ENV] = str(errors)  # the spawned ranks inherit it
    try:
        with _quiet_agent():
            elastic_launch(config, sys.executable)("-m", "rmfn_napari.cli", *argv)
        return 0
    except SignalException as exc:  # Ctrl-C or SIGTERM: passed on to the ranks, which stopped
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = {r: f.exitcode for r, f in exc.failures.items()}
        if all(c in (130, 143) for c in codes.values()):  # a clean stop on a signal, not a failure
            return max(codes.values())
        lines = _said_once(errors, command, nproc)
        for line in lines:
            print(line, file=sys.stderr)
        rank, failure = exc.get_first_failure()
        stopped = -int(signal.SIGTERM)  # a rank the agent stopped after another failed
        if len(lines) == 1 and failure.exitcode == 2 and all(c in (2, stopped) for c in codes.values()):
            return 2  # one refusal, said once: enough
        if failure.exitcode < 0:
            cause = f"was killed by {failure.signal_name()}"
            status = 128 - failure.exitcode
        else:
            cause = f"exited with status {failure.exitcode} (its message is above)"
            status = failure.exitcode
        hint = out_hint() if callable(out_hint) else out_hint
        print(f"rmfn {command}: rank {rank} of {nproc} {cause}; every rank was stopped"
              + (f"; {hint}" if hint else ""), file=sys.stderr)
        return status
    except Exception as exc:  # the agent itself (rendezvous, ports)
        print(f"rmfn {command}: could not launch {nproc} processes: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        if saved_env is None:
            os.environ.pop(RANK_ERRORS_ENV, None)
        else:
            os.environ[RANK_ERRORS_ENV] = saved_env
        shutil.rmtree(errors, ignore_errors=True)
