"""What a run keeps and reports: checkpoints, stage-end evaluation (FSC against a reference,
pose and offset errors against the truth), snapshots, metrics and output files."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch

from ...engine.atomic import atomic_path
from ...engine.resume import (  # noqa: F401 - non_finite_tensors re-exported
    identity_changes, non_finite_tensors, refuse_changes, refuse_non_finite, setting_changes,
)
from ...engine.events import (
    Event, Log, Metrics, RunFinished, ScaleSnapshot,
)
from ...errors import InputError
from ...fitting.metrics import log_spectrum
from ..io import write_map, write_particles_star
from ..metrics import align_map, apply_alignment, fsc, pose_error_stats, pose_errors, resolution_at
from ..offsets import shift_errors
from .forward import render_all_scales, render_volume
from .render import spherical_mask
from .run_folder import MAP_STEMS
from .settings import ReconstructConfig


@dataclass
class RunState:
    """Everything a checkpoint holds beyond the network and optimiser."""

    stage: int = 0
    epoch_in_stage: int = 0  # epochs completed in the current stage
    step: int = 0  # batches done over the run
    elapsed_s: float = 0.0
    offsets_searched: bool = False  # the search over the whole offset range has run
    stage_ended: bool = False  # --advance auto ended the current stage (advance.decide)
    advance_best_A: float | None = None  # the best gold standard of the current stage's checks (Å)
    # how the poses moved in the last epoch (poses.moving_poses): a run still moving has not converged
    moving: dict = field(default_factory=dict)
    # "stages": the stage summaries so far; "final": final_metrics() of the last evaluation
    history: dict = field(default_factory=dict)
    finished: bool = False  # every stage ran and the outputs were written


CHECKPOINT_FORMAT = "rmfn-napari/reconstruct/4"


def save_checkpoint(path: Path, nets, rotations, shifts_px, state: RunState, cfg: ReconstructConfig,
                    identity: dict) -> None:
    """Write everything a resume needs (settings, data identity, the network(s) and optimiser(s):
    :meth:`HalfNetworks.state`, rotations, offsets, progress) atomically to ``path``."""
    payload = {
        "config": asdict(cfg), "identity": identity, "net_config": nets.nets[0].config(), **nets.state(),
        "rotations": rotations.cpu(), "shifts_px": shifts_px.cpu(),
        "state": asdict(state), "format": CHECKPOINT_FORMAT,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


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


# ---------------------------------------------------------------------------------- resume
# Settings a resume may change: where and how fast the run goes, not what it computes (a
# change of device or compile_render continues the same run, though not bit for bit).
# epochs_per_stage may also grow from the current stage on (see check_resume).
RESUME_SAFE_SETTINGS = ("device", "snapshot_interval_s", "stage_data_gb", "compile_render")

_IDENTITY_NAMES = {
    "star": "the particle STAR", "star_bytes": "the STAR's size in bytes",
    "rows_sha256": "the hash of the particle rows (image names, CTF, angles, origins)",
    "n_particles": "the number of particles", "box": "the working box (px)", "apix": "the pixel size (Å)",
    "image_scale": "the images' intensity scale (std of up to 512 particles: their pixels)",
    "true_poses": "--true-poses", "true_poses_sha256": "the hash of the true poses",
}


def run_identity(ds, n: int, truth, scale_img: float) -> dict:
    """What the data of a run is, for :func:`check_resume`: the STAR (resolved path, size, a
    hash of its particle rows; for a dataset object without a STAR, a hash of its image keys),
    the particle count, the working box and pixel size, a fingerprint of the pixels (the
    intensity scale, from up to 512 images) and the true poses (path and a hash)."""
    src = getattr(ds, "source", ds)  # the STAR's dataset under a Fourier crop
    star = getattr(src, "star_path", None)
    star = Path(star).resolve() if star is not None else None
    digest = hashlib.sha256()
    names = getattr(src, "image_names", None)
    if star is None and hasattr(src, "image_keys"):
        names = [f"{p}@{k}" for p, k in src.image_keys()]
    digest.update("\n".join(map(str, names or [])).encode())
    ctf = getattr(src, "ctf", None)
    arrays = [getattr(src, "euler", None), getattr(src, "shifts_A", None)]
    arrays += [getattr(ctf, f.name) for f in fields(ctf)  # (scale 1 hashed as before it was read)
               if f.name != "scale" or np.any(ctf.scale != 1)] if ctf is not None else []
    for a in arrays:
        if a is not None:
            digest.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    ident = {"star": None if star is None else str(star),
             "star_bytes": star.stat().st_size if star is not None and star.is_file() else None,
             "rows_sha256": digest.hexdigest(), "n_particles": int(n), "box": int(ds.box),
             "apix": float(ds.apix), "image_scale": float(scale_img), "true_poses": None,
             "true_poses_sha256": None}
    if truth is not None:
        ident["true_poses"] = str(Path(truth.path).resolve())
        ident["true_poses_sha256"] = hashlib.sha256(
            np.ascontiguousarray(truth.rotations, np.float64).tobytes()
            + np.ascontiguousarray(truth.shifts_A, np.float64).tobytes()).hexdigest()
    return ident


def read_resume_checkpoint(ckpt_path: Path | None) -> dict:
    """The checkpoint a ``--resume`` continues.

    Raises :class:`InputError` when there is none, or when it holds NaN or Inf (in a network,
    an optimiser's state, the rotations or the offsets: :func:`non_finite_tensors`). A run
    never saves such a state (a diverging batch stops the run before its checkpoint), so the
    file was damaged or edited; resumed, it would train on NaN and the first batch would be
    blamed on the learning rate.
    """
    if ckpt_path is None:
        raise InputError("--resume needs the output directory (--out) of the run to continue")
    if not ckpt_path.is_file():
        raise InputError(f"--resume: no checkpoint.pt in {ckpt_path.parent}, so there is no run to "
                         "continue; drop --resume to start a new one")
    payload = load_checkpoint(ckpt_path)
    refuse_non_finite(payload, ckpt_path)  # :func:`non_finite_tensors`
    return payload


def check_resume(saved: dict, cfg: ReconstructConfig, identity: dict) -> list[str]:
    """Refuse a resume that would not continue the same run; return a note per safe change.

    Raises :class:`InputError` (one line naming every change) when the data differ
    (:func:`run_identity`) or a setting differs other than those in
    :data:`RESUME_SAFE_SETTINGS`, or epochs other than more of them from the current stage on
    (the stages before it are done: their epochs cannot change).
    """
    state = RunState(**saved["state"])
    old = saved["config"]
    changes = identity_changes(saved["identity"], identity, _IDENTITY_NAMES)
    setting_changed, notes = setting_changes(old, asdict(cfg), RESUME_SAFE_SETTINGS, skip=("epochs_per_stage",))
    changes += setting_changed
    if not changes and tuple(old["epochs_per_stage"]) != tuple(cfg.epochs_per_stage):
        before = [e for _, e in replace(cfg, epochs_per_stage=tuple(old["epochs_per_stage"])).stage_plan()]
        after = [e for _, e in cfg.stage_plan()]
        current = min(state.stage, len(after) - 1)  # a finished run may grow its last stage
        if len(before) != len(after) or before[:current] != after[:current] or \
                any(a < b for a, b in zip(after[current:], before[current:])):
            changes.append(f"epochs_per_stage was {tuple(old['epochs_per_stage'])} in the checkpoint, now "
                           f"{tuple(cfg.epochs_per_stage)} (only more epochs from the current stage, "
                           f"{current + 1}, on can be resumed)")
        else:
            notes.append(f"epochs_per_stage {tuple(old['epochs_per_stage'])} -> {tuple(cfg.epochs_per_stage)}")
    refuse_changes(changes)
    return notes


def resume_state(saved: dict, cfg: ReconstructConfig) -> RunState:
    """The progress to continue from. A finished run whose last stage was given more epochs
    reopens that stage after the epochs it ran (its stage summary is then recomputed)."""
    state = RunState(**saved["state"])
    done = replace(cfg, epochs_per_stage=tuple(saved["config"]["epochs_per_stage"])).stage_plan()[-1][1]
    plan = cfg.stage_plan()
    if state.finished and plan[-1][1] > done:
        state.finished = False
        state.stage, state.epoch_in_stage = len(plan) - 1, done
        state.history["stages"] = state.history.get("stages", [])[:-1]
    return state


def finished_run(out: Path, state: RunState) -> list[Event]:
    """What ``--resume`` on a finished run says, touching nothing: a Log line and RunFinished
    with the run's own outputs and ``metrics.json``."""
    metrics = state.history.get("final", {})
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    names = [p.stem for p in sorted(out.glob("*.mrc"))]
    outputs = {name: str(out / f"{name}.mrc") for name in names}
    for name, file in (("poses", "poses.star"), ("poses", "poses_subset.npz"), ("metrics", "metrics.json"),
                       ("log", "run.log"), ("checkpoint", "checkpoint.pt")):
        if (out / file).exists():
            outputs[name] = str(out / file)
    msg = (f"--resume: this run finished ({state.step} batches, all {state.stage} stages); nothing to "
           f"do, its outputs in {out} are unchanged (to train longer, resume with more epochs in the "
           f"last stage)")
    return [Log(msg), RunFinished(False, state.step, state.elapsed_s, outputs, metrics)]


class RunLog:
    """``run.log``, appended to line by line as the run goes (never replaced: a resumed run
    adds its lines after those of the run it continues); ``path`` None keeps nothing."""

    def __init__(self, path: Path | None, header: str | None = None):
        self.path = path
        if header is not None:
            self._append(header)

    def __call__(self, msg: str, level: str = "info", about: str = "",
                 values: dict | None = None) -> Log:
        self._append(msg if level == "info" else f"{level.upper()}: {msg}")
        return Log(msg, level, about, dict(values or {}))

    def _append(self, line: str) -> None:
        if self.path is not None:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")


def evaluate(net, box, apix, scale, reference, rotations, shifts_px, truth, cfg, stage) -> list[Event]:
    """FSC of every scale up to ``scale`` against the reference, and pose and offset errors
    against the true poses (only when given)."""
    events: list[Event] = []
    if reference is not None:
        maps = render_all_scales(net, box, scale, cfg.mask_radius)
        events += reference_fsc(maps, reference, apix, cfg.mask_radius, cfg.align_for_fsc, stage)
    if truth is not None:
        events.append(pose_error_metrics(rotations, shifts_px, truth, apix, box, stage))
    return events


def reference_fsc(maps: list[np.ndarray], reference: np.ndarray, apix: float, mask_radius: float | None,
                  align: bool = True, stage: int = 0) -> list[Metrics]:
    """FSC (threshold 0.5) of each map (the coarsest first, all in the network's frame) against
    the reference, one "fsc" Metrics per map, ``scale`` 0-based.

    With ``align`` the last (finest) map is aligned to the reference (rotation, shift, hand;
    :func:`align_map`) and the same transform is applied to every map. Both maps are multiplied
    by the same soft spherical mask (``mask_radius``, a fraction of the box; None: none).
    """
    box = reference.shape[0]
    alignment = align_map(maps[-1], reference, apix)[1] if align else None
    mask = spherical_mask(box, mask_radius)
    mask = 1.0 if mask is None else mask.numpy()
    events = []
    for k, vol in enumerate(maps):
        aligned = apply_alignment(vol, alignment) if alignment is not None else vol
        freqs, curve = fsc(aligned * mask, reference * mask)
        res = resolution_at(freqs, curve, 0.5, box, apix)
        events.append(Metrics("fsc", stage, {
            "scale": k, "resolution_A": res, "crossed": bool(np.any(curve < 0.5)),
            "freq_cycles": np.asarray(freqs).tolist(), "fsc": np.asarray(curve).tolist(),
            "threshold": 0.5, "alignment": None if alignment is None else alignment.to_dict(),
        }))
    return events


def pose_error_metrics(rotations: torch.Tensor, shifts_px: torch.Tensor, truth, apix: float, box: int,
                       stage: int = 0) -> Metrics:
    """"pose_errors" Metrics: angular errors (degrees, after the best global rotation and hand)
    and offset errors (px of ``box``, after the map's best translation, over particles within
    10°) of the estimated rotations ``(n, 3, 3)`` and origins ``(n, 2)`` px against ``truth``
    (``rotations``, ``shifts_A``)."""
    est = np.asarray(rotations)
    err, g, flipped = pose_errors(est, truth.rotations, allow_flip=True, return_transform=True)
    stats = pose_error_stats(err)
    stats.update(global_rotation=np.asarray(g).tolist(), hand_flipped=bool(flipped))
    shift_err, t = shift_errors(np.asarray(shifts_px), truth.shifts_A / apix, est, inliers=err < 10.0)
    stats.update(shift_median_px=float(np.median(shift_err)), shift_median_A=float(np.median(shift_err) * apix),
                 shift_frac_under_1px=float(np.mean(shift_err < 1.0)), shift_map_translation_px=t.tolist(),
                 shift_px_of_box=box)
    return Metrics("pose_errors", stage, stats, {"errors_deg": np.asarray(err, np.float32),
                                                 "shift_errors_px": shift_err.astype(np.float32)})


def snapshot(net, box, apix, scale, stage, final, mask_radius=None) -> ScaleSnapshot:
    with torch.no_grad():
        vol = render_volume(net, box, scale, mask_radius).float().cpu().numpy()
    return ScaleSnapshot(scale, vol, log_spectrum(vol), apix, stage, final)


def summarise(events: list[Event]) -> dict:
    """The numbers of one stage's evaluation events for the stage summary (``metrics.json``;
    keys name scales 1..L: ``fsc_resolution_A_scale1`` is the coarsest)."""
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
    ``metrics.json``.

    Scales are numbered 1..L here as in every file a user reads (``"scale1": {"scale": 1,
    ...}`` is the coarsest, like ``scale_1.mrc`` and the layer "rMFN scale 1"); the
    ``Metrics`` events carry the engine's 0-based index.
    """
    fsc = {}
    poses = None
    for ev in events:
        if isinstance(ev, Metrics) and ev.name == "fsc":
            v = dict(ev.values)
            v["scale"] = int(ev.values["scale"]) + 1
            fsc[f"scale{v['scale']}"] = v
        if isinstance(ev, Metrics) and ev.name == "pose_errors":
            poses = ev.values
    gold = next((ev.values for ev in events if isinstance(ev, Metrics) and ev.name == "gold_standard"), None)
    res = {"fsc": fsc, "pose_errors": poses, "gold_standard": gold}
    if fsc:
        res["resolution_A"] = max(fsc.values(), key=lambda v: v["scale"])["resolution_A"]  # the finest
    if gold is not None:
        res["gold_standard_resolution_A"] = gold["resolution_A"][gold["headline"]]
    return res


def write_outputs(out: Path, nets, box, apix, last_scale, ds, n, rotations, shifts_px, halves, metrics,
                   scale_img, mask_radius=None):
    """Write the network's maps (image units) ``scale_1.mrc`` .. ``scale_L.mrc`` (1-based, the
    coarsest first; after a half-set split, the mean of the two networks' maps, and each
    network's finest map as ``network_half_1.mrc`` / ``network_half_2.mrc``), ``poses.star`` (or
    ``poses_subset.npz``) and ``metrics.json`` into ``out``; returns their paths by name,
    ``run.log`` (written as the run goes, :class:`RunLog`) among them. ``nets`` is a
    :class:`~.halves.HalfNetworks` (or one network)."""
    written: dict[str, str] = {}
    display = getattr(nets, "display", nets)
    maps = render_all_scales(display, box, last_scale, mask_radius)
    for k, vol in enumerate(maps):
        # back to the images' units: image = sum_z V / D in units of the image std
        path = write_map(out / f"scale_{k + 1}.mrc", vol * scale_img, apix)
        written[f"scale_{k + 1}"] = str(path)
    if getattr(nets, "independent", False):
        for h in (1, 2):
            vol = render_all_scales(nets.net(h), box, last_scale, mask_radius)[-1]
            written[f"network_half_{h}"] = str(write_map(out / f"network_half_{h}.mrc", vol * scale_img, apix))
    for name in MAP_STEMS:  # written at the stage ends (driver); read back by run_folder
        if (out / f"{name}.mrc").exists():
            written[name] = str(out / f"{name}.mrc")
    shifts_A = shifts_px.numpy() * apix  # origins in Å do not depend on the box
    if n == ds.n:
        written["poses"] = str(write_particles_star(out / "poses.star", ds, rotations=rotations.numpy(),
                                                    shifts_A=shifts_A, random_subset=halves))
    else:
        # np.savez given a file object: a name would get ".npz" appended to the temp's
        with atomic_path(out / "poses_subset.npz") as tmp, open(tmp, "wb") as fh:
            np.savez(fh, rotations=rotations.numpy(), origins_A=shifts_A, random_subset=halves)
        written["poses"] = str(out / "poses_subset.npz")
    mpath = out / "metrics.json"
    with atomic_path(mpath) as tmp, open(tmp, "w") as fh:
        json.dump(metrics, fh, indent=1, default=_json_default)
    written["metrics"] = str(mpath)
    if (out / "run.log").exists():
        written["log"] = str(out / "run.log")
    return written


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)
