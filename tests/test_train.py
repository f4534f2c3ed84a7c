"""The joint step and the training loop: loss values by hand, saved models, NaN handling, exact resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rocketkd.training.step as step_mod
from rocketkd.candidates.negatives import label_lists
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data
from rocketkd.errors import ConfigError, TrainingError
from rocketkd.models import CrossEncoderRanker, DualEncoder
from rocketkd.pipeline import run_train as train
from rocketkd.training import COMPLETE_MARKER, JointCollator, JointModel
from rocketkd.training.dataset import GroupDataset
from rocketkd.training.objective import compute_objective, mix_teachers

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tiny_bert: Path, tiny_data: Path, out: Path, *extra: str):
    overrides = [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}", f"output_dir={out}",
        *extra,
    ]
    return load_config(ROOT / "configs" / "tiny.yaml", overrides)


def _batch(tiny_bert, tiny_data, B=3, G=4):
    data = load_retrieval_data(tiny_data)
    lists = label_lists(data.qrels["train"], data.corpus.ids, list_length=G, seed=1)
    ds = GroupDataset(lists, G, seed=0)
    retriever = DualEncoder.from_pretrained(str(tiny_bert), similarity="dot")
    reranker = CrossEncoderRanker.from_pretrained(str(tiny_bert))
    collate = JointCollator(data.queries.__getitem__, data.corpus.get_text, retriever.tokenize_queries,
                            retriever.tokenize_passages, reranker.tokenize_pairs)
    return retriever, reranker, collate([ds[i] for i in range(B)])


def test_joint_step_losses_match_hand_computation(tiny_bert, tiny_data):
    retriever, reranker, batch = _batch(tiny_bert, tiny_data)
    model = JointModel(retriever, reranker, score_scale=1.0).eval()
    B, G = batch.batch_size, batch.group_size
    assert batch.query_inputs["input_ids"].shape[0] == B  # one query encoding per list, not per candidate
    assert batch.passage_inputs["input_ids"].shape[0] == B * G
    scores = model(batch)
    # Retriever scores by hand: query b against its own G passages (rows b*G .. b*G+G-1).
    with torch.no_grad():
        q = retriever.encode_queries(batch.query_inputs)
        p = retriever.encode_passages(batch.passage_inputs).view(B, G, -1)
        expected = torch.einsum("bh,bgh->bg", q, p)
    torch.testing.assert_close(scores.retriever.detach(), expected, atol=1e-5, rtol=1e-5)

    cfg = load_config(None, ["train.mode=joint"]).train
    parts = compute_objective(cfg, scores.retriever, scores.reranker)
    ce = F.cross_entropy(scores.reranker, torch.zeros(B, dtype=torch.long))
    kl = F.kl_div(F.log_softmax(scores.retriever, -1), F.softmax(scores.reranker, -1), reduction="batchmean")
    torch.testing.assert_close(parts.parts["reranker_ce"], ce.detach())
    torch.testing.assert_close(parts.parts["distill"], kl.detach())
    assert abs(parts.total.item() - (ce + kl).item()) < 1e-5


def test_teacher_detached_by_default_and_reachable_when_asked():
    torch.manual_seed(0)
    retr = torch.randn(2, 4, requires_grad=True)
    rr = torch.randn(2, 4, requires_grad=True)
    base = load_config(None, ["train.mode=joint", "train.reranker_ce_weight=0"]).train
    compute_objective(base, retr, rr).total.backward()
    assert rr.grad is None or torch.count_nonzero(rr.grad) == 0  # released code: KL reaches only the retriever
    assert torch.count_nonzero(retr.grad) > 0
    rr.grad = None
    paper = load_config(None, ["train.mode=joint", "train.reranker_ce_weight=0", "train.distill_to_reranker=true"]).train
    compute_objective(paper, retr, rr).total.backward()
    assert torch.count_nonzero(rr.grad) > 0  # paper: the KL reaches the re-ranker too


def test_mix_teachers_is_the_weighted_mixture():
    stored = torch.log(torch.tensor([[0.7, 0.2, 0.1]]))
    online = torch.tensor([[0.0, 1.0, 2.0]])
    mixed = mix_teachers(stored, online, 0.25, temperature=1.0)
    expected = 0.75 * torch.tensor([[0.7, 0.2, 0.1]]) + 0.25 * torch.softmax(online, -1)
    torch.testing.assert_close(torch.softmax(mixed, -1), expected)
    torch.testing.assert_close(mix_teachers(stored, online, 1.0, 1.0), online)


def test_train_tiny_saves_both_models_loadable_by_sentence_transformers(tiny_bert, tiny_data, tmp_path):
    from sentence_transformers import CrossEncoder, SentenceTransformer

    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run")
    result = train(cfg)
    assert result.steps == cfg.train.max_steps
    assert {"reranker_ce", "distill", "loss"} <= set(result.history[-1])
    st = SentenceTransformer(str(result.retriever_dir), device="cpu")
    mine = DualEncoder.from_pretrained(str(result.retriever_dir)).encode(["wing flutter"], side="passage")
    torch.testing.assert_close(torch.from_numpy(st.encode(["wing flutter"])), torch.from_numpy(mine), atol=1e-5, rtol=1e-4)
    ce = CrossEncoder(str(result.reranker_dir), device="cpu")
    ours = CrossEncoderRanker.from_pretrained(str(result.reranker_dir)).predict([("wing", "wing report")])
    assert abs(float(ce.predict([("wing", "wing report")])[0]) - float(ours[0])) < 1e-4
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "train_log.jsonl").exists()
    # the models changed: training did something
    before = DualEncoder.from_pretrained(str(tiny_bert)).encode(["wing flutter"], side="passage")
    assert abs(before - mine).max() > 1e-4


def test_reranker_mode_trains_the_reranker_alone(tiny_bert, tiny_data, tmp_path):
    # the loss is the re-ranker's listwise CE and nothing else; the retriever neither runs nor changes
    scores = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.0]], requires_grad=True)
    parts = compute_objective(load_config(None, ["train.mode=reranker"]).train, None, scores)
    expected = F.cross_entropy(scores.detach(), torch.zeros(2, dtype=torch.long))
    assert set(parts.parts) == {"reranker_ce"}
    torch.testing.assert_close(parts.total.detach(), expected)

    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.mode=reranker", "train.max_steps=3")
    result = train(cfg)
    assert result.steps == 3 and {"reranker_ce"} <= set(result.history[-1]) and "distill" not in result.history[-1]
    text = ["wing flutter"]
    before = DualEncoder.from_pretrained(str(tiny_bert)).encode(text, side="passage")
    after = DualEncoder.from_pretrained(str(result.retriever_dir)).encode(text, side="passage")
    np.testing.assert_array_equal(before, after)
    pair = [("wing", "wing report")]
    g0 = CrossEncoderRanker.from_pretrained(str(tiny_bert)).predict(pair)
    assert abs(CrossEncoderRanker.from_pretrained(str(result.reranker_dir)).predict(pair) - g0).max() > 1e-6
    with pytest.raises(ConfigError, match="train.chunk_size"):
        tiny_cfg(tiny_bert, tiny_data, tmp_path / "x", "train.mode=reranker", "train.chunk_size=4")


def test_list_length_larger_than_candidates_is_a_config_error(tiny_bert, tiny_data, tmp_path):
    data = load_retrieval_data(tiny_data)
    lists = label_lists(data.qrels["train"], data.corpus.ids, list_length=3, seed=1, pool_size=2)
    with pytest.raises(ConfigError, match="list_length=8"):
        GroupDataset(lists, 8)


def test_nan_loss_stops_with_step_and_keeps_last_checkpoint(tiny_bert, tiny_data, tmp_path, monkeypatch):
    real = step_mod.compute_objective
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        parts = real(*args, **kwargs)
        if calls["n"] == 4:
            parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(step_mod, "compute_objective", poisoned)
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.save_every=2")
    with pytest.raises(TrainingError, match=r"non-finite loss at step 4 \(reranker_ce="):
        train(cfg)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert ckpts == ["step-00000002"]
    assert not (tmp_path / "run" / "retriever").exists()


def _state(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    tensors = {}
    for sub in ("retriever", "reranker"):
        for f in sorted((out / sub).glob("*.safetensors")):
            tensors.update({f"{sub}/{k}": v for k, v in load_file(f).items()})
    return tensors


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "rocketkd.cli", "-q", *args]


@pytest.mark.slow
def test_sigkill_then_resume_gives_identical_weights(tiny_bert, tiny_data, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    common = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--set", f"data.path={tiny_data}",
              "--set", f"model.retriever={tiny_bert}", "--set", f"model.reranker={tiny_bert}",
              "--set", "train.max_steps=40", "--set", "train.save_every=3"]
    ref = tmp_path / "ref"
    subprocess.run(_cli("train", *common, "--output", str(ref)), check=True, env=env, cwd=ROOT)

    run = tmp_path / "run"
    proc = subprocess.Popen(_cli("train", *common, "--output", str(run)), env=env, cwd=ROOT)
    target = run / "checkpoints" / "step-00000006"
    deadline = time.time() + 120
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "retriever").exists(), "the run finished before it could be interrupted"
    # a half-written newer checkpoint must be ignored on resume
    (run / "checkpoints" / "step-00000099").mkdir(parents=True)
    (run / "checkpoints" / "step-00000099" / "model.bin").write_bytes(b"trunc")
    subprocess.run(_cli("train", *common, "--output", str(run), "--resume"), check=True, env=env, cwd=ROOT)

    a, b = _state(ref), _state(run)
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [h["step"] for h in log] == list(range(1, 41))


def test_sigterm_saves_checkpoint_and_exits_143(tiny_bert, tiny_data, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    run = tmp_path / "run"
    args = ["train", "--config", str(ROOT / "configs" / "tiny.yaml"), "--set", f"data.path={tiny_data}",
            "--set", f"model.retriever={tiny_bert}", "--set", f"model.reranker={tiny_bert}",
            "--set", "train.max_steps=100000", "--set", "train.save_every=2", "--output", str(run)]
    proc = subprocess.Popen(_cli(*args), env=env, cwd=ROOT)
    first = run / "checkpoints" / "step-00000002"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143  # 128 + SIGTERM: stopped, not finished (`train && index` must not go on)
    done = [p for p in (run / "checkpoints").iterdir() if (p / COMPLETE_MARKER).exists()]
    assert done and not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".tmp")]
