"""Re-ranking with the cross-encoder and BM25, fusing stages by hand-worked numbers, choosing the weights,
retrieve+evaluate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rocketkd.data.formats import load_retrieval_data
from rocketkd.errors import IndexError_
from rocketkd.evaluation.metrics import evaluate_run, rank_scores
from rocketkd.models import CrossEncoderRanker, DualEncoder
from rocketkd.search.bm25 import BM25Retriever
from rocketkd.search.fusion import (
    DEFAULT_FUSION_GRID,
    candidates_from_run,
    choose_fusion_weight,
    choose_fusion_weights,
    fitted_or_default,
    fuse_many,
    fuse_runs,
    fuse_stages,
    head_of_run,
    keep_tail,
    weight_grid,
)
from rocketkd.search.index import DenseIndex, retrieve
from rocketkd.search.rerank import bm25_run, rerank_run


class KeywordRanker:
    """A deterministic stand-in cross-encoder: the score of (query, passage) is how often the query's last word
    occurs in the passage, minus a tiny length penalty so that no two passages of the tiny corpus tie."""

    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []

    def predict(self, pairs, *, batch_size=64, show_progress=False, autocast_dtype=None):
        self.calls.append(list(pairs))
        return np.array([p.split().count(q.split()[-1]) - 1e-3 * len(p) for q, p in pairs], dtype=np.float32)


@pytest.fixture
def data(tiny_data):
    return load_retrieval_data(tiny_data)


# ----------------------------------------------------------------------------------------------------------------
# rerank_run


def test_rerank_orders_by_predict_and_cuts_at_depth(data):
    queries = {"a": "flow wing", "b": "about heat"}
    # first stage: wing passages last, and a heat passage below the re-ranking depth
    run = {
        "a": {"d12": 5.0, "d3": 4.0, "d1": 3.0, "d0": 2.0, "d2": 1.0},
        "b": {"d0": 9.0, "d1": 8.0, "d5": 7.0, "d12": 1.0},
    }
    ranker = KeywordRanker()
    out = rerank_run(ranker, run, queries, data.corpus, depth=4, autocast="no", show_progress=False)
    assert set(out["a"]) == {"d12", "d3", "d1", "d0"}  # d2 was below depth 4: dropped
    assert set(out["b"]) == {"d0", "d1", "d5", "d12"}
    pairs = [pair for call in ranker.calls for pair in call]
    expected = dict(zip(pairs, ranker.predict(pairs).tolist()))
    for qid, scores in out.items():
        for pid, score in scores.items():
            assert score == pytest.approx(expected[(queries[qid], data.corpus.get_text(pid))])
    assert rank_scores(out["a"])[:2] == ["d0", "d1"]  # "wing" three times, then twice
    assert rank_scores(out["b"])[0] == "d12"


def test_rerank_with_the_tiny_cross_encoder_matches_predict(data, tiny_bert):
    reranker = CrossEncoderRanker.from_pretrained(tiny_bert)
    queries = {"q0": data.queries["q0"]}
    run = {"q0": {f"d{i}": float(10 - i) for i in range(8)}}
    out = rerank_run(reranker, run, queries, data.corpus, depth=8, autocast="no", show_progress=False)
    pids = list(run["q0"])
    direct = reranker.predict([(queries["q0"], data.corpus.get_text(p)) for p in pids])
    np.testing.assert_allclose([out["q0"][p] for p in pids], direct, atol=1e-5, rtol=0)
    assert rank_scores(out["q0"]) == [pids[i] for i in np.argsort(-direct, kind="stable")]


def test_bm25_run_scores_the_top_depth_by_corpus_row(data):
    bm25 = BM25Retriever.build(data.corpus)
    queries = {"a": "flow wing", "b": "about heat", "empty": "flow"}
    run = {"a": {"d12": 5.0, "d3": 4.0, "d1": 3.0, "d0": 2.0}, "b": {"d5": 1.0, "d0": 9.0}, "empty": {}}
    out = bm25_run(run, queries, data.corpus, depth=3, bm25=bm25)
    assert list(out) == ["a", "b"]  # a query with an empty ranking is left out
    assert list(out["a"]) == ["d12", "d3", "d1"] and list(out["b"]) == ["d0", "d5"]  # top 3 in rank order
    for qid, scores in out.items():
        full = bm25.scores(queries[qid])
        for pid, score in scores.items():  # every candidate gets its score, 0 when no term is shared
            assert score == float(full[data.corpus.row_of(pid)])
    assert bm25_run(run, queries, data.corpus, depth=3) == out  # built from the corpus when not given
    with pytest.raises(KeyError, match="'b'"):
        bm25_run(run, {"a": "flow wing"}, data.corpus, depth=3, bm25=bm25)


# ----------------------------------------------------------------------------------------------------------------
# fusion


def test_fuse_weights_zero_and_one_give_the_input_orders():
    first = {"q": {"a": 10.0, "b": 30.0, "c": 20.0, "d": 5.0, "only-first": 99.0}}
    second = {"q": {"a": -1.0, "b": -3.0, "c": 2.0, "d": 0.5}}
    shared_first = {p: s for p, s in first["q"].items() if p != "only-first"}
    assert (
        rank_scores(fuse_runs(first, second, 0.0)["q"]) == rank_scores(shared_first) == ["b", "c", "a", "d"]
    )
    assert rank_scores(fuse_runs(first, second, 1.0)["q"]) == rank_scores(second["q"]) == ["c", "d", "a", "b"]


def test_fuse_three_passages_by_hand():
    # first: 3, 2, 1 -> z = (+r, 0, -r) with r = sqrt(3/2); second: 0, 10, 5 -> z = (-r, +r, 0)
    first = {"q": {"a": 3.0, "b": 2.0, "c": 1.0}}
    second = {"q": {"a": 0.0, "b": 10.0, "c": 5.0}}
    r = math.sqrt(1.5)
    fused = fuse_runs(first, second, 0.25)["q"]
    assert fused["a"] == pytest.approx(0.25 * -r + 0.75 * r)  # 0.612
    assert fused["b"] == pytest.approx(0.25 * r)  # 0.306
    assert fused["c"] == pytest.approx(0.75 * -r)  # -0.919
    assert rank_scores(fused) == ["a", "b", "c"]
    assert rank_scores(fuse_runs(first, second, 0.75)["q"]) == ["b", "c", "a"]  # b: .919, c: -.306, a: -.612
    # a query only one run has keeps that run; constant scores give zeros, not NaN
    fused = fuse_runs({"q": {"a": 1.0}, "x": {"p": 2.0, "r": 2.0}}, {"q": {"a": 7.0}}, 0.5)
    assert fused == {"q": {"a": 0.0}, "x": {"p": 0.0, "r": 0.0}}
    with pytest.raises(ValueError, match="weight"):
        fuse_runs(first, second, 1.5)


def test_cutting_a_run_and_keeping_the_tail():
    first = {"q": {"a": 1.0, "b": 3.0, "c": 2.0, "d": 3.0}, "e": {}}
    assert candidates_from_run(first, 3) == {"q": ["d", "b", "c"], "e": []}  # ties: passage id descending
    assert head_of_run(first, 2) == {"q": {"d": 3.0, "b": 3.0}, "e": {}}
    with pytest.raises(ValueError, match="k must be >= 1"):
        candidates_from_run(first, 0)
    # the re-ranked head first, then the rest of the first stage in its own order, each 1 below the last
    merged = keep_tail({"q": {"c": 0.5, "a": -0.5}}, first)
    assert merged == {"q": {"c": 0.5, "a": -0.5, "b": -1.5, "d": -2.5}, "e": {}}
    assert rank_scores(merged["q"]) == ["c", "a", "b", "d"]


def test_fuse_stages_is_fuse_many_of_the_head_then_the_tail():
    first = {"q": {"a": 3.0, "b": 2.0, "c": 1.0, "x": 0.5}}
    reranked = {"q": {"a": 0.0, "b": 10.0, "c": 5.0}}
    lexical = {"q": {"a": 4.0, "b": 4.0, "c": 7.0}}
    fused = fuse_stages(first, [reranked, lexical], [0.5, 0.3, 0.2], depth=3)
    head = fuse_many([head_of_run(first, 3), reranked, lexical], [0.5, 0.3, 0.2])
    assert fused == keep_tail(head, first)
    assert rank_scores(fused["q"])[-1] == "x" and set(fused["q"]) == set(first["q"])
    # two stages: fuse_runs of the whole first stage (passages only it scored go below the fused head)
    assert fuse_stages(first, [reranked], [0.75, 0.25]) == keep_tail(fuse_runs(first, reranked, 0.25), first)


def test_weight_grid_is_the_simplex_at_the_step():
    assert weight_grid(2, 0.5) == [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    grid = weight_grid(3, 0.1)
    assert len(grid) == 66 and all(sum(w) == pytest.approx(1.0) for w in grid) and len(set(grid)) == 66
    with pytest.raises(ValueError, match="grid_step must divide 1"):
        weight_grid(2, 0.3)


def test_choose_fusion_weight_prefers_the_better_run_and_the_smaller_weight_on_ties():
    # the relevant passage "p" is last in the first stage and first in the second
    first = {"q1": {"p": 0.0, "n1": 1.0, "n2": 2.0}, "q2": {"p": 0.0, "n1": 2.0, "n2": 1.0}}
    second = {"q1": {"p": 9.0, "n1": 1.0, "n2": 0.0}, "q2": {"p": 9.0, "n1": 0.0, "n2": 1.0}}
    qrels = {"q1": {"p": 1}, "q2": {"p": 1}}
    best, scores = choose_fusion_weight(first, second, qrels, metric="MRR@10")
    assert list(scores) == list(DEFAULT_FUSION_GRID)
    assert scores[0.0] == pytest.approx(1 / 3) and scores[1.0] == 1.0
    assert best == min(w for w, v in scores.items() if v == 1.0)
    assert 0.0 < best < 1.0  # a mixture already puts p first: the smallest such weight wins
    # equal runs tie everywhere: keep the first stage
    assert choose_fusion_weight(first, first, qrels)[0] == 0.0
    # the first stage better: weight 0
    assert choose_fusion_weight(second, first, qrels)[0] == 0.0


def test_a_fitted_fusion_replaces_its_default_only_on_significant_held_out_evidence():
    # "p" is relevant in every query; the default run puts it second, the fitted run first (nDCG@10 1 vs 1/log2(3))
    n = 12
    qrels = {f"q{i}": {"p": 1} for i in range(n)}
    default = {f"q{i}": {"x": 2.0, "p": 1.0} for i in range(n)}
    fitted = {f"q{i}": {"p": 2.0, "x": 1.0} for i in range(n)}
    check = fitted_or_default(fitted, default, qrels, 0.05)
    assert check["use_fitted"] and check["queries"] == n
    assert check["delta"] == pytest.approx(1 - 1 / math.log2(3)) and check["p_value"] < 0.001  # 2^-12 * 2 exactly
    # better on 2 of 12 queries, the same on the rest: the gain is real on those two but p = 0.5 -> the default
    partly = {q: (fitted[q] if i < 2 else default[q]) for i, q in enumerate(qrels)}
    check = fitted_or_default(partly, default, qrels, 0.05)
    assert not check["use_fitted"] and check["delta"] > 0 and check["p_value"] == pytest.approx(0.5, abs=0.01)
    assert fitted_or_default(partly, default, qrels, 1.0)["use_fitted"]  # alpha 1: the fitted weight, always
    assert fitted_or_default(default, fitted, qrels, 1.0)["use_fitted"]  # alpha 1 takes even a loss
    assert not fitted_or_default(default, fitted, qrels, 0.05)["use_fitted"]  # worse: never


def test_fuse_many_by_hand_and_as_fuse_runs():
    # z-scores over the passages all three runs scored (a, b, c; "x" only in the first): r = sqrt(3/2)
    first = {"q": {"a": 3.0, "b": 2.0, "c": 1.0, "x": 50.0}}  # z = (+r, 0, -r)
    second = {"q": {"a": 0.0, "b": 10.0, "c": 5.0}}  # z = (-r, +r, 0)
    third = {"q": {"a": 4.0, "b": 4.0, "c": 7.0}}  # mean 5, std sqrt(2): z = (-1/sqrt2, -1/sqrt2, +sqrt2)
    r, h = math.sqrt(1.5), 1 / math.sqrt(2)
    fused = fuse_many([first, second, third], [0.5, 0.3, 0.2])["q"]
    assert set(fused) == {"a", "b", "c"}
    assert fused["a"] == pytest.approx(0.5 * r - 0.3 * r - 0.2 * h)
    assert fused["b"] == pytest.approx(0.3 * r - 0.2 * h)
    assert fused["c"] == pytest.approx(-0.5 * r + 0.2 * 2 * h)
    # two runs: exactly fuse_runs
    for w in (0.0, 0.3, 1.0):
        assert fuse_many([first, second], [1 - w, w]) == fuse_runs(first, second, w)
    # no passage shared by all: the heaviest run that has any (ties: the later one)
    assert set(fuse_many([first, {"q": {"y": 1.0}}, third], [0.2, 0.5, 0.3])["q"]) == {"y"}
    assert set(fuse_many([first, {"q": {"y": 1.0}}, third], [0.2, 0.3, 0.5])["q"]) == {"a", "b", "c"}
    with pytest.raises(ValueError, match="one weight per run"):
        fuse_many([first, second], [1.0])
    with pytest.raises(ValueError, match=">= 0"):
        fuse_many([first, second], [1.5, -0.5])


def test_choose_fusion_weights_finds_the_specialist_mix_and_breaks_ties_toward_the_first_run():
    # q1's relevant passage is found only by the second run, q2's only by the third: no single run gets both first
    first = {"q1": {"p": 0.0, "n": 1.0, "m": 2.0}, "q2": {"p": 0.0, "n": 1.0, "m": 2.0}}
    # each specialist puts p far ahead where it knows, and second (of three, mildly) where it does not
    second = {"q1": {"p": 9.0, "n": 0.0, "m": 0.0}, "q2": {"p": 1.0, "n": 2.0, "m": 0.0}}
    third = {"q1": {"p": 1.0, "n": 2.0, "m": 0.0}, "q2": {"p": 9.0, "n": 0.0, "m": 0.0}}
    qrels = {"q1": {"p": 1}, "q2": {"p": 1}}
    weights, value = choose_fusion_weights([first, second, third], qrels, metric="MRR@10")
    assert value == 1.0 and sum(weights) == pytest.approx(1.0)
    assert weights[1] > 0 and weights[2] > 0
    # either specialist alone gets one query right (MRR 1 + 1/2)
    assert choose_fusion_weights([second], qrels, metric="MRR@10") == ((1.0,), 0.75)
    assert choose_fusion_weights([third], qrels, metric="MRR@10") == ((1.0,), 0.75)
    # every run the same: all weight on the first
    assert choose_fusion_weights([first, first, first], qrels)[0] == (1.0, 0.0, 0.0)


# ----------------------------------------------------------------------------------------------------------------
# retrieve + evaluate


def test_retrieve_and_evaluate_cover_every_test_query(data, tiny_bert):
    model = DualEncoder.from_pretrained(tiny_bert)
    run = retrieve(model, data, "test", k=10, batch_size=32, autocast="no")
    assert set(run) == set(data.qrels["test"])
    assert all(len(scores) == 10 for scores in run.values())
    result = evaluate_run(run, data.qrels["test"], ["MRR@10", "nDCG@10", "R@10"])
    assert result.num_queries == 4 and result.missing_from_run == []
    assert list(result.mean) == ["MRR@10", "nDCG@10", "R@10"]
    assert all(0.0 <= v <= 1.0 for v in result.mean.values())

    # with a prebuilt index: the same run; a different encoder is refused
    # (the same batches as above: fp32 kernels may round differently for another batch shape on some CPUs)
    index = DenseIndex.build(model, data.corpus, batch_size=32, autocast="no", show_progress=False)
    assert retrieve(None, data, "test", k=10, index=index, batch_size=32, autocast="no") == run
    other = DualEncoder.from_pretrained(tiny_bert)
    with torch.no_grad():
        next(other.parameters()).mul_(2.0)
    with pytest.raises(IndexError_, match="another encoder"):
        retrieve(other, data, "test", k=10, index=index, autocast="no")
