"""``rocketkd benchmark``: one retriever over several BEIR-layout datasets into one table (issue 22), each row equal
to index -> search -> evaluate of that dataset alone."""

from __future__ import annotations

import json
import shutil

import pytest

from rocketkd.cli import main
from rocketkd.data import load_retrieval_data
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.models import DualEncoder
from rocketkd.search.benchmark import benchmark, format_benchmark
from rocketkd.search.index import DenseIndex, search_run


def _second_dataset(tiny_data, tmp_path):
    """The tiny collection with half its test judgments: another dataset, other numbers."""
    other = tmp_path / "half"
    shutil.copytree(tiny_data, other)
    qrels = other / "qrels" / "test.tsv"
    header, *lines = qrels.read_text().splitlines()
    qrels.write_text("\n".join([header, *lines[: max(1, len(lines) // 2)]]) + "\n")
    return other


def test_each_row_is_that_dataset_alone_and_the_mean_is_unweighted(tiny_bert, tiny_data, tmp_path):
    other = _second_dataset(tiny_data, tmp_path)
    model = DualEncoder.from_pretrained(tiny_bert)
    metrics = ["nDCG@10", "recall_100"]
    rows = benchmark(model, [tiny_data, other], metrics=metrics, k=50, show_progress=False)
    assert [r["dataset"] for r in rows] == [tiny_data.name, "half"]
    for row, folder in zip(rows, [tiny_data, other]):
        data = load_retrieval_data(folder)
        run = search_run(DenseIndex.build(model, data.corpus, show_progress=False), data.split_queries("test"), 50)
        expected = evaluate_run(run, data.qrels["test"], metrics)
        assert row["passages"] == 60 and row["queries"] == expected.num_queries
        for m in metrics:
            assert row[m] == pytest.approx(expected.mean[m], abs=1e-9)
    table = json.loads(format_benchmark(rows, metrics, style="json"))
    assert table[-1]["dataset"] == "mean"
    assert table[-1]["nDCG@10"] == pytest.approx((rows[0]["nDCG@10"] + rows[1]["nDCG@10"]) / 2)


def test_cli_prints_the_table_and_writes_it(tiny_bert, tiny_data, tmp_path, capsys):
    other = _second_dataset(tiny_data, tmp_path)
    out = tmp_path / "table.tsv"
    assert main(["-q", "benchmark", "--model", str(tiny_bert), "--datasets", str(tiny_data), str(other),
                 "--metrics", "nDCG@10,MRR@10", "--output", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].split("|")[1].strip() == "dataset" and printed[-1].startswith("| mean")
    header, *lines = out.read_text().splitlines()
    assert header.split("\t") == ["dataset", "queries", "passages", "nDCG@10", "MRR@10"]
    assert [ln.split("\t")[0] for ln in lines] == [tiny_data.name, "half", "mean"]


def test_a_missing_split_is_refused_before_any_encoding(tiny_bert, tiny_data, tmp_path, capsys):
    assert main(["-q", "benchmark", "--model", str(tiny_bert), "--datasets", str(tiny_data), "--split", "nope"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and len(err.strip().splitlines()) == 1
