"""Human words in the GUI (issue 29 item 5): the engine's messages with numbers (the stage's
data, the stage summary that run.log keeps as JSON) are shown as sentences with units in the
status line and the log panel; run.log and the CLI keep the engine's text."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("qtpy")

from rmfn_napari._widgets.log_panel import event_log_line, log_sentence  # noqa: E402
from rmfn_napari.engine.events import Log  # noqa: E402

STAGE_DATA = Log("  data: 300 x 25 spectra and CTFs, 0 MiB, kept on the cpu", about="stage_data",
                 values={"stage": 2, "n_images": 300, "n_frequencies": 25, "per_rank": False,
                         "mib": 0.06, "device": "cpu", "resident": True})
SUMMARY = {"stage": 2, "scale": 2, "epochs_done": 3, "seconds": 12.34, "band_cycles": 5.333,
           "band_resolution_A": 12.0, "gold_standard_resolution_A": 9.12,
           "gold_standard_unmasked_A": None, "fsc_resolution_A_scale1": None,
           "fsc_resolution_A_scale2": 8.51, "pose_median_deg": 4.23, "pose_frac_under_5deg": 0.71,
           "pose_frac_under_10deg": 0.9, "shift_median_px": 0.314}
STAGE_SUMMARY = Log("stage 2: " + json.dumps(SUMMARY), about="stage_summary", values=SUMMARY)


def test_the_stage_data_line_is_a_sentence():
    assert log_sentence(STAGE_DATA) == ("Stage 2 data: 300 particle images, 25 frequencies each "
                                        "(spectra and CTFs), 0.1 MiB, kept in CPU memory.")
    over = Log("x", about="stage_data", values={**STAGE_DATA.values, "resident": False,
                                                "per_rank": True, "mib": 1500.0})
    assert log_sentence(over) == ("Stage 2 data: 300 particle images on each process, 25 "
                                  "frequencies each (spectra and CTFs), 1500 MiB, computed batch "
                                  "by batch (over the memory budget).")


def test_the_stage_summary_is_a_sentence_not_json():
    want = ("Stage 2 done: scale 2, 3 epochs in 12.3 s, band 5.3 cycles/box (12.0 Å); gold "
            "standard 9.1 Å (unmasked —); FSC against the reference scale 1 —, scale 2 8.5 Å; "
            "pose error median 4.2°, 71% under 5°; offset error median 0.31 px.")
    assert log_sentence(STAGE_SUMMARY) == want
    assert event_log_line(STAGE_SUMMARY) == ("info", want)  # the log panel's line
    assert event_log_line(Log("  plain words ")) == ("info", "plain words")
    # numbers from another version that do not fit: the engine's own text
    assert log_sentence(Log("stage 1: {}", about="stage_summary", values={})) == "stage 1: {}"


def test_a_reconstruction_says_its_numbers_in_sentences_and_keeps_json_in_run_log(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from analytic_maps import write_sample_map_16

    from rmfn_napari.cryoem.reconstruct import ReconstructConfig, reconstruct
    from rmfn_napari.cryoem.simulate import simulate_particles

    sim = simulate_particles(write_sample_map_16(tmp_path / "map16.mrc"), tmp_path / "sim", n=80,
                             snr=0.5, seed=3)
    cfg = ReconstructConfig.from_preset("tiny", epochs_per_stage=(1, 1), batch_size=40,
                                        device="cpu", snapshot_interval_s=1e9, n_layers=2,
                                        align_for_fsc=False, seed=4, pose_init="random")
    out = tmp_path / "run"
    logs = [ev for ev in reconstruct(sim.star, cfg, out_dir=out) if isinstance(ev, Log)]
    by_kind = {}
    for ev in logs:
        by_kind.setdefault(ev.about, []).append(ev)
    assert [ev.values["stage"] for ev in by_kind["stage_summary"]] == [1, 2]
    assert [ev.values["stage"] for ev in by_kind["stage_data"]] == [1, 2]
    for ev in by_kind["stage_summary"] + by_kind["stage_data"]:
        shown = log_sentence(ev)
        assert shown.startswith(f"Stage {ev.values['stage']} ") and "{" not in shown, shown
        assert shown != ev.message.strip()
    run_log = (out / "run.log").read_text()
    assert "stage 2: {" in run_log and "Stage 2 done" not in run_log  # JSON stays in files
