"""``--output`` means the same on every stage (issue 22): a folder; a stage that writes one file (mine, search,
benchmark) puts it there under a fixed name, or writes the file itself when the path ends in its suffix. The rules of
docs/reliability.md hold for both forms: a new path or one rocketkd wrote, nothing of the user's replaced. And a run
tag (``search --tag``) is the run file's 6th column, which ``evaluate`` names."""

from __future__ import annotations

import json

import pytest

from rocketkd.cli import LOG_FILE, main
from rocketkd.data import read_candidates, read_trec_run, write_trec_run
from rocketkd.data.formats import is_trec_run, read_run_tags
from rocketkd.errors import OutputError
from rocketkd.io import OUTPUT_MARKER, names_a_file, output_file
from rocketkd.search.benchmark import is_benchmark_table, write_benchmark
from tests.test_safety import TINY_CONFIG, cli, one_error

RUN = {"q1": {"d1": 2.0, "d2": 1.0}}


def test_a_path_with_the_files_suffix_is_the_file_anything_else_a_folder(tmp_path):
    assert names_a_file("runs/dev.trec", "search") and names_a_file("dev.txt.gz", "search")
    assert names_a_file("c.jsonl.gz", "mine") and names_a_file("t.tsv", "benchmark")
    assert not names_a_file("runs/dev", "search") and not names_a_file("mined", "mine")
    assert not names_a_file("x.jsonl", "search")  # a candidate list's suffix is no run file
    assert output_file(tmp_path / "dev.trec", "search", ours=is_trec_run) == (tmp_path / "dev.trec", None)
    assert output_file(tmp_path / "runs", "search", ours=is_trec_run) == (tmp_path / "runs" / "run.trec",
                                                                          tmp_path / "runs")


def test_only_what_rocketkd_writes_is_replaced(tmp_path):
    own = tmp_path / "old.trec"
    write_trec_run(own, RUN)
    assert output_file(own, "search", ours=is_trec_run) == (own, None)  # a rerun replaces its own run file
    notes = tmp_path / "notes.txt"
    notes.write_text("years of work\n")
    with pytest.raises(OutputError, match="not a file rocketkd search writes"):
        output_file(notes, "search", ours=is_trec_run)
    bare = tmp_path / "myrun"  # a file without a suffix: a folder was meant, and it is not one
    bare.write_text("q1 Q0 d1 1 1.0 x\n")
    with pytest.raises(OutputError, match="is a file; --output is a folder"):
        output_file(bare, "search", ours=is_trec_run)
    (tmp_path / "odd.trec").mkdir()
    with pytest.raises(OutputError, match="named like a file"):
        output_file(tmp_path / "odd.trec", "search", ours=is_trec_run)
    users = tmp_path / "users"
    users.mkdir()
    (users / "thesis.tex").write_text("x")
    with pytest.raises(OutputError, match="did not write"):
        output_file(users, "search", ours=is_trec_run)
    table = tmp_path / "t.md"
    write_benchmark(table, [{"dataset": "a", "queries": 1, "passages": 2, "nDCG@10": 0.5}], ["nDCG@10"])
    assert is_benchmark_table(table) and not is_benchmark_table(notes)


def test_search_and_mine_write_into_an_output_folder(capsys, tiny_bert, tiny_data, tmp_path):
    index = tmp_path / "idx"
    assert main(["-q", "index", "--model", str(tiny_bert), "--corpus", str(tiny_data), "--output", str(index)]) == 0
    runs = tmp_path / "runs"
    argv = ["search", "--index", index, "--queries", tiny_data, "--split", "test", "--k", 5, "--output", runs]
    for _ in range(2):  # a rerun writes into its own folder again
        code, out, _ = cli(capsys, *argv)
        assert code == 0 and out.strip() == f"4 queries x top-5 -> {runs / 'run.trec'}"
    assert len(read_trec_run(runs / "run.trec")) == 4
    assert json.loads((runs / OUTPUT_MARKER).read_text())["kind"] == "search"
    assert "rocketkd search" in (runs / LOG_FILE).read_text()
    one_error(cli(capsys, *argv[:-1], index), "search", str(index), "not a search output")  # an index folder

    # --tag: the run file's 6th column (default rocketkd), which evaluate names
    assert read_run_tags(runs / "run.trec") == ["rocketkd"]
    tagged = tmp_path / "tagged.trec"
    assert cli(capsys, *argv[:-1], tagged, "--tag", "exp1")[0] == 0
    assert read_run_tags(tagged) == ["exp1"] and read_trec_run(tagged) == read_trec_run(runs / "run.trec")
    code, out, _ = cli(capsys, "evaluate", "--run", tagged, "--qrels", tiny_data / "qrels" / "test.tsv")
    assert code == 0 and "run tag exp1;" in out
    one_error(cli(capsys, *argv[:-1], tmp_path / "bad.trec", "--tag", "two words"), "search", "--tag", "one word")
    assert not (tmp_path / "bad.trec").exists()

    mined = tmp_path / "mined"
    code, out, _ = cli(capsys, "mine", "--config", TINY_CONFIG, "--set", f"data.path={tiny_data}", "--output", mined)
    assert code == 0 and str(mined / "candidates.jsonl") in out
    assert read_candidates(mined / "candidates.jsonl") and (mined / "candidates.jsonl.meta.json").is_file()
    assert json.loads((mined / OUTPUT_MARKER).read_text())["kind"] == "mine"


def test_a_users_file_is_refused_before_any_work(capsys, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("years of work\n")
    # the index does not exist: the output is refused first
    argv = ["search", "--index", tmp_path / "no-index", "--queries", tmp_path / "q.tsv", "--output", notes]
    one_error(cli(capsys, *argv), "search", str(notes), "not a file rocketkd search writes")
    assert notes.read_text() == "years of work\n"


def test_pipeline_tag_is_the_config_key_checked_before_any_work(capsys, tmp_path):
    out = tmp_path / "p"
    argv = ["pipeline", "--config", TINY_CONFIG, "--output", out, "--tag", "two words"]
    one_error(cli(capsys, *argv), "pipeline", "eval.run_tag", "one word")
    assert not out.exists()
