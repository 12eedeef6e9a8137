#!/usr/bin/env bash
# Install what rmfn-napari needs on a fresh Debian/Ubuntu machine (idempotent, quick when done).
# Sourced by scripts/run_tests.sh and scripts/run_demo.sh; PY names the python (default python3).
#
# - Debian packages for napari's OpenGL canvas under Xvfb + Mesa: only as root, only if missing.
# - torch: the CPU build 2.13.0 only when no torch is importable (a CUDA torch you installed
#   yourself is kept: `pip install torch==<version>` from the CUDA index first on a GPU box).
# - then `pip install -e ".[napari,testing]"` from the repository root: PyQt6 only (the GUI
#   tests' PyQt5 pass gets PyQt5 in a folder of its own, scripts/run_tests.sh).
# RMFN_SKIP_INSTALL=1 skips all of it.
PY="${PY:-${PYTHON:-python3}}"
APT_PACKAGES=(xvfb xauth libgl1-mesa-dri libglx-mesa0 libegl1 libxkbcommon-x11-0
  libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0
  libxcb-xinerama0 libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1)

if [[ "${RMFN_SKIP_INSTALL:-0}" != "1" ]]; then
  if command -v dpkg-query >/dev/null 2>&1; then
    missing=()
    for pkg in "${APT_PACKAGES[@]}"; do
      if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
      fi
    done
    if ((${#missing[@]})); then
      if [[ "$(id -u)" == "0" ]]; then
        echo "install: installing Debian packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq </dev/null
        apt-get install -y -qq --no-install-recommends "${missing[@]}" </dev/null >/dev/null
      else
        echo "install: missing Debian packages (need root to install): ${missing[*]}" >&2
        echo "install: GUI tests will be skipped without a display (they fail under CI=true)" >&2
      fi
    fi
  fi

  # A Debian system python outside a venv refuses pip (PEP 668); on a throwaway CI machine
  # installing into it is what we want.
  if [[ "${CI:-}" == "true" ]] && "$PY" -c 'import os, sys, sysconfig; sys.exit(not (sys.prefix == sys.base_prefix and os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))'; then
    export PIP_BREAK_SYSTEM_PACKAGES=1
  fi

  # torch first, CPU build, so that nothing below pulls a CUDA torch from the index.
  if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "install: installing torch==2.13.0 (CPU)"
    "$PY" -m pip install -q --no-input "torch==2.13.0"
  fi
  "$PY" -m pip install -q --no-input -e ".[napari,testing]"
fi
# PyQt6 is the binding (the napari extra). A PyQt5 in the same environment (an older version of
# this script installed it for the tests) makes qtpy choose PyQt5 for every `napari` started
# here, with napari's deprecation warning: say how to undo it. Not removed here: it may be yours.
if "$PY" -c "import PyQt5.QtCore" >/dev/null 2>&1; then
  echo "install: note: PyQt5 is installed in this environment, so napari started here without" \
    "QT_API=pyqt6 runs on PyQt5; remove it with: $PY -m pip uninstall PyQt5 PyQt5-Qt5 PyQt5-sip" >&2
fi

