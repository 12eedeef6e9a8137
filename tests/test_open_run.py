"""Opening a finished run's folder: the maps as the live run's layers, the plots from
metrics.json, the npe2 reader on folders (GUI parts under Xvfb: ``bash scripts/run_tests.sh``).

One real tiny run per module: 128 particles simulated from the 1OL5 map block-averaged to 16³
(4 Å voxels), reconstructed by ``rmfn reconstruct --preset tiny`` with a reference and the true
poses (a few seconds on a 2-core CPU).
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("rmfn_napari.cryoem.reconstruct")

from rmfn_napari._reader import get_reader  # noqa: E402
from rmfn_napari._widgets.open_run import open_run_folder, run_layer_data  # noqa: E402
from rmfn_napari.cryoem.reconstruct.run_folder import is_run_folder, read_run_metrics  # noqa: E402
from rmfn_napari.errors import InputError  # noqa: E402

APIX16 = 4.0


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory) -> Path:
    """A finished reconstruct run (tiny preset) with a reference and true poses."""
    from rmfn_napari._sample_data import load_map
    from rmfn_napari.cli import main
    from rmfn_napari.cryoem.io import write_map

    base = tmp_path_factory.mktemp("open_run")
    vol, apix = load_map("1ol5_32")
    ref = write_map(base / "map16.mrc", vol.reshape(16, 2, 16, 2, 16, 2).mean((1, 3, 5)), apix * 2)
    assert main(["simulate", "--map", str(ref), "--n", "128", "--out", str(base / "sim"),
                 "--seed", "0", "--quiet"]) == 0
    out = base / "run"
    assert main(["reconstruct", str(base / "sim" / "particles.star"), "--preset", "tiny",
                 "--out", str(out), "--reference", str(ref), "--device", "cpu",
                 "--true-poses", str(base / "sim" / "true_poses.star")]) == 0
    return out


def _mrc(path):
    import mrcfile

    with mrcfile.open(path, permissive=True) as m:
        return np.asarray(m.data, np.float32), float(m.voxel_size.x)


def _same_resolution(shown: float, in_json) -> bool:
    """A resolution as the plot holds it (NaN: "not resolved") against metrics.json's (null)."""
    return math.isnan(shown) if in_json is None else shown == pytest.approx(in_json)


def test_run_folder_layers_equal_the_files(run_folder):
    scales = sorted(run_folder.glob("scale_*.mrc"))
    assert [p.name for p in scales] == ["scale_1.mrc", "scale_2.mrc", "scale_3.mrc"]
    layers = {kw["name"]: (data, kw) for data, kw, kind in run_layer_data(run_folder)}
    assert set(layers) == {"rMFN scale 1", "rMFN scale 2", "rMFN scale 3", "half map 1",
                           "half map 2", "map (backprojected)", "mask (auto)", "reference"}
    # the reference the run was compared against, from metrics.json's path: the file's map, hidden
    metrics = json.loads((run_folder / "metrics.json").read_text())
    ref_path = Path(metrics["reference"])
    assert ref_path.name == "map16.mrc" and ref_path.is_absolute()
    data, kw = layers["reference"]
    np.testing.assert_array_equal(np.asarray(data, np.float32), _mrc(ref_path)[0])
    assert tuple(kw["scale"]) == pytest.approx((APIX16,) * 3) and not kw["visible"]
    assert kw["blending"] == "translucent"
    files = {"rMFN scale 1": "scale_1", "rMFN scale 2": "scale_2", "rMFN scale 3": "scale_3",
             "half map 1": "half_map_1", "half map 2": "half_map_2",
             "map (backprojected)": "map", "mask (auto)": "mask_auto"}
    for name, stem in files.items():
        data, kw = layers[name]
        want, apix = _mrc(run_folder / f"{stem}.mrc")
        assert apix == pytest.approx(APIX16)
        np.testing.assert_array_equal(np.asarray(data, np.float32), want)
        assert tuple(kw["scale"]) == pytest.approx((APIX16,) * 3)
    # placement and visibility as in the live run: the finest scale and the map shown
    assert [layers[f"rMFN scale {k}"][1]["visible"] for k in (1, 2, 3)] == [False, False, True]
    assert tuple(layers["rMFN scale 3"][1]["translate"]) == (0.0, 0.0, 0.0)
    assert layers["map (backprojected)"][1]["visible"]
    assert not layers["half map 1"][1]["visible"] and not layers["half map 2"][1]["visible"]
    assert tuple(layers["half map 1"][1]["translate"]) == pytest.approx((0, 0, -1.15 * 16 * APIX16))


def test_the_run_folder_format_is_read_without_qt_or_napari(run_folder):
    """The run folder's reader is engine code: in a fresh interpreter it reads a whole
    reconstruct run (maps, metrics, reference) with no Qt binding and no napari imported."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from rmfn_napari.cryoem.reconstruct.run_folder import read_run_folder\n"
        f"run = read_run_folder({str(run_folder)!r})\n"
        "assert sorted(run.scales) == [1, 2, 3] and run.reference is not None, run\n"
        "gui = sorted(m for m in sys.modules if m.split('.')[0] in\n"
        "             ('qtpy', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'napari', 'vispy', 'magicgui'))\n"
        "print('GUI MODULES:', gui)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "GUI MODULES: []"


def test_open_run_folder_adds_layers_and_plots(make_napari_viewer, run_folder):
    from rmfn_napari._widgets.plot_docks import PlotDocks
    from rmfn_napari._widgets.plots import resolution_text

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((4, 4, 4), np.float32), name="rMFN scale 2")  # a stale layer
    plots = PlotDocks.for_viewer(viewer)
    summary = open_run_folder(viewer, run_folder, plots=plots)
    metrics = json.loads((run_folder / "metrics.json").read_text())

    names = [layer.name for layer in viewer.layers]
    assert names.count("rMFN scale 2") == 1  # replaced, not duplicated
    for k in (1, 2, 3):
        layer = viewer.layers[f"rMFN scale {k}"]
        want, _ = _mrc(run_folder / f"scale_{k}.mrc")
        np.testing.assert_array_equal(np.asarray(layer.data, np.float32), want)
        assert tuple(layer.scale) == pytest.approx((APIX16,) * 3)
    assert viewer.dims.ndisplay == 3

    # the FSC plot holds metrics.json's curves, in 1/Å
    fsc = plots.fsc_plot
    gs = metrics["gold_standard"]
    assert set(fsc.gold_curves) == {f"gold-standard {m}" for m in gs["curves"]}
    per_A = np.asarray(gs["freq_cycles"]) / (gs["box"] * gs["apix"])
    for mask, curve in gs["curves"].items():
        x, y = fsc.curve_columns()[f"gold-standard {mask}"]
        np.testing.assert_allclose(x, per_A)
        np.testing.assert_allclose(y, np.array(curve, dtype=float))
        assert _same_resolution(fsc.gold_resolutions[f"gold-standard {mask}"],
                                gs["resolution_A"][mask])
    assert sorted(fsc.curves) == [0, 1, 2]  # scale1..scale3 against the reference
    for k in (1, 2, 3):
        ref = metrics["fsc"][f"scale{k}"]
        x, y = fsc.curve_columns()[f"scale {k} vs reference"]
        np.testing.assert_allclose(y, ref["fsc"])
        np.testing.assert_allclose(x, np.asarray(ref["freq_cycles"]) / (16 * APIX16))
        assert _same_resolution(fsc.resolutions[k - 1], ref["resolution_A"])
    assert fsc.x_label == "spatial frequency (1/Å)"
    np.testing.assert_array_equal(plots.pose_plot.counts, metrics["pose_errors"]["hist_counts"])
    np.testing.assert_array_equal(plots.pose_plot.edges, metrics["pose_errors"]["hist_edges_deg"])
    assert plots.docked

    headline = resolution_text(gs["resolution_A"][gs["headline"]])
    assert f"gold standard (auto mask): {headline}" in summary
    assert summary.startswith(f"{run_folder.name}: reconstruct, 3 scales, 128 particles ·")


def test_corrupt_metrics_is_one_line_naming_the_file(make_napari_viewer, run_folder, tmp_path):
    broken = tmp_path / "broken_run"
    shutil.copytree(run_folder, broken)
    (broken / "metrics.json").write_text('{"fsc": {"scale1": ')
    viewer = make_napari_viewer()
    with pytest.raises(InputError) as info:
        open_run_folder(viewer, broken)
    message = str(info.value)
    assert message.startswith(f"{broken / 'metrics.json'}: not valid JSON")
    assert "\n" not in message and info.value.__suppress_context__
    assert len(viewer.layers) == 0  # nothing added before the error

    (broken / "metrics.json").write_text("[1, 2]")
    with pytest.raises(InputError, match="metrics.json: expected a JSON object, found list"):
        read_run_metrics(broken)


def test_a_reference_at_the_particles_box_is_cropped_and_a_missing_one_left_out(run_folder, tmp_path):
    """A run cropped with --box compared against a map at the particles' box: the layer is that
    map Fourier-cropped to the run's box; a reference that is gone gives no layer, no error."""
    from rmfn_napari._widgets.open_run import _reference_layer
    from rmfn_napari.cryoem.downsample import fourier_crop_volume
    from rmfn_napari.cryoem.io import write_map

    big = np.random.default_rng(0).normal(size=(32, 32, 32)).astype(np.float32)
    path = write_map(tmp_path / "ref32.mrc", big, 1.0)
    metrics = {"reference": str(path), "box": 16, "apix": 2.0, "source_box": 32, "source_apix": 1.0}
    (data, kw, kind), = _reference_layer(metrics)
    np.testing.assert_allclose(data, fourier_crop_volume(big, 16), rtol=1e-6, atol=1e-6)
    assert tuple(kw["scale"]) == (2.0, 2.0, 2.0) and kind == "image"
    assert _reference_layer({**metrics, "reference": str(tmp_path / "gone.mrc")}) == []
    assert _reference_layer({**metrics, "source_box": 24}) == []  # fits neither box: changed since
    assert _reference_layer({**metrics, "reference": None}) == []


def test_reader_accepts_run_folders_only(run_folder, tmp_path):
    assert is_run_folder(run_folder)
    reader = get_reader(str(run_folder))
    assert reader is not None
    layers = reader(str(run_folder))
    names = [kw["name"] for _d, kw, kind in layers]
    assert "rMFN scale 3" in names and "map (backprojected)" in names
    assert all(kind == "image" for _d, _kw, kind in layers)

    plain = tmp_path / "not_a_run"
    plain.mkdir()
    (plain / "scale_1.mrc").write_bytes((run_folder / "scale_1.mrc").read_bytes())
    assert get_reader(str(plain)) is None  # no metrics.json
    (plain / "scale_1.mrc").unlink()
    (plain / "metrics.json").write_text("{}")
    assert get_reader(str(plain)) is None  # no maps
    assert get_reader(str(run_folder / "scale_1.mrc")) is not None  # files still read


def test_fit_image_run_folder(make_napari_viewer, tmp_path):
    import tifffile

    out = tmp_path / "fit"
    out.mkdir()
    images = {1: np.random.rand(8, 8).astype(np.float32),
              2: np.random.rand(8, 8).astype(np.float32)}
    for k, img in images.items():
        tifffile.imwrite(out / f"scale_{k}.tif", img)
        tifffile.imwrite(out / f"spectrum_{k}.tif", img * 2)
    (out / "metrics.json").write_text(json.dumps({"method": "rmfn", "psnr_db": 31.25,
                                                  "train_shape": [8, 8], "eval_shape": [16, 16]}))
    viewer = make_napari_viewer()
    summary = open_run_folder(viewer, out)
    layer = viewer.layers["rMFN scale 2"]
    np.testing.assert_array_equal(layer.data, images[2])
    assert tuple(layer.scale) == (2.0, 2.0) and tuple(layer.translate) == (0.5, 0.5)
    assert layer.visible and not viewer.layers["rMFN scale 1"].visible
    spectrum = viewer.layers["rMFN spectrum 2"]
    np.testing.assert_array_equal(spectrum.data, images[2] * 2)
    assert tuple(spectrum.translate) == pytest.approx((0.5, 0.5 + 1.15 * 16))
    assert summary == "fit: fit-image, 2 scales · PSNR 31.25 dB"


def test_napari_opens_a_run_folder_with_the_plugin(make_napari_viewer, run_folder):
    """File ▸ Open Folder… goes through npe2: the manifest accepts directories."""
    viewer = make_napari_viewer()
    viewer.open(str(run_folder), plugin="rmfn-napari")
    names = {layer.name for layer in viewer.layers}
    assert {"rMFN scale 1", "rMFN scale 3", "half map 1", "map (backprojected)"} <= names
    want, _ = _mrc(run_folder / "half_map_2.mrc")
    np.testing.assert_array_equal(np.asarray(viewer.layers["half map 2"].data, np.float32), want)


def test_a_reference_given_as_an_array_is_kept_with_the_run(tmp_path, run_folder):
    """A reference given as an array (a napari layer's) is written into the run folder at the
    working box and voxel size, metrics.json points at it, and an opened run shows it."""
    from rmfn_napari._widgets.open_run import _reference_layer
    from rmfn_napari.cryoem.reconstruct import ReconstructConfig, reconstruct
    from rmfn_napari.engine.control import RunControl

    sim = run_folder.parent / "sim"
    ref, apix = _mrc(run_folder.parent / "map16.mrc")
    cfg = ReconstructConfig.from_preset("tiny", device="cpu", max_particles=64)
    out = tmp_path / "run"
    for _ev in reconstruct(sim / "particles.star", cfg, RunControl(), reference=ref, out_dir=out):
        pass
    metrics = json.loads((out / "metrics.json").read_text())
    assert Path(metrics["reference"]) == (out / "reference.mrc").resolve()
    kept, kept_apix = _mrc(out / "reference.mrc")
    np.testing.assert_array_equal(kept, ref)  # already at the working box: unchanged
    assert kept_apix == pytest.approx(apix)
    (data, kw, _kind), = _reference_layer(metrics)
    np.testing.assert_array_equal(data, ref)
    moved = out.rename(tmp_path / "moved")  # the folder moved: its own copy is found there
    (data, kw, _kind), = _reference_layer(metrics, moved)
    np.testing.assert_array_equal(data, ref)
    assert _reference_layer(metrics) == []  # the recorded path alone: gone
