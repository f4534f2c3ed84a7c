"""The training batch: groups from ``GroupDataset`` -> ``JointBatch`` (each query tokenised once, passages and
(query, passage) pairs in the group layout of ``rocketkd.types``: B lists of G, positive at column 0)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields

import torch


def _move(value, device):
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, Mapping):
        return {k: _move(v, device) for k, v in value.items()}
    return value


@dataclass
class JointBatch:
    """What the collator hands the joint step: B lists of G candidates in the group layout.

    query_inputs:   tokenised queries, one row per list (each query encoded once, not once per candidate)  (B, Lq)
    passage_inputs: tokenised passages, B*G rows in the group layout                                      (B*G, Lp)
                    (both None when the mode trains the re-ranker alone: the retriever does not run)
    pair_inputs:    tokenised (query, passage) pairs for the cross-encoder, same row order as passages   (B*G, Lx)
    teacher_scores: stored teacher scores for static distillation, or None                                (B, G)
    """

    query_inputs: dict[str, torch.Tensor] | None
    passage_inputs: dict[str, torch.Tensor] | None
    pair_inputs: dict[str, torch.Tensor] | None
    group_size: int
    qids: list[str] = field(default_factory=list)
    pids: list[list[str]] = field(default_factory=list)
    teacher_scores: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        if self.query_inputs is None:
            return int(self.pair_inputs["input_ids"].shape[0]) // self.group_size
        return int(self.query_inputs["input_ids"].shape[0])

    def to(self, device: torch.device | str) -> JointBatch:
        moved = {f.name: _move(getattr(self, f.name), device) for f in fields(self)}
        return JointBatch(**moved)

    def __iter__(self) -> Iterator:  # pragma: no cover - guard against tuple-style unpacking
        raise TypeError("JointBatch is not a tuple: use its named fields")


@dataclass
class JointCollator:
    """Tokenises a list of groups from ``GroupDataset``.

    ``tokenize_queries``/``tokenize_passages`` come from the retriever (None when the mode trains the re-ranker
    alone), ``tokenize_pairs`` from the re-ranker (None when the mode trains no re-ranker: no pair tokens then).
    """

    query_text: Callable[[str], str]
    passage_text: Callable[[str], str]
    tokenize_queries: Callable[[list[str]], dict] | None
    tokenize_passages: Callable[[list[str]], dict] | None
    tokenize_pairs: Callable[[list[str], list[str]], dict] | None = None

    def __call__(self, items: list[dict]) -> JointBatch:
        group_size = len(items[0]["pids"])
        if any(len(it["pids"]) != group_size for it in items):
            raise ValueError("all groups in a batch must have the same size")
        queries = [self.query_text(it["qid"]) for it in items]  # (B,)
        passages = [self.passage_text(pid) for it in items for pid in it["pids"]]  # (B*G,) group layout
        pairs = None
        if self.tokenize_pairs is not None:
            pairs = self.tokenize_pairs([q for q in queries for _ in range(group_size)], passages)
        teacher = None
        if items[0]["teacher_scores"] is not None:
            teacher = torch.tensor([it["teacher_scores"] for it in items], dtype=torch.float32)  # (B, G)
        return JointBatch(
            query_inputs=self.tokenize_queries(queries) if self.tokenize_queries else None,
            passage_inputs=self.tokenize_passages(passages) if self.tokenize_passages else None,
            pair_inputs=pairs,
            group_size=group_size,
            qids=[it["qid"] for it in items],
            pids=[list(it["pids"]) for it in items],
            teacher_scores=teacher,
        )
