"""Test (and benchmark) data for optics groups: an analytic map in Å, rendered at any pixel
size, and STARs merged as RELION 3.1 optics tables (one optics group per source STAR)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def blob_map(box: int, apix: float, sigma_A: float = 4.0, seed: int = 0, n: int = 6,
             spread_A: float = 12.0) -> np.ndarray:
    """``n`` 3D Gaussians of width ``sigma_A`` Å at seeded centres within ±``spread_A`` Å of the
    box centre (index ``box/2``), sampled on a ``box³`` grid ``[z, y, x]`` at ``apix`` Å/px: the
    same density at any pixel size (band-limited well below Nyquist when ``sigma_A ≥ 1.5·apix``)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-spread_A, spread_A, size=(n, 3))
    weights = rng.uniform(0.5, 1.5, size=n)
    r = (np.arange(box) - box // 2) * apix
    z, y, x = np.meshgrid(r, r, r, indexing="ij")
    vol = np.zeros((box,) * 3)
    for (cx, cy, cz), w in zip(centres, weights):
        vol += w * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma_A ** 2))
    return vol.astype(np.float32)


def merge_stars(stars, out_star) -> Path:
    """Merge particle STARs (RELION 3.1, one optics group each) into ``out_star``: optics group
    ``k`` (1-based) is the ``k``-th STAR's, renumbered and renamed ``opticsGroup{k}``; image
    names are rewritten relative to ``out_star``'s folder."""
    import pandas as pd
    import starfile

    out_star = Path(out_star)
    optics, parts = [], []
    for k, star in enumerate(stars, start=1):
        star = Path(star)
        b = starfile.read(star, always_dict=True)
        o, p = b["optics"].copy(), b["particles"].copy()
        assert len(o) == 1, "one optics group per source STAR"
        o["rlnOpticsGroup"], o["rlnOpticsGroupName"] = k, f"opticsGroup{k}"
        p["rlnOpticsGroup"] = k

        def rename(name, base=star.parent):
            idx, path = name.split("@", 1)
            return f"{idx}@{os.path.relpath(base / path, out_star.parent)}"

        p["rlnImageName"] = [rename(s) for s in p["rlnImageName"]]
        optics.append(o)
        parts.append(p)
    starfile.write({"optics": pd.concat(optics, ignore_index=True),
                    "particles": pd.concat(parts, ignore_index=True)}, out_star, float_format="%.6f")
    return out_star
