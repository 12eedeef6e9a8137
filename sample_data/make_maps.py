"""Regenerate the sample maps in sample_data/maps/ from the atomic models in sample_data/pdb/.

Run from the repository root:  python sample_data/make_maps.py

Each map: rmfn_napari.cryoem.maps.map_from_model — every ATOM record (no HETATM) a Gaussian
weighted by its electron count (H 1, C 6, N 7, O 8, P 15, S 16), sigma = resolution/(pi*sqrt(2)),
integrated over each voxel, in electrons/Å^3; the bounding-box centre of the atoms at index
D/2; resolution = 2 x voxel size (the Nyquist limit of the grid).
"""

from pathlib import Path

from rmfn_napari.cryoem.io import write_map
from rmfn_napari.cryoem.maps import map_from_model

HERE = Path(__file__).resolve().parent

# (output name, model file, box, voxel size Å, chains)
MAPS = [
    ("1ol5_64_1.0A.mrc", "1ol5.pdb", 64, 1.0, None),
    ("1ol5_32_2.0A.mrc", "1ol5.pdb", 32, 2.0, None),
    ("4ake_64_1.2A.mrc", "4ake.pdb", 64, 1.2, ["A"]),
    ("4ake_32_2.4A.mrc", "4ake.pdb", 32, 2.4, ["A"]),
]


def main() -> None:
    out = HERE / "maps"
    out.mkdir(exist_ok=True)
    for name, model, box, apix, chains in MAPS:
        vol = map_from_model(HERE / "pdb" / model, box, apix, resolution=2 * apix, chains=chains)
        write_map(out / name, vol, apix)
        print(f"{name}: {box}^3 at {apix} Å, resolution {2 * apix} Å, chains {chains or 'all'}, "
              f"max {vol.max():.3f} e/Å^3, total {vol.sum() * apix ** 3:.0f} electrons")


if __name__ == "__main__":
    main()
