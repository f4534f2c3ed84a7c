"""The CLI's console (issue 22): quiet by default apart from progress bars and one result line per stage, -q / -v /
--no-progress before or after the stage, a log file in the output folder, results printed by rank 0 only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rocketkd.cli import LOG_FILE, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
QRELS = ROOT / "tests" / "resources" / "tiny" / "qrels" / "test.tsv"


def _run_file(tmp_path: Path) -> Path:
    run = tmp_path / "run.trec"
    run.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\nq2 Q0 d3 1 1.0 x\n")
    return run


@pytest.mark.parametrize("argv", [
    ["-q", "evaluate", "--run", "r", "--qrels", "q"],
    ["evaluate", "--run", "r", "--qrels", "q", "-q"],
    ["evaluate", "-q", "--run", "r", "--qrels", "q"],
])
def test_quiet_parses_before_or_after_the_stage(argv):
    args = build_parser().parse_args(argv)
    assert args.quiet is True and args.stage == "evaluate"


def test_verbose_and_no_progress_parse_anywhere():
    args = build_parser().parse_args(["-v", "index", "--model", "m", "--corpus", "c", "--output", "o", "-v",
                                      "--no-progress"])
    assert args.verbose >= 1 and args.no_progress is True
    args = build_parser().parse_args(["--no-progress", "config"])
    assert args.no_progress is True and not hasattr(args, "verbose")


@pytest.mark.parametrize("flag_first", [True, False])
def test_quiet_still_prints_the_result(tmp_path, capsys, flag_first):
    argv = ["evaluate", "--run", str(_run_file(tmp_path)), "--qrels", str(QRELS), "--metrics", "nDCG@10", "--json"]
    assert main(["-q", *argv] if flag_first else [*argv, "-q"]) == 0
    out, err = capsys.readouterr()
    assert '"nDCG@10"' in out and err == ""


def test_only_rank_zero_prints(tmp_path, capsys, monkeypatch):
    argv = ["evaluate", "--run", str(_run_file(tmp_path)), "--qrels", str(QRELS), "--json"]
    monkeypatch.setenv("RANK", "1")
    assert main(argv) == 0
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    assert main(argv) == 0
    assert '"MRR@10"' in capsys.readouterr().out


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("TRANSFORMERS_VERBOSITY", None)
    return subprocess.run([sys.executable, "-m", "rocketkd.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


_BAR = re.compile(r"^(encode passages|encode querys|encode queries|re-rank|bm25)\b")
_ROCKETKD_WARNING = re.compile(r"^\d\d:\d\d:\d\d WARNING rocketkd\.")


def test_default_console_is_quiet_and_the_index_folder_gets_a_log(tiny_bert, tiny_data, tmp_path):
    index = tmp_path / "idx"
    done = _cli(["index", "--model", tiny_bert, "--corpus", tiny_data, "--output", index], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [f"indexed 60 passages (Flat, dim 32) -> {index}"]
    # progress bars only: no faiss loader report, no transformers "Loading weights" / "Writing model shards" bars
    lines = [ln for ln in re.split(r"[\r\n]", done.stderr) if ln.strip()]
    assert lines and all(_BAR.match(ln) for ln in lines), done.stderr
    log = (index / LOG_FILE).read_text()
    assert log.startswith("==> rocketkd index --model") and "indexed 60 passages" in log and "exit 0" in log

    # a re-ranking search with BM25: no bm25s DEBUG lines, no transformers load report; --no-progress after the
    # stage silences the bars; what is left is the one result line and rocketkd's own warning (the new head)
    run = tmp_path / "run.trec"
    done = _cli(["search", "--index", index, "--queries", tiny_data, "--split", "test", "--output", run,
                 "--rerank", tiny_bert, "--fusion-weight", "0.3", "--bm25-weight", "0.3", "--no-progress"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines() == [f"4 queries x top-100 -> {run}"]
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert all(_ROCKETKD_WARNING.match(ln) for ln in lines), done.stderr
    assert "DEBUG" not in done.stderr and "LOAD REPORT" not in done.stderr

    # -v shows rocketkd's INFO lines
    done = _cli(["-v", "search", "--index", index, "--query", "heat flow", "--k", "2", "--no-progress"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"INFO rocketkd\.cli: rocketkd search: exit 0", done.stderr)


def test_a_refused_folder_gets_no_log(tiny_bert, tiny_data, tmp_path, capsys):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert main(["index", "--model", str(tiny_bert), "--corpus", str(tiny_data), "--output", str(foreign)]) == 2
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert "error" in capsys.readouterr().err


def test_search_query_honours_k_and_output_and_index_refuses_a_reranker(tiny_bert, tiny_data, tmp_path, capsys):
    from rocketkd.data import read_trec_run
    from rocketkd.models import CrossEncoderRanker

    index = tmp_path / "idx"
    assert main(["-q", "index", "--model", str(tiny_bert), "--corpus", str(tiny_data), "--output", str(index)]) == 0
    capsys.readouterr()
    run = tmp_path / "one.trec"
    assert main(["-q", "search", "--index", str(index), "--query", "heat flow", "--k", "25",
                 "--output", str(run)]) == 0
    out = capsys.readouterr().out.splitlines()
    hits = [ln for ln in out if re.match(r"^\s*\d+\. ", ln)]
    assert len(hits) == 25 and hits[-1].lstrip().startswith("25. ")
    assert out[-1] == f"1 queries x top-25 -> {run}"
    assert len(read_trec_run(run)["query"]) == 25

    reranker = CrossEncoderRanker.from_pretrained(tiny_bert).save(tmp_path / "reranker")
    capsys.readouterr()
    assert main(["index", "--model", str(reranker), "--corpus", str(tiny_data), "--output",
                 str(tmp_path / "idx2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "re-ranker" in err[0] and not (tmp_path / "idx2").exists()
