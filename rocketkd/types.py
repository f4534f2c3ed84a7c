"""Shared data types: corpus, queries, qrels, runs, candidate lists (training batches: training/batch.py).

Group layout, defined once here and asserted wherever a (B, G) score matrix is built: a batch holds B query
lists of G passages each, flattened row-major (query b's passages at rows b*G .. b*G+G-1), with the positive at
column 0 (``POSITIVE_COLUMN``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Queries = dict[str, str]
Qrels = dict[str, dict[str, int]]  # query id -> passage id -> graded relevance (0 = judged not relevant)
Run = dict[str, dict[str, float]]  # query id -> passage id -> score (higher is better)

POSITIVE_COLUMN = 0


def check_group_layout(scores: torch.Tensor, batch_size: int, group_size: int) -> None:
    """Assert that ``scores`` is the (B, G) matrix of the group layout above."""
    if scores.dim() != 2 or tuple(scores.shape) != (batch_size, group_size):
        raise ValueError(
            f"expected scores of shape (B={batch_size}, G={group_size}) with the positive at column "
            f"{POSITIVE_COLUMN}, got {tuple(scores.shape)}"
        )


def group_view(flat: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B*G, ...) -> (B, G, ...) following the group layout; refuses a length that is not a multiple of G."""
    if flat.shape[0] % group_size != 0:
        raise ValueError(f"{flat.shape[0]} rows do not split into groups of {group_size}")
    return flat.view(flat.shape[0] // group_size, group_size, *flat.shape[1:])


@dataclass
class CandidateList:
    """One training query's candidates: ``pids[0]`` is its positive, the rest its negatives.

    ``teacher_scores`` (same length as ``pids``) are optional stored scores for static distillation.
    ``source`` records where the negatives came from (``"bm25"``, ``"dense"``, ``"sampled"``, ``"pseudo"`` ...).
    """

    qid: str
    pids: list[str]
    teacher_scores: list[float] | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.pids) < 2:
            raise ValueError(f"candidate list for query {self.qid!r} needs a positive and at least one negative")
        if self.teacher_scores is not None and len(self.teacher_scores) != len(self.pids):
            raise ValueError(f"candidate list for query {self.qid!r}: teacher_scores and pids differ in length")

    @property
    def positive(self) -> str:
        return self.pids[POSITIVE_COLUMN]

    @property
    def negatives(self) -> list[str]:
        return self.pids[1:]

    def to_dict(self) -> dict:
        d = {"qid": self.qid, "pids": list(self.pids)}
        if self.teacher_scores is not None:
            d["teacher_scores"] = [float(s) for s in self.teacher_scores]
        if self.source:
            d["source"] = self.source
        return d
