"""Second stage: re-score a first-stage run with the cross-encoder, and fuse the two stages' scores.

Fusion
------
:func:`fuse_runs` interpolates the two stages per query. Their scores live on unrelated scales (inner products,
BM25, cross-encoder logits), so each run's scores are first z-normalised per query over the passages *both* runs
scored::

    z(s) = (s - mean) / std        (population std over the shared passages; all scores 0 when std is 0)
    fused = weight * z(second) + (1 - weight) * z(first)

``weight = 0`` ranks by the first stage alone, ``weight = 1`` by the second alone (z-scoring is monotone, so the
orders are exactly those of the input runs, ties included). Passages only one run scored are dropped (after
:func:`rerank_run` that is the first stage below the re-ranking depth). A query with no shared passage keeps the
run that has passages for it (z-normalised): the second when ``weight >= 0.5``, else the first if it has any.

:func:`choose_fusion_weight` picks ``weight`` on held-out judgements (dev queries, never the test queries).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from rocketkd.evaluation.metrics import evaluate_run, parse_metric, rank_scores
from rocketkd.search.encode import resolve_autocast

if TYPE_CHECKING:
    from rocketkd.data.formats import Corpus
    from rocketkd.models import CrossEncoderRanker
    from rocketkd.types import Qrels, Run

__all__ = ["DEFAULT_FUSION_GRID", "choose_fusion_weight", "choose_fusion_weights", "bm25_run", "fuse_many", "fuse_runs", "rerank_run"]

DEFAULT_FUSION_GRID: tuple[float, ...] = tuple(round(i / 10, 1) for i in range(11))
_PAIRS_PER_CALL = 8_192  # (query, passage) pairs handed to the cross-encoder at once (bounded text memory)


def _reranker_device(reranker) -> object:
    device = getattr(reranker, "device", None)
    if device is not None:
        return device
    try:
        return next(reranker.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return "cpu"


def rerank_run(
    reranker: CrossEncoderRanker,
    run: Run,
    queries: Mapping[str, str],
    corpus: Corpus,
    *,
    depth: int = 100,
    batch_size: int = 64,
    autocast: str = "auto",
    show_progress: bool = True,
) -> Run:
    """Re-score each query's top ``depth`` passages of ``run`` with the cross-encoder's raw logits.

    The top ``depth`` is taken in the metrics' order (score descending, ties by passage id descending, as
    trec_eval ranks); passages below it are dropped from the result. Queries with an empty ranking stay empty.
    Raises KeyError naming a query id that ``queries`` lacks or a passage id the corpus lacks.
    """
    if depth < 1:
        raise ValueError(f"depth must be >= 1, got {depth}")
    plan: list[tuple[str, str]] = []  # (qid, pid) in run order
    for qid, scores in run.items():
        if qid not in queries:
            raise KeyError(f"rerank_run: query {qid!r} of the run has no text in the queries given")
        plan.extend((qid, pid) for pid in rank_scores(scores, qid)[:depth])
    dtype = resolve_autocast(autocast, _reranker_device(reranker))

    out: Run = {qid: {} for qid in run}
    logits = score_pairs(reranker, plan, queries, corpus, batch_size=batch_size, autocast_dtype=dtype,
                         desc="re-rank", show_progress=show_progress)
    for (qid, pid), score in zip(plan, logits.tolist()):
        out[qid][pid] = float(score)
    return out


def score_pairs(
    reranker,
    plan: list[tuple[str, str]],
    queries: dict[str, str],
    corpus,
    *,
    batch_size: int = 64,
    autocast_dtype=None,
    desc: str = "re-rank",
    show_progress: bool = True,
    chunk: int = _PAIRS_PER_CALL,
) -> np.ndarray:
    """Cross-encoder logits of (qid, pid) pairs, in plan order: texts fetched one Arrow take per chunk of pairs."""
    from tqdm.auto import tqdm

    logits_all = np.empty(len(plan), dtype=np.float64)
    with tqdm(total=len(plan), desc=desc, unit="pair", disable=not show_progress) as bar:
        for start in range(0, len(plan), chunk):
            part = plan[start : start + chunk]
            texts = corpus.texts([corpus.row_of(pid) for _, pid in part])
            pairs = [(queries[qid], text) for (qid, _), text in zip(part, texts)]
            logits = np.asarray(
                reranker.predict(pairs, batch_size=batch_size, show_progress=False, autocast_dtype=autocast_dtype),
                dtype=np.float64,
            ).reshape(-1)
            if len(logits) != len(pairs):
                raise RuntimeError(f"the re-ranker returned {len(logits)} scores for {len(pairs)} pairs")
            if not np.all(np.isfinite(logits)):
                raise RuntimeError(f"the re-ranker returned non-finite scores ({desc})")
            logits_all[start : start + len(part)] = logits
            bar.update(len(part))
    return logits_all


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
    from rocketkd.teachers.core import weight_grid

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


def bm25_run(run: Run, queries: Mapping[str, str], corpus: Corpus, *, depth: int, bm25=None) -> Run:
    """BM25's score of each query's top ``depth`` passages of ``run`` (the lexical specialist of the hybrid
    fusion). ``bm25``: a :class:`rocketkd.teachers.BM25Scorer` to reuse; built from ``corpus`` when omitted."""
    from rocketkd.teachers import BM25Scorer, candidates_from_run, scores_on_candidates

    scorer = bm25 if bm25 is not None else BM25Scorer(corpus)
    return scores_on_candidates(scorer, candidates_from_run(run, depth), queries, corpus)
