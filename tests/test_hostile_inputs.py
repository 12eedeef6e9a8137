"""Hostile inputs and faults of issue 28, one test per class: each gives one line naming the
file or setting and the problem, exit status 2 (the CLI's InputError), no traceback, nothing
half-written and nothing lost.

* A disk filling while ``reconstruct`` writes its checkpoint (``torch.save`` raises a
  RuntimeError without an errno) or its stage-end maps (``OSError`` ENOSPC): handled once, in
  :func:`rmfn_napari.engine.atomic.atomic_path`, for every writer.
* Impossible origins (the particle's centre outside its box, ``|origin| >= box/2`` px): a STAR
  where more than 1 % of the particles have them is refused naming the STAR; fewer are left out
  with a warning in the run's log (``cryoem/particles.py``).
* A huge image for ``fit-image``: the PSNR on the original grid is rendered in blocks of
  bounded size (an 8000² image at width 64 held 16 GiB per scale when rendered whole), and
  an image that cannot be read and held is refused from its header.
* The napari writer (``_writer.write_mrc``) refuses, as one InputError naming the file and
  writing nothing: a path under a file or that is a folder, NaN/Inf data, a voxel size that is
  not > 0, data that are not real numbers.
* Messages that blamed the wrong thing (``--snr inf``, ``--box 100000000``, ``--layers 0``, a
  folder given as a file, pixels of 1e37, a --true-poses STAR naming another stack, a 2³ map,
  ``--nproc`` beyond the particles, an unreadable, constant or complex image, a STAR row that
  lost a field) name the real problem; a 1-particle STAR is refused and duplicated
  rows are warned about with a count; a new ``reconstruct`` into a folder holding an earlier
  run's results is refused without ``--overwrite``.
* A checkpoint holding NaN or Inf is refused by ``--resume`` naming the file and the tensor
  (it was resumed, and its first batch blamed on the learning rate).
* A ``--lr-pose`` above 1 rad per step is refused (rc 0 with a map of thrown poses before); the
  rule's premise, one Adam pose step turns a particle by sqrt(3) ``lr_pose`` rad, is checked.
* A refusal inside the ranks of ``--nproc`` is said once (it was said once per rank, followed
  by "the last checkpoint … is kept" where none existed), and no empty folder is left.
"""

from __future__ import annotations

import errno
import os
import types
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest
import starfile
import torch

from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem.particles import read_particles
from rmfn_napari.cryoem.reconstruct.outputs import load_checkpoint
from rmfn_napari.cryoem.simulate import simulate_particles
from rmfn_napari.engine import atomic
from rmfn_napari.errors import DiskFullError, InputError

from analytic_maps import write_sample_map_16

Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """120 noisy CTF particles of a 16^3 map (with their true origins: up to 2 px)."""
    root = tmp_path_factory.mktemp("hostile")
    map_path = write_sample_map_16(root / "map16.mrc")
    return simulate_particles(map_path, root / "sim", n=120, snr=0.5, seed=3, max_shift=2.0)


def _tiny(star, out, *extra) -> list[str]:
    return ["reconstruct", str(star), "--out", str(out), "--preset", "tiny", "--epochs", "2,1,1",
            "--batch", "40", "--device", "cpu", "--seed", "4", "--pose-init", "random", "--threads", "1",
            "--no-align", "--quiet", *extra]


def _one_line(err: str) -> str:
    """The one error line of a failed command (the run's warnings may come before it)."""
    lines = [ln for ln in err.strip().splitlines() if ": error: " in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


# ------------------------------------------------------------------ a disk filling mid-run
@pytest.mark.parametrize("what", ["checkpoint", "stage-end map"])
def test_disk_full_while_reconstruct_writes_is_one_line_and_keeps_the_earlier_files(
        what, sim, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    kept = {}
    if what == "checkpoint":
        real_save = torch.save
        calls = []

        def save(obj, f, *a, **k):  # the 2nd checkpoint finds the disk full, as torch says it
            calls.append(1)
            if len(calls) == 2:
                kept["checkpoint.pt"] = (out / "checkpoint.pt").read_bytes()
                Path(f).write_bytes(b"PK\x03\x04 half a zip")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")
            return real_save(obj, f, *a, **k)
        monkeypatch.setattr(torch, "save", save)
        name = "checkpoint.pt"
    else:
        import mrcfile
        real_new = mrcfile.new
        calls = []

        def new(name, *a, **k):  # the 2nd stage's first map finds the disk full
            calls.append(1)
            if len(calls) == 5:  # stage 1 wrote half_map_1, half_map_2, map, mask_auto
                kept["half_map_1.mrc"] = (out / "half_map_1.mrc").read_bytes()
                Path(name).write_bytes(b"half a map")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_new(name, *a, **k)
        monkeypatch.setattr(mrcfile, "new", new)
        name = "half_map_1.mrc"
    # the disk is full at that point: no room, whatever this machine has
    monkeypatch.setattr(atomic, "shutil", types.SimpleNamespace(disk_usage=lambda p: Usage(10**9, 10**9, 0)))
    rc = cli_main(_tiny(sim.star, out))
    err = capsys.readouterr().err
    assert rc == 2, err
    line = _one_line(err)
    assert str(out / name) in line and "disk full (0 bytes free)" in line, line
    assert kept and all((out / n).read_bytes() == b for n, b in kept.items())  # untouched
    assert load_checkpoint(out / "checkpoint.pt")["state"]["step"] > 0  # the earlier one loads
    assert _temps(out) == [] and not (out / ".rmfn.lock").exists()


def test_atomic_write_failures_for_want_of_room_are_one_line_oserrors_too(tmp_path, monkeypatch):
    """Callers that catch a failed write as OSError (the widgets' Save…) keep working; anything
    else (a bug, another OSError) passes through unchanged."""
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    for exc in (OSError(errno.ENOSPC, "No space left on device"), OSError(errno.EDQUOT, "Disk quota exceeded"),
                RuntimeError("PytorchStreamWriter failed writing file data/0: file write failed")):
        with pytest.raises(DiskFullError) as info:
            with atomic.atomic_path(target) as tmp:
                Path(tmp).write_bytes(b"new, half")
                raise exc
        assert isinstance(info.value, OSError) and isinstance(info.value, InputError)
        assert info.value.errno in atomic.NO_ROOM_ERRNOS
        assert str(info.value).startswith(f"{target}: ") and "free" in str(info.value)
        assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["a.bin"]
    for exc in (OSError(errno.EACCES, "Permission denied"), RuntimeError("a bug"), ValueError("bad")):
        with pytest.raises(type(exc)) as info:
            with atomic.atomic_path(target) as tmp:
                raise exc
        assert info.value is exc
    assert np.frombuffer(target.read_bytes(), np.uint8).size == 3


# ----------------------------------------------------------------------- impossible origins
def _with_origins(src: Path, name: str, rows, x, y=None, pre31: bool = False) -> Path:
    """A copy of the STAR ``src`` (beside it: the stack's path is relative) with other origins."""
    dst = Path(src).parent / name
    blocks = starfile.read(src, always_dict=True)
    p = blocks["particles"]
    p.loc[rows, "rlnOriginXAngst"] = x
    if y is not None:
        p.loc[rows, "rlnOriginYAngst"] = y
    if pre31:  # RELION 3.0 names: origins in px
        apix = float(blocks["optics"]["rlnImagePixelSize"].iloc[0])
        p["rlnOriginX"] = p.pop("rlnOriginXAngst") / apix
        p["rlnOriginY"] = p.pop("rlnOriginYAngst") / apix
    starfile.write(blocks, dst, overwrite=True)
    return dst


@pytest.mark.parametrize("case", ["all at +-1e30", "all just past the edge (px, RELION 3.0)", "2 of 120"])
def test_impossible_origins_on_many_particles_are_refused_naming_the_star(case, sim, tmp_path, capsys):
    rows = slice(None) if case.startswith("all") else [3, 50]
    x, y = {"all at +-1e30": (1e30, -1e30), "2 of 120": (1e9, None)}.get(case, (8 * 4.0, None))
    star = _with_origins(sim.true_poses, f"{tmp_path.name}.star", rows, x, y, pre31="RELION 3.0" in case)
    out = tmp_path / "run"
    rc = cli_main(_tiny(star, out))
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith(f"rmfn reconstruct: error: {star}: impossible origins"), line
    n_bad = 120 if case.startswith("all") else 2
    assert f"{n_bad} of 120 particles" in line and "16 px box" in line, line
    assert not out.exists()  # refused before anything is written


def test_a_few_impossible_origins_are_left_out_with_a_count_in_the_log(sim, tmp_path, capsys):
    star = _with_origins(sim.true_poses, "one.star", [7], 1e9)
    ds = read_particles(star)
    good = read_particles(sim.true_poses)
    assert ds.n == 119 and len(ds.notes) == 1 and "left out 1 of 120 particles" in ds.notes[0]
    assert ds.image_names == good.image_names[:7] + good.image_names[8:]  # the others, in order
    np.testing.assert_array_equal(ds.shifts_A, np.delete(good.shifts_A, 7, axis=0))
    np.testing.assert_array_equal(ds.images([7]), good.images([8]))  # the rows and their images agree
    assert read_particles(sim.true_poses).notes == []  # a normal STAR: nothing left out, no note
    out = tmp_path / "run"
    assert cli_main(_tiny(star, out)) == 0
    err = capsys.readouterr().err
    assert f"{star}: warning: left out 1 of 120 particles" in err  # shown even with --quiet
    log = (out / "run.log").read_text()
    assert "left out 1 of 120 particles" in log and "119 particles" in log


# ------------------------------------------------------------------------------ huge images
def test_fit_image_psnr_on_the_original_grid_is_rendered_in_bounded_blocks(monkeypatch):
    from rmfn_napari.fitting import FitImageConfig, fit_image
    from rmfn_napari.fitting import image_fitting
    from rmfn_napari.fitting.image_fitting import run_to_completion
    from rmfn_napari.fitting.metrics import psnr
    from rmfn_napari.model.networks import ResidualMFN

    rng = np.random.default_rng(1)
    image = (rng.random((96, 80)) * 255).astype(np.uint8)
    cfg = FitImageConfig.from_preset("cpu", schedule=(2, 2), hidden=16, downsample=4, device="cpu")
    monkeypatch.setattr(image_fitting, "EVAL_BLOCK_VALUES", 80 * 16 * 3 * 7)  # at most 7 rows a block
    seen, nets = [], []
    real = ResidualMFN.render_axes

    def render_axes(self, axes, max_scale=None):
        seen.append(int(axes[0].shape[0]) * int(axes[1].shape[0]))
        nets.append(self)
        return real(self, axes, max_scale)
    monkeypatch.setattr(ResidualMFN, "render_axes", render_axes)
    end = run_to_completion(fit_image(image, cfg))
    assert max(seen) <= 7 * 80 and sum(seen) == 2 * 96 * 80  # both stages, the whole grid, in blocks
    # the same PSNR as the whole image rendered at once (the last stage)
    axes = [image_fitting._axis_for_upsampled(24, 4, "cpu"), image_fitting._axis_for_upsampled(20, 4, "cpu")]
    with torch.no_grad():
        whole = real(nets[-1], axes, max_scale=1)[-1][..., 0].numpy()
    expected = psnr(np.clip(whole, 0, 1), image.astype(np.float32) / np.float32(255))
    assert end.metrics["psnr_db"] == pytest.approx(expected, abs=1e-9)


def test_an_image_too_big_to_hold_is_refused_from_its_header(monkeypatch):
    from rmfn_napari.fitting import FitImageConfig
    from rmfn_napari.fitting.image_fitting import check_training_memory

    cfg = FitImageConfig.from_preset("cpu", downsample=64, device="cpu")  # a small training grid
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    side = int(np.sqrt(ram / 3 / 12 * 1.2)) // 64 * 64  # 12 bytes a value: over 80 % of the RAM
    with pytest.raises(InputError, match=rf"^big.png: the image of {side}x{side} .* downsample it first"):
        check_training_memory((side, side, 3), cfg, "big.png")
    check_training_memory((side // 2, side // 2, 3), cfg, "big.png")  # a quarter of it: accepted


# ---------------------------------------------------------------------------- napari writer
@pytest.mark.parametrize("case, expected", [
    ("under a file", "is a file, not a folder"),
    ("deep under a file", "is a file, not a folder"),
    ("a folder", "is a folder"),
    ("a folder named .mrc", "is a folder"),
    ("NaN voxels", "1 NaN/Inf values"),
    ("Inf voxels", "1 NaN/Inf values"),
    ("voxel size 0", "voxel size must be > 0"),
    ("voxel size -2", "voxel size must be > 0"),
    ("voxel size NaN", "voxel size must be > 0"),
    ("strings", "not numbers"),
    ("complex", "complex"),
])
def test_napari_writer_refuses_bad_destinations_and_data_writing_nothing(case, expected, tmp_path):
    from rmfn_napari._writer import write_mrc

    (tmp_path / "notes.txt").write_text("a file")
    (tmp_path / "folder.mrc").mkdir()
    data, meta, path = np.ones((4, 4, 4), np.float32), {"scale": (1.5,) * 3}, tmp_path / "map.mrc"
    if case == "under a file":
        path = tmp_path / "notes.txt" / "map.mrc"
    elif case == "deep under a file":
        path = tmp_path / "notes.txt" / "sub" / "map.mrc"
    elif case == "a folder":
        path = tmp_path
    elif case == "a folder named .mrc":
        path = tmp_path / "folder.mrc"
    elif case.endswith("voxels"):
        data[1, 2, 3] = np.nan if case.startswith("NaN") else -np.inf
    elif case.startswith("voxel size"):
        meta["scale"] = (float(case.split()[-1]),) * 3
    elif case == "strings":
        data = np.array([["a", "b"], ["c", "d"]])
    elif case == "complex":
        data = data + 1j
    before = sorted(p.name for p in tmp_path.rglob("*"))
    with pytest.raises(InputError) as info:
        write_mrc(path, data, meta)
    assert str(info.value).startswith(f"{path}: ") and expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, no temp
    (ok,) = write_mrc(tmp_path / "ok.mrc", np.ones((4, 4, 4), np.float32), {"scale": (1.5,) * 3})
    assert Path(ok).is_file()


# ------------------------------------------------------------- messages that named the wrong thing
@pytest.mark.parametrize("case, expected, wrong", [
    ("--snr inf", "--snr must be a finite number > 0", None),
    ("--box 100000000", "--box 100000000 is larger than the particles' 16 px box", "free space"),
    ("--layers 0", "--layers must be an integer >= 1, got 0", "epochs_per_stage"),
    ("folder as the STAR", "is a folder, not a STAR file", "not found"),
    ("folder as the .mrcs", "is a folder, not an MRC file", "not found"),
    ("folder as the image", "is a folder, not an image file", "no such file"),
    ("pixels of 1e37", "pixel values are too large to use (up to", "constant"),
    ("--true-poses naming another stack", "--true-poses ", None),
    ("a 2^3 map to simulate", "the map is 2 px a side: too small", None),
    ("--nproc 3 for 2 particles", "--nproc 3 is more processes than the 2 particles", None),
    ("a row that lost a field", "row 120 of data_particles has 12 of 13 fields (rlnRandomSubset missing", None),
    ("a row that lost its last numeric fields", "row 120 of data_particles has 5 of 7 fields (rlnCtfBfactor, "
     "rlnOpticsGroup missing", "np.float64"),
    ("text renamed .png", "not a PNG, TIFF or JPEG image", "pip install"),
    ("constant image", ": image is constant", None),
    ("complex TIFF", ": image is complex", None),
])
def test_messages_name_the_real_problem(case, expected, wrong, sim, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    if case == "--snr inf":
        argv = ["simulate", "--map", str(Path(sim.star).parent / "reference.mrc"), "--n", "4", "--snr", "inf",
                "--out", str(out)]
    elif case == "folder as the image":
        (tmp_path / "photo.png").mkdir()
        argv = ["fit-image", str(tmp_path / "photo.png"), "--out", str(out)]
    elif case == "folder as the STAR":
        (tmp_path / "p.star").mkdir()
        argv = _tiny(tmp_path / "p.star", out)
    elif case == "folder as the .mrcs":
        blocks = starfile.read(sim.star, always_dict=True)
        (tmp_path / "stack.mrcs").mkdir()
        blocks["particles"]["rlnImageName"] = [f"{i + 1:06d}@stack.mrcs" for i in range(len(blocks["particles"]))]
        starfile.write(blocks, tmp_path / "p.star")
        argv = _tiny(tmp_path / "p.star", out)
    elif case == "pixels of 1e37":
        import mrcfile
        with mrcfile.open(Path(sim.star).parent / "particles.mrcs") as m:
            data, voxel = m.data * np.float32(1e37), m.voxel_size
        with mrcfile.new(tmp_path / "particles.mrcs") as m, np.errstate(over="ignore", invalid="ignore"):
            m.set_data(data.astype(np.float32))  # (its header statistics overflow)
            m.voxel_size = voxel
        (tmp_path / "p.star").write_bytes(Path(sim.star).read_bytes())
        argv = _tiny(tmp_path / "p.star", out)
    elif case == "--true-poses naming another stack":
        blocks = starfile.read(sim.true_poses, always_dict=True)
        blocks["particles"]["rlnImageName"] = blocks["particles"]["rlnImageName"].str.replace("particles", "other")
        starfile.write(blocks, tmp_path / "truth.star")
        argv = _tiny(sim.star, out, "--true-poses", str(tmp_path / "truth.star"))
        expected = f"--true-poses {tmp_path / 'truth.star'}: {tmp_path / 'other.mrcs'}: file not found"
    elif case == "a row that lost a field":  # its half-set: would have meant a random split
        lines = Path(sim.true_poses).read_text().rstrip("\n").split("\n")
        lines[-1] = lines[-1].rsplit(None, 1)[0]
        star = Path(sim.true_poses).parent / "lost_a_field.star"
        star.write_text("\n".join(lines) + "\n")
        argv = _tiny(star, out)
    elif case == "a row that lost its last numeric fields":  # (read as NaN: not to be called 'not finite')
        lines = Path(sim.star).read_text().rstrip("\n").split("\n")
        lines[-1] = lines[-1].rsplit(None, 2)[0]
        star = tmp_path / "lost_two_fields.star"
        star.write_text("\n".join(lines) + "\n")
        (tmp_path / "particles.mrcs").symlink_to(Path(sim.star).parent / "particles.mrcs")
        argv = _tiny(star, out)
    elif case == "a 2^3 map to simulate":
        import mrcfile
        with mrcfile.new(tmp_path / "map2.mrc") as m:
            m.set_data(np.ones((2, 2, 2), np.float32))
            m.voxel_size = 1.0
        argv = ["simulate", "--map", str(tmp_path / "map2.mrc"), "--n", "4", "--out", str(out)]
    elif case == "--nproc 3 for 2 particles":
        blocks = starfile.read(sim.star, always_dict=True)
        starfile.write({**blocks, "particles": blocks["particles"].iloc[:2]}, Path(sim.star).parent / "two.star",
                       overwrite=True)
        argv = _tiny(Path(sim.star).parent / "two.star", out, "--nproc", "3", "--batch", "4")
    elif case in ("text renamed .png", "constant image", "complex TIFF"):
        import tifffile
        image = tmp_path / ("image.tif" if case == "complex TIFF" else "image.png")
        if case == "text renamed .png":
            image.write_text("not an image at all\n")
        elif case == "constant image":
            import imageio.v3 as iio
            iio.imwrite(image, np.full((32, 32), 7, np.uint8))
        else:
            tifffile.imwrite(image, np.ones((32, 32), np.complex64) * (1 + 2j))
        argv = ["fit-image", str(image), "--schedule", "1,1", "--out", str(out)]
        expected = f"{image}{expected}" if expected.startswith(":") else expected
    else:
        if case.startswith("--box"):  # the estimate for a 1e8 box is ~1e25 bytes: more than any disk
            monkeypatch.setattr("shutil.disk_usage", lambda p: Usage(10**12, 0, 10**12))
        argv = _tiny(sim.star, out, *case.split())
    rc = cli_main(argv)
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and expected in line, line
    assert wrong is None or wrong not in line, line
    assert not out.exists()


# ------------------------------------------------------------------- STARs a run cannot use well
def test_one_particle_is_refused_and_duplicated_rows_are_counted(sim, tmp_path, capsys):
    blocks = starfile.read(sim.star, always_dict=True)
    parts = blocks["particles"]
    one = Path(sim.star).parent / "one_particle.star"
    starfile.write({**blocks, "particles": parts.iloc[:1]}, one, overwrite=True)
    rc = cli_main(_tiny(one, tmp_path / "one"))
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and f"{one}: 1 particle: a reconstruction needs at least 2" in line, line

    import pandas as pd
    dup = Path(sim.star).parent / "duplicated.star"
    starfile.write({**blocks, "particles": pd.concat([parts, parts.iloc[10:30]], ignore_index=True)}, dup,
                   overwrite=True)
    ds = read_particles(dup)
    assert ds.n == 140 and len(ds.notes) == 1, ds.notes
    assert "20 row(s) repeat an image of an earlier row (rows 11 and 121" in ds.notes[0]
    assert read_particles(sim.star).notes == []
    out = tmp_path / "dup"
    assert cli_main(_tiny(dup, out)) == 0
    assert "20 row(s) repeat an image" in capsys.readouterr().err
    assert "20 row(s) repeat an image" in (out / "run.log").read_text()


# ------------------------------------------------------------------ a new run over an earlier one
def test_new_reconstruct_into_an_earlier_runs_folder_needs_overwrite(sim, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli_main(_tiny(sim.star, out)) == 0
    capsys.readouterr()
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    rc = cli_main(_tiny(sim.star, out, "--seed", "5"))
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and line.startswith(f"rmfn reconstruct: error: {out}: output exists: checkpoint.pt"), line
    assert "--overwrite" in line and "--resume" in line
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    assert cli_main(_tiny(sim.star, out, "--seed", "5", "--overwrite")) == 0  # replaced when asked
    replaced = (out / "map.mrc").read_bytes()
    assert replaced != before["map.mrc"]
    assert cli_main(_tiny(sim.star, out, "--seed", "5", "--resume")) == 0  # a resume is no new run
    assert (out / "map.mrc").read_bytes() == replaced  # (a finished run: nothing to do)


# ------------------------------------------------------------------ a damaged checkpoint on --resume
@pytest.fixture(scope="module")
def finished_run(sim, tmp_path_factory):
    """A finished tiny run (its checkpoint: the networks, Adam states, rotations, offsets)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    assert cli_main(_tiny(sim.star, out)) == 0
    return out


@pytest.mark.parametrize("poison", ["net", "opt", "rotations", "shifts_px"])
def test_a_checkpoint_holding_nan_is_refused_on_resume_naming_the_file(poison, sim, finished_run, tmp_path,
                                                                       capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    ckpt = out / "checkpoint.pt"
    payload = load_checkpoint(ckpt)
    if poison == "net":
        name = next(k for k, v in payload["net"].items() if v.numel() > 1)
        payload["net"][name].view(-1)[1] = float("nan")
        where = f"net.{name}"
    elif poison == "opt":
        key, state = next(iter(payload["opt"]["state"].items()))
        state["exp_avg_sq"].view(-1)[0] = float("inf")
        where = f"opt.state.{key}.exp_avg_sq"
    else:
        payload[poison][5, 1] = float("nan")
        where = poison
    torch.save(payload, ckpt)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    rc = cli_main(_tiny(sim.star, out, "--epochs", "2,1,2", "--resume"))  # one more epoch to train
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and f"{ckpt}: --resume: the checkpoint holds non-finite values (NaN or Inf) in {where}" in line, line
    assert "learning rate" not in line and "--lr" not in line, line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing touched, nothing added


# ------------------------------------------------------------------ a pose learning rate that throws poses
def test_lr_pose_above_one_radian_per_step_is_refused_and_the_rule_holds(sim, tmp_path, capsys):
    from rmfn_napari.cryoem.reconstruct import ReconstructConfig
    from rmfn_napari.cryoem.reconstruct.forward import ForwardModel, stage_sigma
    from rmfn_napari.cryoem.reconstruct.poses import pose_steps
    from rmfn_napari.cryoem.reconstruct.settings import LR_POSE_MAX
    from rmfn_napari.cryoem.reconstruct.settings_spec import RECONSTRUCT_SETTINGS
    from rmfn_napari.cryoem.rotations import random_rotations
    from rmfn_napari.model import ResidualMFN

    # the premise: one Adam step turns each pose by sqrt(3) lr (each axis-angle component by lr),
    # and no later step by more; the angle read from the trace of R_new R_old^T
    box, lr = 16, 0.2
    net = ResidualMFN(3, 32, 3, resolution=box, head_activation="relu", seed=2)
    fwd = ForwardModel(box, 1.0, 1, net.band_limits[1], stage_sigma(1, 3, box, (0.3, 2.0)), pad=2)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        vol_ft = fwd.volume_ft(net)
        obs = fwd.slices(vol_ft, random_rotations(16, generator=gen).float())
    R0 = random_rotations(16, generator=gen).float()

    def turned(steps):
        R1, _, _ = pose_steps(vol_ft, fwd, obs, torch.ones(obs.shape), R0, steps=steps, lr=lr)
        tr = torch.einsum("nij,nij->n", R1, R0.double())
        return torch.arccos(((tr - 1) / 2).clamp(-1, 1)).numpy()

    np.testing.assert_allclose(turned(1), np.sqrt(3) * lr, rtol=1e-4)
    assert np.all(turned(4) <= 4 * np.sqrt(3) * lr * (1 + 1e-4))

    # the rule: the CLI, the API and the widget's field stop at the same 1 rad per step
    assert LR_POSE_MAX == 1.0
    assert next(s for s in RECONSTRUCT_SETTINGS if s.name == "lr_pose").maximum == LR_POSE_MAX
    ReconstructConfig(lr_pose=LR_POSE_MAX).validate()
    with pytest.raises(InputError, match="--lr-pose must be at most 1"):
        ReconstructConfig(lr_pose=1.5).validate()
    out = tmp_path / "out"
    rc = cli_main(_tiny(sim.star, out, "--lr-pose", "1e6"))
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and "--lr-pose must be at most 1 (radians per step), got 1e+06" in line, line
    assert not out.exists()


# ------------------------------------------------------------------ a refusal inside the ranks of --nproc
def test_a_refusal_inside_the_ranks_is_said_once_and_leaves_no_folder(sim, tmp_path):
    import subprocess
    import sys

    from rmfn_napari.cli_commands.reconstruct import _left_in

    not_a_map = tmp_path / "reference.mrc"
    not_a_map.write_text("not a map\n")
    out = tmp_path / "out"  # the reference is read by the ranks, after the launch
    argv = _tiny(sim.star, out, "--nproc", "2", "--reference", str(not_a_map))
    res = subprocess.run([sys.executable, "-m", "rmfn_napari.cli", *argv], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         cwd=Path(__file__).resolve().parent.parent)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, res.stderr
    assert len(lines) == 1 and lines[0].startswith(f"rmfn reconstruct: error: {not_a_map}: not an MRC file"), \
        res.stderr
    assert not out.exists()
    # a failure that is no refusal ends with what is left: a checkpoint only where there is one
    (tmp_path / "empty").mkdir()
    assert _left_in(tmp_path / "empty") == "no checkpoint was written"
    (tmp_path / "empty" / "checkpoint.pt").write_bytes(b"x")
    assert _left_in(tmp_path / "empty").startswith(f"the last checkpoint {tmp_path / 'empty' / 'checkpoint.pt'} is kept")
