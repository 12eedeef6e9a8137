"""Data parallelism over processes with ``torch.distributed``: who this process is, what it owns,
and the few collectives an engine needs.

One process per device (``torchrun --nproc-per-node N``, or ``rmfn reconstruct --nproc N``, which
launches torchrun's machinery on this machine): NCCL between CUDA GPUs, gloo between CPU
processes. Every rank holds the same network — wrapped in ``DistributedDataParallel``, which
all-reduces its gradients — and its own shard of the data. Without torchrun's environment
(``WORLD_SIZE`` unset or 1) :data:`SINGLE` stands in and every collective is the identity, so the
one-process path (the napari widget's) runs the same code.

A collective that fails — another rank died, raised or was killed, so its sockets closed, or
the group's timeout passed — raises :class:`RankLostError` naming this rank and the operation,
never a hang: the process group is created with a timeout (``RMFN_DIST_TIMEOUT_S``, default 600 s).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import InputError

DEFAULT_TIMEOUT_S = 600.0
#: Seconds a rank leaves the GIL free before it leaves the group (:func:`stop`).
END_GRACE_S = 0.05


class RankLostError(RuntimeError):
    """A collective operation failed: another rank stopped, died or timed out."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: ``rank`` of ``world``, its device, the backend."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str = ""

    @property
    def active(self) -> bool:
        """Whether there is more than one process."""
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and reports."""
        return self.rank == 0

    @property
    def name(self) -> str:
        """``'rank 1 of 4'`` (empty in one process)."""
        return f"rank {self.rank} of {self.world}" if self.active else ""

    def shard(self, n: int) -> np.ndarray:
        """The items ``0..n-1`` this rank owns: a contiguous block, sorted (``n // world`` or one
        more; every item has exactly one owner)."""
        return np.array_split(np.arange(int(n)), self.world)[self.rank]

    # ---- collectives (identities in one process) ---------------------------------------------
    @contextlib.contextmanager
    def guard(self, what: str):
        """Turn a failed collective inside the block into :class:`RankLostError` naming ``what``."""
        if not self.active:
            yield
            return
        try:
            yield
        except (RuntimeError, torch.distributed.DistError) as exc:
            if isinstance(exc, RankLostError):
                raise
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            first = re.sub(r"\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first).split(". ")[0]  # gloo's source line
            raise RankLostError(f"{self.name}: {what} failed: another rank stopped, died or timed out "
                                f"({first[:200]})") from None

    def _reduce(self, t: torch.Tensor, op, what: str) -> torch.Tensor:
        t = t.to(self.device)
        with self.guard(what):
            torch.distributed.all_reduce(t, op=op)
        return t

    def mean(self, values: torch.Tensor, what: str = "averaging the losses") -> torch.Tensor:
        """Element-wise mean over the ranks of a small tensor (returned on this rank's device)."""
        if not self.active:
            return values
        return self._reduce(values.detach().clone(), torch.distributed.ReduceOp.SUM, what) / self.world

    def total(self, values, what: str = "summing counts") -> list[float]:
        """Element-wise sum over the ranks of a few numbers."""
        if not self.active:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        return self._reduce(t, torch.distributed.ReduceOp.SUM, what).cpu().tolist()

    def any(self, flag: bool, what: str = "agreeing on a stop") -> bool:
        """True on every rank when it is True on any."""
        if not self.active:
            return bool(flag)
        t = torch.tensor([1.0 if flag else 0.0])
        return bool(self._reduce(t, torch.distributed.ReduceOp.MAX, what).item() > 0)

    def sum(self, values: torch.Tensor, what: str) -> torch.Tensor:
        """Element-wise sum over the ranks of ``values`` (any size), on every rank, returned on
        ``values``' device (``values`` itself in one process)."""
        if not self.active:
            return values
        return self._reduce(values.detach().clone(), torch.distributed.ReduceOp.SUM, what).to(values.device)

    def join(self, part_values: torch.Tensor, parts: list[slice], what: str) -> torch.Tensor:
        """The whole vector whose range ``parts[r]`` rank r computed (``part_values``: this rank's
        range), on every rank. The ranges tile ``0..parts[-1].stop``; each element is one rank's
        value exactly (the others add zeros)."""
        if not self.active:
            return part_values
        whole = torch.zeros(parts[-1].stop, dtype=part_values.dtype, device=self.device)
        return self._assemble(whole, parts[self.rank], part_values, what).to(part_values.device)

    def sum_on_main(self, values: torch.Tensor, what: str) -> torch.Tensor:
        """Element-wise sum over the ranks of ``values`` (any size), in place, valid on rank 0
        only (a reduce, not an all-reduce: the other ranks' copies are left undefined)."""
        if not self.active:
            return values
        with self.guard(what):
            if values.device == self.device:
                torch.distributed.reduce(values, dst=0, op=torch.distributed.ReduceOp.SUM)
            else:
                t = values.to(self.device)
                torch.distributed.reduce(t, dst=0, op=torch.distributed.ReduceOp.SUM)
                values.copy_(t.to(values.device))
        return values

    def gather_rows(self, values: torch.Tensor, owned: np.ndarray, what: str) -> torch.Tensor:
        """Every rank's own rows of ``values`` ``(n, ...)`` (``owned``: this rank's row indices)
        put together, in place and returned: afterwards all ranks hold the same array."""
        if not self.active:
            return values
        sel = torch.as_tensor(owned, dtype=torch.long)
        whole = torch.zeros_like(values, device=self.device)
        values.copy_(self._assemble(whole, sel.to(self.device), values[sel], what).to(values.device))
        return values

    def _assemble(self, zeros: torch.Tensor, index, own: torch.Tensor, what: str) -> torch.Tensor:
        """``zeros`` (on this rank's device) with this rank's ``own`` values put at ``index``,
        summed over the ranks: where the ranks' indices do not overlap, every element is its
        owner's value exactly (the others add zeros)."""
        zeros[index] = own.detach().to(zeros.device)
        return self._reduce(zeros, torch.distributed.ReduceOp.SUM, what)

    def wrap(self, net: torch.nn.Module, uses_every_parameter: bool = True) -> torch.nn.Module:
        """``net`` in ``DistributedDataParallel`` (the same module itself in one process).

        Where a forward pass leaves parameters out (a coarse stage of a multiscale network uses
        only its own scales), pass ``uses_every_parameter=False``: the reducer then looks for
        them after each forward pass (``find_unused_parameters``) instead of waiting for their
        gradients forever. Wrap again when that changes, after dropping the old wrapper. The
        network's buffers are constants (filter frequencies), so they are not re-broadcast at
        every forward pass.
        """
        if not self.active:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        with self.guard("broadcasting the network"):
            return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=not uses_every_parameter,
                                           forward_sync_buffers=False)


SINGLE = Ranks()


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (or ``net`` itself)."""
    return getattr(net, "module", net)


def launched_world() -> int:
    """``WORLD_SIZE`` of the torchrun environment this process runs in (1 without one)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def start(device_name: str = "auto", timeout_s: float | None = None) -> Ranks:
    """Join the process group torchrun described in the environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); :data:`SINGLE` when there is none.

    ``device_name`` ``auto`` or ``cuda`` gives each rank the GPU ``cuda:LOCAL_RANK`` and NCCL
    (refused when the node has fewer GPUs than ranks); ``cpu`` (or ``auto`` without CUDA) gives
    gloo on the CPU. ``timeout_s`` bounds every collective (default ``RMFN_DIST_TIMEOUT_S`` or
    600 s).
    """
    world = launched_world()
    if world == 1:
        return SINGLE
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    name = (device_name or "auto").lower()
    if name == "mps":
        raise InputError("device 'mps' cannot run the cryo-EM engine (no float64); use cpu or cuda")
    if name.startswith("cuda") or (name == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise InputError(f"device {name!r}: no CUDA GPU here")
        if local >= torch.cuda.device_count():
            raise InputError(f"{torch.cuda.device_count()} GPU(s) on this node but local rank {local}: "
                             "run at most one process per GPU (--nproc / --nproc-per-node)")
        device, backend = torch.device("cuda", local), "nccl"
        torch.cuda.set_device(device)
    else:
        device, backend = torch.device("cpu"), "gloo"
    if timeout_s is None:
        timeout_s = float(os.environ.get("RMFN_DIST_TIMEOUT_S", DEFAULT_TIMEOUT_S))
    ranks = Ranks(rank, world, local, device, backend)
    with ranks.guard("joining the process group"):
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s),
                                             **({"device_id": device} if backend == "nccl" else {}))
    return ranks


def stop(ranks: Ranks) -> None:
    """Leave the process group (nothing in one process).

    The rank first leaves the GIL free for :data:`END_GRACE_S`: a rank that exits right after a
    collective could abort in the interpreter's shutdown ("terminate called without an active
    exception", SIGABRT), because one of gloo's threads still held that collective's tensors
    and must take the GIL to release their Python objects. Measured on the distributed
    benchmark's step worker (2 gloo ranks): 5 of 25 runs aborted without the pause, 0 of 40
    with it (1 of 25 with a barrier instead; no barrier is used: the other ranks may have
    failed, or rank 0 may still be writing the outputs for longer than the group's timeout).
    """
    if ranks.active and torch.distributed.is_initialized():
        time.sleep(END_GRACE_S)  # the GIL free for gloo's threads to drop what they hold
        torch.distributed.destroy_process_group()
