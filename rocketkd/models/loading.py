"""The one place a model is made from config: ``load_retriever`` and ``load_reranker`` read ``cfg.model`` (and the
training switches that change how a model is built), so every stage builds the same model from the same keys."""

from __future__ import annotations

from rocketkd.config import Config
from rocketkd.distributed import local_device
from rocketkd.models.cross_encoder import CrossEncoderRanker
from rocketkd.models.dual_encoder import DualEncoder, resolve_model_path


def load_retriever(cfg: Config, path: str | None, *, for_training: bool = False) -> DualEncoder:
    """The retriever as ``cfg.model`` describes it (the one place its settings are read)."""
    m = cfg.model
    retriever = DualEncoder.from_pretrained(
        resolve_model_path(path),
        shared=m.shared_towers,
        pooling=m.pooling,
        similarity=m.similarity,
        query_max_length=m.query_max_length,
        passage_max_length=m.passage_max_length,
        gradient_checkpointing=for_training and cfg.train.gradient_checkpointing,
    )
    if not for_training:  # a scorer: this process's GPU when there is one (training models: accelerate places them)
        return retriever.to(local_device())
    if for_training:
        # The backbone's pooler (BERT's tanh layer over [CLS]) feeds no retriever score: freeze it so DDP does not
        # wait for gradients that never come and the optimizer does not decay weights nobody uses.
        for name, param in retriever.named_parameters():
            if ".pooler." in f".{name}":
                param.requires_grad_(False)
    return retriever


def load_reranker(cfg: Config, path: str | None, *, trainable: bool = True) -> CrossEncoderRanker:
    """The re-ranker per ``cfg.model``: trainable (listwise-CE ready) or a frozen teacher in eval mode."""
    reranker = CrossEncoderRanker.from_pretrained(
        resolve_model_path(path),
        max_length=cfg.model.reranker_max_length,
        gradient_checkpointing=trainable and cfg.train.gradient_checkpointing,
    )
    if not trainable:
        return reranker.eval().requires_grad_(False).to(local_device())
    # A listwise softmax is shift-invariant, so the one-logit head's bias gets an exactly-zero gradient; Adam would
    # turn its float noise into +-lr steps that differ between runs. Keep it fixed.
    for name, param in reranker.named_parameters():
        if name.endswith("bias") and tuple(param.shape) == (1,):
            param.requires_grad_(False)
    return reranker
