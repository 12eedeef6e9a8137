"""GUI tests of the gold-standard FSC display and the backprojected-map layers of the
reconstruct dock widget (run under Xvfb: ``bash scripts/run_tests.sh``).

No reconstruction runs: synthetic engine events (what ``reconstruct`` sends at a stage's end:
``ScaleSnapshot``, ``Metrics("fsc")`` against a reference, ``Metrics("gold_standard")`` and three
``VolumeSnapshot`` s) are fed to the widget's event handler, or yielded by a stub engine through
the real worker, so each test takes a second or two.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("rmfn_napari.cryoem.reconstruct")

from rmfn_napari._widgets import ReconstructWidget  # noqa: E402
from rmfn_napari._widgets.plots import FSCPlot, resolution_text  # noqa: E402
from rmfn_napari._widgets.reconstruct import DATASET_STAR, REF_NONE  # noqa: E402
from rmfn_napari.engine.events import (  # noqa: E402
    Metrics, RunFinished, ScaleSnapshot, StageFinished, VolumeSnapshot,
)

BOX, APIX = 16, 4.0
LAYER_NAMES = {"half_map_1": "half map 1", "half_map_2": "half map 2",
               "map": "map (backprojected)"}


def _freq() -> list[float]:
    return list(np.arange(BOX // 2 + 1, dtype=float))  # cycles/box, shells 0..D/2


#: The halves shared the network up to this many cycles/box (issue 26): 16 Å at BOX * APIX = 64 Å.
SHARED_CYCLES = 4.0


def _with_bands(ev: Metrics, band_cycles: float = 6.0) -> Metrics:
    """``ev`` with the engine's band values: shared up to :data:`SHARED_CYCLES`, the stage's band
    at ``band_cycles`` (Å = BOX * APIX / cycles, as the engine's gold_standard_values says)."""
    band_A = BOX * APIX / band_cycles
    ev.values.update(shared_band_cycles=SHARED_CYCLES, shared_band_A=BOX * APIX / SHARED_CYCLES,
                     band_A=band_A, band_resolved=True,
                     band_note=f"resolved 7.9 Å of its {band_A:.1f} Å band")
    return ev


def _gold(stage: int = 0, auto=7.9, sphere=None, unmasked=9.3) -> Metrics:
    f = np.arange(BOX // 2 + 1, dtype=float)
    unm = np.exp(-(f / 5.0) ** 2)
    sph = np.minimum(1.0, unm + 0.05)
    aut = np.minimum(1.0, unm + 0.1)
    sph_list = [None if i == 7 else float(v) for i, v in enumerate(sph)]  # a gap
    sph_list[8] = float("nan")
    return Metrics("gold_standard", stage, {
        "freq_cycles": _freq(), "threshold": 0.143,
        "curves": {"unmasked": unm.tolist(), "sphere": sph_list, "auto": aut.tolist()},
        "resolution_A": {"unmasked": unmasked, "sphere": sphere, "auto": auto},
        "headline": "auto", "randomise_from_A": 12.0, "n_half": [64, 64],
        "box": BOX, "apix": APIX})


def _reference_fsc(scale: int, stage: int, res=10.5) -> Metrics:
    f = np.arange(BOX // 2 + 1, dtype=float)
    return Metrics("fsc", stage, {"scale": scale, "freq_cycles": f.tolist(),
                                  "fsc": np.exp(-(f / 4.0) ** 2).tolist(), "threshold": 0.5,
                                  "resolution_A": res})


def _volumes(stage: int, seed: int) -> list[VolumeSnapshot]:
    rng = np.random.default_rng(seed)
    return [VolumeSnapshot(name, rng.standard_normal((BOX,) * 3).astype(np.float32), APIX, stage)
            for name in ("half_map_1", "half_map_2", "map")]


def _stage_end(stage: int, seed: int, with_reference: bool = True) -> list:
    rng = np.random.default_rng(100 + seed)
    vol = rng.standard_normal((BOX,) * 3).astype(np.float32)
    events = [ScaleSnapshot(stage, vol, np.abs(vol), APIX, stage, final=True)]
    if with_reference:
        events.append(_reference_fsc(stage, stage))
    events.append(_gold(stage))
    events += _volumes(stage, seed)
    events.append(StageFinished(stage, 10 * (stage + 1), 1.0))
    return events


def _widget(make_napari_viewer, tmp_out):
    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(w, name="Reconstruct (cryo-EM)")
    w.out_dir.set_path(str(tmp_out))
    w.dock_plots()
    return viewer, w


def test_resolution_text():
    assert resolution_text(7.94) == "7.9 Å"
    assert resolution_text(None) == resolution_text(float("nan")) == "not resolved"


def test_gold_standard_curves_and_layers(make_napari_viewer, qtbot, tmp_out):
    viewer, w = _widget(make_napari_viewer, tmp_out)
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value.name))
    for ev in _stage_end(0, seed=1):
        w._on_event(ev)
    plot = w.fsc_plot

    # three gold-standard curves with their resolutions, the 0.143 line, x in 1/Å
    assert plot.n_gold_curves == 3
    assert set(plot.gold_curves) == {"gold-standard unmasked", "gold-standard sphere",
                                     "gold-standard auto"}
    assert plot.gold_resolutions["gold-standard auto"] == pytest.approx(7.9)
    assert plot.gold_resolutions["gold-standard unmasked"] == pytest.approx(9.3)
    assert math.isnan(plot.gold_resolutions["gold-standard sphere"])
    assert plot.gold_threshold == pytest.approx(0.143) and plot.has_gold_threshold_line
    legend = plot.legend_text()
    assert "gold-standard auto: 7.9 Å" in legend and "gold-standard unmasked: 9.3 Å" in legend
    assert "gold-standard sphere: not resolved" in legend
    assert "FSC = 0.143 (half-maps)" in legend and "needs a reference" not in legend
    assert plot.x_label == "spatial frequency (1/Å)"
    nyquist = (BOX // 2) / (BOX * APIX)  # 1/(2·apix)
    auto_x, _auto_y = plot.gold_curves["gold-standard auto"].getData()  # the pyqtgraph item's data
    assert np.nanmax(auto_x) == pytest.approx(nyquist)
    sphere = plot.gold_curves["gold-standard sphere"]
    _x, sphere_y = sphere.getData()
    # its None points are kept as NaN, and NaN breaks the line (never drawn as 0)
    assert np.isfinite(sphere_y).sum() == BOX // 2 - 1 and np.isnan(sphere_y[-1])
    assert sphere.opts["connect"] == "finite"
    # the headline curve (auto) is drawn bold, the others not
    assert plot.gold_curves["gold-standard auto"].opts["pen"].width() == 3
    assert plot.gold_curves["gold-standard sphere"].opts["pen"].width() == 2
    # the reference curve at 0.5 alongside: both threshold lines, each labelled
    assert plot.n_curves == 1 and plot.has_reference_threshold_line
    assert "FSC = 0.5 (vs reference)" in legend and "scale 1: 10.5 Å" in legend
    assert plot.legend_entries()[0] == "┄ FSC = 0.143 (half-maps)"
    assert "\n" in legend  # one row per kind

    # the headline resolution in the summary and in the stage-end status
    assert "gold standard (auto mask): 7.9 Å" in w.resolution_label.text()
    assert "sphere mask not resolved" in w.resolution_label.text()
    assert "gold standard (auto mask): 7.9 Å" in w.panel.status.text()
    assert w.panel.status.text().startswith("Stage 1 finished")

    # the three backprojected maps as 3D gray layers at the voxel size; only the map shown
    layers = {}
    for key, name in LAYER_NAMES.items():
        layer = viewer.layers[name]
        layers[key] = layer
        assert layer.data.shape == (BOX,) * 3 and layer.data.dtype == np.float32
        assert tuple(layer.scale) == (APIX,) * 3
        assert layer.colormap.name == "gray"
        assert layer.visible == (key == "map")
        assert inserted.count(name) == 1
    assert viewer.dims.ndisplay == 3
    assert w.events_seen["VolumeSnapshot"] == 3
    # not offered as a reference for the next run
    items = [w.reference.itemText(i) for i in range(w.reference.count())]
    assert not set(LAYER_NAMES.values()) & set(items)

    # the next stage updates the same layers and curves in place
    layers["half_map_1"].visible = True  # the user's choice survives updates
    second = _volumes(1, seed=2)
    for ev in _stage_end(1, seed=2):
        w._on_event(ev)
    for snap in second:
        layer = viewer.layers[LAYER_NAMES[snap.name]]
        assert layer is layers[snap.name]
        np.testing.assert_array_equal(layer.data, snap.data)
        assert inserted.count(LAYER_NAMES[snap.name]) == 1
    assert layers["half_map_1"].visible and not layers["half_map_2"].visible
    assert sum(layer.name in LAYER_NAMES.values() for layer in viewer.layers) == 3
    assert plot.n_gold_curves == 3 and plot.n_curves == 2
    assert w.resolution_label.text().startswith("Stage 2:")

    # a later stage's "not resolved" headline
    w._on_event(_gold(2, auto=None, sphere=6.5))
    assert "gold-standard auto: not resolved" in plot.legend_text()
    assert "gold-standard sphere: 6.5 Å" in plot.legend_text()
    assert "gold standard (auto mask): not resolved" in w.resolution_label.text()

    # clear() (a new run) removes both kinds; the empty legend does not ask for a reference
    plot.clear()
    assert plot.n_gold_curves == 0 and plot.n_curves == 0
    assert not plot.has_gold_threshold_line and not plot.has_reference_threshold_line
    assert "reference" not in plot.legend_text() and "no FSC yet" in plot.legend_text()


def test_gold_standard_without_reference_and_cycles_axis(qtbot):
    """Without a reference only the 0.143 line; without box/apix the x axis is cycles/box."""
    plot = FSCPlot()
    qtbot.addWidget(plot)
    ev = _gold()
    plot.set_gold_standard(ev.values["freq_cycles"], ev.values["curves"],
                           ev.values["resolution_A"], x_label="spatial frequency (cycles/box)")
    assert plot.n_gold_curves == 3 and plot.n_curves == 0
    assert plot.has_gold_threshold_line and not plot.has_reference_threshold_line
    text = plot.legend_text()
    assert "reference" not in text and "0.5" not in text
    assert np.nanmax(plot.gold_curves["gold-standard auto"].getData()[0]) == pytest.approx(BOX // 2)
    # labels as keys work too; a curve left out disappears
    plot.set_gold_standard(ev.values["freq_cycles"],
                           {"gold-standard unmasked": ev.values["curves"]["unmasked"]},
                           {"gold-standard unmasked": 11.0})
    assert list(plot.gold_curves) == ["gold-standard unmasked"]
    assert "gold-standard unmasked: 11.0 Å" in plot.legend_text()
    # an all-None curve is kept (not resolved) but not drawn
    plot.set_gold_standard(ev.values["freq_cycles"], {"auto": [None] * (BOX // 2 + 1)},
                           {"auto": None})
    assert not plot.gold_curves["gold-standard auto"].isVisible()
    assert "gold-standard auto: not resolved" in plot.legend_text()


def test_shared_band_and_stage_band_marked(make_napari_viewer, tmp_out):
    """Issue 26: the band the halves shared is shaded up to a labelled line, at the frequency of
    SHARED_CYCLES (1/Å = cycles / (box * apix), by hand); the stage's band progress is in the
    legend, its band a dotted line."""
    _viewer, w = _widget(make_napari_viewer, tmp_out)
    plot = w.fsc_plot
    w.on_metrics(_gold(1))  # no band values (before the split): nothing marked
    assert not plot.shared_band_line.isVisible() and not plot.shared_band_region.isVisible()
    assert not plot.band_line.isVisible() and "shared" not in plot.legend_text()

    w.on_metrics(_with_bands(_gold(1), band_cycles=6.0))
    x_shared = SHARED_CYCLES / (BOX * APIX)  # 0.0625 1/Å
    assert plot.shared_band_line.isVisible() and plot.shared_band_region.isVisible()
    assert plot.shared_band_line.value() == pytest.approx(x_shared)
    assert plot.shared_band_region.getRegion() == pytest.approx((0.0, x_shared))
    assert plot.shared_band_label == "halves shared up to 16.0 Å"
    assert plot.band_line.isVisible() and plot.band_line.value() == pytest.approx(6.0 / (BOX * APIX))
    legend = plot.legend_text()
    assert "halves shared up to 16.0 Å: a crossing there is not a resolution" in legend
    assert "stage 2 resolved 7.9 Å of its 10.7 Å band" in legend

    # on a cycles/box axis the marks sit at the cycles themselves
    plot.set_gold_standard(_freq(), _gold().values["curves"], {"auto": 7.9},
                           x_label="spatial frequency (cycles/box)",
                           bands=_with_bands(_gold()).values)
    assert plot.shared_band_line.value() == pytest.approx(SHARED_CYCLES)
    assert plot.band_line.value() == pytest.approx(6.0)

    plot.clear()  # a new run: no bands left behind
    assert not plot.shared_band_line.isVisible() and not plot.band_line.isVisible()
    assert "band" not in plot.legend_text()


def test_new_run_updates_map_layers(make_napari_viewer, qtbot, tmp_out, monkeypatch):
    """Events through the real worker (a stub engine): a second run updates the three layers
    in place instead of adding new ones, and the run-end status gives the resolution."""
    import rmfn_napari.cryoem.reconstruct as engine

    runs = []

    def fake(dataset, config, control, **kwargs):
        seed = len(runs)
        runs.append(seed)
        yield from _stage_end(0, seed=10 + seed, with_reference=False)
        yield RunFinished(False, 10, 1.0)

    monkeypatch.setattr(engine, "reconstruct", fake)
    # the STAR below is a placeholder: skip the engine's input checks at Start
    monkeypatch.setattr("rmfn_napari.cryoem.reconstruct.preflight.check_inputs", lambda *a, **k: None)
    viewer, w = _widget(make_napari_viewer, tmp_out)
    star = Path(tmp_out) / "particles.star"
    star.write_text("data_\n")
    w.dataset_kind.setCurrentText(DATASET_STAR)
    w.star_path.edit.setText(str(star))
    w.reference.setCurrentText(REF_NONE)
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append(e.value.name))
    first = {}
    for run in range(2):
        with qtbot.waitSignal(w.runner.finished, timeout=30000):
            w.start()
        assert w.runner.failure is None, w.runner.failure
        expected = _volumes(0, seed=10 + run)
        for snap in expected:
            layer = viewer.layers[LAYER_NAMES[snap.name]]
            first.setdefault(snap.name, layer)
            assert layer is first[snap.name]
            np.testing.assert_array_equal(layer.data, snap.data)
        assert w.fsc_plot.n_gold_curves == 3 and w.fsc_plot.n_curves == 0
        assert "reference" not in w.fsc_plot.legend_text()
        assert "gold standard (auto mask): 7.9 Å" in w.panel.status.text()
        assert w.panel.status.text().startswith("Finished")
    for name in LAYER_NAMES.values():
        assert inserted.count(name) == 1


def test_fsc_dock_screenshot(make_napari_viewer, qtbot, tmp_out, artifacts_dir):
    """The FSC dock with both kinds of curves, in a shown window, saved for a person to look
    at."""
    import imageio.v3 as iio

    viewer = make_napari_viewer(show=True)
    w = ReconstructWidget(viewer)
    viewer.window.add_dock_widget(w, name="Reconstruct (cryo-EM)")
    w.dock_plots()
    viewer.window._qt_window.resize(1400, 1000)
    for stage in range(3):
        for ev in _stage_end(stage, seed=stage):
            w._on_event(_with_bands(ev, band_cycles=5.0 + stage) if stage and isinstance(ev, Metrics)
                        and ev.name == "gold_standard" else ev)
    qtbot.wait(300)
    plot = w.fsc_plot
    # the legend is never squeezed over the plot (once the window has laid out the dock
    # for the legend's new minimum height: slow on a loaded CPU)
    qtbot.waitUntil(lambda: plot.legend.geometry().top() >= plot.plot.geometry().bottom(),
                    timeout=5000)
    assert plot.legend.height() >= plot.legend.heightForWidth(plot.legend.width())
    canvas = plot.grab_image()
    assert canvas.std() > 1
    iio.imwrite(artifacts_dir / "widget_fsc_gold_standard.png", canvas)
    dock = plot.grab()  # the whole dock widget: plot and legend
    for path in (Path("/tmp/fsc_dock.png"), artifacts_dir / "widget_fsc_dock.png"):
        assert dock.save(str(path))
    iio.imwrite(artifacts_dir / "widget_reconstruct_gold_standard.png",
                viewer.screenshot(canvas_only=False, flash=False))


def test_an_untrusted_gold_standard_says_why(make_napari_viewer, tmp_out):
    """The engine's verdict (issue 26) is shown under the headline and flagged in the status."""
    _viewer, w = _widget(make_napari_viewer, tmp_out)
    ev = _gold(1, auto=None, unmasked=None)
    ev.values.update(trusted=False, verdict="not resolved beyond the shared band: crosses at 30.1 Å")
    w.on_metrics(ev)
    assert "not resolved beyond the shared band: crosses at 30.1 Å" in w.resolution_label.text()
    assert "not trusted" in w.panel.status.text()
    w.on_metrics(_gold(2))  # a trusted one: no warning left behind
    assert "shared band" not in w.resolution_label.text() and "not trusted" not in w.panel.status.text()
