#!/usr/bin/env bash
# The main job: set up (first run only), then the demo pipeline on data/cranfield with the packaged MiniLM:
# BM25 candidates -> warm-up -> re-mine with the retriever -> teachers checked on dev -> joint training -> index ->
# evaluation (results.json + PNG).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rocketkd pipeline --config configs/demo.yaml --output "${1:-outputs/demo}" "${@:2}"
