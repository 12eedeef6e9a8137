"""When a stage ends: its planned epochs (``--advance fixed``), or steered by the independent
half-sets' gold standard (``--advance auto``).

Coarse-to-fine is a schedule of bands; a fixed number of epochs per band is a guess made before
the data are seen. From the split on (:mod:`.halves`) the two half-sets are refined apart, so
the FSC between their half-maps says, without a ground truth, how much of the current band the
run has resolved. With ``--advance auto`` that number steers the schedule, checked at the end of
every epoch of a stage whose half-sets are apart:

- **early**: the halves have resolved the stage's band (their gold-standard resolution within
  :data:`~rmfn_napari.cryoem.validation.BAND_RESOLVED_FACTOR` of the band's) and the poses have
  settled (at most :data:`~rmfn_napari.cryoem.validation.MOVING_LIMIT` of them turned by more
  than 5° in the epoch), after at least :data:`MIN_EPOCHS` epochs: the next stage starts now (the
  last stage: the run ends);
- **hold**: the planned epochs are done but the band is not resolved and the resolution is still
  improving (by at least :data:`IMPROVING` of its best so far in this stage): one more epoch, up
  to :data:`HOLD_FACTOR` times the planned epochs;
- otherwise the stage ends at its planned epochs (or at the cap).

Stages before the split have no gold standard: they run their planned epochs. The check costs
one backprojection of both half-sets per epoch (about 1 s at 32³, 8 s at 64³ on one CPU thread;
docs/results.md, the gold-standard benchmark).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..validation import BAND_RESOLVED_FACTOR, MOVING_LIMIT, gold_standard_values, half_maps

ADVANCE_MODES = ("fixed", "auto")
MIN_EPOCHS = 2  # a stage ends early only after this many epochs (one of them with a global search)
HOLD_FACTOR = 2.0  # a held stage runs at most this many times its planned epochs
IMPROVING = 0.02  # a hold goes on while the resolution improves by at least 2% of its best


def epoch_cap(mode: str, planned: int, independent: bool) -> int:
    """The most epochs a stage of ``planned`` epochs may run: ``planned`` with ``fixed`` or
    before the split (``independent`` False), else ``ceil(HOLD_FACTOR * planned)``."""
    if mode != "auto" or not independent:
        return planned
    return max(planned, math.ceil(HOLD_FACTOR * planned))


@dataclass
class Decision:
    """What :func:`decide` says after an epoch: ``end`` the stage now or not, and why (a
    sentence for the log: "halves resolved 9.8 Å of the 10.0 Å band, poses settled: next
    stage early")."""

    end: bool
    note: str


def decide(epochs_done: int, planned: int, cap: int, last_stage: bool, resolution_A: float | None,
           band_A: float, best_before_A: float | None, moving_fraction: float | None) -> Decision:
    """Whether a stage with independent halves ends after its ``epochs_done``-th epoch.

    Parameters
    ----------
    epochs_done, planned, cap : epochs run, planned (``--epochs``) and allowed (:func:`epoch_cap`).
    last_stage : the run ends with this stage ("the run ends early" rather than "next stage").
    resolution_A : the halves' gold-standard resolution now (Å; None: not resolved at all).
    band_A : the stage's band as a resolution (Å).
    best_before_A : the best (smallest) resolution of the earlier checks of this stage (None: none).
    moving_fraction : fraction of the poses that turned by more than 5° in the epoch.
    """
    next_step = "the run ends early" if last_stage else "next stage early"
    res = "not resolved" if resolution_A is None else f"{resolution_A:.1f} Å"
    resolved = resolution_A is not None and resolution_A <= BAND_RESOLVED_FACTOR * band_A
    settled = moving_fraction is not None and moving_fraction <= MOVING_LIMIT
    moving = "" if moving_fraction is None else f", {100 * moving_fraction:.0f}% of poses moving"
    head = f"halves resolved {res} of the {band_A:.1f} Å band{moving}"
    if resolved and settled and epochs_done >= min(MIN_EPOCHS, planned) and epochs_done < cap:
        if epochs_done >= planned:
            return Decision(True, f"{head}: band resolved, stage ends")
        return Decision(True, f"{head}: band resolved and poses settled, {next_step} "
                              f"({epochs_done} of {planned} planned epochs)")
    if epochs_done < planned:
        return Decision(False, f"{head}: go on")
    if epochs_done >= cap:
        return Decision(True, f"{head}: held to the cap of {cap} epochs, stage ends")
    improving = resolution_A is not None and (best_before_A is None
                                              or resolution_A < (1 - IMPROVING) * best_before_A)
    if not resolved and improving:
        return Decision(False, f"{head}: band not resolved and still improving, stage held "
                               f"(epoch {epochs_done + 1} of at most {cap})")
    return Decision(True, f"{head}: {'band resolved' if resolved else 'no longer improving'}, stage ends")


def halves_resolution(ds, n: int, rotations, shifts_px, halves, cfg, device, ranks,
                      shared_band_cycles: float | None) -> float | None:
    """The independent halves' gold-standard resolution (Å, auto mask; None: not resolved, or a
    crossing inside the shared band) from their half-maps at the current poses, computed as at
    a stage end (:func:`~rmfn_napari.cryoem.validation.half_maps`; every rank backprojects its
    own particles). Rank 0 gets the number; the other ranks None."""
    hm = half_maps(ds, n, rotations, shifts_px, halves, cfg.mask_radius, cfg.invert_contrast, device,
                   cfg.seed, ranks)
    if hm is None:
        return None
    values = gold_standard_values(hm, shared_band_cycles=shared_band_cycles, independent=True)
    return values["resolution_A"][values["headline"]]
