"""The embedding cache: a frozen encoder's corpus vectors, computed once and reused by every later encode of the same
corpus with the same encoder and settings (in one pipeline run, or across runs sharing the folder).

Which encoders: only one whose :meth:`~rocketkd.models.DualEncoder.frozen_source` is set -- loaded from a folder, in
eval mode, weights unchanged since loading. A model being trained (an optimizer step changes its weights in place)
is never cached, so the dev curve of a training run never fills the cache.

The key (sha256 over all of these, :func:`embedding_key`): the encoder's :meth:`~rocketkd.models.DualEncoder.fingerprint`
(the bytes of every weight and buffer, their dtypes, pooling, similarity, both max lengths, the tokenizer), the
tokenizer's own fingerprint, the corpus fingerprint and size, the autocast dtype, the device type and
:data:`CACHE_VERSION`. Batch composition is not in the key: under bf16 it moves vectors by float rounding only.

Where: the ``cache_dir`` given to :func:`~rocketkd.search.encode.encode_corpus` /
:meth:`~rocketkd.search.index.DenseIndex.build`, else the folder set by :func:`embedding_cache` (a context manager
the pipeline enters once around its stages), else ``$ROCKETKD_EMBEDDING_CACHE``; with none of them nothing is
cached. One entry is a folder ``emb-<key>/`` with ``embeddings.npy`` (float32 (N, H)) and ``meta.json`` (written
last: shape, a checksum of the array, what the key was made of). It is written beside its final name and renamed
into place; a load verifies shape and checksum and treats any mismatch as a miss (the entry is rebuilt).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rocketkd.data.tokens import tokenizer_fingerprint
from rocketkd.io import atomic_dir, read_json, write_json

if TYPE_CHECKING:
    from rocketkd.data.corpus import Corpus

__all__ = ["CACHE_VERSION", "ENV_VAR", "cache_folder", "copy_to", "embedding_cache", "embedding_key", "load", "store"]

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when encoding changes what vectors it gives for the same key
ENV_VAR = "ROCKETKD_EMBEDDING_CACHE"
_active: list[Path] = []  # folders set by embedding_cache(), innermost last


@contextlib.contextmanager
def embedding_cache(folder: str | os.PathLike | None) -> Iterator[Path | None]:
    """Cache frozen encoders' corpus vectors in ``folder`` for the duration (None: leave the setting as it is)."""
    if folder is None:
        yield cache_folder(None)
        return
    _active.append(Path(folder))
    try:
        yield _active[-1]
    finally:
        _active.pop()


def cache_folder(explicit: str | os.PathLike | None) -> Path | None:
    """The cache folder in force: ``explicit``, else the innermost :func:`embedding_cache`, else the environment."""
    if explicit is not None:
        return Path(explicit)
    if _active:
        return _active[-1]
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else None


def embedding_key(model: Any, corpus: Corpus, dtype: torch.dtype | None, device: torch.device) -> tuple[str, dict]:
    """(key, what it was made of) of ``model``'s vectors of the whole ``corpus`` (see the module docstring)."""
    parts = {
        "cache_version": CACHE_VERSION,
        "encoder_fingerprint": model.fingerprint(),
        "tokenizer": tokenizer_fingerprint(model.tokenizer),
        "passage_max_length": int(model.passage_max_length),
        "pooling": model.pooling,
        "similarity": model.similarity,
        "corpus_fingerprint": corpus.fingerprint(),
        "passages": len(corpus),
        "autocast": str(dtype).replace("torch.", "") if dtype is not None else "fp32",
        "device": device.type,
    }
    text = "|".join(f"{k}={parts[k]}" for k in sorted(parts))
    return hashlib.sha256(text.encode()).hexdigest()[:24], parts


def _checksum(emb: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for start in range(0, len(emb), 65_536):  # bounded copies of a memory-mapped array
        digest.update(np.ascontiguousarray(emb[start : start + 65_536]).view(np.uint8).tobytes())
    return digest.hexdigest()


def _entry(folder: Path, key: str) -> Path:
    return folder / f"emb-{key}"


def load(folder: Path, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached vectors (memory-mapped, read-only) or None: no entry, or one that fails its checks (then removed)."""
    entry = _entry(folder, key)
    if not (entry / "meta.json").is_file():
        return None
    try:
        meta = read_json(entry / "meta.json")
        emb = np.load(entry / "embeddings.npy", mmap_mode="r")
        problem = None
        if meta.get("key") != key or tuple(meta.get("shape", ())) != tuple(shape):
            problem = f"meta.json says shape {meta.get('shape')}, expected {list(shape)}"
        elif emb.shape != tuple(shape) or emb.dtype != np.float32:
            problem = f"embeddings.npy is {emb.dtype} {emb.shape}, expected float32 {shape}"
        elif meta.get("checksum") != _checksum(emb):
            problem = "embeddings.npy does not match its checksum"
    except Exception as exc:  # noqa: BLE001 - any damage (truncated .npy, bad JSON) is a miss
        problem = f"unreadable ({type(exc).__name__}: {exc})"
    if problem is not None:
        logger.warning("embedding cache entry %s is damaged (%s); encoding again", entry, problem)
        shutil.rmtree(entry, ignore_errors=True)
        return None
    return emb


def store(folder: Path, key: str, emb: np.ndarray, parts: dict) -> Path | None:
    """Write ``emb`` under ``key`` atomically; returns the entry, or None when the folder cannot be written."""
    entry = _entry(folder, key)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_dir(entry, fsync=False) as tmp:
            np.save(tmp / "embeddings.npy", np.asarray(emb, dtype=np.float32))
            write_json(tmp / "meta.json", {"key": key, "shape": list(emb.shape), "checksum": _checksum(emb), **parts})
    except OSError as exc:
        logger.warning("cannot write the embedding cache at %s (%s); not cached", entry, exc)
        return None
    return entry


def copy_to(emb: np.ndarray, out_path: str | os.PathLike) -> np.ndarray:
    """Cached vectors into ``out_path`` (a ``.npy`` file, written atomically), opened memory-mapped read-only."""
    final = Path(out_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=emb.shape)
        for start in range(0, len(emb), 65_536):
            out[start : start + 65_536] = emb[start : start + 65_536]
        out.flush()
        del out
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(final, mmap_mode="r")
