#!/usr/bin/env bash
# The main job on the bundled sample, from a fresh clone:
#   with a display: napari opens with the rMFN plugin docked on the bundled 1OL5 map and the
#                   astronaut image (Start in "Reconstruct (cryo-EM)" simulates and reconstructs);
#   headless:       `rmfn simulate` 3000 particles from the bundled 1OL5 32^3 map, then
#                   `rmfn reconstruct` coarse to fine (cpu-small preset) with FSC and pose errors.
# Outputs of the headless run go to ./demo_out (or $1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
source scripts/install.sh

if [[ -n "${DISPLAY:-}" && "${RMFN_HEADLESS:-0}" != "1" ]]; then
  exec "$PY" scripts/launch_napari.py
fi
out="${1:-demo_out}"
if [[ ! -f "$out/data/particles.star" ]]; then
  "$PY" -m rmfn_napari.cli simulate --map sample_data/maps/1ol5_32_2.0A.mrc --n 3000 --snr 0.1 \
    --seed 0 --out "$out/data"
fi
exec "$PY" -m rmfn_napari.cli reconstruct "$out/data/particles.star" \
  --reference "$out/data/reference.mrc" --preset cpu-small --out "$out/reconstruction" --threads 1
