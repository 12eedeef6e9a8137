"""Coarse-to-fine joint estimation of a 3D map and particle poses (paper §6).

The map is a 3D residual MFN in real space (coordinates: voxel index j -> (j - D/2)/D per
axis, x fastest), one non-negative output per scale (a ReLU on each head). Training goes
in stages, one scale per stage; in stage s the observed images and the model's images are
low-passed by a Gaussian of sigma = band_s * D / 3 Fourier pixels (band_s = 1/g^2, 1/g, 1
of Nyquist for three scales, g = 1 + lambda1 + lambda2).

Forward model (fast path): the network is rendered once per structure step on a grid sized
to the stage's band (not the full box), at the voxels inside the solvent mask only,
zero-padded 2x and Fourier transformed; each particle's image is the central slice at its
pose (Fourier slice theorem) times its CTF, compared with the observed image at the stage's
frequencies — its window inside Nyquist, one half-plane by Friedel symmetry (Parseval: equal
to the real-space squared error of the low-passed images). The observed spectra and CTFs at
those frequencies are computed once per stage on the device. Pose steps reuse the rendered
volume and need no network pass. :func:`forward_images_real_space` is the slow reference
(one network evaluation per rotated grid point per image).

Per batch (paper): ``structure_steps`` Adam steps on the network (lr 1e-3), then
``pose_steps`` Adam steps (lr 1e-2, betas (0.9, 0.9)) on a per-image axis-angle correction
``R_i <- exp([w_i]x) R_i`` that is folded into the stored rotation after the batch.
With offsets estimated (``shift_range_px``), each image's in-plane offset (px, RELION's origin)
is refined by the same Adam steps and searched on a grid with the rotations.

Units: box D pixels, pixel size apix Å, frequencies in cycles/box, resolutions in Å,
angles in degrees.

The package, one concept a module: :mod:`.settings` (settings, presets, modes),
:mod:`.frequencies` (the Fourier samples a stage compares), :mod:`.render` (the map on the
mask's support, chunked backward), :mod:`.forward` (the forward model of a stage),
:mod:`.data` (the particles at the working box, the reference, the observed spectra, the
contrast check), :mod:`.stage_data` (a stage's spectra and CTFs, once per stage),
:mod:`.poses` (initial poses and offsets, structure and pose steps, the offset grids),
:mod:`.outputs` (checkpoints, stage-end evaluation, output files) and :mod:`.driver`
(:func:`reconstruct`: stage -> epoch -> batch).
"""

from ..pose_search import crop_center, global_pose_search, residual_loss, score_rotations
from .data import image_scale, load_dataset, observed_spectra
from .driver import reconstruct
from .forward import (
    ForwardModel, forward_images_real_space, gaussian_weight, render_all_scales, render_volume,
    stage_sigma, stage_window,
)
from .frequencies import FrequencySet
from .render import SupportGrid, spherical_mask
from .stage_data import StageData
from .outputs import CHECKPOINT_FORMAT, load_checkpoint
from .poses import initial_rotations, pose_steps, structure_steps
from .settings import MODES, POSE_INITS, POSE_SEARCH_MODES, PRESETS, ReconstructConfig, pose_search_mode

__all__ = [
    "CHECKPOINT_FORMAT", "ForwardModel", "FrequencySet", "MODES", "POSE_INITS", "POSE_SEARCH_MODES", "PRESETS",
    "ReconstructConfig", "StageData", "SupportGrid", "crop_center", "forward_images_real_space", "gaussian_weight",
    "global_pose_search", "image_scale", "initial_rotations", "load_checkpoint", "load_dataset",
    "observed_spectra", "pose_search_mode", "pose_steps", "reconstruct", "render_all_scales",
    "render_volume", "residual_loss", "score_rotations", "spherical_mask", "stage_sigma",
    "stage_window", "structure_steps",
]
