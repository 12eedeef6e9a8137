"""napari image-layer operations of the layer updater (GUI thread): add or reuse a layer by
name, put a worker-prepared :class:`~.display_prep.DisplayArray` into it setting only what
changed, and workarounds (precomputed contrast limits; napari 0.9's stale extent of a hidden layer whose
data changed; a placeholder added without selecting it)."""

from __future__ import annotations

from contextlib import contextmanager, nullcontext

import numpy as np

from .display_prep import DisplayArray


def assign_array(viewer, layer, arr: DisplayArray, scale, translate, colormap):
    """Put ``arr`` into ``layer`` (or a new layer where ``layer`` was removed or is of
    another kind); only what changed is set. Returns the layer holding it."""
    if layer not in viewer.layers or getattr(layer, "rgb", False) != arr.rgb \
            or layer.data.ndim != arr.data.ndim:
        if layer in viewer.layers:
            viewer.layers.remove(layer)
        return ensure_image_layer(viewer, layer.name, arr.data, scale, translate, rgb=arr.rgb,
                                  colormap=colormap, limits=arr.contrast_limits)
    place(layer, scale, translate)
    if not layer.visible:
        clear_stale_extent(layer)  # before too: the dims recomputed on new data read it
    with (same_extent(viewer, layer) if layer.data.shape == arr.data.shape else nullcontext()):
        layer.data = arr.data
    if not arr.rgb:
        set_contrast(layer, arr.contrast_limits)
    if not layer.visible:
        clear_stale_extent(layer)
    return layer


def ensure_image_layer(viewer, name, data, scale, translate, *, rgb, colormap, limits=None,
                       blank=False):
    """The layer ``name`` holding ``data`` (a compatible existing one reused, else added;
    ``blank``: a placeholder, hidden, which also replaces a leftover of another kind)."""
    layers = viewer.layers
    if name in layers:
        layer = layers[name]
        if blank and type(layer).__name__ == "Image":
            layer.visible = False
            if getattr(layer, "rgb", False) != rgb or layer.data.ndim != data.ndim:
                layers.remove(layer)  # an image of another kind: made anew below
            else:
                place(layer, scale, translate)
                clear_stale_extent(layer)  # before too: the dims recomputed on new data read it
                layer.data = data
                clear_stale_extent(layer)
                return layer
        elif getattr(layer, "rgb", False) == rgb and layer.data.ndim == data.ndim \
                and type(layer).__name__ == "Image":
            place(layer, scale, translate)
            layer.data = data
            if not rgb and limits is not None:
                set_contrast(layer, limits)
            return layer
        layers.remove(layer)  # an incompatible leftover from an earlier run
    kwargs = {"name": name, "scale": scale, "translate": translate, "rgb": rgb,
              "visible": False}
    if not rgb:
        kwargs["colormap"] = colormap
        kwargs["contrast_limits"] = limits if limits is not None else (0.0, 1.0)
    else:
        kwargs["contrast_limits"] = (0.0, 1.0)
    if data.ndim == 3 and not rgb:
        kwargs["rendering"] = "mip"
    with no_selection_change(viewer) if blank else nullcontext():
        return viewer.add_image(data, **kwargs)


def warm_units() -> None:
    """Set up pint's unit registry now, if nothing has yet. napari builds it lazily, inside the
    first layer anyone adds (it parses pint's unit definitions: 0.4 s on a 2-core CPU, 1.4 s
    under load, measured in issue 29): with an empty viewer that was the reference layer added
    right after Start. Called when a run widget is made (on the GUI thread: the registry's
    lazy set-up is not thread-safe)."""
    try:
        import pint

        pint.get_application_registry().pixel  # noqa: B018 - the attribute access builds it
    except Exception:  # noqa: BLE001 - another pint: napari pays it at its first layer, as before
        pass


@contextmanager
def no_selection_change(viewer):
    """A context in which a layer added to ``viewer`` is not selected (napari selects every new
    layer, which swaps the layer controls shown: ~0.1 s of GUI time per layer on a 2-core CPU
    under load, measured in issue 29), so adding hidden placeholders leaves the user's
    selection alone. Uses napari's ``_activate_on_insert`` flag of its layer list; where
    napari names it otherwise, layers are selected as usual."""
    layers = viewer.layers
    before = getattr(layers, "_activate_on_insert", None)
    if not isinstance(before, bool):
        yield
        return
    layers._activate_on_insert = False
    try:
        yield
    finally:
        layers._activate_on_insert = before


def place(layer, scale, translate) -> None:
    """Set ``layer``'s scale and translate where they differ (each change makes napari
    recompute the viewer's dims)."""
    if not np.allclose(layer.scale, scale):
        layer.scale = scale
    if not np.allclose(layer.translate, translate):
        layer.translate = translate


@contextmanager
def batched_layer_changes(viewer):
    """A context in which napari's canvas does not rebuild its scene graph after each layer
    shown or hidden — napari 0.9 rebuilds it and draws the canvas synchronously each time
    (~10 ms with a dozen layers here) — but once, at the end. napari's public
    ``LayerList.batched_update`` does this too, but also runs ``gc.collect()`` (~0.25 s with
    torch loaded), so the canvas's own pause flag is used; where napari names things
    otherwise, nothing is batched."""
    canvas = getattr(getattr(getattr(viewer, "window", None), "_qt_viewer", None), "canvas", None)
    update = getattr(canvas, "_update_scenegraph", None)
    if canvas is None or not callable(update) or getattr(canvas, "_pause_scene_graph", None) is not False:
        yield  # no canvas (headless), another napari, or already paused by napari itself
        return
    before = list(viewer.layers)
    shown = [bool(layer.visible) for layer in before]
    canvas._pause_scene_graph = True
    try:
        yield
    finally:
        canvas._pause_scene_graph = False
        now = list(viewer.layers)
        if len(now) != len(before) or any(a is not b for a, b in zip(now, before)):
            # added, removed or moved: napari's own clean-up first (it skipped it while paused)
            clean = getattr(canvas, "_clean_and_update_scenegraph", None)
            (clean if callable(clean) else update)()
        elif [bool(layer.visible) for layer in now] != shown:
            update()


def same_extent(viewer, layer):
    """A context in which new data of the *same shape* in ``layer`` does not make the viewer
    recompute its dims from every layer's extent (napari's ``_on_layers_change``, ~13 ms a
    call on a 2-core CPU, most of a live update's own work): the extent, hence the dims, is
    unchanged. Where napari names it otherwise, nothing is blocked."""
    update = getattr(viewer, "_on_layers_change", None)
    return layer.events.data.blocker(update) if callable(update) else nullcontext()


def clear_stale_extent(layer) -> None:
    """napari 0.9 keeps a hidden layer's cached extent when its data change (and showing it
    refreshes with ``extent=False``): drop the cache, or the layer's extent and the view's
    bounds stay those of its old data. Call it before new data too: the viewer recomputes
    its dims from the extents when the data change."""
    clear = getattr(layer, "_clear_extent", None)
    if callable(clear):
        clear()


def set_contrast(layer, limits) -> None:
    """Set contrast limits computed in the worker (widening the slider's range when needed)."""
    lo, hi = (float(v) for v in limits)
    rlo, rhi = layer.contrast_limits_range
    if lo < rlo or hi > rhi:
        layer.contrast_limits_range = (min(lo, rlo), max(hi, rhi))
    layer.contrast_limits = (lo, hi)


__all__ = ["assign_array", "batched_layer_changes", "clear_stale_extent", "ensure_image_layer", "no_selection_change",
           "place", "warm_units", "same_extent", "set_contrast"]
