"""Token ids of a corpus, computed once per (corpus, tokenizer, max length) and reused by every encode of it.

:func:`corpus_token_ids` returns a :class:`TokenIds`: every row's ids (truncated to the max length, special tokens
included, no padding) as one flat ``int32`` array plus row offsets. It is made once and then reused:

* **in this process**: a small memo keyed by (corpus fingerprint, tokenizer fingerprint, max length), so the
  baselines, mining, the prior and the final index of one run tokenise the corpus once;
* **across processes and runs**: for a corpus read from a file (its Arrow cache has a folder), the ids are stored next
  to the Arrow file: ``<arrow name>.tokens-<key>/`` holding ``ids.bin`` (int32), ``offsets.npy`` (int64, N+1) and
  ``meta.json``, written last as the completion marker, with the sizes and a checksum of the two arrays that a load
  verifies; a damaged entry is rebuilt.

Tokenisation runs in blocks of :data:`TOKENIZE_BLOCK` texts, each one batch call of the tokenizer (a fast tokenizer
spreads a batch over its Rust thread pool unless ``TOKENIZERS_PARALLELISM=false``), never one text at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rocketkd.io import atomic_dir, read_json, write_json

if TYPE_CHECKING:
    from rocketkd.data.corpus import Corpus

__all__ = ["TOKENIZE_BLOCK", "TokenIds", "corpus_token_ids", "tokenize_texts", "tokenizer_fingerprint"]

logger = logging.getLogger(__name__)

TOKENIZE_BLOCK = 2048  # texts per batch call of the tokenizer: plenty for its thread pool; its output for
# 2,048 texts (Rust encodings + Python lists, about 250 bytes per token) is the largest thing tokenising holds
_FORMAT = 1  # bump when the stored layout changes
_MEMO_SIZE = 8  # (corpus, tokenizer, length) entries kept in this process
_memo: OrderedDict[str, TokenIds] = OrderedDict()


class TokenIds:
    """Row i's token ids are ``ids[offsets[i]:offsets[i + 1]]`` (int32, no padding)."""

    def __init__(self, ids: np.ndarray, offsets: np.ndarray) -> None:
        if offsets.ndim != 1 or len(offsets) < 1 or int(offsets[-1]) != len(ids):
            raise ValueError("token offsets do not match the ids")
        self.ids = ids
        self.offsets = offsets

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self, rows: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Tokens per row (int64), of ``rows`` in the order given or of every row."""
        lengths = np.diff(self.offsets)
        return lengths if rows is None else lengths[np.asarray(rows, dtype=np.int64)]

    def rows(self, rows: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """The ids of each row of ``rows``, in the order given."""
        offsets = self.offsets
        return [self.ids[offsets[r] : offsets[r + 1]] for r in np.asarray(rows, dtype=np.int64).tolist()]


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """16 hex digits identifying what a tokenizer makes of a text: its class and, for a fast tokenizer, its whole
    pipeline (normaliser, pre-tokeniser, vocabulary, post-processor) without the truncation and padding state that
    calls leave on it; for a slow one, its vocabulary and init arguments."""
    digest = hashlib.sha256(f"{type(tokenizer).__module__}.{type(tokenizer).__qualname__}".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        state.pop("truncation", None)
        state.pop("padding", None)
        digest.update(json.dumps(state, sort_keys=True).encode())
    else:
        digest.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
        kwargs = {k: v for k, v in getattr(tokenizer, "init_kwargs", {}).items() if isinstance(v, (str, int, bool))}
        digest.update(json.dumps(kwargs, sort_keys=True).encode())
    return digest.hexdigest()[:16]


def tokenize_texts(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """Token ids of ``texts`` (special tokens, truncated to ``max_length``, unpadded), in blocks of batch calls."""
    out: list[list[int]] = []
    texts = list(texts)
    for start in range(0, len(texts), TOKENIZE_BLOCK):
        encoded = tokenizer(
            texts[start : start + TOKENIZE_BLOCK],
            truncation=True,
            max_length=max_length,
            padding=False,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        out.extend(encoded["input_ids"])
    return out


def _checksum(*arrays: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        view = np.ascontiguousarray(array)
        for start in range(0, len(view), 1 << 24):  # bounded copies of a memory-mapped array
            digest.update(np.ascontiguousarray(view[start : start + (1 << 24)]).view(np.uint8).tobytes())
    return digest.hexdigest()


def _tokenize_corpus(corpus: Corpus, tokenizer: Any, max_length: int, sink) -> np.ndarray:
    """Tokenise every row in blocks, handing each block's flat int32 ids to ``sink``; returns the offsets."""
    n = len(corpus)
    offsets = np.zeros(n + 1, dtype=np.int64)
    for start in range(0, n, TOKENIZE_BLOCK):
        rows = np.arange(start, min(n, start + TOKENIZE_BLOCK), dtype=np.int64)
        seqs = tokenize_texts(tokenizer, corpus.texts(rows), max_length)
        lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        offsets[start + 1 : start + 1 + len(seqs)] = offsets[start] + np.cumsum(lengths)
        flat = np.fromiter((t for s in seqs for t in s), dtype=np.int32, count=int(lengths.sum()))
        sink(flat)
    return offsets


def _open_ids(path: Path, tokens: int) -> np.ndarray:
    """The flat ids, memory-mapped (a large corpus's ids need not fit in memory)."""
    if path.stat().st_size != 4 * tokens:
        raise ValueError(f"{path.name} holds {path.stat().st_size} bytes, expected {4 * tokens}")
    return np.memmap(path, dtype=np.int32, mode="r") if tokens else np.zeros(0, np.int32)


def _load(folder: Path, n: int) -> TokenIds | None:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        return None
    try:
        meta = read_json(meta_path)
        offsets = np.load(folder / "offsets.npy")
        ids = _open_ids(folder / "ids.bin", meta["tokens"])
        ok = (
            meta.get("format") == _FORMAT
            and meta["rows"] == n == len(offsets) - 1
            and meta["tokens"] == len(ids) == int(offsets[-1])
            and meta["checksum"] == _checksum(ids, offsets)
        )
    except Exception as exc:  # noqa: BLE001 - any damage (truncated file, bad JSON, wrong types) means rebuild
        logger.warning("token ids at %s are unreadable (%s); tokenising again", folder, exc)
        return None
    if not ok:
        logger.warning("token ids at %s do not match their meta.json; tokenising again", folder)
        return None
    return TokenIds(ids, offsets)


def _build_on_disk(corpus: Corpus, tokenizer: Any, max_length: int, folder: Path) -> TokenIds:
    with atomic_dir(folder, fsync=False) as tmp:
        with open(tmp / "ids.bin", "wb") as f:
            offsets = _tokenize_corpus(corpus, tokenizer, max_length, lambda flat: f.write(flat.tobytes()))
        np.save(tmp / "offsets.npy", offsets)
        ids = _open_ids(tmp / "ids.bin", int(offsets[-1]))
        write_json(
            tmp / "meta.json",
            {"format": _FORMAT, "rows": len(corpus), "tokens": int(offsets[-1]), "max_length": max_length,
             "corpus_fingerprint": corpus.fingerprint(), "tokenizer": tokenizer_fingerprint(tokenizer),
             "checksum": _checksum(ids, offsets)},
        )
        del ids  # the memory map of the temporary name; reopened at the final one
    return TokenIds(_open_ids(folder / "ids.bin", int(offsets[-1])), offsets)


def corpus_token_ids(corpus: Corpus, tokenizer: Any, max_length: int) -> TokenIds:
    """Every row's token ids for ``(tokenizer, max_length)``: from this process's memo, else from the store next to
    the corpus's Arrow cache (verified), else tokenised now (and stored there when the corpus has one)."""
    key_text = f"{_FORMAT}|{corpus.fingerprint()}|{len(corpus)}|{tokenizer_fingerprint(tokenizer)}|{int(max_length)}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    found = _memo.get(key)
    if found is not None:
        _memo.move_to_end(key)
        return found
    arrow = corpus.cache_file
    folder = arrow.with_name(f"{arrow.name}.tokens-{key}") if arrow is not None else None
    found = _load(folder, len(corpus)) if folder is not None else None
    if found is None:
        if folder is not None:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
            try:
                found = _build_on_disk(corpus, tokenizer, max_length, folder)
            except OSError as exc:
                # another process stored the same ids first (its rename won), or a read-only cache folder
                found = _load(folder, len(corpus))
                if found is None:
                    logger.warning("cannot store token ids next to %s (%s); keeping them in memory", arrow, exc)
        if found is None:
            parts: list[np.ndarray] = []
            offsets = _tokenize_corpus(corpus, tokenizer, max_length, parts.append)
            found = TokenIds(np.concatenate(parts) if parts else np.zeros(0, np.int32), offsets)
    _memo[key] = found
    while len(_memo) > _MEMO_SIZE:
        _memo.popitem(last=False)
    return found


def clear_memo() -> None:
    """Forget the token ids held in this process (tests; the stores on disk stay)."""
    _memo.clear()

