"""``--nproc N``: run a command as N processes on this machine through torchrun's own launcher
(``torch.distributed``'s elastic agent, a c10d rendezvous on a free local port) — what
``torchrun --standalone --nproc-per-node N -m rmfn_napari.cli …`` does, with one line of
explanation instead of the agent's report when a rank fails."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from contextlib import contextmanager


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


def launch_local(nproc: int, argv: list[str], command: str, out_hint: str = "") -> int:
    """Run ``python -m rmfn_napari.cli *argv`` as ``nproc`` ranks on this machine; return the exit
    status: 0 when every rank succeeded, 130/143 when they were stopped by Ctrl-C/SIGTERM, else
    the first failed rank's status (after a line naming it and its cause on stderr).

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
        rank, failure = exc.get_first_failure()
        if failure.exitcode < 0:
            cause = f"was killed by {failure.signal_name()}"
            status = 128 - failure.exitcode
        else:
            cause = f"exited with status {failure.exitcode} (its message is above)"
            status = failure.exitcode
        print(f"rmfn {command}: rank {rank} of {nproc} {cause}; every rank was stopped"
              + (f"; {out_hint}" if out_hint else ""), file=sys.stderr)
        return status
    except Exception as exc:  # the agent itself (rendezvous, ports)
        print(f"rmfn {command}: could not launch {nproc} processes: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
