"""``scripts/bench_scaling.py`` still runs: two tiny corpus sizes, each in its own child process.

Nothing is timed against a target here; the test checks that the script completes, that its last stdout line is the
JSON object the documentation describes (sizes echoed, one row per size, positive times, memory figures present),
and that ``--out`` writes the plot.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SIZES = [200, 400]


def test_bench_scaling_tiny_sizes_end_with_json(tmp_path):
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TMPDIR": str(tmp_path),
    }
    plot = tmp_path / "plot.png"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench_scaling.py"),
            "--sizes",
            *map(str, reversed(SIZES)),  # given out of order: the script sorts them
            "--queries",
            "12",
            "--k",
            "5",
            "--out",
            str(plot),
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
    assert result["bench"] == "scaling"
    assert result["sizes"] == SIZES
    assert result["queries"] == 12 and result["k"] == 5
    assert result["model"]["hidden_size"] == 32 and result["model"]["num_hidden_layers"] == 2
    rows = result["rows"]
    assert [r["passages"] for r in rows] == SIZES
    for row in rows:
        for key in ("encode_s", "index_s", "search_s", "total_s", "encode_cpu_s", "encode_passages_per_s"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key]) and row[key] > 0, (key, row)
        for name in ("encode", "index", "search", "total"):
            rel = row[f"{name}_s_per_passage_rel"]
            assert isinstance(rel, (int, float)) and rel > 0
        assert row["vectors_mib"] == round(row["passages"] * 32 * 4 / 2**20, 2)
        assert 60 <= row["mean_tokens"] <= 104  # 60-100 whole-word tokens + [CLS] [SEP]
        for key in ("peak_anon_mib", "encode_above_vectors_mib", "index_above_vectors_mib"):
            assert isinstance(row[key], (int, float)) and math.isfinite(row[key])
    first = rows[0]
    assert all(first[f"{n}_s_per_passage_rel"] == 1.0 for n in ("encode", "index", "search", "total"))
    assert set(result["slopes"]) >= {"encode_s", "index_s", "search_s", "total_s"}
    assert "| passages |" in proc.stdout  # the table precedes the JSON line
    assert plot.is_file() and plot.stat().st_size > 1000 and result["plot"] == str(plot)
    assert "load1_median" in result["load"] and "cpu" in result["machine"]
