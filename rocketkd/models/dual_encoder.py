"""The dense retriever: a query tower and a passage tower (one shared module by default) with pooling.

Folder formats it reads and writes
----------------------------------
* a plain transformers encoder folder (``config.json`` + weights + tokenizer): mean pooling, dot product unless
  told otherwise;
* a sentence-transformers folder (``modules.json`` = Transformer or a query/document Router, [+ Pooling]
  [+ Normalize]): pooling mode from ``1_Pooling/config.json`` (mean or cls), cosine when a Normalize module is listed,
  the lengths from each Transformer's ``max_seq_length`` (:mod:`rocketkd.models.st_layout` reads and writes them);
* a folder written by :meth:`DualEncoder.save`: such a sentence-transformers folder -- one Transformer for shared
  towers, a Router over the two towers otherwise -- plus ``rocketkd.json`` with rocketkd's settings and a README.md
  model card. ``SentenceTransformer(path).encode_query`` / ``encode_document`` reproduce rocketkd's query and passage
  encodings exactly, each tower with its own length (tests/test_model_card.py checks both layouts);
* a two-tower folder saved before the Router (the query tower as a second full folder in ``query_encoder/``): still
  read, since indexes and runs hold such folders and reading them costs one folder name.

The folder helpers it shares with the cross-encoder (:func:`resolve_model_path`, ...) live in
:mod:`rocketkd.models._hf`; padding and batching of token ids in :mod:`rocketkd.models.batching`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from rocketkd.data.tokens import tokenize_texts
from rocketkd.errors import ModelLoadError
from rocketkd.io import atomic_dir
from rocketkd.models._hf import (
    ROCKETKD_JSON,
    autocast_context,
    enable_checkpointing,
    eval_mode,
    load_backbone,
    load_tokenizer,
    module_device,
    read_model_json,
    resolve_model_path,
    write_json,
)
from rocketkd.models.batching import check_batches, default_max_tokens, pad_token_ids, token_batches
from rocketkd.models.card import write_model_card
from rocketkd.models.pooling import POOLINGS
from rocketkd.models.st_layout import read_st_layout, write_st_model
from rocketkd.types import check_group_layout, group_view

logger = logging.getLogger(__name__)

LEGACY_QUERY_SUBFOLDER = "query_encoder"  # where two-tower folders saved before the Router layout keep queries
SIMILARITIES = ("dot", "cosine")


# --------------------------------------------------------------------------------------------------------------
# The dual encoder
# --------------------------------------------------------------------------------------------------------------


class DualEncoder(nn.Module):
    """Query and passage towers over a transformers encoder, pooled (mean or CLS) and optionally L2-normalised.

    With ``shared=True`` (the default) one module encodes both sides: ``query_encoder is passage_encoder`` and the
    state dict holds it once (under ``passage_encoder.``). With separate towers the query tower is registered as
    ``query_encoder``.

    Scores are dot products; ``similarity="cosine"`` normalises the pooled vectors first, so the dot product is
    the cosine.
    """

    def __init__(
        self,
        passage_encoder: nn.Module,
        tokenizer: Any,
        *,
        query_encoder: nn.Module | None = None,
        pooling: str = "mean",
        similarity: str = "dot",
        query_max_length: int = 64,
        passage_max_length: int = 256,
    ) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {sorted(POOLINGS)}, got {pooling!r}")
        if similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        for name, value in (
            ("query_max_length", query_max_length),
            ("passage_max_length", passage_max_length),
        ):
            if not isinstance(value, int) or value < 2:
                raise ValueError(f"{name} must be an int >= 2 (room for [CLS] and [SEP]), got {value!r}")
        self.passage_encoder = passage_encoder
        if query_encoder is not None and query_encoder is not passage_encoder:
            # Straight into _modules: add_module refuses a name that the query_encoder property already answers.
            self._modules["query_encoder"] = query_encoder
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.similarity = similarity
        self.query_max_length = query_max_length
        self.passage_max_length = passage_max_length

    # The query tower is the passage tower unless a separate one is registered under "query_encoder". A property
    # wins over nn.Module.__getattr__ (which only looks in _modules), so this is what ``model.query_encoder``
    # returns in both cases; assigning a module still registers it through nn.Module.__setattr__.
    @property
    def query_encoder(self) -> nn.Module:
        separate = self._modules.get("query_encoder")
        return separate if separate is not None else self.passage_encoder

    @property
    def shared(self) -> bool:
        return "query_encoder" not in self._modules

    @property
    def hidden_size(self) -> int:
        return int(self.passage_encoder.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return module_device(self)

    # ----------------------------------------------------------------------------------------------------------
    # Loading
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        shared: bool | None = None,
        pooling: str | None = None,
        similarity: str | None = None,
        query_max_length: int | None = None,
        passage_max_length: int | None = None,
        attn_implementation: str | None = "sdpa",
        gradient_checkpointing: bool = False,
    ) -> DualEncoder:
        """Load a transformers, sentence-transformers or rocketkd-saved folder (or Hub id); None = packaged MiniLM.

        Each setting left at None is read from the folder, else defaulted:

        * ``shared``: ``rocketkd.json``, else False for a query/document Router with a tower per route, else True;
        * ``pooling``: ``rocketkd.json``, else ``1_Pooling/config.json`` (mean or cls), else "mean";
        * ``similarity``: ``rocketkd.json``, else "cosine" if ``modules.json`` lists Normalize, else "dot";
        * ``passage_max_length``: ``rocketkd.json``, else the folder's ``max_seq_length``, else 256;
        * ``query_max_length``: ``rocketkd.json``, else the query tower's ``max_seq_length`` (or ``query_length``),
          else min(64, the folder's ``max_seq_length``), else 64.

        Both lengths are capped at the model's ``max_position_embeddings``. ``shared=False`` on a folder with one
        tower starts the query tower as a deep copy of the passage tower (separate weights); on a two-tower folder it
        loads the Router's query route (or ``query_encoder/`` of an older folder). Weights load in float32. Raises :class:`ModelLoadError`
        naming the folder when it cannot be loaded.
        """
        root = resolve_model_path(path)
        own = read_model_json(root, ROCKETKD_JSON) or {}
        if own.get("format") != "rocketkd.dual_encoder":
            own = {}  # e.g. a cross-encoder's rocketkd.json: not ours to read
        layout = read_st_layout(root)
        if layout.other_modules:
            raise ModelLoadError(
                f"{root}: modules.json lists {layout.other_modules}, which rocketkd's DualEncoder does not reproduce "
                "(it supports Transformer or a query/document Router of two, Pooling (mean/cls) and Normalize)"
            )

        if pooling is None:
            pooling = own.get("pooling") or layout.pooling or "mean"
            if pooling not in POOLINGS:
                raise ModelLoadError(
                    f"{root}: pooling mode {pooling!r} from the folder is not supported (use one of "
                    f"{sorted(POOLINGS)}, or pass pooling= to override)"
                )
        if similarity is None:
            similarity = own.get("similarity") or ("cosine" if layout.normalize else "dot")
        # a Router with a tower per route is two towers even without rocketkd.json (e.g. built in sentence-transformers)
        folder_shared = bool(own.get("shared", layout.query_subfolder is None))
        if shared is None:
            shared = folder_shared
        explicit_lengths = {"query_max_length": query_max_length, "passage_max_length": passage_max_length}
        if passage_max_length is None:
            passage_max_length = own.get("passage_max_length") or layout.max_seq_length or 256
        if query_max_length is None:
            query_max_length = (own.get("query_max_length") or layout.query_max_seq_length
                                or min(64, layout.max_seq_length or 64))

        tokenizer = load_tokenizer(root, layout.transformer_subfolder)
        passage_encoder = load_backbone(root, layout.transformer_subfolder, attn_implementation)
        query_encoder = None
        if not shared:
            if not folder_shared:
                query_sub = layout.query_subfolder or LEGACY_QUERY_SUBFOLDER  # the Router's route, or an old folder
                query_encoder = load_backbone(root, query_sub, attn_implementation)
            else:
                query_encoder = copy.deepcopy(passage_encoder)
        elif not folder_shared:
            logger.warning("%s was saved with separate towers; shared=True keeps only the passage tower", root)

        # Absolute position embeddings cannot go past max_position_embeddings: cap, and say so if it was asked for.
        limit = getattr(passage_encoder.config, "max_position_embeddings", None)
        lengths = {"query_max_length": int(query_max_length), "passage_max_length": int(passage_max_length)}
        if isinstance(limit, int) and limit > 0:
            for name, value in lengths.items():
                if value > limit:
                    if explicit_lengths[name] is not None:
                        logger.warning(
                            "%s=%d exceeds the model's %d positions; using %d", name, value, limit, limit
                        )
                    lengths[name] = limit

        model = cls(
            passage_encoder,
            tokenizer,
            query_encoder=query_encoder,
            pooling=pooling,
            similarity=similarity,
            **lengths,
        )
        if gradient_checkpointing:
            model.gradient_checkpointing_enable()
        model._loaded = (root, model._parameter_versions())
        return model

    def _parameter_versions(self) -> tuple[tuple[int, int], ...]:
        # torch bumps a tensor's _version on every in-place change (optimizer steps, load_state_dict, zero_)
        return tuple((id(t), t._version) for t in [*self.parameters(), *self.buffers()])

    def _apply(self, fn, *args, **kwargs):
        # moving or casting (.to(device), .half()) may give the tensors new storage and version counters: an encoder
        # unchanged since loading stays so (the cache key holds the dtype through the fingerprint)
        loaded = getattr(self, "_loaded", None)
        unchanged = loaded is not None and loaded[1] == self._parameter_versions()
        out = super()._apply(fn, *args, **kwargs)
        if unchanged:
            self._loaded = (loaded[0], self._parameter_versions())
        return out

    def frozen_source(self) -> str | None:
        """The folder this encoder was loaded from while its weights are still exactly as loaded (no in-place change
        since :meth:`from_pretrained`: no optimizer step, no ``load_state_dict``) and its towers are in eval mode; else None.
        Only such an encoder's vectors may be cached (:mod:`rocketkd.search.cache`): a model that trains never is."""
        loaded = getattr(self, "_loaded", None)
        if loaded is None or self.passage_encoder.training or self.query_encoder.training:
            return None
        root, versions = loaded
        return root if versions == self._parameter_versions() else None

    def gradient_checkpointing_enable(self) -> None:
        """Activation checkpointing in both towers (trades a second forward for activation memory)."""
        enable_checkpointing(self.passage_encoder)
        if not self.shared:
            enable_checkpointing(self.query_encoder)

    # ----------------------------------------------------------------------------------------------------------
    # Tokenising and encoding (training path: tensors in, tensors out, no mode or device changes)
    # ----------------------------------------------------------------------------------------------------------

    def _tokenize(self, texts: Sequence[str], max_length: int) -> dict[str, torch.Tensor]:
        # padding=True pads to the longest text of this batch only (dynamic padding), not to max_length.
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        return {key: value for key, value in batch.items()}

    def tokenize_queries(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Queries -> input_ids, attention_mask (+ token_type_ids if the model uses them), each (N, Lq)."""
        return self._tokenize(texts, self.query_max_length)

    def tokenize_passages(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Passages -> input_ids, attention_mask (+ token_type_ids if the model uses them), each (N, Lp)."""
        return self._tokenize(texts, self.passage_max_length)

    def _embed(self, encoder: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = encoder(**inputs).last_hidden_state  # (N, L, H)
        pooled = POOLINGS[self.pooling](hidden, inputs["attention_mask"])  # (N, H)
        if self.similarity == "cosine":
            pooled = F.normalize(pooled, p=2, dim=-1)  # same op and eps as sentence-transformers' Normalize
        return pooled

    def encode_queries(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised queries (N, Lq) -> pooled vectors (N, H), unit length when similarity is cosine."""
        return self._embed(self.query_encoder, inputs)

    def encode_passages(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Tokenised passages (N, Lp) -> pooled vectors (N, H), unit length when similarity is cosine."""
        return self._embed(self.passage_encoder, inputs)

    def forward(
        self,
        query_inputs: dict[str, torch.Tensor] | None = None,
        passage_inputs: dict[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(query vectors (B, H) or None, passage vectors (M, H) or None).

        Encoding through ``forward`` (rather than calling encode_* directly) is what DistributedDataParallel
        needs to hook gradient synchronisation.
        """
        q = self.encode_queries(query_inputs) if query_inputs is not None else None
        p = self.encode_passages(passage_inputs) if passage_inputs is not None else None
        return q, p

    # ----------------------------------------------------------------------------------------------------------
    # Scoring
    # ----------------------------------------------------------------------------------------------------------

    @staticmethod
    def score_groups(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Each query against its own G passages: q (B, H), p (B*G, H) in the group layout -> (B, G).

        Row b*G + g of ``p`` is passage g of query b (types.py); column 0 is the positive.
        """
        batch = q.shape[0]
        if batch == 0 or p.shape[0] % batch != 0 or p.shape[0] < batch:
            raise ValueError(f"{p.shape[0]} passages do not split into {batch} equal groups")
        group_size = p.shape[0] // batch
        groups = group_view(p, group_size)  # (B, G, H)
        scores = torch.bmm(groups, q.unsqueeze(-1)).squeeze(-1)  # (B, G, H) @ (B, H, 1) -> (B, G)
        check_group_layout(scores, batch, group_size)
        return scores

    @staticmethod
    def score_all(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        """Every query against every passage (in-batch negatives): q (B, H), p (M, H) -> (B, M)."""
        return q @ p.transpose(0, 1)

    # ----------------------------------------------------------------------------------------------------------
    # Inference
    # ----------------------------------------------------------------------------------------------------------

    def encode(
        self,
        texts: Sequence[str],
        *,
        side: str = "passage",
        batch_size: int = 64,
        show_progress: bool = False,
        autocast_dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        max_tokens: int | None = None,
    ) -> np.ndarray:
        """Embed texts for search: float32 array (N, H) in the order of ``texts``.

        The texts are tokenised in batch calls (:func:`~rocketkd.data.tokens.tokenize_texts`), then encoded by
        :meth:`encode_ids` (longest first, by token count, in batches of at most ``batch_size`` rows and
        ``max_tokens`` padded tokens). ``device`` moves the model there (and it stays there); None uses the device
        the model is on.
        """
        if side not in ("query", "passage"):
            raise ValueError(f"side must be 'query' or 'passage', got {side!r}")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        if device is not None:
            self.to(device)
        max_length = self.query_max_length if side == "query" else self.passage_max_length
        return self.encode_ids(
            tokenize_texts(self.tokenizer, texts, max_length),
            side=side,
            batch_size=batch_size,
            max_tokens=max_tokens,
            show_progress=show_progress,
            autocast_dtype=autocast_dtype,
        )

    def pad_ids(self, seqs: Sequence[Sequence[int] | np.ndarray]) -> dict[str, torch.Tensor]:
        """Token id sequences -> the padded tensors of this encoder's tokenizer (:func:`pad_token_ids`)."""
        return pad_token_ids(seqs, self.tokenizer)

    def encode_ids(
        self,
        seqs: Sequence[Sequence[int] | np.ndarray],
        *,
        side: str = "passage",
        batch_size: int = 64,
        max_tokens: int | None = None,
        show_progress: bool = False,
        autocast_dtype: torch.dtype | None = None,
        batches: Sequence[slice] | None = None,
    ) -> np.ndarray:
        """Embed pre-tokenised texts: float32 array (N, H) in the order of ``seqs``.

        Runs in eval mode under ``torch.inference_mode`` (each submodule's train/eval flag is restored after).
        Sequences go longest first by token count, so each batch pads to similar lengths and an out-of-memory shows
        in the first batch; a batch holds at most ``batch_size`` rows and at most ``max_tokens`` padded tokens (rows
        x its longest; None: :func:`default_max_tokens` of the device). With ``autocast_dtype`` (e.g.
        ``torch.bfloat16``) the towers run under autocast; cosine vectors are re-normalised in float32 afterwards.
        On a GPU the padded batches are copied from pinned memory without blocking and the vectors stay on the
        device until the end, so the host never waits for a batch.

        ``batches``: batches planned by the caller (consecutive slices covering ``seqs``, see
        :func:`~rocketkd.models.batching.check_batches`), each run as one batch exactly as given -- same rows, same
        order, same padding -- with no sort and no cut (``batch_size`` and ``max_tokens`` are then unused).
        :func:`~rocketkd.search.encode.encode_corpus` plans them so that every process count runs the same batches.
        """
        if side not in ("query", "passage"):
            raise ValueError(f"side must be 'query' or 'passage', got {side!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        dev = self.device
        n = len(seqs)
        if not n:
            return np.empty((0, self.hidden_size), dtype=np.float32)
        if batches is None:
            budget = default_max_tokens(dev) if max_tokens is None else int(max_tokens)
            lengths = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=n)
            order = np.argsort(-lengths, kind="stable")  # longest first; equal lengths keep their input order
            batches = token_batches(lengths[order], batch_size, budget)
        else:
            order = np.arange(n, dtype=np.int64)  # the caller's batches, in the caller's order
            check_batches(batches, n)
        embed = self.encode_queries if side == "query" else self.encode_passages
        out = torch.empty((n, self.hidden_size), dtype=torch.float32, device=dev)
        pin = dev.type == "cuda"
        with eval_mode(self), torch.inference_mode():
            with tqdm(total=n, desc=f"encode {side}s", unit="text", disable=not show_progress) as bar:
                for batch in batches:
                    rows = order[batch]
                    inputs = self.pad_ids([seqs[i] for i in rows.tolist()])
                    inputs = {k: (v.pin_memory() if pin else v).to(dev, non_blocking=True) for k, v in inputs.items()}
                    with autocast_context(dev, autocast_dtype):
                        vectors = embed(inputs)  # (b, H)
                    vectors = vectors.float()
                    if self.similarity == "cosine" and autocast_dtype is not None:
                        vectors = F.normalize(vectors, p=2, dim=-1)
                    out[torch.from_numpy(rows).to(dev, non_blocking=True)] = vectors
                    bar.update(len(rows))
        return out.cpu().numpy()  # the one sync point with the device

    # ----------------------------------------------------------------------------------------------------------
    # Saving and identity
    # ----------------------------------------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """rocketkd's own settings, as written to ``rocketkd.json``."""
        return {
            "format": "rocketkd.dual_encoder",
            "version": 1,
            "shared": self.shared,
            "pooling": self.pooling,
            "similarity": self.similarity,
            "query_max_length": self.query_max_length,
            "passage_max_length": self.passage_max_length,
        }

    def save(self, path: str | os.PathLike[str], *, card: dict[str, Any] | None = None) -> Path:
        """Write a folder that ``SentenceTransformer(path)`` loads with rocketkd's query and passage encodings, atomically.

        The sentence-transformers files (:func:`~rocketkd.models.st_layout.write_st_model`): shared towers as one
        Transformer with ``query_length`` / ``document_length``; separate towers as a Router whose "query" route is
        the query tower (query_max_length) and whose "document" route, also a plain ``encode``'s, is the passage
        tower (passage_max_length). Beside them ``rocketkd.json`` (:meth:`settings`) and ``README.md``, the model
        card (:mod:`rocketkd.models.card`) with ``card``'s training details when given. The folder is built beside
        ``path`` and renamed into place; an existing ``path`` is replaced only once the new folder is complete.
        """
        with atomic_dir(path) as tmp:
            write_st_model(tmp, passage=self.passage_encoder, query=None if self.shared else self.query_encoder,
                           tokenizer=self.tokenizer, pooling=self.pooling, similarity=self.similarity,
                           query_length=self.query_max_length, passage_length=self.passage_max_length)
            write_json(tmp / ROCKETKD_JSON, self.settings())
            write_model_card(tmp, kind="retriever", settings=self.settings(), training=card)
        return Path(path)

    def fingerprint(self) -> str:
        """16 hex digits of sha256 over the settings, the tokenizer's size and every parameter/buffer's bytes.

        Identifies an encoder for the index (which refuses vectors from a different one). The raw bytes are hashed
        (no float formatting), so MiniLM (90 MB) takes a fraction of a second. Casting the model to another dtype
        changes the fingerprint, as it changes the vectors.
        """
        digest = hashlib.sha256()
        settings = {k: v for k, v in self.settings().items() if k != "version"}
        settings["tokenizer"] = [type(self.tokenizer).__name__, len(self.tokenizer)]
        digest.update(json.dumps(settings, sort_keys=True).encode())
        towers = [("passage", self.passage_encoder)] + (
            [] if self.shared else [("query", self.query_encoder)]
        )
        for side, tower in towers:
            for name, tensor in sorted(tower.state_dict().items()):
                flat = tensor.detach().to("cpu").contiguous().reshape(-1)
                digest.update(f"{side}.{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
                digest.update(flat.view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

