"""Contrast transfer function, RELION's convention (``src/ctf.h``), on centred Fourier grids.

One function, :func:`ctf_2d`, is used both to simulate particles and to fit them, so the two
can never disagree (the public reference code of the paper uses different grid indexing for
the astigmatism angle in the two places).

Formula (DESIGN.md section 2), with ``s = (sx, sy)`` the spatial frequency in 1/Å::

    λ      = 12.2639 / sqrt(V + 0.97845e-6 V²)               (Å; V in volts)
    α      = atan2(sy, sx)                                    (x = fastest array axis)
    df(α)  = ½ [dfU + dfV + (dfU − dfV) cos 2(α − α_ast)]     (Å)
    χ(s)   = −π λ df(α) |s|² + (π/2) Cs λ³ |s|⁴ − arcsin(w) − φ
    CTF    = −a · sin χ · exp(−B |s|² / 4)

with ``a`` the scale factor (``rlnCtfScalefactor``, 1 unless a STAR gives one; RELION's
``CTF::getCTF`` returns ``scale * retval``), so ``CTF(0) = +a·w``: a positive map gives white particles (RELION after "invert contrast").
cryoDRGN's CTF is the negative of this one.

Grid: index ``j`` on each axis is the frequency ``k = j − D/2`` cycles/box, i.e.
``s = k / (D · apix)`` 1/Å; the zero frequency is at ``[D/2, D/2]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch

__all__ = ["electron_wavelength", "ctf_2d", "CTFParams", "frequency_grid_2d"]


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Å for an accelerating voltage in kV (RELION's formula)."""
    v = voltage_kv * 1e3
    if isinstance(v, torch.Tensor):
        return 12.2639 / torch.sqrt(v + 0.97845e-6 * v * v)
    return 12.2639 / np.sqrt(v + 0.97845e-6 * v * v)


def frequency_grid_2d(box: int, apix: float = 1.0, dtype=torch.float64, device=None,
                      window: int | None = None):
    """Centred 2D spatial-frequency grid of a ``box``-pixel image, or its central ``window``².

    Returns
    -------
    sx, sy : torch.Tensor, shape ``(box, box)`` (``(window, window)``)
        Frequencies in 1/Å along x (last axis) and y (first axis); ``s = (j − n/2)/(box·apix)``
        with ``n`` the grid size.
    """
    n = box if window is None else int(window)
    k = (torch.arange(n, dtype=dtype, device=device) - n // 2) / (box * apix)
    sy, sx = torch.meshgrid(k, k, indexing="ij")
    return sx, sy


def _as_batch(x, dtype, device) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=dtype, device=device)
    return t.reshape(-1)


def ctf_2d(D: int, apix: float, defocus_u, defocus_v, defocus_angle_deg, voltage_kv, cs_mm,
           amplitude_contrast, phase_shift_deg=0.0, bfactor=0.0, window: int | None = None,
           scale=1.0) -> torch.Tensor:
    """RELION-convention CTF on the centred ``D × D`` Fourier grid for a batch of parameters.

    Parameters
    ----------
    D : int
        Box size (pixels, even).
    apix : float
        Pixel size in Å.
    defocus_u, defocus_v : float or torch.Tensor of shape ``(B,)``
        Defoci in Å (underfocus positive, as ``rlnDefocusU/V``).
    defocus_angle_deg : float or tensor ``(B,)``
        Astigmatism angle ``α_ast`` (``rlnDefocusAngle``) in degrees, measured from the x axis
        (the fastest array axis) towards y: ``df = dfU`` along that direction.
    voltage_kv : float or tensor ``(B,)``
        Accelerating voltage in kV.
    cs_mm : float or tensor ``(B,)``
        Spherical aberration in mm (converted to Å inside).
    amplitude_contrast : float or tensor ``(B,)``
        Amplitude contrast fraction ``w`` (``0 ≤ w < 1``).
    phase_shift_deg : float or tensor ``(B,)``
        Additional phase shift φ in degrees (phase plate), default 0.
    bfactor : float or tensor ``(B,)``
        B-factor in Å²; the envelope is ``exp(−B s²/4)``; default 0 (no envelope).
    window : int, optional
        Evaluate only the central ``window × window`` frequencies of the ``D``-grid (the same
        values as cropping the full result).
    scale : float or tensor ``(B,)``
        Multiplies the CTF (``rlnCtfScalefactor``, dimensionless), default 1.

    Returns
    -------
    torch.Tensor, shape ``(B, D, D)`` (``(B, window, window)``)
        Real CTF values on the centred grid; ``[:, D/2, D/2] == scale · w``. ``B`` is the broadcast
        length of the parameters (1 if all are scalars). Device and dtype follow the first
        floating-point tensor among the inputs (float32 on CPU if none); the arithmetic is
        done in float64 and cast at the end, so every caller gets bit-identical values.
    """
    params = (defocus_u, defocus_v, defocus_angle_deg, voltage_kv, cs_mm, amplitude_contrast,
              phase_shift_deg, bfactor, scale)
    ref = next((p for p in params if isinstance(p, torch.Tensor) and p.is_floating_point()), None)
    out_dtype = ref.dtype if ref is not None else torch.float32
    device = ref.device if ref is not None else None
    dfu, dfv, ang, kv, cs, w, ph, bf, a = torch.broadcast_tensors(
        *(_as_batch(p, torch.float64, device) for p in params))
    sx, sy = frequency_grid_2d(int(D), float(apix), torch.float64, device, window)
    s2 = sx * sx + sy * sy
    alpha = torch.atan2(sy, sx)
    lam = electron_wavelength(kv)[:, None, None]
    cs_a = (cs * 1e7)[:, None, None]
    ast = torch.deg2rad(ang)[:, None, None]
    df = 0.5 * (dfu[:, None, None] + dfv[:, None, None]
                + (dfu - dfv)[:, None, None] * torch.cos(2 * (alpha - ast)))
    chi = (-math.pi * lam * df * s2 + 0.5 * math.pi * cs_a * lam ** 3 * s2 * s2
           - torch.arcsin(w)[:, None, None] - torch.deg2rad(ph)[:, None, None])
    ctf = -torch.sin(chi)
    ctf = a[:, None, None] * ctf * torch.exp(-bf[:, None, None] * s2 / 4)
    return ctf.to(out_dtype)


@dataclass
class CTFParams:
    """Per-particle CTF parameters (RELION units), arrays of length N (float64).

    Attributes
    ----------
    defocus_u, defocus_v : Å
    defocus_angle : degrees (from x towards y)
    voltage : kV
    cs : mm
    amplitude_contrast : fraction
    phase_shift : degrees
    bfactor : Å²
    scale : dimensionless multiplier of the CTF (``rlnCtfScalefactor``), 1 by default
    """

    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    voltage: np.ndarray
    cs: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift: np.ndarray
    bfactor: np.ndarray
    scale: np.ndarray = 1.0

    def __post_init__(self):
        n = None
        for f in fields(self):
            v = np.asarray(getattr(self, f.name), dtype=np.float64).reshape(-1)
            n = len(v) if n is None or n == 1 else n
            setattr(self, f.name, v)
        for f in fields(self):  # broadcast scalars (length 1) to N
            v = getattr(self, f.name)
            if len(v) == 1 and n != 1:
                setattr(self, f.name, np.full(n, v[0]))
            elif len(v) != n:
                raise ValueError(f"CTFParams.{f.name} has length {len(v)}, expected {n}")

    def __len__(self) -> int:
        return len(self.defocus_u)

    def subset(self, idx) -> "CTFParams":
        """The parameters of particles ``idx`` (any numpy index: ints, slice, boolean mask)."""
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return CTFParams(**{f.name: np.atleast_1d(getattr(self, f.name)[idx]) for f in fields(self)})

    def evaluate(self, box: int, apix: float, indices=None, dtype=torch.float32,
                 device=None, window: int | None = None) -> torch.Tensor:
        """CTF images ``(B, box, box)`` via :func:`ctf_2d` (the reconstruction-side call);
        ``(B, window, window)``, the central frequencies only, with ``window``.

        Parameters
        ----------
        box : int
            Image size in pixels.
        apix : float
            Pixel size, Å.
        indices : optional
            Particles to evaluate (default all).
        dtype, device
            Of the result.
        """
        p = self if indices is None else self.subset(indices)
        t = {f.name: torch.tensor(getattr(p, f.name), dtype=torch.float64, device=device)
             for f in fields(p)}
        return ctf_2d(box, apix, t["defocus_u"], t["defocus_v"], t["defocus_angle"], t["voltage"],
                      t["cs"], t["amplitude_contrast"], t["phase_shift"], t["bfactor"], window,
                      t["scale"]).to(dtype)
