"""The settings spec is the one source of the CLI flags and the widget inputs (issue 15): every
entry is a dataclass field and a CLI flag with the same help; the fit-image presets are chosen
by the device; the engine's input checks that the widget runs at Start; remembered settings.
Headless: no Qt (the widget side is tests/test_widgets_form.py).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

from rmfn_napari.cli import build_parser
from rmfn_napari.cryoem.reconstruct import ReconstructConfig
from rmfn_napari.cryoem.reconstruct.settings_spec import RECONSTRUCT_SETTINGS
from rmfn_napari.engine.settings_spec import (
    Setting, add_arguments, check_against, overrides_from_args, parse_csv_ints,
)
from rmfn_napari.errors import InputError
from rmfn_napari.fitting.image_fitting import FitImageConfig
from rmfn_napari.fitting.presets import PRESETS as FIT_PRESETS, default_preset
from rmfn_napari.fitting.settings_spec import FIT_IMAGE_SETTINGS

SPECS = {"reconstruct": (RECONSTRUCT_SETTINGS, ReconstructConfig),
         "fit-image": (FIT_IMAGE_SETTINGS, FitImageConfig)}


def _subparser(command: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


@pytest.mark.parametrize("command", list(SPECS))
def test_every_setting_is_a_dataclass_field_and_a_cli_flag_with_its_help(command):
    settings, config_type = SPECS[command]
    names = {f.name for f in fields(config_type)}
    actions = {a.dest: a for a in _subparser(command)._actions}
    for s in settings:
        assert set(s.fields(s.value_of(config_type()))) <= names, s.name
        action = actions[s.name]
        assert s.flag in action.option_strings
        assert action.help.replace("%%", "%") == s.help  # the widget's tooltip, word for word
        assert s.help and s.label
    # the existing flag names are all still there
    flags = {f for a in _subparser(command)._actions for f in a.option_strings}
    expected = {"reconstruct": {"--box", "--preset", "--mode", "--pose-init", "--shift-range", "--epochs",
                                "--batch", "--layers", "--hidden", "--lambdas", "--lr-structure",
                                "--lr-pose", "--pose-search", "--max-particles", "--invert-contrast",
                                "--no-align", "--device", "--precision", "--compile", "--threads",
                                "--nproc", "--seed", "--resume", "--quiet", "--reference",
                                "--true-poses", "--out"},
                "fit-image": {"--method", "--schedule", "--hidden", "--lr", "--lambdas", "--downsample",
                              "--device", "--seed", "--out", "--quiet", "--preset"}}[command]
    assert expected <= flags


def test_a_setting_that_names_no_field_is_refused():
    bad = Setting("learning_rate", "--learning-rate", "lr", "schedule", "help", "float")
    with pytest.raises(ValueError, match="learning_rate"):
        check_against((*RECONSTRUCT_SETTINGS, bad), ReconstructConfig)
    dup = Setting("hidden", "--width", "width", "model", "help", "int")
    with pytest.raises(ValueError, match="duplicated"):
        check_against((*RECONSTRUCT_SETTINGS, dup), ReconstructConfig)


def test_flags_override_the_preset_and_absent_flags_keep_it():
    from rmfn_napari.cli_commands.reconstruct import config_from_args

    def config(*flags):
        return config_from_args(build_parser().parse_args(["reconstruct", "x.star", "--out", "o", *flags]))

    assert config() == ReconstructConfig.from_preset("cpu-small")
    assert config("--preset", "tiny") == ReconstructConfig.from_preset("tiny")  # tiny: no alignment
    cfg = config("--preset", "paper", "--epochs", "2,3,4", "--lambdas", "0.5", "1.5", "--box", "64",
                 "--no-align", "--compile", "--pose-search", "coarse", "--max-particles", "100",
                 "--lr-pose", "0.02", "--seed", "3")
    assert cfg == ReconstructConfig.from_preset(
        "paper", epochs_per_stage=(2, 3, 4), lambdas=(0.5, 1.5), box=64, align_for_fsc=False,
        compile_render=True, pose_search=True, search_in_finest=False, max_particles=100,
        lr_pose=0.02, seed=3)
    assert config("--layers", "4").epochs_per_stage == (10, 15, 35, 35)  # the preset's, extended
    with pytest.raises(SystemExit):
        config("--epochs", "1,x")


def test_fit_image_preset_is_chosen_by_the_device():
    from rmfn_napari.cli_commands.fit_image import config_from_args

    assert default_preset("cuda") == "paper" and default_preset("cuda:1") == "paper"
    assert default_preset("cpu") == "cpu" and default_preset("mps") == "cpu"
    import torch

    assert default_preset("auto") == ("paper" if torch.cuda.is_available() else "cpu")

    def config(*flags):
        return config_from_args(build_parser().parse_args(["fit-image", "a.png", "--out", "o", *flags]))

    cpu = config("--device", "cpu")
    assert cpu == FitImageConfig.from_preset("cpu", device="cpu")
    assert (cpu.schedule, cpu.hidden, cpu.downsample) == (
        FIT_PRESETS["cpu"]["schedule"], FIT_PRESETS["cpu"]["hidden"], FIT_PRESETS["cpu"]["downsample"])
    paper = config("--device", "cuda")
    assert (paper.preset, paper.schedule, paper.hidden, paper.downsample) == ("paper", (500, 500, 1000, 8000), 256, 2)
    mixed = config("--preset", "paper", "--device", "cpu", "--schedule", "5,5", "--hidden", "16")
    assert (mixed.preset, mixed.schedule, mixed.hidden, mixed.downsample) == ("paper", (5, 5), 16, 2)
    with pytest.raises(InputError, match="unknown preset"):
        FitImageConfig.from_preset("gpu")


def test_csv_ints_and_bool_flags():
    assert parse_csv_ints("10, 15;35", "epochs") == (10, 15, 35)
    for bad in ("", "1,0", "a,b"):
        with pytest.raises(InputError, match="epochs"):
            parse_csv_ints(bad, "epochs")
    parser = argparse.ArgumentParser()
    add_arguments(parser, RECONSTRUCT_SETTINGS)
    args = parser.parse_args([])
    assert overrides_from_args(args, RECONSTRUCT_SETTINGS) == {}  # nothing given: nothing changed
    args = parser.parse_args(["--no-align", "--invert-contrast"])
    assert overrides_from_args(args, RECONSTRUCT_SETTINGS) == {"align_for_fsc": False,
                                                              "invert_contrast": True}


# ---------------------------------------------------------------- the engine's input checks
def test_check_inputs_for_a_stack_still_to_simulate():
    from rmfn_napari.cryoem.reconstruct.preflight import check_inputs

    cfg = ReconstructConfig.from_preset("tiny")
    ds = check_inputs(cfg, simulated=(32, 2.0, "map.mrc"))
    assert (ds.box, ds.apix) == (32, 2.0)
    ds = check_inputs(ReconstructConfig.from_preset("tiny", box=16), simulated=(32, 2.0, "map.mrc"))
    assert (ds.box, ds.apix) == (16, 4.0)
    with pytest.raises(InputError, match="--box 40 is larger than the particles' 32 px box"):
        check_inputs(ReconstructConfig.from_preset("tiny", box=40), simulated=(32, 2.0, "map.mrc"))
    ref = np.zeros((32, 32, 32), np.float32)
    check_inputs(cfg, simulated=(32, 2.0, "map.mrc"), reference=ref, reference_apix=2.0)
    with pytest.raises(InputError) as err:
        check_inputs(cfg, simulated=(32, 2.0, "map.mrc"), reference=ref, reference_apix=2.4)
    assert str(err.value) == "reference map is 32^3 at 2.4 Å but the particles are 32 px at 2 Å"
    # a map already at the working box and voxel size is accepted, as the engine does
    check_inputs(ReconstructConfig.from_preset("tiny", box=16), simulated=(32, 2.0, "m.mrc"),
                 reference=np.zeros((16,) * 3, np.float32), reference_apix=4.0)
    with pytest.raises(InputError, match="reference map is 16\\^3 but the particles are 32 px"):
        check_inputs(cfg, simulated=(32, 2.0, "m.mrc"), reference=np.zeros((16,) * 3, np.float32))


# ---------------------------------------------------------------- remembered settings
def test_remembered_settings_round_trip_and_a_corrupted_file(caplog):
    from rmfn_napari._widgets.remembered import load_remembered, remembered_path, save_remembered

    path = remembered_path("reconstruct")  # conftest points XDG_CONFIG_HOME to a temp folder
    assert path == Path(os.environ["XDG_CONFIG_HOME"]) / "rmfn-napari" / "reconstruct.json"
    assert load_remembered("reconstruct") == {}
    assert save_remembered("reconstruct", {"settings": {"lambdas": (0.5, 1.5), "box": None}}) == path
    assert load_remembered("reconstruct") == {"settings": {"lambdas": [0.5, 1.5], "box": None}}
    assert [p.name for p in path.parent.iterdir()] == ["reconstruct.json"]  # no temp left
    path.write_text('{"settings": {"box": 6')  # cut short
    with caplog.at_level(logging.WARNING, logger="rmfn_napari"):
        assert load_remembered("reconstruct") == {}
    assert len(caplog.records) == 1 and str(path) in caplog.records[0].getMessage()
    assert "\n" not in caplog.records[0].getMessage()
    path.write_text("[1, 2]")  # JSON, but not settings
    assert load_remembered("reconstruct") == {}
