"""CTF: RELION's formula and sign, astigmatism orientation, batching, envelope."""

import math

import numpy as np
import pytest
import torch

from rmfn_napari.cryoem.ctf import CTFParams, ctf_2d, electron_wavelength


def _relion_ctf_scalar(sx, sy, dfu, dfv, ang, kv, cs_mm, w, phase=0.0, bfac=0.0):
    """Independent scalar transcription of RELION's CTF::getCTF (ctf.h)."""
    lam = 12.2639 / math.sqrt(kv * 1e3 + 0.97845e-6 * (kv * 1e3) ** 2)
    K1 = math.pi * lam
    K2 = math.pi / 2 * cs_mm * 1e7 * lam ** 3
    K3 = math.atan(w / math.sqrt(1 - w * w))
    K5 = math.radians(phase)
    u2 = sx * sx + sy * sy
    defocus_average, defocus_deviation = -(dfu + dfv) / 2, -(dfu - dfv) / 2
    deltaf = defocus_average + defocus_deviation * math.cos(2 * (math.atan2(sy, sx) - math.radians(ang)))
    arg = K1 * deltaf * u2 + K2 * u2 * u2 - K5 - K3
    return -math.sin(arg) * math.exp(-bfac / 4 * u2)


def test_wavelength_300kv():
    assert electron_wavelength(300.0) == pytest.approx(0.019687, abs=2e-6)


def test_origin_is_plus_w_and_matches_relion_pointwise():
    D, apix = 64, 1.3
    c = ctf_2d(D, apix, 15000.0, 14000.0, 33.0, 300.0, 2.7, 0.1, phase_shift_deg=20.0, bfactor=50.0)
    assert c.shape == (1, D, D) and c.dtype == torch.float32
    # at s = 0 with a phase shift φ: -sin(-asin w - φ)
    assert float(c[0, D // 2, D // 2]) == pytest.approx(math.sin(math.asin(0.1) + math.radians(20)), abs=1e-6)
    c0 = ctf_2d(D, apix, 15000.0, 14000.0, 33.0, 300.0, 2.7, 0.1)
    assert float(c0[0, D // 2, D // 2]) == pytest.approx(0.1, abs=1e-7)
    for (j, i) in [(D // 2, D // 2 + 5), (D // 2 + 7, D // 2 - 3), (3, 60), (40, 10)]:
        sx, sy = (i - D // 2) / (D * apix), (j - D // 2) / (D * apix)
        ref = _relion_ctf_scalar(sx, sy, 15000.0, 14000.0, 33.0, 300.0, 2.7, 0.1, 20.0, 50.0)
        assert float(c[0, j, i]) == pytest.approx(ref, abs=2e-6)


def _first_zero(profile):
    """Fractional index of the first sign change of a 1D profile starting at index 0."""
    s = np.sign(profile)
    k = int(np.nonzero(s[1:] != s[0])[0][0])
    return k + profile[k] / (profile[k] - profile[k + 1])


def _hand_first_zero_px(df, D, apix, kv=300.0, cs_mm=2.7, w=0.1):
    # -sin(chi) = 0 first at chi = -pi: (pi/2) Cs lam^3 s^4 - pi lam df s^2 + (pi - asin w) = 0
    lam = electron_wavelength(kv)
    a, b, c = 0.5 * math.pi * cs_mm * 1e7 * lam ** 3, -math.pi * lam * df, math.pi - math.asin(w)
    s2 = (-b - math.sqrt(b * b - 4 * a * c)) / (2 * a)
    return math.sqrt(s2) * D * apix


@pytest.mark.parametrize("angle, along_x, along_y", [(0.0, 20000.0, 10000.0), (90.0, 10000.0, 20000.0),
                                                     (180.0, 20000.0, 10000.0)])
def test_astigmatism_orientation(angle, along_x, along_y):
    D, apix = 256, 1.0
    c = ctf_2d(D, apix, 20000.0, 10000.0, angle, 300.0, 2.7, 0.1, ).double()[0].numpy()
    zx = _first_zero(c[D // 2, D // 2:])  # along +x (fastest axis)
    zy = _first_zero(c[D // 2:, D // 2])  # along +y
    assert zx == pytest.approx(_hand_first_zero_px(along_x, D, apix), abs=0.05)
    assert zy == pytest.approx(_hand_first_zero_px(along_y, D, apix), abs=0.05)
    # larger defocus -> first zero closer to the origin: rings elongated along the smaller defocus
    assert (zx < zy) == (along_x > along_y)


def test_astigmatism_angle_direction_45():
    # with angle 45° the defocus along the diagonal x = y is dfU (counter-clockwise from x towards y)
    D, apix = 256, 1.0
    c = ctf_2d(D, apix, 20000.0, 10000.0, 45.0, 300.0, 2.7, 0.1).double()[0].numpy()
    diag = np.array([c[D // 2 + t, D // 2 + t] for t in range(D // 2)])
    anti = np.array([c[D // 2 - t, D // 2 + t] for t in range(D // 2)])
    assert _first_zero(diag) * math.sqrt(2) == pytest.approx(_hand_first_zero_px(20000.0, D, apix), abs=0.1)
    assert _first_zero(anti) * math.sqrt(2) == pytest.approx(_hand_first_zero_px(10000.0, D, apix), abs=0.1)


def test_batch_dtype_device_and_envelope():
    dfu = torch.tensor([15000.0, 18000.0, 20000.0], dtype=torch.float64)
    c = ctf_2d(32, 2.0, dfu, dfu - 300, torch.tensor([0.0, 10.0, 200.0]), 300.0, 2.7, 0.1)
    assert c.shape == (3, 32, 32) and c.dtype == torch.float64
    for b in range(3):
        single = ctf_2d(32, 2.0, float(dfu[b]), float(dfu[b]) - 300, [0.0, 10.0, 200.0][b], 300.0, 2.7, 0.1)
        torch.testing.assert_close(c[b].float(), single[0])
    nob = ctf_2d(32, 2.0, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1).double()
    withb = ctf_2d(32, 2.0, 15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, bfactor=100.0).double()
    k = torch.arange(32, dtype=torch.float64) - 16
    s2 = (k[:, None] ** 2 + k[None, :] ** 2) / (32 * 2.0) ** 2
    torch.testing.assert_close(withb, nob * torch.exp(-100.0 * s2 / 4), atol=1e-6, rtol=0)


def test_ctfparams_subset_and_evaluate_use_ctf_2d():
    p = CTFParams(defocus_u=[15000.0, 16000, 17000], defocus_v=[14800.0, 15500, 16900],
                  defocus_angle=[10.0, 80, 300], voltage=300.0, cs=2.7, amplitude_contrast=0.1,
                  phase_shift=0.0, bfactor=0.0)
    assert len(p) == 3 and len(p.voltage) == 3
    sub = p.subset([2, 0])
    np.testing.assert_array_equal(sub.defocus_u, [17000.0, 15000.0])
    ev = p.evaluate(32, 1.5, indices=[2, 0])
    direct = ctf_2d(32, 1.5, torch.tensor([17000.0, 15000.0], dtype=torch.float64),
                    torch.tensor([16900.0, 14800.0], dtype=torch.float64),
                    torch.tensor([300.0, 10.0], dtype=torch.float64), 300.0, 2.7, 0.1).float()
    torch.testing.assert_close(ev, direct, atol=0, rtol=0)
