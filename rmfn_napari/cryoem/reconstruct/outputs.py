"""What a run keeps and reports: checkpoints, stage-end evaluation (FSC against a reference,
pose and offset errors against the truth), snapshots, metrics and output files."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...engine.events import (
    Event, Metrics, ScaleSnapshot,
)
from ...errors import InputError
from ...fitting.metrics import log_spectrum
from ..io import write_map, write_particles_star
from ..metrics import align_map, apply_alignment, fsc, pose_error_stats, pose_errors, resolution_at
from ..offsets import shift_errors
from .forward import render_all_scales, render_volume
from .render import spherical_mask
from .settings import ReconstructConfig


@dataclass
class RunState:
    """Everything a checkpoint holds beyond the network and optimiser."""

    stage: int = 0
    epoch_in_stage: int = 0  # epochs completed in the current stage
    step: int = 0  # batches done over the run
    elapsed_s: float = 0.0
    offsets_searched: bool = False  # the search over the whole offset range has run
    history: dict = field(default_factory=dict)


CHECKPOINT_FORMAT = "rmfn-napari/reconstruct/2"


def save_checkpoint(path: Path, net, opt, rotations, shifts_px, state: RunState, cfg: ReconstructConfig) -> None:
    """Write everything a resume needs (settings, network, optimiser, rotations, offsets,
    progress) atomically to ``path``."""
    payload = {
        "config": asdict(cfg), "net_config": net.config(), "net": net.state_dict(),
        "opt": opt.state_dict(), "rotations": rotations.cpu(), "shifts_px": shifts_px.cpu(),
        "state": asdict(state), "format": CHECKPOINT_FORMAT,
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checkpoint.", suffix=".pt")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | Path) -> dict:
    """Read a reconstruction checkpoint (raises :class:`InputError` naming the file)."""
    path = Path(path)
    if not path.is_file():
        raise InputError("no such checkpoint", path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise InputError(f"cannot read checkpoint ({type(exc).__name__}: {exc})", path) from None
    if not isinstance(payload, dict) or not str(payload.get("format", "")).startswith("rmfn-napari/reconstruct/"):
        raise InputError("not an rmfn-napari reconstruction checkpoint", path)
    if payload["format"] != CHECKPOINT_FORMAT:
        raise InputError(f"checkpoint format {payload['format']} is from another version "
                         f"(this one reads {CHECKPOINT_FORMAT}); start a new run", path)
    return payload


def evaluate(net, box, apix, scale, reference, rotations, shifts_px, truth, cfg, stage) -> list[Event]:
    """FSC of every scale up to ``scale`` against the reference, and pose and offset errors
    against the true poses (only when given).

    The finest map is aligned to the reference (rotation, shift, hand); every scale shares
    the network's frame, so the same transform is applied to the coarser ones.
    """
    events: list[Event] = []
    maps = render_all_scales(net, box, scale, cfg.mask_radius)
    if reference is not None:
        alignment = None
        if cfg.align_for_fsc:
            _, alignment = align_map(maps[-1], reference, apix)
        # the same soft mask on both maps (the network's map is rendered under it)
        mask = spherical_mask(box, cfg.mask_radius)
        mask = 1.0 if mask is None else mask.numpy()
        for k, vol in enumerate(maps):
            aligned = apply_alignment(vol, alignment) if alignment is not None else vol
            freqs, curve = fsc(aligned * mask, reference * mask)
            res = resolution_at(freqs, curve, 0.5, box, apix)
            events.append(Metrics("fsc", stage, {
                "scale": k, "resolution_A": res, "crossed": bool(np.any(curve < 0.5)),
                "freq_cycles": np.asarray(freqs).tolist(), "fsc": np.asarray(curve).tolist(),
                "threshold": 0.5, "alignment": None if alignment is None else alignment.to_dict(),
            }))
    if truth is not None:
        est = rotations.numpy()
        err, g, flipped = pose_errors(est, truth.rotations, allow_flip=True, return_transform=True)
        stats = pose_error_stats(err)
        stats.update(global_rotation=np.asarray(g).tolist(), hand_flipped=bool(flipped))
        shift_err, t = shift_errors(shifts_px.numpy(), truth.shifts_A / apix, est, inliers=err < 10.0)
        stats.update(shift_median_px=float(np.median(shift_err)), shift_median_A=float(np.median(shift_err) * apix),
                     shift_frac_under_1px=float(np.mean(shift_err < 1.0)), shift_map_translation_px=t.tolist(),
                     shift_px_of_box=box)
        events.append(Metrics("pose_errors", stage, stats, {"errors_deg": np.asarray(err, np.float32),
                                                            "shift_errors_px": shift_err.astype(np.float32)}))
    return events


def snapshot(net, box, apix, scale, stage, final, mask_radius=None) -> ScaleSnapshot:
    with torch.no_grad():
        vol = render_volume(net, box, scale, mask_radius).float().cpu().numpy()
    return ScaleSnapshot(scale, vol, log_spectrum(vol), apix, stage, final)


def summarise(events: list[Event]) -> dict:
    """The numbers of one stage's evaluation events for the stage summary (``metrics.json``)."""
    out: dict = {}
    for ev in events:
        if isinstance(ev, Metrics) and ev.name == "gold_standard":
            res = ev.values["resolution_A"]
            out.update(gold_standard_resolution_A=res[ev.values["headline"]],
                       gold_standard_unmasked_A=res["unmasked"])
        if isinstance(ev, Metrics) and ev.name == "fsc":
            out[f"fsc_resolution_A_scale{ev.values['scale'] + 1}"] = ev.values["resolution_A"]
        if isinstance(ev, Metrics) and ev.name == "pose_errors":
            v = ev.values
            out.update(pose_median_deg=v["median_deg"], pose_frac_under_5deg=v["frac_under_5deg"],
                       pose_frac_under_10deg=v["frac_under_10deg"], shift_median_px=v["shift_median_px"])
    return out


def final_metrics(events: list[Event]) -> dict:
    """FSC per scale, pose errors and the gold-standard FSC of the last evaluation, for
    ``metrics.json``."""
    fsc = {}
    poses = None
    for ev in events:
        if isinstance(ev, Metrics) and ev.name == "fsc":
            v = dict(ev.values)
            fsc[f"scale{v['scale'] + 1}"] = v
        if isinstance(ev, Metrics) and ev.name == "pose_errors":
            poses = ev.values
    gold = next((ev.values for ev in events if isinstance(ev, Metrics) and ev.name == "gold_standard"), None)
    res = {"fsc": fsc, "pose_errors": poses, "gold_standard": gold}
    if fsc:
        res["resolution_A"] = fsc[max(fsc)]["resolution_A"]
    if gold is not None:
        res["gold_standard_resolution_A"] = gold["resolution_A"][gold["headline"]]
    return res


def write_outputs(out: Path, net, box, apix, last_scale, ds, n, rotations, shifts_px, halves, metrics,
                   log_lines, scale_img, mask_radius=None):
    """Write the network's maps (image units), ``poses.star`` (or ``poses_subset.npz``),
    ``metrics.json`` and ``run.log`` into ``out``; returns their paths by name."""
    written: dict[str, str] = {}
    maps = render_all_scales(net, box, last_scale, mask_radius)
    for k, vol in enumerate(maps):
        # back to the images' units: image = sum_z V / D in units of the image std
        path = write_map(out / f"scale_{k + 1}.mrc", vol * scale_img, apix)
        written[f"scale_{k + 1}"] = str(path)
    for name in ("half_map_1", "half_map_2", "map", "mask_auto"):
        if (out / f"{name}.mrc").exists():
            written[name] = str(out / f"{name}.mrc")
    shifts_A = shifts_px.numpy() * apix  # origins in Å do not depend on the box
    if n == ds.n:
        written["poses"] = str(write_particles_star(out / "poses.star", ds, rotations=rotations.numpy(),
                                                    shifts_A=shifts_A, random_subset=halves))
    else:
        np.savez(out / "poses_subset.npz", rotations=rotations.numpy(), origins_A=shifts_A, random_subset=halves)
        written["poses"] = str(out / "poses_subset.npz")
    mpath = out / "metrics.json"
    fd, tmp = tempfile.mkstemp(dir=out, prefix=".metrics.", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(metrics, fh, indent=1, default=_json_default)
    os.replace(tmp, mpath)
    written["metrics"] = str(mpath)
    (out / "run.log").write_text("\n".join(log_lines) + "\n")
    written["log"] = str(out / "run.log")
    return written


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
