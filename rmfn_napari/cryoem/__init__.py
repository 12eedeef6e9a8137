"""Cryo-EM data: rotations, CTF, projection, maps from atomic models, simulation and I/O.

Pure numpy/torch (no Qt, no napari). Import the sub-modules directly, e.g.
``from rmfn_napari.cryoem.projector import project``.

Conventions shared by every sub-module (see DESIGN.md section 2):

* volumes are ``[z, y, x]`` float32 arrays, cubic box ``D`` (even), voxel size ``apix`` in Å;
  ``x`` is the fastest array axis; the rotation centre is index ``D/2`` on each axis;
* Fourier grids are centred: index ``j`` is the frequency ``k = j - D/2`` cycles/box;
* a rotation ``R`` (3x3, acting on column vectors ``(x, y, z)``) is RELION's matrix ``A``
  and an image is ``∫ V(Rᵀx) dz``.
"""
