"""What every ``--resume`` checks before it continues a run from its checkpoint: that the data
and the settings are the run's own (one line naming every change, else a note per change that
does not alter what is computed), and that the checkpoint holds no NaN or Inf.

Used by the reconstruction (:func:`rmfn_napari.cryoem.reconstruct.outputs.check_resume`) and
the image fit (:mod:`rmfn_napari.fitting.checkpoint`). No Qt, no napari.
"""

from __future__ import annotations

import torch

from ..errors import InputError


def identity_changes(saved: dict, now: dict, names: dict[str, str]) -> list[str]:
    """One phrase per entry of ``names`` (key -> words for it) whose value differs between the
    checkpoint's data identity ``saved`` and the data given now."""
    changes = []
    for key, name in names.items():
        was, is_now = saved.get(key), now.get(key)
        if was != is_now:
            changes.append(f"{name} was {shown(was)} in the checkpoint, now {shown(is_now)}")
    return changes


def setting_changes(saved: dict, now: dict, safe=(), skip=()) -> tuple[list[str], list[str]]:
    """(changes, notes) between the checkpoint's settings ``saved`` and those given ``now``
    (both as ``dataclasses.asdict``): a differing setting in ``safe`` (where and how fast a run
    goes, not what it computes) is a note ``"key old -> new"``, any other a change; settings
    in ``skip`` are the caller's to compare."""
    changes, notes = [], []
    for key, value in now.items():
        was = saved.get(key)
        if key in skip or canon(was) == canon(value):
            continue
        if key in safe:
            notes.append(f"{key} {shown(was)} -> {shown(value)}")
        else:
            changes.append(f"{key} was {shown(was)} in the checkpoint, now {shown(value)}")
    return changes, notes


def refuse_changes(changes: list[str]) -> None:
    """Raise the one-line :class:`InputError` of a resume that would not continue the same run
    (nothing when ``changes`` is empty)."""
    if changes:
        raise InputError("--resume: " + "; ".join(changes) + "; start a new --out or drop --resume")


def non_finite_tensors(obj, name: str = "") -> list[str]:
    """The dotted names (``net.linears.1.weight``, ``opt.state.0.exp_avg``, ``rotations``) of
    the floating-point tensors anywhere in ``obj`` (nested dicts, lists, tuples) that hold a
    NaN or an Inf."""
    if torch.is_tensor(obj):
        bad = (obj.is_floating_point() or obj.is_complex()) and not bool(torch.isfinite(obj).all())
        return [name] if bad else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, (list, tuple)) else ()
    return [n for key, value in items for n in non_finite_tensors(value, f"{name}.{key}" if name else str(key))]


def refuse_non_finite(payload: dict, path) -> None:
    """Refuse (one line naming ``path`` and the first tensors) a checkpoint holding NaN or Inf:
    a run never saves such a state (a diverging step stops it first), so the file was damaged
    or edited, and resumed it would train on NaN."""
    bad = non_finite_tensors(payload)
    if bad:
        listed = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise InputError(f"--resume: the checkpoint holds non-finite values (NaN or Inf) in {listed}; a run "
                         "stops before it would save them, so the file is damaged and cannot be continued: "
                         "start a new run (--overwrite, without --resume)", path)


def canon(value):
    """A setting as compared: lists (JSON, ``asdict`` of a loaded checkpoint) as tuples."""
    return tuple(value) if isinstance(value, list) else value


def shown(value) -> str:
    """A setting's value as a resume's message shows it."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return str(tuple(value))
    return "none" if value is None else str(value)


__all__ = ["canon", "identity_changes", "non_finite_tensors", "refuse_changes", "refuse_non_finite",
           "setting_changes", "shown"]
