"""``--filters sine|gabor`` (issue 30): the choice is one entry of the settings spec, so the CLI
flag and the widgets' field exist for both tasks, and the flag reaches the network that the
engine builds (fit-image and reconstruct). The Gabor band rule itself is tested in
tests/test_model_bands.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from rmfn_napari.cli import main as cli_main
from rmfn_napari.cryoem.reconstruct import ReconstructConfig
from rmfn_napari.cryoem.reconstruct.settings_spec import RECONSTRUCT_SETTINGS
from rmfn_napari.errors import InputError
from rmfn_napari.fitting.image_fitting import FitImageConfig
from rmfn_napari.fitting.settings_spec import FIT_IMAGE_SETTINGS
from rmfn_napari.model import ResidualMFN
from rmfn_napari.model.filters import SineFilter
from rmfn_napari.model.gabor import GaborFilter


def _spy(monkeypatch, module) -> list:
    """Record every network ``module`` builds."""
    built = []

    class Spy(ResidualMFN):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(module, "ResidualMFN", Spy)
    return built


@pytest.mark.parametrize("settings", [FIT_IMAGE_SETTINGS, RECONSTRUCT_SETTINGS])
def test_filters_is_a_choice_of_the_spec(settings):
    (s,) = [s for s in settings if s.name == "filters"]
    assert s.flag == "--filters" and s.choices == ("sine", "gabor") and s.section == "model"


@pytest.mark.parametrize("flag, kind", [([], SineFilter), (["--filters", "gabor"], GaborFilter),
                                        (["--filters", "sine"], SineFilter)])
def test_fit_image_flag_reaches_the_network(tmp_path, monkeypatch, flag, kind):
    import imageio.v3 as iio

    from rmfn_napari.fitting import image_fitting

    built = _spy(monkeypatch, image_fitting)
    src = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    iio.imwrite(src, rng.integers(0, 255, (32, 32), dtype=np.uint8))
    code = cli_main(["fit-image", str(src), "--schedule", "2,2", "--hidden", "8", "--downsample", "2",
                     "--device", "cpu", "--out", str(tmp_path / "out"), "--quiet", *flag])
    assert code == 0
    (net,) = built
    assert all(type(f) is kind for f in net.filters)
    if kind is GaborFilter:  # the windows' centres over the image: [-0.5, 0.5]^2
        assert net.window_radius == 0.5
        assert max(float(f.centre.abs().max()) for f in net.filters) <= 0.5


def test_reconstruct_flag_reaches_the_network(tmp_path, monkeypatch):
    from rmfn_napari.cryoem.reconstruct import driver
    from rmfn_napari.cryoem.simulate import simulate_particles

    from analytic_maps import write_sample_map_16

    map_path = write_sample_map_16(tmp_path / "map16.mrc")
    sim = simulate_particles(map_path, tmp_path / "sim", n=24, snr=1.0, seed=1)
    built = _spy(monkeypatch, driver)
    code = cli_main(["reconstruct", str(sim.star), "--out", str(tmp_path / "run"), "--preset", "tiny",
                     "--epochs", "1,1,1", "--device", "cpu", "--no-align", "--quiet", "--filters", "gabor"])
    assert code == 0
    assert built and all(isinstance(f, GaborFilter) for net in built for f in net.filters)
    # the particle's extent: the mask radius (box fraction) of the tiny preset
    radius = ReconstructConfig.from_preset("tiny").mask_radius or 0.45
    assert built[0].window_radius == pytest.approx(radius)


def test_an_unknown_filter_kind_is_refused_in_one_line(tmp_path, capsys):
    with pytest.raises(InputError, match="--filters must be one of sine, gabor"):
        FitImageConfig(filters="wavelet").validate()
    with pytest.raises(InputError, match="--filters must be one of sine, gabor"):
        ReconstructConfig(filters="wavelet").validate()
    with pytest.raises(SystemExit) as exc:
        cli_main(["fit-image", str(tmp_path / "x.png"), "--filters", "wavelet", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "invalid choice: 'wavelet'" in capsys.readouterr().err


@pytest.mark.gui
def test_the_widgets_offer_the_choice_and_it_reaches_the_config(make_napari_viewer):
    pytest.importorskip("napari")
    from rmfn_napari._widgets import FitImageWidget, ReconstructWidget

    viewer = make_napari_viewer()
    for widget_type in (FitImageWidget, ReconstructWidget):
        w = widget_type(viewer)
        combo = w.filters
        assert [combo.itemText(i) for i in range(combo.count())] == ["sine", "gabor"]
        assert w.config().filters == "sine"
        combo.setCurrentIndex(1)
        assert w.config().filters == "gabor"
