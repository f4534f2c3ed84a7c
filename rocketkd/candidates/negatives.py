"""The pure steps of candidate mining, one per function so each can be tested by hand (the driver is
:func:`rocketkd.candidates.mining.mine`).

* which passages a query may never get as a negative: :func:`judged_relevant`, :func:`drop_positives`, and its
  training positives :func:`positives_of`;
* denoising with the re-ranker's logits: :func:`denoise` (likely false negatives), :func:`pseudo_positives`;
* hybrid augmentation: :func:`sample_negatives`, :func:`build_list`;
* lists without a retriever: :func:`label_unlabeled` (teacher labelling of unlabeled queries) and
  :func:`label_lists` (qrels positives + random corpus negatives, for a lone ``rocketkd train``).

Invariant of every list built here: no negative is a judged positive (grade > 0, any split) of the list's query.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from rocketkd.errors import ConfigError
from rocketkd.types import CandidateList, Qrels, Run

logger = logging.getLogger(__name__)

__all__ = [
    "build_list",
    "denoise",
    "drop_positives",
    "judged_relevant",
    "label_lists",
    "label_unlabeled",
    "positives_of",
    "pseudo_positives",
    "ranked",
    "sample_negatives",
    "sigmoid",
]


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
    corpus_ids: Sequence[str],
    exclude: Iterable[str],
    n: int,
    rng: random.Random,
    *,
    max_attempts: int | None = None,
    fill_from_rest: bool = True,
) -> list[str]:
    """``n`` distinct passages drawn uniformly from ``corpus_ids``, none of them in ``exclude``.

    Rejection sampling (cheap on a large corpus), at most ``max_attempts`` draws (None: ``20·n + 100``); when
    rejections pile up (a tiny corpus, a huge ``exclude``) and ``fill_from_rest``, it falls back to sampling from the
    explicit remainder, so it returns fewer than ``n`` only when fewer are left. ``fill_from_rest=False`` returns
    what the draws found (:func:`label_lists`' budget, kept so its lists stay the same for a seed).
    """
    if n <= 0 or not corpus_ids:
        return []
    excluded = set(exclude)
    chosen: list[str] = []
    seen: set[str] = set()
    attempts = 0
    if max_attempts is None:
        max_attempts = 20 * n + 100
    while len(chosen) < n and attempts < max_attempts:
        attempts += 1
        pid = corpus_ids[rng.randrange(len(corpus_ids))]
        if pid in excluded or pid in seen:
            continue
        seen.add(pid)
        chosen.append(pid)
    if fill_from_rest and len(chosen) < n:
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


def positives_of(qrels: Qrels, qid: str, min_grade: int = 1) -> list[str]:
    """Judged positives of a query, best grade first (ties by id, so the order is stable)."""
    judged = qrels.get(qid, {})
    return sorted((p for p, g in judged.items() if g >= min_grade), key=lambda p: (-judged[p], p))


def label_lists(
    qrels: Qrels,
    corpus_ids: Sequence[str],
    *,
    list_length: int,
    seed: int = 13,
    min_grade: int = 1,
    pool_size: int | None = None,
) -> list[CandidateList]:
    """Lists from labels alone: one list per (query, judged positive), negatives sampled from the corpus.

    Sampled negatives skip every passage judged relevant to the query (any grade >= ``min_grade``), so a known
    positive is never used as a negative. ``pool_size`` negatives are kept per list (default 4·(G-1)) so each
    epoch can draw a different G-1 of them.

    A query without a positive is skipped (the count is logged); qrels where no query has one are a
    ``ConfigError``, as is a query for which the corpus holds no passage to serve as a negative.
    """
    rng = random.Random(seed)
    pool = pool_size or 4 * (list_length - 1)
    lists = []
    skipped = 0
    for qid in sorted(qrels):
        positives = positives_of(qrels, qid, min_grade)
        if not positives:
            skipped += 1
            continue
        relevant = set(positives)
        for pos in positives:
            # 50 draws per wanted negative and no fill-up from the remainder: the budget these lists were always
            # drawn with, so a seed gives the same lists as before sample_negatives served them
            negatives = sample_negatives(corpus_ids, relevant, pool, rng, max_attempts=50 * pool, fill_from_rest=False)
            if not negatives:
                raise ConfigError(
                    f"query {qid!r}: no passage of the corpus ({len(corpus_ids)} passages, {len(relevant)} of "
                    "them judged relevant to it) is left to serve as a negative"
                )
            lists.append(CandidateList(qid=qid, pids=[pos, *negatives], source="sampled"))
    if not lists:
        raise ConfigError(
            f"none of the {len(qrels)} queries of the training qrels has a positive of grade >= {min_grade}: "
            "nothing to train on (config keys 'data.train_split', 'data.min_positive_grade')"
        )
    if skipped:
        logger.info(
            "%d of %d queries of the training qrels have no positive of grade >= %d: skipped",
            skipped, len(qrels), min_grade,
        )
    return lists
