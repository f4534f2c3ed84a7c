"""The passage collection (:class:`Corpus`): an Arrow file memory-mapped through :class:`datasets.Dataset`, built
once per corpus file into a cache folder and reused while the file is unchanged.

Only an id lookup is held in memory (a sorted ``int64`` array when every id is a plain integer, as in MS MARCO, else a
dict). The corpus file is validated line by line like every other reader (:mod:`rocketkd.data.lines`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from rocketkd.data.lines import PathLike, check_id, iter_lines, json_object, required, text_field, tsv_fields
from rocketkd.errors import DataFormatError
from rocketkd.io import atomic_write, file_fingerprint, read_json, write_json

__all__ = ["Corpus", "EmptyPassageWarning"]

_CACHE_VERSION = 1  # bump when the Arrow layout or the validation rules change, so old caches are not reused
_WRITE_BATCH = 8192
_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("title", pa.string()),
        ("text", pa.string()),
        # encode "title text"? (False: no title, or the text already starts with it)
        ("join_title", pa.bool_()),
        ("line", pa.int64()),  # 1-based source line (record number for from_records), for error messages
    ]
)


class EmptyPassageWarning(UserWarning):
    """Some passages have empty text; they are kept so that ids stay as published."""


def _join_title(title: str, text: str) -> bool:
    return bool(title) and bool(text) and not text.startswith(title)


def _encode_text(title: str, text: str, join: bool) -> str:
    """``title text`` when ``join``; else the text, or the title alone when the text is empty."""
    if join:
        return f"{title} {text}"
    return text if text else title


class _ArrowCorpusWriter:
    """Accumulates validated rows into record batches; hashes ids and texts; counts empty passages."""

    def __init__(self, path: PathLike, sink) -> None:
        self.path = Path(path) if not isinstance(path, Path) else path
        self._sink = sink  # callable(pa.RecordBatch)
        self._cols: dict[str, list] = {name: [] for name in _SCHEMA.names}
        self._digest = hashlib.sha256()
        self.count = 0
        self.empty_ids: list[str] = []
        self.num_empty = 0

    def add(self, lineno: int, pid: str, title: str, text: str) -> None:
        if not text.strip():
            self.num_empty += 1
            if len(self.empty_ids) < 20:
                self.empty_ids.append(pid)
        cols = self._cols
        cols["id"].append(pid)
        cols["title"].append(title)
        cols["text"].append(text)
        cols["join_title"].append(_join_title(title, text))
        cols["line"].append(lineno)
        if len(cols["id"]) >= _WRITE_BATCH:
            self._flush()

    def _flush(self) -> None:
        cols = self._cols
        if not cols["id"]:
            return
        # length-prefixed fields, so that ("ab", "c") and ("a", "bc") hash apart
        parts = []
        for pid, title, text in zip(cols["id"], cols["title"], cols["text"]):
            for value in (pid, title, text):
                data = value.encode("utf-8")
                parts.append(len(data).to_bytes(8, "little"))
                parts.append(data)
        self._digest.update(b"".join(parts))
        self._sink(pa.RecordBatch.from_pydict(cols, schema=_SCHEMA))
        self.count += len(cols["id"])
        self._cols = {name: [] for name in _SCHEMA.names}

    def finish(self) -> dict:
        self._flush()
        return {
            "num_passages": self.count,
            "fingerprint": self._digest.hexdigest()[:16],
            "num_empty": self.num_empty,
            "empty_ids": self.empty_ids,
        }


def _parse_beir_corpus(path: Path, writer: _ArrowCorpusWriter) -> None:
    for lineno, line in iter_lines(path):
        obj = json_object(path, lineno, line)
        pid = check_id(path, lineno, required(path, lineno, obj, "_id"), "_id")
        text = text_field(path, lineno, obj, "text")
        title = text_field(path, lineno, obj, "title", optional=True)
        writer.add(lineno, pid, title, text)


def _parse_msmarco_corpus(path: Path, writer: _ArrowCorpusWriter) -> None:
    for lineno, line in iter_lines(path):
        pid, text = tsv_fields(path, lineno, line, 2, "pid, text")
        writer.add(lineno, check_id(path, lineno, pid, "passage id"), "", text)


class _IdIndex:
    """passage id -> row, built from the Arrow id column; refuses duplicate ids (naming both lines)."""

    def __init__(self, ids: pa.ChunkedArray, lines: pa.ChunkedArray, source: str) -> None:
        self._dict: dict[str, int] | None = None
        self._keys: np.ndarray | None = None  # sorted int64 ids (numeric case)
        self._rows: np.ndarray | None = None  # row of each sorted key
        n = len(ids)
        numeric = None
        if n:
            try:
                as_int = pc.cast(ids, pa.int64())
                # only canonical integers ("7", not "07" or "+7"), so that the string <-> int map is one to one
                if pc.all(pc.equal(pc.cast(as_int, pa.string()), ids)).as_py():
                    numeric = as_int.to_numpy()
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                numeric = None
        if numeric is not None:
            order = np.argsort(numeric, kind="stable")
            keys = numeric[order]
            repeats = np.flatnonzero(keys[1:] == keys[:-1]) + 1  # sorted positions of later occurrences
            if len(repeats):
                row = int(order[repeats].min())  # the earliest line that repeats an id
                first = int(order[np.searchsorted(keys, numeric[row], side="left")])
                self._duplicate(ids, lines, source, first, row)
            self._keys, self._rows = keys, order.astype(np.int64)
        else:
            lookup: dict[str, int] = {}
            for row, pid in enumerate(ids.to_pylist()):
                first = lookup.setdefault(pid, row)
                if first != row:
                    self._duplicate(ids, lines, source, first, row)
            self._dict = lookup

    @staticmethod
    def _duplicate(ids, lines, source: str, first: int, row: int) -> None:
        pid = ids[row].as_py()
        raise DataFormatError(
            source,
            f"duplicate passage id {pid!r} (first at line {lines[first].as_py()})",
            line=lines[row].as_py(),
        )

    def find(self, pid: Any) -> int | None:
        if not isinstance(pid, str):
            return None
        if self._dict is not None:
            return self._dict.get(pid)
        try:
            key = int(pid)
        except ValueError:
            return None
        if str(key) != pid or not (-(2**63) <= key < 2**63):
            return None
        at = int(np.searchsorted(self._keys, key))
        if at < len(self._keys) and self._keys[at] == key:
            return int(self._rows[at])
        return None


class _IdView(Sequence):
    """The corpus ids in row order, read from the Arrow column on demand (no Python list of millions of str)."""

    def __init__(self, column: pa.ChunkedArray) -> None:
        self._column = column

    def __len__(self) -> int:
        return len(self._column)

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._column.slice(start, max(0, stop - start)).to_pylist()
            return [self._column[i].as_py() for i in range(start, stop, step)]
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {index} out of range for a corpus of {n} passages")
        return self._column[i].as_py()

    def __iter__(self) -> Iterator[str]:
        for chunk in self._column.chunks:
            yield from chunk.to_pylist()

    def __repr__(self) -> str:
        head = ", ".join(repr(x) for x in self[:3])
        return f"<{len(self)} ids: {head}{', ...' if len(self) > 3 else ''}>"

    def to_list(self) -> list[str]:
        return self._column.to_pylist()


def _default_cache_dir() -> Path:
    env = os.environ.get("ROCKETKD_CACHE_DIR")
    if env:
        return Path(env)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"rocketkd-cache-{uid}"


class Corpus:
    """The passage collection: rows in a memory-mapped Arrow table, an id -> row lookup in memory.

    Build it with :meth:`from_beir`, :meth:`from_msmarco` or :meth:`from_records`. Row order is file order.
    ``text(row)`` is what an encoder should see: ``title + " " + text`` when there is a title and the text does not
    already begin with it (Cranfield's texts do), else the text alone.
    """

    def __init__(self, dataset: Dataset, *, source: str, fingerprint: str) -> None:
        missing = set(_SCHEMA.names) - set(dataset.column_names)
        if missing:
            raise ValueError(f"corpus dataset lacks columns {sorted(missing)}; build it with Corpus.from_*")
        if getattr(dataset, "_indices", None) is not None:
            dataset = dataset.flatten_indices()  # a select()/shuffle() view: rows must be the table's rows
        self._dataset = dataset
        self._attach_table()
        self._source = source
        self._fingerprint = fingerprint
        self._index = _IdIndex(self._table.column("id"), self._table.column("line"), source)

    def _attach_table(self) -> None:
        self._table: pa.Table = self._dataset.data.table
        # the text columns as record batches (one per written batch, zero-copy views of the memory map) and the
        # first row of each, so that a gather touches only the batches it needs
        self._batches = self._table.select(["title", "text", "join_title"]).to_batches()
        self._starts = np.cumsum([0] + [b.num_rows for b in self._batches], dtype=np.int64)

    # construction ---------------------------------------------------------------------------------------------

    @classmethod
    def from_beir(cls, path: PathLike, cache_dir: PathLike | None = None) -> Corpus:
        """Load a BEIR ``corpus.jsonl`` (``_id``, ``text``, optional ``title``; other fields ignored)."""
        return cls._from_file(Path(path), "beir", _parse_beir_corpus, cache_dir)

    @classmethod
    def from_msmarco(cls, path: PathLike, cache_dir: PathLike | None = None) -> Corpus:
        """Load an MS MARCO ``collection.tsv`` (``pid<TAB>text``, no header)."""
        return cls._from_file(Path(path), "msmarco", _parse_msmarco_corpus, cache_dir)

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], source: str = "<records>") -> Corpus:
        """An in-memory corpus from dicts with ``_id``, ``text`` and optional ``title``; "lines" are record numbers."""
        batches: list[pa.RecordBatch] = []
        writer = _ArrowCorpusWriter(source, batches.append)
        for number, record in enumerate(records, 1):
            if not isinstance(record, Mapping):
                raise DataFormatError(source, f"expected a mapping, got {type(record).__name__}", line=number)
            record = dict(record)
            pid = check_id(Path(source), number, required(Path(source), number, record, "_id"), "_id")
            text = text_field(Path(source), number, record, "text")
            title = text_field(Path(source), number, record, "title", optional=True)
            writer.add(number, pid, title, text)
        meta = writer.finish()
        table = pa.Table.from_batches(batches, schema=_SCHEMA)
        corpus = cls(Dataset(table), source=source, fingerprint=meta["fingerprint"])
        corpus._warn_empty(meta)
        return corpus

    @classmethod
    def _from_file(cls, path: Path, fmt: str, parse, cache_dir: PathLike | None) -> Corpus:
        if path.is_dir():
            raise DataFormatError(path, "is a folder, expected a corpus file")
        if not path.exists():
            raise DataFormatError(path, "no such file")
        folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir()
        key = hashlib.sha256(f"{fmt}|{_CACHE_VERSION}|{file_fingerprint(path)}".encode()).hexdigest()[:20]
        arrow_path = folder / f"corpus-{fmt}-{key}.arrow"
        meta_path = folder / f"corpus-{fmt}-{key}.meta.json"  # written last: the cache's completion marker

        corpus = cls._from_cache(arrow_path, meta_path, str(path))
        if corpus is None:
            meta = cls._build_cache(path, parse, arrow_path)
            try:
                corpus = cls(
                    Dataset.from_file(str(arrow_path)), source=str(path), fingerprint=meta["fingerprint"]
                )
            except BaseException:
                # e.g. duplicate ids: leave no file that looks reusable
                arrow_path.unlink(missing_ok=True)
                raise
            write_json(
                meta_path, {"format": fmt, "source": str(path), "cache_version": _CACHE_VERSION, **meta}
            )
            corpus._meta = meta
        corpus._cache_file = arrow_path
        corpus._warn_empty(corpus._meta)
        return corpus

    @classmethod
    def _from_cache(cls, arrow_path: Path, meta_path: Path, source: str) -> Corpus | None:
        if not (arrow_path.exists() and meta_path.exists()):
            return None
        try:
            meta = read_json(meta_path)
            dataset = Dataset.from_file(str(arrow_path))
            if len(dataset) != meta["num_passages"] or meta.get("cache_version") != _CACHE_VERSION:
                return None
            corpus = cls(dataset, source=source, fingerprint=meta["fingerprint"])
        except (DataFormatError, KeyError, TypeError, OSError, pa.ArrowException, ValueError):
            return None  # a damaged or foreign cache entry: rebuild it
        corpus._meta = meta
        return corpus

    @staticmethod
    def _build_cache(path: Path, parse, arrow_path: Path) -> dict:
        with atomic_write(arrow_path, "wb") as f:
            sink = pa.PythonFile(f, mode="w")
            with pa.ipc.new_stream(sink, _SCHEMA) as stream:
                writer = _ArrowCorpusWriter(path, stream.write_batch)
                parse(path, writer)
                meta = writer.finish()
        return meta

    def _warn_empty(self, meta: Mapping[str, Any] | None) -> None:
        if meta and meta.get("num_empty"):
            shown = ", ".join(meta["empty_ids"][:10])
            more = " ..." if meta["num_empty"] > 10 else ""
            warnings.warn(
                f"{self._source}: {meta['num_empty']} passage(s) with empty text kept (ids {shown}{more})",
                EmptyPassageWarning,
                stacklevel=3,
            )

    _meta: dict | None = None
    _cache_file: Path | None = None  # the Arrow cache file (None: an in-memory corpus from records)

    def __getstate__(self) -> dict:
        # the memory-mapped Dataset pickles as its file path; the pa.Table view of it would pickle every byte
        state = self.__dict__.copy()
        for key in ("_table", "_batches", "_starts"):
            del state[key]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._attach_table()

    # access ---------------------------------------------------------------------------------------------------

    @property
    def dataset(self) -> Dataset:
        """The underlying ``datasets.Dataset`` (columns id, title, text, join_title, line)."""
        return self._dataset

    @property
    def cache_file(self) -> Path | None:
        """The Arrow file this corpus is memory-mapped from (None for :meth:`from_records`); per-corpus caches such
        as token ids (:mod:`rocketkd.data.tokens`) are stored beside it."""
        return self._cache_file

    @property
    def source(self) -> str:
        return self._source

    @property
    def ids(self) -> _IdView:
        """Passage ids in row order (a read-only sequence; ``list(corpus.ids)`` to materialise)."""
        return _IdView(self._table.column("id"))

    def __len__(self) -> int:
        return self._table.num_rows

    def __contains__(self, pid: object) -> bool:
        return self._index.find(pid) is not None

    def __repr__(self) -> str:
        return f"Corpus({len(self)} passages from {self._source}, fingerprint {self._fingerprint})"

    def row_of(self, pid: str) -> int:
        row = self._index.find(pid)
        if row is None:
            raise KeyError(
                f"passage id {pid!r} is not in the corpus ({len(self)} passages from {self._source})"
            )
        return row

    def _rows_array(self, rows: Sequence[int]) -> np.ndarray:
        idx = np.asarray(rows, dtype=np.int64).reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            bad = int(idx[(idx < 0) | (idx >= n)][0])
            raise IndexError(f"row {bad} out of range for a corpus of {n} passages")
        return idx

    def texts(self, rows: Sequence[int]) -> list[str]:
        """The encoder input of each row, in the order given."""
        idx = self._rows_array(rows)
        if idx.size == 0:
            return []
        if idx[-1] - idx[0] == idx.size - 1 and (idx.size == 1 or (np.diff(idx) == 1).all()):
            # a contiguous range (plain row-order iteration): a zero-copy slice
            part = self._table.select(["title", "text", "join_title"]).slice(int(idx[0]), idx.size)
            return self._encode_columns(part)
        # a gather (e.g. length-sorted order): take from each record batch its own rows, then restore the order;
        # ChunkedArray.take would first concatenate every chunk of the corpus
        batch_of = np.searchsorted(self._starts, idx, side="right") - 1
        out: list[str] = [""] * idx.size
        for b in np.unique(batch_of):
            where = np.flatnonzero(batch_of == b)
            part = self._batches[b].take(pa.array(idx[where] - self._starts[b]))
            for position, value in zip(where.tolist(), self._encode_columns(part)):
                out[position] = value
        return out

    @staticmethod
    def _encode_columns(part: pa.Table | pa.RecordBatch) -> list[str]:
        return [
            _encode_text(title, text, join)
            for title, text, join in zip(
                part.column("title").to_pylist(),
                part.column("text").to_pylist(),
                part.column("join_title").to_pylist(),
            )
        ]

    def text(self, row: int) -> str:
        return self.texts([row])[0]

    def column(self, name: str) -> list:
        """One stored column (``id``, ``title`` or ``text``) as a list in row order."""
        if name not in ("id", "title", "text"):
            raise KeyError(f"no corpus column {name!r} (id, title, text)")
        return self._table.column(name).to_pylist()

    def get_text(self, pid: str) -> str:
        return self.text(self.row_of(pid))

    def lengths(self) -> np.ndarray:
        """Length in characters of each row's encoder input (int64, row order), e.g. for length-sorted encoding."""
        text_len = pc.utf8_length(self._table.column("text")).to_numpy().astype(np.int64)
        title_len = pc.utf8_length(self._table.column("title")).to_numpy().astype(np.int64)
        join = self._table.column("join_title").to_numpy(zero_copy_only=False).astype(bool)
        return np.where(join, title_len + 1 + text_len, np.where(text_len > 0, text_len, title_len))

    def fingerprint(self) -> str:
        """A short hash of every id, title and text in row order (computed while parsing, then cached)."""
        return self._fingerprint

    def iter_batches(
        self, batch_size: int, order: Sequence[int] | None = None
    ) -> Iterator[tuple[list[int], list[str]]]:
        """Yield ``(rows, texts)`` chunks of at most ``batch_size``, in row order or in the ``order`` given."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        rows_all = np.arange(len(self), dtype=np.int64) if order is None else self._rows_array(order)
        for start in range(0, len(rows_all), batch_size):
            rows = rows_all[start : start + batch_size]
            yield rows.tolist(), self.texts(rows)
