"""Where a run's results lie in napari's world (GUI thread; no Qt or napari import): the one
place these conventions are written down.

- **On the data's grid.** Volumes: ``scale = (voxel_size,) * 3`` Å, voxel k at ``k *
  voxel_size``. Images: a fit-image snapshot is at training resolution (the original
  block-averaged by f = ``voxel_size``), so its layer gets ``scale = (f, f)`` and a translate
  of ``(f - 1)/2`` original pixels: training pixel j's centre lands on original pixel
  ``f*j + (f-1)/2``, the centre of the block it averages. Composed with the source layer's own
  scale and translate (:class:`DataGrid`), the results lie on the image they were fitted to. A
  display array block-averaged further (:mod:`.display_prep`) carries its own pixel and offset.
- **Side by side, not on top.** A spectrum sits right of its image, a backprojected map left of
  the scale layers, each by :data:`SPECTRUM_GAP` of the width in between
  (:func:`right_of`, :func:`left_of`).
"""

from __future__ import annotations

#: Gap between an image (or map) and its neighbour, as a fraction of its width.
SPECTRUM_GAP = 0.15


def right_of(translate, width: float) -> tuple[float, ...]:
    """``translate`` moved right (last axis) past an object ``width`` wide (world units), with
    the gap: where its neighbour (a spectrum) starts."""
    moved = [float(t) for t in translate]
    moved[-1] += (1.0 + SPECTRUM_GAP) * float(width)
    return tuple(moved)


def left_of(translate, width: float) -> tuple[float, ...]:
    """``translate`` moved left (last axis) by an object ``width`` wide plus the gap: where an
    object of that width goes left of the one at ``translate`` (a backprojected map)."""
    moved = [float(t) for t in translate]
    moved[-1] -= (1.0 + SPECTRUM_GAP) * float(width)
    return tuple(moved)


class DataGrid:
    """The grid results are placed on: a 2D source layer's ``scale`` and ``translate`` (world
    units per original pixel, world position of pixel 0), or pixels at 0 when unset."""

    def __init__(self):
        self.scale: tuple[float, ...] | None = None
        self.translate: tuple[float, ...] | None = None

    def set(self, scale=None, translate=None) -> None:
        """Place image results on a source layer's grid (its last two axes); None: pixels, at 0."""
        self.scale = None if scale is None else tuple(float(v) for v in scale)[-2:]
        self.translate = None if translate is None else tuple(float(v) for v in translate)[-2:]

    def world(self, arr, image: bool) -> tuple[tuple, tuple]:
        """(scale, translate) of a :class:`~.display_prep.DisplayArray`; ``image``: a 2D result
        placed on this grid (volumes and maps are in Å, never on it)."""
        nd = len(arr.spatial_shape)
        s0 = self.scale if image and nd == 2 and self.scale else (1.0,) * nd
        t0 = self.translate if image and nd == 2 and self.translate else (0.0,) * nd
        scale = tuple(arr.pixel * s for s in s0)
        translate = tuple(t + arr.offset * s for t, s in zip(t0, s0))
        return scale, translate

    def image_and_spectrum(self, display) -> tuple[tuple, tuple, tuple]:
        """(scale, translate, spectrum's translate) of a :class:`~.display_prep.SnapshotDisplay`:
        the image on the grid, its spectrum right of it."""
        scale, translate = self.world(display.image, image=True)
        return scale, translate, right_of(translate, display.image.spatial_shape[-1] * scale[-1])

    def backprojected_map(self, arr) -> tuple[tuple, tuple]:
        """(scale, translate) of a backprojected map: on the volume grid, left of the scales."""
        scale, translate = self.world(arr, image=False)
        return scale, left_of(translate, arr.spatial_shape[-1] * scale[-1])


__all__ = ["DataGrid", "SPECTRUM_GAP", "left_of", "right_of"]
