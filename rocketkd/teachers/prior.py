"""The re-ranker's prior: a label-free ensemble the cross-encoder learns a residual over (issue 20).

A cross-encoder made from a bi-encoder with a new head, trained on a few hundred queries, re-ranks far below the
pre-trained retriever it should teach. So the re-ranker scores a candidate list as

    s(q, p) = prior(q, p) + g(q, p)

where ``prior`` is the per-list ensemble of label-free scorers (BM25 and the untrained encoder, each z-scored per
list, at the student's sharpness, mixed as in :func:`rocketkd.teachers.ensemble_logprobs`) and ``g`` is the
cross-encoder, whose output layer starts at zero. At step 0 the re-ranker *is* the prior; listwise CE on labels over
``prior + g`` can only add what cross-attention sees, and the retriever is distilled toward ``softmax(prior + g)``
online, in the same step (RocketQAv2). Residual learning on a fixed base model is the idea of boosting-style
"residual" re-rankers; here the prior's weights are fitted on held-out queries.

The prior departs from "no change" only on evidence: its weights are fitted on held-out queries, and it is accepted
only when, cross-fitted over ``pipeline.prior_folds`` folds of those queries (weights fitted on the other folds,
measured on each), it beats the student in a paired randomization test at ``alpha``. Otherwise the prior is the student's own encoder (``base``,
weight 1): the re-ranker then starts equal to the student and only what the cross-encoder learns can teach.

Saved beside the cross-encoder as ``rocketkd_prior.json`` (the folder still loads in sentence-transformers'
``CrossEncoder``, which gives ``g`` alone); :class:`CompositeScorer` reproduces the full score.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rocketkd.candidates.title_queries import is_title_query
from rocketkd.config import Config
from rocketkd.evaluation.compare import paired_randomization_test
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.io import atomic_write
from rocketkd.models import resolve_model_path
from rocketkd.models.loading import load_retriever, load_retriever_with, retriever_settings
from rocketkd.search.fusion import candidates_from_run
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.teachers import (
    BM25Scorer,
    RetrieverScorer,
    Scorer,
    attach_teacher_scores,
    check_teachers,
    ensemble_logprobs,
    scores_on_candidates,
)
from rocketkd.teachers.targets import student_spread
from rocketkd.types import CandidateList, Qrels, Queries, Run

PRIOR_FILE = "rocketkd_prior.json"
PRIOR_MEMBERS = ("bm25", "base")  # label-free: checking them on train queries reads no label they learned
NO_CHANGE = {"base": 1.0}  # the student's own encoder: a prior that teaches nothing new


@dataclass
class Prior:
    """Weights and temperatures of the label-free members (z-scored per list); ``base_model``: the base encoder."""

    weights: dict[str, float]
    temperatures: dict[str, float]
    combine: str = "arithmetic"
    base_model: str | None = None
    base_settings: dict = field(default_factory=dict)  # rocketkd.models.loading.retriever_settings of base_model
    evidence: dict = field(default_factory=dict)  # how the weights were chosen (queries, p-value, fold deltas)

    def active(self) -> list[str]:
        return [n for n, w in self.weights.items() if w > 0]

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / PRIOR_FILE
        with atomic_write(path) as f:
            json.dump(asdict(self), f, indent=2, sort_keys=True)
        return path

    @classmethod
    def load(cls, folder: str | Path) -> Prior | None:
        """The prior saved in a re-ranker folder, or None for a plain cross-encoder."""
        path = Path(folder) / PRIOR_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    def logits(self, member_scores: Mapping[str, Sequence[np.ndarray]]) -> list[np.ndarray]:
        """Per list, the prior's log-probabilities from the members' raw scores (name -> one array per list)."""
        names = self.active()
        return ensemble_logprobs([member_scores[n] for n in names], [self.weights[n] for n in names],
                                 temperatures=[self.temperatures[n] for n in names], combine=self.combine,
                                 normalize_how="zscore")


class PriorScorer(Scorer):
    """The prior as a scorer: its members score the groups, the ensemble turns them into per-list logits."""

    name = "prior"

    def __init__(self, prior: Prior, members: Mapping[str, Scorer]):
        missing = [n for n in prior.active() if n not in members]
        if missing:
            raise ValueError(f"the prior needs scorers for {missing}")
        self.prior, self.members = prior, members

    def score_groups(self, groups, queries: Queries, corpus) -> list[np.ndarray]:
        scores = {n: self.members[n].score_groups(groups, queries, corpus) for n in self.prior.active()}
        return self.prior.logits(scores)


class CompositeScorer(Scorer):
    """The full re-ranker score: ``prior + g`` per list (``g``: the cross-encoder's logits)."""

    name = "reranker"

    def __init__(self, cross_encoder: Scorer, prior: PriorScorer):
        self.cross_encoder, self.prior = cross_encoder, prior

    def score_groups(self, groups, queries: Queries, corpus) -> list[np.ndarray]:
        g = self.cross_encoder.score_groups(groups, queries, corpus)
        return [np.asarray(a, dtype=np.float64) + b for a, b in zip(g, self.prior.score_groups(groups, queries, corpus))]


def prior_members(prior: Prior, corpus, load_base: Callable[[str | None], object] | None = None,
                  shared: Mapping[str, Scorer] | None = None) -> dict[str, Scorer]:
    """Scorers for the prior's members (``shared`` ones reused: the base encoder is often loaded already).
    ``load_base`` makes the base encoder from its path; by default with the settings saved in the prior."""
    load_base = load_base or (lambda path: load_retriever_with(path, prior.base_settings))
    shared = dict(shared or {})
    made: dict[str, Scorer] = {}
    for name in prior.active():
        if name in shared:
            made[name] = shared[name]
        elif name == "bm25":
            made[name] = BM25Scorer(corpus)
        elif name == "base":
            made[name] = RetrieverScorer(load_base(prior.base_model))
        else:
            raise ValueError(f"unknown prior member {name!r} (expected one of {PRIOR_MEMBERS})")
    return made


def query_fold(qid: str, folds: int = 2) -> int:
    # stable across runs and machines (two folds: the first byte's low bit, as before folds were configurable)
    return int.from_bytes(hashlib.sha1(qid.encode()).digest()[:8], "little") % folds


def _ensemble_per_query(candidates, members, weights, temperatures, combine, qrels) -> dict[str, float]:
    names = [n for n, w in weights.items() if w > 0]
    run = {}
    for qid, pids in candidates.items():
        arrays = [[np.array([members[n][qid][p] for p in pids])] for n in names]
        (logp,) = ensemble_logprobs(arrays, [weights[n] for n in names], temperatures=[temperatures[n] for n in names],
                                    combine=combine, normalize_how="zscore")
        run[qid] = dict(zip(pids, logp.tolist()))
    return {q: v["nDCG@10"] for q, v in evaluate_run(run, qrels, ["nDCG@10"]).per_query.items()}


@contextlib.contextmanager
def _check_warnings_off():
    """The prior's fits measure the student's own encoder as a member ("base"): check_teachers' warning that it is
    "not better than the student" is true by construction there, and would repeat once per fold."""
    check_logger = logging.getLogger("rocketkd.teachers.check")
    level = check_logger.level
    check_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        check_logger.setLevel(level)


def fit_prior(candidates: Mapping[str, Sequence[str]], student_scores: Mapping[str, Mapping[str, float]],
              members: Mapping[str, Mapping[str, Mapping[str, float]]], qrels: Qrels, *,
              temperatures: Mapping[str, float], combine: str = "arithmetic", alpha: float = 0.05,
              grid_step: float = 0.1, base_model: str | None = None, folds: int = 2) -> Prior:
    """Fit the prior's weights on held-out ``candidates`` (the student's top-k) and accept them only on evidence.

    ``folds`` folds of the queries (by a hash of the id): weights fitted on the other folds re-rank each fold, so
    every query's ensemble nDCG@10 is out-of-fold. A paired randomization test of those against the student's own nDCG@10 over
    all queries decides: accepted (p < ``alpha`` and a positive mean gain) -> the weights fitted on all queries;
    otherwise :data:`NO_CHANGE`.
    """
    with _check_warnings_off():
        return _fit_prior(candidates, student_scores, members, qrels, temperatures=temperatures, combine=combine,
                          alpha=alpha, grid_step=grid_step, base_model=base_model, folds=folds)


def _fit_prior(candidates, student_scores, members, qrels, *, temperatures, combine, alpha, grid_step, base_model,
               folds) -> Prior:
    qrels = {q: r for q, r in qrels.items() if q in candidates}
    temps = dict(temperatures)
    fit_kwargs = dict(grid_step=grid_step, min_gain=0.0, zero_bad=True, combine=combine,
                      normalize_how="zscore", temperatures=temps)
    student_run = {q: dict(s) for q, s in student_scores.items() if q in candidates}
    student_pq = {q: v["nDCG@10"] for q, v in evaluate_run(student_run, qrels, ["nDCG@10"]).per_query.items()}
    out_of_fold: dict[str, float] = {}
    fold_weights = []
    for k in range(folds):
        fit_q = [q for q in candidates if query_fold(q, folds) != k and q in qrels]
        eval_q = [q for q in candidates if query_fold(q, folds) == k and q in qrels]
        if not fit_q or not eval_q:
            continue
        choice = check_teachers({q: candidates[q] for q in fit_q}, student_scores,
                                {n: {q: m[q] for q in fit_q} for n, m in members.items()},
                                {q: qrels[q] for q in fit_q}, **fit_kwargs)
        weights = choice.weights if choice.usable else dict(NO_CHANGE)
        fold_weights.append(weights)
        if choice.usable:
            out_of_fold.update(_ensemble_per_query({q: candidates[q] for q in eval_q}, members, weights, temps, combine,
                                                   {q: qrels[q] for q in eval_q}))
        else:
            out_of_fold.update({q: student_pq[q] for q in eval_q if q in student_pq})
    common = sorted(set(out_of_fold) & set(student_pq))
    a = [student_pq[q] for q in common]
    b = [out_of_fold[q] for q in common]
    gain = float(np.mean(np.subtract(b, a))) if common else 0.0
    p = paired_randomization_test(a, b) if common else 1.0
    full = check_teachers(candidates, student_scores, members, qrels, **fit_kwargs)
    accepted = bool(common) and gain > 0 and p < alpha and full.usable
    evidence = {"queries": len(common), "student_ndcg@10": float(np.mean(a)) if a else None,
                "out_of_fold_ndcg@10": float(np.mean(b)) if b else None, "gain": gain, "p_value": p,
                "alpha": alpha, "folds": folds, "fold_weights": fold_weights, "fitted_weights": full.weights, "accepted": accepted}
    weights = {n: float(w) for n, w in full.weights.items() if w > 0} if accepted else dict(NO_CHANGE)
    return Prior(weights=weights, temperatures={n: float(temps[n]) for n in weights}, combine=combine,
                 base_model=base_model, evidence=evidence)


# ----------------------------------------------------------------------------------------------------------------
# The prior on a dataset: fitted once, before anything learns the train labels; attached to lists; in a re-ranker


def held_out_for_prior(cfg: Config, data) -> tuple[dict[str, str], Qrels]:
    """Dev plus the judged train queries (title queries excepted): the prior's members are label-free and its
    student is ``model.retriever`` as given, so no train label has been learned by anything checked."""
    queries = dict(data.split_queries(cfg.data.dev_split))
    qrels = dict(data.qrels[cfg.data.dev_split])
    split = cfg.data.train_split
    for qid, text in data.split_queries(split).items():
        if not is_title_query(qid) and qid not in queries and qid in data.qrels.get(split, {}):
            queries[qid] = text
            qrels[qid] = data.qrels[split][qid]
    return queries, qrels


@dataclass
class PriorInputs:
    """What the prior is fitted on: the student's held-out top-k, each member's scores of them, their qrels, and the
    members' temperature (the student's spread on the training lists)."""

    candidates: dict[str, list[str]]
    members: dict[str, dict[str, dict[str, float]]]
    qrels: Qrels
    scale: float
    start: str


def prior_inputs(cfg: Config, data, lists: Sequence[CandidateList], *, base=None) -> PriorInputs:
    """The members' scores on :func:`held_out_for_prior`'s queries for ``model.retriever`` (the round-1 student)."""
    start = resolve_model_path(cfg.model.retriever)
    base = base if base is not None else load_retriever(cfg, start)
    queries, qrels = held_out_for_prior(cfg, data)
    index = DenseIndex.build(base, data.corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast)
    run = search_run(index, queries, cfg.eval.rerank_depth)
    candidates = candidates_from_run(run, cfg.eval.rerank_depth)
    base_scorer, bm25 = RetrieverScorer(base), BM25Scorer(data.corpus)
    members = {"bm25": scores_on_candidates(bm25, candidates, queries, data.corpus),
               "base": scores_on_candidates(base_scorer, candidates, queries, data.corpus)}
    scale = cfg.train.teacher_scale or student_spread(base_scorer.score(lists, data.all_queries(), data.corpus),
                                                      cfg.model.score_scale)
    return PriorInputs(candidates, members, qrels, scale, start)


def fit_prior_on(cfg: Config, data, lists: Sequence[CandidateList], *, base=None,
                 inputs: PriorInputs | None = None) -> Prior:
    """Fit the prior of ``model.retriever`` (the round-1 student) on :func:`held_out_for_prior`'s queries.

    The members' temperatures put their z-scores at the student's own sharpness on the training ``lists``
    (:func:`rocketkd.teachers.targets.student_spread`), as the pipeline's offline teachers are.
    """
    x = inputs or prior_inputs(cfg, data, lists, base=base)
    prior = fit_prior(x.candidates, x.members["base"], x.members, x.qrels,
                      temperatures={n: 1.0 / x.scale for n in x.members}, combine=cfg.train.teacher_combine,
                      alpha=cfg.pipeline.prior_alpha, base_model=x.start, folds=cfg.pipeline.prior_folds)
    prior.base_settings = retriever_settings(cfg)
    prior.evidence["teacher_scale"] = x.scale
    return prior


def attach_prior(data, lists: Sequence[CandidateList], prior: Prior) -> list[CandidateList]:
    """``lists`` with the prior's per-list log-probabilities as their stored teacher scores (what the joint model
    adds to the cross-encoder's logits under ``model.reranker_prior``)."""
    scorer = PriorScorer(prior, prior_members(prior, data.corpus))
    return attach_teacher_scores(lists, scorer.score(lists, data.all_queries(), data.corpus))


def add_prior_to_run(run: Run, prior_scorer: PriorScorer, queries: Queries, corpus) -> Run:
    """A re-ranked run of cross-encoder logits ``g`` (each query's re-ranked candidates) -> ``prior + g``."""
    groups = [(qid, list(scores)) for qid, scores in run.items() if scores]
    priors = prior_scorer.score_groups(groups, queries, corpus)
    return {qid: {p: float(run[qid][p] + v) for p, v in zip(pids, logp)} for (qid, pids), logp in zip(groups, priors)}
