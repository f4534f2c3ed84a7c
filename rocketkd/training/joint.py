"""The joint model: retriever and re-ranker in one module, so one DDP/FSDP wrapper and one optimizer cover both.

``forward(batch)`` returns the score matrices of the group layout; the losses are computed outside from them
(``rocketkd.training.step.loss_from_scores``), which keeps the loss math free of the models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rocketkd.models import CrossEncoderRanker, DualEncoder
from rocketkd.training.batch import JointBatch
from rocketkd.types import check_group_layout


@dataclass
class JointScores:
    retriever: torch.Tensor | None  # (B, G) scaled retriever scores, positive at column 0 (None: re-ranker alone)
    reranker: torch.Tensor | None  # (B, G) re-ranker logits, or None when no re-ranker is trained online
    query_emb: torch.Tensor | None  # (B, H)
    passage_emb: torch.Tensor | None  # (B*G, H)


class JointModel(nn.Module):
    def __init__(self, retriever: DualEncoder, reranker: CrossEncoderRanker | None, score_scale: float = 1.0):
        super().__init__()
        self.retriever = retriever
        self.reranker = reranker
        self.score_scale = score_scale

    def forward(self, batch: JointBatch) -> JointScores:
        B, G = batch.batch_size, batch.group_size
        q = p = retriever_scores = None
        if batch.query_inputs is not None:  # None: train.mode=reranker, the retriever does not run
            q = self.retriever.encode_queries(batch.query_inputs)  # (B, H): one encoding per list
            p = self.retriever.encode_passages(batch.passage_inputs)  # (B*G, H)
            retriever_scores = self.score_scale * DualEncoder.score_groups(q, p)  # (B, G)
            check_group_layout(retriever_scores, B, G)
        reranker_scores = None
        if self.reranker is not None and batch.pair_inputs is not None:
            reranker_scores = self.reranker.score_groups(batch.pair_inputs, G)  # (B, G)
            check_group_layout(reranker_scores, B, G)
        return JointScores(None if retriever_scores is None else retriever_scores.float(),
                           None if reranker_scores is None else reranker_scores.float(), q, p)
