"""Real-world STAR flavours (issue 28, "Real files" B): small excerpts of STAR files written by
RELION 3.0-era tools, RELION 3.1, RELION 5, cryoDRGN, pyem's csparc2star (a cryoSPARC export,
re-extracted by RELION 3.0.6) and Warp 1.x (a tilt-series "particle series"), taken from public repositories
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
  ``rlnPhaseShift`` ° and ``rlnCtfBfactor`` Å² default to 0, ``rlnCtfScalefactor`` to 1 and
  ``rlnAmplitudeContrast`` to 0 (RELION's ``CTF::read``); RELION's ``CTF::getCTF`` returns
  ``scale · (−(√(1−Q0²) sin γ − Q0 cos γ)) · exp(−B u²/4)``, so at zero frequency the CTF is
  ``scale · Q0``;
* optics groups are matched by ``rlnOpticsGroup`` (the number), not by row order or by
  ``rlnOpticsGroupName`` (cryoDRGN's file numbers group 5 "opticsGroup4").
"""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from rmfn_napari.cryoem.particles import read_particles
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


def _ctf_at_zero_frequency(star, box=32):
    """Each particle's CTF at zero frequency, from the reconstruction-side call."""
    return star.ctf.evaluate(box, float(star.apix[0]), dtype=__import__("torch").float64)[:, box // 2, box // 2].numpy()


def test_csparc2star_export_reextracted_by_relion30(tmp_path):
    """cryoSPARC particles converted by pyem's csparc2star (2019: ``data_images``, columns in
    alphabetical order, ``rlnMagnification`` 10000 with ``rlnDetectorPixelSize`` = the pixel
    size in Å, 1-based ``rlnRandomSubset``, cryoSPARC's ``J407/imported`` path kept in
    ``rlnImageOriginalName``), then re-extracted by RELION 3.0.6 (``# RELION; version 3.0.6``,
    ``rlnImageName`` -> ``Extract/job012``). Origins are RELION 3.0's ``rlnOriginX/Y`` in px
    (csparc2star put cryoSPARC's shifts there already in RELION's sign), × 1.035 Å/px.

    The file has no ``rlnAmplitudeContrast`` (cryoDRGN's own test passes ``-w 0.1`` by hand):
    RELION's ``CTF::read`` takes Q0 = 0, so the CTF at zero frequency is 0, and the run's log
    says so. Before this reader change the STAR was refused ("column rlnAmplitudeContrast is
    missing")."""
    s = parse_star(DATA / "csparc2star_relion30_pfcrt.star")
    assert s.n == 5 and s.optics is None and s.group.tolist() == [1] * 5
    assert s.stack_names == ["Extract/job012/FinalRefinement-OriginalParticles-PfCRT.mrcs"]
    assert s.index.tolist() == [0, 1, 2, 3, 4]  # rlnImageName, not rlnImageOriginalName (row 5: 000006@J407)
    assert np.allclose(s.apix, 10000 * 1.035 / 10000)  # 1.035 Å
    assert _ctf_row(s, 0) == pytest.approx((15686.0, 17521.4, 87.629070, 300, 0.001, 0.0, 0.0, 0))
    assert _ctf_row(s, 4) == pytest.approx((14106.6, 15297.2, 10.903939, 300, 0.001, 0.0, 0.0, 0))
    assert s.ctf.scale.tolist() == [1.0] * 5
    # alphabetical columns: rlnAnglePsi comes first in the file, euler is (rot, tilt, psi)
    assert s.euler[0].tolist() == pytest.approx([16.093530, 86.352776, 98.225690])
    assert s.euler[4].tolist() == pytest.approx([-115.40303, 84.934080, 154.973890])
    assert s.origin_unit == "px"
    assert s.shifts_A()[0].tolist() == pytest.approx([-0.14063 * 1.035, -0.04688 * 1.035])
    assert s.shifts_A()[4].tolist() == pytest.approx([-0.04688 * 1.035, 0.203125 * 1.035])
    assert s.particles["rlnRandomSubset"].tolist() == [2, 1, 2, 2, 2]
    assert np.allclose(_ctf_at_zero_frequency(s), 0.0, atol=1e-12)  # scale · Q0 = 1 · 0
    assert len(s.notes) == 1 and "no rlnAmplitudeContrast column: amplitude contrast 0" in s.notes[0]

    # the note reaches the dataset the run logs (stacks made here: the STAR's own are not public)
    star = tmp_path / "particles.star"
    star.write_bytes((DATA / "csparc2star_relion30_pfcrt.star").read_bytes())
    (tmp_path / "Extract" / "job012").mkdir(parents=True)
    with mrcfile.new(str(tmp_path / "Extract/job012/FinalRefinement-OriginalParticles-PfCRT.mrcs")) as m:
        m.set_data(np.zeros((5, 16, 16), np.float32))
        m.set_image_stack()
        m.voxel_size = 1.035
    with read_particles(star) as ds:
        assert any("amplitude contrast 0" in n for n in ds.notes)


def test_warp_particle_series_tilt_images():
    """Warp 1.x tilt-series export as a "particle series" (the 20-column header tomoDRGN lists
    as Warp's): one RELION 3.0-style ``data_`` table, each row one tilt image of a particle with
    its own defocus and composed angles, pixel size 10⁴ · 1.96 µm / 10000 = 1.96 Å, no origin
    columns (origins 0), ``rlnCtfScalefactor`` = cos(tilt) and ``rlnCtfBfactor`` = −4 × the
    accumulated dose (e/Å², tomoDRGN reads dose = B / −4).

    RELION's ``CTF::getCTF`` multiplies the CTF by ``rlnCtfScalefactor``: the 39th tilt's CTF is
    0.5 × the untilted one, at zero frequency 0.5 × 0.07. Before this reader change the column
    was ignored (1.0 for every tilt). B is read as written, in RELION's sign, and the negative
    values are named in a note for the log (Warp means a decay; RELION's envelope amplifies)."""
    s = parse_star(DATA / "warp_particleseries.star")
    assert s.n == 4 and s.optics is None
    assert s.stack_names == ["ay19102021_L3_position6_ribo_it09_bin8_1.82A.mrcs"]
    assert s.index.tolist() == [0, 1, 38, 39]
    assert np.allclose(s.apix, 1e4 * 1.96 / 10000)  # the name's "1.82A" is not what the STAR says
    assert _ctf_row(s, 0) == pytest.approx((20061.7, 19560.8, 12.3, 300, 2.7, 0.07, 0, -13))
    assert _ctf_row(s, 2) == pytest.approx((23902.1, 24067.3, 7.4, 300, 2.7, 0.07, 0, -507))
    assert _ctf_row(s, 3) == pytest.approx((18612.3, 18111.4, 12.3, 300, 2.7, 0.07, 0, -13))
    assert s.ctf.scale.tolist() == pytest.approx([1.0, 0.9986, 0.5, 1.0])
    assert s.euler[0].tolist() == pytest.approx([113.14910, 88.02000, -95.35435])
    assert s.euler[2].tolist() == pytest.approx([125.41570, 145.92420, -88.60172])
    assert s.origin_unit is None and np.all(s.shifts_A() == 0)
    assert s.particles["rlnGroupName"].tolist()[2:] == ["ay19102021_L3_position6_ribo_it09_bin8_0000000",
                                                        "ay19102021_L3_position6_ribo_it09_bin8_0000001"]
    assert _ctf_at_zero_frequency(s) == pytest.approx([0.07, 0.9986 * 0.07, 0.5 * 0.07, 0.07], abs=1e-12)
    assert len(s.notes) == 1 and "rlnCtfBfactor < 0 on 4 of 4 particles (down to -507" in s.notes[0]
