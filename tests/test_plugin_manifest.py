"""The npe2 manifest: valid, found through the installed entry point, complete, and its
commands point at importable functions."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
from npe2 import PluginManifest

REPO_ROOT = Path(__file__).resolve().parent.parent
MANIFEST = REPO_ROOT / "napari.yaml"

EXPECTED_SAMPLES = {
    "1ol5_64": "1OL5 map (64³, 1 Å)",
    "4ake_64": "4AKE map (64³, 1.2 Å)",
    "1ol5_32": "1OL5 map (32³, 2 Å)",
    "astronaut": "test image (astronaut)",
    "particles": "simulated particle stack (small)",
}
EXPECTED_WIDGETS = {
    "Reconstruct (cryo-EM)": "rmfn_napari._widgets:ReconstructWidget",
    "Fit image (2D)": "rmfn_napari._widgets:FitImageWidget",
}


@pytest.fixture(scope="module")
def manifest() -> PluginManifest:
    return PluginManifest.from_file(MANIFEST)


def test_manifest_file_validates(manifest):
    """from_file runs npe2's schema validation (pydantic); a re-validation of the dump too."""
    PluginManifest.model_validate(manifest.model_dump())
    assert manifest.name == "rmfn-napari"
    assert manifest.display_name == "rMFN"


def test_npe2_validate_cli_on_installed_plugin():
    """`npe2 validate rmfn-napari` (this interpreter's npe2) finds the manifest through the
    package's `napari.manifest` entry point, wherever the package is installed."""
    code = "import sys; from npe2.cli import app; sys.argv = ['npe2', 'validate', 'rmfn-napari']; app()"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=Path(__file__).parent)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_package_manifest_is_the_top_level_file():
    """The manifest npe2 loads from the installed package is the repository's napari.yaml."""
    mf = PluginManifest.from_distribution("rmfn-napari")
    assert mf.name == "rmfn-napari"
    pkg_yaml = Path(importlib.import_module("rmfn_napari").__file__).parent / "napari.yaml"
    assert pkg_yaml.is_file()
    assert pkg_yaml.read_text(encoding="utf-8") == MANIFEST.read_text(encoding="utf-8")


def test_contributions_complete(manifest):
    c = manifest.contributions
    samples = {s.key: s.display_name for s in c.sample_data}
    for key, title in EXPECTED_SAMPLES.items():
        assert samples.get(key) == title, (key, samples)
    widgets = {w.display_name: w.command for w in c.widgets}
    commands = {cmd.id: cmd.python_name for cmd in c.commands}
    for title, python_name in EXPECTED_WIDGETS.items():
        assert commands[widgets[title]] == python_name
    (reader,) = c.readers
    assert commands[reader.command] == "rmfn_napari._reader:get_reader"
    for ext in ("*.mrc", "*.mrcs", "*.map", "*.star"):
        assert ext in reader.filename_patterns
    (writer,) = c.writers
    assert commands[writer.command] == "rmfn_napari._writer:write_mrc"
    assert ".mrc" in writer.filename_extensions
    assert [str(t) for t in writer.layer_types] == ["image"]


@pytest.mark.parametrize("module", ["_reader", "_writer", "_sample_data"])
def test_own_commands_import(manifest, module):
    """Every reader/writer/sample command resolves to a callable (widgets are checked by
    their own tests)."""
    for cmd in manifest.contributions.commands:
        mod, _, attr = cmd.python_name.partition(":")
        if mod == f"rmfn_napari.{module}":
            assert callable(getattr(importlib.import_module(mod), attr)), cmd.python_name


def test_widgets_in_plugins_menu(make_napari_viewer):
    """napari lists both widgets under Plugins ▸ rMFN."""
    viewer = make_napari_viewer()
    menu = viewer.window.plugins_menu
    sub = [a.menu() for a in menu.actions()
           if a.menu() is not None and a.text().replace("&", "") == "rMFN"]
    assert sub, [a.text() for a in menu.actions()]
    titles = {a.text().replace("&&", "&") for a in sub[0].actions()}
    assert set(EXPECTED_WIDGETS) <= titles, titles
