#!/usr/bin/env bash
# Multi-process / multi-GPU training through accelerate:
#   scripts/train.sh ddp --config configs/demo.yaml --output outputs/x [--resume]
# The first argument names a launch config in configs/accelerate/ (single, ddp, deepspeed_zero2, fsdp).
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/train.sh LAUNCH_CONFIG_NAME [rocketkd train options]}
shift
launch=configs/accelerate/${name}.yaml
[ -f "$launch" ] || { echo "no launch config $launch (have: $(ls configs/accelerate | tr '\n' ' '))" >&2; exit 2; }
exec accelerate launch --config_file "$launch" -m rocketkd.cli train "$@"
