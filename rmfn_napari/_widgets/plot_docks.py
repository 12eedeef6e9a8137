"""One FSC dock and one pose-error dock per napari viewer (GUI thread only).

:class:`PlotDocks` owns a viewer's :class:`~rmfn_napari._widgets.plots.FSCPlot` and
:class:`~rmfn_napari._widgets.plots.PoseHistogram`. Every widget that draws into them gets
the same two plots from :meth:`PlotDocks.for_viewer`, so closing and reopening a widget never
adds a second pair of docks.

- :meth:`PlotDocks.show` docks both on the right, tabbed together (one visible at a time, so
  the pair is never taller than one plot), listed in the Window menu; a dock the user closed
  (its × hides it; the Window menu shows it again) or that was removed is shown again.
- :meth:`PlotDocks.acquire` registers a widget that uses the plots; when the last such widget
  is gone (deleted, or its own dock removed from the window, e.g. by its ×), both plot docks
  are removed from the window too. The plots themselves are kept (hidden, children of the main
  window) so a widget opened again later draws into them.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QDockWidget, QMainWindow, QWidget

from .plots import FSCPlot, PoseHistogram

#: Dock names (also the Window menu entries).
FSC_DOCK_NAME = "FSC"
POSE_DOCK_NAME = "pose errors"
#: Share of the dock column's height given to the widget above the plots when they are docked.
USER_SHARE = 0.55


def _alive(obj) -> bool:
    """Whether the C++ side of a Qt object still exists."""
    if obj is None:
        return False
    try:
        obj.objectName()
    except RuntimeError:  # "wrapped C/C++ object ... has been deleted"
        return False
    return True


def _main_window(viewer) -> QMainWindow | None:
    """napari's QMainWindow of ``viewer`` (None without one). A widget opened from the Plugins
    menu gets the viewer wrapped in napari's ``PublicOnlyProxy``, which hides private names and
    wraps what it returns; tabifying docks needs the real QMainWindow (napari has no public name
    for it), so the proxy is unwrapped here, and only here."""
    viewer = getattr(viewer, "__wrapped__", viewer)
    window = getattr(viewer, "window", None)
    qt_window = getattr(window, "_qt_window", None)  # napari's QMainWindow (no public name)
    return qt_window if isinstance(qt_window, QMainWindow) and _alive(qt_window) else None


class PlotDocks(QObject):
    """The FSC and pose-error plots of one viewer and their two docks.

    Get it with :meth:`for_viewer` (never construct it for a viewer yourself). Attributes:
    ``fsc_plot``, ``pose_plot`` (the plots), ``fsc_dock``, ``pose_dock`` (their docks, None
    until :meth:`show`), ``users`` (the widgets that acquired them).
    """

    OBJECT_NAME = "rmfn_plot_docks"

    def __init__(self, viewer, main_window: QMainWindow | None = None):
        super().__init__(main_window)
        self.setObjectName(self.OBJECT_NAME)
        self.viewer = getattr(viewer, "__wrapped__", viewer)  # the real viewer (see _main_window)
        self.fsc_plot = FSCPlot()
        self.pose_plot = PoseHistogram()
        self.fsc_dock: QDockWidget | None = None
        self.pose_dock: QDockWidget | None = None
        self.users: list[QWidget] = []

    # ---- one per viewer ---------------------------------------------------------------
    @classmethod
    def for_viewer(cls, viewer) -> PlotDocks:
        """The viewer's PlotDocks, made the first time (a child of the viewer's main window,
        so it lives as long as the window). A viewer without a Qt window gets a new one each
        call (its plots cannot be docked)."""
        main = _main_window(viewer)
        if main is None:
            return cls(viewer)
        found = main.findChild(cls, cls.OBJECT_NAME)
        return found if found is not None else cls(viewer, main)

    # ---- docks ------------------------------------------------------------------------
    @property
    def docked(self) -> bool:
        """Whether both plots are in docks of the window (shown or closed by the user)."""
        return self._dock_of(self.fsc_plot) is not None and self._dock_of(self.pose_plot) is not None

    def show(self) -> None:
        """Dock both plots (tabbed together, on the right, in the Window menu), or show again
        the ones the user closed or that were removed; the FSC tab is raised."""
        window = getattr(self.viewer, "window", None)
        main = _main_window(self.viewer)
        if main is None or not hasattr(window, "add_dock_widget"):
            return
        added = False
        for attr, plot, name in (("fsc_dock", self.fsc_plot, FSC_DOCK_NAME),
                                 ("pose_dock", self.pose_plot, POSE_DOCK_NAME)):
            dock = self._dock_of(plot)
            if dock is None:
                dock = window.add_dock_widget(plot, name=name, area="right",
                                              add_vertical_stretch=False,
                                              menu=getattr(window, "window_menu", None))
                # × hides the dock (the Window menu shows it again) instead of removing it
                dock.destroyOnClose = dock.close
                plot.show()  # hidden by remove(): a re-docked plot stays hidden otherwise
                added = True
            setattr(self, attr, dock)
        if added:
            main.tabifyDockWidget(self.fsc_dock, self.pose_dock)
            self._share_height_with_users(main)
        for dock in (self.pose_dock, self.fsc_dock):
            dock.show()
        self.fsc_dock.raise_()

    def _share_height_with_users(self, main: QMainWindow) -> None:
        """Give the users' docks above the plots :data:`USER_SHARE` of the column's height
        (Qt would otherwise hand most of it to the plots' expanding canvases)."""
        area = main.dockWidgetArea(self.fsc_dock)
        docks = [d for d in (self._enclosing_dock(u) for u in self.users)
                 if d is not None and main.dockWidgetArea(d) == area and not d.isFloating()]
        if docks:
            height = max(main.height(), 400)
            main.resizeDocks([docks[0], self.fsc_dock],
                             [int(USER_SHARE * height), int((1 - USER_SHARE) * height)],
                             Qt.Orientation.Vertical)

    @staticmethod
    def _enclosing_dock(widget: QWidget) -> QDockWidget | None:
        parent = widget.parent() if _alive(widget) else None
        while parent is not None and not isinstance(parent, QDockWidget):
            parent = parent.parent()
        return parent

    def remove(self) -> None:
        """Remove both docks from the window; the plots are kept (hidden) for a later
        :meth:`show`."""
        window = getattr(self.viewer, "window", None)
        main = _main_window(self.viewer)
        for plot in (self.fsc_plot, self.pose_plot):
            dock = self._dock_of(plot)
            if dock is not None and window is not None and main is not None:
                window.remove_dock_widget(dock)
            if main is not None and _alive(plot):
                plot.setParent(main)  # not a stray top-level window; dies with the viewer
                plot.hide()
        self.fsc_dock = self.pose_dock = None

    def _dock_of(self, plot: QWidget) -> QDockWidget | None:
        """The window's dock holding ``plot`` (None when it is not docked)."""
        main = _main_window(self.viewer)
        if main is None or not _alive(plot):
            return None
        for dock in main.findChildren(QDockWidget):
            if _alive(dock) and dock.widget() is plot:
                return dock
        return None

    # ---- users ------------------------------------------------------------------------
    def acquire(self, widget: QWidget) -> None:
        """Register ``widget`` as a user of the plots: when every user is gone (deleted, or
        taken out of the window), the docks are removed (:meth:`remove`)."""
        if any(u is widget for u in self.users):
            return
        self.users.append(widget)
        widget.installEventFilter(self)
        widget.destroyed.connect(lambda *_a, w=widget: self.release(w))

    def release(self, widget: QWidget) -> None:
        """``widget`` no longer uses the plots; the docks go with the last user."""
        before = len(self.users)
        self.users = [u for u in self.users if u is not widget]
        if before and not self.users:
            self.remove()

    def eventFilter(self, obj, event):  # noqa: N802 - Qt name
        """A user taken out of the window (its dock removed: parent set to None) is released
        once the event loop confirms it is still out (a reparenting passes through None)."""
        if event.type() == QEvent.Type.ParentChange and obj.parent() is None:
            QTimer.singleShot(0, lambda w=obj: self._release_if_out(w))
        return False

    def _release_if_out(self, widget: QWidget) -> None:
        if not _alive(widget) or widget.parent() is None:
            self.release(widget)


__all__ = ["FSC_DOCK_NAME", "POSE_DOCK_NAME", "PlotDocks"]
