"""Settings remembered between napari sessions: one JSON file per dock widget under the user's
config folder (``$XDG_CONFIG_HOME/rmfn-napari/<task>.json``, else
``~/.config/rmfn-napari/<task>.json``), written atomically at each Start and read when the
widget is created. A file that cannot be read or parsed is ignored with one warning line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..engine.atomic import atomic_path

log = logging.getLogger("rmfn_napari")

__all__ = ["load_remembered", "remembered_path", "save_remembered"]


def remembered_path(task: str) -> Path:
    """Where the settings of widget ``task`` ("reconstruct", "fit-image") are kept."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "rmfn-napari" / f"{task}.json"


def load_remembered(task: str) -> dict:
    """The remembered settings of ``task`` ({} when there are none or the file is unusable)."""
    path = remembered_path(task)
    if not path.exists():
        return {}
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(values, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        log.warning("rmfn-napari: ignoring the remembered settings in %s (%s)", path,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        return {}
    return values


def save_remembered(task: str, values: dict) -> Path | None:
    """Write ``values`` (JSON-able; tuples become lists) as ``task``'s remembered settings,
    all or nothing; a folder that cannot be written gives one warning line. Returns the path
    (None when it could not be written)."""
    path = remembered_path(task)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(values, indent=1, sort_keys=True), encoding="utf-8")
    except (OSError, TypeError, ValueError) as exc:
        log.warning("rmfn-napari: could not remember the settings in %s (%s)", path, exc)
        return None
    return path
