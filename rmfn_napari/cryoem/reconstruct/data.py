"""The observed data of a run: particles at the working box, the reference, image spectra on a
stage's window, the intensity scale and the contrast check."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ...errors import InputError
from ..contrast import contrast_check
from ..downsample import crop_dataset, fourier_crop_volume, validate_box
from ..io import read_map
from ..optics_groups import ResampledParticles, resample_volume
from ..particles import read_particles
from ..offsets import centre_spectra
from ..pose_search import crop_center
from ..projector import fft2_centered
from .settings import ReconstructConfig


def load_dataset(dataset, box: int | None, apix: float | None = None):
    """The particles at the working box and pixel size: read a STAR path, then Fourier-crop to
    ``box`` (px) if asked; optics groups of different pixel sizes or boxes, or a working pixel
    size ``apix`` (Å, ``--apix``), are resampled to one grid
    (:class:`~rmfn_napari.cryoem.optics_groups.ResampledParticles`)."""
    ds = read_particles(dataset) if isinstance(dataset, (str, Path)) else dataset
    ds = getattr(ds, "source", ds)  # crop from the original images, never twice
    if ds.n < 2:
        raise InputError(f"{ds.n} particle: a reconstruction needs at least 2 (two half-sets, each "
                         "with its own half-map)", ds.star_path)
    if getattr(ds, "mixed", False) or apix is not None:
        return ResampledParticles(ds, box, apix)
    if box is not None:
        validate_box(int(box), ds.box, ds.star_path)
    return crop_dataset(ds, box)


def load_reference(reference, ds, apix: float | None = None) -> np.ndarray | None:
    """The reference map at the working box: a map at the particles' original box and pixel
    size is Fourier-cropped like the particles; one already at the working box is kept.

    ``reference`` is a map file (its header gives the voxel size) or a 3D array; ``apix`` is
    an array's voxel size in Å (a napari layer's), checked like a file's header (None: the
    array's size alone is checked)."""
    if reference is None:
        return None
    box, ds_apix = ds.box, ds.apix
    src_box, src_apix = getattr(ds, "source_box", box), getattr(ds, "source_apix", ds_apix)
    path = Path(reference) if isinstance(reference, (str, Path)) else None
    if path is not None:
        vol, ref_apix = read_map(path)
    else:
        vol, ref_apix = np.asarray(reference, dtype=np.float32), None if apix is None else float(apix)
        if vol.ndim != 3 or not np.all(np.isfinite(vol)):
            raise InputError(f"reference map must be a finite 3D array, got shape {vol.shape}")

    def same(a, b):
        return a is None or abs(a - b) <= 1e-3 * b

    if isinstance(ds, ResampledParticles):  # optics groups brought to one grid: so is the map
        if vol.shape == (box,) * 3 and same(ref_apix, ds_apix):
            return vol
        if ref_apix is None:
            raise InputError(f"reference map is {vol.shape[0]}^3 with no voxel size; the particles' "
                             f"working grid is {box} px at {ds_apix:.4g} Å")
        if vol.ndim != 3 or len(set(vol.shape)) != 1:
            raise InputError(f"reference map must be cubic, got shape {vol.shape}", path)
        return resample_volume(vol, ref_apix, box, ds_apix)

    if vol.shape == (src_box,) * 3 and same(ref_apix, src_apix):
        return fourier_crop_volume(vol, box) if src_box != box else vol
    if vol.shape == (box,) * 3 and same(ref_apix, ds_apix):
        return vol
    got = f"{vol.shape[0]}^3" + ("" if ref_apix is None else f" at {ref_apix:.4g} Å")
    raise InputError(f"reference map is {got} but the particles are {src_box} px at {src_apix:.4g} Å"
                     + (f" (cropped: {box} px at {ds_apix:.4g} Å)" if src_box != box else ""), path)


def image_scale(ds, n: int, cfg: ReconstructConfig) -> float:
    """Global intensity scale of the images (std over up to 512 particles)."""
    idx = np.linspace(0, n - 1, num=min(n, 512)).astype(int)
    imgs = ds.images(np.unique(idx))
    s = float(np.std(imgs, dtype=np.float64))  # float64: pixels of 1e37 square beyond float32
    if not np.isfinite(s) or s > 1e30:
        raise InputError(f"the particle images' pixel values are too large to use (up to "
                         f"{float(np.abs(imgs).max()):.3g}; std {s:.3g})", ds.star_path)
    if s <= 0:
        raise InputError("the particle images are constant (every pixel the same)", ds.star_path)
    return s


def observed_spectra(ds, idx, ctf, window: int, scale_img: float, cfg, device):
    """Observed spectra (uncentred: offsets not applied) and CTFs of particles ``idx`` on the
    central ``window``² of the working box, ``(B, w, w)`` each (complex64, float32), computed
    on ``device``: the images are moved there, then transformed."""
    imgs = torch.as_tensor(ds.images(idx), dtype=torch.float32).to(device)
    if not bool(torch.isfinite(imgs).all()):
        raise InputError(f"NaN/Inf pixels in particles {idx[:5].tolist()}...", ds.star_path)
    if cfg.invert_contrast:
        imgs = -imgs
    box = ds.box
    ft = crop_center(fft2_centered(imgs / scale_img), window)
    if ctf is not None:
        c = ctf.evaluate(box, ds.apix, idx, dtype=torch.float32, device=device, window=window)
    else:
        c = torch.ones_like(ft.real)
    # the centred 2D FFT of an image sums D^2 pixels: divide so both sides match Parseval
    return ft / box, c


def check_contrast(ds, n, ctf, shifts_px, scale_img, cfg, device) -> str:
    """Stop (InputError naming --invert-contrast) if the particles are dark; else a log line."""
    idx = np.unique(np.linspace(0, n - 1, num=min(n, 1000)).astype(int))
    window = min(ds.box, 16)
    obs, c = observed_spectra(ds, idx, ctf, window, scale_img, cfg, device)
    obs = centre_spectra(obs, ds.box, shifts_px[idx].to(device))
    result = contrast_check(obs, c, ds.box, blob_sigma_px=0.1 * ds.box)
    what = f"contrast check: matched-filter z = {result.z:+.1f} over {result.n} particles"
    if result.verdict == "dark":
        flip = "without" if cfg.invert_contrast else "with"
        raise InputError(f"the particles are dark against the CTF convention ({what}); "
                         f"rerun {flip} --invert-contrast", ds.star_path)
    return what + (" (bright, as expected)" if result.verdict == "bright" else " (inconclusive)")
