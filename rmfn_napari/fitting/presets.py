"""Named defaults of an image fit (``rmfn fit-image --preset``, the widget's preset combo).

``paper`` is the paper's §5 protocol (a GPU: 512² images trained at 256², width 256, 10,000
steps). ``cpu`` is sized so that the example in docs/cli.md (the 512² astronaut) finishes in well
under a minute on a 2-core CPU (33 s): the image trained at 128², width 64, 800 steps. Without ``--preset``
the device chooses (:func:`default_preset`): a CUDA device gets ``paper``, anything else ``cpu``.
"""

from __future__ import annotations

#: Steps per stage of the paper's protocol (one stage per scale).
PAPER_SCHEDULE = (500, 500, 1000, 8000)

PRESETS: dict[str, dict] = {
    # the paper's §5 settings, for a GPU
    "paper": dict(schedule=PAPER_SCHEDULE, hidden=256, lr=5e-3, downsample=2),
    # the 512² astronaut in 33 s on a 2-core CPU (OMP_NUM_THREADS=2), PSNR 23.0 dB on the
    # original grid: `rmfn fit-image sample_data/images/astronaut.png --out DIR`
    "cpu": dict(schedule=(100, 100, 200, 400), hidden=64, lr=5e-3, downsample=4),
}


def default_preset(device: str = "auto") -> str:
    """``"paper"`` when ``device`` is (or ``auto`` resolves to) a CUDA device, else ``"cpu"``."""
    name = (device or "auto").lower()
    if name.startswith("cuda"):
        return "paper"
    if name == "auto":
        import torch

        return "paper" if torch.cuda.is_available() else "cpu"
    return "cpu"


__all__ = ["PAPER_SCHEDULE", "PRESETS", "default_preset"]
