"""Scorers of candidate lists: the teachers' raw scores of each (query, candidate) pair.

``score(lists, queries, corpus) -> list[np.ndarray]``: raw scores, one array per list, in ``pids`` order;
``score_groups(groups, queries, corpus)`` does the same for plain ``(qid, pids)`` groups (held-out candidates)::

    BM25Scorer(corpus)         bm25s scores of every candidate (0 when it shares no term with the query)
    RetrieverScorer(model)     dual-encoder dot product / cosine (each distinct query and passage encoded once)
    RerankerScorer(model)      cross-encoder logits
    StoredScorer()             the lists' own ``teacher_scores``
    RandomScorer(seed)         seeded noise: the control a held-out check must reject

Scorers are given models, never paths or config: a model is made from config only by
:mod:`rocketkd.models.loading` (``load_retriever``, ``load_reranker(..., trainable=False)``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from rocketkd.search.bm25 import BM25Retriever
from rocketkd.search.cache import cache_folder
from rocketkd.search.encode import encode_corpus
from rocketkd.types import CandidateList

if TYPE_CHECKING:
    from rocketkd.data.corpus import Corpus
    from rocketkd.models import CrossEncoderRanker, DualEncoder
    from rocketkd.types import Queries

__all__ = [
    "BM25Scorer",
    "Group",
    "RandomScorer",
    "RerankerScorer",
    "RetrieverScorer",
    "Scorer",
    "StoredScorer",
    "scores_on_candidates",
]

_MAX_CACHED_BYTES = 2 << 30  # whole-corpus vectors a scorer holds in memory: 1.4M passages of 384 floats
_RERANK_CHUNK = 50_000  # (query, passage) pairs per CrossEncoderRanker.predict call

Group = tuple[str, Sequence[str]]  # (query id, candidate passage ids)


class Scorer:
    """Scores candidate lists: ``score(lists, queries, corpus) -> list[np.ndarray]`` of raw scores in ``pids`` order.

    Subclasses implement :meth:`score_groups` on plain ``(qid, pids)`` groups, so held-out candidates (which have no
    positive and may hold a single passage) can be scored without building ``CandidateList`` objects.
    """

    name: str = "scorer"

    def score(self, lists: Sequence[CandidateList], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        return self.score_groups([(cl.qid, cl.pids) for cl in lists], queries, corpus)

    def score_groups(self, groups: Sequence[Group], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def _query_text(queries: Queries, qid: str) -> str:
    try:
        return queries[qid]
    except KeyError:
        raise KeyError(f"query {qid!r} has candidates to score but no text in the queries given") from None


class BM25Scorer(Scorer):
    """BM25 score of every candidate, from the full score vector bm25s computes for the query.

    The index is :class:`rocketkd.search.bm25.BM25Retriever` (bm25s, Lucene BM25, its tokenizer and stopwords), built
    from ``corpus`` unless a built ``retriever`` is given. Each distinct query is scored once against the whole
    corpus (``get_scores``: one float per corpus row) and its candidates are read off by corpus row, so a candidate
    that shares no term with the query scores 0 instead of being missing, as it would be from a top-k search.
    """

    name = "bm25"

    def __init__(self, corpus: Corpus, *, retriever: BM25Retriever | None = None, name: str | None = None) -> None:
        if retriever is None:
            retriever = BM25Retriever.build(corpus)
        if len(retriever) != len(corpus):
            raise ValueError(f"the BM25 index holds {len(retriever)} passages, the corpus {len(corpus)}")
        self.retriever = retriever
        if name is not None:
            self.name = name

    def score_groups(self, groups: Sequence[Group], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        if len(corpus) != len(self.retriever):
            raise ValueError(
                f"the BM25 index holds {len(self.retriever)} passages, the corpus given {len(corpus)}: "
                "score with the corpus the index was built on"
            )
        ids = self.retriever.ids
        by_query: dict[str, list[int]] = {}
        for i, (qid, _) in enumerate(groups):
            by_query.setdefault(qid, []).append(i)
        out: list[np.ndarray] = [np.empty(0)] * len(groups)
        for qid, members in by_query.items():
            full = self.retriever.scores(_query_text(queries, qid))  # (N,) by corpus row
            for i in members:
                rows = [corpus.row_of(pid) for pid in groups[i][1]]
                for pid, row in zip(groups[i][1], rows):
                    if ids[row] != pid:
                        raise ValueError(f"the BM25 index row {row} is {ids[row]!r}, the corpus says {pid!r}")
                out[i] = full[rows].astype(np.float64)
        return out


class RetrieverScorer(Scorer):
    """A dual encoder's score of each candidate: ``q . p`` (the cosine when the model normalises its vectors).

    Each distinct query of the groups is encoded once, and each distinct passage once, unless
    ``passage_embeddings`` (``(N, H)`` by corpus row, e.g. the memory-mapped output of
    :func:`rocketkd.search.encode.encode_corpus` of the *same* model) is given, in which case passages are looked up.
    Memory: ``4 * H`` bytes per distinct passage. The model is used on its own device unless ``device`` is given
    (make it from config with :func:`rocketkd.models.loading.load_retriever`).
    """

    name = "retriever"

    def __init__(
        self,
        model: DualEncoder,
        batch_size: int = 64,
        autocast_dtype: torch.dtype | None = None,
        *,
        passage_embeddings: np.ndarray | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.passage_embeddings = passage_embeddings
        self.device = device
        if name is not None:
            self.name = name

    def _encode(self, texts: list[str], side: str) -> np.ndarray:
        return self.model.encode(
            texts, side=side, batch_size=self.batch_size, autocast_dtype=self.autocast_dtype, device=self.device
        )

    def _cached_corpus_vectors(self, corpus: Corpus) -> np.ndarray | None:
        """Inside a run with an embedding cache (the pipeline's), a frozen model's whole-corpus vectors at this
        scorer's precision: encoded once, then every scorer of the same model and corpus looks its passages up
        instead of encoding them again (the prior's members score the same corpus in several stages). None
        elsewhere, for a model being trained, on a GPU placement of its own, or above ``_MAX_CACHED_BYTES``."""
        if cache_folder(None) is None or self.device is not None or self.model.frozen_source() is None:
            return None
        if len(corpus) * int(self.model.hidden_size) * 4 > _MAX_CACHED_BYTES:
            return None
        name = {None: "no", torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.autocast_dtype)
        if name is None:
            return None
        emb = encode_corpus(self.model, corpus, batch_size=self.batch_size, autocast=name, show_progress=False,
                            distributed=False)  # this process alone: the scorer may run on the main process only
        self._corpus = corpus
        return emb

    def score_groups(self, groups: Sequence[Group], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        if self.passage_embeddings is not None and getattr(self, "_corpus", corpus) is not corpus:
            self.passage_embeddings = None  # vectors of another corpus, looked up by cache
        qids = list(dict.fromkeys(qid for qid, _ in groups))
        q_emb = self._encode([_query_text(queries, q) for q in qids], "query")  # (Q, H)
        q_row = {q: i for i, q in enumerate(qids)}
        rows = list(dict.fromkeys(corpus.row_of(pid) for _, pids in groups for pid in pids))
        if self.passage_embeddings is None:
            self.passage_embeddings = self._cached_corpus_vectors(corpus)
        if self.passage_embeddings is not None:
            if len(self.passage_embeddings) != len(corpus):
                raise ValueError(
                    f"passage_embeddings has {len(self.passage_embeddings)} rows, the corpus {len(corpus)}"
                )
            p_emb = np.asarray(self.passage_embeddings[np.asarray(rows, dtype=np.int64)], dtype=np.float32)
        else:
            p_emb = self._encode(corpus.texts(rows), "passage")  # (P, H)
        p_row = {r: i for i, r in enumerate(rows)}
        out = []
        for qid, pids in groups:
            idx = [p_row[corpus.row_of(pid)] for pid in pids]
            out.append((p_emb[idx] @ q_emb[q_row[qid]]).astype(np.float64))  # (G, H) @ (H,) -> (G,)
        return out


class RerankerScorer(Scorer):
    """A cross-encoder's raw logit for each (query, candidate) pair (``CrossEncoderRanker.predict``).

    Pairs go to ``predict`` in chunks of whole lists (about 50k pairs each), so the texts in memory stay bounded.
    The model is used on its own device unless ``device`` is given (make a frozen one from config with
    ``rocketkd.models.loading.load_reranker(cfg, path, trainable=False)``).
    """

    name = "reranker"

    def __init__(
        self,
        model: CrossEncoderRanker,
        batch_size: int = 64,
        *,
        autocast_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        self.model = model
        self.batch_size = batch_size
        self.autocast_dtype = autocast_dtype
        self.device = device
        if name is not None:
            self.name = name

    def score_groups(self, groups: Sequence[Group], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        start = 0
        while start < len(groups):  # chunks of whole groups, about _RERANK_CHUNK pairs each: bounded text memory
            stop, pairs_in_chunk = start, 0
            while stop < len(groups) and (pairs_in_chunk == 0 or pairs_in_chunk + len(groups[stop][1]) <= _RERANK_CHUNK):
                pairs_in_chunk += len(groups[stop][1])
                stop += 1
            chunk = groups[start:stop]
            passages = corpus.texts([corpus.row_of(pid) for _, pids in chunk for pid in pids])
            queries_flat = [_query_text(queries, qid) for qid, pids in chunk for _ in pids]
            logits = self.model.predict(
                list(zip(queries_flat, passages)),
                batch_size=self.batch_size,
                autocast_dtype=self.autocast_dtype,
                device=self.device,
            )
            offset = 0
            for _, pids in chunk:
                out.append(np.asarray(logits[offset : offset + len(pids)], dtype=np.float64))
                offset += len(pids)
            start = stop
        return out


class StoredScorer(Scorer):
    """The lists' own ``teacher_scores`` (e.g. an earlier round's ensemble, or scores shipped with the data).

    Only candidate lists carry stored scores, so :meth:`score_groups` (plain groups) is not available.
    """

    name = "stored"

    def __init__(self, *, name: str | None = None) -> None:
        if name is not None:
            self.name = name

    def score(self, lists: Sequence[CandidateList], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        out = []
        for cl in lists:
            if cl.teacher_scores is None:
                raise ValueError(f"candidate list of query {cl.qid!r} has no stored teacher_scores")
            out.append(np.asarray(cl.teacher_scores, dtype=np.float64))
        return out

    def score_groups(self, groups: Sequence[Group], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        raise TypeError("StoredScorer reads CandidateList.teacher_scores; plain (qid, pids) groups carry none")


class RandomScorer(Scorer):
    """Seeded Gaussian noise per (query, passage): a deliberately useless teacher.

    It exists as a control: the held-out check must give it weight 0, and a retriever "distilled" from it must not
    end below its start. The score of a pair depends only on the seed and the two ids (not on the list it sits in),
    so the same pair scores alike in training lists and held-out candidates.
    """

    name = "random"

    def __init__(self, seed: int = 0, *, name: str | None = None) -> None:
        self.seed = int(seed)
        if name is not None:
            self.name = name

    def score_groups(self, groups: Sequence[Group], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        def one(qid: str, pid: str) -> float:
            key = zlib.crc32(f"{self.seed}\x1f{qid}\x1f{pid}".encode())
            return float(np.random.default_rng(key).standard_normal())

        return [np.asarray([one(qid, p) for p in pids], dtype=np.float64) for qid, pids in groups]


def scores_on_candidates(
    scorer: Scorer, candidates: Mapping[str, Sequence[str]], queries: Queries, corpus: Corpus
) -> dict[str, dict[str, float]]:
    """``scorer``'s raw score of every (query, candidate) pair: qid -> {pid: score}. Queries with no candidates
    are left out. Scored as plain groups (no ``CandidateList``: held-out candidates have no positive first)."""
    groups = [(qid, list(pids)) for qid, pids in candidates.items() if len(pids) > 0]
    scored = scorer.score_groups(groups, queries, corpus)
    return {qid: {pid: float(s) for pid, s in zip(pids, arr)} for (qid, pids), arr in zip(groups, scored)}
