"""The render split over the ranks of a data-parallel run (``ForwardModel(ranks=...)``).

Two gloo ranks each render half of the mask's support, join the halves, score their own images
(3 and 5 of a global batch of 8) and back-propagate the summed map gradient through their own
voxels only; after DistributedDataParallel's all-reduce, the parameter gradient must be the one
process computes for the whole batch's mean loss on the whole map — which
``test_fast_engine.py`` proves against one autograd graph over the cube — and the joined map
the one a single process renders. Both structure-step paths: one graph per rank's part (a GPU's
chunk) and chunk-by-chunk recomputation (a CPU's), and shares on either side of a chunk's size (every rank
must take the same path: they meet DDP's collectives in different orders). Two steps each: DDP
rebuilds its buckets, a collective, at the second.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rmfn_napari.cryoem.reconstruct import ForwardModel, stage_sigma
from rmfn_napari.cryoem.rotations import random_rotations
from rmfn_napari.engine.distributed import SINGLE
from rmfn_napari.model import ResidualMFN

TESTS = Path(__file__).resolve().parent
GLOBAL_BATCH, RANK0_IMAGES = 8, 3  # rank 0 scores images 0..2, rank 1 images 3..7
BOX, SCALE = 16, 2

WORKER = """
import sys
import torch
sys.path.insert(0, {tests!r})
torch.set_num_threads(1)
from rmfn_napari.engine.distributed import start, stop
from test_split_render import GLOBAL_BATCH, RANK0_IMAGES, make_case
out, chunk = sys.argv[1], int(sys.argv[2])
ranks = start("cpu")
net, fwd, obs, ctf, R = make_case(chunk, ranks)
mine = slice(0, RANK0_IMAGES) if ranks.rank == 0 else slice(RANK0_IMAGES, GLOBAL_BATCH)
model = ranks.wrap(net)
for step in range(2):  # DDP rebuilds its buckets (a collective) at the second step's forward
    net.zero_grad(set_to_none=True)
    loss = fwd.structure_backward(model, obs[mine], ctf[mine], R[mine], ranks.world / GLOBAL_BATCH)
vol_ft = fwd.volume_ft(net)
loss = float(ranks.mean(loss))
if ranks.is_main:
    torch.save({{"grads": [p.grad for p in net.parameters()], "vol_ft": vol_ft,
                "parts": [(p.start, p.stop) for p in fwd.parts], "loss": loss}}, out)
stop(ranks)
"""


def make_case(chunk: int, ranks=SINGLE):
    """The network, the stage's forward model and a global batch of 8 Hermitian spectra."""
    torch.manual_seed(0)
    net = ResidualMFN(3, 16, 3, resolution=BOX, head_activation="relu", seed=3, new_head_scale=0.5)
    sigma = stage_sigma(SCALE, 3, BOX, (0.3, 2.0))
    fwd = ForwardModel(BOX, 1.0, SCALE, net.band_limits[SCALE], sigma, pad=2, mask_radius=0.35, chunk=chunk,
                       ranks=ranks)
    R = random_rotations(GLOBAL_BATCH, generator=torch.Generator().manual_seed(1)).float()
    obs = torch.complex(torch.randn(GLOBAL_BATCH, BOX, BOX), torch.randn(GLOBAL_BATCH, BOX, BOX))
    obs = obs + obs.flip(-1, -2).roll((1, 1), (-1, -2)).conj()
    ctf = 0.5 + torch.rand(GLOBAL_BATCH, BOX, BOX)
    return net, fwd, fwd.freqs.take(obs), fwd.freqs.take(ctf), R


@pytest.mark.parametrize("chunk", [4096, 300, 522],
                         ids=["one-graph-per-part", "chunk-by-chunk", "shares-straddling-a-chunk"])
def test_two_ranks_splitting_the_render_give_one_process_gradient(chunk, tmp_path):
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER.format(tests=str(TESTS)))
    out = tmp_path / "rank0.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(worker), str(out), str(chunk)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(out)

    net, fwd, obs, ctf, R = make_case(chunk)
    n_support = len(fwd.support)
    # two halves tiling the support; each part is one chunk, or several
    assert got["parts"] == [(0, n_support // 2), (n_support // 2, n_support)]
    assert n_support % 2 == 1  # shares of 522 and 523 voxels: with chunk 522, one fits a chunk, one does not
    loss = fwd.structure_backward(net, obs, ctf, R)  # the global batch's mean, one process
    assert got["loss"] == pytest.approx(float(loss), rel=1e-5)
    for (name, p), g in zip(net.named_parameters(), got["grads"]):
        scale_g = float(p.grad.abs().max()) + 1e-12
        assert torch.allclose(g, p.grad, atol=1e-5 * scale_g, rtol=1e-4), name
    assert torch.allclose(got["vol_ft"], fwd.volume_ft(net), atol=1e-6 * float(got["vol_ft"].abs().max()))
