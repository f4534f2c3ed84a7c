"""Teachers of the retriever: scorers of a candidate list, their ensemble, and a held-out check before they teach.

Why this module exists (project issue 11). On small data a cross-encoder whose head is new can re-rank *worse* than
the retriever it is meant to teach (cranfield: 0.06 nDCG@10 against the bi-encoder's 0.41), and a retriever distilled
from it only gets worse. Better teachers can be assembled from what is at hand -- a per-query fusion of the zero-shot
bi-encoder and BM25 reaches 0.437 there. So rocketkd (1) scores candidate lists with several *scorers*, (2) turns
them into one target distribution per list, an *ensemble* of soft targets as in Hinton, Vinyals & Dean 2015,
"Distilling the Knowledge in a Neural Network" (arXiv:1503.02531, sec. 1 and 5: the soft targets of an ensemble,
optionally with the generalist model itself as a member), and (3) *measures* every member and the ensemble on
held-out queries, on the student's own candidates, before any of them teaches: a member that does not beat the
student gets weight 0, and when nothing beats it the caller distils nothing (labels only).

Scorers (``score(lists, queries, corpus) -> list[np.ndarray]``: raw scores, one array per list, in ``pids`` order)::

    BM25Scorer(corpus)              bm25s scores of every candidate (0 when it shares no term with the query)
    RetrieverScorer(model_or_path)  dual-encoder dot product / cosine (each distinct query and passage encoded once)
    RerankerScorer(model_or_path)   cross-encoder logits
    StoredScorer()                  the lists' own ``teacher_scores``
    RandomScorer(seed)              seeded noise: the control a held-out check must reject

Normalisation, and why. Raw scores of different members live on different scales: BM25 scores are unbounded
sums of idf-weighted term weights (often 5-40 and query-length dependent), cosines lie in [-1, 1] and bunch up
within a few hundredths, cross-encoder logits spread over +-10. A softmax of the raw scores would make BM25 an
almost one-hot teacher and the cosine an almost uniform one, so the same temperature would mean different things
per member. Each member's scores are therefore z-scored *per list* (``(s - mean) / std`` over that query's
candidates) before the softmax: the temperature is then in units of that list's standard deviation for every
member, and an arithmetic mixture weighs members by the weights given, not by their accidental scale.

The ensemble's output, per list, is log-probabilities (:func:`ensemble_logprobs`). They are what
``CandidateList.teacher_scores`` holds; :func:`rocketkd.training.objective.mix_teachers` applies ``log_softmax`` to them
again, which leaves log-probabilities unchanged, and mixes in the online re-ranker.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from rocketkd.distributed import local_device
from rocketkd.evaluation.metrics import evaluate_run, rank_scores
from rocketkd.types import CandidateList

if TYPE_CHECKING:
    import torch

    from rocketkd.data.formats import Corpus
    from rocketkd.models import CrossEncoderRanker, DualEncoder
    from rocketkd.search.bm25 import BM25Retriever
    from rocketkd.types import Qrels, Queries, Run

__all__ = [
    "ENSEMBLE",
    "MAX_MEMBERS",
    "NORMALIZATIONS",
    "BM25Scorer",
    "EnsembleChoice",
    "RerankerScorer",
    "RetrieverScorer",
    "Scorer",
    "StoredScorer",
    "TeacherReport",
    "apply_ensemble",
    "RandomScorer",
    "attach_teacher_scores",
    "candidates_from_run",
    "check_ensemble",
    "check_teachers",
    "ensemble_logprobs",
    "normalize",
    "rerank_ndcg",
    "scores_on_candidates",
]

logger = logging.getLogger(__name__)

NORMALIZATIONS = ("zscore", "minmax", "none")
COMBINATIONS = ("arithmetic", "geometric")
ENSEMBLE = "ensemble"  # the name of the ensemble's own row in EnsembleChoice.reports
MAX_MEMBERS = 4  # the weight grid has C(1/step + M - 1, M - 1) points: 286 for M = 4 at step 0.1
_TIE = 1e-12  # nDCG values closer than this are ties
_RERANK_CHUNK = 50_000  # (query, passage) pairs per CrossEncoderRanker.predict call

Group = tuple[str, Sequence[str]]  # (query id, candidate passage ids)


# ----------------------------------------------------------------------------------------------------------------
# Normalisation and the ensemble


def normalize(scores: np.ndarray | Sequence[float], how: str = "zscore") -> np.ndarray:
    """One list's scores put on a common scale, float64 ``(G,)``.

    ``"zscore"``: ``(s - mean) / std`` (population std) -- the default, see the module docstring for why;
    ``"minmax"``: ``(s - min) / (max - min)`` in [0, 1]; ``"none"``: the scores as they are.
    A constant list (no spread, including a single candidate) becomes all zeros under ``"zscore"`` and ``"minmax"``:
    it carries no preference, and zeros give a uniform softmax. Non-finite scores raise ``ValueError``.
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {how!r}; expected one of {', '.join(NORMALIZATIONS)}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"expected one list's scores (1-D), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (got NaN or inf)")
    if how == "none" or s.size == 0:
        return s.copy()
    if how == "zscore":
        std = float(s.std())
        if std <= 1e-12 * max(1.0, float(np.abs(s).max())):
            return np.zeros_like(s)
        return (s - s.mean()) / std
    spread = float(s.max() - s.min())
    if spread <= 1e-12 * max(1.0, float(np.abs(s).max())):
        return np.zeros_like(s)
    return (s - s.min()) / spread


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - math.log(float(np.exp(shifted).sum()))


def _logsumexp(x: np.ndarray, axis: int = 0) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis=axis) + np.log(np.exp(x - top).sum(axis=axis))


def _check_weights(weights: Sequence[float], count: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (count,):
        raise ValueError(f"expected {count} weights (one per member), got {len(weights)}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"ensemble weights must be finite and >= 0, got {list(map(float, w))}")
    if w.sum() <= 0:
        raise ValueError("ensemble weights are all zero: there is no teacher to distil from")
    return w / w.sum()


def _per_member(value: str | Sequence[str], count: int, what: str) -> list[str]:
    if isinstance(value, str):
        return [value] * count
    value = list(value)
    if len(value) != count:
        raise ValueError(f"expected one {what} per member ({count}), got {len(value)}")
    return value


def ensemble_logprobs(
    members: Sequence[Sequence[np.ndarray | Sequence[float]]],
    weights: Sequence[float],
    *,
    temperatures: Sequence[float] | None = None,
    combine: str = "arithmetic",
    normalize_how: str | Sequence[str] = "zscore",
) -> list[np.ndarray]:
    """One target distribution per list from M members' raw scores; returns log-probabilities (float64 per list).

    ``members[m][i]`` is member m's raw scores of list i (all members score the same lists, in the same order).
    Per list, each member's scores are normalised (``normalize_how``, one name or one per member; z-scores by
    default, see the module docstring) and turned into a distribution at the member's temperature::

        p_m = softmax(normalize(s_m) / T_m)

    ``combine="arithmetic"``: ``log sum_m w_m p_m`` -- the mean of the members' distributions, Hinton et al. 2015's
    ensemble of soft targets (a mixture: a candidate any member ranks high keeps mass).
    ``combine="geometric"``: ``log_softmax(sum_m w_m log p_m)`` -- the renormalised weighted geometric mean (a
    product of experts: a candidate needs every member's support).

    ``weights`` must be >= 0 and not all zero; they are renormalised to sum to 1 (so ``[2, 2]`` means
    ``[0.5, 0.5]``). A member of weight 0 is not computed at all. ``temperatures`` default to 1 for every member.
    An ensemble of one member is that member's ``log_softmax(normalize(s) / T)`` under both combinations.
    """
    if combine not in COMBINATIONS:
        raise ValueError(f"unknown combination {combine!r}; expected one of {', '.join(COMBINATIONS)}")
    if not members:
        raise ValueError("an ensemble needs at least one member")
    count = len(members)
    w = _check_weights(weights, count)
    temps = [1.0] * count if temperatures is None else [float(t) for t in temperatures]
    if len(temps) != count:
        raise ValueError(f"expected one temperature per member ({count}), got {len(temps)}")
    for t in temps:
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperatures must be finite and > 0, got {t!r}")
    hows = _per_member(normalize_how, count, "normalisation")
    num_lists = len(members[0])
    for m, member in enumerate(members):
        if len(member) != num_lists:
            raise ValueError(f"member {m} scores {len(member)} lists, member 0 scores {num_lists}")
    active = [m for m in range(count) if w[m] > 0]
    out: list[np.ndarray] = []
    for i in range(num_lists):
        sizes = {len(members[m][i]) for m in range(count)}
        if len(sizes) != 1:
            raise ValueError(f"list {i}: the members score different numbers of candidates {sorted(sizes)}")
        logp = np.stack([_log_softmax(normalize(members[m][i], hows[m]) / temps[m]) for m in active])  # (M', G)
        out.append(_combine(logp, w[active], combine))
    return out


def _combine(logp: np.ndarray, w: np.ndarray, combine: str) -> np.ndarray:
    """(M, G) member log-probabilities and (M,) weights summing to 1 -> (G,) ensemble log-probabilities."""
    if combine == "arithmetic":
        return _logsumexp(logp + np.log(w)[:, None], axis=0)
    return _log_softmax((w[:, None] * logp).sum(axis=0))


# ----------------------------------------------------------------------------------------------------------------
# Scorers


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
            from rocketkd.search.bm25 import BM25Retriever

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


def _load_retriever(model_or_path: Any, device: Any) -> DualEncoder:
    """A model object is used where it is (unless ``device`` says otherwise); a path is loaded onto ``device``,
    by default the GPU when there is one."""
    if isinstance(model_or_path, (str, os.PathLike)) or model_or_path is None:
        from rocketkd.models import DualEncoder

        return DualEncoder.from_pretrained(model_or_path).to(device or local_device())
    return model_or_path


def _load_reranker(model_or_path: Any, device: Any) -> CrossEncoderRanker:
    if isinstance(model_or_path, (str, os.PathLike)) or model_or_path is None:
        from rocketkd.models import CrossEncoderRanker

        return CrossEncoderRanker.from_pretrained(model_or_path).to(device or local_device())
    return model_or_path


class RetrieverScorer(Scorer):
    """A dual encoder's score of each candidate: ``q . p`` (the cosine when the model normalises its vectors).

    Each distinct query of the groups is encoded once, and each distinct passage once, unless
    ``passage_embeddings`` (``(N, H)`` by corpus row, e.g. the memory-mapped output of
    :func:`rocketkd.search.encode.encode_corpus` of the *same* model) is given, in which case passages are looked up.
    Memory: ``4 * H`` bytes per distinct passage. A model given by path is loaded onto ``device`` (default: the GPU
    when there is one); a model object is used on its own device unless ``device`` is given.
    """

    name = "retriever"

    def __init__(
        self,
        model_or_path: DualEncoder | str | os.PathLike[str] | None,
        batch_size: int = 64,
        autocast_dtype: torch.dtype | None = None,
        *,
        passage_embeddings: np.ndarray | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        self.model = _load_retriever(model_or_path, device)
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

    def score_groups(self, groups: Sequence[Group], queries: Queries, corpus: Corpus) -> list[np.ndarray]:
        qids = list(dict.fromkeys(qid for qid, _ in groups))
        q_emb = self._encode([_query_text(queries, q) for q in qids], "query")  # (Q, H)
        q_row = {q: i for i, q in enumerate(qids)}
        rows = list(dict.fromkeys(corpus.row_of(pid) for _, pids in groups for pid in pids))
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
    Devices as for :class:`RetrieverScorer`.
    """

    name = "reranker"

    def __init__(
        self,
        model_or_path: CrossEncoderRanker | str | os.PathLike[str] | None,
        batch_size: int = 64,
        *,
        autocast_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        name: str | None = None,
    ) -> None:
        self.model = _load_reranker(model_or_path, device)
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
        import zlib

        def one(qid: str, pid: str) -> float:
            key = zlib.crc32(f"{self.seed}\x1f{qid}\x1f{pid}".encode())
            return float(np.random.default_rng(key).standard_normal())

        return [np.asarray([one(qid, p) for p in pids], dtype=np.float64) for qid, pids in groups]


# ----------------------------------------------------------------------------------------------------------------
# Held-out candidates


def candidates_from_run(run: Run, k: int) -> dict[str, list[str]]:
    """Each query's top ``k`` passages of ``run``, best first (trec_eval's order: score desc, ties by id desc)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return {qid: rank_scores(scores, qid)[:k] for qid, scores in run.items()}


def scores_on_candidates(
    scorer: Scorer, candidates: Mapping[str, Sequence[str]], queries: Queries, corpus: Corpus
) -> dict[str, dict[str, float]]:
    """``scorer``'s raw score of every (query, candidate) pair: qid -> {pid: score}. Queries with no candidates
    are left out. Scored as plain groups (no ``CandidateList``: held-out candidates have no positive first)."""
    groups = [(qid, list(pids)) for qid, pids in candidates.items() if len(pids) > 0]
    scored = scorer.score_groups(groups, queries, corpus)
    return {qid: {pid: float(s) for pid, s in zip(pids, arr)} for (qid, pids), arr in zip(groups, scored)}


def rerank_ndcg(scores_per_query: Mapping[str, Mapping[str, float]], qrels: Qrels, k: int = 10) -> float:
    """nDCG@k of the ranking the scores give each query's candidates (:func:`rocketkd.evaluation.metrics.evaluate_run`).

    evaluate_run's rules apply: the mean is over the qrels queries with a relevant passage, a query without scores
    counts 0, ties are broken by passage id descending. Pass the qrels of the queries that were scored.
    """
    run = {qid: dict(scores) for qid, scores in scores_per_query.items()}
    return evaluate_run(run, qrels, [f"nDCG@{k}"]).mean[f"nDCG@{k}"]


# ----------------------------------------------------------------------------------------------------------------
# The held-out check


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
    logp = [[_log_softmax(normalize(a, hows[m]) / temps[m]) for a in raw[m]] for m in range(len(names))]

    results: list[tuple[float, tuple[float, ...]]] = []
    for w in grid:
        support = [m for m, x in enumerate(w) if x > 0]
        wa = np.asarray([w[m] for m in support])
        lists = [_combine(np.stack([logp[m][i] for m in support]), wa, combine) for i in range(len(qids))]
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


# ----------------------------------------------------------------------------------------------------------------
# Writing the targets


def attach_teacher_scores(lists: Sequence[CandidateList], logprobs: Sequence[np.ndarray]) -> list[CandidateList]:
    """New ``CandidateList`` objects carrying ``logprobs`` (one array per list, ``pids`` order) as teacher_scores."""
    if len(lists) != len(logprobs):
        raise ValueError(f"{len(lists)} lists but {len(logprobs)} score arrays")
    out = []
    for cl, lp in zip(lists, logprobs):
        values = np.asarray(lp, dtype=np.float64).reshape(-1)
        if len(values) != len(cl.pids):
            raise ValueError(f"query {cl.qid!r}: {len(values)} teacher scores for {len(cl.pids)} candidates")
        if not np.isfinite(values).all():
            raise ValueError(f"query {cl.qid!r}: non-finite teacher scores")
        out.append(dataclasses.replace(cl, pids=list(cl.pids), teacher_scores=[float(v) for v in values]))
    return out


def apply_ensemble(
    lists: Sequence[CandidateList],
    scorers: Mapping[str, Scorer],
    weights: Mapping[str, float],
    queries: Queries,
    corpus: Corpus,
    *,
    temperatures: Mapping[str, float] | None = None,
    combine: str = "arithmetic",
    normalize_how: str | Mapping[str, str] = "zscore",
) -> list[CandidateList]:
    """Score ``lists`` with every scorer of positive weight, ensemble them, and attach the log-probabilities.

    ``weights`` is typically ``check_teachers(...).weights``; members named there but absent from ``scorers`` must
    have weight 0. Raises ``ValueError`` when no weight is positive (the check said: do not distil).
    """
    used = [n for n, w in weights.items() if w > 0]
    if not used:
        raise ValueError("every teacher weight is 0: there is nothing to distil (train on labels only)")
    missing = [n for n in used if n not in scorers]
    if missing:
        raise ValueError(f"no scorer for teacher(s) {missing} of positive weight")
    member_scores = [scorers[n].score(lists, queries, corpus) for n in used]
    hows = [normalize_how if isinstance(normalize_how, str) else normalize_how.get(n, "zscore") for n in used]
    temps = [float((temperatures or {}).get(n, 1.0)) for n in used]
    logprobs = ensemble_logprobs(
        member_scores, [weights[n] for n in used], temperatures=temps, combine=combine, normalize_how=hows
    )
    return attach_teacher_scores(lists, logprobs)
