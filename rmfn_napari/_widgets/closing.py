"""Closing napari, or a widget's dock, while a run goes on (GUI thread only).

Closing with a run going asks first (:func:`ask_about_closing`): **Stop and save** (the run
stops after its current step and writes its outputs, as Stop does, and releases the output
folder's lock ``.rmfn.lock``), **Keep running until done**, or **Cancel** (nothing closes).
With either of the first two, the window (or dock) closes only once every run's worker has
ended: napari never closes on a worker still writing. While it waits the window stays up and
responsive (a nested event loop, as a modal dialog runs one), the run panel says what it waits
for, and the layers are no longer updated.

How napari is hooked (napari 0.9 has no plugin hook on closing; checked on 0.9.2):

* the window: :class:`CloseGuard`, an event filter on napari's ``QMainWindow``
  (``viewer.window._qt_window``, no public name) that sees every ``QCloseEvent`` before
  napari's ``closeEvent`` — the window's ×, File ▸ Close Window, File ▸ Exit — and also the one
  ``viewer.close()`` would send; it ignores the event on Cancel and holds it until the runs
  ended otherwise. ``viewer.close()`` tears the canvas down before that event, so the guard
  asks earlier there, in a wrapper it puts on that viewer's ``window.close``. (napari's own
  ``TaskStatusManager`` only offers yes/no on a user's close, and does not wait for the task.)
* the dock: napari's dock title bar calls the dock's ``destroyOnClose()`` on its ×; the widget
  puts a guarded version on its own dock (:func:`guard_dock`), as the plot docks put
  ``close`` there.
"""

from __future__ import annotations

import weakref

from qtpy.QtCore import QEvent, QEventLoop, QObject
from qtpy.QtWidgets import QMainWindow, QMessageBox, QWidget

#: Answers of :func:`ask_about_closing`.
STOP_AND_SAVE, KEEP_RUNNING, CANCEL = "stop", "keep", "cancel"


def _alive(obj) -> bool:
    try:
        obj.objectName()
    except RuntimeError:  # the C++ object is gone
        return False
    return obj is not None


def ask_about_closing(parent: QWidget | None, what: str, runs: list[str]) -> str:
    """Ask what to do with the runs going on when ``what`` ("napari", "this dock") closes (a
    modal question). Returns :data:`STOP_AND_SAVE`, :data:`KEEP_RUNNING` or :data:`CANCEL`.
    The widgets keep this function in an attribute (``ask_about_closing``), so tests answer it."""
    box = QMessageBox(parent)
    box.setIcon(QMessageBox.Icon.Question)
    box.setWindowTitle("A run is going on")
    box.setText(f"Close {what} while {'a run is' if len(runs) == 1 else 'runs are'} going on?")
    box.setInformativeText("\n".join(runs) + "\n\nStop and save writes the outputs as Stop does; "
                           f"{what} closes when they are written.")
    stop = box.addButton("Stop and save", QMessageBox.ButtonRole.AcceptRole)
    keep = box.addButton("Keep running until done", QMessageBox.ButtonRole.ActionRole)
    cancel = box.addButton(QMessageBox.StandardButton.Cancel)
    box.setDefaultButton(stop)
    box.setEscapeButton(cancel)
    box.exec()
    clicked = box.clickedButton()
    return STOP_AND_SAVE if clicked is stop else KEEP_RUNNING if clicked is keep else CANCEL


def wait_for_runs(widgets) -> None:
    """Run a nested event loop until no widget of ``widgets`` has a live worker (events go on
    being delivered: the runs' last events, repaints, the user's clicks)."""
    def busy():
        return [w for w in widgets if _alive(w) and w.runner.busy]

    if not busy():
        return
    loop = QEventLoop()

    def check(*_args):
        if not busy():
            loop.quit()

    for w in busy():
        w.runner.finished.connect(check)
    check()
    if busy():
        loop.exec()


def confirm_close(widgets, what: str) -> bool:
    """Whether ``what`` may close now, asking when a widget of ``widgets`` runs; with
    "Stop and save" or "Keep running until done", returns True once every run has ended."""
    busy = [w for w in widgets if _alive(w) and w.runner.busy]
    if not busy:
        return True
    answer = busy[0].ask_about_closing(busy[0], what, [w.describe_run() for w in busy])
    if answer not in (STOP_AND_SAVE, KEEP_RUNNING):
        for w in busy:
            w.panel.set_status(f"Still running: {what} was not closed.")
        return False
    for w in busy:
        w.finish_before_closing(stop=answer == STOP_AND_SAVE, what=what)
    wait_for_runs(busy)
    return True


class CloseGuard(QObject):
    """The close question for one napari window: an event filter on its ``QMainWindow``.
    Get it with :meth:`for_viewer`; widgets register with :meth:`add`."""

    OBJECT_NAME = "rmfn_close_guard"

    def __init__(self, main: QMainWindow, window=None):
        super().__init__(main)
        self.setObjectName(self.OBJECT_NAME)
        self.main = main
        self._widgets: list[weakref.ref] = []
        self._waiting = False
        main.installEventFilter(self)
        if window is not None and callable(getattr(window, "close", None)):
            self._guard_window_close(window)

    def _guard_window_close(self, window) -> None:
        """``viewer.close()`` tears napari's canvas down before its QMainWindow gets the close
        event; so the question comes first there, in napari's ``Window.close``."""
        window_ref, guard_ref, close_window = weakref.ref(window), weakref.ref(self), type(window).close

        def close(*args, **kwargs):  # weak references only: no cycle keeps napari's window alive
            guard, win = guard_ref(), window_ref()
            if guard is not None and _alive(guard) and not guard._ask("napari"):
                return None
            return close_window(win, *args, **kwargs) if win is not None else None

        window.close = close

    def _ask(self, what: str) -> bool:
        if self._waiting:  # closed again while waiting: it closes when the runs end
            return False
        self._waiting = True
        try:
            return confirm_close(self.widgets, what)
        finally:
            self._waiting = False

    @classmethod
    def for_viewer(cls, viewer) -> CloseGuard | None:
        """The guard of ``viewer``'s window, made the first time (None without a Qt window)."""
        from .plot_docks import _main_window

        main = _main_window(viewer)
        if main is None:
            return None
        found = main.findChild(cls, cls.OBJECT_NAME)
        if found is not None:
            return found
        return cls(main, getattr(getattr(viewer, "__wrapped__", viewer), "window", None))

    @property
    def widgets(self) -> list[QWidget]:
        """The registered widgets still alive."""
        live = [ref() for ref in self._widgets]
        return [w for w in live if w is not None and _alive(w)]

    def add(self, widget: QWidget) -> None:
        """Ask about ``widget``'s runs when the window closes (held weakly: the guard, a child
        of the window, must not keep the widget, hence the viewer, alive)."""
        if not any(w is widget for w in self.widgets):
            self._widgets.append(weakref.ref(widget))

    def eventFilter(self, obj, event):  # noqa: N802 - Qt name
        """Hold a ``QCloseEvent`` of the window while a run goes on (see the module doc)."""
        try:
            if event.type() != QEvent.Type.Close or obj is not getattr(self, "main", None):
                return False
            if not self._ask("napari"):
                event.ignore()
                return True
        except RuntimeError:  # the guard is being deleted with the window
            pass
        return False


def guard_dock(widget: QWidget) -> bool:
    """Make the × of ``widget``'s napari dock ask first (:func:`confirm_close`). Returns whether
    a dock was found (napari's ``QtViewerDockWidget``, whose title bar calls ``destroyOnClose``)."""
    dock = widget.parentWidget()
    while dock is not None and not hasattr(dock, "destroyOnClose"):
        dock = dock.parentWidget()
    if dock is None or getattr(dock, "_rmfn_close_guarded", False):
        return dock is not None
    dock_ref, widget_ref, destroy = weakref.ref(dock), weakref.ref(widget), type(dock).destroyOnClose

    def destroy_on_close():  # weak references only: no cycle keeps the dock or the viewer alive
        d, w = dock_ref(), widget_ref()
        if d is not None and (w is None or confirm_close([w], "this dock")):
            destroy(d)

    dock.destroyOnClose = destroy_on_close
    dock._rmfn_close_guarded = True
    return True


__all__ = ["CANCEL", "CloseGuard", "KEEP_RUNNING", "STOP_AND_SAVE", "ask_about_closing",
           "confirm_close", "guard_dock", "wait_for_runs"]
