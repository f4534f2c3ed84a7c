"""Encoding a corpus or a query set with a :class:`~rocketkd.models.DualEncoder`, in bounded memory.

A :class:`~rocketkd.models.DualEncoder` encodes token ids, not texts: the corpus's ids for its tokenizer and passage
max length are made once (:mod:`rocketkd.data.tokens`: stored next to the corpus's Arrow file, memory-mapped) and
reused by every later encode. Rows are sorted by token count (longest first, so padding is small and an
out-of-memory error shows on the first batch rather than the last) and cut into batches bounded by rows and by padded
tokens; the batches go to the encoder about ``CHUNK_BATCHES * batch_size`` rows at a time and their vectors are
written back to their rows of a preallocated output array: either in memory or a ``.npy`` file memory-mapped on
disk. No step holds the texts or the token ids of the whole corpus. A small subset of the rows (under half the
corpus) is tokenised here instead, in chunks of rows that the encoder sorts and cuts. Any other encoder object (one
with an ``encode(texts, ...)`` method only) gets each chunk's texts, sorted by characters.

A frozen encoder's whole-corpus vectors are cached when a cache folder is set (:mod:`rocketkd.search.cache`).

Several processes (torchrun / ``accelerate launch`` with a process group initialised): :func:`encode_corpus` plans
the batches (or chunks) of a one-process run and deals them out, batch i to rank i % world; the main process gathers
the vectors by row index (see :mod:`rocketkd.distributed`) and the other processes get None. Each batch has the rows,
order and padding it has in one process, so the index is the same bits whatever the number of processes (bf16
included; tests/test_multiprocess_index.py). ``distributed=False`` encodes everything locally.

Autocast names (``index.autocast`` in the config): ``"auto"``, ``"bf16"``, ``"fp16"``, ``"no"``.
"""

from __future__ import annotations

import contextlib
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
from rocketkd.distributed import gather_rows, main_process_first, shard_rows, world
from rocketkd.errors import ConfigError
from rocketkd.models.batching import default_max_tokens, token_batches
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
    into place when complete. ``chunk_size``: rows per encoder call (whole batches; default ``50 * batch_size``),
    and rows per chunk of a subset tokenised here.
    ``max_tokens``: padded tokens per batch (default by device, see
    :func:`~rocketkd.models.dual_encoder.default_max_tokens`); a batch also holds at most ``batch_size`` rows.

    Token ids come from :func:`~rocketkd.data.tokens.corpus_token_ids` when most of the corpus is encoded (computed
    once per corpus, tokenizer and max length, then reused), else the rows are tokenised here in batch calls. Rows
    go longest first by token count, across all the rows when the corpus's ids are at hand, else within a chunk.

    ``cache_dir`` (else the folder of :func:`~rocketkd.search.cache.embedding_cache`, else
    ``$ROCKETKD_EMBEDDING_CACHE``; see :mod:`rocketkd.search.cache`): a whole-corpus encode by a frozen encoder
    (loaded from a folder, weights unchanged) in one process is looked up there first and stored there after.

    ``distributed`` (default: True when a process group of several processes is initialised, see
    :mod:`rocketkd.distributed`): the batches of a one-process run are dealt out (batch i to rank i % world; chunks
    likewise), so the vectors are bit-identical to one process's, and the main process gathers them by row index.
    The main process
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

    # The plan: `where` orders the output rows, `units` cut it into consecutive slices. With the corpus's token ids
    # at hand, `where` is every row longest first by token count and a unit is one batch (rows and padded tokens
    # bounded); otherwise `where` is the input order and a unit is a chunk of rows, which the encoder sorts and cuts
    # itself. The plan depends on the rows alone, never on the number of processes: several processes deal out the
    # units (unit i to rank i % world), so each batch has the rows, order and padding of a one-process run and its
    # vectors are the same bits (bf16 included).
    tokens = None
    if pretokenised and 2 * n >= len(corpus):  # most of the corpus: its token ids, made once and reused
        with main_process_first() if sharded else contextlib.nullcontext():  # one process tokenises and stores
            tokens = corpus_token_ids(corpus, model.tokenizer, int(model.passage_max_length))
    if tokens is not None:
        lengths = tokens.lengths(wanted)
        where = np.argsort(-lengths, kind="stable")
        budget = default_max_tokens(device) if max_tokens is None else int(max_tokens)
        units = token_batches(lengths[where], batch_size, budget)
    else:
        where = np.arange(n, dtype=np.int64)
        units = [slice(s, min(n, s + chunk)) for s in range(0, n, chunk)]
    mine = units[rank::size] if sharded else units

    def calls():
        """This process's units grouped into encoder calls: whole batches up to ``chunk`` rows, or one chunk."""
        group: list[slice] = []
        for unit in mine:
            group.append(unit)
            if tokens is None or sum(u.stop - u.start for u in group) >= chunk:
                yield group
                group = []
        if group:
            yield group

    def encode(group: list[slice]) -> tuple[np.ndarray, np.ndarray]:
        """(output positions, their vectors (b, H)) of one call."""
        positions = np.concatenate([where[u] for u in group])
        if tokens is not None:
            sizes = np.cumsum([0] + [u.stop - u.start for u in group])
            emb = model.encode_ids(
                tokens.rows(wanted[positions]),
                side="passage",
                autocast_dtype=dtype,
                batches=[slice(int(a), int(b)) for a, b in zip(sizes[:-1], sizes[1:])],
            )
        elif pretokenised:  # a small share: tokenise just these rows, in batch calls
            seqs = tokenize_texts(model.tokenizer, corpus.texts(wanted[positions]), int(model.passage_max_length))
            emb = model.encode_ids(
                seqs, side="passage", batch_size=batch_size, max_tokens=max_tokens, autocast_dtype=dtype
            )
        else:  # an encoder of texts: longest first by characters, the least padding it can get from us
            texts = corpus.texts(wanted[positions])
            order = np.argsort(
                -np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable"
            )
            emb = np.empty((len(texts), hidden), dtype=np.float32)
            emb[order] = _check_output(
                model.encode([texts[i] for i in order], side="passage", batch_size=batch_size,
                             show_progress=False, autocast_dtype=dtype),
                len(texts), hidden, "encode_corpus",
            )
        return positions, _check_output(emb, len(positions), hidden, "encode_corpus")

    def fill(out: np.ndarray, progress: bool) -> np.ndarray | None:
        """Encode this process's units into `out` (at their output rows; sharded: in dealing order, and return the
        output rows of `out`'s rows)."""
        taken: list[np.ndarray] = []
        at = 0
        total = sum(u.stop - u.start for u in mine)
        with tqdm(total=total, desc="encode passages", unit="psg", disable=not progress) as bar:
            for group in calls():
                positions, emb = encode(group)
                if sharded:
                    out[at : at + len(positions)] = emb
                    taken.append(positions)
                    at += len(positions)
                else:
                    out[positions] = emb
                bar.update(len(positions))
        return np.concatenate(taken) if taken else np.zeros(0, dtype=np.int64)

    local: np.ndarray | None = None
    local_rows: np.ndarray | None = None
    if sharded:  # this process's units first, in memory; the main process then gathers every unit into `out`
        local = np.empty((sum(u.stop - u.start for u in mine), hidden), dtype=np.float32)
        local_rows = fill(local, show_progress and rank == 0)

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
            assert local is not None and local_rows is not None
            out = gather_rows(local, local_rows, n, out=out)  # each vector travels with its output row
            if out is None:  # not the main process: its share is with the main process now
                return None
        else:
            assert out is not None
            fill(out, show_progress)
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
    max_tokens: int | None = None,
    distributed: bool | None = None,
) -> np.ndarray | None:
    """Query embeddings, float32 ``(Q, H)`` in the order given (queries are short: one call, no chunking).

    ``distributed`` (default: True when a process group of several processes is initialised): as in
    :func:`encode_corpus`, the batches of a one-process run (longest first by token count, at most ``batch_size``
    rows and ``max_tokens`` padded tokens) are dealt out, batch i to rank i % world, so every query vector is the
    same bits whatever the number of processes (bf16 included); the main process gathers and returns them, **every
    other process returns None** (a collective: every process calls it with the same texts).
    """
    texts = list(texts)
    hidden = int(model.hidden_size)
    rank, size = world()
    sharded = size > 1 and distributed is not False
    if not texts:
        return None if sharded and rank != 0 else np.zeros((0, hidden), dtype=np.float32)
    device = _model_device(model)
    dtype = resolve_autocast(autocast, device)
    if not sharded:
        emb = model.encode(texts, side="query", batch_size=batch_size, show_progress=show_progress,
                           autocast_dtype=dtype, **({"max_tokens": max_tokens} if max_tokens is not None else {}))
        return _check_output(emb, len(texts), hidden, "encode_queries")
    if callable(getattr(model, "encode_ids", None)) and getattr(model, "tokenizer", None) is not None:
        seqs = tokenize_texts(model.tokenizer, texts, int(model.query_max_length))
        lengths = np.fromiter((len(x) for x in seqs), dtype=np.int64, count=len(seqs))
        order = np.argsort(-lengths, kind="stable")  # the one-process plan of DualEncoder.encode_ids
        budget = default_max_tokens(device) if max_tokens is None else int(max_tokens)
        mine = token_batches(lengths[order], batch_size, budget)[rank::size]
        positions = np.concatenate([order[u] for u in mine]) if mine else np.zeros(0, dtype=np.int64)
        sizes = np.cumsum([0] + [u.stop - u.start for u in mine])
        emb = (model.encode_ids([seqs[i] for i in positions.tolist()], side="query", autocast_dtype=dtype,
                                batches=[slice(int(a), int(b)) for a, b in zip(sizes[:-1], sizes[1:])])
               if mine else np.zeros((0, hidden), dtype=np.float32))
    else:  # an encoder of texts: a contiguous share each (its own batching is not ours to plan)
        share = shard_rows(len(texts), rank, size)
        positions = np.arange(share.start, share.stop, dtype=np.int64)
        emb = (model.encode(texts[share.start : share.stop], side="query", batch_size=batch_size,
                            show_progress=False, autocast_dtype=dtype)
               if len(share) else np.zeros((0, hidden), dtype=np.float32))
    emb = _check_output(np.asarray(emb, dtype=np.float32), len(positions), hidden, "encode_queries")
    return gather_rows(emb, positions, len(texts))
