"""The engine's backprojected maps, and the reference, as napari layers (GUI thread only).

At each stage end a reconstruction sends its half-maps and the full backprojected map
(:class:`~rmfn_napari.engine.events.VolumeSnapshot` ``half_map_1``, ``half_map_2``, ``map``).
Each has one layer, ``"half map 1"``, ``"half map 2"``, ``"map (backprojected)"``, updated in
place at every stage end and never duplicated; it lies left of the scale layers (by 0.15 of its
width) on the run's voxel grid (Å). Only the full map is shown when first added; the half-maps
are there for inspection. When a run starts, existing layers of those names are blanked and
hidden (the user's display settings kept) and get back their visibility at their first data.
The ``"reference"`` layer holds the map a run is compared against (:func:`set_reference_layer`).
"""

from __future__ import annotations

import numpy as np

from .display_prep import display_of
from .layer_ops import assign_array, clear_stale_extent, no_selection_change, place
from .placement import SPECTRUM_GAP  # noqa: F401 - re-exported

#: Layer names of the engine's backprojected maps (``VolumeSnapshot.name`` -> layer name).
VOLUME_LAYER_NAMES = {
    "half_map_1": "half map 1",
    "half_map_2": "half map 2",
    "map": "map (backprojected)",
    "map_postprocessed": "map (postprocessed)",
}
#: Shown when first added (the half-maps are there for inspection, hidden by default).
VOLUMES_VISIBLE = {"map"}
#: Name of the layer of the map a run is compared against.
REFERENCE_NAME = "reference"


def volume_layer_name(name: str) -> str:
    """Layer name of a :class:`VolumeSnapshot` named ``name`` (unknown names as they are)."""
    return VOLUME_LAYER_NAMES.get(name, name)


class BackprojectedMapLayers:
    """The layers of one viewer's backprojected maps.

    Attributes
    ----------
    n_applied : int
        Maps put into layers so far (a test's and the benchmark's count).
    """

    def __init__(self, viewer):
        self.viewer = viewer
        self.n_applied = 0
        self._shown_at_first_data: dict[str, bool] = {}  # placeholders: visibility at their first data
        self._framed = False

    def begin_run(self) -> None:
        """A new run: its maps are not framed yet and no placeholder waits."""
        self._shown_at_first_data, self._framed = {}, False

    def blank(self, key: str, like=None, where=None, framed: bool = True) -> None:
        """Hidden placeholder of map ``key`` (an existing layer blanked); its visibility (the
        existing layer's, else :data:`VOLUMES_VISIBLE`) is restored at its first data.

        ``like`` (a zero :class:`~.display_prep.DisplayArray` of the run's maps, placed by
        ``where`` as in :meth:`apply`): the placeholder has the maps' shape and place, so their
        first data changes neither the viewer's dims nor its framing (with ``framed`` False, made
        after the view was framed, its first data reframes the view); else it is 1 voxel. A new
        layer is added without being selected."""
        if like is not None:
            data, (scale, translate) = like.data, where(like)
            self._framed = self._framed or framed
        else:
            data, scale, translate = np.zeros((1, 1, 1), np.float32), (1.0,) * 3, (0.0,) * 3
        name = volume_layer_name(key)
        layers = self.viewer.layers
        if name in layers and _is_grey_volume(layers[name]):
            layer = layers[name]
            self._shown_at_first_data[key] = bool(layer.visible)
            layer.visible = False
            place(layer, scale, translate)
            clear_stale_extent(layer)  # before too: the dims recomputed on new data read it
            layer.data = data
            clear_stale_extent(layer)
            return
        if name in layers:
            layers.remove(layers[name])
        self._shown_at_first_data[key] = key in VOLUMES_VISIBLE
        with no_selection_change(self.viewer):
            self.viewer.add_image(data, name=name, colormap="gray", rendering="mip", visible=False,
                                  scale=scale, translate=translate, metadata={})

    def apply(self, snap, where) -> bool:
        """Put a prepared VolumeSnapshot into its layer (added, or an existing one of that name
        updated keeping its visibility and display settings). ``where(arr)`` gives its
        ``(scale, translate)`` (:meth:`.placement.DataGrid.backprojected_map`: left of the
        scale layers). Returns True when the view should be
        reframed (a new layer, or this run's first data in the placeholders)."""
        arr = display_of(snap).image
        name = volume_layer_name(snap.name)
        scale, translate = where(arr)
        meta = {"voxel_size": float(snap.voxel_size), "stage": int(snap.stage)}
        layers = self.viewer.layers
        self.n_applied += 1
        if name in layers and _is_grey_volume(layers[name], arr.data.ndim):
            layer = layers[name]
            assign_array(self.viewer, layer, arr, scale, translate, colormap="gray")
            layer.metadata.update(meta)
            if snap.name in self._shown_at_first_data:  # a placeholder's first data
                layer.visible = self._shown_at_first_data.pop(snap.name)
                if not self._framed:
                    self._framed = True
                    return True  # the maps lie left of the scale layers
            return False
        if name in layers:
            layers.remove(layers[name])  # an incompatible leftover with that name
        rendering = {"rendering": "mip"} if arr.data.ndim == 3 else {}
        self.viewer.add_image(arr.data, name=name, scale=scale, translate=translate, colormap="gray",
                              contrast_limits=arr.contrast_limits, visible=snap.name in VOLUMES_VISIBLE,
                              metadata=meta, **rendering)
        return True


def set_reference_layer(viewer, volume: np.ndarray, voxel_size: float) -> None:
    """Add or update the ``"reference"`` layer (a map the run is compared against), voxel size
    in Å; a layer of that name and shape is updated in place. A new one is not selected: napari's
    selection change swapped the layer controls and repainted the canvas synchronously, 0.5 of
    the 0.8-1.4 s this took after Start under load (issue 29). It is added hidden and
    translucent, as Open run… adds it: shown additively over the sample map it was made from
    (the same volume), it doubled it and saturated the view (issue 29)."""
    data = np.ascontiguousarray(volume, dtype=np.float32)
    scale = (float(voxel_size),) * data.ndim
    if REFERENCE_NAME in viewer.layers:
        layer = viewer.layers[REFERENCE_NAME]
        if layer.data.shape == data.shape and tuple(layer.scale) == scale:
            layer.data = data
            layer.reset_contrast_limits()
            return
        viewer.layers.remove(layer)
    rendering = {"rendering": "mip"} if data.ndim == 3 else {}
    with no_selection_change(viewer):  # the user's selection stays (and no synchronous repaint)
        viewer.add_image(data, name=REFERENCE_NAME, colormap="gray", blending="translucent", scale=scale,
                         visible=False, metadata={"voxel_size": float(voxel_size)}, **rendering)


def show_central_plane(viewer, layers) -> None:
    """Move the 2D view to the central plane of the first real volume among ``layers``: index
    D/2, the rotation centre (napari's own default is the middle step, D/2 − 1 for an even D)."""
    for layer in layers:
        if layer is not None and layer in viewer.layers and layer.data.ndim == 3 and layer.data.shape[0] > 1:
            viewer.dims.set_point(0, float(layer.data_to_world((layer.data.shape[0] // 2, 0, 0))[0]))
            return


def _is_grey_volume(layer, ndim: int = 3) -> bool:
    return type(layer).__name__ == "Image" and layer.data.ndim == ndim and not getattr(layer, "rgb", False)


__all__ = ["BackprojectedMapLayers", "REFERENCE_NAME", "SPECTRUM_GAP", "set_reference_layer", "show_central_plane", "VOLUME_LAYER_NAMES", "VOLUMES_VISIBLE",
           "volume_layer_name"]
