"""The re-ranker's prior (issue 20): fitted on held-out queries, accepted only on a significant cross-fitted gain."""

from __future__ import annotations

import numpy as np
import pytest

from rocketkd.teachers import Scorer, ensemble_logprobs
from rocketkd.teachers.prior import NO_CHANGE, CompositeScorer, Prior, PriorScorer, fit_prior


def _held_out(n_queries: int, good_share: float, seed: int = 0):
    """Candidates of ``n_queries`` queries (10 each, one relevant 'r'); the student ranks 'r' 5th. ``bm25`` ranks it
    first in ``good_share`` of the queries and is noise otherwise; ``base`` is the student itself."""
    rng = np.random.default_rng(seed)
    candidates, student, bm25, qrels = {}, {}, {}, {}
    for i in range(n_queries):
        q = f"q{i}"
        pids = ["a", "b", "c", "d", "r", "e", "f", "g", "h", "k"]
        candidates[q] = pids
        student[q] = {p: float(10 - j) for j, p in enumerate(pids)}
        good = rng.random() < good_share
        noise = rng.permutation(len(pids)).astype(float)  # a scorer that knows nothing
        bm25[q] = {p: 100.0 if (good and p == "r") else noise[j] for j, p in enumerate(pids)}
        qrels[q] = {"r": 1}
    return candidates, student, {"bm25": bm25, "base": student}, qrels


def test_a_helpful_member_is_accepted_with_its_evidence():
    candidates, student, members, qrels = _held_out(40, good_share=0.9)
    prior = fit_prior(candidates, student, members, qrels, temperatures={"bm25": 1.0, "base": 1.0})
    assert prior.evidence["accepted"] is True
    assert prior.weights.get("bm25", 0) > 0
    assert prior.evidence["p_value"] < 0.05 and prior.evidence["gain"] > 0
    assert prior.evidence["queries"] == 40


@pytest.mark.parametrize("folds", [2, 5])
def test_every_query_is_measured_out_of_fold_once(folds, monkeypatch):
    """k-fold cross-fitting: each fold's weights are fitted on the other folds only, and every query gets exactly one
    out-of-fold measurement (the evidence counts each query once, whatever ``folds``)."""
    import rocketkd.teachers.prior as prior_module

    candidates, student, members, qrels = _held_out(40, good_share=0.9)
    fitted_on = []
    real = prior_module.check_teachers

    def spy(cands, *args, **kwargs):
        fitted_on.append(set(cands))
        return real(cands, *args, **kwargs)

    monkeypatch.setattr(prior_module, "check_teachers", spy)
    prior = fit_prior(candidates, student, members, qrels, temperatures={"bm25": 1.0, "base": 1.0}, folds=folds)
    assert prior.evidence["folds"] == folds and prior.evidence["queries"] == 40
    per_fold, full = fitted_on[:-1], fitted_on[-1]  # the last fit is on all queries (the accepted weights)
    assert len(per_fold) == folds and full == set(candidates)
    held_out = [set(candidates) - fit for fit in per_fold]
    assert all(h for h in held_out) and sum(len(h) for h in held_out) == 40  # disjoint, covering every query
    assert set().union(*held_out) == set(candidates)
    assert [prior_module.query_fold(q, 2) for q in ("1", "2", "abc")] == [1, 0, 1]  # two folds: as before folds existed


def test_a_member_no_better_than_chance_leaves_the_student_as_prior():
    candidates, student, members, qrels = _held_out(40, good_share=0.0)
    prior = fit_prior(candidates, student, members, qrels, temperatures={"bm25": 1.0, "base": 1.0})
    assert prior.weights == NO_CHANGE
    assert prior.evidence["accepted"] is False


def test_few_queries_are_not_evidence_enough():
    # 6 queries, all helped: fold fits see 3 queries each; 2^6 sign patterns give p >= 2/64 only if all gains are
    # equal and positive -- here the test must still be run, and a smaller alpha rejects.
    candidates, student, members, qrels = _held_out(6, good_share=1.0)
    strict = fit_prior(candidates, student, members, qrels, temperatures={"bm25": 1.0, "base": 1.0}, alpha=0.01)
    assert strict.weights == NO_CHANGE and strict.evidence["p_value"] >= 0.01


class _Const(Scorer):
    def __init__(self, name, fn):
        self.name, self.fn = name, fn

    def score_groups(self, groups, queries, corpus):
        return [np.array([self.fn(q, p) for p in pids], dtype=np.float64) for q, pids in groups]


def test_prior_and_composite_scores_are_the_ensemble_plus_the_cross_encoder(tmp_path):
    prior = Prior(weights={"bm25": 0.3, "base": 0.7}, temperatures={"bm25": 0.5, "base": 0.25})
    prior.save(tmp_path)
    loaded = Prior.load(tmp_path)
    assert loaded == prior and Prior.load(tmp_path / "missing") is None
    bm25 = _Const("bm25", lambda q, p: float(len(p)))
    base = _Const("base", lambda q, p: float(ord(p[0])) / 100)
    groups = [("q1", ["a", "bb", "ccc"]), ("q2", ["dddd", "e"])]
    ps = PriorScorer(loaded, {"bm25": bm25, "base": base})
    got = ps.score_groups(groups, {}, None)
    want = ensemble_logprobs([bm25.score_groups(groups, {}, None), base.score_groups(groups, {}, None)], [0.3, 0.7],
                             temperatures=[0.5, 0.25])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w)
    g_scores = _Const("g", lambda q, p: 0.1 * len(p))
    full = CompositeScorer(g_scores, ps).score_groups(groups, {}, None)
    for f, w, (_q, pids) in zip(full, want, groups):
        np.testing.assert_allclose(f, w + 0.1 * np.array([len(p) for p in pids]))


def test_prior_scorer_needs_its_members():
    with pytest.raises(ValueError, match="needs scorers"):
        PriorScorer(Prior(weights={"bm25": 1.0}, temperatures={"bm25": 1.0}), {})


def test_pipeline_with_a_prior_reranker(tiny_bert, tiny_data, tmp_path):
    """The prior recipe end to end: no warm-up, the prior fitted before round 1, the re-ranker checked alone (with
    the prior and a random order as controls), the prior saved with every re-ranker, the composite in the final
    runs and its comparison with the prior alone in results.json."""
    import json
    from pathlib import Path

    from rocketkd.config import load_config
    from rocketkd.data.formats import load_retrieval_data, read_candidates, read_trec_run
    from rocketkd.models.loading import load_reranker
    from rocketkd.pipeline import run_pipeline
    from rocketkd.teachers import RerankerScorer
    from rocketkd.teachers.prior import PRIOR_FILE, prior_members

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    cfg = load_config(root / "configs" / "tiny.yaml", [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}", f"output_dir={out}",
        "model.reranker_prior=true", "pipeline.warmup=false",
        # no evidence is enough (prior = the student's own encoder), and passages cut shorter than the folder's own
        # length: the check must encode the student as it trains, or "the student" and "the prior" differ
        "pipeline.prior_alpha=1e-12", "model.passage_max_length=6",
    ])
    results = run_pipeline(cfg)
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["baselines", "mine-1", "prior", "teachers-1", "train-1", "final", "hybrid"]
    t = stages["teachers-1"]
    # equal to its prior (here the student itself) it still teaches: joint, not labels only
    assert set(t["members"]) == {"reranker", "prior", "random"} and t["mode"] == "joint"
    # at the start of round 1 the head is new and zeroed: the re-ranker is exactly its prior
    assert t["members"]["reranker"]["nDCG@10"] == pytest.approx(t["members"]["prior"]["nDCG@10"])
    assert results["prior"]["weights"] == {"base": 1.0}  # ... which is the student: all three equal
    assert t["members"]["prior"]["nDCG@10"] == pytest.approx(t["student_ndcg@10"])
    assert t["members"]["reranker"]["vs_student"]["p_value"] == pytest.approx(1.0)
    lists = read_candidates(t["lists"])
    assert all(cl.teacher_scores is not None for cl in lists)
    reranker_dir = Path(stages["train-1"]["reranker"])
    prior = Prior.load(reranker_dir)
    assert prior is not None and prior == Prior.load(out / "prior") and (reranker_dir / PRIOR_FILE).exists()
    assert "reranker_vs_prior" in results and set(results["reranker_vs_prior"]) == {"dev", "test"}
    for check in results["reranker_vs_prior"].values():  # how far the cross-encoder can move its prior
        assert check["g_std"] > 0 and check["prior_std"] > 0
    assert results["prior"]["weights"] == prior.weights
    # the final re-ranked scores are g + prior, reproduced here from the saved folder alone
    data = load_retrieval_data(tiny_data)
    queries = data.split_queries("test")
    raw = read_trec_run(out / "runs" / "reranker-raw.test.trec")
    groups = [(q, sorted(s)) for q, s in raw.items()]
    g = RerankerScorer(load_reranker(cfg, str(reranker_dir), trainable=False)).score_groups(groups, queries,
                                                                                             data.corpus)
    p = PriorScorer(prior, prior_members(prior, data.corpus)).score_groups(groups, queries, data.corpus)
    for (q, pids), gs, ps in zip(groups, g, p):
        np.testing.assert_allclose([raw[q][pid] for pid in pids], gs + ps, rtol=1e-4, atol=1e-4)

    # `rocketkd search --rerank FOLDER` reproduces the pipeline's re-ranked system from the folder alone: prior + g,
    # fused with the weight fitted on dev (stored beside the re-ranker; no --fusion-weight given)
    from rocketkd.cli import main
    from rocketkd.search.rerank import load_fusion_weight

    assert load_fusion_weight(reranker_dir) == stages["final"]["fusion_weight"]
    searched = tmp_path / "searched.trec"
    assert main(["-q", "search", "--index", str(out / "index"), "--queries", str(tiny_data), "--split", "test",
                 "--rerank", str(reranker_dir), "--k", str(cfg.eval.rerank_depth), "--output", str(searched)]) == 0
    mine, theirs = read_trec_run(searched), read_trec_run(out / "runs" / "reranked.test.trec")
    for q, scores in mine.items():
        top = sorted(theirs[q], key=lambda pid: -theirs[q][pid])[: cfg.eval.rerank_depth]
        assert sorted(scores, key=lambda pid: -scores[pid]) == top
    # the re-ranker alone (--fusion-weight 1) gives its own score: prior + g, as the pipeline's reranker-raw run
    assert main(["-q", "search", "--index", str(out / "index"), "--queries", str(tiny_data), "--split", "test",
                 "--rerank", str(reranker_dir), "--fusion-weight", "1", "--k", str(cfg.eval.rerank_depth),
                 "--output", str(searched)]) == 0
    alone = read_trec_run(searched)
    for q, scores in alone.items():
        np.testing.assert_allclose([scores[pid] for pid in sorted(scores)], [raw[q][pid] for pid in sorted(scores)],
                                   rtol=1e-4, atol=1e-4)


def test_lone_train_with_a_prior_saves_it_beside_the_reranker(tiny_bert, tiny_data, tmp_path):
    """`rocketkd train` with model.reranker_prior: the prior is fitted once (out/prior), the lists carry it, the
    offline train.teachers give way to the online re-ranker, and the re-ranker folder holds rocketkd_prior.json."""
    from pathlib import Path

    from rocketkd.config import load_config
    from rocketkd.data.formats import read_candidates
    from rocketkd.pipeline import run_train

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "train"
    cfg = load_config(root / "configs" / "tiny.yaml", [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}", f"output_dir={out}",
        "model.reranker_prior=true", "train.max_steps=2", "train.teachers={bm25: 0.5, base: 0.5}",
        "train.online_teacher_weight=0.0",
    ])
    result = run_train(cfg, output_dir=out)
    prior = Prior.load(result.reranker_dir)
    assert prior is not None and prior == Prior.load(out / "prior")
    assert not (out / "teacher_lists.jsonl").exists()  # train.teachers gave way: no second stored teacher
    lists = read_candidates(out / "candidates.jsonl") if (out / "candidates.jsonl").exists() else None
    assert lists is None or all(cl.teacher_scores is None for cl in lists)  # the raw lists stay bare on disk


def test_the_joint_step_adds_the_prior_to_the_cross_encoder(tiny_bert, tiny_data):
    import torch

    from rocketkd.config import load_config
    from rocketkd.models.loading import load_reranker
    from rocketkd.training.joint import JointScores
    from rocketkd.training.step import loss_from_scores

    cfg = load_config(None, ["model.reranker_prior=true", "train.mode=joint", "train.in_batch_negatives=false",
                             f"model.reranker={tiny_bert}"])
    reranker = load_reranker(cfg, tiny_bert)
    assert reranker.new_head
    head = [m for m in reranker.model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1][-1]
    assert torch.count_nonzero(head.weight) == 0  # g starts at exactly 0: the re-ranker starts as its prior

    class _Batch:
        batch_size, group_size = 2, 3
        teacher_scores = torch.log_softmax(torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.5]]), dim=-1)

    g = torch.tensor([[0.5, 0.0, 0.0], [0.0, -1.0, 0.0]], requires_grad=True)
    student = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    parts = loss_from_scores(JointScores(student, g, torch.zeros(2, 4), torch.zeros(6, 4)), _Batch, cfg, 0)
    full = _Batch.teacher_scores + g.detach()
    want_ce = torch.nn.functional.cross_entropy(full, torch.zeros(2, dtype=torch.long))
    assert parts.parts["reranker_ce"].item() == pytest.approx(want_ce.item(), rel=1e-5)
    p = torch.softmax(full, -1)
    want_kl = (p * (torch.log(p) - torch.log_softmax(student.detach(), -1))).sum(-1).mean()
    assert parts.parts["distill"].item() == pytest.approx(want_kl.item(), rel=1e-5)

    class _NoPrior(_Batch):
        teacher_scores = None

    with pytest.raises(Exception, match="carry no prior"):
        loss_from_scores(JointScores(student, g, torch.zeros(2, 4), torch.zeros(6, 4)), _NoPrior, cfg, 0)


def test_the_fit_does_not_warn_that_the_student_equals_itself(caplog):
    """'base' is the student's own encoder: check_teachers' "not better than the student" warning is true by
    construction in every fold, so the prior's fit keeps it out of the console (the check's logger stays as it was)."""
    import logging

    candidates, student, members, qrels = _held_out(20, good_share=0.9)
    check_logger = logging.getLogger("rocketkd.teachers.check")
    before = check_logger.level
    with caplog.at_level(logging.WARNING):
        fit_prior(candidates, student, members, qrels, temperatures={"bm25": 1.0, "base": 1.0}, folds=5)
    assert not [r for r in caplog.records if r.name == "rocketkd.teachers.check" and r.levelno >= logging.WARNING]
    assert check_logger.level == before
