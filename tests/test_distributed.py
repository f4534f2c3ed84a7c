"""Two gloo processes on CPU (torchrun) against one process on the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _no_dropout(src: Path) -> Path:
    cfg = json.loads((src / "config.json").read_text())
    cfg.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (src / "config.json").write_text(json.dumps(cfg))
    return src


def _train(nproc: int, batch_size: int, model: Path, data: Path, out: Path) -> None:
    args = ["-m", "rocketkd.cli", "-q", "train", "--config", str(ROOT / "configs" / "tiny.yaml"),
            "--set", f"data.path={data}", "--set", f"model.retriever={model}", "--set", f"model.reranker={model}",
            "--set", f"train.batch_size={batch_size}", "--set", "train.max_steps=3",
            "--set", "train.in_batch_negatives=true", "--set", "train.retriever_ce_weight=0.5",
            "--set", "train.eval_every=2",  # a dev measurement mid-run: every process must join its encoding
            "--output", str(out)]
    # Both runs on the CPU (gloo), also on a GPU machine: on one GPU two NCCL ranks would share it, which NCCL
    # refuses (seen on an H100, docs/scaling.md), and the one-process reference must use the same arithmetic.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    if nproc == 1:
        cmd = [sys.executable, *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=300)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    w = {}
    for sub in ("retriever", "reranker"):
        for f in (out / sub).glob("*.safetensors"):
            w.update({f"{sub}/{k}": v for k, v in load_file(f).items()})
    return w


@pytest.mark.slow
def test_two_processes_match_one_process_on_the_same_global_batch(tiny_bert, tiny_data, tmp_path):
    model = _no_dropout(tiny_bert)
    _train(1, 4, model, tiny_data, tmp_path / "one")
    _train(2, 2, model, tiny_data, tmp_path / "two")
    one = [json.loads(x) for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        for key in ("loss", "reranker_ce", "distill", "retriever_ce"):
            assert abs(a[key] - b[key]) < 1e-5, (a["step"], key, a[key], b[key])
    w1, w2 = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    assert w1.keys() == w2.keys() and w1
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], atol=1e-5, rtol=1e-4, msg=k)
    # only the main process wrote outputs: no per-rank leftovers next to the models
    curve1 = json.loads((tmp_path / "one" / "dev_curve.json").read_text())["curve"]
    curve2 = json.loads((tmp_path / "two" / "dev_curve.json").read_text())["curve"]
    assert set(curve1) == set(curve2) == {"0", "2", "3"}
    assert all(abs(curve1[k] - curve2[k]) < 1e-6 for k in curve1)
    names = {p.name for p in (tmp_path / "two").iterdir()}
    assert names == {"retriever", "reranker", "config.yaml", "train_log.jsonl", "train_state.json", "dev_start.json",
                     "dev_curve.json", "COMPLETE", ".rocketkd-output",
                     # what made dev_start.json, the config as given (resume checks), the run's log
                     "dev_start.json.stamp.json", "config.given.yaml", "rocketkd.log"}
