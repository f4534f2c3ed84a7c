"""Candidate mining: retrieve, drop judged positives, denoise with the re-ranker, augment, pseudo-label.

RocketQA's recipe, one pure step per function so each can be tested by hand, then the driver ``mine``:

1. retrieve the top ``depth`` passages of every training query (BM25, the base encoder, or a trained retriever);
2. skip the first ``skip_top`` ranks (near-duplicates of the positive) and drop every passage judged relevant to
   the query in *any* qrels split with *any* grade > 0 (``drop_positives``): a grade-1 passage is no negative;
3. with a re-ranker, drop likely false negatives (``denoise``: a hard negative the re-ranker is confident about is
   most likely an unlabeled positive) and, optionally, promote confident candidates to pseudo-positives;
4. hybrid augmentation (``build_list``): the denoised mined negatives in rank order, then a few undenoised negatives
   sampled from the corpus, topped up with more sampled ones when a list would be shorter than G;
5. teacher labelling of unlabeled queries (``label_unlabeled``): the re-ranker's confident candidates become
   positives, its confident rejections negatives.

Invariant of every list written here: no negative is a judged positive (grade > 0, any split) of the list's query.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config import Config
from .errors import ConfigError
from .types import CandidateList, Qrels, Run

logger = logging.getLogger(__name__)

__all__ = [
    "MiningResult",
    "build_list",
    "denoise",
    "drop_positives",
    "judged_relevant",
    "label_unlabeled",
    "mine",
    "pseudo_positives",
    "ranked",
    "sample_negatives",
    "sigmoid",
]

# (query, passage) pairs scored per ``predict`` call: big enough to keep the re-ranker busy, small enough that
# the texts of one chunk fit comfortably in memory on MS MARCO.
PAIRS_PER_CHUNK = 8192


# --------------------------------------------------------------------------------------------------- pure pieces


def sigmoid(logits: np.ndarray | Sequence[float]) -> np.ndarray:
    """Logistic function, numerically stable for large |x| (the re-ranker's one-logit head -> probability)."""
    x = np.asarray(logits, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def ranked(scores: Mapping[str, float]) -> list[str]:
    """A run's passages best first; ties broken by passage id so the order never depends on dict order."""
    return sorted(scores, key=lambda pid: (-float(scores[pid]), pid))


def judged_relevant(qrels_by_split: Mapping[str, Qrels], qid: str) -> dict[str, int]:
    """The query's judgements merged over every split (highest grade wins): what no negative may ever be."""
    merged: dict[str, int] = {}
    for qrels in qrels_by_split.values():
        for pid, grade in qrels.get(qid, {}).items():
            merged[pid] = max(int(grade), merged.get(pid, int(grade)))
    return merged


def drop_positives(ranked: Sequence[str], qrels_for_query: Mapping[str, int]) -> list[str]:
    """``ranked`` without any passage judged relevant to the query (grade > 0, whatever ``min_positive_grade`` is).

    Passages judged 0 (explicitly not relevant) stay: they are the safest negatives there are.
    """
    return [pid for pid in ranked if qrels_for_query.get(pid, 0) <= 0]


def denoise(
    candidates: Sequence[str],
    scores: np.ndarray | Sequence[float],
    *,
    false_negative_threshold: float | None,
    false_negative_rank: int | None = None,
    positive_score: float | None = None,
) -> tuple[list[str], list[str]]:
    """Split mined negatives into (kept, dropped) by the re-ranker's logits ``scores`` (one per candidate).

    Two rules; a candidate is dropped when either fires:

    * threshold (RocketQA): ``sigmoid(logit) > false_negative_threshold``: the re-ranker is confident the passage
      is relevant, so it is most likely an unlabeled positive. ``None`` switches the rule off.
    * rank (optional): let r be the number of candidates the re-ranker scores strictly above the list's positive
      (``positive_score``, a logit). The top ``max(0, r - false_negative_rank)`` candidates by score are dropped,
      i.e. every negative ranked more than ``false_negative_rank`` places above the positive. ``0`` drops every
      negative that outscores the positive.

    Both lists keep the candidates' original (retrieval) order.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(candidates):
        raise ValueError(f"denoise: {len(candidates)} candidates but {len(scores)} scores")
    drop = np.zeros(len(candidates), dtype=bool)
    if false_negative_threshold is not None:
        drop |= sigmoid(scores) > false_negative_threshold
    if false_negative_rank is not None:
        if positive_score is None:
            raise ValueError("denoise: the rank rule (false_negative_rank) needs the positive's score")
        if false_negative_rank < 0:
            raise ValueError(f"denoise: false_negative_rank must be >= 0, got {false_negative_rank}")
        above = int((scores > positive_score).sum())
        n_drop = max(0, above - false_negative_rank)
        order = np.argsort(-scores, kind="stable")  # ties keep retrieval order
        drop[order[:n_drop]] = True
    kept = [pid for pid, d in zip(candidates, drop) if not d]
    dropped = [pid for pid, d in zip(candidates, drop) if d]
    return kept, dropped


def pseudo_positives(
    candidates: Sequence[str], scores: np.ndarray | Sequence[float], threshold: float | None
) -> list[str]:
    """Candidates whose re-ranker probability is above ``threshold`` (``None``: none), in candidate order."""
    if threshold is None:
        return []
    probs = sigmoid(scores).reshape(-1)
    if len(probs) != len(candidates):
        raise ValueError(f"pseudo_positives: {len(candidates)} candidates but {len(probs)} scores")
    return [pid for pid, p in zip(candidates, probs) if p > threshold]


def sample_negatives(
    corpus_ids: Sequence[str], exclude: Iterable[str], n: int, rng: random.Random
) -> list[str]:
    """``n`` distinct passages drawn uniformly from ``corpus_ids``, none of them in ``exclude``.

    Rejection sampling (cheap on a large corpus); when rejections pile up (a tiny corpus, a huge ``exclude``) it
    falls back to sampling from the explicit remainder. Returns fewer than ``n`` only when fewer are left.
    """
    if n <= 0 or not corpus_ids:
        return []
    excluded = set(exclude)
    chosen: list[str] = []
    seen: set[str] = set()
    attempts, max_attempts = 0, 20 * n + 100
    while len(chosen) < n and attempts < max_attempts:
        attempts += 1
        pid = corpus_ids[rng.randrange(len(corpus_ids))]
        if pid in excluded or pid in seen:
            continue
        seen.add(pid)
        chosen.append(pid)
    if len(chosen) < n:
        rest = [pid for pid in dict.fromkeys(corpus_ids) if pid not in excluded and pid not in seen]
        chosen += rng.sample(rest, min(n - len(chosen), len(rest)))
    return chosen


def build_list(
    qid: str,
    positive: str,
    denoised_negatives: Sequence[str],
    sampled_negatives: Sequence[str],
    *,
    list_length: int,
    rng: random.Random,
    corpus_ids: Sequence[str] = (),
    exclude: Iterable[str] = (),
    source: str = "",
) -> tuple[CandidateList, int]:
    """Hybrid augmentation: ``[positive, *denoised_negatives, *sampled_negatives]`` (duplicates removed, order kept).

    The mined negatives keep their rank order; the sampled ones follow, undenoised. When fewer than
    ``list_length - 1`` negatives remain, more are sampled from ``corpus_ids`` (never one in ``exclude``, which must
    hold the query's judged positives, nor one already in the list). Returns the list and how many top-up
    negatives it needed (0 for most lists). Raises ``ConfigError`` when the corpus cannot fill the list.
    """
    pids = [positive]
    seen = {positive}
    for pid in [*denoised_negatives, *sampled_negatives]:
        if pid not in seen:
            seen.add(pid)
            pids.append(pid)
    missing = list_length - len(pids)
    topped = 0
    if missing > 0:
        extra = sample_negatives(corpus_ids, seen | set(exclude), missing, rng)
        pids += extra
        topped = len(extra)
    if len(pids) < max(list_length, 2):
        raise ConfigError(
            f"candidates.list_length={list_length} but query {qid!r} can only get {len(pids)} candidates "
            f"(corpus of {len(corpus_ids)} passages); lower candidates.list_length"
        )
    return CandidateList(qid=qid, pids=pids, source=source), topped


def label_unlabeled(
    queries: Mapping[str, str] | Iterable[str],
    run: Run,
    scores: Mapping[str, Mapping[str, float]],
    pos_threshold: float,
    neg_threshold: float,
    *,
    source: str = "teacher",
) -> list[CandidateList]:
    """Teacher labelling (RocketQA's data augmentation) of queries that have no judgements.

    For each query (in id order) the retrieved candidates are taken in rank order; one with re-ranker probability
    ``sigmoid(logit) > pos_threshold`` becomes the positive of its own list, those with probability
    ``< neg_threshold`` are the negatives of every such list (candidates in between are left out: the teacher is
    unsure). A query without a confident positive or without a confident negative gives no list. Candidates the
    teacher did not score are ignored.

    The lists hold only the teacher's own negatives and may be shorter than G: ``mine`` augments them with
    ``build_list`` like every other list (sampled negatives, top-up).
    """
    if neg_threshold > pos_threshold:
        raise ValueError(f"label_unlabeled: neg_threshold {neg_threshold} is above pos_threshold {pos_threshold}")
    lists = []
    for qid in sorted(queries):
        q_scores = scores.get(qid, {})
        order = [pid for pid in ranked(run.get(qid, {})) if pid in q_scores]
        if not order:
            continue
        probs = sigmoid([q_scores[pid] for pid in order])
        positives = [pid for pid, p in zip(order, probs) if p > pos_threshold]
        negatives = [pid for pid, p in zip(order, probs) if p < neg_threshold]
        if not positives or not negatives:
            continue
        lists += [CandidateList(qid=qid, pids=[pos, *negatives], source=source) for pos in positives]
    return lists


# -------------------------------------------------------------------------------------------------------- driver


@dataclass
class MiningResult:
    path: Path
    num_lists: int
    num_queries: int
    dropped_false_negatives: int
    pseudo_positives: int
    topped_up: int
    source: str
    labelled_queries: int = 0


def mine(*args: Any, **kwargs: Any) -> MiningResult:  # placeholder, replaced below
    raise NotImplementedError
