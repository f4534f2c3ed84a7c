"""Evaluation of a retrieval system: retrieve the queries of a split, then score the run against its qrels.

Metric definitions and which queries are averaged are those of :mod:`rocketkd.evaluation.metrics` (trec_eval's numbers, every
judged query with a relevant passage averaged, missing queries counted as 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from rocketkd.distributed import local_device
from rocketkd.evaluation.metrics import DEFAULT_METRICS, EvalResult, evaluate_run
from rocketkd.search.index import DenseIndex, search_run

if TYPE_CHECKING:
    from rocketkd.data.formats import RetrievalData
    from rocketkd.models import DualEncoder
    from rocketkd.types import Qrels, Run

__all__ = ["evaluate_system", "retrieve"]


def retrieve(
    model_dir_or_model: DualEncoder | str | os.PathLike | None,
    data: RetrievalData,
    split: str,
    *,
    k: int = 100,
    index: DenseIndex | None = None,
    batch_size: int = 128,
    autocast: str = "auto",
    show_progress: bool = False,
) -> Run:
    """Top ``k`` passages of every query of ``split`` (those judged in ``data.qrels[split]``).

    Without ``index``, the corpus is encoded into an exact (Flat) index on the fly. With ``index``, queries are
    encoded by the given model, which must be the index's encoder (fingerprint check,
    :class:`~rocketkd.errors.IndexError_` otherwise); ``model_dir_or_model=None`` uses the encoder saved with the index.
    """
    queries = data.split_queries(split)
    model = model_dir_or_model
    if isinstance(model, (str, os.PathLike)):
        from rocketkd.models import DualEncoder

        model = DualEncoder.from_pretrained(model).to(local_device())
    if index is None:
        if model is None:
            raise ValueError("retrieve needs a model or an index")
        index = DenseIndex.build(
            model,
            data.corpus,
            factory="Flat",
            batch_size=batch_size,
            autocast=autocast,
            show_progress=show_progress,
        )
    elif model is not None:
        index.attach_encoder(model)
    return search_run(index, queries, k, batch_size=batch_size, autocast=autocast)


def evaluate_system(
    run: Run,
    qrels: Qrels,
    metrics: Iterable[str] = DEFAULT_METRICS,
    *,
    relevance_threshold: int = 1,
) -> EvalResult:
    """The metrics of ``run`` on ``qrels`` (:func:`rocketkd.evaluation.metrics.evaluate_run`)."""
    return evaluate_run(run, qrels, metrics, relevance_threshold=relevance_threshold)
