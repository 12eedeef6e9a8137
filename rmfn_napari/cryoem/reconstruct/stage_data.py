"""The observed data of one stage: every particle's spectrum and CTF on the stage's frequencies,
computed once per stage on the device and shared by the batches and the global search.

Each stage compares data on its own frequency set (:class:`FrequencySet`), so at a stage's start
the images are read, moved to the device, Fourier-transformed, cut down to the set's ``K``
frequencies, and the CTFs are evaluated on the same frequencies — once, instead of once per
batch and once more per global search. ``n·K`` complex64 spectra and float32 CTFs (12 bytes a
sample) stay on the device when they fit in the memory budget; otherwise every batch is
computed when it is needed, the next one in a background thread while the current one trains.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterable, Iterator

import numpy as np
import torch

from .data import observed_spectra
from .frequencies import FrequencySet

BYTES_PER_SAMPLE = 8 + 4  # complex64 spectrum + float32 CTF


class StageData:
    """Observed spectra (uncentred) and CTFs of some particles at ``freqs``, ``(n, K)``.

    Parameters
    ----------
    ds : the particle dataset (working box).
    particles : int ``n`` (particles ``0..n-1``) or the sorted indices of the particles held
        (a rank's shard in a data-parallel run).
    freqs : the stage's :class:`FrequencySet`.
    scale_img : global intensity scale of the images.
    cfg : the run's settings (``invert_contrast``).
    device : where the data are kept (or computed).
    budget_bytes : keep them resident when ``n·K·12`` bytes fit in this budget.
    chunk : particles read and transformed at once.
    """

    def __init__(self, ds, particles, freqs: FrequencySet, scale_img: float, cfg, device,
                 budget_bytes: float, chunk: int = 1000):
        self.particles = (np.arange(int(particles)) if np.ndim(particles) == 0
                          else np.asarray(particles, dtype=np.int64))
        self.ds, self.n, self.freqs, self.scale_img, self.cfg = ds, len(self.particles), freqs, scale_img, cfg
        self.device = torch.device(device)
        self.chunk = int(chunk)
        self.bytes = self.n * len(freqs) * BYTES_PER_SAMPLE
        self.resident = self.bytes <= budget_bytes
        self.obs = self.ctf = None
        if self.resident:
            parts = [self.compute(idx) for idx in self._chunks()]
            self.obs = torch.cat([p[0] for p in parts])
            self.ctf = torch.cat([p[1] for p in parts])

    def _chunks(self) -> list[np.ndarray]:
        return np.array_split(self.particles, max(1, -(-self.n // self.chunk)))

    def compute(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectra and CTFs of particles ``idx`` from the images, ``(B, K)`` each, on the device."""
        if len(idx) == 0:  # a rank with no particle in this batch
            K = len(self.freqs)
            return (torch.zeros(0, K, dtype=torch.complex64, device=self.device),
                    torch.zeros(0, K, dtype=torch.float32, device=self.device))
        obs, ctf = observed_spectra(self.ds, idx, self.ds.ctf, self.freqs.window, self.scale_img,
                                    self.cfg, self.device)
        return self.freqs.take(obs), self.freqs.take(ctf)

    def get(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectra and CTFs of particles ``idx`` (sorted ints), ``(B, K)`` each, on the device."""
        if not self.resident:
            return self.compute(idx)
        rows = np.searchsorted(self.particles, np.asarray(idx, dtype=np.int64))
        sel = torch.as_tensor(rows, dtype=torch.long, device=self.device)
        return self.obs[sel], self.ctf[sel]

    def batches(self, index_lists: Iterable[np.ndarray]) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """``(idx, obs, ctf)`` for each index list in turn; when not resident, the next batch
        is computed in a background thread while the caller works on the current one."""
        if self.resident:
            for idx in index_lists:
                yield (idx, *self.get(idx))
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            for idx in index_lists:
                ahead = pool.submit(self.compute, idx)
                if pending is not None:
                    yield pending[0], *pending[1].result()
                pending = (idx, ahead)
            if pending is not None:
                yield pending[0], *pending[1].result()

    def all_chunks(self) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """Every particle, ``chunk`` at a time (the global search's input)."""
        return self.batches(self._chunks())

    def chunks_of(self, particles: np.ndarray) -> Iterator[tuple[np.ndarray, torch.Tensor, torch.Tensor]]:
        """The held particles among ``particles`` (sorted ints), ``chunk`` at a time (one
        half-set's global search)."""
        particles = np.intersect1d(self.particles, np.asarray(particles, dtype=np.int64))
        return self.batches(np.array_split(particles, max(1, -(-len(particles) // self.chunk))))
