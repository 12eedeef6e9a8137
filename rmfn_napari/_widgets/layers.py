"""Engine events -> napari layers (GUI thread only).

:class:`LayerUpdater` keeps one image layer per scale, ``"rMFN scale k"`` (k 1-based), and one
for its centred log-amplitude spectrum, ``"rMFN spectrum k"``. A layer is added the first time
its scale arrives and afterwards updated in place (``layer.data = ...``), never re-added, so the
user's display settings survive. Layers get ``scale=(voxel_size,)*ndim`` (Å for cryo-EM volumes,
1 for images); spectrum layers sit beside their scale (translated along x by 1.15 box widths).

Rate: during a stage at most one heavy update per ``min_interval_s`` (default 0.5 s) is applied;
a snapshot arriving sooner is held and applied when the interval has passed (only the newest one
per scale is kept). Stage-end snapshots (``final=True``) are applied at once, always.

Backprojected maps: :meth:`LayerUpdater.handle_volume` shows the engine's
:class:`~rmfn_napari.engine.events.VolumeSnapshot` s (stage ends) as ``"half map 1"``,
``"half map 2"`` and ``"map (backprojected)"`` (3D, gray, ``scale=(voxel_size,)*3``, placed
left of the scale layers by 1.15 box widths); the map is shown and the half-maps hidden when
first added, and afterwards every stage and every new run updates them in place.

Scale stepping: :meth:`LayerUpdater.show_scale` makes only that scale's layers visible,
:meth:`LayerUpdater.show_all` shows every scale; with ``follow`` on, the scale being trained is
shown as its first snapshot arrives.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal

from ..engine.events import ScaleSnapshot, VolumeSnapshot

SCALE_NAME = "rMFN scale {}"
SPECTRUM_NAME = "rMFN spectrum {}"
REFERENCE_NAME = "reference"
#: Layer names of the engine's backprojected maps (``VolumeSnapshot.name`` -> layer name).
VOLUME_LAYER_NAMES = {
    "half_map_1": "half map 1",
    "half_map_2": "half map 2",
    "map": "map (backprojected)",
}
#: Shown when first added (the half-maps are there for inspection, hidden by default).
VOLUMES_VISIBLE = {"map"}


def volume_layer_name(name: str) -> str:
    """Layer name of a :class:`VolumeSnapshot` named ``name`` (unknown names as they are)."""
    return VOLUME_LAYER_NAMES.get(name, name)


def scale_layer_name(scale: int) -> str:
    """Layer name of 0-based ``scale`` (shown 1-based)."""
    return SCALE_NAME.format(scale + 1)


def spectrum_layer_name(scale: int) -> str:
    """Spectrum layer name of 0-based ``scale`` (shown 1-based)."""
    return SPECTRUM_NAME.format(scale + 1)


class LayerUpdater(QObject):
    """Applies :class:`~rmfn_napari.engine.events.ScaleSnapshot` events to a viewer's layers.

    Parameters
    ----------
    viewer : napari.Viewer
    spatial_ndim : int
        2 for images (an ``(H, W, 3)`` snapshot is an RGB image), 3 for volumes.
    min_interval_s : float
        Minimum time between two heavy updates during a stage.

    Signals
    -------
    scales_changed(int)
        The number of scales with layers changed.
    """

    scales_changed = Signal(int)

    def __init__(self, viewer, spatial_ndim: int = 2, min_interval_s: float = 0.5,
                 parent: QObject | None = None):
        super().__init__(parent)
        self.viewer = viewer
        self.spatial_ndim = spatial_ndim
        self.min_interval_s = min_interval_s
        self.follow = True
        self.n_applied = 0
        self.n_volumes_applied = 0
        self._shown: int | None = None  # None: all
        self._last_heavy = -np.inf
        self._pending: dict[int, ScaleSnapshot] = {}
        self._layers: dict[int, tuple] = {}
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._apply_pending)
        self._switched_3d = False

    # ---- public -------------------------------------------------------------------
    def reset(self, spatial_ndim: int | None = None) -> None:
        """Forget pending snapshots (before a new run); existing layers are reused by name."""
        if spatial_ndim is not None:
            self.spatial_ndim = spatial_ndim
        self._pending.clear()
        self._timer.stop()
        self._last_heavy = -np.inf
        self._layers.clear()
        self._switched_3d = False

    @property
    def n_scales(self) -> int:
        """Number of scales that have layers."""
        return len(self._layers)

    def handle(self, snap: ScaleSnapshot) -> None:
        """Apply ``snap`` now (stage end, or interval passed) or hold it for later."""
        now = time.monotonic()
        if snap.final:
            self._pending.pop(snap.scale, None)
            self._apply(snap)
            return
        wait = self.min_interval_s - (now - self._last_heavy)
        if wait <= 0 and not self._pending:
            self._last_heavy = now
            self._apply(snap)
            return
        self._pending[snap.scale] = snap
        if not self._timer.isActive():
            self._timer.start(max(1, int(wait * 1000)))

    def flush(self) -> None:
        """Apply held snapshots now (end of run)."""
        self._timer.stop()
        self._apply_pending()

    def show_scale(self, scale: int) -> None:
        """Show only the layers of 0-based ``scale`` (and the reference)."""
        self._shown = scale
        self.follow = False
        self._update_visibility()

    def show_all(self) -> None:
        """Show the layers of every scale."""
        self._shown = None
        self._update_visibility()

    def set_reference(self, volume: np.ndarray, voxel_size: float) -> None:
        """Add or update the ``"reference"`` layer (a map the run is compared against)."""
        data = np.asarray(volume, dtype=np.float32)
        kwargs = dict(scale=(float(voxel_size),) * data.ndim)
        if REFERENCE_NAME in self.viewer.layers:
            layer = self.viewer.layers[REFERENCE_NAME]
            if layer.data.shape == data.shape and tuple(layer.scale) == kwargs["scale"]:
                layer.data = data
                layer.reset_contrast_limits()
                return
            self.viewer.layers.remove(layer)
        rendering = {"rendering": "mip"} if data.ndim == 3 else {}
        self.viewer.add_image(data, name=REFERENCE_NAME, colormap="gray", blending="additive",
                              metadata={"voxel_size": float(voxel_size)}, **rendering, **kwargs)

    def handle_volume(self, snap: VolumeSnapshot):
        """Add or update (in place) the layer of a backprojected map; returns the layer.

        A layer of that name already there (from an earlier stage or run) gets the new data,
        voxel size and placement, keeps its visibility and display settings, and is never
        duplicated. A new one is visible only for the full map.
        """
        data = np.asarray(snap.data, dtype=np.float32)
        name = volume_layer_name(snap.name)
        voxel = float(snap.voxel_size)
        scale = (voxel,) * data.ndim
        translate = [0.0] * data.ndim
        translate[-1] = -1.15 * data.shape[-1] * voxel  # left of the scale layers
        layers = self.viewer.layers
        if name in layers:
            layer = layers[name]
            if type(layer).__name__ == "Image" and layer.data.ndim == data.ndim \
                    and not getattr(layer, "rgb", False):
                layer.data = data
                layer.scale = scale
                layer.translate = translate
                layer.metadata["voxel_size"] = voxel
                layer.metadata["stage"] = int(snap.stage)
                layer.reset_contrast_limits()
                self.n_volumes_applied += 1
                return layer
            layers.remove(layer)  # an incompatible leftover with that name
        rendering = {"rendering": "mip"} if data.ndim == 3 else {}
        layer = self.viewer.add_image(
            data, name=name, scale=scale, translate=translate, colormap="gray",
            visible=snap.name in VOLUMES_VISIBLE,
            metadata={"voxel_size": voxel, "stage": int(snap.stage)}, **rendering)
        self.n_volumes_applied += 1
        if data.ndim == 3 and not self._switched_3d:
            self._switched_3d = True
            self.viewer.dims.ndisplay = 3
        self.viewer.reset_view()  # bring the new map into the frame (once: it is reused after)
        return layer

    # ---- internals ----------------------------------------------------------------
    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, {}
        if pending:
            self._last_heavy = time.monotonic()
        for snap in pending.values():
            self._apply(snap)

    def _apply(self, snap: ScaleSnapshot) -> None:
        data = np.asarray(snap.data, dtype=np.float32)
        spec = np.asarray(snap.spectrum, dtype=np.float32)
        rgb = self.spatial_ndim == 2 and data.ndim == 3
        if rgb:
            data = np.clip(data, 0.0, 1.0)
        nd = self.spatial_ndim
        scale = (float(snap.voxel_size),) * nd
        width = data.shape[nd - 1]
        translate = [0.0] * nd
        translate[-1] = 1.15 * width * float(snap.voxel_size)
        new = snap.scale not in self._layers
        img_layer = self._ensure(scale_layer_name(snap.scale), data, scale, None, rgb=rgb,
                                 colormap="gray")
        spec_layer = self._ensure(spectrum_layer_name(snap.scale), spec, scale, translate,
                                  rgb=False, colormap="magma")
        self._layers[snap.scale] = (img_layer, spec_layer)
        self.n_applied += 1
        if nd == 3 and not self._switched_3d:
            self._switched_3d = True
            self.viewer.dims.ndisplay = 3
        if new:
            if self.follow:
                self._shown = snap.scale
            self._update_visibility()
            if len(self._layers) == 1:
                self.viewer.reset_view()
            self.scales_changed.emit(len(self._layers))

    def _ensure(self, name, data, scale, translate, *, rgb, colormap):
        layers = self.viewer.layers
        if name in layers:
            layer = layers[name]
            same_kind = (getattr(layer, "rgb", False) == rgb and layer.data.ndim == data.ndim
                         and tuple(layer.scale) == tuple(scale))
            if same_kind:
                layer.data = data
                if not rgb:
                    layer.reset_contrast_limits()
                return layer
            layers.remove(layer)  # an incompatible leftover from an earlier run
        kwargs = {"name": name, "scale": scale, "rgb": rgb}
        if translate is not None:
            kwargs["translate"] = translate
        if not rgb:
            kwargs["colormap"] = colormap
        else:
            kwargs["contrast_limits"] = (0.0, 1.0)
        if data.ndim == 3 and not rgb:
            kwargs["rendering"] = "mip"
        return self.viewer.add_image(data, **kwargs)

    def _update_visibility(self) -> None:
        for k, pair in self._layers.items():
            visible = self._shown is None or k == self._shown
            for layer in pair:
                if layer in self.viewer.layers:
                    layer.visible = visible


__all__ = ["LayerUpdater", "REFERENCE_NAME", "VOLUME_LAYER_NAMES", "scale_layer_name",
           "spectrum_layer_name", "volume_layer_name"]
