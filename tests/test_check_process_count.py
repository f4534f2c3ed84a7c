"""scripts/check_process_count.py on the tiny model: one process against two give the same bits, and the report
says so; a non-empty --output is refused before any work."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_process_count.py"


def _run(monkeypatch, *args: str) -> int:
    monkeypatch.setattr(sys, "argv", ["check_process_count.py", *args])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    return done.value.code


@pytest.mark.slow
def test_one_and_two_processes_give_the_same_bits(tiny_bert, tiny_data, tmp_path, monkeypatch, capsys):
    out = tmp_path / "check"
    code = _run(monkeypatch, "--data", str(tiny_data), "--model", str(tiny_bert), "--batch-size", "4", "--k", "10",
                "--output", str(out))
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["identical"] is True
    assert report["passages"] == 60 and report["queries"] > 0 and report["vectors_equal"]
    assert report["queries_reordered"] == 0 and report["max_score_diff"] == 0.0
    assert report["ndcg@10_one"] == report["ndcg@10_many"] > 0
    assert "Verdict: the same bits" in (out / "report.md").read_text()
    assert "| index vectors bit-identical | True" in capsys.readouterr().out


def test_compare_reports_a_difference(tiny_bert, tiny_data, tmp_path):
    # two folders whose runs differ in one query's order: the comparison must count it (the check can fail)
    import numpy as np

    from rocketkd.data.formats import load_retrieval_data

    mod = runpy.run_path(str(SCRIPT))
    data = load_retrieval_data(tiny_data)
    qids = sorted(data.qrels["test"])
    for name, swap in (("one", False), ("many", True)):
        folder = tmp_path / name
        (folder / "index").mkdir(parents=True)
        import faiss

        index = faiss.IndexFlatIP(4)
        index.add(np.eye(4, dtype=np.float32) + (0.5 if swap else 0.0))
        faiss.write_index(index, str(folder / "index" / "index.faiss"))
        (folder / "index" / "ids.txt").write_text("a\nb\nc\nd\n")
        lines = []
        for i, q in enumerate(qids):
            hits = [("p1", 2.0), ("p2", 1.0)]
            if swap and i == 0:
                hits = hits[::-1]
            lines += [f"{q} Q0 {p} {r + 1} {s} t" for r, (p, s) in enumerate(hits)]
        (folder / "run.trec").write_text("\n".join(lines) + "\n")
    found = mod["compare"](tmp_path / "one", tmp_path / "many", data.qrels["test"])
    assert found["queries_reordered"] == 1 and not found["vectors_equal"] and found["rows_differing"] == 4
    assert found["max_vector_diff"] == pytest.approx(0.5) and found["same_ids"]


def test_refuses_a_non_empty_output(tmp_path, monkeypatch, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert _run(monkeypatch, "--output", str(out)) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (out / "mine.txt").read_text() == "keep"
