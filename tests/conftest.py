"""Shared test set-up for rmfn-napari. Keep it small; put fixtures for one area in its test file.

GUI tests
    napari's pytest plugin (auto-registered by napari) provides ``make_napari_viewer`` and
    pytest-qt provides ``qtbot``. The display is a real X server: pytest-xvfb starts one Xvfb
    for the session (size/depth in pyproject's ``[tool.pytest.ini_options]``) and vispy renders
    with Mesa's software OpenGL (llvmpipe) through GLX. ``QT_QPA_PLATFORM=offscreen`` is *not*
    used, because the vispy canvas needs OpenGL. Any test that uses ``make_napari_viewer`` or
    ``qtbot`` is marked ``gui`` automatically, so ``pytest -m "not gui"`` runs the headless part.
    Without a display the GUI tests are skipped with a reason, except under ``CI=true``,
    where they run (and fail) so that a broken display can never pass silently.

Fixtures
    ``_seed`` (autouse)  numpy's and torch's global RNGs are seeded with 0 before every test.
    ``_private_home`` (autouse)  default output folders and remembered settings in a temp folder.
    ``tmp_out``          a fresh output directory for a test (a ``tmp_path`` sub-folder).
    ``artifacts_dir``    ``test_artifacts/`` at the repository root (gitignored), for files a
                         person should look at after a run (screenshots, plots).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

# --- display: Xvfb + Mesa, set before anything imports Qt ---------------------------------
if sys.platform.startswith("linux"):
    if os.environ.get("QT_QPA_PLATFORM", "") in ("", "offscreen", "minimal"):
        os.environ["QT_QPA_PLATFORM"] = "xcb"  # a real X connection (Xvfb), so GL works
    os.environ.setdefault("LIBGL_ALWAYS_SOFTWARE", "1")  # Mesa llvmpipe, same on every machine

# --- Qt binding: qtpy (napari) and pytest-qt must use the same one -------------------------
# PyQt6 unless QT_API names another (scripts/run_tests.sh runs the GUI tests again with
# QT_API=pyqt5). pytest-qt reads PYTEST_QT_API when it configures, after this file is imported.
os.environ.setdefault("QT_API", "pyqt6")
os.environ.setdefault("PYTEST_QT_API", os.environ["QT_API"])

GUI_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy", "qtbot", "qapp", "viewer_model"}


def _have_display() -> bool:
    if not sys.platform.startswith("linux"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def pytest_collection_modifyitems(config, items):
    """Mark tests that need Qt as ``gui``; skip them when there is no display (outside CI)."""
    in_ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    skip = pytest.mark.skip(
        reason="no display: install xvfb (pytest-xvfb starts it) or run `bash scripts/run_tests.sh`")
    for item in items:
        if GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)
        if item.get_closest_marker("gui") and not _have_display() and not in_ci:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    """Seed numpy's and torch's global random generators with 0 before each test."""
    np.random.seed(0)
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        pass
    else:
        torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True)
def _private_home(tmp_path_factory, monkeypatch):
    """Keep every test away from the real home: the widgets' default output folders
    (``$RMFN_NAPARI_HOME``) and their remembered settings (under ``$XDG_CONFIG_HOME``) go to a
    fresh temporary folder per test."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("RMFN_NAPARI_HOME", str(home / "rmfn-napari"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    # the 3D view for volumes as with a GPU (Xvfb's llvmpipe would keep them in 2D:
    # tests/test_widgets_layers.py tests that path)
    monkeypatch.setenv("RMFN_NAPARI_VOLUMES_3D", "always")
    yield


@pytest.fixture(autouse=True)
def _close_answer(request, monkeypatch):
    """A GUI test that closes a viewer with a run still going (its teardown does) gets
    "Stop and save" from the close question instead of a modal dialog that would hang the
    suite; a test that answers it sets its widget's ``ask_about_closing``."""
    if GUI_FIXTURES & set(request.fixturenames):
        monkeypatch.setattr("rmfn_napari._widgets.closing.ask_about_closing",
                            lambda *_args: "stop")
    yield


@pytest.fixture
def tmp_out(tmp_path) -> Path:
    """A fresh, empty output directory for one test."""
    out = tmp_path / "out"
    out.mkdir()
    return out


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    """``test_artifacts/`` at the repository root (gitignored): files for a person to inspect."""
    out = REPO_ROOT / "test_artifacts"
    out.mkdir(exist_ok=True)
    return out
