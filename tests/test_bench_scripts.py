"""The benchmark scripts still run: ``scripts/bench_search.py --quick`` on the tiny model and collection.

Nothing is timed here; the test only checks that the script completes and that its last stdout line is the JSON
object the documentation describes (with the rocketkd / peer ``ratio``).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
TINY_DATA = Path(__file__).parent / "resources" / "tiny"
TINY_BERT = (
    Path(__file__).parent / "resources" / "tiny-bert"
)  # read only: the script saves its models elsewhere


def test_bench_search_quick_ends_with_json(tmp_path):
    proc = _run_script(
        "bench_search.py", ["--quick", "--model", str(TINY_BERT), "--data", str(TINY_DATA), "--threads", "1"], tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, "no output on stdout"
    result = json.loads(lines[-1])
    assert result["bench"] == "search"
    assert (
        isinstance(result["ratio"], (int, float)) and math.isfinite(result["ratio"]) and result["ratio"] > 0
    )
    for part in ("synthetic", "real_vectors", "real_text_e2e", "rerank"):
        assert part in result, f"{part} missing from the JSON line"
        assert result[part]["ratio"] > 0
    assert result["synthetic"]["same_results"] and result["real_vectors"]["same_results"]
    assert result["rerank"]["pairs"] > 0
    assert "load1_median" in result["load"] and "cpu" in result["machine"]


def test_bench_reranker_sweeps_warmups_and_fuses_on_dev(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import runpy

    out = tmp_path / "rr"
    argv = ["bench_reranker.py", "--config", str(REPO / "configs" / "tiny.yaml"), "--output", str(out),
            "--setting", "two:train.max_steps=2", "--setting", "three:train.max_steps=3,train.lr_reranker=1e-4",
            "--set", f"data.path={tiny_data}", "--set", f"model.retriever={tiny_bert}",
            "--set", f"model.reranker={tiny_bert}"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(REPO / "scripts" / "bench_reranker.py"), run_name="__main__")
    rows = json.loads((out / "raw.json").read_text())
    assert [r["setting"] for r in rows] == ["two", "three"] and [r["steps"] for r in rows] == [2, 3]
    for r in rows:
        assert r["reranker_ce_last"] is not None and math.isfinite(r["reranker_ce_last"])
        # the weight is chosen on dev over a grid that holds both ends: fused is at least either alone there
        assert r["dev"]["fused"] >= max(r["dev"]["base"], r["dev"]["reranker"]) - 1e-9
        assert rows[0]["dev"]["base"] == r["dev"]["base"]  # one base encoder for every setting
    table = (out / "table.md").read_text()
    assert "| three | 3 |" in table and "--setting three:train.max_steps=3,train.lr_reranker=1e-4" in table


# ----------------------------------------------------------------------------------------------------------------
# --device: on this CPU-only machine "auto" must fall back to the CPU and still report the GPU-mode figures (MFU
# against a small --matmul-n peak, the torch search backend, bf16 on both sides) through the same code paths.


def _run_script(name: str, args: list[str], tmp_path: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ROCKETKD_CACHE_DIR": str(tmp_path / "cache"),
        "TMPDIR": str(tmp_path),
    }
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout,
    )


def _last_json(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, "no output on stdout"
    return json.loads(lines[-1])


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


needs_no_cuda = pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the CPU fallback of --device auto"
)


@needs_no_cuda
def test_bench_encode_device_auto_falls_back_and_reports_mfu(tmp_path):
    proc = _run_script(
        "bench_encode.py",
        ["--quick", "--device", "auto", "--model", str(TINY_BERT), "--data", str(TINY_DATA), "--skip-memory",
         "--threads", "1", "--matmul-n", "64", "--matmul-reps", "2", "--peer-autocast", "bf16"],
        tmp_path,
    )
    result = _last_json(proc)
    assert result["bench"] == "encode" and result["device"] == "cpu" and result["requested_device"] == "auto"
    assert result["machine"]["device"] == {"type": "cpu"}
    assert result["st_dtype"] == "bf16" and set(result["systems"]) == {"rocketkd", "st", "rocketkd_fp32", "st_fp32"}
    assert result["ratio_fp32_peer"] == "st_fp32" and _positive(result["ratio"])
    assert _positive(result["matmul_peak_tflops"])
    assert result["matmul_peak_device"]["shape"] == "64x64x64"
    n_params = result["mfu_model"]["non_embedding_params"]
    assert n_params == 2 * (4 * 32 * 32 + 2 * 32 * 37 + 9 * 32 + 37) + 2 * 32  # tiny BERT: H 32, FFN 37, 2 layers
    for name, f in result["systems"].items():
        assert 0 < f["tokens_real"] <= f["tokens_padded"], name
        assert _positive(f["mfu_real"]) and f["mfu_padded"] >= f["mfu_real"], name
        assert result["mfu"][name] == {"real": f["mfu_real"], "padded": f["mfu_padded"]}
    # the same tokens for both systems (same tokenizer and max length); padding depends on each one's batching
    assert result["systems"]["rocketkd"]["tokens_real"] == result["systems"]["st"]["tokens_real"]


@needs_no_cuda
def test_bench_train_device_auto_two_lengths_with_mfu(tmp_path):
    # a config with the demo's re-ranker prior on (the default config's): the bench compares the bare losses
    config = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())
    config["model"]["reranker_prior"] = True
    (tmp_path / "prior.yaml").write_text(yaml.safe_dump(config))
    proc = _run_script(
        "bench_train.py",
        ["--quick", "--device", "auto", "--config", str(tmp_path / "prior.yaml"), "--data", str(TINY_DATA),
         "--model", str(TINY_BERT), "--lengths", "3", "5", "--batch", "2", "--threads", "1",
         "--matmul-n", "64", "--matmul-reps", "2"],
        tmp_path,
    )
    result = _last_json(proc)
    assert result["bench"] == "train" and result["device"] == "cpu" and result["requested_device"] == "auto"
    assert result["lengths"] == [3, 5] and set(result["by_length"]) == {"3", "5"}
    assert result["G"] == 3 and result["B"] == 2  # top level = the first length
    assert _positive(result["matmul_peak_tflops"])
    for length, res in result["by_length"].items():
        assert res["G"] == int(length) and res["B"] == 2 and res["candidate_source"] == "sampled"
        systems = res["systems"]
        assert set(systems) == {"rocketkd", "st", "rocketkd_fp32"}  # peer fp32 on cpu: no st_fp32 row
        assert result["lists_per_s_by_length"][length] == {n: f["lists_per_s"] for n, f in systems.items()}
        for name, f in systems.items():
            assert _positive(f["lists_per_s"]) and _positive(f["mfu_real"]), (length, name)
            assert 0 < f["tokens_real_per_step"] <= f["tokens_padded_per_step"]
        # both sides push the same real tokens through their models: B queries + B x L passages + B x L pairs
        assert systems["rocketkd"]["tokens_real_per_step"] == systems["st"]["tokens_real_per_step"]
        assert res["mfu"]["rocketkd"]["real"] == systems["rocketkd"]["mfu_real"]
    five, three = result["by_length"]["5"]["systems"], result["by_length"]["3"]["systems"]
    assert five["rocketkd"]["tokens_real_per_step"] > three["rocketkd"]["tokens_real_per_step"]


@needs_no_cuda
def test_bench_search_device_auto_torch_backend_agrees_with_faiss(tmp_path):
    proc = _run_script(
        "bench_search.py",
        ["--quick", "--device", "auto", "--model", str(TINY_BERT), "--data", str(TINY_DATA), "--threads", "1",
         "--search-backend", "torch", "--peer-autocast", "bf16", "--skip-rerank"],
        tmp_path,
    )
    result = _last_json(proc)
    assert result["device"] == "cpu" and result["requested_device"] == "auto"
    assert result["rocketkd_backend"] == "torch" and result["peer"] == "faiss-cpu IndexFlatIP"
    for part in ("synthetic", "real_vectors"):
        r = result[part]
        assert r["rocketkd_backend"] == "torch" and _positive(r["rocketkd_qps"]) and _positive(r["faiss_qps"])
        assert r["same_results"] and r["topk_id_agreement"] == 1.0 and r["top1_agreement"] == 1.0
    assert result["real_text_e2e"]["peer_dtype"] == "bf16" and "rerank" not in result


@needs_no_cuda
def test_bench_memory_device_auto_runs_children_on_cpu(tmp_path):
    proc = _run_script(
        "bench_memory.py",
        ["--device", "auto", "--model", str(TINY_BERT), "--data", str(TINY_DATA), "--lengths", "4",
         "--chunk-size", "2", "--steps", "1", "--mixed-precision", "bf16"],
        tmp_path,
    )
    result = _last_json(proc)
    assert result["device"] == "cpu" and result["requested_device"] == "auto" and result["mixed_precision"] == "bf16"
    assert result["time_ratio_basis"] == "cpu" and result["memory_ratio"] == 1.0  # one length: flat by definition
    rows = result["rows"]
    assert [(r["L"], r["chunk_size"]) for r in rows] == [(4, None), (4, 2)]
    assert result["peak_mb"] == {"4": {"plain": rows[0]["peak_mb"], "chunked": rows[1]["peak_mb"]}}
    for r in rows:
        assert r["device"] == "cpu" and r["memory_measure"] == "rss_vmhwm" and _positive(r["step_s"])
        assert math.isfinite(r["peak_mb"]) and math.isfinite(r["loss_first_step"])


@needs_no_cuda
def test_bench_memory_attention_dropout_peer_measures_each_configuration_twice(tmp_path):
    proc = _run_script(
        "bench_memory.py",
        ["--model", str(TINY_BERT), "--data", str(TINY_DATA), "--lengths", "4", "--chunk-size", "2", "--steps", "1",
         "--attention-dropout", "0"],
        tmp_path,
    )
    result = _last_json(proc)
    rows = result["rows"]
    assert [(r["L"], r["chunk_size"], r["attention_dropout"]) for r in rows] == [
        (4, None, None), (4, None, 0.0), (4, 2, None), (4, 2, 0.0)]
    ratios = result["attention_dropout_ratios"]
    assert set(ratios) == {"4 plain", "4 chunked"}
    assert ratios["4 plain"]["time"] == pytest.approx(rows[1]["step_cpu_s"] / rows[0]["step_cpu_s"], abs=2e-3)
    assert "attention dropout 0.0 peak" in proc.stdout


@needs_no_cuda
def test_bench_device_cuda_is_refused_without_cuda(tmp_path):
    proc = _run_script("bench_memory.py", ["--device", "cuda", "--lengths", "4"], tmp_path, timeout=120)
    assert proc.returncode != 0
    assert "--device cuda" in proc.stderr and "no CUDA device" in proc.stderr


def test_bench_index_process_times_both_whole_processes(tmp_path):
    # the tiny collection through both whole processes; the ratio and both indexes' quality come back
    proc = _run_script("bench_index_process.py", ["--data", str(TINY_DATA), "--model", str(TINY_BERT), "--reps", "1",
                                                  "--batch-size", "8"], tmp_path)
    result = _last_json(proc)
    assert result["bench"] == "index_process" and len(result["results"]) == 1
    r = result["results"][0]
    assert r["passages"] == 60 and len(r["seconds"]["rocketkd"]) == len(r["seconds"]["st"]) == 1
    assert _positive(r["ratio"]) and r["ratio"] == pytest.approx(r["st_median_s"] / r["rocketkd_median_s"], rel=0.02)
    # the same model and texts on both sides: the two indexes rank the test queries alike
    assert 0 < r["ndcg10_rocketkd"] and r["ndcg10_rocketkd"] == pytest.approx(r["ndcg10_st"], abs=0.05)
    assert "| ST + bf16 script (median s) | ratio |" in proc.stdout


def test_bench_token_budget_times_each_budget_against_the_first(tmp_path):
    # two budgets on the tiny collection: both timed each round, the first is the reference, the vectors agree
    proc = _run_script("bench_token_budget.py", ["--data", str(TINY_DATA), "--model", str(TINY_BERT), "--reps", "2",
                                                 "--budgets", "64", "32", "--batch-size", "8", "--passages", "20",
                                                 "--autocast", "no"], tmp_path)
    result = _last_json(proc)
    assert result["bench"] == "token_budget" and len(result["results"]) == 1
    r = result["results"][0]
    assert r["passages"] == 20 and set(r["budgets"]) == {"64", "32"}
    first, other = r["budgets"]["64"], r["budgets"]["32"]
    assert first["speed_vs_first"] == 1.0 and len(first["seconds"]) == len(other["seconds"]) == 2
    assert _positive(other["speed_vs_first"])
    assert other["speed_vs_first"] == pytest.approx(first["median_s"] / other["median_s"], rel=0.05)
    assert first["max_abs_diff_vs_first"] == 0 and other["max_abs_diff_vs_first"] < 1e-4  # fp32: same vectors
    assert "| token budget | median s | speed vs first |" in proc.stdout


def test_bench_token_budget_rejects_a_zero_budget(tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "bench_token_budget.py"), "--budgets", "0"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2 and "must be positive" in proc.stderr
