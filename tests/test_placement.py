"""Where results lie in napari's world (rmfn_napari/_widgets/placement.py), against positions
computed by hand."""

import numpy as np
import pytest

from rmfn_napari._widgets.display_prep import DisplayArray, SnapshotDisplay
from rmfn_napari._widgets.placement import DataGrid, left_of, right_of


def test_a_training_pixel_lands_on_the_centre_of_the_block_it_averages():
    """Downsample 2 of a source layer drawn at 0.5 world units per pixel from (10, 20):
    training pixel j averages original pixels 2j and 2j+1, centre 2j + 0.5, so pixel 0 sits at
    world 10 + 0.5 * 0.5 and each training pixel is 2 * 0.5 = 1 world unit."""
    grid = DataGrid()
    grid.set(scale=(1.0, 0.5, 0.5), translate=(0.0, 10.0, 20.0))  # a 3-axis layer: its last two
    arr = DisplayArray(np.zeros((8, 8), np.float32), (0.0, 1.0), pixel=2.0, offset=0.5)
    scale, translate = grid.world(arr, image=True)
    assert scale == pytest.approx((1.0, 1.0)) and translate == pytest.approx((10.25, 20.25))


def test_volumes_are_in_angstrom_from_zero_and_ignore_an_image_grid():
    grid = DataGrid()
    grid.set(scale=(0.5, 0.5), translate=(10.0, 20.0))
    vol = DisplayArray(np.zeros((16, 16, 16), np.float32), (0.0, 1.0), pixel=4.0, offset=0.0)
    assert grid.world(vol, image=False) == ((4.0, 4.0, 4.0), (0.0, 0.0, 0.0))
    # a map: left of the scales by its width (16 voxels of 4 Å) and the gap (15 %)
    assert grid.backprojected_map(vol)[1] == pytest.approx((0.0, 0.0, -1.15 * 64.0))


def test_a_spectrum_sits_right_of_its_image():
    grid = DataGrid()
    image = DisplayArray(np.zeros((10, 20), np.float32), (0.0, 1.0), pixel=3.0, offset=1.0)
    display = SnapshotDisplay(image, image)
    scale, translate, spectrum = grid.image_and_spectrum(display)
    assert translate == (1.0, 1.0) and spectrum == pytest.approx((1.0, 1.0 + 1.15 * 20 * 3.0))
    assert right_of((0.0, 5.0), 10.0) == pytest.approx((0.0, 16.5))
    assert left_of((0.0, 5.0), 10.0) == pytest.approx((0.0, -6.5))
