"""The re-ranker (teacher): a transformers sequence-classification model with one output, scoring (query, passage).

Saved folders are plain transformers folders (``AutoModelForSequenceClassification.from_pretrained`` loads them)
that ``sentence_transformers.CrossEncoder`` also loads with an identity activation, so its ``predict`` returns the
same raw logits as :meth:`CrossEncoderRanker.predict`:

* sentence-transformers 4.x-6.x read the activation from ``config.json`` -> ``"sentence_transformers":
  {"activation_fn": "torch.nn.modules.linear.Identity"}`` (6.x only instantiates paths that start with
  ``torch.`` unless ``trust_remote_code=True``, which this one does); 3.x and older read the same path from
  ``config.json`` -> ``"sbert_ce_default_activation_function"``. We write both. Without them a one-label
  CrossEncoder applies a sigmoid in ``predict``.
* with no ``modules.json`` in the folder, sentence-transformers builds its default CrossEncoder (one Transformer
  module for sequence classification) and truncates at the tokenizer's ``model_max_length``, which ``save`` sets to
  ``max_length``. Pairs are truncated "longest_first" on both sides, as here.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rocketkd.errors import ModelLoadError
from rocketkd.io import atomic_dir
from rocketkd.models._hf import (
    ROCKETKD_JSON,
    autocast_context,
    distribution_version,
    enable_checkpointing,
    eval_mode,
    fp32_kwargs,
    load_error,
    load_tokenizer,
    module_device,
    read_model_json,
    resolve_model_path,
    write_json,
)
from rocketkd.models.card import write_model_card
from rocketkd.models.st_layout import read_st_layout
from rocketkd.types import check_group_layout, group_view

logger = logging.getLogger(__name__)

IDENTITY_ACTIVATION = "torch.nn.modules.linear.Identity"

# Truncation of a (query, passage) pair that does not fit: "longest_first" trims the longer side token by token.
# With short queries (MS MARCO, NQ) it only ever cuts the passage, exactly like "only_second"; with long queries
# (ArguAna, some BEIR sets) it still fits both instead of failing or leaving the passage a few tokens, and it is
# what sentence-transformers' CrossEncoder does, so a saved model scores the same there.
TRUNCATION = "longest_first"


def reset_pooler(model: nn.Module) -> bool:
    """Set BERT-style ``pooler.dense`` (tanh(W·h_cls + b)) to W = I, b = 0; True if the model has one.

    Why: sequence-classification heads read the pooler, and a sentence-transformers bi-encoder trained with mean
    pooling (all-MiniLM-L6-v2) carries a pooler nobody trained since pre-training -- in the packaged MiniLM its
    weights have gain 0.18, so pooled outputs sit near 0.05 with almost no spread between pairs, the fresh head's
    logits differ by ~0.01 within a list, and the gradient reaching head and body is so small that the listwise CE
    does not leave log G in tens of steps (measured on cranfield). tanh(h_cls) keeps the [CLS] state's spread
    (~0.13 per unit between pairs) and the usual format: the folder still loads as a plain cross-encoder.
    """
    pooler = getattr(getattr(model, "base_model", model), "pooler", None)
    dense = getattr(pooler, "dense", None)
    if not isinstance(dense, nn.Linear) or dense.in_features != dense.out_features:
        return False
    with torch.no_grad():
        dense.weight.copy_(torch.eye(dense.in_features, dtype=dense.weight.dtype))
        if dense.bias is not None:
            dense.bias.zero_()
    return True


class CrossEncoderRanker(nn.Module):
    """Scores (query, passage) pairs jointly: input pairs (N, L) -> raw relevance logits (N,)."""

    def __init__(self, model: nn.Module, tokenizer: Any, *, max_length: int = 256) -> None:
        super().__init__()
        if not isinstance(max_length, int) or max_length < 4:
            raise ValueError(f"max_length must be an int >= 4 ([CLS] q [SEP] p [SEP]), got {max_length!r}")
        num_labels = getattr(model.config, "num_labels", 1)
        if num_labels != 1:
            raise ValueError(
                f"a re-ranker needs a one-score head (num_labels=1), got num_labels={num_labels}"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.new_head = False  # set by from_pretrained: the one-logit head was freshly initialised there

    @property
    def device(self) -> torch.device:
        return module_device(self)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        max_length: int | None = None,
        attn_implementation: str | None = "sdpa",
        gradient_checkpointing: bool = False,
        warn_new_head: bool = True,
    ) -> CrossEncoderRanker:
        """Load a re-ranker; None = the packaged MiniLM (a bi-encoder: its head is new).

        Accepts a folder written by :meth:`save`, any sentence-transformers CrossEncoder folder, a transformers
        ``*ForSequenceClassification`` folder with one label, or a plain encoder / sentence-transformers
        bi-encoder folder, for which a one-score head is freshly initialised and a warning says it must be trained
        (warm-up) before it can teach. ``max_length`` None = ``rocketkd.json``, else the folder's
        ``max_seq_length``, else 256; capped at the model's positions. Weights load in float32.
        ``warn_new_head`` False: the caller expects a new head (a re-ranker over a prior starts it at zero).
        """
        # start-up time: transformers takes seconds to import
        from transformers import AutoConfig, AutoModelForSequenceClassification

        root = resolve_model_path(path)
        own = read_model_json(root, ROCKETKD_JSON) or {}
        if own.get("format") != "rocketkd.cross_encoder":
            own = {}
        layout = read_st_layout(root)
        unsupported = [m for m in layout.other_modules if m.rsplit(".", 1)[-1] in {"LogitScore", "Dense"}]
        if unsupported:
            raise ModelLoadError(
                f"{root}: modules.json lists {unsupported}; rocketkd's re-ranker supports sequence-classification "
                "cross-encoders only"
            )
        sub = layout.transformer_subfolder
        where = f"{root}/{sub}" if sub else root
        sub_kwargs: dict[str, Any] = {"subfolder": sub} if sub else {}

        try:
            config = AutoConfig.from_pretrained(root, **sub_kwargs)
        except Exception as exc:
            raise load_error(where, "model config", exc) from exc
        has_head = any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))
        if has_head and config.num_labels != 1:
            raise ModelLoadError(
                f"{where}: its classification head has {config.num_labels} labels; a re-ranker needs one score"
            )

        kwargs: dict[str, Any] = {**fp32_kwargs(), **sub_kwargs, "num_labels": 1, "output_loading_info": True}
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        try:
            model, info = AutoModelForSequenceClassification.from_pretrained(root, **kwargs)
        except Exception as exc:
            raise load_error(where, "cross-encoder", exc) from exc
        missing = sorted(info.get("missing_keys") or [])
        if (missing or not has_head) and warn_new_head:
            logger.warning(
                "%s: the re-ranker's classification head is new (freshly initialised: %s); it must be trained "
                "(warm-up) before its scores can teach a retriever",
                where,
                ", ".join(missing) or "head",
            )
        if missing or not has_head:
            if layout.is_sentence_transformers and layout.pooling not in (None, "cls") and reset_pooler(model):
                logger.info(
                    "%s: a %s-pooling bi-encoder never trained its [CLS] pooler; it is reset to tanh(identity) so "
                    "the new head sees the [CLS] state", where, layout.pooling,
                )

        if max_length is None:
            max_length = int(own.get("max_length") or layout.max_seq_length or 256)
        limit = getattr(model.config, "max_position_embeddings", None)
        if isinstance(limit, int) and 0 < limit < max_length:
            logger.info("max_length %d exceeds the model's %d positions; using %d", max_length, limit, limit)
            max_length = limit

        tokenizer = load_tokenizer(root, sub)
        ranker = cls(model, tokenizer, max_length=int(max_length))
        ranker.new_head = bool(missing or not has_head)
        if gradient_checkpointing:
            ranker.gradient_checkpointing_enable()
        return ranker

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing in the transformer (a second forward for less activation memory)."""
        enable_checkpointing(self.model)

    # ----------------------------------------------------------------------------------------------------------
    # Training path
    # ----------------------------------------------------------------------------------------------------------

    def tokenize_pairs(self, queries: Sequence[str], passages: Sequence[str]) -> dict[str, torch.Tensor]:
        """Pairs -> ``[CLS] query [SEP] passage [SEP]`` tensors (N, L), padded to this batch's longest pair.

        Truncation is "longest_first" at ``max_length`` (see ``TRUNCATION`` for why).
        """
        if len(queries) != len(passages):
            raise ValueError(f"{len(queries)} queries but {len(passages)} passages")
        batch = self.tokenizer(
            list(queries),
            list(passages),
            padding=True,
            truncation=TRUNCATION,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return {key: value for key, value in batch.items()}

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised pairs (N, L) -> raw logits (N,), float32 even under autocast (losses want fp32)."""
        logits = self.model(**inputs).logits  # (N, 1)
        return logits.view(-1).float()

    def score_groups(self, inputs: dict[str, torch.Tensor], group_size: int) -> torch.Tensor:
        """Tokenised pairs, B*G rows in the group layout (types.py) -> (B, G) logits, positive in column 0."""
        scores = group_view(self(inputs), group_size)  # (B*G,) -> (B, G)
        check_group_layout(scores, scores.shape[0], group_size)
        return scores

    # ----------------------------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------------------------

    def predict(
        self,
        pairs: Sequence[tuple[str, str]],
        *,
        batch_size: int = 64,
        show_progress: bool = False,
        autocast_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> np.ndarray:
        """Raw logits, float32 (N,), in the order of ``pairs``.

        Under ``autocast_dtype`` the body runs in that precision but the one-logit output layer in float32: a bf16
        logit keeps 8 bits of mantissa, so close candidates of a list would tie (their order then arbitrary).

        Eval mode (previous train/eval flags restored after) and ``torch.inference_mode``; pairs are batched
        longest first (query + passage characters) to cut padding, then put back in order. ``autocast_dtype``
        runs under autocast; ``device`` moves the model there (and it stays), None uses its current device.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        pairs = [tuple(pair) for pair in pairs]
        for i, pair in enumerate(pairs):
            if len(pair) != 2 or not all(isinstance(t, str) for t in pair):
                raise TypeError(f"pairs[{i}] is not a (query, passage) pair of strings")
        if device is not None:
            self.to(device)
        dev = self.device
        out = np.empty(len(pairs), dtype=np.float32)
        if not pairs:
            return out
        if self.output_is_zero():  # a head that starts at zero (a re-ranker over a prior): every logit is 0
            out.fill(0.0)
            return out
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]), reverse=True)
        head = self._fp32_output_layer() if autocast_dtype is not None else nullcontext()
        with eval_mode(self), torch.inference_mode(), head:
            with tqdm(total=len(pairs), desc="re-rank", unit="pair", disable=not show_progress) as bar:
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    inputs = self.tokenize_pairs([pairs[i][0] for i in rows], [pairs[i][1] for i in rows])
                    inputs = {k: v.to(dev, non_blocking=True) for k, v in inputs.items()}
                    with autocast_context(dev, autocast_dtype):
                        scores = self(inputs)  # (b,)
                    out[rows] = scores.cpu().numpy()
                    bar.update(len(rows))
        return out

    def output_is_zero(self) -> bool:
        """True when the one-logit output layer is exactly zero (weight and bias): then every logit is 0, whatever
        the body computes, and :meth:`predict` returns zeros without running the body (the re-ranker over a prior
        checked before its first step costs nothing beyond the prior)."""
        heads = [m for m in self.model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
        if not heads:
            return False
        head = heads[-1]
        return not bool(head.weight.detach().any()) and (head.bias is None or not bool(head.bias.detach().any()))

    @contextmanager
    def _fp32_output_layer(self) -> Iterator[None]:
        """For the block, the last one-output Linear (the score head) computes in float32 outside autocast."""
        heads = [m for m in self.model.modules() if isinstance(m, nn.Linear) and m.out_features == 1]
        if not heads:
            yield
            return
        head = heads[-1]

        def fp32_forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device_type=x.device.type, enabled=False):
                return F.linear(x.float(), head.weight.float(), None if head.bias is None else head.bias.float())

        head.forward = fp32_forward  # an instance attribute: nn.Module.__call__ finds it before the class's
        try:
            yield
        finally:
            del head.forward

    # ----------------------------------------------------------------------------------------------------------
    # Saving
    # ----------------------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, card: dict[str, Any] | None = None) -> Path:
        """Write a transformers folder that ``CrossEncoder(path)`` loads with an identity activation, atomically.

        ``README.md`` is its model card (:mod:`rocketkd.models.card`), with ``card``'s training details when given.

        ``config.json`` gets the activation keys described in the module docstring; ``tokenizer_config.json`` gets
        ``model_max_length = max_length`` (what sentence-transformers truncates at); ``rocketkd.json`` records
        max_length. Built beside ``path`` and renamed into place; an existing ``path`` is replaced only once the new
        folder is complete.
        """
        settings = {"format": "rocketkd.cross_encoder", "version": 1, "max_length": self.max_length,
                    "truncation": TRUNCATION, "activation": "identity (raw logits)"}
        with atomic_dir(path) as tmp:
            self.model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)

            config_file = tmp / "config.json"
            config = json.loads(config_file.read_text(encoding="utf-8"))
            config["sentence_transformers"] = {
                "activation_fn": IDENTITY_ACTIVATION,
                "version": distribution_version("sentence-transformers"),
            }
            config["sbert_ce_default_activation_function"] = IDENTITY_ACTIVATION
            write_json(config_file, config)

            tok_file = tmp / "tokenizer_config.json"
            tok_config = json.loads(tok_file.read_text(encoding="utf-8")) if tok_file.is_file() else {}
            tok_config["model_max_length"] = self.max_length
            write_json(tok_file, tok_config)

            write_json(tmp / ROCKETKD_JSON, settings)
            write_model_card(tmp, kind="reranker", settings=settings, training=card)
        return Path(path)
