"""In-batch contrastive loss: each query against every passage of the (global) batch.

With ``q`` the ``(B, H)`` query embeddings, ``P`` the ``(M, H)`` passages of the whole batch (its own candidate
lists and everyone else's, gathered across processes) and ``c_b`` the column of query ``b``'s positive in ``P``::

    s_bm = scale · q_b · p_m                                    (B, M)
    L    = -1/B Σ_b log( exp(s_{b,c_b}) / Σ_m exp(s_bm) )       (softmax cross-entropy, mean over queries)

This is InfoNCE with in-batch negatives (van den Oord et al. 2018, arXiv:1807.03748), the training loss of DPR
(Karpukhin et al. 2020, "Dense Passage Retrieval for Open-Domain Question Answering", arXiv:2004.04906, eq. 2)
and of RocketQA's cross-batch negatives (Qu et al. 2021, arXiv:2010.08191). No temperature factor beyond
``scale``. Another query's positive can be a false negative for this one; with B small against the corpus this is
rare and accepted (as in DPR and RocketQA).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["in_batch_ce", "in_batch_scores"]


def in_batch_scores(q: Tensor, p_all: Tensor, scale: float) -> Tensor:
    """(B, H) x (M, H) -> (B, M): every query against every passage of the (global) batch."""
    return scale * q @ p_all.T


def in_batch_ce(q: Tensor, p_all: Tensor, positive_cols: Tensor, scale: float) -> Tensor:
    """Listwise CE of each query over all passages in the batch, its own positive at ``positive_cols[b]``.

    The other queries' hard negatives act as extra negatives (the module docstring gives the equation).
    """
    scores = in_batch_scores(q, p_all, scale)  # (B, M)
    return torch.nn.functional.cross_entropy(scores, positive_cols)
