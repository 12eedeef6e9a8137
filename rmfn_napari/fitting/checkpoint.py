"""An image fit's checkpoint (``checkpoint.pt`` in its output folder) and ``--resume`` of it.

A fit writes its checkpoint atomically (:func:`~rmfn_napari.engine.atomic.atomic_path`) every
:data:`CHECKPOINT_EVERY_STEPS` steps, at each stage end and when it is stopped: the settings,
the image's identity (shape, dtype and a SHA-256 of its pixels), the network and the Adam
state, and the progress (stage, steps done in it, the run's step count, each finished stage's
image and PSNR: what the end of the run reports). ``fit_image(..., resume=True)`` continues
from it; a changed setting or image is refused in one line (:mod:`rmfn_napari.engine.resume`,
the reconstruction's rules) and only where and how fast the fit runs may change
(:data:`RESUME_SAFE_SETTINGS`). On one thread, seeded, a stopped and resumed fit ends bit for
bit where an uninterrupted one does.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..engine.atomic import atomic_path
from ..engine.resume import identity_changes, refuse_changes, refuse_non_finite, setting_changes
from ..errors import InputError

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = "rmfn-napari/fit-image/1"
#: Steps between two checkpoints within a stage (stage ends and a stop always write one).
CHECKPOINT_EVERY_STEPS = 200
#: Settings a resume may change: where and how fast the fit runs, not what it computes.
RESUME_SAFE_SETTINGS = ("device", "snapshot_interval_s")

_IDENTITY_NAMES = {"shape": "the image's shape", "dtype": "the image's type",
                   "sha256": "the hash of the image's pixels"}


@dataclass
class FitProgress:
    """Where a fit is: ``stage`` (0-based) and the steps done in it (``stage_step``), ``step``
    over the run, the seconds trained, each finished stage's image at its end (``after_stage``,
    0-based scale -> training-grid image) and PSNR on the original grid (dB), and whether the
    run finished (every stage done, outputs written)."""

    stage: int = 0
    stage_step: int = 0
    step: int = 0
    elapsed_s: float = 0.0
    after_stage: dict = field(default_factory=dict)
    psnr_history: list = field(default_factory=list)
    finished: bool = False


def image_identity(image: np.ndarray) -> dict:
    """What the image is, for a resume's check: its shape, dtype and the SHA-256 of its bytes."""
    arr = np.ascontiguousarray(image)
    return {"shape": list(arr.shape), "dtype": str(arr.dtype), "sha256": hashlib.sha256(arr.tobytes()).hexdigest()}


def save_fit_checkpoint(out_dir, config, identity: dict, net, opt, progress: FitProgress) -> Path:
    """Write ``checkpoint.pt`` into ``out_dir`` atomically (temp, fsync, rename); returns it."""
    path = Path(out_dir) / CHECKPOINT_NAME
    payload = {"format": CHECKPOINT_FORMAT, "config": asdict(config), "identity": identity,
               "net": net.state_dict(), "opt": opt.state_dict(), "progress": asdict(progress),
               "rng": torch.get_rng_state()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def read_fit_checkpoint(out_dir) -> dict:
    """The checkpoint a ``--resume`` continues (:class:`InputError`, one line naming the file,
    when there is none, it is unreadable or of another kind or version, or it holds NaN/Inf)."""
    if out_dir is None:
        raise InputError("--resume needs the output directory (--out) of the fit to continue")
    path = Path(out_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise InputError(f"--resume: no {CHECKPOINT_NAME} in {out_dir}, so there is no fit to continue; "
                         "drop --resume to start a new one")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file: one line
        raise InputError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"not an rmfn-napari fit-image checkpoint of this version ({CHECKPOINT_FORMAT}); "
                         "start a new fit", path)
    refuse_non_finite({"net": payload["net"], "opt": payload["opt"]}, path)
    return payload


def check_fit_resume(saved: dict, config, identity: dict) -> list[str]:
    """Refuse (one :class:`InputError` line naming every change) a resume with another image
    or a changed setting other than :data:`RESUME_SAFE_SETTINGS`; return a note per safe change."""
    changes = identity_changes(saved["identity"], identity, _IDENTITY_NAMES)
    setting_changed, notes = setting_changes(saved["config"], asdict(config), RESUME_SAFE_SETTINGS)
    refuse_changes(changes + setting_changed)
    return notes


def load_progress(saved: dict, net, opt) -> FitProgress:
    """Put the checkpoint's network and optimiser state into ``net`` and ``opt`` (built as a
    new fit builds them) and return its progress."""
    net.load_state_dict(saved["net"])
    opt.load_state_dict(saved["opt"])
    torch.set_rng_state(saved["rng"])
    progress = FitProgress(**saved["progress"])
    progress.after_stage = {int(k): v for k, v in progress.after_stage.items()}
    return progress


__all__ = ["CHECKPOINT_EVERY_STEPS", "CHECKPOINT_NAME", "FitProgress", "RESUME_SAFE_SETTINGS",
           "check_fit_resume", "image_identity", "load_progress", "read_fit_checkpoint",
           "save_fit_checkpoint"]
