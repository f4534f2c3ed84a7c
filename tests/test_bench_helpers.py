"""Pure helpers of ``scripts/bench_common.py`` behind the benchmarks' GPU mode: device resolution, synchronised timing,
FLOP / MFU accounting, the token counter, the matmul peak, top-k agreement and the random-weight model copy.

Everything runs on the CPU in seconds; ``bench_common`` is imported directly (its import has no side effects, unlike
the scripts, whose ``setup_env`` quiets loggers process-wide).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import bench_common as bc  # noqa: E402

TINY_BERT = Path(__file__).parent / "resources" / "tiny-bert"  # read only


def _bert(hidden=8, layers=2, inter=12, cls=False):
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    config = BertConfig(
        vocab_size=30,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=inter,
        max_position_embeddings=16,
        num_labels=1,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    return (BertForSequenceClassification if cls else BertModel)(config)


# ---------------------------------------------------------------------------------------------------------------
# FLOP accounting


def test_non_embedding_params_matches_a_hand_count():
    H, L, I = 8, 2, 12  # noqa: E741
    # per layer: Q, K, V, O (4 H^2 + 4 H), 2 LayerNorms (4 H), FFN in (H I + I) and out (I H + H)
    per_layer = 4 * H * H + 4 * H + 4 * H + H * I + I + I * H + H
    expected = 2 * H + L * per_layer  # + the embeddings' LayerNorm; word/position/type embeddings and pooler excluded
    assert expected == 1080
    assert bc.non_embedding_params(_bert(H, L, I)) == expected
    # a classifier: its head (H weights + 1 bias) counts, its pooler does not
    assert bc.non_embedding_params(_bert(H, L, I, cls=True)) == expected + H + 1
    # everything else of the model is embeddings or pooler
    model = _bert(H, L, I)
    emb = sum(p.numel() for p in model.embeddings.parameters()) - 2 * H
    assert sum(p.numel() for p in model.parameters()) == expected + emb + H * H + H


def test_flops_mfu_and_tflops():
    assert bc.forward_flops(1000, 50) == 100_000.0  # 2 N T
    assert bc.train_flops(1000, 50) == 300_000.0  # 6 N T
    assert bc.tflops(3e12, 2.0) == 1.5
    assert bc.mfu_ratio(2e12, 1.0, 4.0) == pytest.approx(0.5)
    # MiniLM-sized: 10.6M params, 100k tokens in 0.05 s against a 400 TFLOP/s peak
    achieved = bc.forward_flops(10_647_552, 100_000) / 0.05 / 1e12
    assert bc.mfu_ratio(bc.forward_flops(10_647_552, 100_000), 0.05, 400.0) == pytest.approx(achieved / 400.0)
    for peak in (None, 0.0):
        assert bc.mfu_ratio(1e12, 1.0, peak) is None
    assert bc.mfu_ratio(1e12, 0.0, 100.0) is None and bc.tflops(1e12, 0.0) is None


def test_token_counter_counts_real_and_padded_tokens_once_per_forward():
    enc = _bert()
    head = _bert(cls=True)
    root = torch.nn.ModuleDict({"a": enc, "b": head, "again": enc})  # enc reachable twice: hooked once
    counter = bc.BackboneTokenCounter(root)
    assert len(counter.handles) == 2  # the classifier's inner BertModel is not hooked separately
    ids = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 0, 0, 0]])  # 5 real tokens, 10 padded
    mask = (ids != 0).long()
    start = counter.mark()
    enc(input_ids=ids, attention_mask=mask)
    enc.forward(input_ids=ids, attention_mask=mask)  # direct .forward (sentence-transformers 6 calls it so)
    head(input_ids=ids[:1], attention_mask=mask[:1])
    tot = counter.totals(start, counter.mark())
    p_enc, p_head = bc.non_embedding_params(enc), bc.non_embedding_params(head)
    assert tot["tokens_real"] == 5 + 5 + 3 and tot["tokens_padded"] == 10 + 10 + 5
    assert tot["param_tokens_real"] == p_enc * 10 + p_head * 3
    assert tot["param_tokens_padded"] == p_enc * 20 + p_head * 5
    assert bc.train_flops(1, tot["param_tokens_real"]) == 6 * (p_enc * 10 + p_head * 3)
    counter.remove()
    enc(input_ids=ids, attention_mask=mask)
    assert counter.mark() == 3  # no hook left
    with pytest.raises(ValueError):
        bc.BackboneTokenCounter(torch.nn.Linear(2, 2))


# ---------------------------------------------------------------------------------------------------------------
# devices and timing


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback of a machine without CUDA")
def test_resolve_device_falls_back_to_cpu_and_refuses_missing_cuda():
    assert bc.resolve_device("auto") == torch.device("cpu")
    assert bc.resolve_device("cpu") == torch.device("cpu")
    assert bc.resolve_device(None) == torch.device("cpu")
    with pytest.raises(SystemExit, match="no CUDA device"):
        bc.resolve_device("cuda")
    with pytest.raises(SystemExit):
        bc.resolve_device("tpu")
    bc.synchronize("cpu")  # a no-op off CUDA
    assert bc.device_info("cpu") == {"type": "cpu"}
    assert bc.autocast_context("cpu", None).__enter__() is None  # nullcontext
    assert bc.dtype_name(None) == "fp32" and bc.dtype_name(torch.bfloat16) == "bf16"


def test_interleaved_brackets_every_timed_call_with_synchronize(monkeypatch):
    events: list[str] = []
    monkeypatch.setattr(bc, "synchronize", lambda device=None: events.append(f"sync:{device}"))
    fns = {"a": lambda: events.append("a"), "b": lambda: events.append("b")}
    times, _ = bc.interleaved(fns, 2, warmup=1, verbose=False, device="cuda")
    assert [len(v) for v in times.values()] == [2, 2]
    timed = events[events.index("sync:cuda") :]  # after the warm-ups: one sync, then sync / call / sync per call
    assert timed == ["sync:cuda"] + ["sync:cuda", "a", "sync:cuda", "sync:cuda", "b", "sync:cuda"] * 2


def test_matmul_peak_on_cpu():
    one = bc.matmul_peak_tflops("cpu", 64, warmup=1, reps=2)
    assert one["n"] == 64 and one["reps"] == 2 and one["dtype"] == "bf16"
    assert one["tflops"] == pytest.approx(2 * 64**3 / (one["mean_ms"] / 1e3) / 1e12)
    off = bc.MatmulPeak("cpu", None)  # default on cpu: no peak, MFU keys null
    off.measure()
    assert not off.enabled and off.tflops is None and off.summary() is None
    on = bc.MatmulPeak("cpu", 32, reps=2)
    on.measure()
    on.measure()
    assert on.tflops == max(s["tflops"] for s in on.samples) > 0
    assert on.summary()["shape"] == "32x32x32" and len(on.summary()["samples_tflops"]) == 2
    with pytest.raises(ValueError):
        bc.matmul_peak_tflops("cpu", 0)


def test_topk_agreement():
    assert bc.topk_agreement([["a", "b", "c"]], [["a", "b", "c"]], 3) == (1.0, 1.0)
    overlap, top1 = bc.topk_agreement([["a", "b", "c"], ["x", "y", "z"]], [["b", "a", "d"], ["x", "q", "r"]], 3)
    assert overlap == pytest.approx((2 / 3 + 1 / 3) / 2) and top1 == 0.5
    assert bc.topk_agreement([], [], 5) == (1.0, 1.0)
    assert bc.topk_agreement([["a"]], [["a", "b"]], 10) == (1.0, 1.0)  # short lists: over what both hold
    with pytest.raises(ValueError):
        bc.topk_agreement([["a"]], [], 1)


def test_random_copy_loads_in_rocketkd_and_sentence_transformers(tmp_path):
    from safetensors.torch import load_file
    from sentence_transformers import SentenceTransformer

    from rocketkd.models import DualEncoder

    out = bc.save_random_copy(TINY_BERT, tmp_path / "random", seed=1)
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    src, new = load_file(TINY_BERT / "model.safetensors"), load_file(out / "model.safetensors")
    key = next(k for k in src if k.endswith("attention.self.query.weight"))
    assert src[key].shape == new[key].shape and not torch.equal(src[key], new[key])  # same shapes, new values
    model = DualEncoder.from_pretrained(out)
    st = SentenceTransformer(str(out), device="cpu")
    texts = ["wing flow", "boundary layer heat transfer"]
    a = model.encode(texts, side="passage")
    b = st.encode(texts)
    assert a.shape == b.shape == (2, 32) and math.isfinite(float(a.sum()))
    assert abs(a - b).max() < 1e-4  # mean pooling on both sides, no Normalize


def test_average_checkpoints_is_the_mean_of_the_retriever_weights(tiny_bert, tiny_data, tmp_path):
    """scripts/average_checkpoints.py: one checkpoint reproduces the trained retriever; two give their mean."""
    import average_checkpoints  # scripts/ is on sys.path (above)
    import torch

    from rocketkd.config import load_config
    from rocketkd.models.loading import load_retriever
    from rocketkd.pipeline import run_train as train

    run = tmp_path / "run"
    cfg = load_config(REPO / "configs" / "tiny.yaml", [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}", f"output_dir={run}",
        "train.max_steps=4", "train.save_every=2", "train.keep_checkpoints=5", "train.keep_best=false"])
    train(cfg)

    def weights(folder):
        return {k: v.float() for k, v in load_retriever(cfg, str(folder)).state_dict().items()}

    assert average_checkpoints.main(["--run", str(run), "--steps", "4", "--output", str(tmp_path / "last")]) == 0
    trained, last = weights(run / "retriever"), weights(tmp_path / "last")
    assert all(torch.equal(trained[k], last[k]) for k in trained)

    average_checkpoints.main(["--run", str(run), "--steps", "2", "4", "--output", str(tmp_path / "mean")])
    at2 = average_checkpoints.checkpoint_weights(run / "checkpoints" / "step-00000002")
    mean = weights(tmp_path / "mean")
    changed = [k for k in at2 if not torch.equal(at2[k], trained[k])]
    assert changed  # the two steps differ, so the mean is a real test
    for k in at2:
        torch.testing.assert_close(mean[k], (at2[k] + trained[k]) / 2)
    with pytest.raises(SystemExit, match="step-00000003: no such checkpoint"):
        average_checkpoints.main(["--run", str(run), "--steps", "3", "--output", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
