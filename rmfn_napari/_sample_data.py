"""npe2 sample data: the bundled 1OL5/4AKE maps, the test images and a small simulated stack.

The files live in the repository's top-level ``sample_data/`` folder and are shipped inside
the package as ``rmfn_napari/sample_data`` (a symlink in the source tree, whose files
setuptools copies into the wheel), so :func:`sample_path` finds them in an editable install
and in an installed wheel alike. Other modules (CLI, widgets, benchmarks) should locate
bundled files through :func:`sample_path` rather than building paths themselves.

Every map is returned with ``scale=(apix,)*3`` (Å) and ``metadata={"voxel_size": apix, ...}``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .errors import InputError

#: Bundled maps: key -> (file under sample_data/maps, layer name, voxel size in Å).
MAPS = {
    "1ol5_64": ("1ol5_64_1.0A.mrc", "1OL5 map (64³, 1 Å)", 1.0),
    "4ake_64": ("4ake_64_1.2A.mrc", "4AKE map (64³, 1.2 Å)", 1.2),
    "1ol5_32": ("1ol5_32_2.0A.mrc", "1OL5 map (32³, 2 Å)", 2.0),
    "4ake_32": ("4ake_32_2.4A.mrc", "4AKE map (32³, 2.4 Å)", 2.4),
}
#: Bundled test images: key -> file under sample_data/images.
IMAGES = {"astronaut": "astronaut.png", "camera": "camera.png"}

#: Settings of the "simulated particle stack (small)" sample (from the 1OL5 32³ map).
PARTICLE_SAMPLE = {"map": "1ol5_32", "n": 200, "snr": 0.1, "seed": 0}


def sample_dir() -> Path:
    """Return the directory holding the bundled sample data.

    Looks inside the installed package first (``rmfn_napari/sample_data``, present in wheels
    and, as a symlink, in editable installs), then next to the package in a source checkout.

    Raises
    ------
    InputError
        If neither location exists (e.g. a checkout without symlink support).
    """
    here = Path(__file__).resolve().parent
    for cand in (Path(__file__).parent / "sample_data", here / "sample_data",
                 here.parent / "sample_data"):
        if cand.is_dir():
            return cand
    raise InputError("the bundled sample data folder is missing; reinstall rmfn-napari",
                     path=Path(__file__).parent / "sample_data")


def sample_path(*parts: str) -> Path:
    """Return the path of a bundled sample file, e.g. ``sample_path("maps", "1ol5_64_1.0A.mrc")``.

    Raises
    ------
    InputError
        If the file is not there (the message names it).
    """
    path = sample_dir().joinpath(*parts)
    if not path.exists():
        raise InputError("bundled sample file not found", path=path)
    return path


def map_path(key: str) -> Path:
    """Return the path of a bundled map by key (``"1ol5_64"``, ``"4ake_64"``, ``"1ol5_32"``,
    ``"4ake_32"``)."""
    if key not in MAPS:
        raise InputError(f"unknown sample map {key!r}; choose one of {sorted(MAPS)}")
    return sample_path("maps", MAPS[key][0])


def load_map(key: str) -> tuple[np.ndarray, float]:
    """Load a bundled map as ``(volume [z, y, x] float32, apix in Å)``."""
    from ._reader import read_mrc

    data, kwargs, _ = read_mrc(map_path(key))
    return np.asarray(data, dtype=np.float32), float(kwargs["metadata"]["voxel_size"])


def _map_layer(key: str) -> list[tuple[Any, dict, str]]:
    """Layer data tuple for a bundled map, with the voxel size as scale."""
    vol, apix = load_map(key)
    name = MAPS[key][1]
    return [(vol, {
        "name": name,
        "scale": (apix,) * 3,
        "colormap": "gray",
        "rendering": "mip",
        "metadata": {"voxel_size": apix, "path": str(map_path(key)), "sample": key},
    }, "image")]


def map_1ol5_64():
    """Sample: the 1OL5 density map, 64³ voxels at 1 Å."""
    return _map_layer("1ol5_64")


def map_4ake_64():
    """Sample: the 4AKE (chain A) density map, 64³ voxels at 1.2 Å."""
    return _map_layer("4ake_64")


def map_1ol5_32():
    """Sample: the 1OL5 density map, 32³ voxels at 2 Å."""
    return _map_layer("1ol5_32")


def map_4ake_32():
    """Sample: the 4AKE (chain A) density map, 32³ voxels at 2.4 Å."""
    return _map_layer("4ake_32")


def load_image(key: str = "astronaut") -> np.ndarray:
    """Load a bundled test image (``"astronaut"`` RGB or ``"camera"`` grey) as uint8."""
    import imageio.v3 as iio

    if key not in IMAGES:
        raise InputError(f"unknown sample image {key!r}; choose one of {sorted(IMAGES)}")
    return np.asarray(iio.imread(sample_path("images", IMAGES[key])))


def astronaut():
    """Sample: the astronaut test image (512×512 RGB, NASA, public domain)."""
    img = load_image("astronaut")
    return [(img, {"name": "astronaut", "rgb": True,
                   "metadata": {"path": str(sample_path("images", IMAGES["astronaut"]))}},
             "image")]


def camera():
    """Sample: the camera test image (512×512 grey, CC0)."""
    img = load_image("camera")
    return [(img, {"name": "camera", "colormap": "gray",
                   "metadata": {"path": str(sample_path("images", IMAGES["camera"]))}},
             "image")]


def cache_dir() -> Path:
    """Directory for generated sample files: ``$RMFN_CACHE_DIR``, else
    ``$XDG_CACHE_HOME/rmfn-napari`` (default ``~/.cache/rmfn-napari``)."""
    env = os.environ.get("RMFN_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "rmfn-napari"


def simulated_particles(n: int | None = None, *, map_key: str | None = None,
                        snr: float | None = None, seed: int | None = None) -> Path:
    """Simulate (once, then reuse) a small particle stack from a bundled map.

    Parameters default to :data:`PARTICLE_SAMPLE` (200 particles of the 1OL5 32³ map,
    SNR 0.1, the paper's CTF ranges, centred particles). The files (``particles.star``,
    ``true_poses.star``, ``particles.mrcs``, ``reference.mrc``, ``simulation.json``) are
    written by :func:`rmfn_napari.cryoem.simulate.simulate_particles` into a folder of
    :func:`cache_dir` named after the settings; a later call with the same settings reuses them.

    Returns
    -------
    Path
        The ``particles.star`` file (image names and CTFs only, as a particle picker gives
        them). The ground truth — the same particles with their true angles, origins and
        half-sets — is ``true_poses.star`` beside it (``star.parent / "true_poses.star"``),
        for the reconstruction's ``true_poses``.
    """
    from .cryoem.simulate import simulate_particles  # torch: only when asked for

    cfg = dict(PARTICLE_SAMPLE)
    cfg.update({k: v for k, v in (("n", n), ("map", map_key), ("snr", snr), ("seed", seed))
                if v is not None})
    out = cache_dir() / f"particles_{cfg['map']}_n{cfg['n']}_snr{cfg['snr']:g}_seed{cfg['seed']}"
    star = out / "particles.star"
    if not all((out / f).is_file() for f in ("particles.star", "true_poses.star", "particles.mrcs")):
        simulate_particles(map_path(cfg["map"]), out, n=int(cfg["n"]), snr=float(cfg["snr"]),
                           seed=int(cfg["seed"]), overwrite=True)
    return star


def particle_stack():
    """Sample: a small simulated particle stack (200 CTF-modulated projections of the 1OL5
    32³ map at SNR 0.1), as a ``(n, D, D)`` image layer with the pixel size as y/x scale.

    ``metadata["path"]`` is the RELION ``.star`` file, so it can be fed to the reconstruction;
    ``metadata["true_poses"]`` the STAR with the true angles and origins (for pose errors);
    ``metadata["reference"]`` the map.
    """
    from ._reader import read_star_stack

    star = simulated_particles()
    data, kwargs, kind = read_star_stack(star)
    kwargs["name"] = "simulated particles (1OL5 32³, SNR 0.1)"
    kwargs["colormap"] = "gray"
    kwargs["metadata"]["reference"] = str(star.parent / "reference.mrc")
    kwargs["metadata"]["true_poses"] = str(star.parent / "true_poses.star")
    kwargs["metadata"]["sample"] = "particles"
    return [(np.asarray(data), kwargs, kind)]
