"""Open a finished run's folder in napari: its maps (or images) as the layers the live run
shows, and its FSC and pose-error plots from ``metrics.json``.

What a run folder holds and how it is read back is :mod:`rmfn_napari.cryoem.reconstruct.run_folder`
(no Qt); this module only names and places what it reads.

Layers get the live run's names and placement (:mod:`.layers`): ``"rMFN scale k"`` at the
origin, only the finest one visible; ``"half map 1"``, ``"half map 2"``, ``"map
(backprojected)"`` left of them (the map visible, the half-maps hidden); ``"mask (auto)"``
with them, hidden; ``"reference"`` (the map a run with ``--reference`` was compared against, at
the run's box) at the origin, hidden. Volumes in Å (``scale`` = the MRC voxel size). Fit-image
results sit on the original image's grid (``scale`` = the downsampling factor, from
``metrics.json``'s ``eval_shape`` / ``train_shape``), their spectra ``"rMFN spectrum k"`` right
of them.

:func:`run_layer_data` needs no viewer (the npe2 reader returns it); :func:`open_run_folder`
adds the layers to a viewer and fills the plots.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..cryoem.reconstruct.run_folder import (
    FIT_IMAGE, METRICS_FILE, RunFolder, Volume, is_run_folder, read_run_folder, read_run_metrics,
    reference_map, run_kind, scale_files,
)

#: Reconstruct maps other than the scales: file stem (run_folder.MAP_STEMS) -> layer name.
MAP_FILES = {"half_map_1": "half map 1", "half_map_2": "half map 2",
             "map": "map (backprojected)", "map_postprocessed": "map (postprocessed)",
             "mask_auto": "mask (auto)"}

LayerData = tuple[Any, dict, str]


# ------------------------------------------------------------------------------ layer data
def run_layer_data(folder, metrics: dict | None = None) -> list[LayerData]:
    """The layers of a run folder as napari layer data ``(data, kwargs, "image")``, named and
    placed as the live run shows them (module docstring). ``metrics`` (fit-image: for the
    placement) is read from the folder when not given. :class:`InputError` naming the file
    for a map or image that cannot be read."""
    run = read_run_folder(folder, metrics)
    if run.kind == FIT_IMAGE:
        return _image_layers(run)
    return _map_layers(run) + _reference_layer_data(run.reference)


def _reference_layer(metrics: dict, folder=None) -> list[LayerData]:
    """The hidden ``"reference"`` layer of a run (:func:`~rmfn_napari.cryoem.reconstruct.
    run_folder.reference_map`), or none."""
    return _reference_layer_data(reference_map(metrics, folder))


def _reference_layer_data(ref: Volume | None) -> list[LayerData]:
    from .layers import REFERENCE_NAME

    if ref is None:
        return []
    apix = float(ref.voxel_size[-1])
    kwargs = {"name": REFERENCE_NAME, "scale": (apix,) * 3, "translate": (0.0, 0.0, 0.0),
              "colormap": "gray", "blending": "translucent", "rendering": "mip", "visible": False,
              "metadata": {"voxel_size": apix, "path": str(ref.path)}}
    return [(np.asarray(ref.data, np.float32), kwargs, "image")]


def _volume_kwargs(vol: Volume, **kwargs) -> dict:
    return dict(kwargs, scale=tuple(vol.voxel_size), colormap="gray", rendering="mip",
                metadata={"voxel_size": float(vol.voxel_size[-1]), "path": str(vol.path),
                          "is_stack": False})


def _map_layers(run: RunFolder) -> list[LayerData]:
    from .layers import SCALE_NAME
    from .placement import left_of

    layers: list[LayerData] = []
    finest = max(run.scales)
    for k, vol in run.scales.items():
        kwargs = _volume_kwargs(vol, name=SCALE_NAME.format(k), visible=k == finest,
                                translate=(0.0,) * vol.data.ndim)
        kwargs["metadata"]["scale"] = k
        layers.append((vol.data, kwargs, "image"))
    for stem, vol in run.maps.items():
        # left of the scales
        translate = left_of((0.0,) * vol.data.ndim, vol.data.shape[-1] * vol.voxel_size[-1])
        layers.append((vol.data, _volume_kwargs(vol, name=MAP_FILES[stem], translate=translate,
                                                visible=stem == "map"), "image"))
    return layers


def _image_layers(run: RunFolder) -> list[LayerData]:
    from .layers import SCALE_NAME, SPECTRUM_NAME
    from .placement import right_of

    factor = run.downsample
    layers: list[LayerData] = []
    files = scale_files(run.folder)
    finest = max(run.scales)
    for k, image in run.scales.items():
        rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
        scale = (factor, factor)
        translate = ((factor - 1) / 2,) * 2  # training pixel centres on the original grid
        common = {"visible": k == finest, "scale": scale}
        kwargs = dict(common, name=SCALE_NAME.format(k), translate=translate, rgb=rgb,
                      metadata={"path": str(files[k]), "scale": k, "downsample": factor})
        if rgb:
            image = np.clip(image, 0.0, 1.0)
            kwargs["contrast_limits"] = (0.0, 1.0)
        else:
            kwargs["colormap"] = "gray"
        layers.append((image, kwargs, "image"))
        if k in run.spectra:
            width = image.shape[1] * factor
            layers.append((run.spectra[k], dict(common, name=SPECTRUM_NAME.format(k),
                                                translate=right_of(translate, width),
                                                colormap="magma",
                                                metadata={"path": str(run.folder / f"spectrum_{k}.tif"),
                                                          "scale": k}),
                           "image"))
    return layers


# ---------------------------------------------------------------------------------- plots
def fsc_curves_from_metrics(metrics: dict) -> dict:
    """What the FSC plot shows for a finished reconstruct run, from its ``metrics.json``:
    ``{"freq_unit": ..., "gold": {freq, curves, resolutions, threshold, headline, bands (the
    shared band, the stage's band and its note: :meth:`.plots.FSCPlot.set_gold_standard`)} or None,
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
                "headline": gs.get("headline") or "auto",
                "bands": {k: gs.get(k) for k in ("shared_band_A", "band_A", "band_note", "box", "apix")}}
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


def _last_stage(metrics: dict) -> int | None:
    """0-based index of the last stage ``metrics.json`` summarises (its gold standard's)."""
    stages = metrics.get("stages")
    try:
        return int(stages[-1]["stage"]) - 1
    except (TypeError, KeyError, IndexError, ValueError):
        return None


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
                                   gold["threshold"], x_label, headline=gold["headline"],
                                   bands=gold["bands"], stage=_last_stage(metrics))
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
    from .._reader_preference import prefer_rmfn_reader

    folder = Path(folder)
    metrics = read_run_metrics(folder)
    layer_data = run_layer_data(folder, metrics)
    kind = run_kind(folder)
    prefer_rmfn_reader(folder)  # File ▸ Open Folder on it opens it with rMFN from now on
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
