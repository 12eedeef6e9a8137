"""Tests for rmfn_napari.cryoem.metrics against independent truths.

Independent references used here: explicit-loop DFTs, analytic Gaussian maps (evaluated at
transformed coordinates, no interpolation), scipy's Rotation class, closed-form FSC
expectations for signal + independent noise.
"""

import math

import numpy as np
import pytest
from scipy.ndimage import map_coordinates
from scipy.spatial.transform import Rotation

from rmfn_napari.cryoem import metrics as M

J = np.diag([1.0, 1.0, -1.0])


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------
class GaussianMap:
    """Sum of anisotropic 3D Gaussians, evaluated analytically at points (x, y, z) in voxels."""

    def __init__(self, box, n=30, seed=0, sigma_range=(1 / 40, 1 / 12)):
        rng = np.random.default_rng(seed)
        self.centres = rng.uniform(-box / 5, box / 5, (n, 3))
        rots = Rotation.random(n, random_state=seed).as_matrix()
        sig = rng.uniform(box * sigma_range[0], box * sigma_range[1], (n, 3))
        self.precisions = [r @ np.diag(1 / s**2) @ r.T for r, s in zip(rots, sig)]
        self.amps = rng.uniform(0.5, 1.5, n)

    def __call__(self, pts):
        out = np.zeros(pts.shape[:-1])
        for c, p, a in zip(self.centres, self.precisions, self.amps):
            d = pts - c
            out += a * np.exp(-0.5 * np.einsum("...i,ij,...j->...", d, p, d))
        return out


def grid_points(box):
    """(box, box, box, 3) voxel positions (x, y, z) relative to index box/2, array order [z,y,x]."""
    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return np.stack([x, y, z], -1).astype(np.float64)


def project(vfun, rot, box):
    """Image of pose R: projection along z of V(Rᵀ x), with V given analytically.

    z is sampled symmetrically (-D/2 .. D/2) so that the sum cannot see the sign of z."""
    c = np.arange(box) - box // 2
    zc = np.arange(-(box // 2), box // 2 + 1)
    z, y, x = np.meshgrid(zc, c, c, indexing="ij")
    pts = np.stack([x, y, z], -1).astype(np.float64)
    return vfun(pts @ rot).sum(axis=0)  # (x @ R) = Rᵀ x for row vectors


# ------------------------------------------------------------------------------------------
# FSC
# ------------------------------------------------------------------------------------------
def test_fsc_self_is_one_in_every_shell():
    rng = np.random.default_rng(1)
    vol = rng.normal(1.0, 1.0, (32, 32, 32)).astype(np.float32)
    freqs, curve = M.fsc(vol, vol)
    np.testing.assert_array_equal(freqs, np.arange(17))  # 0 .. Nyquist inclusive
    np.testing.assert_allclose(curve, 1.0, atol=1e-10)


def test_fsc_independent_noise_is_near_zero():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(32, 32, 32))
    b = rng.normal(size=(32, 32, 32))
    freqs, curve = M.fsc(a, b)
    beyond = curve[freqs > 3]
    assert abs(beyond.mean()) < 0.05
    assert np.all(np.abs(beyond) < 0.25)


def test_fsc_matches_explicit_loop_dft_on_4_cubed():
    rng = np.random.default_rng(3)
    d = 4
    a = rng.normal(size=(d, d, d))
    b = a + 0.7 * rng.normal(size=(d, d, d))

    def dft(vol, kx, ky, kz):  # explicit sum, x the fastest array axis
        s = 0j
        for iz in range(d):
            for iy in range(d):
                for ix in range(d):
                    s += vol[iz, iy, ix] * np.exp(-2j * np.pi * (kx * ix + ky * iy + kz * iz) / d)
        return s

    cross = np.zeros(3)
    pa = np.zeros(3)
    pb = np.zeros(3)
    for kz in range(-2, 2):
        for ky in range(-2, 2):
            for kx in range(-2, 2):
                shell = int(round(math.sqrt(kx * kx + ky * ky + kz * kz)))
                if shell > d // 2:
                    continue
                fa, fb = dft(a, kx, ky, kz), dft(b, kx, ky, kz)
                cross[shell] += (fa * np.conj(fb)).real
                pa[shell] += abs(fa) ** 2
                pb[shell] += abs(fb) ** 2
    expected = cross / np.sqrt(pa * pb)
    freqs, curve = M.fsc(a, b)
    np.testing.assert_array_equal(freqs, [0, 1, 2])
    np.testing.assert_allclose(curve, expected, rtol=1e-10, atol=1e-12)


def _shaped_signal_and_noise(box, seed):
    """Signal with amplitude spectrum A(|k|) and white noise; returns maps and expected SNR."""
    rng = np.random.default_rng(seed)
    k = np.arange(box) - box // 2
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    kr = np.sqrt(kx**2 + ky**2 + kz**2)
    amp = 3.0 * np.exp(-(kr**2) / (2 * 6.0**2))
    white = rng.normal(size=(box,) * 3)
    spec = np.fft.fftshift(np.fft.fftn(white)) * amp
    signal = np.fft.ifftn(np.fft.ifftshift(spec)).real
    # E|S(k)|² = amp² D³ (white unit variance), E|N(k)|² = σ² D³ for white noise of std σ.
    sigma = 1.0
    shells = np.rint(kr).astype(int)
    snr = np.array([np.mean(amp[shells == s] ** 2) for s in range(box // 2 + 1)]) / sigma**2
    n1 = sigma * rng.normal(size=(box,) * 3)
    n2 = sigma * rng.normal(size=(box,) * 3)
    counts = np.bincount(shells.ravel(), minlength=box // 2 + 1)[: box // 2 + 1]
    return signal, n1, n2, snr, counts


def test_fsc_follows_spectral_snr():
    box = 32
    signal, n1, n2, snr, counts = _shaped_signal_and_noise(box, seed=4)
    freqs, half = M.fsc(signal + n1, signal + n2)  # two half-maps: FSC = SNR / (1 + SNR)
    _, vs_truth = M.fsc(signal + n1, signal)  # against the truth: sqrt(SNR / (1 + SNR))
    sel = (freqs >= 2) & (freqs <= box // 2 - 1)
    tol = 0.03 + 3.0 / np.sqrt(counts[sel])
    np.testing.assert_array_less(np.abs(half[sel] - snr[sel] / (1 + snr[sel])), tol)
    np.testing.assert_array_less(np.abs(vs_truth[sel] - np.sqrt(snr[sel] / (1 + snr[sel]))), tol)
    # the curve actually spans the interesting range
    assert half[sel].max() > 0.9 and half[sel].min() < 0.1


# ------------------------------------------------------------------------------------------
# resolution
# ------------------------------------------------------------------------------------------
def test_resolution_linear_curve_exact_crossing():
    box, apix = 64, 1.5
    freqs = np.arange(box // 2 + 1, dtype=float)
    curve = 1 - freqs / 20
    assert M.resolution_at(freqs, curve, 0.5, box, apix) == pytest.approx(box * apix / 10.0)


def test_resolution_interpolates_between_shells():
    freqs = np.arange(6, dtype=float)
    curve = np.array([1.0, 0.9, 0.8, 0.6, 0.1, 0.4])  # first crossing of 0.5 between 3 and 4
    k = 3 + (0.6 - 0.5) / (0.6 - 0.1)
    assert M.resolution_at(freqs, curve, 0.5, 10, 2.0) == pytest.approx(10 * 2.0 / k)
    # threshold 0.143 crosses first between shells 3 and 4 as well, not at the later dip
    k = 3 + (0.6 - 0.143) / (0.6 - 0.1)
    assert M.resolution_at(freqs, curve, 0.143, 10, 2.0) == pytest.approx(20 / k)


def test_resolution_never_crossing_gives_nyquist_and_flag():
    rng = np.random.default_rng(5)
    vol = rng.normal(1.0, 1.0, (16, 16, 16))
    freqs, curve = M.fsc(vol, vol)
    assert M.resolution_at(freqs, curve, 0.5, 16, 1.7) == pytest.approx(2 * 1.7)
    rep = M.fsc_report(vol, vol, 1.7, align=False)
    assert rep["crossed"] is False
    assert rep["resolution_A"] == pytest.approx(3.4)
    assert rep["alignment"] is None
    assert len(rep["fsc"]) == len(rep["freq_cycles_per_box"]) == 9


# ------------------------------------------------------------------------------------------
# alignment
# ------------------------------------------------------------------------------------------
def test_apply_alignment_direction_convention():
    """aligned(x) = moving(M Rᵀ (x − t)), checked against analytic evaluation."""
    box = 32
    vfun = GaussianMap(box, seed=6, sigma_range=(1 / 16, 1 / 8))
    x = grid_points(box)
    moving = vfun(x).astype(np.float32)
    rot = Rotation.from_rotvec(np.radians(60) * np.array([0.0, 0.6, 0.8])).as_matrix()
    t = np.array([3.0, -4.0, 2.0])
    for flipped in (False, True):
        m = J if flipped else np.eye(3)
        al = M.Alignment(rotation=rot, shift_voxels=t, flipped=flipped, correlation=0.0)
        got = M.apply_alignment(moving, al)
        expected = vfun((x - t) @ rot @ m)  # row form of M Rᵀ (x − t)
        assert np.corrcoef(got.ravel(), expected.ravel())[0, 1] > 0.995
        assert np.abs(got - expected).max() < 0.05 * expected.max()
        # the other plausible readings of the convention are clearly worse
        for wrong in (vfun((x - t) @ rot.T @ m), vfun(x @ rot @ m - t), vfun((x + t) @ rot @ m)):
            assert np.corrcoef(got.ravel(), wrong.ravel())[0, 1] < 0.95


@pytest.mark.parametrize("flipped", [False, True])
def test_align_map_recovers_rotation_shift_and_hand(flipped):
    box = 32
    vfun = GaussianMap(box, seed=7)
    x = grid_points(box)
    reference = vfun(x).astype(np.float32)
    rot = Rotation.from_rotvec(np.radians(110) * np.array([0.36, -0.8, 0.48])).as_matrix()
    t = np.array([1.3, -2.1, 0.7])
    m = J if flipped else np.eye(3)
    # moving(y) = reference(R M y + t), analytic: aligning must recover R, t and M
    clean = vfun(x @ (rot @ m).T + t)
    rng = np.random.default_rng(8)
    noise = rng.normal(scale=0.5 * clean.std(), size=clean.shape)
    moving = (clean + noise).astype(np.float32)
    aligned, al = M.align_map(moving, reference, apix=2.0)
    assert al.flipped is flipped
    assert M.geodesic_distance_deg(al.rotation, rot) < 3.0
    assert np.linalg.norm(al.shift_voxels - t) < 0.5
    # FSC after alignment ≈ FSC with the true transform applied (same trilinear resampling,
    # done independently with scipy) ...
    idx = (x - t) @ rot @ m + box // 2  # M Rᵀ (x − t) as array indices, (x, y, z) order
    truly = map_coordinates(moving, idx[..., ::-1].transpose(3, 0, 1, 2), order=1, cval=0.0)
    freqs, ft = M.fsc(truly, reference)
    _, f1 = M.fsc(aligned, reference)
    sel = freqs >= 1
    assert np.max(np.abs(f1[sel] - ft[sel])) < 0.03
    # ... and ≈ FSC of the unrotated pair (same noise, no transform) up to the loss of the
    # trilinear interpolation, which grows towards Nyquist
    unrotated = reference + noise.astype(np.float32)
    _, f0 = M.fsc(unrotated, reference)
    low = (freqs >= 1) & (freqs <= box // 4)
    assert np.max(np.abs(f1[low] - f0[low])) < 0.08
    r0 = M.resolution_at(freqs, f0, 0.5, box, 2.0)
    r1 = M.resolution_at(freqs, f1, 0.5, box, 2.0)
    assert abs(box * 2.0 / r0 - box * 2.0 / r1) < 1.0  # within one shell
    r0 = M.resolution_at(freqs, f0, 0.5, box, 2.0)
    r1 = M.resolution_at(freqs, f1, 0.5, box, 2.0)
    assert abs(box * 2.0 / r0 - box * 2.0 / r1) < 1.0  # within one shell


def test_fsc_report_with_alignment():
    box = 32
    vfun = GaussianMap(box, seed=9)
    x = grid_points(box)
    reference = vfun(x).astype(np.float32)
    rot = Rotation.from_euler("zyz", [40, 75, -20], degrees=True).as_matrix()
    moving = vfun(x @ (rot @ J).T + np.array([0.0, 1.5, -1.0])).astype(np.float32)
    rep = M.fsc_report(moving, reference, apix=2.0, threshold=0.5, n_rotations=1500,
                       n_candidates=4)
    assert rep["alignment"]["flipped"] is True
    assert M.geodesic_distance_deg(np.array(rep["alignment"]["rotation"]), rot) < 3.0
    assert rep["alignment"]["correlation"] > 0.98
    # noiseless: well correlated far out (the analytic map has little power near Nyquist)
    assert rep["resolution_A"] < 2 * 2.0 * 1.5
    no_align = M.fsc_report(moving, reference, apix=2.0, align=False)
    assert no_align["resolution_A"] > 2 * rep["resolution_A"]


# ------------------------------------------------------------------------------------------
# poses
# ------------------------------------------------------------------------------------------
def test_geodesic_distance_hand_computed():
    c, s = math.cos(math.radians(10)), math.sin(math.radians(10))
    rz10 = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    c, s = math.cos(math.radians(50)), math.sin(math.radians(50))
    rz50 = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    assert M.geodesic_distance_deg(rz10, rz50) == pytest.approx(40.0)
    # 120° about (1,1,1)/√3 is the cyclic permutation x->y->z->x
    perm = np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=float)
    assert perm @ np.array([1.0, 0, 0]) == pytest.approx([0, 1, 0])
    assert M.geodesic_distance_deg(np.eye(3), perm) == pytest.approx(120.0)
    assert M.geodesic_distance_deg(np.eye(3), np.diag([1.0, -1, -1])) == pytest.approx(180.0)


def test_pose_frame_derivation_by_projection():
    """A map rotated by Q, V'(x) = V(Qᵀx), gives the same images with poses R Qᵀ; a map mirrored
    by J gives them with poses J R J. This is what global_rotation_between assumes."""
    box = 24
    vfun = GaussianMap(box, n=12, seed=10)
    q = Rotation.from_rotvec([0.4, -0.3, 0.9]).as_matrix()
    r = Rotation.from_rotvec([-1.1, 0.5, 0.2]).as_matrix()
    rotated = lambda p: vfun(p @ q)  # noqa: E731  V(Qᵀ x) in row form
    mirrored = lambda p: vfun(p @ J)  # noqa: E731  V(J x)
    img = project(vfun, r, box)
    np.testing.assert_allclose(project(rotated, r @ q.T, box), img, atol=1e-9 * img.max())
    assert np.abs(project(rotated, q.T @ r, box) - img).max() > 0.1 * img.max()
    np.testing.assert_allclose(project(mirrored, J @ r @ J, box), img, atol=1e-9 * img.max())
    # hence R_est = R_true G with G = Qᵀ
    r_true = Rotation.random(50, random_state=11).as_matrix()
    g = M.global_rotation_between(r_true @ q.T, r_true)
    np.testing.assert_allclose(g, q.T, atol=1e-10)


def test_pose_errors_identity_is_zero():
    r = Rotation.random(100, random_state=12).as_matrix()
    err = M.pose_errors(r, r)
    assert err.shape == (100,)
    assert np.max(err) < 1e-5


def _noisy(r, deg, seed):
    rng = np.random.default_rng(seed)
    axes = rng.normal(size=(len(r), 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.abs(rng.normal(scale=deg, size=len(r)))
    noise = Rotation.from_rotvec(axes * np.radians(angles)[:, None]).as_matrix()
    return r @ noise, angles


def test_pose_errors_global_rotation_plus_noise():
    r_true = Rotation.random(500, random_state=13).as_matrix()
    g = Rotation.from_rotvec([0.7, 1.2, -0.4]).as_matrix()
    r_est, angles = _noisy(r_true @ g, 2.0, seed=14)
    err, g_fit, flipped = M.pose_errors(r_est, r_true, return_transform=True)
    assert flipped is False
    assert M.geodesic_distance_deg(g_fit, g) < 0.3
    assert np.median(np.abs(err - angles)) < 0.3
    assert np.median(err) == pytest.approx(np.median(angles), abs=0.3)


def test_global_rotation_robust_to_outliers():
    r_true = Rotation.random(1000, random_state=15).as_matrix()
    g = Rotation.from_rotvec([-0.2, 2.0, 0.9]).as_matrix()
    r_est, _ = _noisy(r_true @ g, 3.0, seed=16)
    rng = np.random.default_rng(17)
    out = rng.choice(1000, 200, replace=False)
    r_est[out] = Rotation.random(200, random_state=18).as_matrix()
    g_fit = M.global_rotation_between(r_est, r_true)
    assert M.geodesic_distance_deg(g_fit, g) < 1.0
    err = M.pose_errors(r_est, r_true)
    inl = np.setdiff1d(np.arange(1000), out)
    assert np.median(err[inl]) < 5.0
    assert np.median(err[out]) > 60.0


def test_pose_errors_mirrored_hand():
    r_true = Rotation.random(300, random_state=19).as_matrix()
    g = Rotation.from_rotvec([1.0, -0.5, 0.3]).as_matrix()
    noisy, angles = _noisy(r_true @ g, 1.0, seed=20)
    r_est = J @ noisy @ J  # reconstruction came out mirrored
    err, _, flipped = M.pose_errors(r_est, r_true, return_transform=True)
    assert flipped is True
    assert np.median(np.abs(err - angles)) < 0.3
    assert np.median(M.pose_errors(r_est, r_true, allow_flip=False)) > 20.0


def test_pose_error_stats():
    errs = np.array([1.0, 2.0, 4.0, 6.0, 12.0, 20.0, 179.9, 90.0])
    st = M.pose_error_stats(errs)
    assert st["n"] == 8
    assert st["median_deg"] == pytest.approx(9.0)
    assert st["mean_deg"] == pytest.approx(errs.mean())
    assert st["frac_under_5deg"] == pytest.approx(3 / 8)
    assert st["frac_under_10deg"] == pytest.approx(4 / 8)
    assert st["frac_under_15deg"] == pytest.approx(5 / 8)
    assert len(st["hist_counts"]) == 36 and len(st["hist_edges_deg"]) == 37
    assert st["hist_edges_deg"][0] == 0.0 and st["hist_edges_deg"][-1] == 180.0
    assert sum(st["hist_counts"]) == 8
    assert st["hist_counts"][0] == 3 and st["hist_counts"][35] == 1 and st["hist_counts"][18] == 1


def test_input_validation():
    with pytest.raises(ValueError):
        M.fsc(np.zeros((4, 4, 4)), np.zeros((4, 4, 6)))
    with pytest.raises(ValueError):
        M.fsc(np.zeros((5, 5, 5)), np.zeros((5, 5, 5)))
    with pytest.raises(ValueError):
        M.pose_errors(np.zeros((3, 3)), np.zeros((3, 3)))
