"""Open a finished run's folder in napari: its maps (or images) as the layers the live run
shows, and its FSC and pose-error plots from ``metrics.json``.

A *run folder* is what ``rmfn reconstruct --out`` or ``rmfn fit-image --out`` (or the widgets)
wrote: ``metrics.json`` and at least one ``scale_k.mrc`` (reconstruct: also ``map.mrc``,
``half_map_1.mrc``, ``half_map_2.mrc``, ``mask_auto.mrc``, ``poses.star``, ``checkpoint.pt``,
``run.log``) or ``scale_k.tif`` (fit-image: also ``spectrum_k.tif``), k = 1..L.

Layers get the live run's names and placement (:mod:`.layers`): ``"rMFN scale k"`` at the
origin, only the finest one visible; ``"half map 1"``, ``"half map 2"``, ``"map
(backprojected)"`` left of them (the map visible, the half-maps hidden); ``"mask (auto)"``
with them, hidden; ``"reference"`` (the map a run with ``--reference`` was compared against, at
the run's box) at the origin, hidden. Volumes in Å (``scale`` = the MRC voxel size). Fit-image results sit on the
original image's grid (``scale`` = the downsampling factor, from ``metrics.json``'s
``eval_shape`` / ``train_shape``), their spectra ``"rMFN spectrum k"`` right of them.

:func:`run_layer_data` needs no viewer (the npe2 reader returns it); :func:`open_run_folder`
adds the layers to a viewer and fills the plots.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

#: File name of a run's metrics.
METRICS_FILE = "metrics.json"
#: Reconstruct maps other than the scales: file stem -> layer name.
MAP_FILES = {"half_map_1": "half map 1", "half_map_2": "half map 2",
             "map": "map (backprojected)", "map_postprocessed": "map (postprocessed)",
             "mask_auto": "mask (auto)"}
_SCALE_FILE = re.compile(r"^scale_(\d+)\.(mrc|tif)$")

LayerData = tuple[Any, dict, str]


def scale_files(folder) -> dict[int, Path]:
    """``scale_k.mrc`` / ``scale_k.tif`` of a folder by 1-based k (a folder with both kinds:
    the MRC maps)."""
    found: dict[str, dict[int, Path]] = {"mrc": {}, "tif": {}}
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    for path in folder.iterdir():
        m = _SCALE_FILE.match(path.name)
        if m and path.is_file():
            found[m.group(2)][int(m.group(1))] = path
    return dict(sorted((found["mrc"] or found["tif"]).items()))


def is_run_folder(folder) -> bool:
    """Whether ``folder`` is a run's output folder: ``metrics.json`` and a ``scale_k`` file."""
    folder = Path(folder)
    return folder.is_dir() and (folder / METRICS_FILE).is_file() and bool(scale_files(folder))


def read_run_metrics(folder) -> dict:
    """``metrics.json`` of a run folder as a dict; :class:`InputError` naming the file when it
    is missing, unreadable or not a JSON object."""
    path = Path(folder) / METRICS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError("no such file: not a finished run's folder", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read it ({exc})", path) from None
    try:
        metrics = json.loads(text)
    except ValueError as exc:
        raise InputError(f"not valid JSON ({exc})", path) from None
    if not isinstance(metrics, dict):
        raise InputError(f"expected a JSON object, found {type(metrics).__name__}", path)
    return metrics


def run_kind(folder) -> str:
    """``"reconstruct"`` (MRC maps) or ``"fit-image"`` (TIFF images)."""
    files = scale_files(folder)
    return "fit-image" if files and next(iter(files.values())).suffix == ".tif" else "reconstruct"


# ------------------------------------------------------------------------------ layer data
def run_layer_data(folder, metrics: dict | None = None) -> list[LayerData]:
    """The layers of a run folder as napari layer data ``(data, kwargs, "image")``, named and
    placed as the live run shows them (module docstring). ``metrics`` (fit-image: for the
    placement) is read from the folder when not given. :class:`InputError` naming the file
    for a map or image that cannot be read."""
    folder = Path(folder)
    if not is_run_folder(folder):
        raise InputError("not a run folder (expected metrics.json and scale_1.mrc or "
                         "scale_1.tif)", folder)
    if run_kind(folder) == "fit-image":
        return _image_layers(folder, read_run_metrics(folder) if metrics is None else metrics)
    if metrics is None:
        try:
            metrics = read_run_metrics(folder)
        except InputError:
            metrics = {}  # the maps do not need it, only the reference layer does
    return _map_layers(folder) + _reference_layer(metrics, folder)


def _reference_layer(metrics: dict, folder=None) -> list[LayerData]:
    """The map the run's FSC was computed against (``metrics.json``'s ``reference``, a path), as
    the live run's hidden ``"reference"`` layer: at the run's box and voxel size (Fourier-cropped
    like the particles when it is at their original box). A ``reference.mrc`` the run kept in
    its ``folder`` stands in when the recorded path is gone (the folder was moved). None when
    the run had no reference, it is gone, or its size fits neither box (it changed since)."""
    from ..cryoem.downsample import fourier_crop_volume
    from ..cryoem.io import read_map
    from .layers import REFERENCE_NAME

    path = metrics.get("reference")
    box, apix = metrics.get("box"), metrics.get("apix")
    kept = Path(folder) / "reference.mrc" if folder is not None else None
    if path and not Path(path).is_file() and kept is not None and kept.is_file() \
            and Path(path).name == kept.name:
        path = str(kept)  # the run's own copy, in a folder moved since
    if not path or not box or not apix or not Path(path).is_file():
        return []
    try:
        vol, _voxel = read_map(path)
    except (InputError, OSError, ValueError):
        return []
    box = int(box)
    if vol.shape == (int(metrics.get("source_box") or box),) * 3 and vol.shape[0] != box:
        vol = fourier_crop_volume(vol, box)
    if vol.shape != (box,) * 3:
        return []
    kwargs = {"name": REFERENCE_NAME, "scale": (float(apix),) * 3, "translate": (0.0, 0.0, 0.0),
              "colormap": "gray", "blending": "additive", "rendering": "mip", "visible": False,
              "metadata": {"voxel_size": float(apix), "path": str(path)}}
    return [(np.asarray(vol, np.float32), kwargs, "image")]


def _map_layers(folder: Path) -> list[LayerData]:
    from .._reader import read_mrc
    from .layers import SCALE_NAME
    from .placement import left_of

    layers: list[LayerData] = []
    files = scale_files(folder)
    finest = max(files)
    for k, path in files.items():
        data, kwargs, kind = read_mrc(path)
        kwargs.update(name=SCALE_NAME.format(k), colormap="gray", rendering="mip",
                      visible=k == finest, translate=(0.0,) * data.ndim)
        kwargs["metadata"]["scale"] = k
        layers.append((data, kwargs, kind))
    for stem, name in MAP_FILES.items():
        path = folder / f"{stem}.mrc"
        if not path.is_file():
            continue
        data, kwargs, kind = read_mrc(path)
        scale = tuple(kwargs["scale"])
        translate = left_of((0.0,) * data.ndim, data.shape[-1] * scale[-1])  # left of the scales
        kwargs.update(name=name, colormap="gray", rendering="mip", translate=translate,
                      visible=stem == "map")
        layers.append((data, kwargs, kind))
    return layers


def _image_layers(folder: Path, metrics: dict) -> list[LayerData]:
    import tifffile

    from .layers import SCALE_NAME, SPECTRUM_NAME
    from .placement import right_of

    factor = _downsample_factor(metrics)
    layers: list[LayerData] = []
    files = scale_files(folder)
    finest = max(files)
    for k, path in files.items():
        image = _read_tif(path, tifffile)
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        scale = (factor, factor)
        translate = ((factor - 1) / 2,) * 2  # training pixel centres on the original grid
        common = {"visible": k == finest, "scale": scale}
        kwargs = dict(common, name=SCALE_NAME.format(k), translate=translate, rgb=rgb,
                      metadata={"path": str(path), "scale": k, "downsample": factor})
        if rgb:
            image = np.clip(image, 0.0, 1.0)
            kwargs["contrast_limits"] = (0.0, 1.0)
        else:
            kwargs["colormap"] = "gray"
        layers.append((image, kwargs, "image"))
        spectrum_path = folder / f"spectrum_{k}.tif"
        if spectrum_path.is_file():
            spectrum = _read_tif(spectrum_path, tifffile)
            width = image.shape[1] * factor
            spec_translate = right_of(translate, width)
            layers.append((spectrum, dict(common, name=SPECTRUM_NAME.format(k),
                                          translate=spec_translate, colormap="magma",
                                          metadata={"path": str(spectrum_path), "scale": k}),
                           "image"))
    return layers


def _read_tif(path: Path, tifffile) -> np.ndarray:
    try:
        return np.asarray(tifffile.imread(path), dtype=np.float32)
    except Exception as exc:  # tifffile's many error types -> one line
        raise InputError(f"cannot read the TIFF ({type(exc).__name__}: {exc})", path) from None


def _downsample_factor(metrics: dict) -> float:
    """Original pixels per training pixel (1 when ``metrics.json`` does not say)."""
    try:
        eval_h, train_h = float(metrics["eval_shape"][0]), float(metrics["train_shape"][0])
    except (KeyError, IndexError, TypeError, ValueError):
        return 1.0
    return eval_h / train_h if train_h > 0 and eval_h > 0 else 1.0


# ---------------------------------------------------------------------------------- plots
def fsc_curves_from_metrics(metrics: dict) -> dict:
    """What the FSC plot shows for a finished reconstruct run, from its ``metrics.json``:
    ``{"freq_unit": ..., "gold": {freq, curves, resolutions, threshold, headline} or None,
    "reference": {1-based scale: (freq, fsc, resolution_A, threshold)}}``. Frequencies are in
    1/Å when the run's box and pixel size are known, else in cycles/box."""
    box, apix = metrics.get("box"), metrics.get("apix")
    per_angstrom = bool(box) and bool(apix)
    unit = "1/Å" if per_angstrom else "cycles/box"

    def freqs(values: dict, own: bool = False):
        cycles = np.asarray(values.get("freq_cycles", values.get("freq_cycles_per_box", [])),
                            dtype=np.float64)
        b, a = (values.get("box") or box, values.get("apix") or apix) if own else (box, apix)
        return cycles / (float(b) * float(a)) if per_angstrom and b and a else cycles

    gold = None
    gs = metrics.get("gold_standard")
    if isinstance(gs, dict) and gs.get("curves"):
        gold = {"freq": freqs(gs, own=True), "curves": dict(gs["curves"]),
                "resolutions": dict(gs.get("resolution_A") or {}),
                "threshold": float(gs.get("threshold", 0.143)),
                "headline": gs.get("headline") or "auto"}
    reference = {}
    for key, values in (metrics.get("fsc") or {}).items():
        if not isinstance(values, dict):
            continue
        # the key names the scale 1-based in every version ("scale1": the coarsest); the
        # "scale" value inside was 0-based before the 1..L numbering, so it is not used
        m = re.fullmatch(r"scale(\d+)", str(key))
        if m is None:
            continue
        k = int(m.group(1))
        reference[k] = (freqs(values), list(values.get("fsc", [])), values.get("resolution_A"),
                        float(values.get("threshold", 0.5)))
    return {"freq_unit": unit, "gold": gold, "reference": dict(sorted(reference.items()))}


def pose_summary(values: dict) -> str:
    """``"median 4.2°, mean 6.0°, 71% under 5°"`` of a ``pose_errors`` entry."""
    def num(key):
        try:
            return float(values.get(key))
        except (TypeError, ValueError):
            return float("nan")
    return (f"median {num('median_deg'):.1f}°, mean {num('mean_deg'):.1f}°, "
            f"{100 * num('frac_under_5deg'):.0f}% under 5°")


def set_plots_from_metrics(plots, metrics: dict) -> None:
    """Fill ``plots`` (a :class:`~.plot_docks.PlotDocks`, or anything with ``fsc_plot`` and
    ``pose_plot``) with a finished reconstruct run's FSC curves and pose-error histogram."""
    fsc_plot, pose_plot = plots.fsc_plot, plots.pose_plot
    curves = fsc_curves_from_metrics(metrics)
    x_label = f"spatial frequency ({curves['freq_unit']})"
    fsc_plot.clear()
    fsc_plot.set_reference_expected(bool(curves["reference"]))
    gold = curves["gold"]
    if gold is not None:
        fsc_plot.set_gold_standard(gold["freq"], gold["curves"], gold["resolutions"],
                                   gold["threshold"], x_label, headline=gold["headline"])
    for k, (freq, fsc, res, threshold) in curves["reference"].items():
        fsc_plot.set_curve(k - 1, freq, fsc, res, threshold, x_label)
    poses = metrics.get("pose_errors")
    if isinstance(poses, dict) and "hist_counts" in poses and "hist_edges_deg" in poses:
        pose_plot.set_counts(poses["hist_counts"], poses["hist_edges_deg"], pose_summary(poses))
    else:
        pose_plot.set_counts(np.zeros(36), np.linspace(0, 180, 37),
                             "no pose errors in this run (no true poses)")


# ---------------------------------------------------------------------------------- viewer
def run_summary(folder, metrics: dict, kind: str | None = None) -> str:
    """One line about a finished run: its kind, scales and headline numbers."""
    from .plots import resolution_text

    folder = Path(folder)
    kind = kind or run_kind(folder)
    n_scales = len(scale_files(folder))
    parts = [f"{folder.name}: {kind}, {n_scales} scale{'s' if n_scales != 1 else ''}"]
    if metrics.get("n_particles"):
        parts[0] += f", {int(metrics['n_particles'])} particles"
    if metrics.get("stopped"):
        parts[0] += " (stopped early)"
    if kind == "fit-image":
        psnr = metrics.get("psnr_db")
        if isinstance(psnr, (int, float)) and math.isfinite(psnr):
            parts.append(f"PSNR {psnr:.2f} dB")
        return " · ".join(parts)
    gs = metrics.get("gold_standard")
    if isinstance(gs, dict) and gs.get("resolution_A"):
        mask = gs.get("headline") or "auto"
        words = {"auto": "auto mask", "sphere": "sphere mask"}.get(mask, mask)
        parts.append(f"gold standard ({words}): "
                     f"{resolution_text(gs['resolution_A'].get(mask))}")
    if metrics.get("fsc"):
        parts.append(f"vs reference: {resolution_text(metrics.get('resolution_A'))}")
    if isinstance(metrics.get("pose_errors"), dict):
        parts.append(f"pose errors {pose_summary(metrics['pose_errors'])}")
    return " · ".join(parts)


def open_run_folder(viewer, folder, plots=None) -> str:
    """Show a finished run's folder in ``viewer``: its maps/images as layers (named and placed
    as the live run's, replacing layers of those names), and — when ``plots`` (the viewer's
    :class:`~.plot_docks.PlotDocks`) is given for a reconstruct run — its FSC curves and
    pose-error histogram, docked. Returns :func:`run_summary`.

    Everything is read before the viewer is touched: a bad file (:class:`InputError`, one line
    naming it) leaves the viewer as it was.
    """
    folder = Path(folder)
    metrics = read_run_metrics(folder)
    layer_data = run_layer_data(folder, metrics)
    kind = run_kind(folder)
    for data, kwargs, _kind in layer_data:
        name = kwargs["name"]
        if name in viewer.layers:
            viewer.layers.remove(viewer.layers[name])
        viewer.add_image(data, **kwargs)
    if any(np.ndim(d) == 3 and not kw.get("rgb") for d, kw, _ in layer_data):
        viewer.dims.ndisplay = 3
    viewer.reset_view()
    if plots is not None and kind == "reconstruct":
        set_plots_from_metrics(plots, metrics)
        plots.show()
    return run_summary(folder, metrics, kind)


__all__ = ["MAP_FILES", "METRICS_FILE", "fsc_curves_from_metrics", "is_run_folder",
           "open_run_folder", "read_run_metrics", "run_kind", "run_layer_data", "run_summary",
           "scale_files", "set_plots_from_metrics"]
