"""Which napari layers a run owns, and when each is made (GUI thread; no layer is touched here
except through the viewer passed in).

A run owns ``"rMFN scale k"`` and ``"rMFN spectrum k"`` (k = 1..L, as in the files and the
CLI) and, for a reconstruction, the backprojected maps (:mod:`.volume_layers`). Adding a layer
costs napari 0.15-0.35 s of GUI time on a 2-core CPU under load (its vispy node, its layer
controls, the canvas' scene graph; issue 29), so a run does not make them all at Start:

- at its ``RunStarted``, only layers of those names left by an earlier run are reused and
  blanked (hidden zeros: no layer added, a few ms each) — :func:`run_start_jobs`;
- at each ``StageStarted``, the layers that stage's results need and that do not exist yet (a
  coarse-to-fine stage k: scale k's image and spectrum; a full-scale run's only stage: every
  scale) — :func:`stage_start_jobs`;
- at a reconstruction's first stage end, the maps' layers, before the maps are drawn —
  :func:`stage_end_map_jobs`.

Each job makes one layer, one per event-loop pass, while the engine waits
(:meth:`.runner.EngineRunner.hold`, :attr:`.runner.EngineRunner.hold_stage_ends`), and adds it
without selecting it (:func:`.layer_ops.no_selection_change`: the selection change alone cost
~0.1 s a layer). A job is ``(scale, "scale" | "spectrum")`` or ``(map key, "volume")``.
"""

from __future__ import annotations

import re
import time

import numpy as np

from ..engine.events import RunStarted, StageStarted
from .display_prep import n_scales_of, placeholder_display
from .layer_ops import ensure_image_layer
from .runner import freeze_objects_made_so_far
from .volume_layers import VOLUME_LAYER_NAMES, set_reference_layer, volume_layer_name

SCALE_NAME = "rMFN scale {}"
SPECTRUM_NAME = "rMFN spectrum {}"
PREVIOUS_RUN_SUFFIX = " (previous run)"
_OWN_NAME = re.compile(r"^rMFN (scale|spectrum) (\d+)( \(previous run\))?$")


def scale_layer_name(scale: int) -> str:
    """Layer name of 0-based ``scale`` (shown 1-based)."""
    return SCALE_NAME.format(scale + 1)


def spectrum_layer_name(scale: int) -> str:
    """Spectrum layer name of 0-based ``scale`` (shown 1-based)."""
    return SPECTRUM_NAME.format(scale + 1)


def own_layer_scale(name: str) -> int | None:
    """0-based scale of an ``"rMFN scale k"`` / ``"rMFN spectrum k"`` layer name (also the
    previous run's renamed ones); None for any other name."""
    m = _OWN_NAME.match(name)
    return int(m.group(2)) - 1 if m else None


def job_layer_name(job: tuple) -> str:
    """The layer name a placeholder job makes."""
    key, kind = job
    if kind == "volume":
        return volume_layer_name(key)
    return scale_layer_name(key) if kind == "scale" else spectrum_layer_name(key)


def run_start_jobs(viewer, n_scales: int, task: str) -> list[tuple]:
    """At a run's start: the jobs that blank the layers an earlier run left under this run's
    names (scales ``< n_scales``; a reconstruction's maps). None adds a layer."""
    names = {layer.name for layer in viewer.layers}
    jobs = [(k, kind) for k in range(n_scales) for kind in ("scale", "spectrum")
            if job_layer_name((k, kind)) in names]
    if task == "reconstruct":
        jobs += [(key, "volume") for key in VOLUME_LAYER_NAMES if volume_layer_name(key) in names]
    return jobs


def stage_start_jobs(layers: dict, trained_scale: int, queued: list[tuple]) -> list[tuple]:
    """At a stage's start: the scale jobs for every scale ``<= trained_scale`` (its results
    hold them all) whose layer the run does not hold yet (``layers``: 0-based scale ->
    (image, spectrum), None where missing) and that are not ``queued``."""
    jobs = []
    for k in range(int(trained_scale) + 1):
        pair = layers.get(k, (None, None))
        for kind, layer in zip(("scale", "spectrum"), pair):
            if layer is None and (k, kind) not in queued:
                jobs.append((k, kind))
    return jobs


def stage_end_map_jobs(viewer, map_keys) -> list[tuple]:
    """At a stage end: the jobs for the maps (``VolumeSnapshot.name`` s) about to be drawn
    that have no layer yet."""
    names = {layer.name for layer in viewer.layers}
    return [(key, "volume") for key in map_keys if volume_layer_name(key) not in names]


def blank_display(run_display, grid, spatial_ndim: int, kind: str) -> tuple[np.ndarray, tuple, tuple]:
    """(data, scale, translate) of a placeholder ``kind`` ("image" or "spectrum"): zeros at
    the run's display shape and place (``run_display``, a zero
    :class:`~.display_prep.SnapshotDisplay`, placed by ``grid``, a :class:`.placement.DataGrid`),
    else (``run_display`` None) 1 pixel at the origin."""
    if run_display is None:
        return np.zeros((1,) * spatial_ndim, np.float32), (1.0,) * spatial_ndim, (0.0,) * spatial_ndim
    scale, translate, spec_translate = grid.image_and_spectrum(run_display)
    if kind == "image":
        return run_display.image.data, scale, translate
    return run_display.spectrum.data, scale, spec_translate


def retire_leftovers(viewer, mine: set[int], keep: int, rename: bool) -> None:
    """Remove (or, ``rename``, rename "(previous run)" and hide) the own layers that are not
    this run's (``mine``: ids of its layers): every scale >= ``keep``, and every earlier run's
    renamed layer."""
    for layer in list(viewer.layers):
        k = own_layer_scale(layer.name)
        if k is None or id(layer) in mine:
            continue
        if rename and not layer.name.endswith(PREVIOUS_RUN_SUFFIX):
            layer.name = layer.name + PREVIOUS_RUN_SUFFIX
            layer.visible = False
        elif not rename and (k >= keep or layer.name.endswith(PREVIOUS_RUN_SUFFIX)):
            viewer.layers.remove(layer)


class PlaceholderJobs:
    """The part of :class:`.layers.LayerUpdater` that makes a run's layers when they are
    needed (see the module doc): :meth:`begin_run`, :meth:`stage_started`, the one-job-per-pass
    loop (:meth:`_create_next`, on the updater's zero-interval ``_create_timer``, holding the
    engine through the updater's ``runner``) and the reference layer (:meth:`set_reference`).
    It works on the updater's state (``viewer``, ``_layers``, ``_to_create``, ``maps``,
    ``grid``, ...): a mixin, not a class of its own."""

    def begin_run(self, ev: RunStarted) -> None:
        """A run started (its ``RunStarted``): get its layers ready before it trains.

        Layers of this run's names that an earlier run left are reused and blanked, one per
        event-loop pass (no layer is added here: new ones are made when a stage needs them,
        :meth:`stage_started`, :mod:`.placeholders`); own layers of scales the run does not
        have (:func:`~.display_prep.n_scales_of`) are removed; the view switches to 3D for
        volumes. Where ``ev`` gives the snapshots' shape, placeholders are zeros of that
        display shape at their final place and the view is framed on the first ones, so a
        snapshot only replaces data of the same shape (no change of the viewer's dims, no
        reframing: cheap); else they are 1 pixel. While this goes on the engine waits
        (:meth:`.runner.EngineRunner.hold`).
        Called by itself when the updater's parent widget has a ``runner``.
        """
        n = n_scales_of(ev)
        self._layers = {}
        self._run_display, self._framed = placeholder_display(ev), False
        self._maps_at_stage_end = ev.task == "reconstruct"  # its stage ends send the maps
        self._run_open = True
        self._retire_leftovers(keep=n, rename=False)
        self.maps.begin_run()
        if self.spatial_ndim == 3:
            self._show_volumes()
        self._queue_jobs(run_start_jobs(self.viewer, n, ev.task))

    def stage_started(self, ev: StageStarted) -> None:
        """A stage started (its ``StageStarted``): make the layers its results need that the
        run does not have yet (:func:`.placeholders.stage_start_jobs`: a coarse-to-fine
        stage k, scale k's image and spectrum; a full-scale run's stage, every scale), one per
        event-loop pass, while the engine waits. Called by itself with a ``runner``."""
        if not self._run_open:
            return
        self._queue_jobs(stage_start_jobs(self._layers, ev.trained_scale, self._to_create))

    def _queue_jobs(self, jobs: list[tuple], hold: bool = True) -> None:
        """Queue placeholder jobs (:mod:`.placeholders`); with ``hold``, the engine waits until
        they are done (a pending reference layer is added first)."""
        self._to_create += jobs
        if hold and self.runner is not None and self._to_create and self._release is None:
            self._release = self.runner.hold()
        self._create_timer.start()

    def _create_next(self) -> None:
        """Make one placeholder layer (or the pending reference layer), then come back at the
        next event-loop pass."""
        t0 = time.perf_counter()
        if self._pending_reference is not None:
            (volume, voxel_size), self._pending_reference = self._pending_reference, None
            set_reference_layer(self.viewer, volume, voxel_size)
            freeze_objects_made_so_far()
            if self._to_create or self._release is not None:
                self._create_timer.start()
            self.gui_seconds += time.perf_counter() - t0
            return
        if self._to_create:
            self._make(*self._to_create.pop(0))
            freeze_objects_made_so_far()  # a layer is thousands of objects: out of the collector's way
        if self._to_create:
            self._create_timer.start()
            self.gui_seconds += time.perf_counter() - t0
            return
        if self._run_display is not None and not self._framed and self._trained < 0 \
                and any(image is not None for image, _spectrum in self._layers.values()):
            self._framed = True  # frame the view now, not at the first snapshot
            self.viewer.reset_view()
            self._centre_slice()
        if self._release is not None:
            release, self._release = self._release, None
            release()
        if self._stage_end_after_jobs:  # the maps' layers are made: draw the stage end
            self._stage_end_after_jobs = False
            self.stage_finished()
        self.gui_seconds += time.perf_counter() - t0

    def _make(self, key, kind: str) -> None:
        """Make (or reuse and blank) one placeholder layer (a job of :mod:`.placeholders`)."""
        shown = self._run_display
        if kind == "volume":
            self.maps.blank(key, shown and shown.image, self.grid.backprojected_map, framed=not self._framed)
            return
        image, spectrum = self._layers.get(key, (None, None))
        if kind == "scale" and image is None:
            data, scale, translate = blank_display(shown, self.grid, self.spatial_ndim, "image")
            image = ensure_image_layer(self.viewer, scale_layer_name(key), data, scale, translate,
                                       rgb=bool(shown and shown.image.rgb), colormap="gray", blank=True)
        elif kind == "spectrum" and spectrum is None:
            data, scale, translate = blank_display(shown, self.grid, self.spatial_ndim, "spectrum")
            spectrum = ensure_image_layer(self.viewer, spectrum_layer_name(key), data, scale, translate,
                                          rgb=False, colormap="magma", blank=True)
        self._layers[key] = (image, spectrum)

    def set_reference(self, volume: np.ndarray, voxel_size: float) -> None:
        """Add or update the ``"reference"`` layer (:func:`.volume_layers.set_reference_layer`)
        at the next event-loop pass, before the run's placeholders, not in the caller's: adding
        a layer costs the GUI 0.15–0.4 s on a 2-core CPU, and the caller is the Start handler,
        which must answer at once (issue 29)."""
        self._pending_reference = (volume, float(voxel_size))
        self._create_timer.start()



__all__ = ["PREVIOUS_RUN_SUFFIX", "PlaceholderJobs", "SCALE_NAME", "SPECTRUM_NAME", "blank_display", "job_layer_name",
           "own_layer_scale", "retire_leftovers", "run_start_jobs", "scale_layer_name",
           "spectrum_layer_name", "stage_end_map_jobs", "stage_start_jobs"]
