"""Reading and preparing 2D images for fitting."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError


def normalize_image(data: np.ndarray, name: str = "image") -> np.ndarray:
    """Return a float32 copy of ``data`` with intensities in [0, 1].

    Integer images are divided by their dtype's maximum; float images are min-max
    rescaled. Accepts (H, W), (H, W, 3) and (H, W, 4) (alpha dropped). Raises
    :class:`InputError` for other shapes, images smaller than 8x8, NaN/Inf pixels or
    constant images.
    """
    arr = np.asarray(data)
    if arr.ndim == 3 and arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise InputError(f"expected a 2D grey or RGB image, got an array of shape {arr.shape}", name)
    if min(arr.shape[:2]) < 8:
        raise InputError(f"image is too small ({arr.shape[0]}x{arr.shape[1]}; need at least 8x8)", name)
    if np.iscomplexobj(arr):
        raise InputError("image is complex; fit its real part or its amplitude instead", name)
    if arr.dtype.kind not in "biuf":
        raise InputError(f"image values are not numbers (dtype {arr.dtype})", name)
    # one float32 copy of the image, scaled in place (a huge image is held once, not thrice)
    if np.issubdtype(arr.dtype, np.integer):
        out = arr.astype(np.float32)
        out /= np.float32(np.iinfo(arr.dtype).max)
    elif np.issubdtype(arr.dtype, np.bool_):
        out = arr.astype(np.float32)
    else:  # float: rescaled to [0, 1] below
        out = arr.astype(np.float32)
        if not np.isfinite(out.min()) or not np.isfinite(out.max()):
            raise InputError("image contains NaN or Inf pixels", name)
        lo, hi = float(out.min()), float(out.max())
        if hi <= lo:
            raise InputError("image is constant; nothing to fit", name)
        out -= np.float32(lo)
        out /= np.float32(hi - lo)
        return out
    if float(out.min()) == float(out.max()):  # integers: a constant image is as unfittable
        raise InputError("image is constant; nothing to fit", name)
    return out


def load_image(path: str | Path) -> np.ndarray:
    """Read a PNG/TIFF/JPEG image as float32 in [0, 1], (H, W) or (H, W, 3).

    Raises :class:`InputError` naming the file when it is missing or unreadable.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError("is a folder, not an image file", path)
    if not path.is_file():
        raise InputError("no such file", path)
    try:
        import imageio.v3 as iio

        data = iio.imread(path)
    except Exception as exc:  # imageio raises many types for bad files
        text = str(exc).strip()
        if "Could not find a backend" in text or "pip install" in text:  # imageio's plugin advice
            why = "not a PNG, TIFF or JPEG image (no reader recognises its content)"
        else:  # its first line: one line, whatever the reader says
            why = f"cannot read image ({type(exc).__name__}: {(text.splitlines() or [''])[0][:200]})"
        raise InputError(why, path) from None
    return normalize_image(data, name=str(path))


def downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-average an (H, W[, C]) image by an integer factor (cropping a remainder)."""
    if factor == 1:
        return image
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    img = image[:h, :w]
    shape = (h // factor, factor, w // factor, factor) + img.shape[2:]
    return img.reshape(shape).mean(axis=(1, 3)).astype(np.float32)
