"""Groups -> ``JointBatch``: each query tokenised once, passages and (query, passage) pairs in the group layout."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rocketkd.types import JointBatch


@dataclass
class JointCollator:
    """Tokenises a list of groups from ``GroupDataset``.

    ``tokenize_queries``/``tokenize_passages`` come from the retriever, ``tokenize_pairs`` from the re-ranker
    (None when the mode trains no re-ranker: no pair tokens are built then).
    """

    query_text: Callable[[str], str]
    passage_text: Callable[[str], str]
    tokenize_queries: Callable[[list[str]], dict]
    tokenize_passages: Callable[[list[str]], dict]
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
            query_inputs=self.tokenize_queries(queries),
            passage_inputs=self.tokenize_passages(passages),
            pair_inputs=pairs,
            group_size=group_size,
            qids=[it["qid"] for it in items],
            pids=[list(it["pids"]) for it in items],
            teacher_scores=teacher,
        )
