"""Typed events yielded by every engine run (image fitting, cryo-EM reconstruction).

A run is a generator of these events. The CLI prints them; the napari widgets turn them
into layer and plot updates on the GUI thread. Events are small, except
:class:`ScaleSnapshot`, which carries one scale's array and its spectrum and is sent at
stage ends and at a bounded rate during a stage.

Conventions: ``stage`` and ``scale`` are 0-based inside events (stage k trains scale k in a
coarse-to-fine run), also a ``"scale"`` entry of :attr:`Metrics.values`; arrays are numpy,
float32, indexed ``[y, x]`` (images) or ``[z, y, x]`` (volumes). Everything a user reads is
1-based: files (``scale_1.tif``, ``scale_1.mrc``), layers ("rMFN scale 1"), the CLI's lines
(``stage 1``, ``scale=1``) and ``metrics.json`` (``"scale1": {"scale": 1}``); the writers and
printers add 1. (:attr:`StageFinished.summary` mirrors ``metrics.json`` and is 1-based.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Event:
    """Base class of all engine events."""


@dataclass
class RunStarted(Event):
    """A run began. ``task`` is ``"fit-image"`` or ``"reconstruct"``.

    ``snapshot_shape`` is the shape of every :class:`ScaleSnapshot` ``data`` the run will send
    (all scales share one grid: ``(box, box, box)`` voxels for a reconstruction, ``(H, W)`` or
    ``(H, W, C)`` training pixels for an image) and ``snapshot_voxel_size`` their
    ``voxel_size`` (Å, or original pixels per training pixel); ``()`` when not known. A viewer
    makes its layers at that shape before the run trains.
    """

    task: str
    n_stages: int
    total_steps: int
    device: str
    config: dict[str, Any] = field(default_factory=dict)
    snapshot_shape: tuple[int, ...] = ()
    snapshot_voxel_size: float = 1.0


@dataclass
class StageStarted(Event):
    """Stage ``stage`` (0-based) began; it trains scale ``scale`` (0-based; None: the same as
    ``stage``, as in every coarse-to-fine run — a full-scale run's one stage trains the finest)
    for ``steps`` steps.

    ``band_cycles`` is the scale's band limit in cycles per box (per axis).
    """

    stage: int
    n_stages: int
    steps: int
    band_cycles: float
    scale: int | None = None

    @property
    def trained_scale(self) -> int:
        """0-based scale this stage trains."""
        return self.stage if self.scale is None else int(self.scale)


@dataclass
class Progress(Event):
    """One optimisation step finished.

    ``step`` counts steps over the whole run (1-based), ``stage_step`` within the stage;
    ``loss`` is the training loss of that step; ``elapsed_s`` wall seconds since the run
    started; ``eta_s`` the estimated seconds left (``nan`` when unknown). ``extra`` holds
    task-specific scalars (e.g. ``epoch``).
    """

    stage: int
    step: int
    total_steps: int
    stage_step: int
    stage_steps: int
    loss: float
    elapsed_s: float
    eta_s: float = float("nan")
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class ScaleSnapshot(Event):
    """The current output of one scale.

    ``scale`` is the 0-based index of the scale shown (shown to users as ``scale + 1``);
    ``stage`` the 0-based stage that sent it. A stage-end snapshot (``final``) of scale k may
    come from a later stage (every scale so far is sent again at each stage end), and a
    full-scale run's single stage 0 trains the finest scale. ``data`` is the image (2D) or volume (3D) of scale ``scale``; ``spectrum`` is its
    centred log-amplitude Fourier spectrum, ``log(1 + |FFT|)``, same shape.
    ``voxel_size`` is in Å for cryo-EM volumes; for images it is the size of one pixel in
    pixels of the original image (fit-image trains on the image block-averaged by its
    ``downsample`` factor f, so ``voxel_size`` is f and pixel j's centre sits at original
    pixel ``f*j + (f-1)/2``). ``final``
    is True when the snapshot is taken at the end of the stage that trains this scale
    or at the end of the run.
    """

    scale: int
    data: np.ndarray
    spectrum: np.ndarray
    voxel_size: float = 1.0
    stage: int = 0
    final: bool = False


@dataclass
class VolumeSnapshot(Event):
    """A named 3D map that is not a network scale, sent at stage ends: the backprojected
    half-maps and full map (``name`` in ``"half_map_1"``, ``"half_map_2"``, ``"map"``).

    Attributes
    ----------
    name : str
    data : ndarray ``[z, y, x]`` float32
    voxel_size : float, Å
    stage : int, 0-based
    """

    name: str
    data: np.ndarray
    voxel_size: float = 1.0
    stage: int = 0


@dataclass
class Metrics(Event):
    """Named evaluation results.

    ``name`` is e.g. ``"fsc"``, ``"pose_errors"``, ``"spectrum_drift"``, ``"psnr"``;
    ``values["scale"]``, where present, is 0-based like every index in events (``metrics.json``
    and the CLI show it 1-based).
    ``values`` is JSON-like (floats, lists); large arrays such as per-image pose errors
    in degrees go in ``arrays``.
    """

    name: str
    stage: int
    values: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class StageFinished(Event):
    """Stage ``stage`` ended: normally, or early because "next stage" was asked."""

    stage: int
    steps_done: int
    seconds: float
    skipped_early: bool = False
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunPaused(Event):
    """The run is paused at ``step``; no step runs until it is resumed or stopped."""

    step: int
    reason: str = "requested"


@dataclass
class RunResumed(Event):
    """The run resumed after a pause."""

    step: int


@dataclass
class Log(Event):
    """A human-readable message (``level`` is ``"info"`` or ``"warning"``).

    ``message`` is what the CLI prints and ``run.log`` keeps. A message that carries numbers
    also names what it is ``about`` (``"stage_data"``, ``"stage_summary"``) and gives them in
    ``values`` (units in the key names), so the GUI can say it in a sentence
    (:func:`rmfn_napari._widgets.log_panel.log_sentence`) instead of showing the raw text.
    """

    message: str
    level: str = "info"
    about: str = ""
    values: dict = field(default_factory=dict)


@dataclass
class RunFinished(Event):
    """The run ended. ``stopped`` is True when the user stopped it early.

    ``outputs`` maps output names to file paths written (may be empty when the run was
    asked to write nothing); ``metrics`` is the final metrics dictionary.
    """

    stopped: bool
    steps_done: int
    seconds: float
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
