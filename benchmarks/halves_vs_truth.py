"""Do a run's half-maps share errors? Shell by shell, for a finished run with a known truth.

For two half-maps h1, h2 whose errors are independent of each other, FSC(h1, h2) ≈
FSC(h1, T) · FSC(h2, T) in every shell (T the truth): each half agrees with the other only
through the truth. Where FSC(h1, h2) is larger, the halves agree on something the truth does not
hold — errors they share (a common start, poses inherited from one network) — and the gold
standard computed from them is optimistic. Also printed: FSC(full map, T) and the value the
gold standard predicts for it, sqrt(2 FSC / (1 + FSC)).

    python benchmarks/halves_vs_truth.py RUN_DIR TRUTH.mrc

The maps are aligned to the truth once (the full map's alignment, applied to both halves), all
inside the soft sphere of radius 0.45 box.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from rmfn_napari.cryoem.io import read_map
from rmfn_napari.cryoem.metrics import align_map, apply_alignment, fsc, resolution_at
from rmfn_napari.cryoem.metrics.masks import soft_sphere_mask


def _volume(path) -> np.ndarray:
    vol = read_map(path)
    return np.asarray(vol[0] if isinstance(vol, tuple) else vol, dtype=np.float32)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__.split("\n\n")[2].strip(), file=sys.stderr)
        return 2
    run, truth_path = argv
    h1, h2, full = (_volume(f"{run}/{name}.mrc") for name in ("half_map_1", "half_map_2", "map"))
    truth = _volume(truth_path)
    apix = json.loads(open(f"{run}/metrics.json").read())["apix"]
    box = truth.shape[0]
    mask = soft_sphere_mask(box, 0.45 * box, 0.05 * box)
    alignment = align_map(full, truth, apix)[1]
    a1, a2, af = (apply_alignment(v, alignment) for v in (h1, h2, full))
    freqs, hh = fsc(h1 * mask, h2 * mask)
    _, t1 = fsc(a1 * mask, truth * mask)
    _, t2 = fsc(a2 * mask, truth * mask)
    _, tf = fsc(af * mask, truth * mask)
    print("| shell | Å | FSC(h1,h2) | FSC(h1,T)·FSC(h2,T) | FSC(full,T) | predicted from FSC(h1,h2) |")
    print("|---|---|---|---|---|---|")
    for i in range(1, len(freqs)):
        predicted = np.sqrt(max(2 * hh[i] / (1 + hh[i]), 0.0))
        print(f"| {i} | {box * apix / freqs[i]:.1f} | {hh[i]:.3f} | {t1[i] * t2[i]:.3f} | {tf[i]:.3f} | {predicted:.3f} |")
    print(f"\ngold standard (sphere, 0.143): {resolution_at(freqs, hh, 0.143, box, apix):.2f} Å; "
          f"full map against the truth (0.5): {resolution_at(freqs, tf, 0.5, box, apix):.2f} Å")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
