"""The Fit image widget's "Resume…" (issue 29 item 7): a fit stopped in the widget continues
in its folder with its own settings (the form is filled from the checkpoint) and ends with
every step done; another image in the layer picker is refused in one line."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("napari")

from rmfn_napari._widgets import FitImageWidget  # noqa: E402


def _image(n=32):
    y, x = np.mgrid[0:n, 0:n] / n
    return np.clip(0.5 + 0.25 * np.sin(2 * np.pi * 3 * x) * np.cos(2 * np.pi * 2 * y), 0, 1).astype(np.float32)


def test_resume_continues_a_stopped_fit_with_its_own_settings(make_napari_viewer, qtbot, tmp_out):
    viewer = make_napari_viewer()
    viewer.add_image(_image(), name="target")
    w = FitImageWidget(viewer)
    viewer.window.add_dock_widget(w, name="Fit image (2D)")
    w.layer_combo.setCurrentText("target")
    w.schedule.setText("10,10,20")
    w.hidden.setValue(16)
    w.downsample.setValue(1)
    w.device.setCurrentText("cpu")
    w.out_dir.set_path(str(tmp_out))
    assert not w.panel.resume_button.isHidden()

    with qtbot.waitSignal(w.runner.finished, timeout=60000):
        w.panel.start_button.click()
        qtbot.waitUntil(lambda: w.steps_done >= 12, timeout=30000)  # in stage 2
        w.panel.stop_button.click()
    stopped_at = w.runner.finished_event.steps_done
    assert w.runner.finished_event.stopped and 12 <= stopped_at < 40
    assert (tmp_out / "checkpoint.pt").is_file()

    w.hidden.setValue(32)  # the form changed since: Resume continues the run's own settings
    w.choose_folder = lambda parent, caption, start: str(tmp_out)
    w.ask_about_results = lambda *a: pytest.fail("resume continues in its folder: no question")
    with qtbot.waitSignal(w.runner.finished, timeout=60000):
        w.panel.resume_button.click()
    assert w.runner.failure is None, w.runner.failure
    done = w.runner.finished_event
    assert not done.stopped and done.steps_done == 40
    assert w.hidden.value() == 16 and w.schedule.text().replace(" ", "") == "10,10,20"
    # where it continued, by the run's step count (the stop may land in stage 2 or 3: the fit
    # runs on while the stop is asked; a fresh-clone CI run stopped it in stage 3)
    assert any("--resume: continuing at stage" in line and f"(step {stopped_at} of 40)" in line
               for line in w.log.lines()), w.log.lines()

    # another image: refused in one line, in the status
    other = _image()[::-1].copy()
    viewer.add_image(other, name="other")
    w.layer_combo.setCurrentText("other")
    with qtbot.waitSignal(w.runner.finished, timeout=60000):
        w.panel.resume_button.click()
    status = w.panel.status.text()
    assert "the hash of the image's pixels was" in status and "\n" not in status
