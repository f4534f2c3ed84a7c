"""rocketkd.teachers: normalisation, the ensemble by hand, the held-out check, the scorers against their models,
and (through rocketkd.training.objective) which module each teacher's gradient reaches."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rocketkd.config import TrainConfig
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.search.fusion import candidates_from_run
from rocketkd.teachers import (
    BM25Scorer,
    RandomScorer,
    RerankerScorer,
    RetrieverScorer,
    Scorer,
    StoredScorer,
    apply_ensemble,
    attach_teacher_scores,
    check_teachers,
    ensemble_logprobs,
    normalize,
    rerank_ndcg,
    scores_on_candidates,
)
from rocketkd.training.objective import compute_objective, mix_teachers
from rocketkd.types import CandidateList

LOGGER = "rocketkd.teachers"


def _log_softmax(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - math.log(sum(math.exp(v) for v in x))


# ------------------------------------------------------------------------------------------------------------------
# normalize
# ------------------------------------------------------------------------------------------------------------------


def test_normalize_by_hand():
    s = math.sqrt(2.0 / 3.0)  # population std of [1, 2, 3]
    assert np.allclose(normalize([1.0, 2.0, 3.0]), [-1 / s, 0.0, 1 / s])
    assert np.allclose(normalize(np.array([10.0, 30.0, 20.0]), "zscore"), [-1 / s, 1 / s, 0.0])
    assert np.allclose(normalize([2.0, 4.0, 6.0, 3.0], "minmax"), [0.0, 0.5, 1.0, 0.25])
    assert np.array_equal(normalize([5.0, -1.0], "none"), [5.0, -1.0])
    z = normalize([3.0, 7.0, 1.0, 9.0])
    assert abs(z.mean()) < 1e-12 and abs(z.std() - 1.0) < 1e-12


def test_normalize_constant_list_and_bad_input():
    for how in ("zscore", "minmax"):
        assert np.array_equal(normalize([4.2, 4.2, 4.2], how), [0.0, 0.0, 0.0])
        assert np.array_equal(normalize([7.0], how), [0.0])
    assert np.array_equal(normalize([4.2, 4.2], "none"), [4.2, 4.2])
    with pytest.raises(ValueError, match="finite"):
        normalize([1.0, float("nan")])
    with pytest.raises(ValueError, match="unknown normalisation"):
        normalize([1.0, 2.0], "rank")


# ------------------------------------------------------------------------------------------------------------------
# ensemble_logprobs
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_ensemble_of_one_is_its_log_softmax(combine):
    scores = [np.array([3.0, -1.0, 0.5, 2.0]), np.array([0.1, 0.2])]
    for how, temperature in (("none", 1.0), ("none", 2.5), ("zscore", 1.0), ("minmax", 0.5)):
        out = ensemble_logprobs([scores], [0.7], temperatures=[temperature], combine=combine, normalize_how=how)
        for got, s in zip(out, scores):
            assert np.allclose(got, _log_softmax(normalize(s, how) / temperature), atol=1e-12)
    raw = ensemble_logprobs([scores], [1.0], combine=combine, normalize_how="none")
    assert np.allclose(raw[0], _log_softmax([3.0, -1.0, 0.5, 2.0]))


def test_arithmetic_and_geometric_by_hand():
    a = [1.0, 2.0, 3.0]
    b = [3.0, 0.0, 0.0]
    ta, tb = 1.0, 2.0
    wa, wb = 0.25, 0.75
    za = sum(math.exp(x / ta) for x in a)
    zb = sum(math.exp(x / tb) for x in b)
    pa = [math.exp(x / ta) / za for x in a]
    pb = [math.exp(x / tb) / zb for x in b]
    arithmetic = [math.log(wa * x + wb * y) for x, y in zip(pa, pb)]
    unnorm = [x**wa * y**wb for x, y in zip(pa, pb)]
    geometric = [math.log(u / sum(unnorm)) for u in unnorm]

    for weights in ([wa, wb], [1.0, 3.0]):  # weights are renormalised to sum to 1
        got_a = ensemble_logprobs([[a], [b]], weights, temperatures=[ta, tb], normalize_how="none")
        got_g = ensemble_logprobs(
            [[a], [b]], weights, temperatures=[ta, tb], combine="geometric", normalize_how="none"
        )
        assert np.allclose(got_a[0], arithmetic, atol=1e-12)
        assert np.allclose(got_g[0], geometric, atol=1e-12)
    assert not np.allclose(arithmetic, geometric)


def test_ensemble_zscores_each_member_per_list():
    # the same ranking at two very different scales (BM25-like and cosine-like) gives the same distribution
    bm25 = np.array([28.0, 12.0, 3.0, 0.0])
    cosine = 0.62 + (bm25 - bm25.mean()) / bm25.std() * 0.01
    (from_bm25,) = ensemble_logprobs([[bm25]], [1.0])
    (from_cosine,) = ensemble_logprobs([[cosine]], [1.0])
    assert np.allclose(from_bm25, from_cosine, atol=1e-9)
    (raw_bm25,) = ensemble_logprobs([[bm25]], [1.0], normalize_how="none")
    (raw_cosine,) = ensemble_logprobs([[cosine]], [1.0], normalize_how="none")
    assert np.exp(raw_bm25).max() > 0.99 and np.exp(raw_cosine).max() < 0.26  # why we normalise


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_ensemble_gives_distributions(combine):
    rng = np.random.default_rng(0)
    sizes = [2, 5, 8]
    members = [[rng.normal(0, scale, n) for n in sizes] for scale in (1.0, 10.0, 0.01)]
    out = ensemble_logprobs(members, [0.2, 0.5, 0.3], temperatures=[1.0, 0.5, 2.0], combine=combine)
    assert [len(x) for x in out] == sizes
    for lp in out:
        assert np.all(lp <= 0) and abs(np.exp(lp).sum() - 1.0) < 1e-12


def test_ensemble_weights_are_checked():
    members = [[np.array([1.0, 2.0])], [np.array([2.0, 1.0])]]
    with pytest.raises(ValueError, match="all zero"):
        ensemble_logprobs(members, [0.0, 0.0])
    with pytest.raises(ValueError, match=">= 0"):
        ensemble_logprobs(members, [1.5, -0.5])
    with pytest.raises(ValueError, match="one per member"):
        ensemble_logprobs(members, [1.0])
    with pytest.raises(ValueError, match="temperatures"):
        ensemble_logprobs(members, [1.0, 1.0], temperatures=[1.0, 0.0])
    with pytest.raises(ValueError, match="different numbers of candidates"):
        ensemble_logprobs([[np.array([1.0, 2.0])], [np.array([1.0, 2.0, 3.0])]], [1.0, 1.0])
    # a zero-weight member is simply left out
    (only_first,) = ensemble_logprobs(members, [2.0, 0.0], normalize_how="none")
    assert np.allclose(only_first, _log_softmax([1.0, 2.0]))


# ------------------------------------------------------------------------------------------------------------------
# check_teachers on synthetic held-out queries
# ------------------------------------------------------------------------------------------------------------------


def _synthetic(n_queries: int = 12, n_cands: int = 10, seed: int = 0):
    """Held-out queries with 3 judged relevant candidates each (grades 2, 1, 1), a noisy student, and its top list."""
    rng = np.random.default_rng(seed)
    qrels, grades, student = {}, {}, {}
    for i in range(n_queries):
        q = f"q{i}"
        pids = [f"{q}-p{j}" for j in range(n_cands)]
        g = np.zeros(n_cands)
        g[rng.choice(n_cands, 3, replace=False)] = [2, 1, 1]
        grades[q] = dict(zip(pids, g.tolist()))
        qrels[q] = {p: int(v) for p, v in grades[q].items() if v > 0}
        student[q] = dict(zip(pids, (g + rng.normal(0, 0.9, n_cands)).tolist()))
    candidates = candidates_from_run(student, n_cands)
    return candidates, student, grades, qrels, rng


def test_check_teachers_keeps_a_perfect_member_and_zeroes_a_random_one(caplog):
    candidates, student, grades, qrels, rng = _synthetic()
    noise = {q: {p: float(rng.normal()) for p in pids} for q, pids in candidates.items()}
    members = {"perfect": grades, "random": noise, "student": student}  # the student may be a member (Hinton)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        choice = check_teachers(candidates, student, members, qrels)

    random_ndcg = rerank_ndcg(noise, qrels)
    assert choice.student_ndcg == pytest.approx(rerank_ndcg(student, qrels))
    assert random_ndcg < choice.student_ndcg < 1.0  # the set-up: a noisy student, a worse random member
    assert choice.weights == {"perfect": 1.0, "random": 0.0, "student": 0.0}
    assert choice.usable and choice.ensemble_ndcg == pytest.approx(1.0)
    perfect, rand = choice.report("perfect"), choice.report("random")
    assert perfect.helps and perfect.ndcg == pytest.approx(1.0) and perfect.weight == 1.0
    assert not rand.helps and rand.weight == 0.0 and rand.ndcg == pytest.approx(random_ndcg)
    assert rand.student_ndcg == pytest.approx(choice.student_ndcg)
    ensemble = choice.report("ensemble")
    assert ensemble.helps and ensemble.weight == pytest.approx(1.0)

    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    about_random = [m for m in warned if "'random'" in m]
    assert about_random, warned
    assert f"{random_ndcg:.4f}" in about_random[0] and f"{choice.student_ndcg:.4f}" in about_random[0]
    assert not any("'perfect'" in m for m in warned)


def test_check_teachers_all_bad_is_not_usable(caplog):
    candidates, student, grades, qrels, rng = _synthetic(seed=3)
    noise = {q: {p: float(rng.normal()) for p in pids} for q, pids in candidates.items()}
    reverse = {q: {p: -v for p, v in g.items()} for q, g in grades.items()}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        choice = check_teachers(candidates, student, {"random": noise, "reverse": reverse}, qrels)
    assert choice.weights == {"random": 0.0, "reverse": 0.0}
    assert not choice.usable
    assert not any(r.helps for r in choice.reports)
    assert choice.report("ensemble").weight == 0.0
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "'random'" in warned and "'reverse'" in warned and "do not distil" in warned

    # a member better than the student, but not by min_gain, is bad too
    tight = check_teachers(candidates, student, {"perfect": grades}, qrels, min_gain=1.0)
    assert tight.weights == {"perfect": 0.0} and not tight.usable
    # zero_bad=False keeps the weights (and still reports the members as not helping)
    kept = check_teachers(candidates, student, {"random": noise, "reverse": reverse}, qrels, zero_bad=False)
    assert sum(kept.weights.values()) == pytest.approx(1.0) and not kept.report("ensemble").helps


def _complementary():
    """The issue's case: "student" (the zero-shot bi-encoder) swaps the top two of every query; "lexical" (BM25) gets
    the top right but buries the grade-1s. Each alone is no better than the student; their mixture is perfect."""
    rng = np.random.default_rng(5)
    qrels, student, lexical, candidates = {}, {}, {}, {}
    for i in range(10):
        q = f"q{i}"
        pids = [f"{q}-p{j}" for j in range(10)]
        qrels[q] = {pids[0]: 2, pids[1]: 1, pids[2]: 1}
        student[q] = dict(zip(pids, [1.0, 1.05, 0.9] + rng.uniform(-0.1, 0.1, 7).tolist()))
        lexical[q] = dict(zip(pids, [5.0, 0.0, 0.0] + rng.uniform(0.5, 3.0, 7).tolist()))
        candidates[q] = pids
    return candidates, student, lexical, qrels


def test_check_teachers_keeps_members_that_only_help_together():
    candidates, student, lexical, qrels = _complementary()
    choice = check_teachers(candidates, student, {"student": student, "lexical": lexical}, qrels)
    assert choice.report("lexical").ndcg < choice.student_ndcg
    assert choice.report("student").ndcg == pytest.approx(choice.student_ndcg)
    assert choice.ensemble_ndcg == pytest.approx(1.0) and choice.usable
    # many weightings reach 1.0 here; ties go to the more uniform one
    assert choice.weights == {"student": 0.5, "lexical": 0.5}
    # per-member normalisation and temperature (e.g. the online re-ranker raw at T, as objective.mix_teachers does)
    hows, temps = {"student": "zscore", "lexical": "none"}, {"lexical": 4.0}
    raw = check_teachers(
        candidates, student, {"student": student, "lexical": lexical}, qrels, normalize_how=hows, temperatures=temps
    )
    names = list(raw.weights)
    lists = [[np.array([m[q][p] for p in candidates[q]]) for q in candidates] for m in (student, lexical)]
    logprobs = ensemble_logprobs(
        lists, [raw.weights[n] for n in names], temperatures=[1.0, 4.0], normalize_how=[hows[n] for n in names]
    )
    run = {q: dict(zip(candidates[q], lp.tolist())) for q, lp in zip(candidates, logprobs)}
    assert rerank_ndcg(run, qrels) == pytest.approx(raw.ensemble_ndcg)
    assert choice.report("student").helps and choice.report("lexical").helps
    # which is what the training targets will be: the ensemble of the chosen weights re-ranks that well
    names = list(choice.weights)
    lists = [[np.array([m[q][p] for p in candidates[q]]) for q in candidates] for m in (student, lexical)]
    logprobs = ensemble_logprobs(lists, [choice.weights[n] for n in names])
    run = {q: dict(zip(candidates[q], lp.tolist())) for q, lp in zip(candidates, logprobs)}
    assert rerank_ndcg(run, qrels) == pytest.approx(choice.ensemble_ndcg)


def test_check_teachers_zeroes_an_ensemble_that_does_not_beat_the_student(caplog):
    # the same two complementary members, but now the student is already perfect: together they only tie with it
    candidates, weak, lexical, qrels = _complementary()
    student = {q: {p: float(qrels[q].get(p, 0)) for p in pids} for q, pids in candidates.items()}
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        choice = check_teachers(candidates, student, {"weak": weak, "lexical": lexical}, qrels)
    assert choice.ensemble_ndcg == pytest.approx(choice.student_ndcg) == pytest.approx(1.0)
    assert choice.weights == {"weak": 0.0, "lexical": 0.0} and not choice.usable
    assert not choice.report("ensemble").helps
    assert any("ensemble" in r.getMessage() and "do not distil" in r.getMessage() for r in caplog.records)


def test_check_teachers_ties_go_to_the_simpler_choice():
    candidates, student, grades, qrels, _ = _synthetic()
    choice = check_teachers(candidates, student, {"a": grades, "b": dict(grades), "c": dict(grades)}, qrels)
    assert choice.weights == {"a": 1.0, "b": 0.0, "c": 0.0}  # one member, not a mixture of equals
    assert choice.report("a").helps and choice.report("b").helps  # each beats the student alone


def test_check_teachers_input_errors():
    candidates, student, grades, qrels, _ = _synthetic(n_queries=3)
    with pytest.raises(ValueError, match="grid_step"):
        check_teachers(candidates, student, {"perfect": grades}, qrels, grid_step=0.3)
    with pytest.raises(ValueError, match="at most"):
        check_teachers(candidates, student, {f"m{i}": grades for i in range(5)}, qrels)
    partial = {q: dict(list(g.items())[:-1]) for q, g in grades.items()}
    with pytest.raises(ValueError, match="no score for candidate"):
        check_teachers(candidates, student, {"partial": partial}, qrels)
    with pytest.raises(ValueError, match="relevant"):
        check_teachers(candidates, student, {"perfect": grades}, {"other": {"x": 1}})


def test_rerank_ndcg_uses_evaluate_run():
    qrels = {"a": {"p1": 2, "p3": 1}, "b": {"p2": 1}}
    scores = {"a": {"p1": 0.1, "p2": 0.9, "p3": 0.5}, "b": {"p1": 1.0, "p2": 2.0}}
    ideal_a = 2 + 1 / math.log2(3)
    dcg_a = 1 / math.log2(3) + 2 / math.log2(4)
    assert rerank_ndcg(scores, qrels) == pytest.approx((dcg_a / ideal_a + 1.0) / 2)
    assert rerank_ndcg(scores, qrels) == pytest.approx(evaluate_run(scores, qrels, ["nDCG@10"]).mean["nDCG@10"])
    assert rerank_ndcg(scores, qrels, k=1) == pytest.approx((0.0 + 1.0) / 2)


# ------------------------------------------------------------------------------------------------------------------
# Scorers on the tiny collection
# ------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def tiny(tiny_data, tmp_path):
    from rocketkd.data.formats import load_retrieval_data

    return load_retrieval_data(tiny_data, cache_dir=tmp_path / "cache")


def _judged(data) -> dict[str, dict[str, int]]:
    judged: dict[str, dict[str, int]] = {}
    for split in data.qrels.values():
        for q, rel in split.items():
            judged.setdefault(q, {}).update(rel)
    return judged


def test_bm25_scorer_ranks_judged_passages_above_unrelated_ones(tiny):
    corpus, queries = tiny.corpus, tiny.queries
    judged = _judged(tiny)
    scorer = BM25Scorer(corpus)
    all_pids = list(corpus.ids)
    candidates = {q: all_pids for q in queries}
    scores = scores_on_candidates(scorer, candidates, queries, corpus)
    assert set(scores) == set(queries)
    for q, text in queries.items():
        topic = text.split()[4]  # "what is known of <topic> <filler>"
        unrelated = [p for p in all_pids if topic not in corpus.get_text(p).split()]
        assert len(judged[q]) == 3 and len(unrelated) > 40
        assert min(scores[q][p] for p in judged[q]) > max(scores[q][p] for p in unrelated), q
        query_words = set(text.split())
        no_overlap = [p for p in all_pids if not query_words & set(corpus.get_text(p).split())]
        assert all(scores[q][p] == 0.0 for p in no_overlap)
    # the same numbers as the BM25 retriever's own run, for every passage it retrieves
    run = scorer.retriever.search(queries, k=len(all_pids))
    for q, hits in run.items():
        for p, s in hits.items():
            assert scores[q][p] == pytest.approx(s, rel=1e-6)
    # CandidateList interface: same order as pids, also for repeated queries
    lists = [CandidateList("q0", ["d0", "d40", "d1"]), CandidateList("q0", ["d2", "d0"])]
    got = scorer.score(lists, queries, corpus)
    assert np.allclose(got[0], [scores["q0"]["d0"], scores["q0"]["d40"], scores["q0"]["d1"]])
    assert np.allclose(got[1], [scores["q0"]["d2"], scores["q0"]["d0"]])


def _tiny_lists() -> list[CandidateList]:
    return [
        CandidateList("q0", ["d0", "d5", "d17", "d33"]),
        CandidateList("q1", ["d3", "d0", "d59"]),
        CandidateList("q0", ["d1", "d33"]),  # the same query again, passages shared with the first list
    ]


def test_retriever_scorer_equals_dot_products_and_encodes_once(tiny, tiny_bert):
    from rocketkd.models import DualEncoder

    corpus, queries = tiny.corpus, tiny.queries
    for similarity in ("dot", "cosine"):
        model = DualEncoder.from_pretrained(str(tiny_bert), similarity=similarity)
        encoded: dict[str, list[str]] = {"query": [], "passage": []}
        original = model.encode

        def counting(texts, *, side="passage", _orig=original, _log=encoded, **kw):
            _log[side].extend(texts)
            return _orig(texts, side=side, **kw)

        model.encode = counting
        lists = _tiny_lists()
        got = RetrieverScorer(model, batch_size=2).score(lists, queries, corpus)
        model.encode = original
        assert sorted(encoded["query"]) == sorted({queries["q0"], queries["q1"]})
        distinct = {p for cl in lists for p in cl.pids}
        assert len(encoded["passage"]) == len(distinct)
        for cl, scores in zip(lists, got):
            q = model.encode([queries[cl.qid]], side="query")[0]
            p = model.encode([corpus.get_text(pid) for pid in cl.pids], side="passage")
            assert scores.shape == (len(cl.pids),)
            assert np.allclose(scores, p @ q, atol=1e-5)
            if similarity == "cosine":
                assert np.all(np.abs(scores) <= 1 + 1e-5)
    # a scorer is given a model (never a path: models are made from config by rocketkd.models.loading); device=
    # encodes elsewhere than the model sits, with the same scores
    dot_model = DualEncoder.from_pretrained(str(tiny_bert))
    on_cpu = RetrieverScorer(dot_model, device="cpu").score(lists, queries, corpus)
    for a, b in zip(on_cpu, RetrieverScorer(dot_model).score(lists, queries, corpus)):
        assert np.allclose(a, b, atol=1e-5)
    # precomputed passage embeddings (by corpus row) give the same scores
    embeddings = model.encode(corpus.texts(range(len(corpus))), side="passage")
    again = RetrieverScorer(model, passage_embeddings=embeddings).score(lists, queries, corpus)
    for a, b in zip(got, again):
        assert np.allclose(a, b, atol=1e-5)


def test_reranker_scorer_equals_predict(tiny, tiny_bert):
    from rocketkd.models import CrossEncoderRanker

    corpus, queries = tiny.corpus, tiny.queries
    torch.manual_seed(0)
    model = CrossEncoderRanker.from_pretrained(str(tiny_bert))
    lists = _tiny_lists()
    got = RerankerScorer(model, batch_size=3).score(lists, queries, corpus)
    for cl, scores in zip(lists, got):
        expected = model.predict([(queries[cl.qid], corpus.get_text(p)) for p in cl.pids])
        assert np.allclose(scores, expected, atol=1e-5)
    assert len({round(float(s), 6) for s in np.concatenate(got)}) > 3  # not a constant head
    # held-out candidates need no positive and may be a single passage
    held = scores_on_candidates(RerankerScorer(model), {"q2": ["d6"], "q0": ["d0", "d1"]}, queries, corpus)
    assert held["q2"]["d6"] == pytest.approx(float(model.predict([(queries["q2"], corpus.get_text("d6"))])[0]), abs=1e-5)
    assert set(held["q0"]) == {"d0", "d1"}


def test_stored_scorer_and_attach(tiny):
    lists = [CandidateList("q0", ["d0", "d1"], teacher_scores=[0.5, -1.0], source="bm25"), CandidateList("q1", ["d3", "d4"])]
    assert np.array_equal(StoredScorer().score(lists[:1], {}, None)[0], [0.5, -1.0])
    with pytest.raises(ValueError, match="no stored teacher_scores"):
        StoredScorer().score(lists, {}, None)
    with pytest.raises(TypeError):
        scores_on_candidates(StoredScorer(), {"q0": ["d0"]}, {}, None)

    logprobs = [np.log([0.25, 0.75]), np.log([0.5, 0.5])]
    new = attach_teacher_scores(lists, logprobs)
    assert new[0] is not lists[0] and lists[0].teacher_scores == [0.5, -1.0] and lists[1].teacher_scores is None
    assert new[0].pids == ["d0", "d1"] and new[0].source == "bm25" and new[0].qid == "q0"
    assert new[0].teacher_scores == pytest.approx([math.log(0.25), math.log(0.75)])
    with pytest.raises(ValueError, match="teacher scores for"):
        attach_teacher_scores(lists, [np.zeros(3), np.zeros(2)])
    with pytest.raises(ValueError, match="lists but"):
        attach_teacher_scores(lists, logprobs[:1])

    # apply_ensemble: score, ensemble, attach in one call
    corpus, queries = tiny.corpus, tiny.queries
    bm25 = BM25Scorer(corpus)
    taught = apply_ensemble(lists, {"bm25": bm25, "stored": StoredScorer()}, {"bm25": 1.0, "stored": 0.0}, queries, corpus)
    expected = ensemble_logprobs([bm25.score(lists, queries, corpus)], [1.0])
    for cl, lp in zip(taught, expected):
        assert np.allclose(cl.teacher_scores, lp)
    with pytest.raises(ValueError, match="nothing to distil"):
        apply_ensemble(lists, {"bm25": bm25}, {"bm25": 0.0}, queries, corpus)


def test_apply_ensemble_takes_scores_given_instead_of_scoring_again(tiny):
    corpus, queries = tiny.corpus, tiny.queries
    lists = _tiny_lists()

    class Refuses(Scorer):
        def score_groups(self, groups, queries, corpus):
            raise AssertionError("scored again")

    bm25 = BM25Scorer(corpus).score(lists, queries, corpus)
    noise = RandomScorer(1).score(lists, queries, corpus)
    taught = apply_ensemble(lists, {"bm25": Refuses(), "random": RandomScorer(1)}, {"bm25": 0.75, "random": 0.25},
                            queries, corpus, temperatures={"random": 0.5}, scored={"bm25": bm25})
    expected = ensemble_logprobs([bm25, noise], [0.75, 0.25], temperatures=[1.0, 0.5])
    for cl, lp in zip(taught, expected):
        assert cl.teacher_scores == pytest.approx(lp.tolist(), abs=1e-12)
    with pytest.raises(ValueError, match="no scorer for teacher"):
        apply_ensemble(lists, {}, {"bm25": 1.0}, queries, corpus)


# ------------------------------------------------------------------------------------------------------------------
# Where the gradient of each term goes (rocketkd.training.objective, joint mode)
# ------------------------------------------------------------------------------------------------------------------


def _grads(cfg: TrainConfig, teacher: torch.Tensor | None = None):
    gen = torch.Generator().manual_seed(0)
    retriever = torch.randn(3, 5, generator=gen).requires_grad_()
    reranker = torch.randn(3, 5, generator=gen).requires_grad_()
    compute_objective(cfg, retriever, reranker, teacher=teacher).total.backward()
    return retriever.grad.clone(), reranker.grad.clone(), reranker.detach()


def _ce_grad(reranker: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
    r = reranker.clone().requires_grad_()
    (weight * F.cross_entropy(r, torch.zeros(r.shape[0], dtype=torch.long))).backward()
    return r.grad


def _stored_logprobs() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.log_softmax(torch.randn(3, 5, generator=gen), dim=-1)


@pytest.mark.parametrize("loss", ["kl", "mse", "js"])
def test_distillation_reaches_the_reranker_only_when_configured(loss):
    base = dict(mode="joint", distill_loss=loss, temperature=2.0, reranker_ce_weight=0.7)
    # detached (the released code): the distillation term moves the retriever but not the re-ranker
    r_on, k_on, rerank = _grads(TrainConfig(**base, distill_to_reranker=False, distill_weight=1.0))
    r_off, k_off, _ = _grads(TrainConfig(**base, distill_to_reranker=False, distill_weight=0.0))
    assert not torch.allclose(r_on, r_off)
    assert torch.allclose(k_on, k_off) and torch.allclose(k_on, _ce_grad(rerank, 0.7), atol=1e-6)
    # the paper's variant: it reaches the re-ranker too
    _, k_paper, _ = _grads(TrainConfig(**base, distill_to_reranker=True, distill_weight=1.0))
    assert not torch.allclose(k_paper, k_off, atol=1e-4)


def test_stored_ensemble_alone_gives_the_reranker_only_its_ce():
    stored = _stored_logprobs()
    base = dict(mode="joint", temperature=2.0, distill_to_reranker=True)
    r, k, rerank = _grads(TrainConfig(**base, online_teacher_weight=0.0), teacher=stored)
    assert torch.allclose(k, _ce_grad(rerank), atol=1e-6)
    # the retriever is pulled toward the stored distribution itself (not re-tempered): softmax(stored) exactly
    gen = torch.Generator().manual_seed(0)
    retr = torch.randn(3, 5, generator=gen).requires_grad_()
    T = 2.0
    expected = T**2 * F.kl_div(F.log_softmax(retr / T, -1), stored.exp(), reduction="batchmean")
    expected.backward()
    assert torch.allclose(r, retr.grad, atol=1e-6)
    # with the online re-ranker mixed in and distill_to_reranker, the distillation reaches it again
    _, k_mixed, _ = _grads(TrainConfig(**base, online_teacher_weight=0.5), teacher=stored)
    assert not torch.allclose(k_mixed, _ce_grad(rerank), atol=1e-4)
    # ... but not when detached
    _, k_detached, _ = _grads(TrainConfig(**{**base, "distill_to_reranker": False}, online_teacher_weight=0.5), teacher=stored)
    assert torch.allclose(k_detached, _ce_grad(rerank), atol=1e-6)


@pytest.mark.parametrize("weight", [0.0, 0.3, 1.0])
def test_mix_teachers_is_the_arithmetic_mixture(weight):
    stored = _stored_logprobs()
    online = torch.randn(3, 5, generator=torch.Generator().manual_seed(2))
    T = 2.0
    target = mix_teachers(stored, online, weight, T)
    expected = (1 - weight) * stored.exp() + weight * torch.softmax(online / T, dim=-1)
    assert torch.allclose(torch.softmax(target / T, dim=-1), expected, atol=1e-6)
    # and it is what ensemble_logprobs computes with the online re-ranker as one more raw member
    if 0 < weight < 1:
        members = [[row.double().numpy() for row in stored], [row.double().numpy() for row in online]]
        ours = ensemble_logprobs(members, [1 - weight, weight], temperatures=[1.0, T], normalize_how="none")
        assert np.allclose(np.stack(ours), torch.log(expected).double().numpy(), atol=1e-6)
