"""rMFN and baselines (pure torch; 2D and 3D; no I/O, no Qt).

>>> from rmfn_napari.model import ResidualMFN
>>> net = ResidualMFN(2, 64, 4, resolution=128)          # rMFN, the paper's init
>>> outs = net(grid_coords((128, 128)))                  # list: one (128, 128, 1) per scale
>>> net.band_limits                                      # cycles per unit, per scale
"""

from .filters import DIRECTIONS_2D, DIRECTIONS_3D, growth_factor, scale_band_limits
from .networks import METHODS, ResidualMFN, grid_axis, grid_coords

__all__ = [
    "DIRECTIONS_2D", "DIRECTIONS_3D", "METHODS", "ResidualMFN", "grid_axis", "grid_coords",
    "growth_factor", "scale_band_limits",
]
