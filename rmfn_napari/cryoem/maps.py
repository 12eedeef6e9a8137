"""Density maps from atomic models (PDB / mmCIF, read with gemmi).

Each atom is an isotropic 3D Gaussian weighted by its electron count (H 1, C 6, N 7, O 8,
P 15, S 16, any other element its atomic number), with ``σ = resolution / (π √2)`` Å — the
convention of EMAN2's ``e2pdb2mrc.py`` and ChimeraX ``molmap``. The model is re-centred so
that the centre of its bounding box sits at the box centre (index ``D/2`` on each axis).

Each voxel holds the Gaussian *integrated over the voxel* divided by the voxel volume
(electrons/Å³): the 1D profiles are differences of error functions, so the map is the
electron density averaged over each voxel and ``map.sum() · apix³`` equals the total electron
count of the atoms inside the box exactly, even when σ is below a voxel. The 3D Gaussian is
separable, so the map is ``Σ_atoms Z · pz ⊗ py ⊗ px``, evaluated as one matrix product per
block of atoms.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.special import erf

from ..errors import InputError

__all__ = ["ELECTRONS", "electron_count", "load_atoms", "map_from_model", "gaussian_map"]

#: electrons per atom for the common elements of biomolecules; others use the atomic number
ELECTRONS = {"H": 1, "C": 6, "N": 7, "O": 8, "P": 15, "S": 16}


def electron_count(element: str) -> int:
    """Electron count of a neutral atom of ``element`` (its atomic number)."""
    import gemmi

    e = element.strip().capitalize()
    if e in ELECTRONS:
        return ELECTRONS[e]
    z = gemmi.Element(e).atomic_number
    if z <= 0:
        raise ValueError(f"unknown element {element!r}")
    return z


def load_atoms(path, chains=None, include_hetatm: bool = False):
    """Atom positions and electron counts from a PDB/mmCIF file (first model only).

    Parameters
    ----------
    path : str or Path
        PDB or mmCIF file.
    chains : iterable of str, optional
        Chain names to keep (default all).
    include_hetatm : bool
        Also keep HETATM records (ligands, modified residues, waters, ions).

    Returns
    -------
    xyz : ndarray, shape ``(n, 3)``, Å, columns ``(x, y, z)``
    weights : ndarray, shape ``(n,)``, electrons
    """
    import gemmi

    path = Path(path)
    if not path.is_file():
        raise InputError("atomic model file not found", path)
    try:
        st = gemmi.read_structure(str(path))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError on malformed files
        raise InputError(f"cannot read atomic model: {exc}", path) from exc
    if len(st) == 0:
        raise InputError("atomic model has no models", path)
    keep = None if chains is None else {str(c) for c in chains}
    xyz, w = [], []
    seen = set()
    for chain in st[0]:
        seen.add(chain.name)
        if keep is not None and chain.name not in keep:
            continue
        for res in chain:
            if res.het_flag == "H" and not include_hetatm:
                continue
            for atom in res:
                if atom.altloc not in ("\0", " ", "A"):
                    continue  # first alternate conformation only
                xyz.append((atom.pos.x, atom.pos.y, atom.pos.z))
                w.append(electron_count(atom.element.name))
    if keep is not None and not keep <= seen:
        raise InputError(f"chain(s) {sorted(keep - seen)} not in the model (has {sorted(seen)})", path)
    if not xyz:
        raise InputError("no atoms selected", path)
    return np.asarray(xyz, dtype=np.float64), np.asarray(w, dtype=np.float64)


def _profiles(u: np.ndarray, box: int, sigma_vox: float) -> np.ndarray:
    """Voxel-integrated 1D Gaussian profiles: ``(n, box)``, rows sum to 1 inside the box.

    ``u`` are positions in voxels (continuous index); voxel ``j`` spans ``[j − ½, j + ½]``.
    """
    edges = np.arange(box + 1, dtype=np.float64) - 0.5
    cdf = 0.5 * (1.0 + erf((edges[None, :] - u[:, None]) / (np.sqrt(2.0) * sigma_vox)))
    return np.diff(cdf, axis=1)


def gaussian_map(xyz_vox: np.ndarray, weights: np.ndarray, box: int, sigma_vox: float,
                 block: int = 512) -> np.ndarray:
    """Sum of voxel-integrated isotropic Gaussians on a ``box³`` grid (``[z, y, x]``).

    Parameters
    ----------
    xyz_vox : ndarray ``(n, 3)``
        Centres as continuous voxel indices ``(x, y, z)``.
    weights : ndarray ``(n,)``
        Integral of each Gaussian (in voxel units: the map sums to ``Σ weights`` when
        everything lies inside the box).
    box : int
    sigma_vox : float
        Standard deviation in voxels.
    block : int
        Atoms per matrix product (bounds memory to ``block·box²`` doubles).

    Returns
    -------
    ndarray, float64, shape ``(box, box, box)``
    """
    vol = np.zeros((box * box, box), dtype=np.float64)
    for i in range(0, len(weights), block):
        u = xyz_vox[i:i + block]
        px = _profiles(u[:, 0], box, sigma_vox)
        py = _profiles(u[:, 1], box, sigma_vox)
        pz = _profiles(u[:, 2], box, sigma_vox) * weights[i:i + block, None]
        zy = (pz[:, :, None] * py[:, None, :]).reshape(len(u), box * box)
        vol += zy.T @ px
    return vol.reshape(box, box, box)


def map_from_model(path, box: int, apix: float, resolution: float, chains=None,
                   include_hetatm: bool = False) -> np.ndarray:
    """Density map (electrons/Å³) of an atomic model on a ``box³`` grid, centred.

    Parameters
    ----------
    path : str or Path
        PDB or mmCIF file (first model).
    box : int
        Box size ``D`` in voxels (even).
    apix : float
        Voxel size in Å.
    resolution : float
        Map resolution in Å; each atom is a Gaussian with ``σ = resolution/(π√2)`` Å.
    chains : iterable of str, optional
        Chains to include (default all).
    include_hetatm : bool
        Include HETATM records (default: ATOM records only, as ``e2pdb2mrc.py``).

    Returns
    -------
    ndarray, float32, shape ``(box, box, box)``, indexed ``[z, y, x]``
        The bounding-box centre of the selected atoms is at index ``box/2``. Each voxel is the
        density averaged over the voxel, so ``sum · apix³`` is the electron count in the box.

    Raises
    ------
    InputError
        Bad file, no atoms, odd/invalid box or voxel size, or a model that does not fit.
    """
    if int(box) != box or box <= 0 or box % 2:
        raise InputError(f"box must be a positive even integer, got {box}")
    if not np.isfinite(apix) or apix <= 0:
        raise InputError(f"voxel size must be > 0 Å, got {apix}")
    if not np.isfinite(resolution) or resolution <= 0:
        raise InputError(f"resolution must be > 0 Å, got {resolution}")
    box = int(box)
    xyz, w = load_atoms(path, chains=chains, include_hetatm=include_hetatm)
    centre = 0.5 * (xyz.min(0) + xyz.max(0))
    u = (xyz - centre) / apix + box // 2
    sigma_vox = resolution / (np.pi * np.sqrt(2.0)) / apix
    if u.min() < -0.5 or u.max() > box - 0.5:
        extent = xyz.max(0) - xyz.min(0)
        raise InputError(
            f"model spans {extent.round(1).tolist()} Å, which does not fit a box of "
            f"{box} x {apix} = {box * apix:.1f} Å", path)
    vol = gaussian_map(u, w, box, sigma_vox) / apix ** 3
    return vol.astype(np.float32)
