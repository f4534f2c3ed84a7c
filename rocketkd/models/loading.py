"""The one place a model is made from config: ``load_retriever`` and ``load_reranker`` read ``cfg.model`` (and the
training switches that change how a model is built), so every stage builds the same model from the same keys.

Model settings left empty in the config (``model.pooling``, ``model.similarity``) are read from the model folder, as
:meth:`DualEncoder.from_pretrained` documents.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from rocketkd.config import Config
from rocketkd.distributed import local_device
from rocketkd.errors import ModelLoadError
from rocketkd.models._hf import resolve_model_path
from rocketkd.models.cross_encoder import CrossEncoderRanker
from rocketkd.models.dual_encoder import DualEncoder

logger = logging.getLogger(__name__)


def load_retriever(cfg: Config, path: str | None, *, for_training: bool = False) -> DualEncoder:
    """The retriever as ``cfg.model`` describes it, from ``path`` (None = the packaged MiniLM).

    ``for_training=False``: a scorer, moved to this process's GPU when there is one. ``for_training=True``: left
    where it is (accelerate places training models), with ``train.gradient_checkpointing`` honoured and the unused
    pooler frozen.
    """
    retriever = DualEncoder.from_pretrained(
        resolve_model_path(path),
        **retriever_settings(cfg),
        gradient_checkpointing=for_training and cfg.train.gradient_checkpointing,
    )
    if not for_training:
        return retriever.to(local_device())
    set_attention_dropout(retriever, cfg.train.attention_dropout)
    # The backbone's pooler (BERT's tanh layer over [CLS]) feeds no retriever score: freeze it so DDP does not wait
    # for gradients that never come and the optimizer does not decay weights nobody uses.
    for name, param in retriever.named_parameters():
        if ".pooler." in f".{name}":
            param.requires_grad_(False)
    return retriever


def retriever_settings(cfg: Config) -> dict:
    """The ``cfg.model`` keys a retriever is built with: saved beside anything that must rebuild the same encoder
    without the config (a re-ranker's prior, :func:`load_retriever_with`)."""
    m = cfg.model
    return {"shared": m.shared_towers, "pooling": m.pooling, "similarity": m.similarity,
            "query_max_length": _length(m.query_max_length), "passage_max_length": _length(m.passage_max_length)}


def _length(value: int | str) -> int | None:
    """A length from ``cfg.model``; ``auto`` not yet sized from data (no collection at hand) = the folder's own."""
    return None if value == "auto" else value


def load_retriever_with(path: str | None, settings: dict) -> DualEncoder:
    """A scoring retriever from ``path`` with saved :func:`retriever_settings` (no config at hand)."""
    return DualEncoder.from_pretrained(resolve_model_path(path), **settings).to(local_device())


def load_reranker(cfg: Config, path: str | None, *, trainable: bool = True) -> CrossEncoderRanker:
    """The re-ranker per ``cfg.model``: trainable (listwise-CE ready) or a frozen teacher in eval mode on this
    process's device."""
    reranker = CrossEncoderRanker.from_pretrained(
        resolve_model_path(path),
        max_length=_length(cfg.model.reranker_max_length),
        gradient_checkpointing=trainable and cfg.train.gradient_checkpointing,
        warn_new_head=not cfg.model.reranker_prior,  # with a prior a new head is expected: it starts at zero
    )
    if cfg.model.reranker_prior and reranker.new_head:  # a new head adds nothing to its prior until it learns
        zero_output_layer(reranker)
        logger.info("%s: the cross-encoder's output layer is new and starts at zero: the re-ranker starts as its "
                    "prior and g learns from the labels", path or "the packaged MiniLM")
    if not trainable:
        return reranker.eval().requires_grad_(False).to(local_device())
    set_attention_dropout(reranker, cfg.train.attention_dropout)
    # A listwise softmax is shift-invariant, so the one-logit head's bias gets an exactly-zero gradient; Adam would
    # turn its float noise into +-lr steps that differ between runs. Keep it fixed.
    for name, param in reranker.named_parameters():
        if name.endswith("bias") and tuple(param.shape) == (1,):
            param.requires_grad_(False)
    return reranker


def set_attention_dropout(model: nn.Module, p: float | None) -> int:
    """Set the dropout on the attention probabilities of every self-attention layer to ``p`` (None: leave the
    model's own); returns how many layers changed.

    Why: with dropout on the attention probabilities PyTorch's CPU attention falls back to the unfused path, which
    materialises (and drops out of) every (pairs x heads x L x L) matrix; without it the fused kernel runs, several
    times faster at a few hundred tokens and in a fraction of the memory. Only the modules change, not the model's
    config, so a saved folder keeps its own setting for whoever fine-tunes it next.
    """
    if p is None:
        return 0
    # the Dropout children of the self-attention modules (BERT's BertSelfAttention holds only the one on the
    # probabilities; its output dropout sits in BertSelfOutput)
    layers = [child for m in model.modules() if "Attention" in type(m).__name__
              for child in m.children() if isinstance(child, nn.Dropout)]
    if not layers:
        logger.warning("train.attention_dropout=%s: no self-attention dropout found in %s; left as it is",
                       p, type(model).__name__)
    for layer in layers:
        layer.p = float(p)
    return len(layers)


def zero_output_layer(reranker: CrossEncoderRanker) -> None:
    """Zero the one-logit output layer, so the re-ranker's cross-encoder part ``g`` starts at exactly 0 and a
    re-ranker with a prior starts as the prior (``model.reranker_prior``). Its body still learns: after the first
    step the layer is no longer 0, and the body's gradient flows through it."""
    heads = [m for m in reranker.model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
    if not heads:
        raise ModelLoadError("model.reranker_prior: the re-ranker has no one-logit output layer to start at zero")
    with torch.no_grad():
        heads[-1].weight.zero_()
        if heads[-1].bias is not None:
            heads[-1].bias.zero_()
