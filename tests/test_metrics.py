"""rocketkd.evaluation.metrics against pytrec_eval (trec_eval) on seeded random runs, plus hand-worked cases.

Facts about pytrec_eval these tests rely on (checked with pytrec-eval-terrier):
* ties in score are broken by docno descending (strcmp), so among tied passages "9" ranks above "10";
* it evaluates only queries present in both run and qrels, and a query whose judgements are all 0 is *not*
  ignored: it comes back with 0 on every measure. rocketkd skips such queries, so the means below are taken over
  the queries rocketkd averages (qrels queries with >= 1 relevant passage, missing ones as 0).
"""

from __future__ import annotations

import json
import math
import random
import sys
import types

import pytest

# pytrec_eval is in the test extra: a missing install must fail the suite, not skip the cross-check.
import pytrec_eval

from rocketkd.errors import ConfigError
from rocketkd.evaluation.metrics import (
    DEFAULT_METRICS,
    EvalResult,
    average_precision,
    evaluate_query,
    evaluate_run,
    evaluate_run_file,
    format_table,
    ndcg_at_k,
    parse_metric,
    precision_at_k,
    rank_run,
    recall_at_k,
    reciprocal_rank_at_k,
    to_json,
)

TOL = 1e-6

# rocketkd name -> pytrec_eval measure (MRR@10 is handled separately: recip_rank on the run cut at 10)
TREC_NAMES = {
    "nDCG@10": "ndcg_cut_10",
    "R@1": "recall_1",
    "R@5": "recall_5",
    "R@10": "recall_10",
    "R@20": "recall_20",
    "R@50": "recall_50",
    "R@100": "recall_100",
    "R@1000": "recall_1000",
    "MAP": "map",
    "P@5": "P_5",
}
METRICS = ["MRR@10", *TREC_NAMES]
MEASURES = {"recip_rank", *TREC_NAMES.values()}


# ---------------------------------------------------------------------------------------------------------------
# Random cases

_ODD_IDS = ["9", "10", "1", "01", "100", "a", "B", "b", "aa", "é", "z", "doc-3", "doc_3", "Z9", "~"]


def _pid(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.6:
        return str(rng.randrange(0, 4000))
    if r < 0.8:
        return f"d{rng.randrange(0, 500)}"
    return rng.choice(_ODD_IDS) + str(rng.randrange(0, 30)) if rng.random() < 0.5 else rng.choice(_ODD_IDS)


def _random_case(rng: random.Random, *, graded: bool, ties: bool, long_run: bool = False):
    run: dict[str, dict[str, float]] = {}
    qrels: dict[str, dict[str, int]] = {}
    n_queries = rng.randint(3, 6) if long_run else rng.randint(5, 25)
    for qi in range(n_queries):
        qid = str(qi) if rng.random() < 0.5 else f"q{qi}"
        n_docs = rng.randint(1001, 1500) if long_run else rng.randint(0, 60)
        pids: set[str] = set()
        while len(pids) < n_docs:
            pids.add(_pid(rng))
        if rng.random() < 0.2:
            pids.add(qid)  # the query id as a passage id: an ordinary passage
        if ties:
            scores = {p: rng.randrange(0, 6) / 2 for p in pids}
        else:
            scores = {p: rng.uniform(-5.0, 5.0) for p in pids}

        shape = rng.random()
        if shape < 0.85 or long_run:
            run[qid] = scores
        elif shape < 0.95:
            pass  # judged query missing from the run
        else:
            run[qid] = {}  # present, but retrieved nothing

        # Judgements: some retrieved passages, some never retrieved (judged relevant but absent from the run).
        judged = rng.sample(sorted(pids), k=min(len(pids), rng.randint(0, 8)))
        judged += [f"unretrieved{qi}_{j}" for j in range(rng.randint(0, 3))]
        if not judged:
            judged = [f"unretrieved{qi}_x"]
        no_relevant = rng.random() < 0.15
        qrel = {}
        for p in judged:
            if no_relevant:
                qrel[p] = 0
            elif graded:
                qrel[p] = rng.choice([0, 0, 1, 1, 2, 3])
            else:
                qrel[p] = rng.choice([0, 1])
        qrels[qid] = qrel
    # queries the run has but the qrels do not: ignored
    for j in range(rng.randint(0, 2)):
        run[f"unjudged{j}"] = {_pid(rng): rng.random() for _ in range(5)}
    return run, qrels


def _check_against_pytrec(run, qrels, *, threshold: int = 1) -> EvalResult:
    res = evaluate_run(run, qrels, METRICS, relevance_threshold=threshold)
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, MEASURES, relevance_level=threshold)
    trec = evaluator.evaluate(run)
    # MRR@10 = recip_rank on the run cut to its top 10 by rocketkd's own tie-break
    ranked = rank_run(run)
    cut = {q: {p: run[q][p] for p in ranked[q][:10]} for q in run}
    trec_rr10 = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}, relevance_level=threshold).evaluate(cut)

    has_rel = {q for q, qr in qrels.items() if any(g >= threshold for g in qr.values())}
    assert set(res.per_query) == has_rel
    assert res.num_queries == len(has_rel)
    assert res.skipped_no_relevant == sorted(set(qrels) - has_rel)
    assert res.missing_from_run == sorted(q for q in has_rel if not run.get(q))
    # pytrec_eval reports queries with no relevant passage (as zeros, except nDCG, whose gains ignore the
    # threshold: with threshold 2 a grade-1 hit still scores); rocketkd leaves them out of the mean
    for q in res.skipped_no_relevant:
        if run.get(q):
            assert q in trec and all(v == 0.0 for m, v in trec[q].items() if m != "ndcg_cut_10")

    expected_sum = dict.fromkeys(METRICS, 0.0)
    for q, values in res.per_query.items():
        if q in res.missing_from_run:
            assert all(v == 0.0 for v in values.values())
            continue
        ref = {name: trec[q][m] for name, m in TREC_NAMES.items()}
        ref["MRR@10"] = trec_rr10[q]["recip_rank"]
        for name in METRICS:
            assert values[name] == pytest.approx(ref[name], abs=TOL), (q, name)
            expected_sum[name] += ref[name]
    for name in METRICS:
        assert res.mean[name] == pytest.approx(expected_sum[name] / len(has_rel), abs=TOL), name
    assert list(res.mean) == METRICS
    return res


@pytest.mark.parametrize("graded", [True, False], ids=["graded", "binary"])
@pytest.mark.parametrize("ties", [True, False], ids=["tied", "distinct"])
def test_matches_pytrec_eval_on_random_runs(graded, ties):
    rng = random.Random(1000 * graded + 10 * ties + 7)
    seen_missing = seen_skipped = 0
    for _ in range(60):
        run, qrels = _random_case(rng, graded=graded, ties=ties)
        if not any(g >= 1 for qr in qrels.values() for g in qr.values()):
            continue
        res = _check_against_pytrec(run, qrels)
        seen_missing += len(res.missing_from_run)
        seen_skipped += len(res.skipped_no_relevant)
    # the generator really exercised the awkward cases
    assert seen_missing > 0 and seen_skipped > 0


def test_matches_pytrec_eval_with_threshold_2():
    rng = random.Random(22)
    for _ in range(40):
        run, qrels = _random_case(rng, graded=True, ties=True)
        if not any(g >= 2 for qr in qrels.values() for g in qr.values()):
            continue
        _check_against_pytrec(run, qrels, threshold=2)


def test_matches_pytrec_eval_on_runs_longer_than_1000():
    rng = random.Random(1000)
    beyond = 0
    for ties in (True, False):
        run, qrels = _random_case(rng, graded=True, ties=ties, long_run=True)
        # make sure some relevant passages sit past rank 1000 (R@1000 < 1, MAP still sees them)
        for q, ranking in rank_run(run).items():
            if q in qrels and len(ranking) > 1000:
                qrels[q][ranking[1200 % len(ranking)]] = 2
                qrels[q][ranking[3]] = 1
                beyond += 1
        res = _check_against_pytrec(run, qrels)
        assert any(v["R@1000"] < 1.0 for v in res.per_query.values())
    assert beyond > 0


def test_tie_break_is_trec_evals():
    # every passage tied: pytrec_eval's position of each one (via recip_rank with it as the only relevant
    # passage) must be its position in rank_run
    pids = sorted(set(_ODD_IDS + [str(i) for i in range(0, 120, 7)] + ["Ab", "aB", "ä", "a b", "a-b"]))
    run_one = dict.fromkeys(pids, 0.5)
    run_one["top"] = 0.9
    order = rank_run({"q": run_one})["q"]
    assert order[0] == "top"
    assert order[1:] == sorted(pids, reverse=True)
    qrels = {f"q{i}": {p: 1} for i, p in enumerate(pids)}
    run = {q: dict(run_one) for q in qrels}
    trec = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(run)
    for q, qrel in qrels.items():
        (p,) = qrel
        assert trec[q]["recip_rank"] == pytest.approx(1.0 / (order.index(p) + 1), abs=1e-12), p


def test_rank_run_examples():
    ranked = rank_run({"q": {"a": 1.0, "b": 1.0, "c": 2.0, "10": 0.0, "9": 0.0}, "empty": {}})
    assert ranked == {"q": ["c", "b", "a", "9", "10"], "empty": []}
    with pytest.raises(ValueError, match="NaN"):
        rank_run({"q": {"a": float("nan")}})


# ---------------------------------------------------------------------------------------------------------------
# Hand-worked cases


def test_hand_worked_three_queries():
    # q1: ranking p1, p2, p3; relevant p2 (grade 1).
    #     MRR@10 = 1/2.  nDCG@10: DCG = 1/log2(3) = 0.630930; ideal = 1/log2(2) = 1  ->  0.630930
    # q2: ranking p4, p5, p6; grades p4=2, p6=1, and p7=3 (never retrieved).
    #     MRR@10 = 1.  DCG = 2/log2(2) + 1/log2(4) = 2 + 0.5 = 2.5
    #     ideal (3, 2, 1) = 3/1 + 2/log2(3) + 1/log2(4) = 3 + 1.261860 + 0.5 = 4.761860  ->  nDCG = 0.525005
    # q3: eleven passages, the only relevant one at rank 11: MRR@10 = 0, nDCG@10 = 0 (but R@20 = 1, MAP = 1/11).
    # mean MRR@10 = (0.5 + 1 + 0) / 3 = 0.5;  mean nDCG@10 = (0.630930 + 0.525005 + 0) / 3 = 0.385312
    run = {
        "q1": {"p1": 3.0, "p2": 2.0, "p3": 1.0},
        "q2": {"p4": 0.9, "p5": 0.8, "p6": 0.7},
        "q3": {f"x{i:02d}": 20.0 - i for i in range(11)},
    }
    qrels = {"q1": {"p2": 1}, "q2": {"p4": 2, "p6": 1, "p7": 3}, "q3": {"x10": 1}}
    res = evaluate_run(run, qrels, ["MRR@10", "nDCG@10", "R@10", "R@20", "MAP"])
    pq = res.per_query
    assert pq["q1"]["MRR@10"] == pytest.approx(0.5)
    assert pq["q1"]["nDCG@10"] == pytest.approx(0.6309297535714575)
    assert pq["q2"]["MRR@10"] == pytest.approx(1.0)
    assert pq["q2"]["nDCG@10"] == pytest.approx(2.5 / (3 + 2 / math.log2(3) + 0.5))
    assert pq["q2"]["nDCG@10"] == pytest.approx(0.5250049893849101)
    assert pq["q2"]["R@10"] == pytest.approx(2 / 3)  # p7 is relevant but never retrieved
    assert pq["q3"]["MRR@10"] == 0.0 and pq["q3"]["nDCG@10"] == 0.0 and pq["q3"]["R@10"] == 0.0
    assert pq["q3"]["R@20"] == 1.0
    assert pq["q3"]["MAP"] == pytest.approx(1 / 11)
    assert res.mean["MRR@10"] == pytest.approx(0.5)
    assert res.mean["nDCG@10"] == pytest.approx(0.3853115809854559)
    assert res.num_queries == 3 and res.missing_from_run == [] and res.skipped_no_relevant == []
    _check_against_pytrec(run, qrels)


def test_query_id_equal_to_passage_id_is_a_hit():
    # Cranfield has query "1" with relevant passage "1"; BEIR's evaluator would drop that hit, rocketkd must not.
    run = {"1": {"1": 0.9, "2": 0.8, "3": 0.1}}
    qrels = {"1": {"1": 1, "3": 0}}
    res = evaluate_run(run, qrels)
    for name in ("MRR@10", "nDCG@10", "R@1", "MAP"):
        assert res.per_query["1"][name] == 1.0, name
    assert rank_run(run)["1"][0] == "1"
    _check_against_pytrec(run, qrels)


def test_query_missing_from_run_counts_as_zero():
    run = {"a": {"p1": 1.0, "p2": 0.5}, "not-judged": {"p1": 1.0}}
    qrels = {"a": {"p1": 1}, "b": {"p9": 2}, "c": {"p1": 0}}
    res = evaluate_run(run, qrels)
    assert res.missing_from_run == ["b"]
    assert res.skipped_no_relevant == ["c"]
    assert res.num_queries == 2 and set(res.per_query) == {"a", "b"}
    assert res.per_query["b"] == dict.fromkeys(DEFAULT_METRICS, 0.0)
    assert res.mean["MRR@10"] == pytest.approx(0.5)  # (1 + 0) / 2, not 1
    assert res.mean["R@1000"] == pytest.approx(0.5)
    assert list(res.mean) == list(DEFAULT_METRICS)


def test_per_query_functions_agree_with_evaluate_query():
    ranking = ["d", "a", "x", "b", "c"]
    qrel = {"a": 2, "b": 1, "c": 0, "z": 3}
    vals = evaluate_query(ranking, qrel, ["MRR@1", "MRR@10", "nDCG@3", "R@4", "P@4", "MAP"])
    assert reciprocal_rank_at_k(ranking, qrel, 1) == vals["MRR@1"] == 0.0
    assert reciprocal_rank_at_k(ranking, qrel, 10) == vals["MRR@10"] == 0.5
    assert ndcg_at_k(ranking, qrel, 3) == vals["nDCG@3"]
    assert ndcg_at_k(ranking, qrel, 3) == pytest.approx((2 / math.log2(3)) / (3 + 2 / math.log2(3) + 1 / 2))
    assert recall_at_k(ranking, qrel, 4) == vals["R@4"] == pytest.approx(2 / 3)
    assert precision_at_k(ranking, qrel, 4) == vals["P@4"] == 0.5
    assert average_precision(ranking, qrel) == vals["MAP"] == pytest.approx((1 / 2 + 2 / 4) / 3)
    assert recall_at_k(ranking, qrel, 4, relevance_threshold=2) == 0.5


# ---------------------------------------------------------------------------------------------------------------
# Names, errors, output


def test_metric_names():
    assert parse_metric("nDCG@10") == ("nDCG", 10)
    assert parse_metric("R@1000") == ("R", 1000)
    assert parse_metric("MAP") == ("MAP", None)
    # trec_eval's and ranx's spellings (issue 22)
    assert parse_metric("ndcg_cut_10") == parse_metric("ndcg@10") == parse_metric("ndcg_cut.10") == ("nDCG", 10)
    assert parse_metric("recip_rank") == parse_metric("mrr") == parse_metric("MRR") == ("MRR", None)
    assert parse_metric("recall_100") == parse_metric("recall@100") == parse_metric("recall.100") == ("R", 100)
    assert parse_metric("P_10") == parse_metric("precision@10") == ("P", 10)
    assert parse_metric("map_cut_10") == parse_metric("map@10") == parse_metric("MAP@10") == ("MAP", 10)
    assert parse_metric("ndcg") == ("nDCG", None) and parse_metric("map") == ("MAP", None)
    for bad in ("R@0", "R@", "recall", "P", "P@-1", "ndcg_cut", "ndcg_cut_0", "bogus@10", "nDCG@ten", "", "map_cut"):
        with pytest.raises(ConfigError):
            parse_metric(bad)
    with pytest.raises(ConfigError):
        evaluate_run({"q": {"p": 1.0}}, {"q": {"p": 1}}, ["R@10", "bogus"])
    res = evaluate_run({"q": {"p": 1.0}}, {"q": {"p": 1}}, "R@7")  # a single name is accepted
    assert res.mean == {"R@7": 1.0}


def test_nothing_to_average_raises():
    with pytest.raises(ValueError, match="nothing to average"):
        evaluate_run({"q": {"p": 1.0}}, {"q": {"p": 0}})
    with pytest.raises(ValueError, match="nothing to average"):
        evaluate_run({}, {})


def test_format_table_and_json():
    mean = {"MRR@10": 0.34123456, "nDCG@10": 0.4, "R@1000": 0.98}
    table = format_table(mean)
    lines = table.splitlines()
    assert lines[0].split() == ["metric", "value"]
    assert lines[2].split() == ["MRR@10", "0.3412"]
    assert lines[4].split() == ["R@1000", "0.9800"]
    assert len({len(line) for line in lines}) == 1  # aligned columns
    assert json.loads(to_json(mean)) == mean
    assert list(json.loads(to_json(mean))) == list(mean)


def test_evaluate_run_file_uses_the_format_readers(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("rocketkd.data.formats")

    def read_trec_run(path):
        calls.append(("run", path))
        return {"1": {"1": 2.0, "2": 1.0}}

    def read_qrels(path):
        calls.append(("qrels", path))
        return {"1": {"2": 1}}

    fake.read_trec_run = read_trec_run
    fake.read_qrels = read_qrels
    monkeypatch.setitem(sys.modules, "rocketkd.data.formats", fake)
    res = evaluate_run_file(tmp_path / "run.trec", tmp_path / "qrels.txt", ["MRR@10"])
    assert calls == [("run", tmp_path / "run.trec"), ("qrels", tmp_path / "qrels.txt")]
    assert res.mean == {"MRR@10": 0.5}


# trec_eval's measure names, asked of rocketkd by those very names, against pytrec_eval (issue 22): whole-ranking
# recip_rank / ndcg / map and the cut ones, at relevance levels 1 and 2
TREC_MEASURES = ["recip_rank", "ndcg", "ndcg_cut_10", "recall_100", "recall_5", "P_10", "map", "map_cut_10",
                 "map_cut_5"]
RANX_NAMES = {"mrr": "recip_rank", "ndcg@10": "ndcg_cut_10", "recall@100": "recall_100", "precision@10": "P_10",
              "map@10": "map_cut_10", "MAP": "map", "nDCG": "ndcg"}


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("ties", [True, False], ids=["tied", "distinct"])
def test_trec_eval_and_ranx_names_match_pytrec_eval(level, ties):
    rng = random.Random(31 * level + ties)
    for _ in range(15):
        run, qrels = _random_case(rng, graded=True, ties=ties)
        try:
            res = evaluate_run(run, qrels, [*TREC_MEASURES, *RANX_NAMES], relevance_threshold=level)
        except ValueError:  # no query with a relevant passage at this level
            continue
        assert list(res.mean) == [*TREC_MEASURES, *RANX_NAMES]  # keyed by the names as asked
        trec = pytrec_eval.RelevanceEvaluator(qrels, set(TREC_MEASURES), relevance_level=level).evaluate(run)
        for q, values in res.per_query.items():
            if q in res.missing_from_run:
                continue
            for name in TREC_MEASURES:
                assert values[name] == pytest.approx(trec[q][name], abs=TOL), (q, name, level)
            for name, measure in RANX_NAMES.items():
                assert values[name] == pytest.approx(trec[q][measure], abs=TOL), (q, name, level)
