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

REPO = Path(__file__).resolve().parent.parent
TINY_DATA = Path(__file__).parent / "resources" / "tiny"
TINY_BERT = (
    Path(__file__).parent / "resources" / "tiny-bert"
)  # read only: the script saves its models elsewhere


def test_bench_search_quick_ends_with_json(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "ROCKETKD_CACHE_DIR": str(tmp_path / "cache"),
        "TMPDIR": str(tmp_path),
    }
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_search.py"),
            "--quick",
            "--model",
            str(TINY_BERT),
            "--data",
            str(TINY_DATA),
            "--threads",
            "1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
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
