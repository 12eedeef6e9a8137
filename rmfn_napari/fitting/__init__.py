"""2D coarse-to-fine image fitting (paper §5, Table 1) and its metrics."""

from .image_fitting import FitImageConfig, fit_image
from .images import load_image, normalize_image
from .metrics import amplitude_spectrum, log_spectrum, psnr, spectrum_drift

__all__ = [
    "FitImageConfig", "amplitude_spectrum", "fit_image", "load_image", "log_spectrum",
    "normalize_image", "psnr", "spectrum_drift",
]
