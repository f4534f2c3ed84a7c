"""Second stage: re-score a first-stage run's top passages -- with the cross-encoder (:func:`rerank_run`) or with
BM25 (:func:`bm25_run`, the hybrid system's lexical specialist). Fusing the stages' scores is
:mod:`rocketkd.search.fusion`'s.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from rocketkd.evaluation.metrics import rank_scores
from rocketkd.io import atomic_write
from rocketkd.search.bm25 import BM25Retriever
from rocketkd.search.encode import resolve_autocast
from rocketkd.search.fusion import candidates_from_run

if TYPE_CHECKING:
    from rocketkd.data.corpus import Corpus
    from rocketkd.models import CrossEncoderRanker
    from rocketkd.types import Run

__all__ = ["FUSION_FILE", "bm25_run", "load_fusion_weight", "rerank_run", "save_fusion_weight", "score_pairs"]

FUSION_FILE = "rocketkd_fusion.json"  # beside a re-ranker: the fusion weight fitted on dev for it


def save_fusion_weight(folder: str | Path, weight: float, **evidence) -> Path:
    """Record in a re-ranker folder the fusion weight fitted for it (``evidence``: where and how it was fitted),
    so ``rocketkd search --rerank FOLDER`` fuses as the pipeline measured, not with the re-ranker alone."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"a fusion weight lies in [0, 1], got {weight}")
    path = Path(folder) / FUSION_FILE
    with atomic_write(path) as f:
        json.dump({"fusion_weight": float(weight), **evidence}, f, indent=2, sort_keys=True)
    return path


def load_fusion_weight(folder: str | Path) -> float | None:
    """The fusion weight recorded in a re-ranker folder (:func:`save_fusion_weight`), or None."""
    path = Path(folder) / FUSION_FILE
    if not path.is_file():
        return None
    try:
        weight = float(json.loads(path.read_text())["fusion_weight"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a fusion record ({e})") from None
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{path}: fusion_weight {weight} outside [0, 1]")
    return weight

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


def bm25_run(
    run: Run, queries: Mapping[str, str], corpus: Corpus, *, depth: int, bm25: BM25Retriever | None = None
) -> Run:
    """BM25's score of each query's top ``depth`` passages of ``run`` (the lexical specialist of the hybrid
    fusion; a passage sharing no term with the query scores 0; queries with an empty ranking are left out).
    ``bm25``: a :class:`~rocketkd.search.bm25.BM25Retriever` of ``corpus`` to reuse; built when omitted."""
    retriever = bm25 if bm25 is not None else BM25Retriever.build(corpus)
    return retriever.score_candidates(candidates_from_run(run, depth), queries, corpus)
