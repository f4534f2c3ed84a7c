"""Training lists -> groups of G candidates, resampled per epoch without touching global random state.

Each item is one query's group: its positive first, then G-1 negatives drawn from the list's negatives. The draw
depends only on (seed, epoch, list index), so a resumed run sees exactly the groups the uninterrupted run saw.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import torch

from rocketkd.errors import ConfigError
from rocketkd.types import CandidateList, Qrels

logger = logging.getLogger(__name__)

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
            negatives: list[str] = []
            seen = set()
            attempts = 0
            while len(negatives) < pool and attempts < 50 * pool:
                attempts += 1
                pid = corpus_ids[rng.randrange(len(corpus_ids))]
                if pid in relevant or pid in seen:
                    continue
                seen.add(pid)
                negatives.append(pid)
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


class GroupDataset(torch.utils.data.Dataset):
    """Items are ``(qid, pids[G], teacher_scores[G] | None)`` with the positive first.

    ``set_epoch`` reorders the lists and redraws each list's negatives deterministically; the data loader must not
    shuffle on its own (so the order is the same in every process and after a resume).
    """

    def __init__(self, lists: Sequence[CandidateList], group_size: int, seed: int = 0, shuffle: bool = True):
        if not lists:
            raise ConfigError("no training lists: the training split has no query with a judged positive")
        short = [cl for cl in lists if len(cl.pids) < group_size]
        if short:
            cl = short[0]
            raise ConfigError(
                f"candidates.list_length={group_size} but {len(short)} list(s) have fewer candidates "
                f"(query {cl.qid!r} has {len(cl.pids)}); lower candidates.list_length or mine deeper"
            )
        self.lists = list(lists)
        self.group_size = group_size
        self.seed = seed
        self.shuffle = shuffle
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order = list(range(len(self.lists)))
        if self.shuffle:
            random.Random(f"{self.seed}-order-{epoch}").shuffle(self.order)

    def __len__(self) -> int:
        return len(self.lists)

    def __getitem__(self, i: int) -> dict:
        idx = self.order[i]
        cl = self.lists[idx]
        n_neg = self.group_size - 1
        rows = list(range(1, len(cl.pids)))
        if len(rows) > n_neg:
            rows = random.Random(f"{self.seed}-neg-{self.epoch}-{idx}").sample(rows, n_neg)
        rows = [0, *rows]
        scores = None if cl.teacher_scores is None else [cl.teacher_scores[r] for r in rows]
        return {"qid": cl.qid, "pids": [cl.pids[r] for r in rows], "teacher_scores": scores}
