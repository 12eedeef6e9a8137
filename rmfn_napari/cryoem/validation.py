"""Resolution without a ground truth: half-sets, backprojected half-maps, gold-standard FSC.

Two half-sets are fixed at the start of a run (``rlnRandomSubset`` 1/2 from the input STAR
when it holds both values, else a seeded random split). At each stage end the particles of
each half are backprojected with the run's current poses and offsets (direct Fourier
reconstruction, :mod:`rmfn_napari.cryoem.backproject`), and the two half-maps are compared
by FSC at 0.143 (DESIGN.md §2): unmasked, inside a soft sphere, and inside a loose automatic
mask of the full map, the masked curves corrected by phase randomisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..engine.distributed import SINGLE, Ranks
from .backproject import FourierBackprojector, insert_dataset
from .metrics import GoldStandardFSC, align_map, auto_mask, gold_standard_fsc, soft_sphere_mask
from .metrics.postprocess import PostProcessed, postprocess
from .rotations import geodesic_distance

__all__ = ["half_sets", "HalfMaps", "half_maps", "halves_frame", "gold_standard_values", "postprocessed_map"]

#: half-map 2 turned by more than this (degrees) from half-map 1: the halves are in different frames
FRAME_LIMIT_DEG = 10.0

MASKS = ("unmasked", "sphere", "auto")


def half_sets(dataset, n: int, seed: int) -> tuple[np.ndarray, str]:
    """Half-set (1 or 2) of each of the first ``n`` particles, ``(n,)`` int8, and where it
    came from (a sentence for the log).

    The STAR's ``rlnRandomSubset`` when it is 1/2 and holds both values; otherwise a random
    split (seeded by ``seed``) into halves of ``ceil(n/2)`` and ``floor(n/2)``.
    """
    cols = getattr(dataset, "particles", None)
    if cols is not None and "rlnRandomSubset" in cols.columns:
        v = np.asarray(cols["rlnRandomSubset"].to_numpy()[:n])
        if set(np.unique(v).tolist()) == {1, 2}:
            return v.astype(np.int8), "half-sets from the STAR's rlnRandomSubset"
    order = np.random.default_rng([int(seed), 2]).permutation(n)
    halves = np.full(n, 2, dtype=np.int8)
    halves[order[:(n + 1) // 2]] = 1
    return halves, f"half-sets: a random split (seed {int(seed)}) into {(n + 1) // 2} and {n // 2}"


@dataclass
class HalfMaps:
    """Backprojected maps of one stage end and their gold-standard FSCs.

    Attributes
    ----------
    half1, half2, full : ndarray ``(D, D, D)`` float32, the maps (image units)
    masks : dict name -> ndarray, the sphere and auto masks used
    gold : dict name -> GoldStandardFSC, for "unmasked", "sphere", "auto"
    n_half : (int, int), particles per half-set
    """

    half1: np.ndarray
    half2: np.ndarray
    full: np.ndarray
    masks: dict[str, np.ndarray]
    gold: dict[str, GoldStandardFSC]
    n_half: tuple[int, int]


def half_maps(dataset, n: int, rotations: torch.Tensor, shifts_px: torch.Tensor, halves: np.ndarray,
              mask_radius: float | None, invert_contrast: bool = False, device="cpu", seed: int = 0,
              ranks: Ranks = SINGLE) -> HalfMaps | None:
    """Backproject each half-set of the first ``n`` particles and compare the half-maps.

    The half-maps are independent only when each half-set's poses were refined against its
    own network (:mod:`rmfn_napari.cryoem.reconstruct.halves`): poses refined against one shared
    map make both halves inherit its errors, and their FSC then overstates the resolution
    (:func:`gold_standard_values` says which case a run is in). ``full`` is the mean of the two
    half-maps.

    Parameters
    ----------
    dataset : the particles at the working box (``images``, ``ctf``, ``box``, ``apix``, ``n``).
    rotations : ``(n, 3, 3)`` RELION matrices; shifts_px : ``(n, 2)`` origins in px of the box.
    halves : ``(n,)`` 1/2 from :func:`half_sets`.
    mask_radius : radius of the soft spherical mask as a fraction of the box (None: 0.45).
    ranks : in a data-parallel run (every rank holding all the poses), each rank backprojects
        only its own particles (:meth:`Ranks.shard`) and the accumulators are summed on rank 0,
        which alone reconstructs and returns the maps; the other ranks return None. The sums
        are those of one process up to float64 rounding (a different order of addition).
    """
    box, apix = int(dataset.box), float(dataset.apix)
    R = np.tile(np.eye(3), (dataset.n, 1, 1))
    S = np.zeros((dataset.n, 2))
    R[:n], S[:n] = rotations.numpy(), shifts_px.numpy()
    mine = np.zeros(n, dtype=bool)
    mine[ranks.shard(n)] = True
    parts = []
    for h in (1, 2):
        bp = FourierBackprojector(box, device=device)
        insert_dataset(bp, dataset, R, S, subset=np.flatnonzero((halves[:n] == h) & mine),
                       invert_contrast=invert_contrast)
        ranks.sum_on_main(bp.accumulators, f"summing half-map {h}'s backprojection")
        parts.append(bp)
    counts = ranks.total([bp.n_images for bp in parts], "counting the backprojected images")
    for bp, count in zip(parts, counts):
        bp.n_images = int(count)
    if not ranks.is_main:
        return None
    half1, half2 = (bp.reconstruct().cpu().numpy() for bp in parts)
    full = (half1 + half2) / 2  # the map of the two independent halves
    del parts
    radius = 0.45 if mask_radius is None else float(mask_radius)
    masks = {"sphere": soft_sphere_mask(box, radius * box, 0.05 * box), "auto": auto_mask(full, apix)}
    gold = {"unmasked": gold_standard_fsc(half1, half2, apix)}
    for name, m in masks.items():
        gold[name] = gold_standard_fsc(half1, half2, apix, mask=m, seed=seed)
    return HalfMaps(half1, half2, full, masks, gold, (int((halves == 1).sum()), int((halves == 2).sum())))


def halves_frame(hm: HalfMaps, apix: float) -> dict:
    """Whether the two half-maps are in one frame: the rigid transform and hand that best align
    half-map 2 to half-map 1 (:func:`~rmfn_napari.cryoem.metrics.align_map`). Independent refinements from a start that does not fix the hand (a featureless
    coarse map) can settle in mirrored or turned frames; their FSC is then no resolution.
    The frame needs only degrees: 500 rotations per hand, the search at the coarse box and
    without the final polish (:func:`~rmfn_napari.cryoem.metrics.align_map`'s ``polish``),
    about a third of a full alignment's time.

    Returns ``{"angle_deg", "flipped", "shift_voxels", "correlation_aligned", "same_frame"}``
    (``same_frame``: not flipped and turned by at most :data:`FRAME_LIMIT_DEG`)."""
    _, al = align_map(hm.half2, hm.half1, apix, n_rotations=500, mid_box=16, n_candidates=4, polish=False)
    angle = float(geodesic_distance(torch.as_tensor(al.rotation, dtype=torch.float64)[None],
                                    torch.eye(3, dtype=torch.float64)[None])[0])
    return {"angle_deg": angle, "flipped": bool(al.flipped), "shift_voxels": [float(v) for v in al.shift_voxels],
            "correlation_aligned": float(al.correlation),
            "same_frame": bool(not al.flipped and angle <= FRAME_LIMIT_DEG)}


#: a run with more than this fraction of its poses still turning by > 5° per epoch has not converged
MOVING_LIMIT = 0.10


#: a stage whose gold-standard resolution is within this factor of its band has resolved the band
BAND_RESOLVED_FACTOR = 1.05


def band_progress(resolution_A: float | None, band_A: float | None) -> dict:
    """How far the independent halves got into a stage's band: ``band_A`` (the stage's band as a
    resolution, Å), ``band_resolved`` (the gold-standard resolution is at most
    :data:`BAND_RESOLVED_FACTOR` × the band's; None: no resolution or no band) and
    ``band_note``, e.g. "resolved 16.5 Å of its 15.8 Å band". The half-maps are backprojections,
    not limited to the network's band, so a resolution finer than the band is possible: the
    poses are then better than the band they were refined at needs."""
    if band_A is None:
        return {"band_A": None, "band_resolved": None, "band_note": None}
    if resolution_A is None:
        return {"band_A": float(band_A), "band_resolved": None,
                "band_note": f"has no independent resolution inside its {band_A:.1f} Å band"}
    resolved = bool(resolution_A <= BAND_RESOLVED_FACTOR * band_A)
    return {"band_A": float(band_A), "band_resolved": resolved,
            "band_note": f"resolved {resolution_A:.1f} Å of its {band_A:.1f} Å band"
                         + ("" if resolved else " (not yet)")}


def gold_standard_values(hm: HalfMaps, shared_band_cycles: float | None = None, independent: bool = True,
                         moving: dict | None = None, frame: dict | None = None,
                         band_cycles: float | None = None) -> dict:
    """JSON-ready summary of :class:`HalfMaps`: curves (cycles/box), resolutions (Å or None),
    the randomisation point of each masked curve, the half-set sizes. ``headline`` names the
    curve to quote (the automatic mask, as RELION's post-processing does).

    Only what the halves learned apart is a resolution (DESIGN.md §2):

    - ``independent`` False (the halves share one network: before the split, or a run that
      never splits): every resolution is None — the curves are kept, the number is not one;
    - ``shared_band_cycles``: the band (cycles/box) of the last shared stage. A curve that
      falls below the threshold at or inside it crossed where the halves were not apart: None;
      ``resolution_raw_A`` keeps each crossing as computed;
    - ``frame`` (:func:`halves_frame`): half-maps in different frames (mirrored, or turned by
      more than :data:`FRAME_LIMIT_DEG`) are not compared: every resolution is None;
    - ``moving`` (:func:`~rmfn_napari.cryoem.reconstruct.poses.moving_poses` of the last epoch):
      more than :data:`MOVING_LIMIT` of the poses still turning means the refinement has not
      converged; the number stands, flagged.

    ``trusted`` and ``verdict`` (one sentence for the log, the CLI and the widget) say which of
    these holds; ``halves_correlation`` is the half-maps' real-space correlation inside the
    auto mask (1: identical). ``band_cycles``: the stage's band (cycles/box); the headline
    resolution against it is in ``band_A``, ``band_resolved`` and ``band_note``
    (:func:`band_progress`).
    """
    g0 = hm.gold["unmasked"]

    def curve(c):
        return [None if not np.isfinite(v) else float(v) for v in np.asarray(c, dtype=float)]

    raw = {name: g.resolution_A for name, g in hm.gold.items()}
    box, apix = int(g0.box), float(g0.apix)
    shared_A = None if shared_band_cycles is None else box * apix / shared_band_cycles
    other_frame = frame is not None and not frame["same_frame"]
    resolution = {}
    for name, res in raw.items():
        inside_shared = res is not None and shared_A is not None and res >= shared_A - 1e-9
        resolution[name] = None if (not independent or inside_shared or other_frame) else res
    headline = resolution["auto"]
    m = hm.masks["auto"] > 0.5
    a, b = hm.half1[m] - hm.half1[m].mean(), hm.half2[m] - hm.half2[m].mean()
    corr = float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-30))
    moving_fraction = None if not moving else float(moving["fraction_moving"])
    if not independent:
        trusted, verdict = False, ("no gold standard: the half-maps' poses were refined against one shared "
                                   "network, so their FSC measures agreement with it, not resolution")
    elif other_frame:
        trusted, verdict = False, (f"no gold standard: the half-sets settled in different frames (half-map 2 is "
                                   f"{'mirrored and ' if frame['flipped'] else ''}turned by {frame['angle_deg']:.0f}° "
                                   f"from half-map 1; aligned, they correlate {frame['correlation_aligned']:.2f}): the "
                                   "shared start did not fix the frame; split later (--split-at)")
    elif headline is None and raw["auto"] is not None:
        trusted, verdict = False, (f"not resolved beyond the shared band: the independent halves' FSC falls "
                                   f"below {g0.threshold:g} at {raw['auto']:.1f} Å, inside the {shared_A:.1f} Å "
                                   "the halves shared")
    elif headline is None:
        trusted, verdict = False, "not resolved: the halves' FSC is below the threshold from the first shell"
    elif moving_fraction is not None and moving_fraction > MOVING_LIMIT:
        trusted, verdict = False, (f"gold standard {headline:.1f} Å, NOT converged: {100 * moving_fraction:.0f}% "
                                   f"of the poses turned by more than {moving['threshold_deg']:g}° in the last "
                                   f"epoch (halves' correlation {corr:.2f})")
    else:
        trusted, verdict = True, (f"gold standard {headline:.1f} Å between independent halves (split below "
                                  f"{shared_A:.1f} Å); halves' correlation {corr:.2f}" if shared_A is not None else
                                  f"gold standard {headline:.1f} Å; halves' correlation {corr:.2f}")
        if moving_fraction is not None:
            verdict += f", {100 * moving_fraction:.0f}% of poses still moving"

    band_A = None if band_cycles is None else box * apix / band_cycles
    return {
        "independent": bool(independent),
        **band_progress(headline, band_A),
        "shared_band_cycles": shared_band_cycles,
        "shared_band_A": shared_A,
        "resolution_raw_A": raw,
        "poses_moving_fraction": moving_fraction,
        "halves_correlation": corr,
        "halves_frame": frame,
        "trusted": trusted,
        "verdict": verdict,
        "freq_cycles": [float(f) for f in g0.freqs],
        "threshold": float(g0.threshold),
        "curves": {name: curve(g.fsc) for name, g in hm.gold.items()},
        "resolution_A": resolution,
        "randomise_from_A": {name: hm.gold[name].randomise_from_A for name in ("sphere", "auto")},
        "masks": {"sphere": "soft sphere, radius as the engine's mask, raised-cosine edge 0.05 box",
                  "auto": "low-pass 15 Å, threshold median + 0.1 (max - median), dilated 3 px, "
                          "raised-cosine edge 6 px",
                  "auto_fraction_of_box": float(hm.masks["auto"].mean())},
        "headline": "auto",
        "n_half": list(hm.n_half),
        "box": int(g0.box),
        "apix": float(g0.apix),
    }


def postprocessed_map(hm: HalfMaps, values: dict, apix: float) -> PostProcessed | None:
    """The post-processed map of a stage (:func:`~rmfn_napari.cryoem.metrics.postprocess.postprocess`:
    FSC-weighted mean of the half-maps, sharpened by the Guinier B-factor, low-passed at the
    gold-standard resolution, auto-masked), from the auto-masked corrected FSC; None when
    :func:`gold_standard_values` gave no trusted resolution (nothing to low-pass at)."""
    res = values["resolution_A"].get(values["headline"])
    if res is None or not values["trusted"]:
        return None
    return postprocess(hm.half1, hm.half2, hm.gold["auto"].fsc, res, apix, mask=hm.masks["auto"])
