"""napari's reader preference for rMFN run folders (napari-facing; imports napari only when
called).

How napari 0.9 picks the reader of a folder (File ▸ Open Folder, drag-and-drop, and
``viewer.open(path, plugin=None)``): a reader preference from the user's settings
(``settings.plugins.extension2reader``, fnmatch patterns matched against the folder's real path
with a trailing separator) wins; else, when exactly one installed reader accepts folders
(npe2 ``accepts_directories``), that one; else napari asks ("Choose reader", the readers sorted
by display name: "napari builtins" before "rMFN"), and ``viewer.open`` raises
``MultipleReaderError``. An npe2 reader cannot claim a folder by its content (``filename_patterns``
are not consulted for folders) and cannot declare a priority, so the one lever a plugin has is
the preference itself: :func:`prefer_rmfn_reader` saves, for one run folder, the entry the
dialog's "Remember this choice for folders labeled as ..." box would save.
"""

from __future__ import annotations

import os

#: The plugin's name in napari (npe2 manifest), as napari's reader preferences store it.
PLUGIN_NAME = "rmfn-napari"


def folder_preference_key(folder: str | os.PathLike) -> str:
    """The key napari's reader preferences (``settings.plugins.extension2reader``) use for one
    folder: its real path with a trailing separator, what napari's "Choose reader" dialog
    saves for "Remember this choice for folders labeled as ..." and matches on opening."""
    key = os.path.realpath(str(folder))
    return key if key.endswith(os.sep) else key + os.sep


def prefer_rmfn_reader(folder: str | os.PathLike) -> bool:
    """Make rMFN napari's reader for ``folder`` (a run folder), so that File ▸ Open Folder and
    drag-and-drop open it with this plugin instead of asking which reader to use.

    napari 0.9 chooses a folder's reader from the user's preferences only (an npe2 reader
    cannot claim a folder by its content, and the dialog lists the readers that accept
    folders by name, napari's builtins first); this saves the same per-folder preference the
    dialog's "remember" box does. A preference the user already saved for the folder is kept.
    Returns whether a preference now names rMFN; False without napari (no-op)."""
    try:
        from napari.settings import get_settings
    except ImportError:  # the CLI without napari
        return False
    readers = get_settings().plugins.extension2reader
    key = folder_preference_key(folder)
    if key not in readers:
        get_settings().plugins.extension2reader = {**readers, key: PLUGIN_NAME}
    return get_settings().plugins.extension2reader[key] == PLUGIN_NAME


__all__ = ["PLUGIN_NAME", "folder_preference_key", "prefer_rmfn_reader"]
