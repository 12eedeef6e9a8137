"""FSC, resolution convention, masks, phase randomisation and the gold-standard correction,
checked against independent truths.

Independent references used here:
* voxels per Fourier shell counted directly with ``np.fft.fftfreq`` (uncentred grid), never
  with the package's shell code;
* the statistics of the FSC of independent Gaussian noise: mean 0, standard deviation
  ``1/√N`` for a shell of ``N`` voxels (the ``±k`` Hermitian pairs give ``N/2`` independent
  complex products whose real parts each have variance ``σ⁴/2``);
* maps built in Fourier space with a known band limit, so the true FSC is exactly 1 below
  it and 0 (± noise) above;
* the SNR algebra of masking: a mask that is 1 wherever the signal lives leaves the signal
  untouched and scales white noise power by ``f = mean(mask²)``, so a shell with unmasked
  FSC ``u = SNR/(1+SNR)`` has the masked FSC ``u / (u + f(1 − u))``;
* masking with a mask of volume fraction ``f`` leaves about ``f·N`` independent Fourier
  samples in a shell of ``N`` voxels (neighbouring Fourier voxels become correlated), so a
  masked FSC of uncorrelated maps scatters by ``1/√(f·N)``;
* closed-form values of the raised cosine and hand-computed interpolations.
"""

import math

import numpy as np
import pytest

from rmfn_napari.cryoem import metrics as M


# ------------------------------------------------------------------------------------------
# helpers (independent of the package)
# ------------------------------------------------------------------------------------------
def shell_of(box):
    """round(|k|) on the uncentred FFT grid, k in cycles/box."""
    k = np.fft.fftfreq(box) * box
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    return np.rint(np.sqrt(kx**2 + ky**2 + kz**2)).astype(int)


def shell_counts(box):
    """Voxels per shell 0..box/2."""
    return np.bincount(shell_of(box).ravel())[: box // 2 + 1]


def band(vol, shells, keep):
    """Keep the Fourier voxels where ``keep(shells)`` is true."""
    return np.fft.ifftn(np.where(keep(shells), np.fft.fftn(vol), 0)).real


def blobs(box, n, max_radius, sigma, rng):
    """Sum of n isotropic Gaussians (σ voxels) whose centres lie within max_radius of D/2."""
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    out = np.zeros((box,) * 3)
    centres = []
    for _ in range(n):
        u = rng.normal(size=3)
        p = u / np.linalg.norm(u) * rng.uniform(0, max_radius)
        centres.append(p)
        out += rng.uniform(0.5, 1.5) * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2)
                                              / (2 * sigma**2))
    return out, np.array(centres)


# ------------------------------------------------------------------------------------------
# FSC
# ------------------------------------------------------------------------------------------
def test_fsc_of_a_map_with_itself_is_one_everywhere():
    vol = np.random.default_rng(0).normal(1.0, 1.0, (32, 32, 32)).astype(np.float32)
    freqs, curve = M.fsc(vol, vol)
    np.testing.assert_array_equal(freqs, np.arange(17))
    np.testing.assert_allclose(curve, 1.0, atol=1e-12)


def test_fsc_of_independent_noise_is_within_three_over_root_n():
    box = 64
    rng = np.random.default_rng(1)
    a = rng.standard_normal((box,) * 3)
    b = rng.standard_normal((box,) * 3)
    _, curve = M.fsc(a, b)
    n = shell_counts(box)
    z = curve[1:] * np.sqrt(n[1:])  # ~ N(0, 1) per shell
    assert np.sum(np.abs(z) > 3) <= 1  # (nearly) every shell within 3/√N
    # and the scatter really is 1/√N (an FSC squashed towards 0 would pass the line above)
    assert 0.5 < np.mean(z**2) < 1.6


@pytest.mark.parametrize("threshold", [0.5, 0.143])
def test_band_limited_pair_crosses_at_the_band_limit(threshold):
    """Same map below shell k0, independent noise from k0 on: FSC 1, then 0 ± 3/√N."""
    box, apix, k0 = 64, 1.5, 10
    rng = np.random.default_rng(2)
    sh = shell_of(box)
    common = band(rng.standard_normal((box,) * 3), sh, lambda s: s < k0)
    a = common + band(rng.standard_normal((box,) * 3), sh, lambda s: s >= k0)
    b = common + band(rng.standard_normal((box,) * 3), sh, lambda s: s >= k0)
    freqs, curve = M.fsc(a, b)
    np.testing.assert_allclose(curve[1:k0], 1.0, atol=1e-9)
    n = shell_counts(box)
    assert abs(curve[k0]) < 3 / math.sqrt(n[k0])
    res = M.resolution_at(freqs, curve, threshold, box, apix)
    k = box * apix / res
    assert k0 - 1 <= k <= k0 + 1  # within one shell
    # more precisely: interpolation between 1 (shell k0-1) and ~0 (shell k0) gives k0 - t
    assert k == pytest.approx(k0 - threshold, abs=0.1)


# ------------------------------------------------------------------------------------------
# resolution convention
# ------------------------------------------------------------------------------------------
def test_resolution_hand_computed_interpolation():
    freqs = np.arange(5.0)
    curve = [1.0, 0.9, 0.7, 0.3, 0.1]
    # 0.5 is crossed between shell 2 (0.7) and shell 3 (0.3): k = 2 + 0.2/0.4 = 2.5 cycles/box;
    # box 10 at 2 Å/px is 20 Å, so 20 / 2.5 = 8 Å
    assert M.resolution_at(freqs, curve, 0.5, 10, 2.0) == pytest.approx(8.0)
    assert M.fsc_crossing(freqs, curve, 0.5) == (pytest.approx(2.5), True)


def test_curve_below_threshold_at_first_shell_is_not_resolved():
    freqs = np.arange(6.0)
    # the first shell after DC is already below: not resolved, whatever the DC shell holds
    assert M.resolution_at(freqs, [1.0, 0.1, 0.05, 0.0, 0.0, 0.0], 0.143, 64, 1.0) is None
    assert M.resolution_at(freqs, [1.0, 0.4, 0.9, 0.9, 0.9, 0.9], 0.5, 64, 1.0) is None
    # ... while a low or NaN DC shell is ignored (no interpolation from the DC shell)
    assert M.resolution_at(freqs, [np.nan, 0.9, 0.7, 0.3, 0.1, 0.0], 0.5, 10, 2.0) == pytest.approx(8.0)
    assert M.resolution_at(freqs, [-1.0, 0.9, 0.7, 0.3, 0.1, 0.0], 0.5, 10, 2.0) == pytest.approx(8.0)
    # never below: the last shell (Nyquist), flagged as not crossed
    assert M.resolution_at(freqs, [1.0, 0.9, 0.9, 0.9, 0.9, 0.9], 0.5, 10, 2.0) == pytest.approx(4.0)
    assert M.fsc_crossing(freqs, [1.0, 0.9, 0.9, 0.9, 0.9, 0.9], 0.5) == (5.0, False)


def test_resolution_is_never_coarser_than_the_box():
    rng = np.random.default_rng(3)
    box, apix = 32, 1.7
    freqs = np.arange(box // 2 + 1, dtype=float)
    n_none = 0
    for _ in range(300):
        curve = np.cumsum(rng.normal(-0.05, 0.2, freqs.size)) + rng.uniform(0, 1.5)
        res = M.resolution_at(freqs, curve, 0.5, box, apix)
        if res is None:
            n_none += 1
            assert curve[1] < 0.5
        else:
            assert 2 * apix - 1e-9 <= res <= box * apix + 1e-9
    assert 0 < n_none < 300  # both branches exercised


def test_fsc_report_flags_not_resolved():
    box = 16
    rng = np.random.default_rng(4)
    sh = shell_of(box)
    a = rng.standard_normal((box,) * 3)
    # b equals a from shell 2 on and is its negative below: FSC -1 at the first shell, 1 after
    b = band(a, sh, lambda s: s >= 2) - band(a, sh, lambda s: s < 2)
    rep = M.fsc_report(a, b, 2.0, threshold=0.5, align=False)
    assert rep["fsc"][1] == pytest.approx(-1.0) and rep["fsc"][2] == pytest.approx(1.0)
    assert rep["resolution_A"] is None and rep["resolved"] is False
    assert rep["crossing_cycles_per_box"] is None


# ------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------
def test_soft_sphere_mask_values():
    box, radius, edge = 32, 8.0, 4.0
    m = M.soft_sphere_mask(box, radius, edge)
    assert m.dtype == np.float32 and m.shape == (box,) * 3
    c = box // 2
    assert m[c, c, c] == 1.0
    assert m[0, 0, 0] == 0.0
    # 0.5 at radius + edge/2, on every axis
    for idx in [(c, c, c + 10), (c, c + 10, c), (c + 10, c, c), (c, c, c - 10)]:
        assert m[idx] == pytest.approx(0.5, abs=1e-6)
    # the raised cosine at radius + edge/4: ½(1 + cos(π/4))
    assert m[c, c + 9, c] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)), abs=1e-6)
    g = np.arange(box) - c
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    assert np.all(m[r <= radius] == 1.0) and np.all(m[r >= radius + edge] == 0.0)
    hard = M.soft_sphere_mask(box, radius, 0)
    np.testing.assert_array_equal(hard, (r <= radius).astype(np.float32))


def test_auto_mask_dilation_and_edge_are_exact_for_a_point():
    """No low-pass, an explicit threshold: the binary mask is one voxel, so the dilation is
    the ball |v| <= dilate and the soft edge is the raised cosine of the distance to it."""
    box = 32
    vol = np.zeros((box,) * 3, np.float32)
    vol[10, 12, 20] = 1.0
    g = np.arange(box)
    z, y, x = np.meshgrid(g, g, g, indexing="ij")
    d = np.sqrt((z - 10) ** 2 + (y - 12) ** 2 + (x - 20) ** 2)
    binary = M.auto_mask(vol, 1.0, lowpass_A=None, threshold=0.5, dilate_px=3, edge_px=0)
    np.testing.assert_array_equal(binary, (d <= 3).astype(np.float32))
    assert binary.sum() == 123  # lattice points with |v|² <= 9
    soft = M.auto_mask(vol, 1.0, lowpass_A=None, threshold=0.5, dilate_px=3, edge_px=4)
    expected = np.where(d <= 3, 1.0, np.where(d >= 7, 0.0, 0.5 * (1 + np.cos(np.pi * (d - 3) / 4))))
    np.testing.assert_allclose(soft, expected, atol=1e-6)
    assert soft[10, 12, 25] == pytest.approx(0.5, abs=1e-6)  # d = dilate + edge/2


def test_auto_mask_contains_a_blob_map_and_is_zero_far_away():
    box, apix = 64, 1.5
    rng = np.random.default_rng(5)
    vol, centres = blobs(box, 6, 8.0, 2.0, rng)
    noisy = vol + 0.05 * vol.max() * rng.standard_normal(vol.shape)
    for v in (vol, noisy):
        m = M.auto_mask(v.astype(np.float32), apix)  # lowpass 15 Å, 0.1 of the way to max
        assert m.dtype == np.float32 and m.min() >= 0.0 and m.max() <= 1.0
        assert np.all(m[vol > 0.1 * vol.max()] >= 0.99)
        c = np.arange(box) - box // 2
        z, y, x = np.meshgrid(c, c, c, indexing="ij")
        pts = np.stack([x, y, z], -1)
        dist = np.min(np.linalg.norm(pts[..., None, :] - centres, axis=-1), axis=-1)
        assert np.all(m[dist > 25] == 0.0)
        assert np.any((m > 0.05) & (m < 0.95))  # a soft edge, not a binary mask


# ------------------------------------------------------------------------------------------
# phase randomisation
# ------------------------------------------------------------------------------------------
def test_phase_randomise_keeps_amplitudes_and_low_shells():
    box, from_shell = 32, 5
    rng = np.random.default_rng(6)
    vol, _ = blobs(box, 10, 6.0, 1.5, rng)
    vol = (vol + 0.2 * rng.standard_normal(vol.shape)).astype(np.float32)
    out = M.phase_randomise(vol, from_shell, seed=7)
    assert out.shape == vol.shape and out.dtype == np.float32 and np.isrealobj(out)
    f = np.fft.fftn(vol.astype(np.float64))
    g = np.fft.fftn(out.astype(np.float64))
    sh = shell_of(box)
    scale = np.abs(f).max()
    # amplitudes preserved in every voxel (a non-Hermitian spectrum taken to real space
    # would have lost half of its anti-Hermitian part and changed them)
    np.testing.assert_allclose(np.abs(g), np.abs(f), atol=1e-5 * scale)
    # below the shell: unchanged complex values
    low = sh < from_shell
    np.testing.assert_allclose(g[low], f[low], atol=1e-5 * scale)
    # from the shell on: phases unrelated to the original ones (mean cos of the phase
    # difference ~ 0 within 3/√N, N voxels, Hermitian pairs counted once each)
    high = ~low & (np.abs(f) > 1e-6 * scale)
    dphi = np.angle(g[high]) - np.angle(f[high])
    assert abs(np.mean(np.cos(dphi))) < 3 / math.sqrt(high.sum())
    assert abs(np.mean(np.sin(dphi))) < 3 / math.sqrt(high.sum())
    # seeded
    np.testing.assert_array_equal(out, M.phase_randomise(vol, from_shell, seed=7))
    assert not np.allclose(out, M.phase_randomise(vol, from_shell, seed=8))


# ------------------------------------------------------------------------------------------
# gold-standard FSC with masks (Chen et al. 2013)
# ------------------------------------------------------------------------------------------
def test_masked_corrected_fsc_matches_the_snr_gain_of_a_mask_that_cuts_no_signal():
    """Compact signal + independent white noise; a soft mask that is 1 over all the signal.

    Truth: the mask keeps the signal and scales the noise power by f = mean(mask²), so the
    corrected masked FSC is u / (u + f(1 − u)) for an unmasked FSC u, hence >= u.
    Tolerance: 3σ with σ² = σ_pred² + σ_corr², the delta-method scatter of the prediction
    (σ_u = (1 − u²)/√N) and of the corrected curve ((1 − c²)·√(2/(f·N)) / (1 − FSC_random):
    f·N independent samples, masked and randomised curves each noisy, then divided by
    1 − FSC_random).
    """
    box = 64
    rng = np.random.default_rng(8)
    sig, _ = blobs(box, 40, 12.0, 1.5, rng)  # everything within 12 + 3σ < 17 voxels
    h1 = sig + 0.5 * rng.standard_normal(sig.shape)
    h2 = sig + 0.5 * rng.standard_normal(sig.shape)
    mask = M.soft_sphere_mask(box, 20, 6)
    f = float(np.mean(mask.astype(np.float64) ** 2))
    res = M.gold_standard_fsc(h1, h2, 1.0, mask=mask, seed=0)
    n = shell_counts(box)
    u = res.fsc_unmasked
    # the randomisation shell is where the unmasked FSC first drops below 0.8
    k_r = res.randomise_from_shell
    assert u[k_r] < 0.8 and np.all(u[1:k_r] >= 0.8)
    np.testing.assert_array_equal(res.fsc_corrected[:k_r], res.fsc_masked[:k_r])
    pred = u / (u + f * (1 - u))
    sd_pred = f / (u + f * (1 - u)) ** 2 * (1 - u**2) / np.sqrt(n)
    with np.errstate(divide="ignore", invalid="ignore"):  # shell 0 (DC) is not used
        sd_corr = (1 - np.clip(pred, 0, 1) ** 2) * np.sqrt(2 / (f * n)) / (1 - np.clip(res.fsc_random, 0, None))
    tol = 3 * np.sqrt(sd_pred**2 + sd_corr**2)
    np.testing.assert_array_less(np.abs(res.fsc_corrected - pred)[1:], tol[1:])
    # Chen et al.: with a mask that cuts nothing of the signal, masking only removes noise
    assert np.all(res.fsc_corrected[1:] >= u[1:] - 3 * np.sqrt(2 / (f * n[1:])))
    mid = (u > 0.2) & (u < 0.8)
    assert mid.sum() >= 2 and np.all(res.fsc_corrected[mid] > u[mid] + 0.1)
    assert res.resolution_A < res.resolution_unmasked_A  # finer with the mask


def test_phase_randomisation_removes_the_correlation_a_hard_mask_creates():
    """Shared signal below shell k0, independent noise above, a hard mask that cuts the
    shared signal: the masked FSC is spuriously high beyond k0 (the mask's sharp edge
    spreads the correlated low shells outwards); the corrected FSC is 0 there within
    3·√(2/(f·N)) and the resolution returns to the band limit."""
    box, apix, k0 = 64, 1.0, 8
    rng = np.random.default_rng(9)
    sh = shell_of(box)
    common = band(rng.standard_normal((box,) * 3), sh, lambda s: s < k0)
    h1 = common + 0.3 * band(rng.standard_normal((box,) * 3), sh, lambda s: s >= k0)
    h2 = common + 0.3 * band(rng.standard_normal((box,) * 3), sh, lambda s: s >= k0)
    mask = M.soft_sphere_mask(box, 20, 0)  # hard
    f = float(np.mean(mask.astype(np.float64) ** 2))
    res = M.gold_standard_fsc(h1, h2, apix, mask=mask, seed=1)
    n = shell_counts(box)
    assert res.randomise_from_shell == k0
    tol = 3 * np.sqrt(2 / (f * n))
    beyond = np.arange(box // 2 + 1) >= k0
    # spurious: far above what uncorrelated masked maps could give (3/√(f·N))
    assert res.fsc_masked[k0] > 2 * 3 / math.sqrt(f * n[k0])
    spurious = M.resolution_at(res.freqs, res.fsc_masked, 0.143, box, apix)
    assert box * apix / spurious > k0 + 1
    # corrected: back to 0 (the truth beyond k0)
    np.testing.assert_array_less(np.abs(res.fsc_corrected[beyond]), tol[beyond])
    k = box * apix / res.resolution_A
    assert k0 - 1 <= k <= k0 + 1
    assert res.resolution_unmasked_A == pytest.approx(box * apix / (k0 - 0.143), rel=0.02)


def test_hard_mask_on_independent_noise_stays_at_zero():
    box = 64
    rng = np.random.default_rng(10)
    h1 = rng.standard_normal((box,) * 3)
    h2 = rng.standard_normal((box,) * 3)
    mask = M.soft_sphere_mask(box, 20, 0)
    f = float(np.mean(mask.astype(np.float64) ** 2))
    res = M.gold_standard_fsc(h1, h2, 1.0, mask=mask, seed=2)
    n = shell_counts(box)
    assert res.randomise_from_shell == 1
    tol = 3 * np.sqrt(1 / (f * n))
    assert np.sum(np.abs(res.fsc_masked[1:]) > tol[1:]) <= 1
    assert np.sum(np.abs(res.fsc_corrected[1:]) > np.sqrt(2) * tol[1:]) <= 1


def test_gold_standard_without_mask_and_to_dict():
    box = 32
    rng = np.random.default_rng(11)
    sig, _ = blobs(box, 10, 6.0, 1.5, rng)
    h1 = sig + 0.3 * rng.standard_normal(sig.shape)
    h2 = sig + 0.3 * rng.standard_normal(sig.shape)
    res = M.gold_standard_fsc(h1, h2, 2.0)
    freqs, curve = M.fsc(h1, h2)
    np.testing.assert_array_equal(res.fsc, curve)
    assert res.fsc_masked is None and res.fsc_corrected is None and res.randomise_from_shell is None
    assert res.resolution_A == M.resolution_at(freqs, curve, 0.143, box, 2.0)
    import json

    d = json.loads(json.dumps(M.gold_standard_fsc(h1, h2, 2.0, mask=M.soft_sphere_mask(box, 10, 4)).to_dict()))
    assert len(d["fsc_corrected"]) == box // 2 + 1 and d["threshold"] == 0.143
    assert d["randomise_from_A"] == pytest.approx(box * 2.0 / d["randomise_from_shell"])


def test_fsc_full_from_half_matches_averaging_two_halves():
    """h_i = S + n_i: the FSC of (h1 + h2)/2 against S is √(2F/(1+F)) of the half-map FSC F."""
    assert M.fsc_full_from_half(0.143) == pytest.approx(0.5, abs=1e-3)
    assert M.fsc_full_from_half(1.0) == 1.0 and M.fsc_full_from_half(0.0) == 0.0
    box = 48
    rng = np.random.default_rng(12)
    sh = shell_of(box)
    s = np.fft.ifftn(np.fft.fftn(rng.standard_normal((box,) * 3)) * np.exp(-(sh / 8.0) ** 2)).real
    h1 = s + 0.9 * s.std() * rng.standard_normal(s.shape)
    h2 = s + 0.9 * s.std() * rng.standard_normal(s.shape)
    _, half = M.fsc(h1, h2)
    _, full = M.fsc((h1 + h2) / 2, s)
    n = shell_counts(box)
    sel = (np.arange(box // 2 + 1) >= 1) & (half > 0.1) & (half < 0.95)
    assert sel.sum() >= 4
    # 3σ, σ from the delta method (SE of an FSC ρ over N voxels ≈ (1 − ρ²)/√N), the two
    # curves' errors added (they share the noise)
    F = half[sel]
    g = np.sqrt(2 * F / (1 + F))
    dg = 1 / (g * (1 + F) ** 2)
    tol = 3 * (dg * (1 - F**2) + (1 - g**2)) / np.sqrt(n[sel])
    np.testing.assert_array_less(np.abs(full[sel] - M.fsc_full_from_half(F)), tol)
