"""Memory of a whole-corpus encode stays within the embedding matrix plus a fixed budget:
``scripts/bench_encode_memory.py`` at 20,000 synthetic passages on its tiny model, in a child process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_encode_memory_within_embeddings_and_budget(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench_encode_memory.py"), "--passages", "20000",
         "--json-out", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["passages"] == 20_000 and result["dim"] == 32
    assert result["embeddings_mib"] == pytest.approx(20_000 * 32 * 4 / 2**20, abs=0.01)
    # the rise counts the encode's own arrays: at least the embeddings arrived
    assert result["anon_rise_mib"] >= result["embeddings_mib"] - 0.5
    assert result["holds"], (
        f"anonymous memory rose {result['anon_rise_mib']} MiB; allowed {result['allowed_mib']} MiB "
        f"(embeddings {result['embeddings_mib']} + bookkeeping {result['bookkeeping_mib']} + budget {result['budget_mib']})"
    )
