"""The optimizer's parameter groups: one learning rate per model part, no weight decay on biases and norms."""

from __future__ import annotations

from rocketkd.config import Config
from rocketkd.training.joint import JointModel

NO_DECAY = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")


def param_groups(model: JointModel, cfg: Config) -> list[dict]:
    """AdamW groups: retriever at ``lr_retriever``; re-ranker body at ``lr_reranker``, its head at
    ``lr_reranker_head`` (default ``lr_reranker``); each split into decayed / not decayed (``NO_DECAY``)."""
    t = cfg.train

    def split(named, lr):
        decay = [p for n, p in named if p.requires_grad and not n.endswith(NO_DECAY)]
        rest = [p for n, p in named if p.requires_grad and n.endswith(NO_DECAY)]
        return [
            {"params": decay, "lr": lr, "weight_decay": t.weight_decay},
            {"params": rest, "lr": lr, "weight_decay": 0.0},
        ]

    # Shared towers: the same parameters appear twice in named_parameters(); dedupe by identity.
    seen: set[int] = set()

    def unique(named):
        out = []
        for n, p in named:
            if id(p) not in seen:
                seen.add(id(p))
                out.append((n, p))
        return out

    groups = split(unique(model.retriever.named_parameters()), t.lr_retriever)
    if model.reranker is not None:
        body_ids = {id(p) for p in model.reranker.model.base_model.parameters()}
        named = unique(model.reranker.named_parameters())
        body = [(n, p) for n, p in named if id(p) in body_ids]
        head = [(n, p) for n, p in named if id(p) not in body_ids]
        groups += split(body, t.lr_reranker)
        groups += split(head, t.lr_reranker_head or t.lr_reranker)
    return [g for g in groups if g["params"]]
