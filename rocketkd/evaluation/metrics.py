"""Retrieval metrics that agree with trec_eval, written in plain Python (no pytrec_eval at run time).

Types are the plain dicts pytrec_eval uses (see :mod:`rocketkd.types`)::

    Qrels = dict[str, dict[str, int]]    # query id -> passage id -> graded relevance (0 = judged not relevant)
    Run   = dict[str, dict[str, float]]  # query id -> passage id -> score (higher is better)

Metric names
------------
``MRR@k``   reciprocal rank of the first relevant passage among the top k, 0 if none (trec_eval
            ``recip_rank`` on the run cut at k; ``MRR@10`` is the MS MARCO metric).
``nDCG@k``  trec_eval ``ndcg_cut_k``: linear gains (gain = relevance grade; negative grades count as 0),
            discount ``1 / log2(rank + 1)``, ideal DCG built from *all* judged grades of the query (also those
            of passages the run never retrieved), cut at k. The gains do not depend on
            ``relevance_threshold``; like trec_eval, a grade-1 passage still earns gain 1 when the threshold is 2.
``R@k``     trec_eval ``recall_k``: relevant passages in the top k / all relevant passages of the query.
``P@k``     trec_eval ``P_k``: relevant passages in the top k / k (k, even when fewer were retrieved).
``MAP``     trec_eval ``map``: average precision over the whole ranking (no cut), divided by all relevant
            passages of the query, retrieved or not.

trec_eval's and ranx's spellings of these (``ndcg_cut_10``, ``recip_rank``, ``recall_100``, ``ndcg@10``, ...) are
accepted too, as are ``MRR``, ``nDCG`` and ``MAP`` without a cut-off and ``MAP@k`` (trec_eval ``map_cut_k``):
:func:`parse_metric` lists them. Results are keyed by the name as asked.

"Relevant" means grade >= ``relevance_threshold`` (default 1, trec_eval's ``-l 1``).

Ranking and tie-breaking
------------------------
A run holds scores, not ranks. :func:`rank_run` orders each query's passages by score descending and breaks
ties by passage id *descending* in code-point order, which is what trec_eval does (it sorts by score desc, then
``strcmp(docno)`` desc; Python's ``str`` order is the same as ``strcmp`` on UTF-8 bytes). So among tied passages
``"9"`` comes before ``"10"`` and ``"b"`` before ``"a"``. Every metric here uses that ranking, so numbers match
pytrec_eval even on tied scores. A NaN score has no place in a ranking and raises ``ValueError``.

Which queries are averaged
--------------------------
pytrec_eval evaluates only the queries present in *both* the run and the qrels, and it does score queries whose
judgements are all non-relevant (giving them 0 on every metric). rocketkd decides differently, on purpose:

* the mean is over every query **in the qrels with at least one relevant passage**;
* such a query absent from the run (or with an empty ranking) counts as 0 on every metric and is listed in
  :attr:`EvalResult.missing_from_run` -- a retriever that drops queries cannot score higher for it;
* a query in the qrels with no relevant passage is skipped (no metric is defined for it; averaging zeros would
  only dilute the mean) and listed in :attr:`EvalResult.skipped_no_relevant`;
* queries in the run but not in the qrels are ignored.

So the mean equals pytrec_eval's per-query mean when the run covers every query and every query has a relevant
passage; otherwise rocketkd's mean is the honest one described above.

Query id equal to passage id
----------------------------
A passage whose id equals the query id is an ordinary passage: a hit on it counts. (BEIR's evaluator drops such
hits by default, ``ignore_identical_ids=True``, which is right for duplicate-question datasets but silently
wrong elsewhere -- the Cranfield data has query ``"1"`` and a relevant passage ``"1"``.) rocketkd never drops them.
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_left
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rocketkd.errors import ConfigError
from rocketkd.io import atomic_write

if TYPE_CHECKING:  # rocketkd.types imports torch; keep this module light
    from rocketkd.types import Qrels, Run

__all__ = [
    "DEFAULT_METRICS",
    "EvalResult",
    "average_precision",
    "evaluate_query",
    "evaluate_run",
    "evaluate_run_file",
    "format_table",
    "ndcg_at_k",
    "parse_metric",
    "precision_at_k",
    "rank_run",
    "rank_scores",
    "recall_at_k",
    "reciprocal_rank_at_k",
    "to_json",
    "write_per_query",
]

DEFAULT_METRICS: tuple[str, ...] = (
    "MRR@10",
    "nDCG@10",
    "R@1",
    "R@5",
    "R@10",
    "R@20",
    "R@50",
    "R@100",
    "R@1000",
    "MAP",
)

# A metric name: a base, then optionally a cut-off after "@" (ours, ranx), "_cut_" / "_cut." (trec_eval's
# ndcg_cut_10, map_cut_10; pytrec_eval's ndcg_cut.10) or "_" / "." (trec_eval's recall_100, P_10; pytrec_eval's
# recall.100, P.10). Bases are matched case-insensitively.
_METRIC_NAME = re.compile(r"^([A-Za-z_]+?)(?:(?:@|_cut_|_cut\.|_|\.)(-?[0-9]+))?$")
_BASES = {
    "mrr": "MRR", "recip_rank": "MRR", "rr": "MRR",
    "ndcg": "nDCG",
    "r": "R", "recall": "R",
    "p": "P", "precision": "P",
    "map": "MAP", "ap": "MAP",
}
_NEEDS_CUT = {"R", "P"}  # recall and precision of a whole ranking are not trec_eval measures


def parse_metric(name: str) -> tuple[str, int | None]:
    """A metric name -> (kind, cut-off): ``"nDCG@10"`` -> ``("nDCG", 10)``, ``"MAP"`` -> ``("MAP", None)``.

    Accepted spellings (case-insensitive), each with the meaning trec_eval gives it:

    ========================  =======================================  ============================
    rocketkd                  trec_eval / pytrec_eval                  ranx
    ========================  =======================================  ============================
    ``MRR@k``, ``MRR``        ``recip_rank`` (no cut-off)              ``mrr@k``, ``mrr``
    ``nDCG@k``, ``nDCG``      ``ndcg_cut_k``, ``ndcg_cut.k``, ``ndcg``  ``ndcg@k``, ``ndcg``
    ``R@k``                   ``recall_k``, ``recall.k``               ``recall@k``
    ``P@k``                   ``P_k``, ``P.k``                         ``precision@k``
    ``MAP``, ``MAP@k``        ``map``, ``map_cut_k``, ``map_cut.k``    ``map``, ``map@k``
    ========================  =======================================  ============================

    No cut-off means the whole ranking. Anything else (and a cut-off below 1) raises ConfigError.
    """
    m = _METRIC_NAME.match(name.strip()) if isinstance(name, str) else None
    kind = _BASES.get(m.group(1).lower()) if m else None
    k = int(m.group(2)) if m and m.group(2) is not None else None
    if kind is None or (k is not None and k < 1) or (k is None and kind in _NEEDS_CUT):
        raise ConfigError(
            f"unknown metric {name!r}: expected one of MRR@k, nDCG@k, R@k, P@k, MAP (k >= 1; MRR, nDCG and MAP "
            "also without a cut-off), or trec_eval's / ranx's names for them (ndcg_cut_10, recip_rank, recall_100, "
            "P_10, map_cut_10, ndcg@10, mrr@10, recall@100, precision@10)"
        )
    return kind, k


# ---------------------------------------------------------------------------------------------------------------
# Ranking


def rank_scores(scores: Mapping[str, float], qid: str = "?") -> list[str]:
    """One query's passage ids, best first: score descending, ties by passage id descending (trec_eval's order)."""
    for pid, s in scores.items():
        if s != s:  # NaN
            raise ValueError(f"query {qid!r}: passage {pid!r} has a NaN score; a ranking is undefined")
    # Sorting (score, pid) pairs in reverse gives score desc, then pid desc -- exactly trec_eval's comparator.
    return [pid for pid, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def rank_run(run: Run) -> dict[str, list[str]]:
    """Ranking per query, sorted by score descending and, for tied scores, by passage id descending.

    The tie-break is trec_eval's (``strcmp`` on the docno, larger first), so a ranking from here matches the one
    pytrec_eval evaluates. Raises ValueError on a NaN score.
    """
    return {qid: rank_scores(scores, qid) for qid, scores in run.items()}


# ---------------------------------------------------------------------------------------------------------------
# Per-query metrics. Each takes one query's ranking (best first) and its judgements (passage id -> grade).


def _grades(ranking: Sequence[str], qrel: Mapping[str, int]) -> list[int]:
    get = qrel.get
    return [get(pid, 0) for pid in ranking]


def _num_relevant(qrel: Mapping[str, int], threshold: int) -> int:
    return sum(1 for g in qrel.values() if g >= threshold)


def _dcg(gains: Iterable[int]) -> float:
    return math.fsum(g / math.log2(i + 2) for i, g in enumerate(gains) if g > 0)


def reciprocal_rank_at_k(
    ranking: Sequence[str], qrel: Mapping[str, int], k: int, *, relevance_threshold: int = 1
) -> float:
    """1 / rank of the first relevant passage within the top k; 0 if there is none (MRR@k for one query)."""
    return evaluate_query(ranking, qrel, [f"MRR@{k}"], relevance_threshold=relevance_threshold)[f"MRR@{k}"]


def ndcg_at_k(ranking: Sequence[str], qrel: Mapping[str, int], k: int) -> float:
    """trec_eval ``ndcg_cut_k``: linear gains (negative grades as 0), ideal DCG from all judged grades."""
    return evaluate_query(ranking, qrel, [f"nDCG@{k}"])[f"nDCG@{k}"]


def recall_at_k(
    ranking: Sequence[str], qrel: Mapping[str, int], k: int, *, relevance_threshold: int = 1
) -> float:
    """Relevant passages in the top k / all relevant passages of the query (0 if the query has none)."""
    return evaluate_query(ranking, qrel, [f"R@{k}"], relevance_threshold=relevance_threshold)[f"R@{k}"]


def precision_at_k(
    ranking: Sequence[str], qrel: Mapping[str, int], k: int, *, relevance_threshold: int = 1
) -> float:
    """Relevant passages in the top k / k."""
    return evaluate_query(ranking, qrel, [f"P@{k}"], relevance_threshold=relevance_threshold)[f"P@{k}"]


def average_precision(
    ranking: Sequence[str], qrel: Mapping[str, int], *, relevance_threshold: int = 1
) -> float:
    """trec_eval ``map`` for one query: sum of precision at each relevant rank / all relevant passages."""
    return evaluate_query(ranking, qrel, ["MAP"], relevance_threshold=relevance_threshold)["MAP"]


def _evaluate_parsed(
    ranking: Sequence[str],
    qrel: Mapping[str, int],
    parsed: Sequence[tuple[str, str, int | None]],
    threshold: int,
) -> dict[str, float]:
    grades = _grades(ranking, qrel)
    rel_ranks = [i for i, g in enumerate(grades) if g >= threshold]  # 0-based ranks of relevant hits
    n_rel = _num_relevant(qrel, threshold)
    ideal_grades = sorted((g for g in qrel.values() if g > 0), reverse=True)
    out: dict[str, float] = {}
    for name, kind, k in parsed:
        cut = len(grades) if k is None else k  # no cut-off: the whole ranking
        hits = bisect_left(rel_ranks, cut)  # relevant passages in the top cut (rel_ranks is ascending)
        if kind == "MAP":  # trec_eval map / map_cut_k: precision at each relevant rank <= cut, over all relevant
            out[name] = sum((j + 1) / (r + 1) for j, r in enumerate(rel_ranks[:hits])) / n_rel if n_rel else 0.0
        elif kind == "MRR":
            out[name] = 1.0 / (rel_ranks[0] + 1) if hits else 0.0
        elif kind == "R":
            out[name] = hits / n_rel if n_rel else 0.0
        elif kind == "P":
            out[name] = hits / cut
        else:  # nDCG; ndcg without a cut-off: the ideal ranking of all judged grades, uncut
            ideal = _dcg(ideal_grades if k is None else ideal_grades[:k])
            out[name] = _dcg(grades[:cut]) / ideal if ideal > 0.0 else 0.0
    return out


def _parse_all(metrics: Iterable[str]) -> list[tuple[str, str, int | None]]:
    if isinstance(metrics, str):
        metrics = [metrics]
    seen: dict[str, tuple[str, str, int | None]] = {}
    for name in metrics:
        if name not in seen:
            kind, k = parse_metric(name)
            seen[name] = (name, kind, k)
    if not seen:
        raise ConfigError("no metrics requested")
    return list(seen.values())


def evaluate_query(
    ranking: Sequence[str],
    qrel: Mapping[str, int],
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    relevance_threshold: int = 1,
) -> dict[str, float]:
    """All requested metrics for one query's ranking (best first)."""
    return _evaluate_parsed(ranking, qrel, _parse_all(metrics), relevance_threshold)


# ---------------------------------------------------------------------------------------------------------------
# Whole runs


@dataclass
class EvalResult:
    """What :func:`evaluate_run` found.

    per_query:           metric values of every averaged query (qrels queries with >= 1 relevant passage;
                         those missing from the run hold 0 everywhere)
    mean:                the mean of each metric over ``per_query``, in the order the metrics were asked for
    num_queries:         how many queries were averaged (``len(per_query)``)
    skipped_no_relevant: qrels queries with no passage at or above the threshold, left out of the mean (sorted)
    missing_from_run:    averaged queries the run has no passage for, counted as 0 (sorted)
    """

    per_query: dict[str, dict[str, float]]
    mean: dict[str, float]
    num_queries: int
    skipped_no_relevant: list[str] = field(default_factory=list)
    missing_from_run: list[str] = field(default_factory=list)


def evaluate_run(
    run: Run,
    qrels: Qrels,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    relevance_threshold: int = 1,
) -> EvalResult:
    """Evaluate ``run`` against ``qrels`` with trec_eval's definitions and rocketkd's query averaging.

    See the module docstring for the metrics, the tie-break and which queries are averaged. Raises ConfigError
    for an unknown metric name, ValueError for a NaN score or when no query in ``qrels`` has a relevant passage
    (there would be nothing to average).
    """
    parsed = _parse_all(metrics)
    per_query: dict[str, dict[str, float]] = {}
    skipped: list[str] = []
    missing: list[str] = []
    for qid, qrel in qrels.items():
        if _num_relevant(qrel, relevance_threshold) == 0:
            skipped.append(qid)
            continue
        scores = run.get(qid)
        if not scores:
            missing.append(qid)
            per_query[qid] = {name: 0.0 for name, _, _ in parsed}
            continue
        per_query[qid] = _evaluate_parsed(rank_scores(scores, qid), qrel, parsed, relevance_threshold)
    if not per_query:
        raise ValueError(
            f"no query in the qrels has a passage with relevance >= {relevance_threshold} "
            f"({len(qrels)} queries judged); nothing to average"
        )
    n = len(per_query)
    mean = {name: math.fsum(v[name] for v in per_query.values()) / n for name, _, _ in parsed}
    return EvalResult(
        per_query=per_query,
        mean=mean,
        num_queries=n,
        skipped_no_relevant=sorted(skipped),
        missing_from_run=sorted(missing),
    )


def evaluate_run_file(
    run_path: str | Path,
    qrels_path: str | Path,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    relevance_threshold: int = 1,
) -> EvalResult:
    """Read a TREC run file and a qrels file (with :mod:`rocketkd.data.formats`) and evaluate them.

    Malformed files raise ``rocketkd.errors.DataFormatError`` from the readers.
    """
    # start-up time: data.formats pulls in torch and datasets (~3 s); the metrics themselves need neither
    from rocketkd.data.formats import read_qrels, read_trec_run

    run = read_trec_run(run_path)
    qrels = read_qrels(qrels_path)
    return evaluate_run(run, qrels, metrics, relevance_threshold=relevance_threshold)


# ---------------------------------------------------------------------------------------------------------------
# Output


def format_table(mean: Mapping[str, float], *, digits: int = 4) -> str:
    """A two-column plain-text table (header, rule, one metric a line in the mapping's order)::

    metric   value
    ------  ------
    MRR@10  0.3412
    MAP     0.3487
    """
    if not mean:
        return "(no metrics)"
    header = ("metric", "value")
    rows = [(name, f"{value:.{digits}f}") for name, value in mean.items()]
    w0 = max(len(header[0]), *(len(r[0]) for r in rows))
    w1 = max(len(header[1]), *(len(r[1]) for r in rows))
    lines = [f"{header[0]:<{w0}}  {header[1]:>{w1}}", f"{'-' * w0}  {'-' * w1}"]
    lines += [f"{name:<{w0}}  {value:>{w1}}" for name, value in rows]
    return "\n".join(lines)


def to_json(mean: Mapping[str, float]) -> str:
    """The metrics as a JSON object (full precision, the mapping's order), indented, without a trailing newline."""
    return json.dumps({name: float(value) for name, value in mean.items()}, indent=2, allow_nan=False)


def write_per_query(path: str | Path, result: EvalResult, *, digits: int = 6) -> Path:
    """Every averaged query's metrics to ``path``: JSON (``query -> metric -> value``, full precision) when it ends
    in ``.json``, else a TSV with a ``query_id`` column and one column per metric (``digits`` decimals). Queries in
    the qrels' order; those missing from the run hold their zeros. Written atomically."""
    path = Path(path)
    names = list(result.mean)
    with atomic_write(path) as f:
        if path.suffix.lower() == ".json":
            json.dump({q: {m: float(v[m]) for m in names} for q, v in result.per_query.items()}, f, indent=1,
                      allow_nan=False)
            f.write("\n")
        else:
            f.write("\t".join(["query_id", *names]) + "\n")
            for qid, values in result.per_query.items():
                f.write("\t".join([qid, *(f"{values[m]:.{digits}f}" for m in names)]) + "\n")
    return path
