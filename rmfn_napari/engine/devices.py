"""Torch device selection shared by the CLI and the widgets."""

from __future__ import annotations

import torch

from ..errors import InputError


def available_devices() -> list[str]:
    """Device names that exist on this machine, best first: ``auto``, then cuda/mps, ``cpu``."""
    names = ["auto"]
    if torch.cuda.is_available():
        names += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    names.append("cpu")
    return names


def resolve_device(name: str = "auto") -> torch.device:
    """Turn ``auto``/``cpu``/``cuda``/``cuda:N``/``mps`` into a torch device.

    ``auto`` picks CUDA, then MPS, then the CPU. Asking for a device that does not
    exist raises :class:`~rmfn_napari.errors.InputError`.
    """
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in available_devices():
        raise InputError(f"device {name!r} is not available here (available: {', '.join(available_devices())})")
    return torch.device(name)
