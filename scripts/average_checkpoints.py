"""Average the retriever weights of a training run's checkpoints (and optionally its start) into a retriever folder.

    python scripts/average_checkpoints.py --run outputs/avg1 --steps 5 10 15 20 25 30 35 40 --config configs/demo.yaml \
        --output outputs/avg1/soup [--with-start]

Uniform weight averaging along one fine-tuning trajectory ("stochastic weight averaging", a uniform "model soup"):
the checkpoints are ``rocketkd train`` runs' ``checkpoints/step-N`` (``train.save_every``, and
``train.keep_checkpoints`` large enough to keep them). ``--with-start`` adds ``model.retriever`` as it started.
The output is an ordinary retriever folder: index and evaluate it with the CLI. docs/results.md (sixth session)
measures it on Cranfield.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

RETRIEVER_PREFIX = "retriever."  # the joint model's parameter names (rocketkd.training.joint.JointModel)


def checkpoint_weights(step_dir: Path) -> dict[str, torch.Tensor]:
    """The retriever's tensors of one accelerate checkpoint folder, as float32, names without the prefix."""
    files = sorted(step_dir.glob("pytorch_model*.bin")) + sorted(step_dir.glob("model*.safetensors"))
    if not files:
        raise SystemExit(f"{step_dir}: no pytorch_model*.bin or model*.safetensors (not a rocketkd checkpoint?)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(f)))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    out = {k[len(RETRIEVER_PREFIX):]: v.float() for k, v in state.items() if k.startswith(RETRIEVER_PREFIX)}
    if not out:
        raise SystemExit(f"{step_dir}: no tensor named {RETRIEVER_PREFIX}* in the checkpoint")
    return out


def average(states: list[dict[str, torch.Tensor]], names) -> dict[str, torch.Tensor]:
    """The element-wise mean of each named tensor over ``states``; every state must hold every name."""
    for i, s in enumerate(states):
        missing = [n for n in names if n not in s]
        if missing:
            raise SystemExit(f"state {i} lacks {len(missing)} retriever tensors, e.g. {missing[0]!r}")
    return {n: torch.stack([s[n] for s in states]).mean(0) for n in names}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] + ".")
    p.add_argument("--run", required=True, type=Path, help="output folder of `rocketkd train` (holds checkpoints/)")
    p.add_argument("--steps", required=True, type=int, nargs="+", help="checkpoint steps to average")
    p.add_argument("--config", help="the run's config (model.* settings; default: <run>/config.yaml)")
    p.add_argument("--with-start", action="store_true", help="also average in model.retriever as it started")
    p.add_argument("--output", required=True, type=Path, help="retriever folder to write")
    args = p.parse_args(argv)

    from rocketkd.config import load_config
    from rocketkd.io import atomic_dir
    from rocketkd.models.loading import load_retriever

    cfg = load_config(args.config or args.run / "config.yaml")
    retriever = load_retriever(cfg, cfg.model.retriever)
    own = retriever.state_dict()
    states = [{k: v.detach().float() for k, v in own.items()}] if args.with_start else []
    for step in args.steps:
        step_dir = args.run / "checkpoints" / f"step-{step:08d}"
        if not step_dir.is_dir():
            raise SystemExit(f"{step_dir}: no such checkpoint (train.save_every / train.keep_checkpoints?)")
        states.append(checkpoint_weights(step_dir))
    # tensors the checkpoints do not hold (none for rocketkd's own runs) keep the start's values
    names = [n for n in own if n in states[-1]]
    mean = average(states, names)
    retriever.load_state_dict({**own, **{n: t.to(own[n].dtype) for n, t in mean.items()}})
    with atomic_dir(args.output) as tmp:
        retriever.save(tmp)
    print(f"averaged {len(states)} states ({len(names)} tensors) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
