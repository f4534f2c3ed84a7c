"""curves.png's data (issue 22): smoothed losses over global steps, the chance line, recall against base, intervals."""

from __future__ import annotations

import json
import math

import pytest

from rocketkd.evaluation.plots import plot_data, plot_run, smooth


def test_smooth_is_a_trailing_mean():
    assert smooth([1, 2, 3, 4, 5, 6], window=3) == pytest.approx([1, 1.5, 2, 3, 4, 5])
    assert smooth([4.0], window=5) == [4.0] and smooth([], window=2) == []
    with pytest.raises(ValueError):
        smooth([1.0], window=0)


def _log(folder, rows):
    folder.mkdir(parents=True)
    (folder / "train_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def run(tmp_path):
    # written out of order on purpose: round10 after round2 after warmup, whatever the file system lists first
    _log(tmp_path / "round10", [{"step": 1, "reranker_ce": 1.0}])
    _log(tmp_path / "round2", [{"step": 1, "retriever_ce": 2.0, "distill": 0.5}, {"step": 2, "retriever_ce": 1.0}])
    _log(tmp_path / "warmup", [{"step": s, "reranker_ce": 3.0 - s} for s in (1, 2, 3)])
    (tmp_path / "round2" / "dev_curve.json").write_text(json.dumps({"best": 0.6, "best_step": 2,
                                                                     "curve": {"2": 0.6, "1": 0.5}}))
    return tmp_path


def test_plot_data_lays_stages_end_to_end(run):
    systems = {"base": {"nDCG@10": 0.40}, "retriever": {"nDCG@10": 0.42}}
    curves = {"base": {1: 0.1, 10: 0.5}, "retriever": {1: 0.15, 10: 0.48}}
    d = plot_data(run, systems, curves, intervals={"retriever": (0.38, 0.46)}, group_size=8, window=2)
    assert d["boundaries"] == [(0, "warmup"), (3, "round2"), (5, "round10")]
    assert d["losses"]["warmup: reranker_ce"]["steps"] == [1, 2, 3]
    assert d["losses"]["warmup: reranker_ce"]["smooth"] == pytest.approx([2.0, 1.5, 0.5])
    assert d["losses"]["round2: retriever_ce"]["steps"] == [4, 5]
    assert d["losses"]["round2: distill"]["steps"] == [4]
    assert d["losses"]["round10: reranker_ce"]["steps"] == [6]
    assert d["dev"] == {"steps": [4, 5], "values": [0.5, 0.6]}
    assert d["chance"] == pytest.approx(math.log(8))
    # recall as a gain over the untrained encoder, which is the zero line and not drawn itself
    assert d["relative_to_base"] and set(d["recall_gain"]) == {"retriever"}
    assert d["recall_gain"]["retriever"] == pytest.approx({1: 0.05, 10: -0.02})
    assert d["ndcg"]["retriever"] == (0.42, 0.38, 0.46)
    assert d["ndcg"]["base"] == (0.40, 0.40, 0.40)  # no interval given: a point


def test_without_base_recall_is_absolute_and_png_is_written(run):
    d = plot_data(run, {"bm25": {"nDCG@10": 0.3}}, {"bm25": {1: 0.1, 10: 0.4}}, group_size=1)
    assert not d["relative_to_base"] and d["recall_gain"]["bm25"] == {1: 0.1, 10: 0.4} and d["chance"] is None
    path = plot_run(run, {"bm25": {1: 0.1, 10: 0.4}}, systems={"bm25": {"nDCG@10": 0.3}}, group_size=4)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_system_intervals_contain_the_mean(tmp_path):
    from rocketkd.data.formats import write_trec_run
    from rocketkd.evaluation.report import evaluate_systems, system_intervals

    qrels = {f"q{i}": {"a": 1} for i in range(8)}
    run = {f"q{i}": {"a": 2.0, "b": 1.0} if i % 2 else {"b": 2.0, "a": 1.0} for i in range(8)}
    write_trec_run(tmp_path / "x.trec", run)
    files = {"x": tmp_path / "x.trec"}
    (low, high) = system_intervals(files, qrels)["x"]
    mean = evaluate_systems(files, qrels)[0]["x"]["nDCG@10"]
    assert low < mean < high and 0.0 <= low and high <= 1.0
