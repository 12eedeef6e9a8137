"""How often live results may redraw the viewer: paced by what a redraw costs on this display.

A live update (new data in a visible layer) costs the GUI the plugin's handler plus the redraw
it causes, during which napari does not respond. That redraw is a few ms with a GPU's OpenGL,
but one frame of 3D volumes ray-cast by Mesa's software OpenGL (llvmpipe, Xvfb, a remote
desktop) costs 0.25–0.45 s on a 2-core CPU (benchmarks/results/gui_responsiveness.md). A fixed
interval is either sluggish on the first or a stream of freezes on the second, so the interval
is derived from the measured cost: ``interval = max(floor, cost / budget)`` — the GUI spends at
most ``budget`` (2 %) of its time blocked by in-stage redraws. With 0.3 s frames that is one live
volume update per 15 s; with 10 ms frames, the floor (1 s for volumes, 0.5 s for images).

Where OpenGL is a software renderer (:func:`is_software_opengl`: Mesa's llvmpipe, softpipe,
SwiftShader, Windows' basic renderer), even a paced 3D frame is a 0.3 s freeze, and so is every
camera move; the layer updater then leaves the view in 2D (slices through the volumes: nothing
ray-cast) while a run trains, and says so once; the viewer's 2D/3D button still shows them in 3D
(``RMFN_NAPARI_VOLUMES_3D=always`` switches to 3D anyway, ``never`` never does).

The cost of an update is measured from the start of its handler to the next pass of the event
loop: Qt delivers the canvas' repaint request (a posted event) before it runs timers, so a
zero-interval ``QTimer`` started in the handler fires after the repaint (not the static
``QTimer.singleShot(0, …)``, which Qt turns into a posted call that can run before it;
``tests/test_widgets_layers.py`` checks this with a widget whose paint takes 150 ms). The
estimate is the median of the last three measurements; a pass that also reframed the view or
made layers is not counted (it costs more, once), and the interval is capped at
:data:`CEILING_S`.
"""

from __future__ import annotations

import os
import time
from collections import deque
from functools import lru_cache

import numpy as np
from qtpy.QtCore import QObject, QTimer

#: Fraction of the GUI's time in-stage redraws may take.
REDRAW_BUDGET = 0.02
#: Interval before anything was measured, s (volumes: a software-OpenGL frame is likely).
UNMEASURED_INTERVAL_S = {2: 0.5, 3: 10.0}
#: Shortest interval, s, however cheap the redraws.
FLOOR_S = {2: 0.5, 3: 1.0}
#: Longest interval, s, however dear.
CEILING_S = 30.0
#: Substrings of the OpenGL renderer's name (lower case) of software rasterisers.
SOFTWARE_RENDERERS = ("llvmpipe", "softpipe", "swrast", "software rasterizer", "swiftshader",
                      "basic render")


@lru_cache(maxsize=1)
def opengl_renderer() -> str:
    """The OpenGL renderer's name (``GL_RENDERER``, e.g. ``"llvmpipe (LLVM 15.0.6, 256 bits)"``);
    '' when it cannot be read. Read once, in napari's OpenGL context (a private helper of napari:
    any failure gives '')."""
    try:
        from napari._vispy.utils.gl import _opengl_context
        from vispy.gloo import gl

        with _opengl_context():
            return str(gl.glGetParameter(gl.GL_RENDERER))
    except Exception:  # noqa: BLE001 (a private API: anything may change)
        return ""


def volumes_in_3d_by_default() -> bool:
    """Whether a run's volumes switch the view to 3D: ``RMFN_NAPARI_VOLUMES_3D`` ``always`` or
    ``never``; ``auto`` (the default) unless the OpenGL is a software rasteriser."""
    choice = os.environ.get("RMFN_NAPARI_VOLUMES_3D", "auto").strip().lower()
    if choice in ("always", "1", "yes"):
        return True
    if choice in ("never", "0", "no"):
        return False
    return not is_software_opengl()


def is_software_opengl(renderer: str | None = None) -> bool:
    """Whether the OpenGL renderer (``renderer``, default :func:`opengl_renderer`) is a software
    rasteriser (:data:`SOFTWARE_RENDERERS`), where a 3D frame of volumes costs 0.25–0.45 s."""
    name = (opengl_renderer() if renderer is None else renderer).lower()
    return any(key in name for key in SOFTWARE_RENDERERS)


def paced_interval_s(cost_s: float | None, spatial_ndim: int, floor_s: float | None = None,
                     budget: float = REDRAW_BUDGET) -> float:
    """Seconds between two live updates whose measured cost is ``cost_s`` (None: not measured
    yet) for images (``spatial_ndim`` 2) or volumes (3); ``floor_s`` overrides the floor."""
    nd = 3 if spatial_ndim == 3 else 2
    floor = FLOOR_S[nd] if floor_s is None else float(floor_s)
    if cost_s is None:
        return max(floor, UNMEASURED_INTERVAL_S[nd])
    return min(CEILING_S, max(floor, float(cost_s) / float(budget)))


class RedrawCost(QObject):
    """Measures live updates: call :meth:`started` at the start of an update's handler."""

    def __init__(self, keep: int = 3, parent: QObject | None = None):
        super().__init__(parent)
        self._recent: deque[float] = deque(maxlen=int(keep))
        self._pending: float | None = None
        self._next_pass = QTimer(self)  # a real zero-interval timer: after the posted repaint
        self._next_pass.setSingleShot(True)
        self._next_pass.setInterval(0)
        self._next_pass.timeout.connect(self._done)

    def started(self) -> None:
        """An update begins now; its cost is known at the next event-loop pass."""
        if self._pending is not None:  # one measurement at a time
            return
        self._pending = time.perf_counter()
        self._next_pass.start()

    def discard(self) -> None:
        """Do not count the update in progress (it did more than a live update does)."""
        self._pending = None
        self._next_pass.stop()

    def _done(self) -> None:
        if self._pending is not None:
            self._recent.append(time.perf_counter() - self._pending)
        self._pending = None

    @property
    def estimate_s(self) -> float | None:
        """The median of the last measured costs, s (None before the first)."""
        return float(np.median(self._recent)) if self._recent else None

    def forget(self, _event=None) -> None:
        """Drop the measurements (e.g. the view switched between 2D and 3D: a napari event)."""
        self._recent.clear()
        self.discard()


__all__ = ["CEILING_S", "FLOOR_S", "REDRAW_BUDGET", "RedrawCost", "SOFTWARE_RENDERERS", "UNMEASURED_INTERVAL_S",
           "is_software_opengl", "opengl_renderer", "paced_interval_s", "volumes_in_3d_by_default"]
