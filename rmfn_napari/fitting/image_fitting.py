"""Staged coarse-to-fine fitting of a 2D image (paper §5).

The network grows by one scale per stage; at stage s the loss is the MSE between the
output of scale s and the training image (for the BACON baseline, "fair" staging: the
losses of every scale <= s are kept, and scales < s train only their own heads).
Layers beyond the current scale are not evaluated; earlier layers keep training.

Images are trained at their size after ``downsample`` (the paper: 512² originals, 256²
training images) and evaluated on the original grid (2x finer) for PSNR, the
"generalisation" column of Table 1.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ..engine.control import RunControl, honour_requests
from ..engine.devices import resolve_device
from ..engine.eta import EtaEstimator
from ..engine.events import (
    Event, Log, Metrics, Progress, RunFinished, RunStarted, ScaleSnapshot, StageFinished,
    StageStarted,
)
from ..engine.atomic import fsync_dir, fsync_file, replace_synced, temp_path_for
from ..engine.outdir import estimate_fit_image_bytes, prepare_run_dir
from ..engine.settings_spec import check_filters, config_from_preset
from ..errors import InputError
from ..model import METHODS, ResidualMFN
from .checkpoint import (
    CHECKPOINT_EVERY_STEPS, FitProgress, check_fit_resume, image_identity, load_progress,
    read_fit_checkpoint, save_fit_checkpoint,
)
from .images import downsample, normalize_image
from .metrics import log_spectrum, spectrum_drift
from .presets import PAPER_SCHEDULE, PRESETS


@dataclass
class FitImageConfig:
    """Settings of a coarse-to-fine image fit. ``from_preset`` gives the named defaults
    (:mod:`rmfn_napari.fitting.presets`: ``cpu``, ``paper``); the plain constructor's
    defaults are the paper's.

    ``schedule`` gives the steps of each stage; its length is the number of scales
    (network layers). ``downsample`` is the factor between the original image (PSNR
    reference) and the training image. ``snapshot_interval_s`` bounds how often the
    current scale's image is sent during a stage (stage ends always send one). ``preset``
    records the preset these settings started from. ``filters``: ``sine`` (the paper) or
    ``gabor`` (:mod:`rmfn_napari.model.gabor`; windows' centres drawn over the whole image).
    """

    preset: str = "paper"
    method: str = "rmfn"
    filters: str = "sine"
    schedule: tuple[int, ...] = PAPER_SCHEDULE
    hidden: int = 256
    lr: float = 5e-3
    lambdas: tuple[float, float] = (0.3, 2.0)
    downsample: int = 2
    device: str = "auto"
    seed: int = 0
    snapshot_interval_s: float = 2.0

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "FitImageConfig":
        """Settings of preset ``name`` (``cpu``, ``paper``) with keyword overrides."""
        return config_from_preset(cls, PRESETS, name, overrides)

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot run."""
        if self.preset not in PRESETS:
            raise InputError(f"preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.method not in METHODS:
            raise InputError(f"method must be one of {sorted(METHODS)}, got {self.method!r}")
        check_filters(self.filters)
        if len(self.schedule) < 1 or any(int(s) < 1 for s in self.schedule):
            raise InputError(f"schedule needs one positive step count per stage, got {self.schedule}")
        if self.hidden < 1 or self.lr <= 0 or self.downsample < 1:
            raise InputError("hidden, lr and downsample must be positive")
        if not math.isfinite(self.lr):
            raise InputError(f"--lr must be a finite number > 0, got {self.lr}")
        if len(self.lambdas) != 2 or not all(math.isfinite(v) and v >= 0 for v in self.lambdas) \
                or sum(self.lambdas) <= 0:
            raise InputError(f"--lambdas must be two finite numbers >= 0, not both 0, got {tuple(self.lambdas)}")
        if math.isnan(self.snapshot_interval_s) or self.snapshot_interval_s < 0:
            raise InputError(f"snapshot_interval_s must be >= 0 s, got {self.snapshot_interval_s}")


#: Smallest side (px) of a training image (the image block-averaged by ``downsample``).
MIN_TRAINING_SIDE = 8


def check_image_size(shape, downsample: int, source=None) -> None:
    """InputError (naming ``source``: a file or a layer) when an image of ``shape`` (H, W[, C])
    block-averaged by ``downsample`` would be under :data:`MIN_TRAINING_SIDE` px on a side:
    the CLI and the widget refuse the same images with the same words."""
    if min(int(shape[0]), int(shape[1])) // int(downsample) < MIN_TRAINING_SIDE:
        raise InputError(f"image of {shape[0]}x{shape[1]} is too small for --downsample {downsample} "
                         f"(the training image needs >= {MIN_TRAINING_SIDE} px a side)", source)


def _axis_for_upsampled(n_train: int, factor: int, device) -> torch.Tensor:
    """Coordinates (training frame) of the pixel centres of an axis ``factor`` x finer.

    Training pixel j (the mean of original pixels factor*j .. factor*j+factor-1) sits
    at ``(j - n/2)/n``; original pixel k's centre is at ``(k + 0.5)/factor - 0.5`` in
    training pixels.
    """
    k = torch.arange(n_train * factor, device=device, dtype=torch.float32)
    in_train_pixels = (k + 0.5) / factor - 0.5
    return (in_train_pixels - n_train // 2) / n_train


def _to_numpy(y: torch.Tensor) -> np.ndarray:
    img = y.detach().float().cpu().numpy()
    return img[..., 0] if img.shape[-1] == 1 else img


#: Values (rows x columns x hidden x scales) one block of the PSNR evaluation on the original
#: grid may hold: 2^26 float32 = 256 MiB. The original grid is ``downsample``² times the
#: training grid; rendered whole, an 8000² image at width 64 held 16 GiB per scale (issue 28).
EVAL_BLOCK_VALUES = 2**26


def _psnr_on_original(net, fine_axes, original: np.ndarray, scale: int, hidden: int) -> float:
    """PSNR (dB) of scale ``scale``'s output, clipped to [0, 1], against ``original`` on the
    original grid, rendered in blocks of rows (:data:`EVAL_BLOCK_VALUES`): the same value as
    :func:`~rmfn_napari.fitting.metrics.psnr` of the whole rendered image, at the memory of
    one block."""
    rows_axis, cols_axis = fine_axes
    n_rows, n_cols = int(rows_axis.shape[0]), int(cols_axis.shape[0])
    block = max(1, EVAL_BLOCK_VALUES // max(1, n_cols * int(hidden) * (scale + 3)))
    sq, count = 0.0, 0
    with torch.no_grad():
        for r0 in range(0, n_rows, block):
            fine = _to_numpy(net.render_axes([rows_axis[r0:r0 + block], cols_axis], max_scale=scale)[-1])
            ref = original[r0:r0 + fine.shape[0], : fine.shape[1]]
            diff = np.clip(fine, 0, 1).astype(np.float64) - ref
            sq += float(np.sum(diff * diff))
            count += diff.size
    mse = sq / max(count, 1)
    return float("inf") if mse == 0 else float(10.0 * np.log10(1.0 / mse))


def fit_image(
    image: np.ndarray,
    config: FitImageConfig | None = None,
    control: RunControl | None = None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    checkpoint_every: int = CHECKPOINT_EVERY_STEPS,
) -> Iterator[Event]:
    """Fit ``image`` coarse to fine; yield engine events as training goes.

    With ``out_dir``, the folder is checked before training (a file, not writable, less free
    space than :func:`~rmfn_napari.engine.outdir.estimate_fit_image_bytes`: one
    :class:`~rmfn_napari.engine.outdir.OutputDirError` line) and locked for the run (another
    run on it is refused); the outputs are written all or none.

    Parameters
    ----------
    image : ndarray
        The original image, (H, W) grey or (H, W, 3) RGB; any dtype (see
        :func:`~rmfn_napari.fitting.images.normalize_image`). It is the PSNR reference;
        the network trains on it block-averaged by ``config.downsample``.
    config : FitImageConfig
    control : RunControl, optional
        Pause / next stage / stop requests, honoured between steps.
    out_dir : path, optional
        When given, each scale's image and log-amplitude spectrum (``scale_k.tif``,
        ``spectrum_k.tif``, k = 1..L as everywhere a user reads it) and ``metrics.json`` are
        written there when the run ends, and ``checkpoint.pt`` every ``checkpoint_every``
        steps, at each stage end and at a stop (:mod:`~rmfn_napari.fitting.checkpoint`).
    resume : bool
        Continue the fit whose checkpoint is in ``out_dir`` (the same image and settings, else
        one :class:`InputError` line; a finished fit is reported and left as it is).

    Yields
    ------
    Event
        ``RunStarted``, then per stage ``StageStarted``, ``Progress`` (every step),
        ``ScaleSnapshot`` (bounded rate, and ``final=True`` at the stage end),
        ``Metrics`` (``psnr`` per stage), ``StageFinished``; ``Metrics("spectrum_drift")``
        and ``RunFinished`` at the end. Metrics: ``psnr_db`` (full scale on the original
        grid, dB) and ``spectrum_drift`` (one value per scale, the last is 0 by
        definition).
    """
    config = config or FitImageConfig()
    config.validate()
    check_training_memory(np.shape(image), config)
    if out_dir is None:
        if resume:
            read_fit_checkpoint(None)  # the one line saying --resume needs --out
        return (yield from _fit_image_events(image, config, control, None))
    need = estimate_fit_image_bytes(np.shape(image), config.downsample, len(config.schedule), config.hidden)
    with prepare_run_dir(out_dir, need, f"fit-image ({len(config.schedule)} scales)"):
        saved = None
        if resume:
            saved = read_fit_checkpoint(out_dir)
            notes = check_fit_resume(saved, config, image_identity(image))
        else:
            notes = []
        return (yield from _fit_image_events(image, config, control, out_dir, saved, notes,
                                             max(1, int(checkpoint_every))))


# Measured: a fit's peak memory at its finest stage is ~19 float32 tensors of h x w x hidden
# (the features, filter outputs and gradients of every scale; 384^2, width 256, 4 scales: 2.7 GiB)
TRAINING_TENSORS = 20


#: Bytes per pixel value of the image itself: the decoded array (up to 8, a float64 TIFF) and
#: the float32 copy the fit keeps on the CPU as the PSNR reference (normalised in place).
IMAGE_BYTES_PER_VALUE = 12


def check_training_memory(shape, config: FitImageConfig, source=None) -> None:
    """Refuse (one line, before anything is allocated, from the header for a file) a fit that
    cannot fit in the machine's memory: the training grid, ``TRAINING_TENSORS`` x h x w x hidden
    x 4 bytes with h x w the image ``shape`` after ``config.downsample``, against 80% of the
    machine's RAM (CPU) or 90% of the GPU's memory; and on the CPU, the image itself
    (:data:`IMAGE_BYTES_PER_VALUE` per value) with the training grid. The PSNR on the original
    grid is computed in blocks of bounded size (:data:`EVAL_BLOCK_VALUES`)."""
    if len(shape) < 2:
        return
    h, w = int(shape[0]) // config.downsample, int(shape[1]) // config.downsample
    need = TRAINING_TENSORS * h * w * config.hidden * 4
    values = int(shape[0]) * int(shape[1]) * (int(shape[2]) if len(shape) > 2 else 1)
    image = IMAGE_BYTES_PER_VALUE * values + 4 * EVAL_BLOCK_VALUES
    device = resolve_device(config.device)
    ram = 0.8 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if device.type == "cuda":
        have = 0.9 * torch.cuda.get_device_properties(device).total_memory
    else:
        have = ram
        need += image
    if image > ram:
        raise InputError(f"the image of {shape[0]}x{shape[1]} ({values / 1e6:.0f} million values) needs about "
                         f"{image / 2**30:.1f} GiB to read and hold, more than the {ram / 2**30:.0f} GiB this "
                         "machine offers; downsample it first", source)
    if need > have:
        factor = config.downsample * max(2, math.ceil(math.sqrt(need / have)))
        raise InputError(f"training on {h}x{w} at width {config.hidden} needs about {need / 2**30:.0f} GiB, "
                         f"more than the {have / 2**30:.0f} GiB this {device.type} offers; use "
                         f"--downsample {factor} (or a smaller --hidden)", source)


def _fit_image_events(image, config: FitImageConfig, control, out_dir, saved: dict | None = None,
                      notes=(), checkpoint_every: int = CHECKPOINT_EVERY_STEPS) -> Iterator[Event]:
    """The fit proper (see :func:`fit_image`); ``out_dir`` is checked and locked; ``saved``: the
    checkpoint a resume continues (checked), ``notes`` its safe changes of settings."""
    control = control or RunControl()
    original = normalize_image(image)
    train = downsample(original, config.downsample)
    factor = config.downsample
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    h, w = train.shape[:2]
    channels = 1 if train.ndim == 2 else train.shape[2]
    n_scales = len(config.schedule)
    net = ResidualMFN(
        2, config.hidden, n_scales, out_dim=channels, lambdas=config.lambdas,
        resolution=min(h, w), seed=config.seed, filters=config.filters, **METHODS[config.method],
    ).to(device)
    fair_bacon = not net.residual
    target = torch.as_tensor(train if train.ndim == 3 else train[..., None], device=device)
    empty_loss = float((target ** 2).mean())  # the loss of a black image: the scale of the losses
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    progress = load_progress(saved, net, opt) if saved is not None else FitProgress()
    identity = image_identity(image) if out_dir is not None else None
    total = int(sum(config.schedule))
    yield RunStarted("fit-image", n_scales, total, str(device), config=asdict(config),
                     snapshot_shape=tuple(int(n) for n in train.shape), snapshot_voxel_size=float(factor))
    yield Log(f"training on {h}x{w} ({channels} channel(s)), PSNR on {original.shape[0]}x{original.shape[1]}")
    for note in notes:
        yield Log(f"--resume: {note}")
    if progress.finished:
        yield from finished_fit(out_dir, progress)
        return
    if saved is not None:
        yield Log(f"--resume: continuing at stage {progress.stage + 1}, after its step {progress.stage_step} "
                  f"(step {progress.step} of {total})")

    t0 = time.perf_counter() - progress.elapsed_s
    # stage k evaluates scales 0..k, so a step costs about k + 1 times a first-stage step
    eta_clock = EtaEstimator(config.schedule, relative_cost=[k + 1 for k in range(len(config.schedule))])
    step = progress.step
    stopped = False
    after_stage: dict[int, np.ndarray] = progress.after_stage
    psnr_history: list[float] = progress.psnr_history

    def checkpoint(stage: int, stage_step: int, finished: bool = False) -> None:
        if out_dir is not None:
            save_fit_checkpoint(out_dir, config, identity, net, opt, FitProgress(
                stage, stage_step, step, time.perf_counter() - t0, dict(after_stage), list(psnr_history),
                finished))
    fine_axes = [_axis_for_upsampled(h, factor, device), _axis_for_upsampled(w, factor, device)]

    def evaluate_psnr(scale: int) -> float:
        return _psnr_on_original(net, fine_axes, original, scale, config.hidden)

    def snapshot(scale: int, stage: int, final: bool) -> ScaleSnapshot:
        # on the training grid: one pixel is `factor` original pixels (the snapshot's voxel_size)
        with torch.no_grad():
            img = np.ascontiguousarray(_to_numpy(net.render_grid((h, w), max_scale=scale)[-1]),
                                       dtype=np.float32)
        return ScaleSnapshot(scale, img, log_spectrum(img), float(factor), stage, final)

    for stage, n_steps in enumerate(config.schedule):
        if stopped:
            break
        if stage < progress.stage:  # done before the resume
            continue
        first = progress.stage_step if stage == progress.stage else 0
        yield StageStarted(stage, n_scales, int(n_steps), net.band_limits[stage])
        stage_t0 = time.perf_counter()
        last_snap = stage_t0
        done = first
        skipped = False
        for stage_step in range(first + 1, int(n_steps) + 1):
            command = yield from eta_clock.around_pauses(honour_requests(control, step))
            if command is not None:
                stopped, skipped = command == "stop", command == "next"
                break
            outs = net.combine(net.grid_features((h, w), max_scale=stage),
                               detach_below=stage if fair_bacon else None)
            if fair_bacon:
                loss = sum(((y - target) ** 2).mean() for y in outs)
            else:
                loss = ((outs[-1] - target) ** 2).mean()
            value = float(loss.detach())  # checked before the step: a diverged loss changes nothing
            check_loss(value, empty_loss * (len(outs) if fair_bacon else 1), config,
                       f"stage {stage + 1}, step {stage_step} ({step + 1} of the run)")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            done = stage_step
            elapsed = time.perf_counter() - t0
            eta_clock.step_done(stage, stage_step)
            eta = eta_clock.remaining_s()
            yield Progress(stage, step, total, stage_step, int(n_steps), value, elapsed, eta)
            now = time.perf_counter()
            if now - last_snap >= config.snapshot_interval_s and stage_step < n_steps:
                last_snap = now
                yield snapshot(stage, stage, final=False)
            if stage_step % checkpoint_every == 0 and stage_step < n_steps:
                checkpoint(stage, stage_step)
        if stopped:  # where a resume goes on: before this partial stage's end is reported
            checkpoint(stage, done)
        if done == 0 and stopped:
            break
        snap = snapshot(stage, stage, final=True)
        after_stage[stage] = snap.data
        yield snap
        value = evaluate_psnr(stage)
        psnr_history.append(value)
        yield Metrics("psnr", stage, {"psnr_db": value, "scale": stage})
        yield StageFinished(stage, done, time.perf_counter() - stage_t0, skipped, {"psnr_db": value})
        if not stopped:
            checkpoint(stage + 1, 0)
        if control.pause_at_stage_end and stage < n_scales - 1 and not stopped:
            control.pause()

    # end of run: every trained scale once more, drift against its post-stage output
    drift: list[float] = []
    final_images: dict[int, np.ndarray] = {}
    for scale in sorted(after_stage):
        snap = snapshot(scale, len(after_stage) - 1, final=True)
        final_images[scale] = snap.data
        drift.append(spectrum_drift(after_stage[scale], snap.data))
        yield snap
    metrics = {
        "method": config.method,
        "psnr_db": psnr_history[-1] if psnr_history else float("nan"),
        "psnr_db_per_stage": psnr_history,
        "spectrum_drift": drift,
        "band_limits_cycles": net.band_limits,
        "steps_done": step,
        "stopped": stopped,
        "train_shape": [h, w],
        "eval_shape": list(original.shape[:2]),
        "seconds": time.perf_counter() - t0,
    }
    yield Metrics("spectrum_drift", len(after_stage) - 1, {"spectrum_drift": drift})
    outputs = write_fit_outputs(out_dir, final_images, metrics) if out_dir is not None else {}
    if not stopped:
        checkpoint(n_scales, 0, finished=True)
    yield RunFinished(stopped, step, time.perf_counter() - t0, outputs, metrics)


def finished_fit(out_dir, progress: FitProgress) -> Iterator[Event]:
    """What ``--resume`` of a finished fit says, touching nothing: a Log line and RunFinished
    with the fit's own outputs and ``metrics.json``."""
    out = Path(out_dir)
    try:
        metrics = json.loads((out / "metrics.json").read_text())
    except (OSError, ValueError):
        metrics = {"psnr_db": progress.psnr_history[-1] if progress.psnr_history else float("nan")}
    outputs = {p.stem: str(p) for p in sorted(out.glob("*.tif"))}
    outputs.update({name: str(out / file) for name, file in (("metrics", "metrics.json"),
                                                              ("checkpoint", "checkpoint.pt"))
                    if (out / file).exists()})
    yield Log(f"--resume: this fit finished ({progress.step} steps, all stages); nothing to do, its outputs "
              f"in {out} are unchanged")
    yield RunFinished(False, progress.step, progress.elapsed_s, outputs, metrics)


# A loss above this many times the loss of a black image (the target's mean square; images
# are normalised to [0, 1]) means the fit has blown up: a sound fit scores below 1x, and
# --lr 1e9 scores ~1e17x after one step.
EXPLOSION_FACTOR = 1e6


def check_loss(value: float, empty_loss: float, config: FitImageConfig, where: str) -> None:
    """Stop a diverged fit at its step (InputError naming the step and the learning rate) when
    the loss is not finite or exceeds :data:`EXPLOSION_FACTOR` x the loss of a black image."""
    if math.isfinite(value) and value <= EXPLOSION_FACTOR * max(empty_loss, 1e-12):
        return
    what = f"is {value:.3g}, over {EXPLOSION_FACTOR:g} x that of a black image" if math.isfinite(value) \
        else f"is {value} (not finite)"
    raise InputError(f"{where}: the loss {what}: the fit diverged (learning rate too high? try a "
                     f"smaller --lr than {config.lr:g}); stopped, nothing written")


def write_fit_outputs(out_dir: str | Path, images: dict[int, np.ndarray], metrics: dict) -> dict[str, str]:
    """Write ``scale_k.tif``, ``spectrum_k.tif`` (log-amplitude, centred) and ``metrics.json``.

    ``images`` maps the 0-based scale index of the engine events to its image; files and
    output names are numbered 1..L (``scale_1.tif`` is the coarsest), like the napari layers
    ("rMFN scale 1") and the CLI's lines.

    All or none: every file is first written to a temp name in ``out_dir``
    (``.NAME.tmp-PID``) and fsynced; only when all are written are they renamed into place.
    On any failure (a full disk) the temps, and any file this call already renamed, are
    removed. Returns name -> path.
    """
    import tifffile

    for k, img in images.items():  # before any file: never a NaN/Inf image
        if not np.all(np.isfinite(img)):
            raise InputError(f"refusing to write scale {k + 1}: its image has NaN/Inf pixels", out_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[str, Path, object]] = []
    for k, img in images.items():
        for name, arr in ((f"scale_{k + 1}", img), (f"spectrum_{k + 1}", log_spectrum(img))):
            jobs.append((name, out / f"{name}.tif",
                         lambda p, a=arr: tifffile.imwrite(p, np.asarray(a, np.float32))))
    clean = json.loads(json.dumps(metrics, default=float), parse_constant=lambda c: None)
    jobs.append(("metrics", out / "metrics.json",
                 lambda p: Path(p).write_text(json.dumps(clean, indent=2, allow_nan=True))))
    temps = [temp_path_for(path) for _, path, _ in jobs]
    placed: list[Path] = []
    try:
        for (_, _, write), tmp in zip(jobs, temps):
            write(tmp)
            fsync_file(tmp)  # every temp on disk before the first move (fsynced again: a no-op)
        for (_, path, _), tmp in zip(jobs, temps):
            replace_synced(tmp, path)
            placed.append(path)
        fsync_dir(out)
    except BaseException:
        for p in [*temps, *placed]:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
        raise
    return {name: str(path) for name, path, _ in jobs}


def run_to_completion(events: Iterator[Event]) -> RunFinished:
    """Drain an event stream and return its :class:`RunFinished` (for scripts and tests)."""
    last = None
    for ev in events:
        last = ev
    if not isinstance(last, RunFinished):
        raise RuntimeError("event stream ended without RunFinished")
    return last


__all__ = ["FitImageConfig", "PAPER_SCHEDULE", "fit_image", "run_to_completion", "write_fit_outputs"]
