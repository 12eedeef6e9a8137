"""The run: stage -> epoch -> batch, from top to bottom."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from ...engine.control import RunControl, honour_requests
from ...engine.devices import resolve_device
from ...engine.distributed import SINGLE, Ranks
from ...engine.eta import EtaEstimator
from ...engine.events import (
    Event, Metrics, Progress, RunFinished, RunStarted, StageFinished, StageStarted, VolumeSnapshot,
)
from ...engine.part_times import PartTimes
from ...engine.outdir import check_output_dir, estimate_reconstruct_bytes, prepare_run_dir
from ...errors import InputError
from ...model import ResidualMFN
from ...model.precision import supports_precision
from ..ground_truth import read_true_poses
from ..io import write_map
from ..pose_search import global_pose_search
from ..validation import gold_standard_values, half_maps, half_sets, halves_frame, postprocessed_map
from .data import check_contrast, image_scale, load_dataset, load_reference
from .divergence import check_finite, check_losses, empty_map_loss
from .forward import ForwardModel, stage_sigma
from .advance import decide, epoch_cap, halves_resolution
from .halves import HalfNetworks, epoch_batches, split_stage
from .outputs import (
    RunLog, RunState, check_resume, evaluate, final_metrics, finished_run, read_resume_checkpoint,
    resume_state, run_identity, save_checkpoint, snapshot, summarise, write_outputs,
)
from .poses import (
    clamp_offsets, moving_poses, estimates_shifts, initial_rotations, initial_shifts, moves_poses, search_offsets,
    searches_poses, shift_prior, train_batch,
)
from .settings import ReconstructConfig
from .stage_data import StageData


def reconstruct(
    dataset,
    config: ReconstructConfig | None = None,
    control: RunControl | None = None,
    reference=None,
    out_dir: str | Path | None = None,
    resume: bool = False,
    true_poses=None,
    ranks: Ranks | None = None,
) -> Iterator[Event]:
    """Reconstruct a map and the poses from a particle stack, coarse to fine.

    Parameters
    ----------
    dataset : str, Path or ParticleDataset
        A RELION particle STAR file (images read lazily, batch by batch) or an open dataset.
        With ``config.box`` the images are Fourier-cropped to that box on read.
    config : ReconstructConfig
    control : RunControl, optional
        Pause / next stage / stop; honoured between optimisation steps.
    reference : array, path to an MRC, or None
        Reference map for FSC (aligned first unless ``align_for_fsc=False``), at the
        particles' box and pixel size (cropped like them) or at the working box. An array
        (a napari layer's) is kept in the run folder as ``reference.mrc`` (working box and
        pixel size); ``metrics.json``'s ``reference`` is that file's path, or the given one.
    out_dir : path, optional
        Per-scale maps ``scale_k.mrc`` (working box and pixel size), the backprojected
        ``half_map_1.mrc``, ``half_map_2.mrc``, ``map.mrc`` and ``mask_auto.mrc`` (at each stage
        end), ``poses.star`` (angles, origins in Å and half-sets for the original images;
        ``poses_subset.npz`` when ``max_particles`` leaves particles out), ``metrics.json``,
        ``checkpoint.pt`` (every epoch) and ``run.log`` (appended to as the run goes, never
        replaced) are written there.
    resume : bool
        Continue the run saved in ``out_dir/checkpoint.pt``: only the same run. A changed
        setting or dataset (STAR path, size, rows, pixels, true poses) is refused with an
        InputError naming it; :data:`~.outputs.RESUME_SAFE_SETTINGS` and more epochs from the
        current stage on are applied and logged (:func:`~.outputs.check_resume`). On a finished
        run it says so (Log, RunFinished with its metrics) and writes nothing.
    true_poses : path to a STAR, or None
        The true angles and origins of these particles (e.g. ``true_poses.star`` from
        ``rmfn simulate``). Pose and offset errors are reported only when it is given.
    ranks : Ranks, optional
        This process's place in a data-parallel run (:func:`rmfn_napari.engine.distributed.start`;
        default: one process). Every rank trains the one network (in ``DistributedDataParallel``)
        on its shard of the particles — their images, poses, offsets and global search; the
        global batch (``config.batch_size``) and its order do not depend on the number of ranks,
        so a run resumes with any number. Poses are gathered at every epoch's end; rank 0 alone
        evaluates and writes files; a stop is agreed between batches (pause and next stage are
        one-process controls).

    Yields
    ------
    Event
        RunStarted, Log, StageStarted, Progress (per batch; ``extra`` = epoch, pose loss),
        ScaleSnapshot (3D volumes, voxel size in Å), Metrics ("fsc" per scale against the
        reference, "pose_errors" against the true poses, "gold_standard"), VolumeSnapshot
        (the half-maps and the full backprojected map), StageFinished, RunFinished.

    Raises
    ------
    InputError
        Bad input or settings; a refused resume; a diverged training (:func:`check_losses`,
        :func:`check_finite`: the run stops within the batch, keeping the last checkpoint and
        writing no map of the diverged state).
    """
    cfg = config or ReconstructConfig()
    cfg.validate()
    ranks = ranks or SINGLE
    device = ranks.device if ranks.active else resolve_device(cfg.device, needs_float64=True)
    why_not = supports_precision(cfg.precision, device)
    if why_not is not None:
        raise InputError(f"--precision {cfg.precision}: {why_not}")
    control = control or RunControl()
    if out_dir is None or not ranks.is_main:  # the other ranks only read (a resume's checkpoint)
        out = None if out_dir is None else Path(out_dir)
        return (yield from _run(dataset, cfg, device, control, reference, out, resume, true_poses, ranks))
    # the folder checked (a file? writable? space?), locked for this run, dead runs' temps removed
    with prepare_run_dir(out_dir, estimate_reconstruct_bytes(cfg.box, None, cfg.n_layers, cfg.hidden),
                         "reconstruct"):
        return (yield from _run(dataset, cfg, device, control, reference, Path(out_dir), resume, true_poses,
                                ranks))


def _run(dataset, cfg: ReconstructConfig, device, control: RunControl, reference, out: Path | None,
         resume: bool, true_poses, ranks: Ranks) -> Iterator[Event]:
    """The body of :func:`reconstruct` (settings checked, output folder locked on rank 0)."""
    ds = load_dataset(dataset, cfg.box, cfg.apix)
    box, apix = ds.box, ds.apix
    n = ds.n if cfg.max_particles is None else min(ds.n, int(cfg.max_particles))
    ref = load_reference(reference, ds)
    truth = read_true_poses(true_poses, ds, n) if true_poses is not None else None
    ckpt_path = out / "checkpoint.pt" if out is not None else None
    saved = read_resume_checkpoint(ckpt_path) if resume else None
    writes = out is not None and ranks.is_main  # files: rank 0 only
    if writes:  # now that the box and the particle count are known
        check_output_dir(out, estimate_reconstruct_bytes(box, n, cfg.n_layers, cfg.hidden),
                         f"reconstruct ({n} particles of {box} px)")

    torch.manual_seed(cfg.seed)
    net = ResidualMFN(3, cfg.hidden, cfg.n_layers, out_dim=1, init="residual", residual=True,
                      lambdas=cfg.lambdas, resolution=box, head_activation="relu", seed=cfg.seed,
                      new_head_scale=cfg.new_head_scale, filters=cfg.filters,
                      window_radius=cfg.mask_radius or 0.45).to(device)
    net.hidden_precision = cfg.precision
    # one network on every particle until the split, then one per half-set (halves.py)
    nets = HalfNetworks(net, torch.optim.Adam(net.parameters(), lr=cfg.lr_structure))
    if estimates_shifts(cfg) and cfg.shift_range_px >= box / 4:
        raise InputError(f"--shift-range {cfg.shift_range_px:g} px must be less than a quarter of the "
                         f"{box} px box", ds.star_path)
    rotations, pose_origin = initial_rotations(ds, n, cfg, truth)
    start_shifts = initial_shifts(ds, n, cfg, truth)  # offsets are searched within ±range of these
    shifts_px = start_shifts.clone()
    halves, halves_origin = half_sets(ds, n, cfg.seed)  # fixed for the whole run: the half-maps
    scale_img = image_scale(ds, n, cfg)
    identity = run_identity(ds, n, truth, scale_img)  # what a resume must find again
    state, applied = RunState(), []
    if saved is not None:
        applied = check_resume(saved, cfg, identity)  # refuses a changed setting or dataset
        state = resume_state(saved, cfg)
        if state.finished:  # nothing to do: say so, write nothing
            yield from finished_run(out, state)
            return
        if saved["net_config"] != net.config() or saved["rotations"].shape[0] != n:
            raise InputError("--resume: the checkpoint's network or particle count differs", ckpt_path)
        nets.load(saved)
        rotations = saved["rotations"].to(torch.float64)
        shifts_px = saved["shifts_px"].to(torch.float64)
    if ranks.world > n:
        raise InputError(f"{ranks.world} processes for {n} particles: at most one process per particle",
                         ds.star_path)
    models: dict = {}  # the networks trained: in DistributedDataParallel across ranks, wrapped per stage
    owned = ranks.shard(n)  # this rank's particles: their images, poses, offsets and search
    is_owned = np.zeros(n, dtype=bool)
    is_owned[owned] = True
    sync_poses = lambda: (ranks.gather_rows(rotations, owned, "gathering the poses"),  # noqa: E731
                          ranks.gather_rows(shifts_px, owned, "gathering the offsets"))
    step_control = None if ranks.active else control  # every rank takes every step of a batch
    log = RunLog(out / "run.log" if writes else None,  # appended to, never replaced
                 header=f"--- {'resumed' if saved else 'new'} run, {time.strftime('%Y-%m-%d %H:%M:%S')} ---")

    ctf = ds.ctf
    plan = cfg.stage_plan()
    split_at = split_stage(cfg.split_at, plan, net.band_limits, box, apix)  # halves apart from here
    # shared stages: batches of any particles; split stages: each batch one half-set's
    stage_batches_per_epoch = [len(epoch_batches(np.arange(n), halves if i >= split_at else None, cfg.batch_size))
                               for i in range(len(plan))]
    total_batches = sum(b * e for b, (_, e) in zip(stage_batches_per_epoch, plan))
    reference_path = str(Path(reference).resolve()) if isinstance(reference, (str, Path)) else None
    if writes and ref is not None and reference_path is None:  # an array: kept with the run
        reference_path = str(write_map(out / "reference.mrc", ref, apix).resolve())
    yield RunStarted("reconstruct", len(plan), total_batches, str(device), config=asdict(cfg),
                     snapshot_shape=(box,) * 3, snapshot_voxel_size=float(apix))
    crop_note = ""
    if getattr(ds, "source_box", box) != box:
        crop_note = f" (Fourier-cropped from {ds.source_box} px at {ds.source_apix:.3g} Å/px)"
    yield log(f"{n} particles of {box}x{box} at {apix:.3g} Å/px{crop_note}; mode {cfg.mode}; "
              f"{len(plan)} stage(s) {[e for _, e in plan]} epochs; batch {cfg.batch_size}")
    for line in getattr(ds, "group_lines", ()):  # optics groups resampled to one grid: what each became
        yield log(line)
    yield log(f"poses: {pose_origin}; offsets "
              + (f"estimated within ±{cfg.shift_range_px:g} px" if estimates_shifts(cfg) else "fixed at the STAR's origins")
              + ("; pose errors against " + str(truth.path) if truth is not None else "; no true poses given: no pose errors"))
    yield log(halves_origin)
    shared_band = net.band_limits[plan[split_at - 1][0]] if split_at < len(plan) else None
    yield log(f"independent half-sets from stage {split_at + 1} (--split-at {cfg.split_at}): stage(s) 1-{split_at} "
              f"train one network on every particle (band up to {box * apix / shared_band:.1f} Å); then each "
              "half-set has its own network, poses and offsets" if shared_band is not None else
              f"no independent half-sets (--split-at {cfg.split_at} is at or after the last stage): the half-maps "
              "share one network, so their FSC is not a gold standard")
    for note in getattr(ds, "notes", ()) if ranks.is_main else ():  # rows left out, duplicates
        ev = log(note)
        ev.level = "warning"
        yield ev
    if ranks.active:
        yield log(f"data parallel: {ranks.world} processes ({ranks.backend}), global batch {cfg.batch_size} "
                  f"(~{cfg.batch_size / ranks.world:.0f} per rank), ~{n // ranks.world} particles per rank")
    if saved is not None:
        yield log(f"resumed at stage {state.stage + 1}, epoch {state.epoch_in_stage}, batch {state.step}")
        for change in applied:
            yield log(f"--resume: applied the change {change}")
    elif cfg.check_contrast:
        yield log(check_contrast(ds, n, ctf, shifts_px, scale_img, cfg, device))

    t_start = time.perf_counter() - state.elapsed_s
    stopped = False
    metrics_out: dict = {"stages": state.history.setdefault("stages", [])}  # the checkpoint's list
    last_eval: list[Event] = []
    times = PartTimes()  # seconds per part of each stage (metrics.json: stages[i].time_s)
    extra_batches = 0  # batches --advance auto added (held stages) or saved (stages ended early)
    last_scale = plan[min(state.stage, len(plan) - 1)][0]
    # time left from each stage's measured cost per batch, pauses excluded (engine/eta.py)
    eta_clock = EtaEstimator([epochs * bpe for bpe, (_scale, epochs) in zip(stage_batches_per_epoch, plan)])

    for stage_idx in range(state.stage, len(plan)):
        if ranks.any(control.stop_requested):  # asked before this stage began: it never starts
            stopped = True
            break
        scale, epochs = plan[stage_idx]
        last_scale = scale
        band = net.band_limits[scale]
        sigma = stage_sigma(scale, cfg.n_layers, box, cfg.lambdas)
        fwd = ForwardModel(box, apix, scale, band, sigma, cfg.pad, cfg.mask_radius, device,
                           compile=cfg.compile_render, ranks=ranks)
        if stage_idx >= split_at and not nets.independent:
            nets.split()
            yield log(f"stage {stage_idx + 1}: the half-sets split: each trains its own copy of the network")
        models = {}  # the last stage's wrappers (and their gradient hooks) go first
        models = {h: ranks.wrap(nets.net(h), uses_every_parameter=scale == cfg.n_layers - 1) for h in nets.groups()}
        batches_per_epoch = stage_batches_per_epoch[stage_idx]
        yield StageStarted(stage_idx, len(plan), epochs * batches_per_epoch, band, scale=scale)
        yield log(f"stage {stage_idx + 1}: scale {scale + 1}, band {band:.2f} cycles/box "
                  f"({box * apix / max(band, 1e-9):.1f} Å), low-pass sigma {sigma:.2f} px, "
                  f"window {fwd.window} ({len(fwd.freqs)} frequencies), render grid {fwd.render_n}^3 "
                  f"({len(fwd.support)} voxels in the mask)")
        with times.part("stage data"):
            data = StageData(ds, owned, fwd.freqs, scale_img, cfg, device, cfg.stage_data_gb * 2**30)
        yield log(f"  data: {data.n} x {len(fwd.freqs)} spectra and CTFs{' per rank' if ranks.active else ''}, "
                  f"{data.bytes / 2**20:.0f} MiB, "
                  + ("kept on the " + device.type if data.resident else "computed batch by batch (over the budget)"),
                  about="stage_data",
                  values={"stage": stage_idx + 1, "n_images": data.n, "n_frequencies": len(fwd.freqs),
                          "per_rank": bool(ranks.active), "mib": data.bytes / 2**20,
                          "device": device.type, "resident": bool(data.resident)})
        stage_t0 = time.perf_counter()
        last_snap = stage_t0
        skipped = False
        start_epoch = state.epoch_in_stage if stage_idx == state.stage else 0
        cap = epoch_cap(cfg.advance, epochs, nets.independent)  # --advance auto may hold a stage up to it
        if state.stage_ended:  # a resumed stage that --advance auto had already ended
            start_epoch = cap
        stage_batches = 0
        stage_extra = 0  # batches --advance auto added to this stage (held) or took from it (ended early)
        empty_loss: dict = {}  # per network, the loss of an empty map on its first batch: the scale of its losses
        for epoch in range(start_epoch, cap):
            order = np.random.default_rng([cfg.seed, stage_idx, epoch]).permutation(n)
            rotations_before = rotations.clone()  # how far the poses move in this epoch
            search_now = searches_poses(cfg, stage_idx, scale) and epoch > 0
            prior_px = shift_prior(cfg)
            if search_now and not ranks.any(control.stop_requested):
                t_search = time.perf_counter()
                offsets, whole_range = search_offsets(cfg, fwd, whole_range=not state.offsets_searched)
                centres = start_shifts if whole_range else None
                moved = total = 0
                for h in nets.groups():  # each half-set against its own network only
                    gen = torch.Generator().manual_seed(cfg.seed * 100003 + stage_idx * 1009 + epoch + 7 * h)
                    vol_ft = fwd.volume_ft(nets.net(h))
                    mine = owned if h == 0 else owned[halves[owned] == h]
                    counts = global_pose_search(fwd, vol_ft, data.chunks_of(mine), rotations, shifts_px,
                                                cfg.search_rotations, cfg.search_window, offsets,
                                                gen, device, centres=centres, prior_centres=start_shifts,
                                                prior_px=prior_px)
                    moved, total = moved + counts[0], total + counts[1]
                moved, total = (int(v) for v in ranks.total([moved, total], "counting the search's moves"))
                clamp_offsets(shifts_px, start_shifts, cfg.shift_range_px)
                state.offsets_searched = state.offsets_searched or (whole_range and estimates_shifts(cfg))
                times.add("global search", time.perf_counter() - t_search)
                yield log(f"  epoch {epoch + 1}: global search moved {moved}/{total} poses "
                          f"({len(offsets)} offsets, {time.perf_counter() - t_search:.1f} s)")
            global_batches = epoch_batches(order, halves if nets.independent else None, cfg.batch_size)
            # this rank's part of each global batch; its losses are scaled so that the ranks'
            # average is the global batch's mean (and so is DistributedDataParallel's gradient)
            batch_indices = [g[is_owned[g]] for _h, g in global_batches]
            for b, (idx, obs, ctf_b) in enumerate(data.batches(batch_indices)):
                half = global_batches[b][0]
                if ranks.active:
                    if ranks.any(control.stop_requested):
                        stopped = True
                        break
                else:
                    command = yield from eta_clock.around_pauses(honour_requests(control, state.step))
                    if command is not None:
                        stopped, skipped = command == "stop", command == "next"
                        break
                loss_scale = ranks.world / len(global_batches[b][1])
                if half not in empty_loss:
                    empty_loss[half] = empty_map_loss(fwd, obs, ctf_b, loss_scale, ranks.mean)
                with ranks.guard(f"stage {stage_idx + 1}, batch {state.step + 1}"):
                    loss_s, loss_p = train_batch(models[half], nets.opt(half), fwd, obs, ctf_b, rotations, shifts_px,
                                                 start_shifts, idx, cfg, step_control, device,
                                                 moves_poses(cfg, stage_idx), loss_scale, ranks.mean, prior_px, times)
                check_losses(loss_s, loss_p, empty_loss[half], cfg, step_control, moves_poses(cfg, stage_idx),
                             f"stage {stage_idx + 1}, epoch {epoch + 1}, batch {b + 1} (step {state.step + 1})")
                state.step += 1
                stage_batches += 1
                elapsed = time.perf_counter() - t_start
                eta_clock.step_done(stage_idx, epoch * batches_per_epoch + b + 1)
                eta = eta_clock.remaining_s()
                yield Progress(stage_idx, state.step, total_batches + extra_batches + stage_extra,
                               epoch * batches_per_epoch + b + 1,
                               max(epochs, epoch + 1) * batches_per_epoch, loss_s, elapsed, eta,
                               {"epoch": epoch + 1, "pose_loss": loss_p})
                now = time.perf_counter()
                if now - last_snap >= cfg.snapshot_interval_s and ranks.is_main:
                    last_snap = now
                    with times.part("snapshots"):
                        snap = snapshot(nets.display, box, apix, scale, stage_idx, final=False, mask_radius=cfg.mask_radius)
                    yield snap
            if stopped or skipped:
                break
            state.epoch_in_stage = epoch + 1
            state.elapsed_s = time.perf_counter() - t_start
            sync_poses()
            state.moving = moving_poses(rotations_before, rotations)  # this epoch's pose changes
            for h in nets.groups():
                check_finite(nets.net(h), rotations, shifts_px, cfg, f"stage {stage_idx + 1}, end of epoch {epoch + 1}")
            if cfg.advance == "auto" and nets.independent:  # the halves' gold standard steers the stage
                with times.part("advance checks"):
                    res_A = halves_resolution(ds, n, rotations, shifts_px, halves, cfg, device, ranks, shared_band)
                decision = decide(epoch + 1, epochs, cap, stage_idx == len(plan) - 1, res_A, box * apix / band,
                                  state.advance_best_A, state.moving["fraction_moving"])
                if res_A is not None:
                    state.advance_best_A = min(res_A, state.advance_best_A or res_A)
                state.stage_ended = ranks.any(decision.end and ranks.is_main)  # rank 0's decision
                if ranks.is_main:
                    yield log(f"  epoch {epoch + 1}: {decision.note}")
                # the epochs this stage is now expected to run: what the bar and the ETA count
                expected = epoch + 1 if state.stage_ended else max(epochs, epoch + 2 if epoch + 1 >= epochs else 0)
                stage_extra = (expected - epochs) * batches_per_epoch
                eta_clock.stage_steps[stage_idx] = expected * batches_per_epoch
            if writes:
                state.stage = stage_idx
                with times.part("checkpoints"):
                    save_checkpoint(ckpt_path, nets, rotations, shifts_px, state, cfg, identity)
            if state.stage_ended:
                break
        # end of stage: snapshots of every scale so far, FSC, pose errors (rank 0, all poses gathered)
        t_stage_end = time.perf_counter()
        sync_poses()
        for h in nets.groups():
            check_finite(nets.net(h), rotations, shifts_px, cfg, f"stage {stage_idx + 1}, end")
        if ranks.is_main:
            for k in range(scale + 1):
                yield snapshot(nets.display, box, apix, k, stage_idx, final=True, mask_radius=cfg.mask_radius)
        # the half-maps: every rank backprojects its own particles, rank 0 sums them (others: None)
        hm = half_maps(ds, n, rotations, shifts_px, halves, cfg.mask_radius, cfg.invert_contrast, device,
                       cfg.seed, ranks)
        if ranks.is_main:
            last_eval = evaluate(nets.display, box, apix, scale, ref, rotations, shifts_px, truth, cfg, stage_idx)
            for name, vol in (("half_map_1", hm.half1), ("half_map_2", hm.half2), ("map", hm.full)):
                if writes:
                    write_map(out / f"{name}.mrc", vol, apix)  # unmodified: what EMDB deposition needs
                yield VolumeSnapshot(name, vol, apix, stage_idx)
            if writes:
                write_map(out / "mask_auto.mrc", hm.masks["auto"], apix)
            frame = halves_frame(hm, apix) if nets.independent else None  # one frame, one hand?
            gold = gold_standard_values(hm, shared_band_cycles=shared_band, independent=nets.independent,
                                        moving=state.moving, frame=frame, band_cycles=band)
            post = postprocessed_map(hm, gold, apix)  # None without a trusted resolution
            if post is not None:
                gold["postprocess"] = {"bfactor_A2": post.bfactor, "fit_range_A": list(post.fit_range_A),
                                       "lowpass_A": post.resolution_A, "stage": stage_idx + 1}
                yield VolumeSnapshot("map_postprocessed", post.map, apix, stage_idx)
            if writes:  # the sharpened map of this stage, or none (never an earlier stage's)
                if post is not None:
                    write_map(out / "map_postprocessed.mrc", post.map, apix)
                else:
                    (out / "map_postprocessed.mrc").unlink(missing_ok=True)
            last_eval.append(Metrics("gold_standard", stage_idx, gold))
            state.history["final"] = final_metrics(last_eval)
            summary = summarise(last_eval)
            times.add("stage-end evaluation", time.perf_counter() - t_stage_end)
            summary.update(stage=stage_idx + 1, scale=scale + 1, epochs_done=state.epoch_in_stage,
                           seconds=time.perf_counter() - stage_t0, band_cycles=band,
                           band_resolution_A=box * apix / band, time_s=times.take())
            metrics_out["stages"].append(summary)
            for ev in last_eval:
                yield ev
            yield StageFinished(stage_idx, stage_batches, time.perf_counter() - stage_t0, skipped,
                                {k: v for k, v in summary.items() if isinstance(v, (int, float))})
            yield log("stage {stage}: {s}".format(stage=stage_idx + 1, s=json.dumps(
                {k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()})),
                about="stage_summary", values=summary)
            yield log(f"stage {stage_idx + 1}: {gold['verdict']}", level="info" if gold["trusted"] else "warning")
            if gold["independent"]:  # from the split on: how far the halves got into this stage's band
                yield log(f"stage {stage_idx + 1} {gold['band_note']}")
        if stopped or ranks.any(control.stop_requested):  # also a stop during the evaluation: no next stage
            stopped = True
            break
        state.stage, state.epoch_in_stage = stage_idx + 1, 0
        state.stage_ended, state.advance_best_A = False, None
        extra_batches += stage_extra
        if writes:
            state.elapsed_s = time.perf_counter() - t_start
            save_checkpoint(ckpt_path, nets, rotations, shifts_px, state, cfg, identity)
        if control.pause_at_stage_end and stage_idx < len(plan) - 1:
            control.pause()

    seconds = time.perf_counter() - t_start
    # the last evaluation: this session's, else the checkpoint's (all stages were done before)
    final = state.history.get("final") or final_metrics(last_eval)
    metrics_out.update(final, mode=cfg.mode, preset=cfg.preset, n_particles=n, box=box, apix=apix,
                       source_box=getattr(ds, "source_box", box),
                       source_apix=getattr(ds, "source_apix", apix), seconds=seconds, stopped=stopped,
                       batches=state.step, band_limits_cycles=net.band_limits,
                       true_poses=None if truth is None else str(truth.path),
                       reference=reference_path,
                       world_size=ranks.world, global_batch=cfg.batch_size,
                       split_after_stage=split_at, split_at=cfg.split_at,
                       shared_band_cycles=shared_band,
                       shared_band_A=None if shared_band is None else box * apix / shared_band)
    outputs: dict[str, str] = {}
    sync_poses()
    if writes:
        outputs = write_outputs(out, nets, box, apix, last_scale, ds, n, rotations, shifts_px, halves,
                                 metrics_out, scale_img, cfg.mask_radius)
        if not stopped:  # every stage ran and the outputs are written: a resume has nothing to do
            state.finished, state.elapsed_s = True, seconds
            save_checkpoint(ckpt_path, nets, rotations, shifts_px, state, cfg, identity)
        if ckpt_path.exists():
            outputs["checkpoint"] = str(ckpt_path)
    yield RunFinished(stopped, state.step, seconds, outputs, metrics_out)

