"""BM25 first-stage retrieval over a :class:`~rocketkd.data.corpus.Corpus`, with the ``bm25s`` library.

Text analysis is bm25s's own tokenizer: lower-cased, words of two or more word characters (``\\b\\w\\w+\\b``),
English stopwords removed, no stemming (nothing downloads). Scoring is bm25s's default (Lucene's BM25,
k1=1.5, b=0.75).

The BM25 matrix has one column per corpus row, in corpus row order; :attr:`BM25Retriever.ids` is that row -> passage
id map, kept explicitly. Passages with empty text get no terms (they never match). A run holds only passages that
share at least one term with the query (score > 0), so a query may get fewer than k passages, and a query with no
indexed term gets an empty ranking (kept in the run as ``{}``) -- filling the list with arbitrary zero-score
passages would only add ties.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import bm25s
import numpy as np
from bm25s.tokenization import Tokenizer

if TYPE_CHECKING:
    from rocketkd.data.corpus import Corpus
    from rocketkd.types import Run

__all__ = ["BM25Retriever"]

_TOKENIZE_BLOCK = 10_000  # passages fetched from the corpus per tokenizer call


class BM25Retriever:
    """``BM25Retriever.build(corpus).search(queries, k)`` -> a run (query id -> {passage id: BM25 score})."""

    def __init__(self, *, k1: float = 1.5, b: float = 0.75, stopwords: str | list[str] | None = "en") -> None:
        self.k1 = k1
        self.b = b
        self.stopwords = stopwords
        self._retriever = None
        self._tokenizer = None
        self.ids: list[str] = []

    @classmethod
    def build(
        cls,
        corpus: Corpus,
        *,
        k1: float = 1.5,
        b: float = 0.75,
        stopwords: str | list[str] | None = "en",
        show_progress: bool = False,
    ) -> BM25Retriever:
        """Tokenise every passage (in blocks) and build the BM25 matrix; returns the ready retriever."""
        out = cls(k1=k1, b=b, stopwords=stopwords)
        out.index(corpus, show_progress=show_progress)
        return out

    def index(self, corpus: Corpus, *, show_progress: bool = False) -> None:
        tokenizer = Tokenizer(stopwords=self.stopwords if self.stopwords else None)
        token_ids: list[list[int]] = []
        for _, texts in corpus.iter_batches(_TOKENIZE_BLOCK):
            # allow_empty=False: an empty (or all-stopword) passage gets no terms rather than a shared "" term
            token_ids.extend(
                tokenizer.tokenize(
                    texts, update_vocab=True, return_as="ids", show_progress=False, allow_empty=False
                )
            )
        retriever = bm25s.BM25(k1=self.k1, b=self.b)
        vocab = tokenizer.get_vocab_dict()  # word -> token id
        if not vocab:
            vocab = {"": 0}  # a corpus without a single term: bm25s still needs a vocabulary
        retriever.index((token_ids, vocab), show_progress=show_progress)
        self._retriever = retriever
        self._tokenizer = tokenizer
        self.ids = list(corpus.ids)
        if len(self.ids) != len(token_ids):
            raise RuntimeError(f"BM25: tokenised {len(token_ids)} passages for a corpus of {len(self.ids)}")

    def __len__(self) -> int:
        return len(self.ids)

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every corpus row for one query text, float32 ``(N,)`` in row order."""
        if self._retriever is None:
            raise RuntimeError("BM25Retriever is not built: call BM25Retriever.build(corpus)")
        (tokens,) = self._tokenizer.tokenize(
            [query], update_vocab="never", return_as="ids", show_progress=False, allow_empty=False
        )
        if not tokens:
            return np.zeros(len(self.ids), dtype=np.float32)
        return np.asarray(self._retriever.get_scores_from_ids(tokens), dtype=np.float32)

    def score_candidates(
        self, candidates: Mapping[str, Sequence[str]], queries: Mapping[str, str], corpus: Corpus
    ) -> dict[str, dict[str, float]]:
        """BM25 score of given passages: qid -> {pid: score} for each query's ``candidates`` (queries with none are
        left out). Read off each query's full score vector (:meth:`scores`) by corpus row, so a passage that shares
        no term with the query scores 0 rather than being missing. ``corpus`` must be the one the index was built
        on (same rows); KeyError names a query without text."""
        if len(corpus) != len(self.ids):
            raise ValueError(
                f"the BM25 index holds {len(self.ids)} passages, the corpus given {len(corpus)}: "
                "score with the corpus the index was built on"
            )
        out: dict[str, dict[str, float]] = {}
        for qid, pids in candidates.items():
            if len(pids) == 0:
                continue
            try:
                text = queries[qid]
            except KeyError:
                raise KeyError(f"query {qid!r} has candidates to score but no text in the queries given") from None
            full = self.scores(text)  # (N,) by corpus row
            rows = [corpus.row_of(pid) for pid in pids]
            for pid, row in zip(pids, rows):
                if self.ids[row] != pid:
                    raise ValueError(f"the BM25 index row {row} is {self.ids[row]!r}, the corpus says {pid!r}")
            out[qid] = {pid: float(s) for pid, s in zip(pids, full[rows].astype(np.float64))}
        return out

    def search(self, queries: Mapping[str, str], k: int) -> Run:
        """Top ``k`` passages (score > 0) per query; ties are broken by corpus row (earlier first)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        ids = self.ids
        run: Run = {}
        for qid, text in queries.items():
            scores = self.scores(text)
            matched = np.flatnonzero(scores > 0)
            if len(matched) > k:
                # the k-th largest score, then every row at or above it (keeps ties at the cut deterministic)
                kth = np.partition(scores[matched], len(matched) - k)[len(matched) - k]
                matched = matched[scores[matched] >= kth]
            order = matched[np.lexsort((matched, -scores[matched]))][:k]  # score desc, row asc
            run[qid] = {ids[r]: float(scores[r]) for r in order.tolist()}
        return run
