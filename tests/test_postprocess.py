"""Post-processing (issue 26): a B-factor put in by hand is found by the Guinier fit, the
sharpened map has a flat spectrum again, and nothing survives beyond the resolution."""

from __future__ import annotations

import numpy as np
import pytest

from rmfn_napari.cryoem.metrics import gold_standard_fsc
from rmfn_napari.cryoem.metrics.postprocess import guinier_bfactor, postprocess

BOX, APIX = 32, 2.0


def _blurred(bfactor: float, seed: int) -> np.ndarray:
    """A white map (flat spectrum: B = 0) whose amplitudes are multiplied by exp(−B s²/4)."""
    rng = np.random.default_rng(seed)
    ft = np.fft.fftn(rng.standard_normal((BOX,) * 3))
    k = np.fft.fftfreq(BOX) * BOX
    s2 = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) / (BOX * APIX) ** 2
    return np.fft.ifftn(ft * np.exp(-bfactor * s2 / 4)).real


def _shell_power(vol: np.ndarray) -> np.ndarray:
    ft = np.fft.fftshift(np.fft.fftn(vol))
    k = np.arange(BOX) - BOX // 2
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int)
    return np.bincount(r.ravel(), weights=(np.abs(ft) ** 2).ravel())[: BOX // 2 + 1] / np.bincount(r.ravel())[: BOX // 2 + 1]


@pytest.mark.parametrize("bfactor", [0.0, 80.0, 200.0])
def test_guinier_fit_finds_the_b_factor_put_in(bfactor):
    assert guinier_bfactor(_blurred(bfactor, 1), APIX, 10.0, 4.5) == pytest.approx(bfactor, abs=12.0)


def test_postprocess_sharpens_weights_and_low_passes():
    signal = _blurred(120.0, 2)
    rng = np.random.default_rng(3)
    noise = 0.02 * signal.std()
    half1 = signal + noise * rng.standard_normal(signal.shape)
    half2 = signal + noise * rng.standard_normal(signal.shape)
    gold = gold_standard_fsc(half1, half2, APIX)
    resolution = 6.0  # low-pass here, whatever the curve says
    out = postprocess(half1, half2, gold.fsc, resolution, APIX)
    assert out.bfactor == pytest.approx(120.0, abs=15.0)
    power = _shell_power(out.map)
    k_res = BOX * APIX / resolution  # 10.7 cycles/box
    inside = np.arange(3, int(k_res) - 1)
    # sharpened: the shells up to the resolution are flat again (the blur removed ~exp(-1.3))
    assert power[inside].max() / power[inside].min() < 1.6
    assert power[int(k_res) + 2:].max() < 1e-6 * power[inside].mean()  # low-passed
    # the FSC weight: a shell where the halves share nothing is removed
    zeroed = postprocess(half1, half2, np.where(np.arange(len(gold.fsc)) == 5, 0.0, gold.fsc), resolution, APIX)
    assert _shell_power(zeroed.map)[5] < 1e-6 * power[5]
