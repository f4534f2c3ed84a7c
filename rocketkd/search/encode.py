"""Encoding a corpus or a query set with a :class:`~rocketkd.models.DualEncoder`, in bounded memory.

A :class:`~rocketkd.models.DualEncoder` encodes token ids, not texts: the corpus's ids for its tokenizer and passage
max length are made once (:mod:`rocketkd.data.tokens`: stored next to the corpus's Arrow file, memory-mapped) and
reused by every later encode. Rows are sorted by token count (longest first, so padding is small and an
out-of-memory error shows on the first batch rather than the last), walked in chunks of ``CHUNK_BATCHES *
batch_size`` rows, encoded in batches bounded by rows and by padded tokens, and written back to their rows of a
preallocated output array: either in memory or a ``.npy`` file memory-mapped on disk. No step holds the texts of the
whole corpus. Any other encoder object (one with an ``encode(texts, ...)`` method only) gets each chunk's texts,
sorted by characters.

A frozen encoder's whole-corpus vectors are cached when a cache folder is set (:mod:`rocketkd.search.cache`).

Several processes (torchrun / ``accelerate launch`` with a process group initialised): :func:`encode_corpus` encodes
only this process's contiguous share of the rows and the main process gathers the shares by row index (see
:mod:`rocketkd.distributed`); the other processes get None. ``distributed=False`` encodes everything locally.

Autocast names (``index.autocast`` in the config): ``"auto"``, ``"bf16"``, ``"fp16"``, ``"no"``.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm.auto import tqdm

from rocketkd.data.tokens import corpus_token_ids, tokenize_texts
from rocketkd.distributed import gather_rows, shard_rows, world
from rocketkd.errors import ConfigError
from rocketkd.search.cache import cache_folder, copy_to, embedding_key
from rocketkd.search.cache import load as cache_load
from rocketkd.search.cache import store as cache_store

if TYPE_CHECKING:
    from rocketkd.data.corpus import Corpus
    from rocketkd.models import DualEncoder

__all__ = [
    "AUTOCAST_NAMES",
    "CHUNK_BATCHES",
    "cpu_supports_bf16",
    "encode_corpus",
    "encode_queries",
    "resolve_autocast",
]

AUTOCAST_NAMES = ("auto", "bf16", "fp16", "no")
CHUNK_BATCHES = 50  # batches per length-sorted chunk of the corpus

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 arithmetic (AVX512-BF16 or AMX-BF16); otherwise bf16 is emulated and slow.

    Reads ``/proc/cpuinfo`` (Linux); elsewhere falls back to torch's capability string (``"AVX512_BF16"``/``"AMX"``
    style names only, so a plain AVX512 CPU counts as no).
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    try:
        capability = str(torch.backends.cpu.get_cpu_capability()).upper()
    except Exception:  # pragma: no cover - very old torch
        return False
    return "BF16" in capability or "AMX" in capability


def resolve_autocast(name: str | None, device: torch.device | str | None = None) -> torch.dtype | None:
    """The autocast dtype for an autocast name on ``device`` (None = no autocast, full float32).

    ``"auto"``: bf16 on a CUDA device that supports it; bf16 on a CPU with native bf16 (AVX512-BF16 or AMX, see
    :func:`cpu_supports_bf16`); otherwise None (fp16 is never chosen automatically: it can overflow in large
    models). ``"bf16"``/``"fp16"`` are taken as asked; ``"no"`` (or None) is None.
    """
    key = "no" if name is None else str(name).lower()
    if key in ("no", "none", "off", "fp32", "false"):
        return None
    if key == "bf16":
        return torch.bfloat16
    if key == "fp16":
        return torch.float16
    if key != "auto":
        raise ConfigError(f"unknown autocast {name!r}: expected one of {', '.join(AUTOCAST_NAMES)}")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if dev.type == "cpu":
        return torch.bfloat16 if cpu_supports_bf16() else None
    return None


def _model_device(model) -> torch.device:
    device = getattr(model, "device", None)
    if device is not None:
        return torch.device(device)
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device("cpu")


def _check_output(emb: np.ndarray, n: int, hidden: int, what: str) -> np.ndarray:
    emb = np.asarray(emb, dtype=np.float32)
    if emb.shape != (n, hidden):
        raise RuntimeError(f"{what}: the encoder returned shape {emb.shape}, expected ({n}, {hidden})")
    return emb


def encode_corpus(
    model: DualEncoder,
    corpus: Corpus,
    *,
    batch_size: int = 128,
    autocast: str = "auto",
    out_path: str | os.PathLike | None = None,
    show_progress: bool = True,
    rows: Sequence[int] | np.ndarray | None = None,
    chunk_size: int | None = None,
    distributed: bool | None = None,
    max_tokens: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> np.ndarray | None:
    """Passage embeddings of ``corpus`` (or of its ``rows``), float32 ``(N, H)``, row i for ``rows[i]``.

    ``rows``: a subset of corpus rows, in the order the output should have (e.g. one process's shard); default all
    rows in corpus order. ``out_path``: write into a ``.npy`` file memory-mapped on disk (readable with
    ``np.load(path, mmap_mode="r")``) and return it opened read-only; it is filled under a temporary name and renamed
    into place when complete. ``chunk_size``: rows per length-sorted chunk (default ``50 * batch_size``).
    ``max_tokens``: padded tokens per batch (default by device, see
    :func:`~rocketkd.models.dual_encoder.default_max_tokens`); a batch also holds at most ``batch_size`` rows.

    Token ids come from :func:`~rocketkd.data.tokens.corpus_token_ids` when most of the corpus is encoded (computed
    once per corpus, tokenizer and max length, then reused), else the rows are tokenised here in batch calls. Rows
    go longest first by token count, across the whole corpus when its ids are at hand.

    ``cache_dir`` (else the folder of :func:`~rocketkd.search.cache.embedding_cache`, else
    ``$ROCKETKD_EMBEDDING_CACHE``; see :mod:`rocketkd.search.cache`): a whole-corpus encode by a frozen encoder
    (loaded from a folder, weights unchanged) in one process is looked up there first and stored there after.

    ``distributed`` (default: True when a process group of several processes is initialised, see
    :mod:`rocketkd.distributed`): every process encodes only its contiguous share of the rows
    (:func:`~rocketkd.distributed.shard_rows`) and the main process gathers the shares by row index. The main process
    returns the full ``(N, H)`` array (and alone writes ``out_path``); **every other process returns None**. Every
    process must call it (it is a collective). ``False``: encode every row here, as in one process.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    chunk = int(chunk_size) if chunk_size is not None else CHUNK_BATCHES * batch_size
    if chunk < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    wanted = (
        np.arange(len(corpus), dtype=np.int64)
        if rows is None
        else np.asarray(rows, dtype=np.int64).reshape(-1)
    )
    n = len(wanted)
    hidden = int(model.hidden_size)
    device = _model_device(model)
    dtype = resolve_autocast(autocast, device)
    rank, size = world()
    sharded = size > 1 and distributed is not False
    # a DualEncoder takes token ids; any other encoder (a test's fake, a wrapper) gets texts through .encode
    pretokenised = callable(getattr(model, "encode_ids", None)) and getattr(model, "tokenizer", None) is not None

    cached = None
    folder = cache_folder(cache_dir) if rows is None and not sharded and pretokenised else None
    source = model.frozen_source() if folder is not None else None
    if source is not None:
        key, parts = embedding_key(model, corpus, dtype, device)
        hit = cache_load(folder, key, (n, hidden))
        if hit is not None:
            logger.info("corpus vectors of %s by %s reused from the embedding cache (%s)", corpus.source, source, key)
            return copy_to(hit, out_path) if out_path is not None else np.array(hit)
        cached = (key, parts)

    def fill_texts(out: np.ndarray, which: np.ndarray, bar) -> None:
        for start in range(0, len(which), chunk):
            chunk_rows = which[start : start + chunk]
            texts = corpus.texts(chunk_rows)
            # longest first: least padding per batch, and the largest batch runs first
            order = np.argsort(
                -np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable"
            )
            emb = model.encode(
                [texts[i] for i in order],
                side="passage",
                batch_size=batch_size,
                show_progress=False,
                autocast_dtype=dtype,
            )
            emb = _check_output(emb, len(texts), hidden, "encode_corpus")
            out[start + order] = emb  # (chunk, H) back to corpus order
            bar.update(len(texts))

    def fill_ids(out: np.ndarray, which: np.ndarray, bar) -> None:
        max_length = int(model.passage_max_length)
        if 2 * len(which) >= len(corpus):  # most of the corpus: its token ids, made once and reused
            tokens = corpus_token_ids(corpus, model.tokenizer, max_length)
            # longest first over all the rows, so every batch pads to near-equal lengths
            where = np.argsort(-tokens.lengths(which), kind="stable")
            fetch = lambda positions: tokens.rows(which[positions])  # noqa: E731
        else:  # a small share (a test's rows, one of many processes): tokenise just these rows, in batch calls
            where = np.arange(len(which), dtype=np.int64)
            fetch = lambda positions: tokenize_texts(  # noqa: E731
                model.tokenizer, corpus.texts(which[positions]), max_length
            )
        for start in range(0, len(where), chunk):
            positions = where[start : start + chunk]
            emb = model.encode_ids(
                fetch(positions), side="passage", batch_size=batch_size, max_tokens=max_tokens, autocast_dtype=dtype
            )
            out[positions] = _check_output(emb, len(positions), hidden, "encode_corpus")
            bar.update(len(positions))

    def fill(out: np.ndarray, which: np.ndarray, progress: bool) -> None:
        with tqdm(total=len(which), desc="encode passages", unit="psg", disable=not progress) as bar:
            (fill_ids if pretokenised else fill_texts)(out, which, bar)

    local: np.ndarray | None = None
    share = range(n)
    if sharded:  # this process's rows first, in memory; the main process then gathers every share into `out`
        share = shard_rows(n, rank, size)
        local = np.empty((len(share), hidden), dtype=np.float32)
        fill(local, wanted[share.start : share.stop], show_progress and rank == 0)

    tmp: Path | None = None
    out: np.ndarray | None = None
    if rank == 0 or not sharded:
        if out_path is None:
            out = np.empty((n, hidden), dtype=np.float32)
        else:
            final = Path(out_path)
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, hidden))

    try:
        if sharded:
            assert local is not None
            out = gather_rows(local, share, n, out=out)
            if out is None:  # not the main process: its share is with the main process now
                return None
        else:
            assert out is not None
            fill(out, wanted, show_progress)
        if cached is not None and folder is not None:
            if cache_store(folder, cached[0], out, cached[1]) is not None:
                logger.info("corpus vectors of %s by %s stored in the embedding cache (%s)", corpus.source, source,
                            cached[0])
        if tmp is not None:
            out.flush()  # type: ignore[union-attr]
            del out
            os.replace(tmp, final)
            tmp = None
            return np.load(final, mmap_mode="r")
        return out
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def encode_queries(
    model: DualEncoder,
    texts: Sequence[str],
    *,
    batch_size: int = 128,
    autocast: str = "auto",
    show_progress: bool = False,
) -> np.ndarray:
    """Query embeddings, float32 ``(Q, H)`` in the order given (queries are short: one call, no chunking)."""
    texts = list(texts)
    hidden = int(model.hidden_size)
    if not texts:
        return np.zeros((0, hidden), dtype=np.float32)
    dtype = resolve_autocast(autocast, _model_device(model))
    emb = model.encode(
        texts, side="query", batch_size=batch_size, show_progress=show_progress, autocast_dtype=dtype
    )
    return _check_output(emb, len(texts), hidden, "encode_queries")
