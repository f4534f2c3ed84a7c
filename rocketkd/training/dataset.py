"""Training lists -> groups of G candidates, resampled per epoch without touching global random state.

Each item is one query's group: its positive first, then G-1 negatives drawn from the list's negatives. The draw
depends only on (seed, epoch, list index), so a resumed run sees exactly the groups the uninterrupted run saw.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from rocketkd.errors import ConfigError
from rocketkd.types import CandidateList


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
