"""Global search over rotations and in-plane offsets, scored in two matrix products.

Every particle is scored against ``G`` candidate rotations (a fresh uniform set each call)
and ``T`` candidate offsets on the stage's central frequencies (the half-plane set of
:mod:`rmfn_napari.cryoem.reconstruct.frequencies`). The weighted squared
error ``Σ_k w² |c·S − o_t|²`` (``S`` the model's central slice, ``c`` the CTF, ``o_t`` the
observed spectrum centred with offset ``t``) expands into a term that does not depend on the
offset (``Σ w² c² |S|²``), a cross term ``−2 Re Σ w² c conj(o_t) S`` and a constant; so each
offset costs one ``(B, K) @ (K, G)`` product, and no ``B × T × G`` array is ever held.
Offsets follow RELION's convention (:mod:`rmfn_napari.cryoem.offsets`).
"""

from __future__ import annotations

import torch

from .offsets import centring_phase_at
from .rotations import random_rotations

__all__ = ["score_rotations", "global_pose_search", "residual_loss", "crop_center"]


def crop_center(ft: torch.Tensor, window: int) -> torch.Tensor:
    """Central ``window x window`` of centred 2D spectra ``(..., D, D)``."""
    D = ft.shape[-1]
    lo = D // 2 - window // 2
    return ft[..., lo:lo + window, lo:lo + window]


def residual_loss(pred: torch.Tensor, obs: torch.Tensor, ctf: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-image weighted squared error, ``(B,)``: ``Σ_k w² |c·pred − obs|²`` over all but the
    first axis (frequency points ``(B, K)`` or windows ``(B, w, w)``)."""
    diff = (pred * ctf - obs) * weight
    return (diff.real**2 + diff.imag**2).flatten(1).sum(-1)


def score_rotations(slices: torch.Tensor, obs: torch.Tensor, ctf_b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted squared error of every image against every candidate slice, ``(B, G)``.

    ``slices`` (G, w, w) are model spectra (no CTF); ``obs`` (centred) and ``ctf_b`` (B, w, w).
    Values equal :func:`residual_loss` for each pair.
    """
    w2 = (weight**2).reshape(1, -1)
    S = slices.reshape(slices.shape[0], -1)
    c = ctf_b.reshape(ctf_b.shape[0], -1)
    quad = (w2 * c * c) @ (S.real**2 + S.imag**2).T
    return quad + _cross_and_const(S, obs, c, w2)


def _cross_and_const(S: torch.Tensor, obs: torch.Tensor, c: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``−2 Re Σ w² c conj(o) S + Σ w² |o|²`` for all (image, slice) pairs, ``(B, G)``."""
    o = obs.reshape(obs.shape[0], -1)
    a = w2 * c * o.conj()
    cross = a.real @ S.real.T - a.imag @ S.imag.T
    const = (w2 * (o.real**2 + o.imag**2)).sum(-1, keepdim=True)
    return const - 2 * cross


@torch.no_grad()
def global_pose_search(fwd, vol_ft, batches, rotations, shifts_px, n_candidates: int, window: int,
                       offsets_px: torch.Tensor, generator: torch.Generator, device,
                       centres: torch.Tensor | None = None, prior_centres: torch.Tensor | None = None,
                       prior_px: float | None = None) -> tuple[int, int]:
    """Replace each particle's pose by the best (rotation, offset) candidate where it fits better.

    Parameters
    ----------
    fwd : the stage's ForwardModel (its ``freqs``, ``box``, ``slices``); ``vol_ft`` its rendered,
        padded volume spectrum.
    batches : iterable of ``(idx, obs, ctf)``; ``obs`` uncentred spectra and ``ctf`` at the
        stage's frequencies ``(B, K)`` (:class:`~rmfn_napari.cryoem.reconstruct.stage_data.StageData`).
    rotations : tensor ``(n, 3, 3)`` float64, updated in place.
    shifts_px : tensor ``(n, 2)`` float64, origins in px of the working box, updated in place.
    n_candidates : number of random rotations ``G``.
    window : the score uses the stage's frequencies with ``|kx|, |ky| ≤ window/2 − 1``.
    offsets_px : tensor ``(T, 2)``, candidate offsets (px), added to each particle's centre.
    generator : seeds the candidate rotations.
    centres : tensor ``(n, 2)``, the origins (px) the offset grid is centred on, e.g. the
        starting origins for a search over the whole range; None: each particle's current
        origin (a local search).
    prior_centres, prior_px : a Gaussian prior of width ``prior_px`` (px) on each offset around
        ``prior_centres[i]`` (its starting origin); None: none (maximum likelihood).

    Notes
    -----
    Without a prior the search is a maximum-likelihood choice among ``G × T`` candidates, and
    with offsets free it fits the noise: where the map cannot yet tell rotations apart (a
    coarse band, a map learned from wrong poses), the best of ``G × T`` moves the offset of a
    centred particle by 1-2 px and the rotation anywhere, and the wrong offsets then hold the
    wrong rotations in place (the 45-90° start of the paper: 67° -> 120° median error after
    the first search with offsets, 79° without; docs/results.md, "The 45-90° regression"). With the
    prior each candidate is scored by its posterior, as RELION weighs offsets by its
    ``sigma_offset`` prior: ``L / σ² + |t − t₀|² / (2 s²)``, where ``σ²``, the noise power per
    coefficient, is each particle's residual at its current pose divided by ``Σ w²`` (an upper
    bound: the residual holds the model's error too, which favours the prior). An offset moves
    only as far as the data pay for.

    Returns
    -------
    (particles improved, particles scored)
    """
    cand = random_rotations(n_candidates, generator=generator, dtype=torch.float64)
    sub = fwd.freqs.within(min(window, fwd.window)).to(device)
    k = fwd.freqs.k.to(device)[sub]
    w = fwd.freqs.weight.to(device)[sub]
    w2 = (w**2).reshape(1, -1)
    S = fwd.slices(vol_ft, cand.to(device=device, dtype=torch.float32), k)
    S_power = (S.real**2 + S.imag**2).T
    S_parts = torch.cat([S.real, S.imag], dim=1).T.contiguous()  # (2K, G): Re(a S) = [a.re, -a.im] @ this
    # exp(−2πi k·(c + t)/D) = exp(−2πi k·c/D) exp(−2πi k·t/D): one (T, K) table of offsets
    offsets = offsets_px.to(device=device, dtype=torch.float32)
    offset_phase = centring_phase_at(fwd.box, offsets, k)
    improved = scored = 0
    for idx, obs, ctf_b in batches:
        obs_k, c = obs[:, sub], ctf_b[:, sub]
        base = (shifts_px if centres is None else centres)[idx].to(device=device, dtype=torch.float32)
        obs_base = obs_k * centring_phase_at(fwd.box, base, k)
        # the offset-free part, once per chunk: Σ w² c² |S|² + Σ w² |o|² (a phase keeps |o|)
        fixed = (w2 * c * c) @ S_power + (w2 * (obs_base.real**2 + obs_base.imag**2)).sum(-1, keepdim=True)
        a_base = w2 * c * obs_base.conj()
        R_now = rotations[idx].to(device=device, dtype=torch.float32)
        now_shift = shifts_px[idx].to(device=device, dtype=torch.float32)
        now = residual_loss(fwd.slices(vol_ft, R_now, k),
                            obs_k * centring_phase_at(fwd.box, now_shift, k), c, w)
        if prior_px is not None:
            noise = (now / w2.sum()).clamp_min(1e-30)  # residual power per coefficient: the noise
            p0 = prior_centres[idx].to(device=device, dtype=torch.float32)
            now = now / noise + ((now_shift - p0) ** 2).sum(-1) / (2 * prior_px**2)
            off_pen = ((base[:, None, :] + offsets[None]) - p0[:, None, :]).pow(2).sum(-1) / (2 * prior_px**2)
        best = torch.full((len(idx),), float("inf"), device=device)
        best_rot = torch.zeros(len(idx), dtype=torch.long, device=device)
        best_off = torch.zeros(len(idx), dtype=torch.long, device=device)
        for t in range(offset_phase.shape[0]):
            a = a_base * offset_phase[t].conj()  # w² c conj(o e^{iφ_t})
            # fixed − 2 Re Σ a S in one matrix product (the cross term of _cross_and_const)
            scores = torch.addmm(fixed, torch.cat([a.real, -a.imag], dim=1), S_parts, alpha=-2.0)
            value, arg = scores.min(dim=1)
            if prior_px is not None:
                value = value / noise + off_pen[:, t]
            take = value < best
            best = torch.where(take, value, best)
            best_rot = torch.where(take, arg, best_rot)
            best_off = torch.where(take, torch.full_like(arg, t), best_off)
        better = (best < now).cpu()
        sel = torch.as_tensor(idx)[better]
        rotations[sel] = cand[best_rot.cpu()[better]]
        new_shift = base + offsets[best_off]
        shifts_px[sel] = new_shift.cpu().to(shifts_px.dtype)[better]
        improved += int(better.sum())
        scored += len(idx)
    return improved, scored
