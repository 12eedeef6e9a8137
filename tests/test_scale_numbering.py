"""Scales are numbered 1..L everywhere a user reads them: files, metrics.json, the CLI's lines
(engine events stay 0-based inside; see rmfn_napari.engine.events)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import tifffile

from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem.simulate import simulate_particles

from analytic_maps import write_sample_map_16


def _image(n=32):
    y, x = np.mgrid[0:n, 0:n] / n
    return np.clip(0.5 + 0.3 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y), 0, 1)


def test_fit_image_files_and_lines_are_numbered_from_1(tmp_path, capsys):
    src = tmp_path / "img.tif"
    tifffile.imwrite(src, _image().astype(np.float32))
    out = tmp_path / "out"
    code = cli_main(["fit-image", str(src), "--schedule", "5,5,5", "--hidden", "16",
                     "--downsample", "2", "--device", "cpu", "--out", str(out)])
    assert code == 0
    names = sorted(p.name for p in out.iterdir() if p.suffix == ".tif")
    assert names == ["scale_1.tif", "scale_2.tif", "scale_3.tif",
                     "spectrum_1.tif", "spectrum_2.tif", "spectrum_3.tif"]
    assert tifffile.imread(out / "scale_1.tif").shape == (16, 16)
    err = capsys.readouterr().err
    # one line per stage: "stage k: ...; psnr_db=..., scale=k"
    stages = re.findall(r"^stage (\d+):.*\bscale=(\d+)", err, flags=re.M)
    assert stages == [("1", "1"), ("2", "2"), ("3", "3")], err


@pytest.fixture(scope="module")
def tiny_stack(tmp_path_factory):
    """60 noisy particles of a 16^3 map (4 Å/px): a reconstruct run of a few seconds."""
    root = tmp_path_factory.mktemp("numbering")
    map_path = write_sample_map_16(root / "map16.mrc")
    res = simulate_particles(map_path, root / "sim", n=60, snr=0.5, seed=3)
    return res.star, res.reference


def test_reconstruct_files_json_and_lines_are_numbered_from_1(tiny_stack, tmp_path, capsys):
    star, ref = tiny_stack
    out = tmp_path / "run"
    code = cli_main(["reconstruct", str(star), "--preset", "tiny", "--reference", str(ref),
                     "--batch", "30", "--device", "cpu", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    maps = sorted(p.name for p in out.glob("scale_*.mrc"))
    assert maps == ["scale_1.mrc", "scale_2.mrc", "scale_3.mrc"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["fsc"]) == ["scale1", "scale2", "scale3"]
    assert [metrics["fsc"][f"scale{k}"]["scale"] for k in (1, 2, 3)] == [1, 2, 3]
    assert metrics["resolution_A"] == metrics["fsc"]["scale3"]["resolution_A"]
    assert [s["scale"] for s in metrics["stages"]] == [1, 2, 3]
    err = capsys.readouterr().err
    stages = re.findall(r"^stage (\d+):.*\bscale=(\d+)", err, flags=re.M)
    assert stages == [("1", "1"), ("2", "2"), ("3", "3")], err
