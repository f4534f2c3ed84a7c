"""The model work of mining, shared out across processes: the first-stage retrieval (BM25, the base encoder or a
trained retriever over a FAISS index) and the re-ranker's logits of (query, passage) pairs.

With several processes (torchrun / ``accelerate launch``, a process group initialised; every process calls these)
each process retrieves or scores a contiguous share, and the main process gathers every result back by position;
the other processes get None. With one process nothing is split.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from rocketkd.config import Config
from rocketkd.distributed import gather_objects, gather_rows, is_main, scatter_objects, shard_rows, world
from rocketkd.models import resolve_model_path
from rocketkd.models.loading import load_retriever
from rocketkd.search.bm25 import BM25Retriever
from rocketkd.search.encode import encode_queries, resolve_autocast
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.search.rerank import score_pairs
from rocketkd.types import Run

# (query, passage) pairs scored per ``predict`` call: big enough to keep the re-ranker busy, small enough that
# the texts of one chunk fit comfortably in memory on MS MARCO.
PAIRS_PER_CHUNK = 8192

Search = Callable[[Mapping[str, str], int], "Run | None"]


def describe(model: Any) -> str:
    """A model's folder or name, for provenance."""
    if isinstance(model, (str, Path)):
        return str(model)
    for attr in ("name_or_path", "path"):
        value = getattr(model, attr, None)
        if isinstance(value, (str, Path)) and str(value):
            return str(value)
    inner = getattr(model, "model", None)
    value = getattr(getattr(inner, "config", None), "_name_or_path", None)
    return str(value) if value else type(model).__name__


def first_stage(cfg: Config, data: Any, retriever: Any, show_progress: bool) -> tuple[Search, str, str]:
    """(search(queries, k) -> Run, source, description) for BM25, the base encoder or a trained retriever.

    ``retriever``: a folder, a loaded ``DualEncoder``, or None for ``mining.first_round`` (``bm25``, or ``base``:
    ``model.retriever`` untrained). A dense retriever indexes the whole corpus first.
    """
    if retriever is None and cfg.mining.first_round == "bm25":
        bm25 = BM25Retriever.build(data.corpus, show_progress=show_progress)
        return sharded(bm25.search), "bm25", "bm25"

    model = retriever
    if retriever is None or isinstance(retriever, (str, Path)):
        path = resolve_model_path(retriever if retriever is not None else cfg.model.retriever)
        model = load_retriever(cfg, path)
        description = path
    else:
        description = describe(retriever)
    ix = cfg.index
    # several processes: each encodes its share of the corpus, the main process alone holds the index (None here)
    index = DenseIndex.build(
        model, data.corpus, factory=ix.factory, batch_size=ix.batch_size, autocast=ix.autocast,
        train_sample=ix.train_sample, show_progress=show_progress,
    )

    def search(queries: Mapping[str, str], k: int) -> Run | None:
        if world()[1] == 1:
            return search_run(index, queries, k, batch_size=ix.batch_size, autocast=ix.autocast)
        # the queries are encoded across the processes in one process's batches; the main process searches them
        qids = list(queries)
        emb = encode_queries(model, [queries[q] for q in qids], batch_size=ix.batch_size, autocast=ix.autocast)
        if index is None or emb is None:
            return None
        result = index.search(emb, k)
        return {
            qid: {pid: float(x) for pid, x in zip(pids, scores.tolist())}
            for qid, pids, scores in zip(qids, result.ids, result.scores)
        }

    return search, "dense", description


def sharded(search: Callable[[Mapping[str, str], int], Run]) -> Search:
    """``search(queries, k) -> Run`` run by every process on its share of the queries, merged on the main process.

    One process: ``search`` itself. Several: the main process gets the whole run (in query order), the others None.
    """

    def run_shares(queries: Mapping[str, str], k: int) -> Run | None:
        if world()[1] == 1:
            return search(queries, k)
        qids = list(queries)
        share = shard_rows(len(qids), *world())
        part = search({q: queries[q] for q in qids[share.start : share.stop]}, k)
        hits = gather_objects([part.get(q, {}) for q in qids[share.start : share.stop]], share, len(qids))
        return None if hits is None else dict(zip(qids, hits))

    return run_shares


def reranker_logits(
    reranker: Any,
    plan: Sequence[tuple[str, str]] | None,
    queries: Mapping[str, str],
    corpus: Any,
    *,
    batch_size: int,
    autocast: str,
    show_progress: bool,
) -> dict[str, dict[str, float]] | None:
    """Re-ranker logits of (query id, passage id) pairs: one batched ``predict`` per chunk of pairs.

    Several processes (every one calls it; only the main process's ``plan`` is read): the pairs are split into
    contiguous shares, each process scores its share, and the main process gets every logit back by pair position
    and returns the dict; the others return None.
    """
    several = world()[1] > 1
    full = list(dict.fromkeys(plan)) if plan is not None and is_main() else None
    plan, share, n_total = scatter_objects(full) if several else (full, range(len(full)), len(full))
    dtype = resolve_autocast(autocast, getattr(reranker, "device", "cpu"))
    logits_all = score_pairs(reranker, plan, queries, corpus, batch_size=batch_size, autocast_dtype=dtype,
                             desc="denoise", show_progress=show_progress, chunk=PAIRS_PER_CHUNK)
    if several:
        logits_all = gather_rows(logits_all, share, n_total)
        if logits_all is None:  # not the main process: its logits are with the main process now
            return None
        plan = full
    out: dict[str, dict[str, float]] = {}
    for (qid, pid), score in zip(plan, logits_all.tolist()):
        out.setdefault(qid, {})[pid] = score
    return out
