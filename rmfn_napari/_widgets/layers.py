"""Engine events -> napari layers (GUI thread only).

:class:`LayerUpdater` keeps one image layer per scale, ``"rMFN scale k"`` (k = 1..L, as in the
files and the CLI), and one for its centred log-amplitude spectrum, ``"rMFN spectrum k"``.

Layers are owned per run. When a run starts (its ``RunStarted``, :meth:`LayerUpdater.begin_run`),
layers of its names left by an earlier run are reused and blanked (the user's display settings
kept), those of scales the new run does not have are removed, so nothing of an earlier run is
ever shown as this run's. New layers are made when a stage needs them, not at Start
(:mod:`.placeholders`: a stage's scale layers at its ``StageStarted``, a reconstruction's maps
at its first stage end), as hidden placeholders, one per event-loop pass, while the engine
waits (:meth:`.runner.EngineRunner.hold`). Without ``begin_run`` (no runner) the scales'
layers are made at the run's first snapshot. A run that ends before either renames the
previous run's layers ``"... (previous run)"`` and hides them. Afterwards layers are only
updated in place.

Placement: on the data's grid, spectra right of their image, backprojected maps left of the
scales (:mod:`.placement`; :meth:`LayerUpdater.set_data_grid` gives a source image's grid).

No GUI stall from the plugin: snapshots arrive prepared in the worker
(:mod:`.display_prep`: float32 contiguous, display size, contrast limits), so applying one only
assigns arrays. In-stage snapshots are queued (only the newest per scale is kept) and applied at
most once per :attr:`LayerUpdater.live_interval_s`, paced by what the last redraws cost
(:mod:`.pacing`: about one live volume update per 15 s with software OpenGL, per second with a
GPU). A stage end's results — the final snapshots of every scale, then, after the half-maps
are computed, the backprojected maps (:mod:`.volume_layers`) — are held until the engine's
StageFinished (:meth:`LayerUpdater.stage_finished`, at most :data:`STAGE_END_WAIT_S` after the
first) and applied in one event-loop pass: Qt coalesces the canvas' repaint requests, so a stage
end is drawn once, while the engine waits (:attr:`.runner.EngineRunner.hold_stage_ends`).
:attr:`LayerUpdater.gui_seconds` accumulates the time spent in these
GUI-thread handlers.

Scale stepping: the *trained* scale is the highest scale a snapshot of this run has shown so far
(a coarse-to-fine stage k sends scales 1..k at its end, a full-scale run's only stage trains the
finest); :attr:`LayerUpdater.scales_changed` sends it (1-based, the stepper's count and value) and,
with ``follow`` on, only its layers are visible. :meth:`LayerUpdater.show_scale` (0-based) shows
one scale, :meth:`LayerUpdater.show_all` every scale.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..engine.events import RunStarted, ScaleSnapshot, StageStarted, VolumeSnapshot
from .display_prep import display_of, prepare_scale_snapshot, prepare_volume_snapshot
from .layer_ops import assign_array, batched_layer_changes, ensure_image_layer, warm_units
from .placement import DataGrid
from .pacing import RedrawCost, opengl_renderer, paced_interval_s, volumes_in_3d_by_default
from .placeholders import (
    PREVIOUS_RUN_SUFFIX, SCALE_NAME, SPECTRUM_NAME, PlaceholderJobs, own_layer_scale, retire_leftovers,
    scale_layer_name, spectrum_layer_name, stage_end_map_jobs,
)
from .volume_layers import (
    REFERENCE_NAME, SPECTRUM_GAP, VOLUME_LAYER_NAMES, BackprojectedMapLayers, show_central_plane,
    volume_layer_name,
)

#: After a stage end's first result, seconds to wait for the rest of it (the engine's
#: StageFinished) before drawing what came.
STAGE_END_WAIT_S = 3.0


class LayerUpdater(QObject, PlaceholderJobs):
    """Applies :class:`~rmfn_napari.engine.events.ScaleSnapshot` and
    :class:`~rmfn_napari.engine.events.VolumeSnapshot` events to a viewer's layers.

    Parameters
    ----------
    viewer : napari.Viewer
    spatial_ndim : int
        2 for images (an ``(H, W, 3)`` snapshot is an RGB image), 3 for volumes.
    min_interval_s : float or None
        Minimum time between two redraws caused by in-stage snapshots, s. None: paced by the
        measured cost of a redraw (:mod:`.pacing`: 2 % of the GUI's time; 0.5 s for images and
        1 s for volumes at least).

    Signals
    -------
    scales_changed(int)
        The scale the engine last trained changed: its 1-based number, which is also the
        number of scales with results (0: none yet, a new run began).
    redrawn()
        Queued snapshots were just put into the layers (the window repaints next): other
        widgets' repaints due soon are best done now, in the same repaint.
    """

    scales_changed = Signal(int)
    redrawn = Signal()

    def __init__(self, viewer, spatial_ndim: int = 2, min_interval_s: float | None = None,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.spatial_ndim = spatial_ndim
        warm_units()  # not at Start: in its first layer (the reference's, in an empty viewer)
        self.min_interval_s = min_interval_s
        #: What the last live updates cost the GUI (handler + redraw), for the pacing.
        self.redraw_cost = RedrawCost(parent=self)
        viewer.dims.events.ndisplay.connect(self.redraw_cost.forget)  # 2D and 3D frames differ
        self.maps = BackprojectedMapLayers(viewer)
        #: Whether a run's volumes switch the view to 3D (not with a software OpenGL:
        #: :func:`.pacing.volumes_in_3d_by_default`).
        self.volumes_in_3d = spatial_ndim != 3 or volumes_in_3d_by_default()
        self._told_2d = False
        self.follow = True
        #: Whether spectrum layers are shown with their scale (the stepper's "spectra" box).
        self.spectra_visible = True
        self.n_applied = 0
        #: Times the queue was applied (each is one redraw).
        self.n_redraws = 0
        #: Seconds spent in this object's GUI-thread handlers (queueing and applying).
        self.gui_seconds = 0.0
        self._shown: int | None = None  # None: all
        self._trained = -1
        self._last_heavy = -1e9
        self._stage_end_pending = False
        self._queue: dict[tuple, object] = {}
        self._layers: dict[int, tuple] = {}  # this run's (image, spectrum) per 0-based scale
        self._run_open = False
        self.grid = DataGrid()  # where results lie (:mod:`.placement`)
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._apply_queue)
        self._switched_3d = False
        self._to_create: list[tuple] = []  # placeholders: (scale, "scale"|"spectrum"), (name, "volume")
        self._pending_reference: tuple | None = None  # (volume, voxel size Å) to show next pass
        self.detached = False  # napari is closing: no layer is touched (:meth:`detach`)
        self._release = None  # the runner's hold while placeholders are created
        self._run_display = None  # zeros shaped like the run's snapshots (RunStarted), if known
        self._framed = False  # the view was framed on this run's placeholders
        self._maps_at_stage_end = False  # a begun reconstruction: its maps' layers made at a stage end
        self._stage_end_after_jobs = False  # a stage end waits for its maps' layers
        self._create_timer = QTimer(self)
        self._create_timer.setSingleShot(True)
        self._create_timer.setInterval(0)
        self._create_timer.timeout.connect(self._create_next)
        self._drawn = QTimer(self)  # zero-interval: fires after the pending events, the repaint in practice
        self._drawn.setSingleShot(True)
        self._drawn.setInterval(0)
        self._drawn.timeout.connect(self._stage_end_drawn)
        runner = getattr(parent, "runner", None)  # the widget's EngineRunner, when there is one
        if runner is not None and hasattr(runner, "event"):
            self.runner = runner
            runner.event.connect(self._on_runner_event)
            runner.hold_stage_ends = True  # the engine waits while a stage end is drawn
        else:
            self.runner = None

    # ---- public -------------------------------------------------------------------
    def set_data_grid(self, scale=None, translate=None) -> None:
        """Place image results on a source layer's grid: its ``scale`` and ``translate``
        (world units per original pixel, world position of pixel 0). None: pixels, at 0."""
        self.grid.set(scale, translate)

    def detach(self) -> None:
        """Update no layer any more (napari is closing): queued snapshots are dropped, no
        placeholder is made, and a run waiting for them goes on."""
        self.detached = True
        self._queue.clear()
        self._timer.stop()
        self._to_create, self._pending_reference = [], None
        self._create_timer.stop()
        if self._release is not None:
            release, self._release = self._release, None
            release()

    def _on_runner_event(self, ev) -> None:
        if self.detached:
            return  # no hold taken: the runner lets the engine go on at once
        if isinstance(ev, (RunStarted, StageStarted)):
            t0 = time.perf_counter()
            (self.begin_run if isinstance(ev, RunStarted) else self.stage_started)(ev)
            self.gui_seconds += time.perf_counter() - t0

    def reset(self, spatial_ndim: int | None = None) -> None:
        """Before a new run: forget queued snapshots; the layers are replaced by this run's at
        its first snapshot (see the module doc)."""
        if spatial_ndim is not None:
            self.spatial_ndim = spatial_ndim
        self._queue.clear()
        self._timer.stop()
        self._stage_end_pending = False
        self._last_heavy = -1e9
        self._layers = {}
        self._trained = -1
        self._run_open = True
        self._switched_3d = False
        self._to_create = []
        self._run_display, self._framed = None, False
        self._maps_at_stage_end = self._stage_end_after_jobs = False
        self.maps.begin_run()
        self._create_timer.stop()
        if self._pending_reference is not None:  # set just before this reset, for this run
            self._create_timer.start()
        if self._release is not None:
            release, self._release = self._release, None
            release()
        self.scales_changed.emit(0)

    def adopt_opened_run(self, n_scales: int) -> int:
        """After a finished run's folder was opened into the viewer (:mod:`.open_run`): its
        ``n_scales`` "rMFN scale k" / "rMFN spectrum k" layers become this updater's (so the
        stepper steps through them), own layers of other scales and earlier runs' renamed ones
        are removed, and the finest scale is shown. Returns the number of scales adopted."""
        self._queue.clear()
        self._timer.stop()
        self._stage_end_pending = False
        self._to_create = []
        self._create_timer.stop()
        if self._release is not None:  # a run waiting for its placeholders goes on
            release, self._release = self._release, None
            release()
        self._run_open = False
        names = {layer.name: layer for layer in self.viewer.layers}
        self._layers = {}
        k = 0
        while k < n_scales and scale_layer_name(k) in names:
            self._layers[k] = (names[scale_layer_name(k)], names.get(spectrum_layer_name(k)))
            k += 1
        self._trained = k - 1
        self._retire_leftovers(keep=k, rename=False)
        if k:
            self._shown = k - 1 if self.follow else self._shown
            self._update_visibility()
        self.scales_changed.emit(k)
        return k

    @property
    def n_scales(self) -> int:
        """Number of scales with results: the last trained scale, 1-based (0: none yet)."""
        return self._trained + 1

    @property
    def trained_scale(self) -> int:
        """0-based scale the engine last trained (-1: none yet in this run)."""
        return self._trained

    @property
    def shown_scale(self) -> int | None:
        """0-based scale whose layers are shown alone, None when every scale is shown."""
        return self._shown

    @property
    def n_volumes_applied(self) -> int:
        """Backprojected maps put into layers so far."""
        return self.maps.n_applied

    @property
    def live_interval_s(self) -> float:
        """Seconds between two redraws caused by in-stage snapshots (see :mod:`.pacing`)."""
        if self.min_interval_s is not None:
            return float(self.min_interval_s)
        nd = 3 if self.spatial_ndim == 3 and self.viewer.dims.ndisplay == 3 else 2
        return paced_interval_s(self.redraw_cost.estimate_s, nd)

    def handle(self, snap: ScaleSnapshot) -> None:
        """Queue ``snap`` (only the newest per scale is kept); see the module doc for when the
        queue is applied. A snapshot not prepared in the worker is prepared here."""
        t0 = time.perf_counter()
        snap = prepare_scale_snapshot(snap)
        self._queue[("scale", snap.scale)] = snap
        self._schedule(stage_end=snap.final)
        self.gui_seconds += time.perf_counter() - t0

    def handle_volume(self, snap: VolumeSnapshot) -> None:
        """Queue a backprojected map (stage ends), applied like a stage-end snapshot
        (:mod:`.volume_layers`)."""
        t0 = time.perf_counter()
        snap = prepare_volume_snapshot(snap)
        self._queue[("volume", snap.name)] = snap
        self._schedule(stage_end=True)
        self.gui_seconds += time.perf_counter() - t0

    def stage_finished(self) -> None:
        """The engine finished a stage (its StageFinished): draw its results, once; the
        engine, which waits meanwhile, goes on after that redraw (:meth:`.runner.EngineRunner.stage_end_drawn`).
        In a begun reconstruction, maps without a layer yet get theirs first, one per event-loop
        pass (:func:`.placeholders.stage_end_map_jobs`), and the stage end is drawn after."""
        self._timer.stop()
        if self._maps_at_stage_end and not self.detached:
            jobs = stage_end_map_jobs(self.viewer, [key for kind, key in self._queue if kind == "volume"])
            if jobs or self._to_create:
                self._stage_end_after_jobs = True
                self._queue_jobs(jobs, hold=False)  # the engine waits for the stage end's redraw
                return
        self._apply_queue()
        self._drawn.start()

    def _stage_end_drawn(self) -> None:
        if self.runner is not None:
            self.runner.stage_end_drawn()

    def flush(self) -> None:
        """Apply queued snapshots now (end of run). A run that showed nothing renames the
        previous run's layers ``"... (previous run)"`` and hides them."""
        self._timer.stop()
        self._apply_queue()
        if self._run_open and not self._layers:
            self._retire_leftovers(keep=0, rename=True)
        self._run_open = False

    def show_scale(self, scale: int) -> None:
        """Show only the layers of 0-based ``scale`` (and the reference)."""
        self._shown = scale
        self.follow = False
        self._update_visibility()

    def show_all(self) -> None:
        """Show the layers of every scale with results."""
        self._shown = None
        self._update_visibility()

    # ---- queue ----------------------------------------------------------------------
    def _schedule(self, stage_end: bool) -> None:
        """In-stage snapshots: applied once :attr:`live_interval_s` has passed since the last
        redraw. A stage end's results (final snapshots, maps) wait for the engine's
        StageFinished (:meth:`stage_finished`), at most :data:`STAGE_END_WAIT_S`, and are then
        applied together: one redraw per stage end."""
        if stage_end:
            if not self._stage_end_pending:
                self._stage_end_pending = True
                self._timer.start(int(1000 * STAGE_END_WAIT_S))
            return
        if self._stage_end_pending:
            return  # in the stage end's redraw
        ms = max(1, int(1000 * (self.live_interval_s - (time.monotonic() - self._last_heavy))))
        if not self._timer.isActive() or self._timer.remainingTime() > ms:
            self._timer.start(ms)

    def _apply_queue(self) -> None:
        live, self._stage_end_pending = not self._stage_end_pending, False
        queue, self._queue = self._queue, {}
        if not queue:
            return
        t0 = time.perf_counter()
        if live:  # the pacing measures in-stage updates (a stage end does more, once)
            self.redraw_cost.started()
        self._last_heavy = time.monotonic()
        self.n_redraws += 1
        reframe = False
        with batched_layer_changes(self.viewer):
            for (kind, _key), snap in queue.items():
                if kind == "scale":
                    reframe = self._apply_scale(snap) or reframe
                else:
                    reframe = self._apply_volume(snap) or reframe
        if reframe:
            self.redraw_cost.discard()  # a first frame of new data: not what a live update costs
            self.viewer.reset_view()
            self._centre_slice()
        self.gui_seconds += time.perf_counter() - t0
        self.redrawn.emit()

    # ---- scale layers ---------------------------------------------------------------
    def _placement(self, snap) -> tuple[tuple, tuple, tuple]:
        """Image scale/translate and the spectrum's translate (right of the image)."""
        return self.grid.image_and_spectrum(display_of(snap))

    def _begin_layers(self, snap) -> None:
        """This run's layers of every scale, made at its first snapshot (placeholders, hidden),
        when :meth:`begin_run` did not make them."""
        n = max(int(display_of(snap).n_scales or 0), snap.scale + 1)
        for k in range(n):
            self._layers[k] = self._make_pair(k, snap)
        self._retire_leftovers(keep=n, rename=False)

    def _make_pair(self, k: int, snap) -> tuple:
        """Scale ``k``'s (image, spectrum) layers, blank, on ``snap``'s grid (existing ones
        of those names reused)."""
        scale, translate, spec_translate = self._placement(snap)
        img, spectrum = display_of(snap).image, display_of(snap).spectrum
        blank = np.zeros_like(img.data)
        spec_blank = np.zeros_like(spectrum.data)
        image_layer = ensure_image_layer(self.viewer, scale_layer_name(k), blank, scale, translate,
                                         rgb=img.rgb, colormap="gray")
        spectrum_layer = ensure_image_layer(self.viewer, spectrum_layer_name(k), spec_blank, scale,
                                            spec_translate, rgb=False, colormap="magma")
        return image_layer, spectrum_layer

    def _retire_leftovers(self, keep: int, rename: bool) -> None:
        """:func:`.placeholders.retire_leftovers` of the own layers that are not this run's."""
        mine = {id(layer) for pair in self._layers.values() for layer in pair}
        retire_leftovers(self.viewer, mine, keep, rename)

    def _apply_scale(self, snap) -> bool:
        """Put a prepared ScaleSnapshot into its scale's layers; True: reframe the view."""
        if not self._layers:
            self._begin_layers(snap)
        pair = self._layers.get(snap.scale)
        if pair is None or None in pair:
            self._to_create = [item for item in self._to_create if item[0] != snap.scale]
            self._layers[snap.scale] = self._make_pair(snap.scale, snap)
        image_layer, spectrum_layer = self._layers[snap.scale]
        scale, translate, spec_translate = self._placement(snap)
        shown = display_of(snap)
        self._layers[snap.scale] = (
            assign_array(self.viewer, image_layer, shown.image, scale, translate, colormap="gray"),
            assign_array(self.viewer, spectrum_layer, shown.spectrum, scale, spec_translate,
                         colormap="magma"))
        self.n_applied += 1
        if len(shown.image.spatial_shape) == 3:
            self._show_volumes()
        first = self._trained < 0 and not self._framed  # framed on the placeholders already
        if snap.scale > self._trained:
            self._trained = snap.scale
            if self.follow:
                self._shown = snap.scale
            self.scales_changed.emit(self._trained + 1)
        self._update_visibility()
        return first

    def set_spectra_visible(self, on: bool) -> None:
        """Show (True) or hide the spectrum layers of the scales on show (fewer volumes to draw
        in each frame; with software OpenGL a frame of the visible volumes took 0.25–0.45 s,
        benchmarks/results/gui_responsiveness.md)."""
        self.spectra_visible = bool(on)
        self._update_visibility()

    def _update_visibility(self) -> None:
        with batched_layer_changes(self.viewer):
            for k, (image, spectrum) in self._layers.items():
                visible = k <= self._trained and (self._shown is None or k == self._shown)
                for layer, show in ((image, visible), (spectrum, visible and self.spectra_visible)):
                    if layer is not None and layer in self.viewer.layers and layer.visible != show:
                        layer.visible = show

    # ---- backprojected maps -----------------------------------------------------------
    def _apply_volume(self, snap) -> bool:
        """A backprojected map into its layer (:class:`.volume_layers.BackprojectedMapLayers`);
        True: reframe the view."""
        reframe = self.maps.apply(snap, self.grid.backprojected_map)
        if display_of(snap).image.data.ndim == 3:
            self._show_volumes()
        return reframe

    def _centre_slice(self) -> None:
        """In the 2D view of volumes, show their central plane (:func:`.volume_layers.show_central_plane`)."""
        if self.spatial_ndim == 3 and self.viewer.dims.ndisplay == 2:
            show_central_plane(self.viewer, [image for image, _spectrum in self._layers.values()])

    def _show_volumes(self) -> None:
        """A run's volumes are coming: the 3D view (once per run), or with a software OpenGL
        the 2D view the user is in, said once."""
        if self._switched_3d:
            return
        self._switched_3d = True
        if self.volumes_in_3d:
            self.viewer.dims.ndisplay = 3
        elif self.viewer.dims.ndisplay == 2 and not self._told_2d:
            self._told_2d = True
            from napari.utils.notifications import show_info

            show_info(f"OpenGL here renders in software ({opengl_renderer() or 'unknown'}): one 3D frame "
                      "of the volumes takes ~0.3 s, so runs show them as slices (the central plane). "
                      "The viewer's 2D/3D button shows them in 3D.")


__all__ = ["LayerUpdater", "PREVIOUS_RUN_SUFFIX", "REFERENCE_NAME", "SPECTRUM_GAP", "VOLUME_LAYER_NAMES",
           "own_layer_scale", "scale_layer_name", "spectrum_layer_name", "volume_layer_name"]
