"""Maps from atomic models: Gaussian weights/width, centring, selection, shipped sample maps."""

import math
from pathlib import Path

import numpy as np
import pytest

from rmfn_napari.cryoem.io import read_map
from rmfn_napari.cryoem.maps import map_from_model
from rmfn_napari.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
PDB = ROOT / "sample_data" / "pdb"
MAPS = ROOT / "sample_data" / "maps"


def _pdb_line(serial, name, resname, chain, resseq, x, y, z, element, record="ATOM"):
    return (f"{record:<6}{serial:>5} {name:<4} {resname:>3} {chain}{resseq:>4}    "
            f"{x:>8.3f}{y:>8.3f}{z:>8.3f}{1.0:>6.2f}{20.0:>6.2f}          {element:>2}\n")


def _write_pdb(path, atoms):
    with open(path, "w") as f:
        for i, a in enumerate(atoms, 1):
            f.write(_pdb_line(i, *a))
        f.write("END\n")
    return path


@pytest.mark.parametrize("element, electrons", [("C", 6), ("S", 16), ("FE", 26)])
def test_single_atom_integral_and_width(tmp_path, element, electrons):
    pdb = _write_pdb(tmp_path / "one.pdb", [(element, "UNK", "A", 1, 101.3, -55.2, 12.9, element)])
    box, apix, res = 32, 1.5, 6.0
    vol = map_from_model(pdb, box, apix, res)
    assert vol.shape == (box,) * 3 and vol.dtype == np.float32
    # integral over the box (e/Å³ × Å³) equals the electron count
    assert vol.sum() * apix ** 3 == pytest.approx(electrons, rel=1e-5)
    # a single atom is its own bounding box: centred at index box/2 on every axis
    c = np.arange(box) - box // 2
    m = vol.sum()
    for axis in range(3):
        prof = vol.sum(axis=tuple(a for a in range(3) if a != axis))
        mean = (prof * c).sum() / m
        var = (prof * (c - mean) ** 2).sum() / m
        assert mean == pytest.approx(0.0, abs=1e-6)
        sigma_vox = res / (math.pi * math.sqrt(2)) / apix
        # voxel averaging adds the variance of a unit box, 1/12 voxel²
        assert var == pytest.approx(sigma_vox ** 2 + 1 / 12, rel=1e-4)


def test_bounding_box_centre_selection_and_hetatm(tmp_path):
    atoms = [("CA", "ALA", "A", 1, 10.0, 0.0, 0.0, "C"), ("CA", "ALA", "A", 2, 20.0, 4.0, -8.0, "C"),
             ("N", "GLY", "B", 1, 15.0, 2.0, -4.0, "N")]
    het = [("O", "HOH", "A", 200, 40.0, 0.0, 0.0, "O", "HETATM")]
    pdb = _write_pdb(tmp_path / "m.pdb", atoms + het)
    box, apix = 32, 1.0
    vol = map_from_model(pdb, box, apix, 2.0)
    assert vol.sum() * apix ** 3 == pytest.approx(6 + 6 + 7, rel=1e-5)  # water ignored
    # bounding box of the ATOMs: x 10..20, y 0..4, z -8..0 -> centre (15, 2, -4) at index 16
    # so the N atom (at the centre) is at voxel (16, 16, 16) [z, y, x]; the CA at x=10 at x index 11
    assert vol[16, 16, 16] == pytest.approx(vol.max())  # N (7 e) is the densest atom
    assert vol[20, 14, 11] == pytest.approx(vol[12, 18, 21], rel=1e-5)  # the two CA atoms
    with_het = map_from_model(pdb, 64, apix, 2.0, include_hetatm=True)
    assert with_het.sum() * apix ** 3 == pytest.approx(6 + 6 + 7 + 8, rel=1e-5)
    only_b = map_from_model(pdb, box, apix, 2.0, chains=["B"])
    assert only_b.sum() == pytest.approx(7.0, rel=1e-5)
    with pytest.raises(InputError, match="not in the model"):
        map_from_model(pdb, box, apix, 2.0, chains=["Z"])
    with pytest.raises(InputError, match="does not fit"):
        map_from_model(pdb, 8, apix, 2.0)
    with pytest.raises(InputError, match="not found"):
        map_from_model(tmp_path / "missing.pdb", box, apix, 2.0)
    with pytest.raises(InputError, match="even"):
        map_from_model(pdb, 33, apix, 2.0)


def test_real_model_is_centred():
    vol = map_from_model(PDB / "1ol5.pdb", 64, 1.0, 2.0)
    assert vol.sum() == pytest.approx(15724.0, rel=1e-4)  # ATOM electrons of 1OL5, all inside
    assert vol.min() >= 0


@pytest.mark.parametrize("name, model, box, apix, chains", [
    ("1ol5_64_1.0A.mrc", "1ol5.pdb", 64, 1.0, None), ("1ol5_32_2.0A.mrc", "1ol5.pdb", 32, 2.0, None),
    ("4ake_64_1.2A.mrc", "4ake.pdb", 64, 1.2, ["A"]), ("4ake_32_2.4A.mrc", "4ake.pdb", 32, 2.4, ["A"])])
def test_shipped_maps_match_their_recipe(name, model, box, apix, chains):
    vol, a = read_map(MAPS / name)
    assert vol.shape == (box,) * 3 and a == pytest.approx(apix)
    if box == 32:  # regenerate the small ones (the recipe in sample_data/maps/README.md)
        again = map_from_model(PDB / model, box, apix, 2 * apix, chains=chains)
        np.testing.assert_array_equal(vol, again)
