"""Readers are bounded and never misread silently (issue 14).

* A hostile MRC header (huge extended header, huge/negative dimensions, bad mode or axis
  order) is refused by every reader — maps, particle stacks, napari — with one InputError line
  naming the file, before anything of the declared size is allocated.
* A map stored with a non-standard axis order (mapc/mapr/maps) comes back in ``[z, y, x]``
  order, the same from the engine's ``read_map`` and from napari's reader.
* A STAR ``rlnImageName`` without ``index@`` on a multi-image stack, or a non-numeric angle,
  defocus or origin, is one InputError line naming the STAR, the row and the column.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import textwrap
import tracemalloc
from itertools import permutations
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from rmfn_napari import _reader
from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem import io
from rmfn_napari.cryoem.io import read_map, read_mrc_header
from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.errors import InputError

# byte offsets of int32 header fields (MRC2014)
FIELD = {"nx": 0, "ny": 4, "nz": 8, "mode": 12, "mapc": 64, "mapr": 68, "maps": 72,
         "ispg": 88, "nsymbt": 92}


def _mrc(path, data, apix=1.5, stack=False, **fields):
    """Write ``data`` (as stored: [sections, rows, columns]) with mrcfile, then overwrite the
    given int32 header ``fields`` by hand (little-endian, as mrcfile writes on x86)."""
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = apix
        if stack:
            m.set_image_stack()
    if fields:
        with open(path, "r+b") as f:
            for name, value in fields.items():
                f.seek(FIELD[name])
                f.write(struct.pack("<i", value))
    return Path(path)


def _star(path, names, extra=None, apix="1.500000"):
    """A RELION 3.1 STAR written as text, so that a column can hold anything."""
    extra = extra or {}
    cols = ["rlnImageName", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst",
            "rlnOriginYAngst", "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnOpticsGroup"]
    rows = []
    for i, name in enumerate(names):
        row = {"rlnImageName": name, "rlnAngleRot": "10.0", "rlnAngleTilt": "20.0",
               "rlnAnglePsi": "30.0", "rlnOriginXAngst": "0.0", "rlnOriginYAngst": "0.0",
               "rlnDefocusU": "15000.0", "rlnDefocusV": "14000.0", "rlnDefocusAngle": "5.0",
               "rlnOpticsGroup": "1"}
        row.update(extra.get(i, {}))
        rows.append(" ".join(row[c] for c in cols))
    text = ("data_optics\n\nloop_\n_rlnOpticsGroup #1\n_rlnVoltage #2\n_rlnSphericalAberration #3\n"
            f"_rlnAmplitudeContrast #4\n_rlnImagePixelSize #5\n_rlnImageSize #6\n"
            f"1 300.0 2.7 0.1 {apix} 8\n\n"
            "data_particles\n\nloop_\n" + "".join(f"_{c} #{k + 1}\n" for k, c in enumerate(cols))
            + "\n".join(rows) + "\n")
    Path(path).write_text(text)
    return Path(path)


def _one_line(exc: BaseException, *needles: str) -> str:
    msg = str(exc)
    assert isinstance(exc, InputError), f"{type(exc).__name__}: {msg}"
    assert "\n" not in msg, msg
    for n in needles:
        assert n in msg, f"{n!r} not in {msg!r}"
    return msg


def _peak_bytes(fn):
    """Call ``fn`` (which must raise InputError) and return (exception, peak traced bytes)."""
    tracemalloc.start()
    try:
        with pytest.raises(InputError) as e:
            fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return e.value, peak


# ------------------------------------------------------------------ hostile headers
HOSTILE = {  # name: (header fields, words the message must hold)
    "huge_extended_header": ({"nsymbt": 2**31 - 1}, ("extended header", "2147483647")),
    "negative_extended_header": ({"nsymbt": -4096}, ("extended header", "-4096")),
    "huge_dimensions": ({"nx": 2**15, "ny": 2**15, "nz": 2**15}, ("truncated", "32768x32768x32768")),
    "negative_dimension": ({"nx": -32}, ("nx, ny, nz", "-32")),
    "zero_dimension": ({"nz": 0}, ("nx, ny, nz",)),
    "bad_mode": ({"mode": 99}, ("mode 99",)),
    "bad_axis_order": ({"mapc": 1, "mapr": 1, "maps": 3}, ("axis order", "(1, 1, 3)")),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A 132 KB MRC (32³ float32) per hostile header, as .mrc and .mrcs, plus a STAR each."""
    d = tmp_path_factory.mktemp("hostile")
    files = {}
    for name, (fields, _) in HOSTILE.items():
        data = np.zeros((32, 32, 32), np.float32)
        mrc = _mrc(d / f"{name}.mrc", data, **fields)
        mrcs = _mrc(d / f"{name}.mrcs", data, stack=True, **fields)
        files[name] = (mrc, mrcs, _star(d / f"{name}.star", [f"1@{mrcs.name}"]))
    assert files["huge_extended_header"][0].stat().st_size == 1024 + 32**3 * 4  # 132 KB
    good = _mrc(d / "good.mrcs", np.zeros((2, 8, 8)), stack=True)  # warm up: lazy imports are
    _reader.read_layers(_star(d / "good.star", [f"1@{good.name}"]))  # not traced in the tests
    return files


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_header_refused_in_one_line_without_allocating(hostile, name):
    mrc, mrcs, star = hostile[name]
    words = HOSTILE[name][1]
    for path, reader in ((mrc, read_map), (mrc, _reader.read_mrc), (mrcs, _reader.read_mrc),
                         (mrc, read_mrc_header), (star, read_particles), (star, _reader.read_layers)):
        exc, peak = _peak_bytes(lambda: reader(path))
        target = mrcs if path == star else path  # the STAR's problem is its stack's header
        _one_line(exc, target.name, *words)
        assert peak < 8 * 2**20, f"{reader.__name__}({path.name}) traced {peak / 2**20:.0f} MiB"


def test_refused_input_stays_under_300_mb_rss(hostile):
    """The issue's criterion, measured as the process's peak RSS above the import baseline."""
    paths = {k: [str(p) for p in v] for k, v in hostile.items()
             if k in ("huge_extended_header", "huge_dimensions", "negative_dimension")}
    script = textwrap.dedent(f"""
        import json, resource
        from rmfn_napari import _reader
        from rmfn_napari.cryoem.io import read_map
        from rmfn_napari.cryoem.particles import read_particles
        from rmfn_napari.errors import InputError
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        msgs = []
        for mrc, mrcs, star in {paths!r}.values():
            for fn, p in ((read_map, mrc), (_reader.read_mrc, mrc), (_reader.read_mrc, mrcs),
                          (read_particles, star)):
                try:
                    fn(p)
                    msgs.append("accepted " + p)
                except InputError as e:
                    msgs.append(str(e))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"delta_mb": (peak - base) / 1024, "msgs": msgs}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(res["msgs"]) == 12 and not any(m.startswith("accepted") for m in res["msgs"]), res
    assert res["delta_mb"] < 300, res


def test_cli_refuses_hostile_map_with_exit_status_2(hostile, tmp_path, capsys):
    mrc = hostile["huge_extended_header"][0]
    rc = cli_main(["simulate", "--map", str(mrc), "--n", "4", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and mrc.name in err and "extended header" in err, err
    assert not (tmp_path / "o" / "particles.star").exists()


def test_truncated_and_short_files(tmp_path):
    good = _mrc(tmp_path / "g.mrc", np.ones((8, 8, 8)))
    (tmp_path / "cut.mrc").write_bytes(good.read_bytes()[:-4])
    (tmp_path / "tiny.mrc").write_bytes(good.read_bytes()[:100])
    (tmp_path / "nomap.mrc").write_bytes(good.read_bytes()[:208] + b"XXXX" + good.read_bytes()[212:])
    for name, words in (("cut.mrc", ("truncated", "3072 bytes")), ("tiny.mrc", ("1024-byte header",)),
                        ("nomap.mrc", ("not an MRC file",))):
        for reader in (read_map, _reader.read_mrc):
            with pytest.raises(InputError) as e:
                reader(tmp_path / name)
            _one_line(e.value, name, *words)


# ------------------------------------------------------------------ axis order
ORDERS = list(permutations((1, 2, 3)))


def _stored(vol_zyx, order):
    """``vol`` ([z, y, x]) as a file with ``(mapc, mapr, maps) = order`` stores it."""
    c, r, s = order
    return np.ascontiguousarray(vol_zyx.transpose((3 - s, 3 - r, 3 - c)))  # axis of x is 2, z is 0


@pytest.mark.parametrize("order", ORDERS, ids=lambda o: "".join(map(str, o)))
def test_axis_order_engine_and_napari_agree(tmp_path, order):
    vol = np.zeros((8, 8, 8), np.float32)
    vol[1, 2, 5] = 2.0  # blob at x=5, y=2, z=1
    vol[6, 3, 0] = 1.0  # a second, weaker one at x=0, y=3, z=6
    p = _mrc(tmp_path / "perm.mrc", _stored(vol, order), mapc=order[0], mapr=order[1], maps=order[2])
    with mrcfile.open(p) as m:  # the file really is permuted, as mrcfile sees it
        assert (int(m.header.mapc), int(m.header.mapr), int(m.header.maps)) == order
    eng, apix = read_map(p)
    np.testing.assert_array_equal(eng, vol)
    data, kwargs, _ = _reader.read_mrc(p)
    np.testing.assert_array_equal(np.asarray(data), eng)
    assert kwargs["metadata"]["is_stack"] is False and apix == pytest.approx(1.5)


@pytest.mark.parametrize("order", [(3, 1, 2), (2, 1, 3)], ids=["312", "213"])
def test_axis_order_non_cubic_napari(tmp_path, order, monkeypatch):
    vol = np.zeros((4, 6, 10), np.float32)  # [z, y, x]
    vol[3, 1, 7] = 1.0
    p = _mrc(tmp_path / "nc.map", _stored(vol, order), mapc=order[0], mapr=order[1], maps=order[2])
    data, _, _ = _reader.read_mrc(p)
    np.testing.assert_array_equal(np.asarray(data), vol)
    monkeypatch.setattr(_reader, "MMAP_THRESHOLD_BYTES", 16)  # the memory-mapped path too
    data, _, _ = _reader.read_mrc(p)
    assert isinstance(data, np.memmap)
    np.testing.assert_array_equal(np.asarray(data), vol)


def test_napari_reader_reads_through_engine_functions(tmp_path, monkeypatch):
    calls = []
    real = io.read_mrc_data
    monkeypatch.setattr(io, "read_mrc_data", lambda *a, **k: calls.append(a[0].path) or real(*a, **k))
    p = _mrc(tmp_path / "v.mrc", np.ones((8, 8, 8)))
    read_map(p)
    _reader.read_mrc(p)
    assert calls == [p, p]


def test_big_endian_map(tmp_path):
    vol = np.arange(8 * 8 * 8, dtype=np.float32).reshape(8, 8, 8)
    p = tmp_path / "be.mrc"
    with mrcfile.new(p) as m:
        m.set_data(vol.astype(">f4"))
        m.voxel_size = 2.0
    assert read_mrc_header(p).dtype.byteorder == ">"
    got, apix = read_map(p)
    np.testing.assert_array_equal(got, vol)
    assert apix == pytest.approx(2.0) and got.dtype == np.float32 and got.dtype.isnative
    np.testing.assert_array_equal(np.asarray(_reader.read_mrc(p)[0]), vol)


def test_stack_axis_order(tmp_path):
    imgs = np.arange(3 * 8 * 8, dtype=np.float32).reshape(3, 8, 8)
    _mrc(tmp_path / "t.mrcs", imgs.transpose(0, 2, 1), stack=True, mapc=2, mapr=1, maps=3)
    ds = read_particles(_star(tmp_path / "t.star", ["1@t.mrcs", "3@t.mrcs"]))
    np.testing.assert_array_equal(ds.images(), imgs[[0, 2]])
    np.testing.assert_array_equal(np.asarray(_reader.read_mrc(tmp_path / "t.mrcs")[0]), imgs)
    _mrc(tmp_path / "x.mrcs", imgs, stack=True, mapc=3, mapr=2, maps=1)
    with pytest.raises(InputError) as e:
        read_particles(_star(tmp_path / "x.star", ["1@x.mrcs"]))
    _one_line(e.value, "x.mrcs", "maps = 3")


# ------------------------------------------------------------------ STAR image names
@pytest.fixture()
def stack128(tmp_path):
    imgs = np.broadcast_to(np.arange(128, dtype=np.float32)[:, None, None], (128, 8, 8))
    return _mrc(tmp_path / "stack.mrcs", imgs, stack=True)


def test_image_name_without_index_on_a_stack_is_refused(stack128, tmp_path):
    star = _star(tmp_path / "bare.star", ["stack.mrcs"] * 128)
    for reader in (read_particles, _reader.read_layers):
        with pytest.raises(InputError) as e:
            reader(star)
        _one_line(e.value, "bare.star", "row 1", "stack.mrcs", "128 images", "index@")
    # with indices, every row reads its own image (the data can tell a misread)
    ds = read_particles(_star(tmp_path / "ok.star", [f"{i + 1:06d}@stack.mrcs" for i in range(128)]))
    np.testing.assert_array_equal(ds.images()[:, 0, 0], np.arange(128))
    # one bare row among indexed ones is named
    names = [f"{i + 1}@stack.mrcs" for i in range(128)]
    names[41] = "stack.mrcs"
    with pytest.raises(InputError) as e:
        read_particles(_star(tmp_path / "one.star", names))
    _one_line(e.value, "one.star", "row 42")
    with pytest.raises(InputError) as e:
        read_particles(_star(tmp_path / "junk.star", ["x@stack.mrcs"]))
    _one_line(e.value, "junk.star", "row 1", "'x@stack.mrcs'")


def test_image_name_without_index_on_single_image_files(tmp_path):
    a = np.full((8, 8), 3.0, np.float32)
    _mrc(tmp_path / "img2d.mrc", a)  # a 2D image
    _mrc(tmp_path / "img1.mrcs", a[None] + 1, stack=True)  # a stack of one
    _mrc(tmp_path / "sec1.mrc", a[None] + 2)  # one section, volume space group
    ds = read_particles(_star(tmp_path / "s.star", ["img2d.mrc", "img1.mrcs", "sec1.mrc", "1@img1.mrcs"]))
    np.testing.assert_array_equal(ds.images()[:, 0, 0], [3, 4, 5, 4])


# ------------------------------------------------------------------ STAR numbers
@pytest.mark.parametrize("column", ["rlnAngleRot", "rlnAngleTilt", "rlnDefocusU", "rlnDefocusAngle",
                                    "rlnOriginXAngst", "rlnOriginYAngst"])
@pytest.mark.parametrize("value,words", [("abc", "not a number"), ("inf", "not finite"),
                                         ("nan", "not finite")])
def test_non_numeric_star_column(tmp_path, column, value, words):
    _mrc(tmp_path / "s.mrcs", np.zeros((4, 8, 8)), stack=True)
    star = _star(tmp_path / "bad.star", [f"{i}@s.mrcs" for i in (1, 2, 3, 4)], extra={2: {column: value}})
    for reader in (read_particles, _reader.read_layers):
        with pytest.raises(InputError) as e:
            reader(star)
        _one_line(e.value, "bad.star", column, "row 3", words)


def test_non_numeric_pixel_size(tmp_path):
    _mrc(tmp_path / "s.mrcs", np.zeros((4, 8, 8)), stack=True)
    with pytest.raises(InputError) as e:
        read_particles(_star(tmp_path / "px.star", ["1@s.mrcs"], apix="1.5A"))
    _one_line(e.value, "px.star", "rlnImagePixelSize", "data_optics", "row 1", "'1.5A'")


def test_cli_non_numeric_star_exit_status_2(tmp_path, capsys):
    _mrc(tmp_path / "s.mrcs", np.zeros((4, 8, 8)), stack=True)
    star = _star(tmp_path / "bad.star", ["1@s.mrcs", "2@s.mrcs"], extra={1: {"rlnDefocusU": "15k"}})
    rc = cli_main(["reconstruct", str(star), "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "bad.star" in err and "rlnDefocusU" in err and "row 2" in err, err
