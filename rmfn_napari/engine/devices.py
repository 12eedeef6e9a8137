"""Torch device selection shared by the CLI and the widgets.

The cryo-EM engine keeps poses in float64 (rotations are composed and re-orthonormalised there)
and evaluates the CTF in float64 once per stage; Apple's MPS backend has no float64, so a
caller that needs it passes ``needs_float64=True`` and is never given MPS — ``auto`` then falls
back to the CPU, and asking for ``mps`` by name is refused with the reason.
"""

from __future__ import annotations

import torch

from ..errors import InputError


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def available_devices(needs_float64: bool = False) -> list[str]:
    """Device names that exist on this machine and can run the caller, best first: ``auto``,
    then cuda (and ``cuda:N``), mps (only without ``needs_float64``), ``cpu``."""
    names = ["auto"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if _mps_available() and not needs_float64:
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(name: str = "auto", needs_float64: bool = False) -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a torch device.

    ``auto`` picks CUDA, then MPS (unless ``needs_float64``), then the CPU. Asking for a device
    that does not exist, or for MPS with ``needs_float64``, raises
    :class:`~rmfn_napari.errors.InputError`.
    """
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available() and not needs_float64:
            return torch.device("mps")
        return torch.device("cpu")
    if name == "mps" and needs_float64:
        raise InputError("device 'mps' cannot run the cryo-EM engine: Apple's MPS backend has no float64, "
                         "which the poses and the CTF need; use cpu (or a CUDA GPU)")
    if name not in available_devices(needs_float64):
        raise InputError(f"device {name!r} is not available here "
                         f"(available: {', '.join(available_devices(needs_float64))})")
    return torch.device(name)
