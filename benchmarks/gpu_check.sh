#!/usr/bin/env bash
# The GPU check, one command for the day a CUDA GPU is at hand:
#   1. the CUDA tests (tests/test_cuda.py: the engine on the GPU against the CPU, precision
#      settings, torch.compile, no host synchronisation inside a batch);
#   2. every stage of the `paper` preset (64^3, width 128, batch 600) and of `cpu-small` (32^3)
#      timed on the GPU: seconds per batch (data, structure and pose phases apart) and peak GPU
#      memory, at float32, tf32 and bf16 (benchmarks/cryoem_speed.py);
#   3. with --full, the paper protocol in full (benchmarks/cryoem.py --config paper: 1OL5 64^3,
#      50,000 particles, 100 epochs; coarse-to-fine, full-scale, gradient-only and oracle runs).
#
#   bash benchmarks/gpu_check.sh              # steps 1-2 (a few minutes)
#   bash benchmarks/gpu_check.sh --full       # steps 1-3 (hours)
#   bash benchmarks/gpu_check.sh --dry-run    # a CPU, seconds: the same steps at toy sizes (CI)
#
# Tables go to benchmarks/results/cryoem_speed_cuda_*.md (and cryoem_paper.md with --full);
# copy the figures into docs/results.md. Exit status: non-zero if any step fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"
mode=gpu
full=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) mode=dry ;;
    --full) full=1 ;;
    *) echo "gpu_check: unknown option $arg (use --dry-run or --full)" >&2; exit 2 ;;
  esac
done

if [[ $mode == dry ]]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  echo "gpu_check (dry run on the CPU): CUDA tests (skipped without a GPU), then toy-size timings"
  "$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
  "$PY" benchmarks/cryoem_speed.py --dry-run --engines after --sizes 32 --batches 1 --work "$work"
  "$PY" benchmarks/cryoem_speed.py --dry-run --engines after --sizes 32 --batches 1 --work "$work" --precision bf16
  echo "gpu_check: dry run passed"
  exit 0
fi

if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no CUDA GPU (install the CUDA build of torch for your driver; --dry-run on a CPU)" >&2
  exit 2
fi
"$PY" -c "import torch; p = torch.cuda.get_device_properties(0); print(f'gpu_check: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}')"
"$PY" -m pytest -q -p no:cacheprovider tests/test_cuda.py
threads="$(nproc)"
for precision in float32 tf32 bf16; do
  "$PY" benchmarks/cryoem_speed.py --device cuda --engines after --threads "$threads" --precision "$precision" --batches 3
done
if [[ $full == 1 ]]; then
  "$PY" benchmarks/cryoem.py --config paper --device cuda --jobs 1 --runs c2f,full,c2f-gradient,full-gradient,oracle
fi
echo "gpu_check: done; tables in benchmarks/results/"
