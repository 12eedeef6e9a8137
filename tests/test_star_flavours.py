"""Real-world STAR flavours (issue 28, "Real files" B): small excerpts of STAR files written by
RELION 3.0-era tools, RELION 3.1, RELION 5 and cryoDRGN, taken from public repositories
(tests/data/star_flavours/SOURCES.md), read by :func:`rmfn_napari.cryoem.star.parse_star` (the
STAR layer: the stacks they name are not here) to the particles, CTF parameters, pixel sizes and
origins that the files' own tools read from them.

The expected values are typed from the files' text, with the conventions of RELION
(``src/ctf.cpp``, ``src/ml_optimiser``, ``src/metadata_label.h``) that every one of these tools
follows:

* pixel size: ``rlnImagePixelSize`` of the particle's optics group (RELION 3.1+); before 3.1,
  ``10000 · rlnDetectorPixelSize (µm) / rlnMagnification`` (RELION 3.0's ``angpix``);
* origins: ``rlnOriginXAngst/YAngst`` in Å (3.1+), ``rlnOriginX/Y`` in px before;
* CTF: ``rlnDefocusU/V`` Å, ``rlnDefocusAngle`` °, ``rlnVoltage`` kV, ``rlnSphericalAberration``
  mm and ``rlnAmplitudeContrast`` from the particle's optics group (3.1+) or its row (3.0);
  ``rlnPhaseShift`` ° and ``rlnCtfBfactor`` Å² default to 0;
* optics groups are matched by ``rlnOpticsGroup`` (the number), not by row order or by
  ``rlnOpticsGroupName`` (cryoDRGN's file numbers group 5 "opticsGroup4").
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rmfn_napari.cryoem.star import parse_star

DATA = Path(__file__).parent / "data" / "star_flavours"


def _ctf_row(star, i):
    c = star.ctf
    return (c.defocus_u[i], c.defocus_v[i], c.defocus_angle[i], c.voltage[i], c.cs[i], c.amplitude_contrast[i],
            c.phase_shift[i], c.bfactor[i])


def test_relion30_single_table_magnification_and_detector_pixel_size():
    """EMPIAR-10076 particles as RELION 3.0 wrote them: one table, CTF per row, the pixel size
    from rlnMagnification and rlnDetectorPixelSize, no origins or angles."""
    s = parse_star(DATA / "relion30_empiar10076.star")
    assert s.n == 7 and s.optics is None
    assert s.stack_names == ["empiar_10076_7.mrc"] and s.index.tolist() == list(range(7))
    assert np.allclose(s.apix, 10000 * 5 / 38168)  # 1.30999 Å
    assert _ctf_row(s, 0) == pytest.approx((15301.1, 14916.4, 5.28, 300, 2.7, 0.07, 0, 0))
    assert _ctf_row(s, 6) == pytest.approx((15177.4, 14792.7, 5.28, 300, 2.7, 0.07, 0, 0))
    assert not s.has_poses and s.origin_unit is None
    assert np.all(s.shifts_A() == 0)


def test_relion31_refine_output():
    """RELION 3.1 refinement output (data_optics + data_particles, rlnGroupNumber, rlnRandomSubset)."""
    s = parse_star(DATA / "relion31_refine.star")
    assert s.n == 1 and s.group.tolist() == [1]
    assert s.image_names == ["000001@0001_sum_particles.mrcs"] and s.index.tolist() == [0]
    assert s.apix.tolist() == [1.04] and s.image_size.tolist() == [400]
    assert _ctf_row(s, 0) == pytest.approx((12588.289062, 12267.391602, 36.674278, 300, 2.7, 0.07, 0, 0))
    assert s.euler[0].tolist() == pytest.approx([-51.52270, 99.622780, -21.58926])
    assert s.origin_unit == "Å" and s.shifts_A()[0].tolist() == pytest.approx([-24.39938, 15.273376])
    assert int(s.particles["rlnRandomSubset"][0]) == 1


def test_relion5_extra_optics_and_particle_columns():
    """RELION 5 (``# version 50001``): beam tilt, Zernike arrays and the magnification matrix in
    data_optics, rlnAnglePsi before rlnAngleRot, rlnCtfScalefactor, rlnGroupNumber."""
    s = parse_star(DATA / "relion5.star")
    assert s.n == 3 and s.group_names == {1: "opticsGroup1"}
    assert s.stack_names == ["toy_images_a.mrcs", "toy_images_b.mrcs"]
    assert s.stack_of.tolist() == [0, 1, 0] and s.index.tolist() == [0, 1, 0]
    assert np.allclose(s.apix, 0.89) and s.image_size.tolist() == [448] * 3
    assert _ctf_row(s, 0) == pytest.approx((11949.061330, 11800.493288, 49.059993, 100, 1.6, 0.1, 0, 0))
    assert _ctf_row(s, 2) == pytest.approx((11567.206519, 11517.631674, 81.974647, 100, 1.6, 0.1, 0, 0))
    assert s.euler[0].tolist() == pytest.approx([111.508618, 36.742536, 141.158035])
    assert s.euler[1].tolist() == pytest.approx([115.116882, 125.238004, -161.73962])
    assert np.allclose(s.shifts_A(), [[-3.12578, -1.41031], [1.259694, 2.626956], [3.994219, 2.626956]])


def test_cryodrgn_written_relion31_with_six_optics_groups():
    """A RELION 3.1 STAR written by cryoDRGN's writer from polished data: six optics groups at
    1.24 and 1.25 Å/px, groups numbered apart from their names, columns without ``#n``."""
    s = parse_star(DATA / "cryodrgn_relion31_6groups.star")
    assert s.n == 4 and s.group.tolist() == [6, 6, 5, 5]
    assert s.group_names[5] == "opticsGroup4" and s.group_names[6] == "opticsGroup6"
    assert s.apix.tolist() == pytest.approx([1.25, 1.25, 1.24, 1.24])  # rlnImagePixelSize, not rlnMicrographPixelSize
    assert s.index.tolist() == [2, 278, 223, 246]
    assert _ctf_row(s, 0) == pytest.approx((10352.805929, 8905.919375, 60.889370, 200, 2.7, 0.1, 0, 0))
    assert _ctf_row(s, 3) == pytest.approx((6208.759538, 6006.004427, 142.988163, 200, 2.7, 0.1, 0, 0))
    assert s.euler[2].tolist() == pytest.approx([104.869765, 165.825885, 135.932047])
    assert np.allclose(s.shifts_A(), [[13.284554, -3.21701], [-24.21545, -25.71701],
                                      [-9.14545, -4.18545], [1.107366, 2.680179]])
