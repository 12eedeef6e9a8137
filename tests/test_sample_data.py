"""Sample data: every entry of the manifest loads in napari with the right shape and scale,
the bundled files are where the package looks for them, and the 1OL5 map renders in 3D."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from npe2 import PluginManifest

from rmfn_napari import _sample_data
from rmfn_napari._sample_data import MAPS, load_map, sample_dir, sample_path

MANIFEST = Path(__file__).resolve().parent.parent / "napari.yaml"

# key -> (shape, scale) of the layer each sample gives
EXPECTED = {
    "1ol5_64": ((64, 64, 64), (1.0,) * 3),
    "4ake_64": ((64, 64, 64), (1.2,) * 3),
    "1ol5_32": ((32, 32, 32), (2.0,) * 3),
    "4ake_32": ((32, 32, 32), (2.4,) * 3),
    "astronaut": ((512, 512, 3), (1.0, 1.0)),
    "camera": ((512, 512), (1.0, 1.0)),
}


def _manifest_keys():
    return [s.key for s in PluginManifest.from_file(MANIFEST).contributions.sample_data]


def test_every_manifest_sample_is_tested():
    assert set(_manifest_keys()) == set(EXPECTED) | {"particles"}


def test_sample_files_present_and_licensed():
    assert (sample_dir() / "images" / "LICENSE.md").is_file()
    for key, (fname, _, apix) in MAPS.items():
        vol, got_apix = load_map(key)
        assert got_apix == pytest.approx(apix, abs=1e-4), key
        assert vol.dtype == np.float32 and vol.ndim == 3
        assert np.isfinite(vol).all() and vol.max() > 0, key
    with pytest.raises(Exception, match="nope.mrc"):
        sample_path("maps", "nope.mrc")


@pytest.mark.parametrize("key", sorted(EXPECTED))
def test_sample_loads_in_viewer(make_napari_viewer, key):
    shape, scale = EXPECTED[key]
    viewer = make_napari_viewer()
    layers = viewer.open_sample("rmfn-napari", key)
    assert len(layers) == 1
    layer = layers[0]
    assert layer.data.shape == shape
    np.testing.assert_allclose(layer.scale, scale, rtol=1e-5)
    if key in MAPS:
        assert layer.metadata["voxel_size"] == pytest.approx(scale[0], rel=1e-5)
        assert layer.name == MAPS[key][1]


def test_particle_sample_loads(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("RMFN_CACHE_DIR", str(tmp_path))
    viewer = make_napari_viewer()
    (layer,) = viewer.open_sample("rmfn-napari", "particles")
    n, box = _sample_data.PARTICLE_SAMPLE["n"], 32
    assert layer.data.shape == (n, box, box)
    apix = MAPS[_sample_data.PARTICLE_SAMPLE["map"]][2]
    np.testing.assert_allclose(layer.scale, (1.0, apix, apix), rtol=1e-5)
    assert np.isfinite(np.asarray(layer.data)).all()
    star = Path(layer.metadata["path"])
    assert star.suffix == ".star" and star.parent.parent == tmp_path
    assert Path(layer.metadata["reference"]).is_file()
    mtime = star.stat().st_mtime_ns
    (again,) = viewer.open_sample("rmfn-napari", "particles")  # reuses the cached stack
    assert star.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(np.asarray(again.data), np.asarray(layer.data))


def test_1ol5_renders_in_3d(make_napari_viewer, artifacts_dir):
    """Screenshot of the 1OL5 64³ sample in 3D (saved to test_artifacts/ for a person to see)."""
    import imageio.v3 as iio

    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1100, 760)
    (layer,) = viewer.open_sample("rmfn-napari", "1ol5_64")
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (20, 30, 140)
    viewer.reset_view()
    shot = viewer.screenshot(canvas_only=True, flash=False)
    iio.imwrite(artifacts_dir / "sample_1ol5_64_3d.png", shot)
    rgb = shot[..., :3].astype(float)
    lit = (rgb.max(axis=-1) > 40).mean()
    assert shot.ndim == 3 and shot.shape[0] > 100
    assert rgb.max() > 200, "3D render is black"
    assert 0.02 < lit < 0.9, f"{lit:.3f} of the canvas lit: nothing or everything drawn"
