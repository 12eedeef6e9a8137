"""The widgets' settings forms (issue 15), under Xvfb: made from the settings spec (every entry an
input with the CLI's help as tooltip; a config set into the form reads back identical; the CLI
and the form give the same config), folding sections that fit a small screen with readable
numbers, remembered settings, the engine's checks at Start (the CLI's words), particle stacks
never offered as references, the fit-image presets, and the resume hook.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from rmfn_napari._widgets import FitImageWidget, ReconstructWidget  # noqa: E402
from rmfn_napari._widgets.reconstruct import (  # noqa: E402
    DATASET_STAR, REF_FILE, REF_NONE,
)
from rmfn_napari.cryoem.reconstruct import ReconstructConfig  # noqa: E402
from rmfn_napari.cryoem.reconstruct.settings_spec import RECONSTRUCT_SETTINGS  # noqa: E402
from rmfn_napari.fitting.image_fitting import FitImageConfig  # noqa: E402
from rmfn_napari.fitting.settings_spec import FIT_IMAGE_SETTINGS  # noqa: E402

#: Largest height (px) of a settings form with every section folded (preset + 4-5 headers).
FOLDED_FORM_MAX_HEIGHT = 200
#: The default dock width the learning rates must be readable at (px).
DOCK_WIDTH = 350


@pytest.fixture(scope="module")
def particles_2A(tmp_path_factory):
    """16 particles simulated from the 1OL5 sample (32 px at 2 Å)."""
    from rmfn_napari._sample_data import map_path
    from rmfn_napari.cryoem.simulate import simulate_particles

    out = tmp_path_factory.mktemp("sim_2A")
    return simulate_particles(map_path("1ol5_32"), out, n=16, snr=1.0, seed=0, overwrite=True)


def _inputs(widget, setting):
    return [getattr(widget, attr) for attr in setting.attrs]


@pytest.mark.parametrize("kind", ["reconstruct", "fit-image"])
def test_every_setting_is_an_input_with_the_cli_help_as_tooltip(make_napari_viewer, kind):
    viewer = make_napari_viewer()
    widget_type, settings = {"reconstruct": (ReconstructWidget, RECONSTRUCT_SETTINGS),
                             "fit-image": (FitImageWidget, FIT_IMAGE_SETTINGS)}[kind]
    w = widget_type(viewer)
    form_inputs = w.settings_form.input_widgets()
    locked = w.form_widgets()
    for s in settings:
        for widget in _inputs(w, s):
            assert widget in form_inputs and widget in locked, s.name
            assert widget.toolTip() == s.help, s.name
    # every input of the form, the dataset rows included, has a tooltip, and so has its label
    for widget in locked:
        assert widget.toolTip(), widget
    for s in settings:
        label = w.settings_form.row_label(_inputs(w, s)[0].parentWidget()
                                          if s.kind == "pair" else _inputs(w, s)[0])
        assert label is not None and label.toolTip() == s.help and label.text() == s.label


def _non_default_reconstruct_config() -> ReconstructConfig:
    return ReconstructConfig.from_preset(
        "paper", mode="full-scale", n_layers=4, hidden=96, lambdas=(0.5, 1.25),
        epochs_per_stage=(1, 2, 3, 4), batch_size=123, lr_structure=0.0025, lr_pose=3e-5,
        pose_init="random", pose_search=True, search_in_finest=False, box=48,
        shift_range_px=1.5, invert_contrast=True, device="cpu", seed=7, precision="bf16",
        max_particles=500, align_for_fsc=False, compile_render=True)


def test_a_config_set_into_the_form_reads_back_identical_and_equals_the_cli(make_napari_viewer):
    from rmfn_napari.cli import build_parser
    from rmfn_napari.cli_commands.reconstruct import config_from_args

    w = ReconstructWidget(make_napari_viewer())
    cfg = _non_default_reconstruct_config()
    w.set_config(cfg)
    assert w.config() == cfg
    assert w.lr_pose.text() == "3e-05" and w.box.value() == 48 and w.invert_contrast.isChecked()
    # the same values as flags give the same settings
    argv = ["reconstruct", "x.star", "--out", "o", "--preset", "paper", "--mode", "full-scale",
            "--layers", "4", "--hidden", "96", "--lambdas", "0.5", "1.25", "--epochs", "1,2,3,4",
            "--batch", "123", "--lr-structure", "0.0025", "--lr-pose", "3e-5", "--pose-init", "random",
            "--pose-search", "coarse", "--box", "48", "--shift-range", "1.5", "--invert-contrast",
            "--device", "cpu", "--seed", "7", "--precision", "bf16", "--max-particles", "500",
            "--no-align", "--compile"]
    assert config_from_args(build_parser().parse_args(argv)) == w.config()
    # fit-image too
    f = FitImageWidget(make_napari_viewer())
    fit = FitImageConfig.from_preset("paper", method="bacon", schedule=(3, 4), hidden=20, lr=0.0125,
                                     lambdas=(0.25, 1.0), downsample=3, device="cpu", seed=5)
    f.set_config(fit)
    from dataclasses import replace

    assert f.config() == replace(fit, snapshot_interval_s=0.5)


def test_presets_fill_the_form_and_keep_the_run_settings(make_napari_viewer):
    w = ReconstructWidget(make_napari_viewer())
    w.device.setCurrentText("cpu")
    w.seed.setValue(11)
    w.preset.setCurrentText("paper")
    cfg = w.config()
    paper = ReconstructConfig.from_preset("paper")
    assert (cfg.epochs_per_stage, cfg.hidden, cfg.batch_size) == (paper.epochs_per_stage, 128, 600)
    assert (cfg.device, cfg.seed) == ("cpu", 11)
    w.preset.setCurrentText("tiny")
    assert w.config().align_for_fsc is False and not w.align_for_fsc.isChecked()

    f = FitImageWidget(make_napari_viewer())
    assert f.preset.currentText() == "cpu"  # no CUDA device here: the CPU preset
    assert f.config() == FitImageConfig.from_preset("cpu", snapshot_interval_s=0.5)  # every input
    assert ReconstructWidget(make_napari_viewer()).config() == ReconstructConfig.from_preset("cpu-small")
    assert (f.schedule.text(), f.hidden.value(), f.downsample.value()) == ("100,100,200,400", 64, 4)
    f.preset.setCurrentText("paper")
    assert (f.schedule.text(), f.hidden.value(), f.downsample.value()) == ("500,500,1000,8000", 256, 2)
    assert f.config().preset == "paper"


def _width_of_text(spin) -> tuple[int, int]:
    """(width the spin box's line edit has, width its text needs), px."""
    edit = spin.lineEdit()
    return edit.width(), edit.fontMetrics().horizontalAdvance(spin.text())


def test_fields_are_readable_at_the_dock_width_and_the_folded_form_is_short(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    f = FitImageWidget(viewer)
    for widget in (w, f):
        qtbot.addWidget(widget)
        widget.settings_form.set_folded(False)
        widget.resize(DOCK_WIDTH, 1400)
        widget.show()
        qtbot.waitExposed(widget)
    w.preset.setCurrentText("paper")
    qtbot.wait(50)
    assert w.lr_structure.text() == "0.001" and w.lr_pose.text() == "0.01"
    assert f.lr.text() == "0.005"
    for spin in (w.lr_structure, w.lr_pose, f.lr, w.lambda1, w.lambda2):
        assert spin.isVisible()
    # every number on show, the simulation's and the box's "stack's size" too, shows its text whole
    from qtpy.QtWidgets import QAbstractSpinBox

    w.box.setValue(0)
    shown = [s for widget in (w, f) for s in widget.findChildren(QAbstractSpinBox) if s.isVisible()]
    assert {w.sim_n, w.sim_snr, w.sim_max_shift, w.sim_defocus_min, w.sim_astig_max, w.box} <= set(shown)
    for spin in shown:
        have, need = _width_of_text(spin)
        assert have >= need, (spin.text(), spin.toolTip()[:30], have, need)
    # folded: the preset and one header per section
    for widget in (w, f):
        widget.settings_form.set_folded(True)
        qtbot.wait(20)  # the layouts recompute on the next event loop pass
        height = widget.settings_form.minimumSizeHint().height()
        assert height < FOLDED_FORM_MAX_HEIGHT, height
        assert not widget.lr_structure.isVisible() if widget is w else not widget.lr.isVisible()
        widget.settings_form.set_folded(False)
        qtbot.wait(20)
        open_height = widget.settings_form.minimumSizeHint().height()
        assert open_height > height + 100  # folding is what makes it short
    # the default: the rare sections folded
    fresh = ReconstructWidget(viewer)
    assert [n for n, s in fresh.settings_form.sections.items() if not s.expanded] == [
        "model", "run", "advanced"]


# ---------------------------------------------------------------- remembered settings
def _capture_reconstruct(monkeypatch) -> dict:
    import rmfn_napari.cryoem.reconstruct as engine

    seen: dict = {}

    def fake(dataset, config, control, **kwargs):
        seen.update(dataset=Path(dataset), config=config, **kwargs)
        yield from ()

    monkeypatch.setattr(engine, "reconstruct", fake)
    return seen


def test_settings_are_remembered_at_start_and_restored(make_napari_viewer, qtbot, tmp_path,
                                                        particles_2A, monkeypatch, caplog):
    from rmfn_napari._widgets.remembered import remembered_path

    seen = _capture_reconstruct(monkeypatch)
    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    cfg = ReconstructConfig.from_preset("tiny", epochs_per_stage=(2, 1, 1), lr_structure=0.004,
                                        box=16, seed=3, device="cpu", lambdas=(0.4, 1.5))
    w.set_config(cfg)
    w.dataset_kind.setCurrentText(DATASET_STAR)
    w.star_path.edit.setText(str(particles_2A.star))
    w.true_poses_path.edit.setText(str(particles_2A.true_poses))
    w.reference.setCurrentText(REF_NONE)
    w.out_dir.set_path(str(tmp_path / "run1"))
    with qtbot.waitSignal(w.runner.finished, timeout=30000):
        assert w.start() is not None
    assert seen["config"] == cfg
    assert remembered_path("reconstruct").is_file()

    again = ReconstructWidget(viewer)  # "the next time napari starts"
    assert again.config() == cfg
    assert again.dataset_kind.currentText() == DATASET_STAR
    assert again.star_path.path() == str(particles_2A.star)
    assert again.true_poses_path.path() == str(particles_2A.true_poses)

    # a corrupted file: one warning line, the defaults, no traceback
    remembered_path("reconstruct").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="rmfn_napari"):
        fresh = ReconstructWidget(viewer)
    assert fresh.config() == ReconstructConfig.from_preset("cpu-small")
    assert len(caplog.records) == 1 and "ignoring the remembered settings" in caplog.records[0].getMessage()


def test_fit_image_settings_are_remembered(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    import rmfn_napari._widgets.fit_image as fit_module

    monkeypatch.setattr(fit_module, "fit_image", lambda *a, **k: iter(()))
    viewer = make_napari_viewer()
    viewer.add_image(np.random.default_rng(0).random((32, 32)).astype(np.float32), name="target")
    f = FitImageWidget(viewer)
    f.preset.setCurrentText("paper")
    f.schedule.setText("7,8")
    f.method.setCurrentText("res-bacon")
    f.device.setCurrentText("cpu")
    f.out_dir.set_path(str(tmp_path / "fit"))
    with qtbot.waitSignal(f.runner.finished, timeout=30000):
        assert f.start() is not None
    again = FitImageWidget(viewer)
    cfg = again.config()
    assert (cfg.preset, cfg.schedule, cfg.method, cfg.hidden) == ("paper", (7, 8), "res-bacon", 256)


# ---------------------------------------------------------------- the engine's checks at Start
def _cli_error(capsys, argv) -> str:
    from rmfn_napari.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("rmfn reconstruct: error: ") and "\n" not in err, err
    return err[len("rmfn reconstruct: error: "):]


def test_start_refuses_what_the_cli_refuses_with_its_words(make_napari_viewer, tmp_path, capsys,
                                                           particles_2A, monkeypatch):
    """A 2.4 Å reference for 2 Å particles: the CLI's error, word for word, in the status line,
    before any run (the engine never starts)."""
    from rmfn_napari._reader import read_mrc
    from rmfn_napari._sample_data import map_path

    ref_24 = map_path("4ake_32")  # 32³ at 2.4 Å
    cli_words = _cli_error(capsys, ["reconstruct", str(particles_2A.star), "--reference", str(ref_24),
                                    "--preset", "tiny", "--device", "cpu", "--quiet",
                                    "--out", str(tmp_path / "cli")])
    assert "reference map is 32^3 at 2.4 Å but the particles are 32 px at 2 Å" in cli_words

    seen = _capture_reconstruct(monkeypatch)
    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    w.preset.setCurrentText("tiny")
    w.device.setCurrentText("cpu")
    w.dataset_kind.setCurrentText(DATASET_STAR)
    w.star_path.edit.setText(str(particles_2A.star))
    w.reference.setCurrentText(REF_FILE)
    w.reference_path.edit.setText(str(ref_24))
    w.out_dir.set_path(str(tmp_path / "gui"))
    assert w.start() is None
    assert w.panel.status.text() == cli_words
    # the same map as a layer (its voxel size from the header): refused too, same words
    data, kwargs, _ = read_mrc(ref_24)
    viewer.add_image(data, **kwargs)
    w.reference.setCurrentText(kwargs["name"])
    assert w.start() is None
    assert w.panel.status.text() in cli_words and "2.4 Å" in w.panel.status.text()
    # a box the particles cannot be cropped to: the CLI's words again
    box_words = _cli_error(capsys, ["reconstruct", str(particles_2A.star), "--box", "40", "--preset",
                                    "tiny", "--quiet", "--out", str(tmp_path / "cli2")])
    w.reference.setCurrentText(REF_NONE)
    w.box.setValue(40)
    assert w.start() is None and w.panel.status.text() == box_words
    assert seen == {} and not (tmp_path / "gui").exists()


def test_particle_stacks_are_not_offered_as_references(make_napari_viewer, particles_2A):
    from rmfn_napari._reader import read_mrc, read_star_stack
    from rmfn_napari._sample_data import map_path

    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    data, kwargs, _ = read_star_stack(particles_2A.star)
    viewer.add_image(data, **{**kwargs, "name": "stack (star)"})
    mrcs = sorted(Path(particles_2A.star).parent.glob("*.mrcs"))[0]
    data, kwargs, _ = read_mrc(mrcs)
    viewer.add_image(data, **{**kwargs, "name": "stack (mrcs)"})
    data, kwargs, _ = read_mrc(map_path("1ol5_32"))
    viewer.add_image(data, **{**kwargs, "name": "a map"})
    items = [w.reference.itemText(i) for i in range(w.reference.count())]
    assert "a map" in items
    assert "stack (star)" not in items and "stack (mrcs)" not in items


# ---------------------------------------------------------------- the resume hook
def test_resume_without_a_checkpoint_names_it(make_napari_viewer, tmp_path):
    """Resume continues the run saved in the folder (tests/test_widgets_runs.py runs it end to
    end); a folder without a checkpoint is one line naming the file."""
    from rmfn_napari.errors import InputError

    w = ReconstructWidget(make_napari_viewer())
    with pytest.raises(InputError, match="no such checkpoint") as info:
        w.build_source(str(tmp_path / "run"), resume=True)
    assert "checkpoint.pt" in str(info.value)


def test_layer_count_and_image_size_follow_the_cli_rules(make_napari_viewer, tmp_path, capsys):
    """Two rules the CLI and the form used to apply differently: ``--layers N`` alone extends
    the epochs (the form refused a changed layer count), and the smallest training image (the
    CLI refused under 8 px a side, the widget under 4, in other words)."""
    import imageio.v3 as iio

    from rmfn_napari.cli import build_parser, main
    from rmfn_napari.cli_commands.reconstruct import config_from_args

    viewer = make_napari_viewer()
    w = ReconstructWidget(viewer)
    w.preset.setCurrentText("cpu-small")  # epochs 10,15,35
    w.n_layers.setValue(4)
    assert w.epochs.text() == "10,15,35,35"
    cli = config_from_args(build_parser().parse_args(["reconstruct", "p.star", "--out", "o", "--layers", "4"]))
    assert w.config().epochs_per_stage == cli.epochs_per_stage == (10, 15, 35, 35)
    w.n_layers.setValue(2)
    assert w.epochs.text() == "10,15"

    # a 12 x 12 image at downsample 2 (6 px): refused by both, in the same words
    image = (np.random.default_rng(0).random((12, 12)) * 255).astype(np.uint8)
    iio.imwrite(tmp_path / "small.png", image)
    assert main(["fit-image", str(tmp_path / "small.png"), "--downsample", "2",
                 "--out", str(tmp_path / "out")]) == 2
    cli_words = capsys.readouterr().err.strip().split("small.png: ", 1)[-1]
    f = FitImageWidget(viewer)
    viewer.add_image(image, name="small")
    f.layer_combo.setCurrentText("small")
    f.downsample.setValue(2)
    f.out_dir.set_path(str(tmp_path / "gui"))
    assert f.start() is None
    assert f.panel.status.text().endswith(cli_words), (f.panel.status.text(), cli_words)
    assert "too small for --downsample 2" in cli_words


def test_layer_picker_and_file_fields_are_magicgui(make_napari_viewer, qtbot, tmp_path):
    """Issue 29 item 8: the fit-image layer picker is magicgui's napari layer combo box (its
    value is the Layer, only 2D image layers offered, following the viewer's layer list), and
    the reconstruct widget's file fields are magicgui FileEdits whose button opens a file dialog
    titled with the field's caption and fills the field."""
    from magicgui.widgets import ComboBox, FileEdit

    viewer = make_napari_viewer()
    f = FitImageWidget(viewer)
    assert isinstance(f.layer_picker, ComboBox) and f.layer_combo is f.layer_picker.native
    assert f.layer_picker.value is None
    a = viewer.add_image(np.zeros((8, 8)), name="a")
    viewer.add_image(np.zeros((3, 8, 8)), name="stack")  # 3D: not offered
    b = viewer.add_image(np.zeros((8, 8)), name="b")
    assert f.layer_picker.choices == (a, b)
    f.layer_combo.setCurrentText("b")
    assert f.layer_picker.value is b
    viewer.layers.remove(a)
    assert f.layer_picker.choices == (b,) and f.layer_picker.value is b
    viewer.layers.remove(b)
    assert f.layer_picker.choices == () and f.layer_picker.value is None

    w = ReconstructWidget(viewer)
    field = w.star_path
    assert isinstance(field.file_edit, FileEdit) and field.edit is field.file_edit.line_edit.native
    star = tmp_path / "particles.star"
    asked = []

    def dialog(mode, caption, start_path, filter):  # stands in for the Qt file dialog
        asked.append((str(mode.value), caption, filter))
        return str(star)

    field.file_edit._show_file_dialog = dialog
    field.button.click()
    assert asked == [("r", "Particle STAR file", "RELION STAR (*.star)")]
    assert field.path() == str(star)
    field.edit.setText("")
    assert field.path() == "" and field.file_edit.value is None  # empty is no file, not "."
