#!/usr/bin/env bash
# The main job on the bundled sample, from a fresh clone:
#   with a display: napari opens with the rMFN plugin docked on the bundled 1OL5 map and the
#                   astronaut image (Start in "Reconstruct (cryo-EM)" simulates and reconstructs);
#   headless:       `rmfn simulate` 3000 particles from the bundled 1OL5 32^3 map, off-centre by
#                   up to 2 px, defocus 0.8-2.5 um with astigmatism, SNR 0.1; their STAR has no
#                   angles. Then `rmfn reconstruct` ab initio (random poses, offsets searched),
#                   coarse to fine (cpu-small preset), evaluated against the truth the simulator
#                   wrote (--reference, --true-poses): FSC, pose and offset errors.
# Outputs of the headless run go to ./demo_out (or $1).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
source scripts/install.sh

if [[ -n "${DISPLAY:-}" && "${RMFN_HEADLESS:-0}" != "1" ]]; then
  export QT_API="${QT_API:-pyqt6}"  # qtpy would pick a PyQt5 left in the environment first
  exec "$PY" scripts/launch_napari.py
fi
out="${1:-demo_out}"
if [[ ! -f "$out/data/particles.star" ]]; then
  "$PY" -m rmfn_napari.cli simulate --map sample_data/maps/1ol5_32_2.0A.mrc --n 3000 --snr 0.1 \
    --max-shift 2 --defocus-min 8000 --defocus-max 25000 --astig-min 0 --astig-max 500 \
    --seed 0 --out "$out/data"
fi
exec "$PY" -m rmfn_napari.cli reconstruct "$out/data/particles.star" --overwrite \
  --reference "$out/data/reference.mrc" --true-poses "$out/data/true_poses.star" \
  --preset cpu-small --out "$out/reconstruction" --threads 1
