#!/usr/bin/env bash
# The main job: set up (first run only), then the demo pipeline on data/cranfield with the packaged MiniLM
# (configs/demo.yaml): candidates mined by the base encoder -> the re-ranker's prior (BM25 + base, accepted on
# held-out queries) -> the re-ranker (prior + cross-encoder) checked alone on dev -> joint training -> index ->
# evaluation on the test split (results.json, results.md, curves.png).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
rocketkd pipeline --config configs/demo.yaml --output "${1:-outputs/demo}" "${@:2}"
