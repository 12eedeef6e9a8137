#!/usr/bin/env bash
# Install what the tests need, then run the whole test suite (GUI tests under Xvfb + Mesa).
#
#   bash scripts/run_tests.sh            # from the repository root (or anywhere)
#   bash scripts/run_tests.sh -k reader  # extra arguments go to pytest
#
# Idempotent: Debian packages are installed only when running as root and one is missing;
# torch is installed as the CPU build 2.13.0 only when no torch is importable (a CUDA torch
# you installed yourself is kept); then `pip install -e ".[napari,testing]"`, which is quick
# when everything is there. RMFN_SKIP_INSTALL=1 skips all installing.
# pytest-xvfb (a test dependency) starts Xvfb itself; vispy renders through Mesa (llvmpipe).
# The exit status is pytest's: failures, errors, and "no tests collected" (5) all fail.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY="${PYTHON:-python3}"

source scripts/install.sh

echo "run_tests: $("$PY" -c 'import sys, torch, napari; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, napari {napari.__version__}")')"
# exec: the script's exit status is pytest's own (0 only when tests ran and all passed).
exec "$PY" -m pytest -q "$@"
