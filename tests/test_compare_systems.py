"""scripts/compare_systems.py on tiny models: recipes share their common stages, single-teacher recipes, the table."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_compare_systems_shares_stages_and_adds_single_teacher_recipes(tiny_bert, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "compare"
    argv = ["compare_systems.py", "--config", str(ROOT / "configs" / "tiny.yaml"), "--seeds", "1",
            "--modes", "contrastive", "--teachers", "bm25", "--output", str(out),
            "--set", f"data.path={tiny_data}", "--set", f"model.retriever={tiny_bert}",
            "--set", f"model.reranker={tiny_bert}"]
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")

    first = json.loads((out / "seed1" / "contrastive" / "stages.json").read_text())
    single = json.loads((out / "seed1" / "only-bm25" / "stages.json").read_text())
    # the warm-up was copied, not redone: the same record (its time included), paths moved to the new run
    assert single["warmup"]["seconds"] == first["warmup"]["seconds"]
    assert single["warmup"]["retriever"].startswith(str(out / "seed1" / "only-bm25"))
    assert single["teachers-1"]["weights"] == {"bm25": 1.0} and single["teachers-1"]["mode"] == "joint"
    assert "teachers-1" not in first

    table = (out / "table.md").read_text()
    assert "--teachers bm25" in table.splitlines()[0]
    assert "| retriever: distilled from bm25 alone (kept without the dev check) (n=1) |" in table
    assert "| retriever: contrastive only (labels, in-batch + mined negatives) (n=1) |" in table
    raw = json.loads((out / "raw.json").read_text())
    assert raw["teachers"]["seed1"][0]["recipe"] == "only-bm25"

    paired = (out / "paired.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| "): line for line in paired.splitlines()[2:]}
    assert set(rows) == {"contrastive vs base", "contrastive vs bm25", "contrastive re-ranked vs contrastive",
                         "contrastive re-ranked vs base"}
    # the A column is the recipe's own test nDCG@10 (one seed: the mean over queries of its run)
    result = json.loads((out / "seed1" / "contrastive" / "results.json").read_text())
    a = float(rows["contrastive vs bm25"].split(" | ")[1])
    assert abs(a - result["systems"]["retriever"]["nDCG@10"]) < 1e-4
    # --paired-only trains nothing and writes the same tests again
    (out / "paired.md").unlink()
    monkeypatch.setattr(sys, "argv", [*argv, "--paired-only"])
    runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")
    assert (out / "paired.md").read_text() == paired
    # --export keeps per-query values small enough to commit; the paired tests read them where no run file is left
    kept = tmp_path / "kept"
    monkeypatch.setattr(sys, "argv", [*argv, "--paired-only", "--export", str(kept)])
    runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")
    per_query = json.loads((kept / "seed1" / "contrastive" / "per_query.json").read_text())
    assert set(per_query) == {"dev", "test"} and {"retriever", "reranked", "base", "bm25"} <= set(per_query["test"])
    assert not (kept / "seed1" / "contrastive" / "runs").exists()
    assert json.loads((kept / "seed1" / "contrastive" / "results.json").read_text()) == result
    exported = [a if a != str(out) else str(kept) for a in argv]
    monkeypatch.setattr(sys, "argv", [*exported, "--paired-only"])
    runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")
    assert (kept / "paired.md").read_text() == paired
    monkeypatch.setattr(sys, "argv", [*argv, "--export", str(kept)])  # a training run never exports
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")
    assert exc.value.code == 2
    monkeypatch.setattr(sys, "argv", [*argv, "--paired-only"])
    # a prior recipe's runs add the re-ranker alone against its prior alone (here stand-ins: reranked and retriever,
    # so the pair must equal "contrastive re-ranked vs contrastive")
    runs = out / "seed1" / "contrastive" / "runs"
    shutil.copy(runs / "reranked.test.trec", runs / "reranker-raw.test.trec")
    shutil.copy(runs / "retriever.test.trec", runs / "prior.test.trec")
    runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")
    prior_rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1:]
                  for line in (out / "paired.md").read_text().splitlines()[2:]}
    assert prior_rows["contrastive re-ranker alone vs contrastive prior alone"] == \
        prior_rows["contrastive re-ranked vs contrastive"]
    (runs / "reranker-raw.test.trec").unlink()
    (runs / "prior.test.trec").unlink()

    # --against: the same recipe finished elsewhere is paired with its namesake (here the same runs: no difference),
    # a recipe finished only there joins the ablation order; --split dev writes paired.dev.md from the dev runs
    other = tmp_path / "other"
    shutil.copytree(out / "seed1" / "contrastive", other / "seed1" / "contrastive")
    shutil.copytree(out / "seed1" / "contrastive", other / "seed1" / "static")
    monkeypatch.setattr(sys, "argv", [*argv, "--paired-only", "--against", str(other), "--split", "dev"])
    runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")
    dev = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in
           (out / "paired.dev.md").read_text().splitlines()[2:]}
    assert {"static vs contrastive", "contrastive vs contrastive [other]",
            "contrastive re-ranked vs contrastive re-ranked [other]"} <= set(dev)
    assert float(dev["contrastive vs contrastive [other]"][3]) == 0.0
    assert "(dev nDCG@10" in (out / "paired.dev.md").read_text().splitlines()[0]
    from rocketkd.data.formats import load_qrels, read_trec_run
    from rocketkd.evaluation.metrics import evaluate_run

    own = evaluate_run(read_trec_run(out / "seed1" / "contrastive" / "runs" / "retriever.dev.trec"),
                       load_qrels(tiny_data / "qrels" / "dev.tsv"), ["nDCG@10"]).mean["nDCG@10"]
    assert abs(float(dev["contrastive vs contrastive [other]"][1]) - own) < 1e-4

    # a later invocation with another recipe starts from the seed's recipe finished earlier, not from scratch
    later = [a for a in argv if a not in ("--teachers", "bm25")]
    later[later.index("contrastive")] = "static"
    record = out / "seed1" / "contrastive" / "stages.json"  # a time no rerun would give marks the copied record
    record.write_text(json.dumps({**first, "warmup": {**first["warmup"], "seconds": 12345.0}}))
    monkeypatch.setattr(sys, "argv", later)
    runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")
    static = json.loads((out / "seed1" / "static" / "stages.json").read_text())
    assert static["warmup"]["seconds"] == 12345.0
    assert static["warmup"]["retriever"].startswith(str(out / "seed1" / "static"))


def test_compare_systems_paired_only_refuses_a_missing_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["compare_systems.py", "--output", str(tmp_path / "nope"), "--paired-only"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "scripts" / "compare_systems.py"), run_name="__main__")
    assert exc.value.code == 2
    assert "nope: no such folder" in capsys.readouterr().err


def test_exported_runs_can_be_committed():
    """``--export docs/runs`` is meant to be committed: an unanchored ``runs/`` in .gitignore once hid it from git,
    and the exported seeds were lost with the machine."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    # the suite runs from a clone (CI, scripts/test.sh): without git this is a failure, not a skip
    assert shutil.which("git") and (root / ".git").exists(), "tests run from a git clone of rocketkd"
    ignored = subprocess.run(["git", "check-ignore", "-q", "docs/runs/scifact_two_pass/seed1/joint/per_query.json"],
                             cwd=root)
    assert ignored.returncode == 1, "docs/runs/ is ignored by git"
    # what the scripts write by default stays ignored
    assert subprocess.run(["git", "check-ignore", "-q", "outputs/demo/results.json"], cwd=root).returncode == 0
