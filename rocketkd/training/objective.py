"""The training objective of each mode, as a function of score tensors only.

joint (RocketQAv2, arXiv 2110.07367, eq. 4-6):
    L = w_ce · CE(s_rerank, col 0) + α · D(s_retr ‖ teacher) + β · CE(s_retr, col 0 [+ in-batch])
    where teacher = s_rerank, detached unless ``distill_to_reranker`` (the released code detached it; the paper
    lets the KL reach both models).
warmup:       w_ce · CE(s_rerank) + CE(s_retr)         (labels only: a fresh re-ranker head is a random teacher)
reranker:     w_ce · CE(s_rerank)                      (the re-ranker alone, e.g. pre-trained on inverse-cloze lists)
contrastive:  CE(s_retr)                                (the no-teacher baseline)
static:       α · D(s_retr ‖ frozen teacher) + β · CE(s_retr)

With ``train.in_batch_negatives`` the retriever's CE is the in-batch one (``rocketkd.losses.in_batch_ce``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rocketkd.config import Config, TrainConfig
from rocketkd.losses import get_distill_loss, listwise_ce


def needs_reranker(cfg: Config) -> bool:
    """Whether the run trains a re-ranker online (joint, warmup, reranker) — static uses a frozen one outside the
    optimizer."""
    return cfg.train.mode in ("joint", "warmup", "reranker")


@dataclass
class LossParts:
    total: torch.Tensor
    parts: dict[str, torch.Tensor]  # name -> scalar, for logging (detached)


def mix_teachers(stored: torch.Tensor, online: torch.Tensor, weight: float, temperature: float) -> torch.Tensor:
    """log((1-w)·softmax(stored) + w·softmax(online/T)) · T, returned as logits for the distillation loss.

    ``stored`` holds the (B, G) log-probabilities of an offline ensemble (``rocketkd.teachers``); the online
    re-ranker joins it as one more member with weight ``w`` (Hinton's arithmetic mean of member distributions).
    Multiplying by T makes the loss's own softmax(·/T) return exactly this mixture.
    """
    if weight >= 1.0:
        return online
    log_stored = torch.log_softmax(stored.float(), dim=-1)  # (B, G)
    if weight <= 0.0:
        return log_stored * temperature
    log_online = torch.log_softmax(online.float() / temperature, dim=-1)  # (B, G)
    mixed = torch.logsumexp(
        torch.stack([log_stored + torch.log1p(torch.tensor(-weight)), log_online + torch.log(torch.tensor(weight))]),
        dim=0,
    )
    return mixed * temperature


def compute_objective(
    cfg: TrainConfig,
    retriever: torch.Tensor | None,
    reranker: torch.Tensor | None,
    teacher: torch.Tensor | None = None,
    retriever_inbatch: torch.Tensor | None = None,
) -> LossParts:
    """``retriever``/``reranker``/``teacher``: (B, G) scores; ``retriever_inbatch``: a precomputed in-batch CE.

    ``teacher`` is the target for static mode (frozen model or stored scores); in joint mode the online re-ranker
    is the teacher.
    """
    parts: dict[str, torch.Tensor] = {}
    mode = cfg.mode
    if mode == "reranker":
        if reranker is None:
            raise ValueError("train.mode=reranker needs re-ranker scores")
        parts["reranker_ce"] = listwise_ce(reranker)
        return LossParts(cfg.reranker_ce_weight * parts["reranker_ce"], {k: v.detach() for k, v in parts.items()})
    total = retriever.new_zeros(())
    if mode in ("joint", "warmup"):
        if reranker is None:
            raise ValueError(f"train.mode={mode} needs re-ranker scores")
        parts["reranker_ce"] = listwise_ce(reranker)
        total = total + cfg.reranker_ce_weight * parts["reranker_ce"]
    if mode == "joint":
        target = reranker if cfg.distill_to_reranker else reranker.detach()
        if teacher is not None:
            target = mix_teachers(teacher, target, cfg.online_teacher_weight, cfg.temperature)
        parts["distill"] = get_distill_loss(cfg.distill_loss)(retriever, target, cfg.temperature)
        total = total + cfg.distill_weight * parts["distill"]
    elif mode == "static" and not (teacher is None and cfg.distill_weight == 0):  # 0: the teachers were rejected
        if teacher is None:
            raise ValueError("train.mode=static needs teacher scores (a frozen re-ranker or stored scores)")
        parts["distill"] = get_distill_loss(cfg.distill_loss)(retriever, teacher.detach(), cfg.temperature)
        total = total + cfg.distill_weight * parts["distill"]
    hard_weight = 1.0 if mode in ("warmup", "contrastive") else cfg.retriever_ce_weight
    if hard_weight:
        parts["retriever_ce"] = retriever_inbatch if retriever_inbatch is not None else listwise_ce(retriever)
        total = total + hard_weight * parts["retriever_ce"]
    if not total.requires_grad and retriever.requires_grad:  # every weight 0 (rejected teachers): a zero step
        total = total + 0.0 * retriever.sum()
    return LossParts(total, {k: v.detach() for k, v in parts.items()})
