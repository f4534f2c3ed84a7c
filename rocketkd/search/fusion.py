"""Fusion: the one policy that combines a first-stage run with the runs that re-scored its top passages.

Used alike by the pipeline's ``final`` and ``hybrid`` stages and by ``rocketkd search --rerank/--bm25-weight``.

Scores of different stages live on unrelated scales (inner products, BM25, cross-encoder logits), so each run's
scores are first z-normalised per query over the passages *every* run scored::

    z(s) = (s - mean) / std        (population std over the shared passages; all scores 0 when std is 0)
    fused = sum_i weights[i] * z(runs[i])                     (fuse_many)
    fused = weight * z(second) + (1 - weight) * z(first)      (fuse_runs: two runs)

``weight = 0`` ranks by the first stage alone, ``weight = 1`` by the second alone (z-scoring is monotone, so the
orders are exactly those of the input runs, ties included). Passages only some runs scored are dropped (after
:func:`~rocketkd.search.rerank.rerank_run` that is the first stage below the re-ranking depth); :func:`keep_tail`
puts them back below the fused top, in the first stage's order, and :func:`fuse_stages` does both. A query with no
shared passage keeps the run of largest weight that has passages for it, z-normalised.

:func:`choose_fusion_weight` (two runs) and :func:`choose_fusion_weights` (several, on the simplex grid of
:func:`weight_grid`) pick the weights on held-out judgements (dev queries, never the test queries).

Everything here is pure arithmetic on runs (query id -> {passage id: score}); no model, no index.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from rocketkd.evaluation.compare import compare_runs
from rocketkd.evaluation.metrics import evaluate_run, parse_metric, rank_scores

if TYPE_CHECKING:
    from rocketkd.types import Qrels, Run

__all__ = [
    "DEFAULT_FUSION_GRID",
    "candidates_from_run",
    "choose_fusion_weight",
    "choose_fusion_weights",
    "fitted_or_default",
    "fuse_many",
    "fuse_runs",
    "fuse_stages",
    "head_of_run",
    "keep_tail",
    "weight_grid",
]

DEFAULT_FUSION_GRID: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))


# ----------------------------------------------------------------------------------------------------------------
# Cutting runs


def candidates_from_run(run: Run, k: int) -> dict[str, list[str]]:
    """Each query's top ``k`` passages of ``run``, best first (trec_eval's order: score desc, ties by id desc)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return {qid: rank_scores(scores, qid)[:k] for qid, scores in run.items()}


def head_of_run(run: Run, depth: int) -> Run:
    """``run`` cut to each query's top ``depth`` passages (:func:`candidates_from_run`), with their scores."""
    return {q: {p: run[q][p] for p in pids} for q, pids in candidates_from_run(run, depth).items()}


def keep_tail(head: Run, first: Run) -> Run:
    """Re-ranked top passages, then the first stage's remaining ranks below them in their own order.

    Re-ranking only reorders the top ``rerank_depth``; dropping the rest would make Recall@100 of the re-ranked
    system meaningless. The result covers the queries of ``first``.
    """
    merged = {}
    for qid, ranked in first.items():
        top = head.get(qid, {})
        floor = min(top.values(), default=0.0)
        tail = sorted((p for p in ranked if p not in top), key=lambda p: -ranked[p])
        merged[qid] = {**top, **{p: floor - 1.0 - i for i, p in enumerate(tail)}}
    return merged


# ----------------------------------------------------------------------------------------------------------------
# Fusing


def _zscore(values: np.ndarray) -> np.ndarray:
    std = values.std()
    if not np.isfinite(std) or std == 0:
        return np.zeros_like(values)
    return (values - values.mean()) / std


def fuse_runs(first: Run, second: Run, weight: float) -> Run:
    """``weight * z(second) + (1 - weight) * z(first)`` per query, over the passages both runs scored.

    See the module docstring for the normalisation and the passages kept. The result covers every query of
    either run. ``weight`` must lie in [0, 1].
    """
    weight = float(weight)
    if not 0.0 <= weight <= 1.0 or math.isnan(weight):
        raise ValueError(f"fusion weight must be in [0, 1], got {weight}")
    return fuse_many([first, second], [1.0 - weight, weight])


def fuse_many(runs: Sequence[Run], weights: Sequence[float]) -> Run:
    """``sum_i weights[i] * z(runs[i])`` per query, over the passages every run scored (the hybrid re-ranker:
    retriever, cross-encoder and BM25 as one list's specialists).

    Each run is z-normalised per query as in :func:`fuse_runs` (which is this with two runs). A run of weight 0
    still limits the passages to those it scored. A query with no passage shared by all runs keeps, z-normalised,
    the run of largest weight among those that have passages for it (ties: the later run). Weights must be
    finite and >= 0; they are used as given (not renormalised).
    """
    if len(runs) != len(weights) or not runs:
        raise ValueError(f"fuse_many needs one weight per run, got {len(runs)} runs and {len(weights)} weights")
    ws = [float(w) for w in weights]
    if any(not math.isfinite(w) or w < 0 for w in ws):
        raise ValueError(f"fusion weights must be finite and >= 0, got {ws}")
    fused: Run = {}
    for qid in dict.fromkeys(q for run in runs for q in run):
        per = [run.get(qid) or {} for run in runs]
        shared = [pid for pid in per[-1] if all(pid in r for r in per[:-1])]
        if not shared:
            have = [i for i, r in enumerate(per) if r]
            alone = per[max(have, key=lambda i: (ws[i], i))] if have else {}
            pids = list(alone)
            z = _zscore(np.array([alone[p] for p in pids], dtype=np.float64))
            fused[qid] = dict(zip(pids, z.tolist()))
            continue
        mix = None
        for r, w in zip(per, ws):
            if w == 0.0:
                continue
            z = _zscore(np.array([r[p] for p in shared], dtype=np.float64))
            term = z if w == 1.0 else w * z
            mix = term if mix is None else mix + term
        fused[qid] = dict(zip(shared, (mix if mix is not None else np.zeros(len(shared))).tolist()))
    return fused


def fuse_stages(first: Run, rescored: Sequence[Run], weights: Sequence[float], *, depth: int | None = None) -> Run:
    """The final ranking of a multi-stage system: ``first``'s top ``depth`` passages (all of them when None)
    fused per query with the runs that re-scored them (:func:`fuse_many`; ``weights`` = the first stage's, then one
    per run of ``rescored``), followed by the rest of ``first`` in its own order (:func:`keep_tail`).

    The two-stage system is ``fuse_stages(first, [reranked], [1 - w, w])``; the hybrid one adds BM25's run.
    """
    head = first if depth is None else head_of_run(first, depth)
    return keep_tail(fuse_many([head, *rescored], weights), first)


# ----------------------------------------------------------------------------------------------------------------
# Choosing the weights on held-out queries


def weight_grid(count: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector on the simplex with entries in multiples of ``step`` (compositions of 1/step)."""
    n = round(1.0 / step)
    if not (0 < step <= 1) or abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"grid_step must divide 1 (e.g. 0.1, 0.05, 0.25), got {step!r}")
    grid = []
    for cuts in itertools.combinations(range(n + count - 1), count - 1):  # stars and bars
        parts, prev = [], -1
        for c in (*cuts, n + count - 1):
            parts.append(c - prev - 1)
            prev = c
        grid.append(tuple(p / n for p in parts))
    return grid


def choose_fusion_weight(
    first: Run,
    second: Run,
    qrels: Qrels,
    *,
    grid: Sequence[float] = DEFAULT_FUSION_GRID,
    metric: str = "nDCG@10",
) -> tuple[float, dict[float, float]]:
    """The fusion weight of ``grid`` with the best mean ``metric`` on ``qrels`` (held-out queries), and every score.

    Ties go to the smaller weight (the cheaper first stage keeps more say). Only the queries of ``qrels`` are
    fused and scored. Returns ``(best_weight, {weight: metric value})``.
    """
    parse_metric(metric)  # ConfigError on a bad name, before any work
    if not grid:
        raise ValueError("the fusion weight grid is empty")
    first_q = {q: first[q] for q in qrels if q in first}
    second_q = {q: second[q] for q in qrels if q in second}
    scores: dict[float, float] = {}
    for w in sorted(float(w) for w in grid):
        scores[w] = evaluate_run(fuse_runs(first_q, second_q, w), qrels, [metric]).mean[metric]
    best = None
    for w, value in scores.items():  # ascending weights: strict improvement needed to move up
        if best is None or value > scores[best] + 1e-12:
            best = w
    assert best is not None
    return best, scores


def choose_fusion_weights(
    runs: Sequence[Run],
    qrels: Qrels,
    *,
    grid_step: float = 0.1,
    metric: str = "nDCG@10",
) -> tuple[tuple[float, ...], float]:
    """The weights on the simplex (multiples of ``grid_step``) whose :func:`fuse_many` of ``runs`` has the best
    mean ``metric`` on ``qrels`` (held-out queries), and that value.

    Ties go to the earlier runs: among equal scores, the point that is lexicographically largest (most weight on
    ``runs[0]``, then ``runs[1]``, ...), so list the cheaper or trusted stage first. Only the queries of ``qrels``
    are fused and scored.
    """
    parse_metric(metric)
    if not runs:
        raise ValueError("choose_fusion_weights needs at least one run")
    only = [{q: run[q] for q in qrels if q in run} for run in runs]
    best: tuple[float, tuple[float, ...]] | None = None
    for w in sorted(weight_grid(len(runs), grid_step), reverse=True):  # lexicographically largest first
        value = evaluate_run(fuse_many(only, w), qrels, [metric]).mean[metric]
        if best is None or value > best[0] + 1e-12:
            best = (value, w)
    assert best is not None
    return best[1], best[0]


def fitted_or_default(fitted: Run, default: Run, qrels: Qrels, alpha: float, *, metric: str = "nDCG@10") -> dict:
    """Whether a run fused with dev-fitted weights may replace the ``default`` fusion: only when it beats it on the
    held-out ``qrels`` in a paired randomization test at ``alpha`` (``alpha`` 1: always). Fitting a weight on 25-50
    queries picks the grid point that fits their noise best, so without this test the fitted weight departs from
    "no change" on no evidence. Returns the comparison with ``use_fitted``."""
    (c,) = compare_runs(default, fitted, qrels, [metric])
    use = alpha >= 1.0 or (c.delta > 0 and c.p_value < alpha)
    return {"use_fitted": bool(use), "fitted": c.mean_b, "default": c.mean_a, "delta": c.delta,
            "p_value": c.p_value, "queries": c.queries, "alpha": alpha}
