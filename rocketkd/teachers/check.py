"""The held-out check: every teacher, and their ensemble, measured beside the student before any of them teaches.

Why (project issue 11). On small data a cross-encoder whose head is new can re-rank *worse* than the retriever it is
meant to teach (cranfield: 0.06 nDCG@10 against the bi-encoder's 0.41), and a retriever distilled from it only gets
worse. Better teachers can be assembled from what is at hand -- a per-query fusion of the zero-shot bi-encoder and
BM25 reaches 0.437 there. So each member and the ensemble (:mod:`rocketkd.teachers.ensemble`) re-rank the student's
own top-k of held-out queries: a member that does not beat the student gets weight 0, and when nothing beats it the
caller distils nothing (labels only).

:func:`check_teachers` fits the ensemble's weights on those queries (the pipeline); :func:`check_ensemble` judges
weights given in config (a lone ``rocketkd train``). Both take raw scores per query and candidate (from
:func:`rocketkd.teachers.scorers.scores_on_candidates`): no model, no index here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.search.fusion import weight_grid
from rocketkd.teachers.ensemble import COMBINATIONS, combine_logprobs, ensemble_logprobs, member_logprobs

if TYPE_CHECKING:
    from rocketkd.types import Qrels

__all__ = [
    "ENSEMBLE",
    "MAX_MEMBERS",
    "EnsembleChoice",
    "TeacherReport",
    "check_ensemble",
    "check_teachers",
    "rerank_ndcg",
]

logger = logging.getLogger(__name__)

ENSEMBLE = "ensemble"  # the name of the ensemble's own row in EnsembleChoice.reports
MAX_MEMBERS = 4  # the weight grid has C(1/step + M - 1, M - 1) points: 286 for M = 4 at step 0.1
_TIE = 1e-12  # nDCG values closer than this are ties


def rerank_ndcg(scores_per_query: Mapping[str, Mapping[str, float]], qrels: Qrels, k: int = 10) -> float:
    """nDCG@k of the ranking the scores give each query's candidates (:func:`rocketkd.evaluation.metrics.evaluate_run`).

    evaluate_run's rules apply: the mean is over the qrels queries with a relevant passage, a query without scores
    counts 0, ties are broken by passage id descending. Pass the qrels of the queries that were scored.
    """
    run = {qid: dict(scores) for qid, scores in scores_per_query.items()}
    return evaluate_run(run, qrels, [f"nDCG@{k}"]).mean[f"nDCG@{k}"]


@dataclass
class TeacherReport:
    """One member (or the ensemble, named ``"ensemble"``) measured on held-out queries.

    ndcg:         nDCG@10 when it re-ranks the student's candidates
    weight:       its weight in the chosen ensemble (for the ensemble row: the sum of the weights, 1 or 0)
    student_ndcg: the student's own nDCG@10 on the same candidates
    helps:        it beats the student by more than ``min_gain`` alone, or (a member) it raises the best ensemble
                  by more than ``min_gain`` over the best ensemble without it
    note:         why it got its weight, in words
    """

    name: str
    ndcg: float
    weight: float
    student_ndcg: float
    helps: bool
    note: str = ""


@dataclass
class EnsembleChoice:
    """What :func:`check_teachers` chose: weights per member name (summing to 1, or all 0) and the reports."""

    weights: dict[str, float]
    reports: list[TeacherReport] = field(default_factory=list)
    ensemble_ndcg: float = 0.0
    student_ndcg: float = 0.0

    @property
    def usable(self) -> bool:
        """False when every weight is 0: do not distil; train on labels only."""
        return any(w > 0 for w in self.weights.values())

    def report(self, name: str) -> TeacherReport:
        for r in self.reports:
            if r.name == name:
                return r
        raise KeyError(f"no report named {name!r}")


def _entropy(w: Sequence[float]) -> float:
    return -sum(x * math.log(x) for x in w if x > 0)


def _best(results: list[tuple[float, tuple[float, ...]]], allowed: set[int]) -> tuple[float, tuple[float, ...]] | None:
    """The best grid point whose support lies in ``allowed``. Ties (within 1e-12) go to the simpler choice: fewer
    members with weight first, then the more uniform weights (higher entropy), then more weight on earlier members."""
    pool = [(v, w) for v, w in results if all(x == 0 or i in allowed for i, x in enumerate(w))]
    if not pool:
        return None
    top = max(v for v, _ in pool)
    tied = [(v, w) for v, w in pool if v >= top - _TIE]
    return min(tied, key=lambda vw: (sum(x > 0 for x in vw[1]), -_entropy(vw[1]), tuple(-x for x in vw[1])))


def _held_out(candidates: Mapping[str, Sequence[str]], qrels: Qrels) -> tuple[list[str], Qrels]:
    """The held-out queries that have candidates, and their qrels; an error if none has a relevant passage."""
    qids = [q for q, pids in candidates.items() if len(pids) > 0]
    held_out = {q: qrels[q] for q in qids if q in qrels}
    if not any(g > 0 for q in held_out for g in held_out[q].values()):
        raise ValueError(
            f"none of the {len(qids)} held-out queries has a relevant passage in the qrels given; nothing to measure"
        )
    return qids, held_out


def check_teachers(
    candidates: Mapping[str, Sequence[str]],
    student_scores: Mapping[str, Mapping[str, float]],
    members: Mapping[str, Mapping[str, Mapping[str, float]]],
    qrels: Qrels,
    *,
    grid_step: float = 0.1,
    min_gain: float = 0.0,
    zero_bad: bool = True,
    combine: str = "arithmetic",
    normalize_how: str | Mapping[str, str] = "zscore",
    temperatures: Mapping[str, float] | None = None,
) -> EnsembleChoice:
    """Measure each teacher on held-out queries beside the student, fit ensemble weights, zero what does not help.

    ``candidates``: the student's top-k per held-out query (best first); ``student_scores`` and each of ``members``
    (name -> qid -> pid -> raw score, e.g. from :func:`scores_on_candidates`) must score every candidate. Only the
    qrels of the candidate queries count.

    1. Every member, and the student, re-rank the candidates; nDCG@10 of each (:func:`rerank_ndcg`).
    2. Ensemble weights by exhaustive grid search on the simplex (multiples of ``grid_step``; at most
       ``MAX_MEMBERS`` members), the ensemble built as in training (:func:`ensemble_logprobs` with ``combine``,
       ``normalize_how`` (one name, or name -> name) and ``temperatures`` (name -> T, default 1)). Ties go to the
       simpler choice: fewer members, then more uniform weights, then more weight on the members named first.
       The grid is fitted on the same held-out queries it is scored on, so the ensemble's number is optimistic;
       raise ``min_gain`` on small sets.
    3. A member *helps* if alone it beats the student by more than ``min_gain``, or if the best ensemble with it
       beats the best without it by more than ``min_gain`` (a member can be worse alone yet complement another:
       the issue's best teacher, 0.8 bi-encoder + 0.2 BM25, has BM25 alone below the student). Each member not
       better than the student alone is warned about (``logging.warning``, its name and both numbers); with
       ``zero_bad`` a member that does not help gets weight 0 and the weights are refitted without it (repeated
       until stable). The student itself may be a member (Hinton's generalist): it never beats itself alone, so
       it keeps weight only if it improves the ensemble.
    4. If the chosen ensemble is not better than the student by more than ``min_gain``, a warning says so and,
       with ``zero_bad``, every weight becomes 0: :attr:`EnsembleChoice.usable` is False -- do not distil, train
       on labels only. If every member was dropped, ``ensemble_ndcg`` is that of the best ensemble of all members
       (what distilling would have aimed at).
    """
    names = list(members)
    if not names:
        raise ValueError("check_teachers needs at least one member")
    if len(names) > MAX_MEMBERS:
        raise ValueError(f"at most {MAX_MEMBERS} members keep the weight grid small, got {len(names)}: {names}")
    if ENSEMBLE in names:
        raise ValueError(f"{ENSEMBLE!r} names the ensemble's own report; rename that member")
    if combine not in COMBINATIONS:
        raise ValueError(f"unknown combination {combine!r}; expected one of {', '.join(COMBINATIONS)}")
    if min_gain < 0:
        raise ValueError(f"min_gain must be >= 0, got {min_gain}")
    hows = [normalize_how if isinstance(normalize_how, str) else normalize_how.get(n, "zscore") for n in names]
    temps = [float((temperatures or {}).get(n, 1.0)) for n in names]
    grid = weight_grid(len(names), grid_step)

    qids, held_out = _held_out(candidates, qrels)

    def aligned(what: str, scores: Mapping[str, Mapping[str, float]]) -> list[np.ndarray]:
        out = []
        for q in qids:
            per = scores.get(q)
            if per is None:
                raise ValueError(f"{what} has no scores for held-out query {q!r}")
            try:
                out.append(np.asarray([per[p] for p in candidates[q]], dtype=np.float64))
            except KeyError as e:
                raise ValueError(f"{what} has no score for candidate {e.args[0]!r} of query {q!r}") from None
        return out

    def as_run(arrays: Sequence[np.ndarray]) -> dict[str, dict[str, float]]:
        return {q: dict(zip(candidates[q], a.tolist())) for q, a in zip(qids, arrays)}

    student = rerank_ndcg(as_run(aligned("the student", student_scores)), held_out)
    raw = [aligned(f"member {n!r}", members[n]) for n in names]
    alone = [rerank_ndcg(as_run(r), held_out) for r in raw]
    # per member and list, log_softmax(normalize(s) / T): computed once, combined per grid point
    logp = [[member_logprobs(a, hows[m], temps[m]) for a in raw[m]] for m in range(len(names))]

    results: list[tuple[float, tuple[float, ...]]] = []
    for w in grid:
        support = [m for m, x in enumerate(w) if x > 0]
        wa = np.asarray([w[m] for m in support])
        lists = [combine_logprobs(np.stack([logp[m][i] for m in support]), wa, combine) for i in range(len(qids))]
        results.append((rerank_ndcg(as_run(lists), held_out), w))

    good_alone = [a > student + min_gain for a in alone]
    everyone = set(range(len(names)))
    active = set(everyone)
    helps = list(good_alone)
    while True:
        best_value, best_w = _best(results, active)  # type: ignore[misc]
        for m in sorted(active):
            without = _best(results, active - {m})
            gain = best_value - (without[0] if without is not None else student)
            helps[m] = good_alone[m] or (best_w[m] > 0 and gain > min_gain)
        drop = {m for m in active if not helps[m]}
        if not zero_bad or not drop:
            break
        active -= drop
        if not active:
            break
    first_value = _best(results, everyone)[0]  # type: ignore[index]

    if active:
        ensemble_ndcg, chosen = best_value, best_w
    else:
        ensemble_ndcg, chosen = first_value, tuple(0.0 for _ in names)
    ensemble_helps = bool(active) and ensemble_ndcg > student + min_gain
    weights = {n: float(chosen[m]) for m, n in enumerate(names)}
    if zero_bad and not ensemble_helps:
        weights = {n: 0.0 for n in names}

    reports = []
    for m, n in enumerate(names):
        if good_alone[m]:
            note = "beats the student alone"
        elif helps[m]:
            note = "not better than the student alone, but raises the ensemble"
        elif zero_bad:
            note = "not better than the student alone and does not raise the ensemble: weight 0"
        else:
            note = "does not help (kept: zero_bad=False)"
        if weights[n] == 0 and helps[m] and not good_alone[m]:
            note += "; weight 0 (the ensemble does not beat the student)"
        if not good_alone[m]:
            logger.warning(
                "teacher %r re-ranks the held-out candidates to nDCG@10 %.4f, not better than the student's own "
                "%.4f (min_gain %g): %s; weight %.2f",
                n, alone[m], student, min_gain, note, weights[n],
            )
        reports.append(TeacherReport(n, alone[m], weights[n], student, helps[m], note))
    total = sum(weights.values())
    if not ensemble_helps:
        logger.warning(
            "the teacher ensemble re-ranks the held-out candidates to nDCG@10 %.4f, not better than the student's "
            "own %.4f (min_gain %g): %s",
            ensemble_ndcg, student, min_gain,
            "every weight is 0 -- do not distil, train on labels only" if zero_bad else "kept (zero_bad=False)",
        )
    reports.append(
        TeacherReport(
            ENSEMBLE, ensemble_ndcg, total, student, ensemble_helps,
            ", ".join(f"{n}={w:.2f}" for n, w in weights.items()),
        )
    )
    logger.info(
        "teachers on %d held-out queries: student nDCG@10 %.4f; %s; ensemble %.4f with weights %s",
        len(held_out), student, ", ".join(f"{n} {a:.4f}" for n, a in zip(names, alone)), ensemble_ndcg, weights,
    )
    return EnsembleChoice(weights=weights, reports=reports, ensemble_ndcg=ensemble_ndcg, student_ndcg=student)


def check_ensemble(
    candidates: Mapping[str, Sequence[str]],
    student_scores: Mapping[str, Mapping[str, float]],
    members: Mapping[str, Mapping[str, Mapping[str, float]]],
    weights: Mapping[str, float],
    qrels: Qrels,
    *,
    min_gain: float = 0.0,
    combine: str = "arithmetic",
    normalize_how: str | Mapping[str, str] = "zscore",
    temperatures: Mapping[str, float] | None = None,
) -> EnsembleChoice:
    """Check an ensemble whose weights are *given* (config), not fitted: it teaches only if it beats the student.

    Same inputs as :func:`check_teachers` plus ``weights`` (name -> weight >= 0, not all 0). Each member with
    weight > 0 and the weighted ensemble (:func:`ensemble_logprobs`, as training builds it) re-rank the student's
    held-out candidates. If the ensemble's nDCG@10 is not above the student's by more than ``min_gain``, a warning
    names both numbers and every weight becomes 0 (:attr:`EnsembleChoice.usable` is False): the caller must not
    distil from it. Members are not dropped one by one: the configured mixture is what would teach, so it is what
    is judged (fit the weights with :func:`check_teachers` instead to select members).
    """
    active = [n for n, w in weights.items() if w > 0]
    if not active:
        raise ValueError("check_ensemble: every weight is 0, there is no ensemble to check")
    missing = [n for n in active if n not in members]
    if missing:
        raise ValueError(f"check_ensemble: no held-out scores for member(s) {missing}")
    qids, held_out = _held_out(candidates, qrels)

    def arrays(what: str, scores: Mapping[str, Mapping[str, float]]) -> list[np.ndarray]:
        try:
            return [np.asarray([scores[q][p] for p in candidates[q]], dtype=np.float64) for q in qids]
        except KeyError as e:
            raise ValueError(f"{what} has no score for {e.args[0]!r} among the held-out candidates") from None

    def ndcg(per_list: Sequence[np.ndarray]) -> float:
        return rerank_ndcg({q: dict(zip(candidates[q], a.tolist())) for q, a in zip(qids, per_list)}, held_out)

    student = ndcg(arrays("the student", student_scores))
    raw = {n: arrays(f"member {n!r}", members[n]) for n in active}
    alone = {n: ndcg(raw[n]) for n in active}
    hows = [normalize_how if isinstance(normalize_how, str) else normalize_how.get(n, "zscore") for n in active]
    logp = ensemble_logprobs(
        [raw[n] for n in active], [float(weights[n]) for n in active], combine=combine, normalize_how=hows,
        temperatures=[float((temperatures or {}).get(n, 1.0)) for n in active],
    )
    ensemble = ndcg(logp)
    helps = ensemble > student + min_gain
    total = sum(float(weights[n]) for n in active)
    chosen = {n: (float(w) / total if helps and n in active else 0.0) for n, w in weights.items()}
    reports = [
        TeacherReport(n, alone[n], chosen[n], student, alone[n] > student + min_gain,
                      "beats the student alone" if alone[n] > student + min_gain else "not better than the student alone")
        for n in active
    ]
    reports.append(TeacherReport(ENSEMBLE, ensemble, sum(chosen.values()), student, helps,
                                 ", ".join(f"{n}={w:.2f}" for n, w in chosen.items())))
    logger.info("teachers on %d held-out queries: student nDCG@10 %.4f; %s; configured ensemble %.4f",
                len(held_out), student, ", ".join(f"{n} {a:.4f}" for n, a in alone.items()), ensemble)
    if not helps:
        logger.warning(
            "the configured teacher ensemble %s re-ranks the held-out candidates to nDCG@10 %.4f, not better than the "
            "student's own %.4f (min_gain %g): weight 0, it does not teach",
            dict(weights), ensemble, student, min_gain,
        )
    return EnsembleChoice(weights=chosen, reports=reports, ensemble_ndcg=ensemble, student_ndcg=student)
