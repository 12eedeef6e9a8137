"""Metrics of Table 1: spectrum drift per scale and PSNR of the full-scale output."""

from __future__ import annotations

import numpy as np


def amplitude_spectrum(image: np.ndarray) -> np.ndarray:
    """Centred Fourier amplitude spectrum ``|FFT2|`` of an image (H, W) or (H, W, C).

    The FFT is unnormalised (numpy's default), taken per channel over the two image
    axes and ``fftshift``-ed so the zero frequency sits at index (H//2, W//2).
    """
    image = np.asarray(image, dtype=np.float64)
    return np.abs(np.fft.fftshift(np.fft.fft2(image, axes=(0, 1)), axes=(0, 1)))


def log_spectrum(data: np.ndarray) -> np.ndarray:
    """Centred log-amplitude spectrum ``log(1 + |FFT|)`` of a 2D image or 3D volume (float32).

    Multi-channel images (H, W, C) are averaged over channels first.
    """
    data = np.asarray(data, dtype=np.float64)
    if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] != data.shape[-1]:
        data = data.mean(axis=-1)
    return np.log1p(np.abs(np.fft.fftshift(np.fft.fftn(data)))).astype(np.float32)


def spectrum_drift(after_stage: np.ndarray, at_end: np.ndarray) -> float:
    """Mean absolute difference of two images' amplitude spectra (Table 1, "Mean Abs. Difference").

    ``after_stage`` is a scale's output right after the stage that trains it, ``at_end``
    the same scale's output at the end of training (same shape). Returns the mean over
    all frequencies (and channels) of ``| |F_after| - |F_end| |`` with the unnormalised
    FFT, in the image's intensity units (intensities in [0, 1]).
    """
    a, b = np.asarray(after_stage), np.asarray(at_end)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    return float(np.mean(np.abs(amplitude_spectrum(a) - amplitude_spectrum(b))))


def psnr(estimate: np.ndarray, reference: np.ndarray, peak: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / MSE)``; intensities in [0, peak]."""
    est, ref = np.asarray(estimate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if est.shape != ref.shape:
        raise ValueError(f"shapes differ: {est.shape} vs {ref.shape}")
    mse = float(np.mean((est - ref) ** 2))
    if mse == 0:
        return float("inf")
    return 10.0 * np.log10(peak**2 / mse)
