"""Reader and writer: MRC round trip keeps data and voxel size, bad files give clear errors,
.star stacks are read lazily, and napari uses the plugin for these files."""

from __future__ import annotations

import types

import mrcfile
import numpy as np
import pytest

from rmfn_napari import _reader, _writer
from rmfn_napari._reader import get_reader, read_mrc
from rmfn_napari._writer import write_mrc
from rmfn_napari.errors import InputError


def _blob(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape).astype(np.float32)


def _write_raw_mrc(path, data, voxel_size):
    with mrcfile.new(path, overwrite=True) as mrc:
        mrc.set_data(data)
        mrc.voxel_size = voxel_size
    return path


# ------------------------------------------------------------------------------ get_reader
@pytest.mark.parametrize("name", ["a.mrc", "a.MRCS", "a.map", "p.star"])
def test_get_reader_accepts(name):
    assert get_reader(name) is _reader.read_layers
    assert get_reader([name, "b.mrc"]) is _reader.read_layers


@pytest.mark.parametrize("name", ["a.tif", "a.png", "a", "a.mrc.gz"])
def test_get_reader_declines(name):
    assert get_reader(name) is None
    assert get_reader(["a.mrc", name]) is None


# ------------------------------------------------------------------------------ read / write
def test_read_volume_scale_and_metadata(tmp_path):
    vol = _blob((8, 10, 12))
    p = _write_raw_mrc(tmp_path / "vol.mrc", vol, 1.7)
    data, kwargs, kind = read_mrc(p)
    assert kind == "image"
    np.testing.assert_array_equal(np.asarray(data), vol)
    assert kwargs["scale"] == pytest.approx((1.7, 1.7, 1.7))
    assert kwargs["name"] == "vol"
    assert kwargs["metadata"]["voxel_size"] == pytest.approx(1.7)
    assert kwargs["metadata"]["path"] == str(p)
    assert kwargs["metadata"]["is_stack"] is False


def test_read_mrcs_is_stack(tmp_path):
    stack = _blob((5, 16, 16))
    p = _write_raw_mrc(tmp_path / "parts.mrcs", stack, 2.5)
    data, kwargs, _ = read_mrc(p)
    assert data.shape == (5, 16, 16)
    assert kwargs["scale"] == pytest.approx((1.0, 2.5, 2.5))
    assert kwargs["metadata"]["is_stack"] is True


def test_read_large_file_is_memmapped(tmp_path, monkeypatch):
    vol = _blob((4, 8, 8))
    p = _write_raw_mrc(tmp_path / "big.mrc", vol, 1.0)
    monkeypatch.setattr(_reader, "MMAP_THRESHOLD_BYTES", 16)
    data, _, _ = read_mrc(p)
    assert isinstance(data, np.memmap)
    np.testing.assert_array_equal(np.asarray(data), vol)


@pytest.mark.parametrize("src_dtype", [np.float32, np.int16, np.uint8, np.float16])
def test_round_trip_keeps_data_and_voxel_size(tmp_path, src_dtype):
    vol = (_blob((6, 7, 9)) * 10).astype(src_dtype)
    meta = {"scale": (1.2, 1.2, 1.2), "translate": (0.0, 0.0, 0.0)}
    (out,) = write_mrc(tmp_path / "rt.mrc", vol, meta)
    with mrcfile.open(out, permissive=False) as mrc:
        assert mrc.data.dtype == np.float32
        assert float(mrc.voxel_size.x) == pytest.approx(1.2, abs=1e-5)
    data, kwargs, _ = read_mrc(out)
    np.testing.assert_array_equal(np.asarray(data), vol.astype(np.float32))
    assert kwargs["scale"] == pytest.approx((1.2, 1.2, 1.2), abs=1e-5)
    assert kwargs["metadata"]["voxel_size"] == pytest.approx(1.2, abs=1e-5)


def test_round_trip_anisotropic_translate_and_2d(tmp_path):
    vol = _blob((4, 5, 6))
    (out,) = write_mrc(tmp_path / "aniso", vol, {"scale": (3.0, 2.0, 1.0),
                                                  "translate": (30.0, 20.0, 10.0)})
    assert out.endswith("aniso.mrc")
    _, kwargs, _ = read_mrc(out)
    assert kwargs["scale"] == pytest.approx((3.0, 2.0, 1.0))
    assert kwargs["translate"] == pytest.approx((30.0, 20.0, 10.0))
    img = _blob((5, 6))
    (out2,) = write_mrc(tmp_path / "img.map", img, {"scale": (0.5, 0.5)})
    data, kwargs, _ = read_mrc(out2)
    np.testing.assert_array_equal(np.asarray(data), img)
    assert kwargs["scale"] == pytest.approx((0.5, 0.5))


def test_writer_is_atomic_and_overwrites(tmp_path, monkeypatch):
    target = tmp_path / "v.mrc"
    write_mrc(target, _blob((4, 4, 4)), {"scale": (1.0,) * 3})
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(_writer.os, "replace", boom)
    with pytest.raises(InputError, match="v.mrc"):
        write_mrc(target, _blob((4, 4, 4), seed=1), {"scale": (1.0,) * 3})
    assert target.read_bytes() == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mrc"]  # no temp file left
    monkeypatch.undo()
    write_mrc(target, _blob((4, 4, 4), seed=1), {"scale": (2.0,) * 3})
    assert read_mrc(target)[1]["scale"] == pytest.approx((2.0,) * 3)


def test_writer_rejects_rgb_and_4d(tmp_path):
    with pytest.raises(InputError, match="RGB"):
        write_mrc(tmp_path / "x.mrc", np.zeros((4, 4, 3), np.uint8), {"rgb": True})
    with pytest.raises(InputError, match="2D or 3D"):
        write_mrc(tmp_path / "x.mrc", np.zeros((2, 2, 2, 2), np.float32), {})


# ------------------------------------------------------------------------------ bad files
def test_bad_files_raise_input_error_naming_the_file(tmp_path):
    missing = tmp_path / "missing.mrc"
    with pytest.raises(InputError, match="missing.mrc"):
        read_mrc(missing)
    junk = tmp_path / "junk.mrc"
    junk.write_bytes(b"not an mrc file at all" * 10)
    with pytest.raises(InputError, match="junk.mrc"):
        read_mrc(junk)
    good = _write_raw_mrc(tmp_path / "cut.mrc", _blob((8, 8, 8)), 1.0)
    cut = good.read_bytes()[:1024 + 100]
    good.write_bytes(cut)
    with pytest.raises(InputError, match="cut.mrc.*truncated|truncated.*"):
        read_mrc(good)
    with pytest.raises(InputError, match="missing.star"):
        _reader.read_layers(tmp_path / "missing.star")


# ------------------------------------------------------------------------------ .star stacks
class _FakeParticles:
    """Stand-in for rmfn_napari.cryoem.particles.read_particles' result (n, box, apix, images)."""

    def __init__(self, n=600, box=16, apix=3.0):
        self.n, self.box, self.apix = n, box, apix
        self.calls = []

    def images(self, indices):
        idx = np.asarray(indices)
        self.calls.append((int(idx.min()), int(idx.max()) + 1))
        return np.broadcast_to(idx[:, None, None], (len(idx), self.box, self.box)).astype(
            np.float32)


def test_star_stack_is_lazy(tmp_path, monkeypatch):
    fake = _FakeParticles()
    mod = types.ModuleType("rmfn_napari.cryoem.particles")
    mod.read_particles = lambda path: fake
    monkeypatch.setitem(__import__("sys").modules, "rmfn_napari.cryoem.particles", mod)
    import rmfn_napari.cryoem as cryoem

    monkeypatch.setattr(cryoem, "particles", mod, raising=False)
    star = tmp_path / "parts.star"
    star.write_text("data_particles\n")
    (layer,) = _reader.read_layers(str(star))
    data, kwargs, kind = layer
    assert kind == "image" and data.shape == (600, 16, 16) and data.dtype == np.float32
    assert kwargs["scale"] == (1.0, 3.0, 3.0)
    assert kwargs["metadata"] == {"voxel_size": 3.0, "path": str(star), "n_particles": 600,
                                  "box": 16, "is_stack": True}
    n_calls = len(fake.calls)  # only the contrast-limit sample so far
    assert fake.calls == [(0, 64)]
    assert float(data[300, 0, 0].compute()) == 300.0
    assert fake.calls[n_calls:] == [(256, 512)]  # one chunk read on demand


def test_star_errors_are_input_errors(tmp_path, monkeypatch):
    mod = types.ModuleType("rmfn_napari.cryoem.particles")

    def broken(path):
        raise KeyError("rlnImageName")

    mod.read_particles = broken
    monkeypatch.setitem(__import__("sys").modules, "rmfn_napari.cryoem.particles", mod)
    import rmfn_napari.cryoem as cryoem

    monkeypatch.setattr(cryoem, "particles", mod, raising=False)
    star = tmp_path / "bad.star"
    star.write_text("data_\n")
    with pytest.raises(InputError, match="bad.star.*rlnImageName"):
        _reader.read_layers(star)


def test_star_with_real_cryoem_io(tmp_path):
    """A RELION-style STAR + MRCS pair reads through the project's cryoem.particles, lazily."""
    pd = pytest.importorskip("pandas")
    import starfile

    stack = _blob((40, 16, 16))
    _write_raw_mrc(tmp_path / "stack.mrcs", stack, 2.2)
    order = np.arange(40)[::-1]  # STAR rows in reverse stack order
    starfile.write({"particles": pd.DataFrame(
        {"rlnImageName": [f"{i + 1:06d}@stack.mrcs" for i in order]})}, tmp_path / "p.star")
    (layer,) = _reader.read_layers(tmp_path / "p.star")
    data, kwargs, _ = layer
    assert data.shape == (40, 16, 16)
    assert kwargs["scale"] == pytest.approx((1.0, 2.2, 2.2), abs=1e-5)
    np.testing.assert_array_equal(np.asarray(data), stack[order])


# ------------------------------------------------------------------------------ via napari
def test_viewer_open_uses_plugin(make_napari_viewer, tmp_path):
    vol = np.zeros((16, 16, 16), np.float32)
    vol[4:12, 6:10, 5:11] = 1.0
    p = _write_raw_mrc(tmp_path / "box.mrc", vol, 1.5)
    viewer = make_napari_viewer()
    layers = viewer.open(p, plugin="rmfn-napari")
    assert len(layers) == 1
    layer = layers[0]
    assert layer.name == "box"
    np.testing.assert_allclose(layer.scale, (1.5, 1.5, 1.5))
    assert layer.metadata["voxel_size"] == pytest.approx(1.5)
    np.testing.assert_array_equal(np.asarray(layer.data), vol)

    out = tmp_path / "saved.mrc"
    written = viewer.layers.save(str(out), selected=False, plugin="rmfn-napari")
    assert written == [str(out)]
    data, kwargs, _ = read_mrc(out)
    np.testing.assert_array_equal(np.asarray(data), vol)
    assert kwargs["scale"] == pytest.approx((1.5, 1.5, 1.5))
