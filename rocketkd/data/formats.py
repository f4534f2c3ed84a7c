"""Readers, writers and validation for the on-disk formats: BEIR, MS MARCO, TREC qrels and runs, candidate lists.

Every reader checks its input line by line and raises one :class:`~rocketkd.errors.DataFormatError` naming the file
and the 1-based line at fault. Files are read in binary and decoded line by line, so a byte that is not UTF-8 is
reported on its own line. Blank lines are allowed only at the end of a file.

Ids (passages and queries) are non-empty strings without whitespace: TREC run and qrels files are split on
whitespace, so an id holding a space could not be written back.

The corpus lives in an Arrow file memory-mapped through :class:`datasets.Dataset`; only an id lookup is held in
memory (a sorted ``int64`` array when every id is a plain integer, as in MS MARCO, else a dict).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from datasets import Dataset

from rocketkd.errors import DataFormatError
from rocketkd.io import atomic_write, file_fingerprint, read_json, write_json
from rocketkd.types import CandidateList, Qrels, Queries, Run

__all__ = [
    "Corpus",
    "EmptyPassageWarning",
    "RetrievalData",
    "load_qrels",
    "load_queries",
    "load_retrieval_data",
    "read_candidates",
    "read_provenance",
    "read_qrels",
    "read_trec_run",
    "write_candidates",
    "write_trec_run",
]

PathLike = str | os.PathLike
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
_WHITESPACE = re.compile(r"\s")


class EmptyPassageWarning(UserWarning):
    """Some passages have empty text; they are kept so that ids stay as published."""


# ----------------------------------------------------------------------------------------------------------------
# line-level helpers


def _open_binary(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise DataFormatError(path, "is a folder, expected a file") from None


def _iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its end-of-line) for each non-blank line.

    Raises on a byte sequence that is not UTF-8, on a blank line followed by more content, and on a file with no
    content at all (after the last line has been yielded).
    """
    seen = 0
    blank_at: int | None = None
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8) :]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataFormatError(
                    path, f"not valid UTF-8 (byte {e.start + 1} of the line: {e.reason})", line=lineno
                ) from None
            line = line.rstrip("\r\n")
            if not line.strip():
                if blank_at is None:
                    blank_at = lineno
                continue
            if blank_at is not None:
                raise DataFormatError(
                    path, "blank line inside the file (only trailing blank lines are allowed)", blank_at
                )
            seen += 1
            yield lineno, line
    if seen == 0:
        raise DataFormatError(path, "empty file")


def _json_object(path: Path, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=lineno) from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"expected a JSON object, got {_json_type(obj)}", line=lineno)
    return obj


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"a number ({value!r})"
    return names.get(type(value), type(value).__name__)


def _check_id(path: Path, lineno: int, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataFormatError(
            path, f"{what} must be a string, got {_json_type(value)} (write it in quotes)", line=lineno
        )
    if not value:
        raise DataFormatError(path, f"{what} is empty", line=lineno)
    if _WHITESPACE.search(value):
        raise DataFormatError(
            path, f"{what} {value!r} contains whitespace, which TREC files cannot hold", lineno
        )
    return value


def _required(path: Path, lineno: int, obj: dict, key: str) -> Any:
    if key not in obj:
        present = ", ".join(sorted(obj)) or "none"
        raise DataFormatError(path, f"missing field {key!r} (fields present: {present})", line=lineno)
    return obj[key]


def _text_field(path: Path, lineno: int, obj: dict, key: str, *, optional: bool = False) -> str:
    if optional and obj.get(key) is None:
        return ""
    value = _required(path, lineno, obj, key)
    if not isinstance(value, str):
        raise DataFormatError(path, f"field {key!r} must be a string, got {_json_type(value)}", line=lineno)
    return value


def _tsv_fields(path: Path, lineno: int, line: str, expected: int, what: str) -> list[str]:
    parts = line.split("\t")
    if len(parts) != expected:
        raise DataFormatError(
            path, f"expected {expected} tab-separated columns ({what}), got {len(parts)}", line=lineno
        )
    return parts


# ----------------------------------------------------------------------------------------------------------------
# corpus


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
    for lineno, line in _iter_lines(path):
        obj = _json_object(path, lineno, line)
        pid = _check_id(path, lineno, _required(path, lineno, obj, "_id"), "_id")
        text = _text_field(path, lineno, obj, "text")
        title = _text_field(path, lineno, obj, "title", optional=True)
        writer.add(lineno, pid, title, text)


def _parse_msmarco_corpus(path: Path, writer: _ArrowCorpusWriter) -> None:
    for lineno, line in _iter_lines(path):
        pid, text = _tsv_fields(path, lineno, line, 2, "pid, text")
        writer.add(lineno, _check_id(path, lineno, pid, "passage id"), "", text)


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
            pid = _check_id(Path(source), number, _required(Path(source), number, record, "_id"), "_id")
            text = _text_field(Path(source), number, record, "text")
            title = _text_field(Path(source), number, record, "title", optional=True)
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


# ----------------------------------------------------------------------------------------------------------------
# queries and qrels


def load_queries(path: PathLike) -> Queries:
    """BEIR ``queries.jsonl`` (``_id``, ``text``) or MS MARCO ``queries.*.tsv`` (``qid<TAB>text``), by extension."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        jsonl = True
    elif suffix in (".tsv", ".txt"):
        jsonl = False
    else:
        raise DataFormatError(
            path, "cannot tell the queries format: expected a .jsonl (BEIR) or .tsv (MS MARCO) file"
        )
    queries: Queries = {}
    first_line: dict[str, int] = {}
    for lineno, line in _iter_lines(path):
        if jsonl:
            obj = _json_object(path, lineno, line)
            qid = _check_id(path, lineno, _required(path, lineno, obj, "_id"), "_id")
            text = _text_field(path, lineno, obj, "text")
        else:
            qid, text = _tsv_fields(path, lineno, line, 2, "qid, text")
            qid = _check_id(path, lineno, qid, "query id")
        if qid in queries:
            raise DataFormatError(
                path, f"duplicate query id {qid!r} (first at line {first_line[qid]})", line=lineno
            )
        if not text.strip():
            raise DataFormatError(path, f"query {qid!r} has empty text", line=lineno)
        queries[qid] = text
        first_line[qid] = lineno
    return queries


def _is_int(value: str) -> bool:
    try:
        int(value)
    except ValueError:
        return False
    return True


def load_qrels(
    path: PathLike, *, queries: Mapping[str, Any] | None = None, corpus: Corpus | Any | None = None
) -> Qrels:
    """Relevance judgments: BEIR tsv (``query-id corpus-id score`` after a header line) or TREC qrels
    (``qid iteration pid grade``, no header), told apart by the column count of the first line.

    Columns are split on tabs when the line has any, else on whitespace. With ``queries`` / ``corpus`` given, a line
    naming an unknown query or passage is an error.
    """
    path = Path(path)
    qrels: Qrels = {}
    first_line: dict[tuple[str, str], int] = {}
    ncols: int | None = None
    for lineno, line in _iter_lines(path):
        parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
        if ncols is None:
            if len(parts) == 3 and not _is_int(parts[2]):
                ncols = 3  # BEIR header ("query-id corpus-id score")
                continue
            if len(parts) not in (3, 4):
                raise DataFormatError(
                    path,
                    f"expected 3 columns (BEIR: query-id corpus-id score) or 4 (TREC: qid 0 pid grade), "
                    f"got {len(parts)}",
                    line=lineno,
                )
            ncols = len(parts)
        if len(parts) != ncols:
            raise DataFormatError(
                path, f"expected {ncols} columns like the lines above, got {len(parts)}", lineno
            )
        qid, pid, score = parts[0], parts[-2], parts[-1]
        _check_id(path, lineno, qid, "query id")
        _check_id(path, lineno, pid, "passage id")
        try:
            grade = int(score)
        except ValueError:
            raise DataFormatError(
                path, f"relevance score must be an integer, got {score!r}", line=lineno
            ) from None
        if queries is not None and qid not in queries:
            raise DataFormatError(path, f"query id {qid!r} is not among the queries", line=lineno)
        if corpus is not None and pid not in corpus:
            raise DataFormatError(path, f"passage id {pid!r} is not in the corpus", line=lineno)
        pair = (qid, pid)
        if pair in first_line:
            raise DataFormatError(
                path,
                f"duplicate judgment for query {qid!r}, passage {pid!r} (first at line {first_line[pair]})",
                lineno,
            )
        first_line[pair] = lineno
        qrels.setdefault(qid, {})[pid] = grade
    if not qrels:
        raise DataFormatError(path, "no judgments (only a header line)")
    return qrels


read_qrels = load_qrels  # the same reader under the name the other ``read_*`` functions suggest


# ----------------------------------------------------------------------------------------------------------------
# TREC runs


def read_trec_run(path: PathLike) -> Run:
    """A TREC run file (``qid Q0 pid rank score tag``, whitespace-separated) as qid -> pid -> score."""
    path = Path(path)
    run: Run = {}
    seen: dict[tuple[str, str], int] = {}
    for lineno, line in _iter_lines(path):
        parts = line.split()
        if len(parts) != 6:
            raise DataFormatError(
                path, f"expected 6 columns (qid Q0 pid rank score tag), got {len(parts)}", lineno
            )
        qid, _, pid, rank, score, _tag = parts
        if not _is_int(rank):
            raise DataFormatError(path, f"rank must be an integer, got {rank!r}", line=lineno)
        try:
            value = float(score)
        except ValueError:
            raise DataFormatError(path, f"score must be a number, got {score!r}", line=lineno) from None
        if not math.isfinite(value):
            raise DataFormatError(path, f"score must be finite, got {score!r}", line=lineno)
        if (qid, pid) in seen:
            raise DataFormatError(
                path,
                f"passage {pid!r} listed twice for query {qid!r} (first at line {seen[qid, pid]})",
                lineno,
            )
        seen[qid, pid] = lineno
        run.setdefault(qid, {})[pid] = value
    return run


def _check_token(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value or _WHITESPACE.search(value):
        raise ValueError(f"{what} must be a non-empty string without whitespace, got {value!r}")
    return value


def write_trec_run(
    path: PathLike, run: Mapping[str, Mapping[str, float]], tag: str = "rocketkd", k: int | None = None
) -> None:
    """Write a TREC run atomically: per query (in the order given), passages by score descending, ties broken by
    passage id descending (trec_eval's own order), ranks from 1, at most ``k`` per query."""
    _check_token(tag, "run tag")
    if k is not None and k < 1:
        raise ValueError(f"k must be positive, got {k}")
    with atomic_write(path) as f:
        for qid, scores in run.items():
            _check_token(qid, "query id")
            ranked = sorted(scores.items(), key=lambda item: item[0], reverse=True)
            ranked.sort(key=lambda item: float(item[1]), reverse=True)  # stable: ties keep pid descending
            for rank, (pid, score) in enumerate(ranked[:k] if k is not None else ranked, 1):
                _check_token(pid, "passage id")
                value = float(score)
                if not math.isfinite(value):
                    raise ValueError(f"score of query {qid!r}, passage {pid!r} is not finite: {score!r}")
                f.write(f"{qid} Q0 {pid} {rank} {value!r} {tag}\n")


# ----------------------------------------------------------------------------------------------------------------
# candidate lists


def _meta_path(path: PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".meta.json")


def read_candidates(
    path: PathLike, *, corpus: Corpus | Any | None = None, queries: Mapping[str, Any] | None = None
) -> list[CandidateList]:
    """Candidate lists from JSONL (one ``CandidateList.to_dict()`` per line), validated; with ``corpus``, every pid
    must be in it; with ``queries``, every qid must be among them."""
    path = Path(path)
    lists: list[CandidateList] = []
    for lineno, line in _iter_lines(path):
        obj = _json_object(path, lineno, line)
        qid = _check_id(path, lineno, _required(path, lineno, obj, "qid"), "qid")
        if queries is not None and qid not in queries:
            raise DataFormatError(path, f"query id {qid!r} is not among the queries", line=lineno)
        pids = _required(path, lineno, obj, "pids")
        if not isinstance(pids, list):
            raise DataFormatError(path, f"'pids' must be a list, got {_json_type(pids)}", line=lineno)
        for pid in pids:
            _check_id(path, lineno, pid, "each pid")
        if len(pids) < 2:
            raise DataFormatError(
                path,
                f"query {qid!r}: needs a positive and at least one negative, got {len(pids)} pid(s)",
                lineno,
            )
        if pids[0] in pids[1:]:
            raise DataFormatError(
                path, f"query {qid!r}: positive {pids[0]!r} is also listed as a negative", lineno
            )
        if len(set(pids)) != len(pids):
            dup = next(p for i, p in enumerate(pids) if p in pids[:i])
            raise DataFormatError(path, f"query {qid!r}: pid {dup!r} listed twice", line=lineno)
        scores = obj.get("teacher_scores")
        if scores is not None:
            if not isinstance(scores, list) or len(scores) != len(pids):
                raise DataFormatError(
                    path, f"query {qid!r}: 'teacher_scores' must be a list as long as 'pids'", lineno
                )
            for s in scores:
                if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
                    raise DataFormatError(
                        path, f"query {qid!r}: teacher score {s!r} is not a finite number", lineno
                    )
            scores = [float(s) for s in scores]
        source = obj.get("source", "")
        if not isinstance(source, str):
            raise DataFormatError(path, f"'source' must be a string, got {_json_type(source)}", line=lineno)
        if corpus is not None:
            for pid in pids:
                if pid not in corpus:
                    raise DataFormatError(
                        path, f"query {qid!r}: passage id {pid!r} is not in the corpus", lineno
                    )
        lists.append(CandidateList(qid=qid, pids=list(pids), teacher_scores=scores, source=source))
    return lists


def write_candidates(
    path: PathLike, lists: Iterable[CandidateList], provenance: Mapping[str, Any] | None = None
) -> None:
    """Write candidate lists as JSONL, atomically; then ``provenance`` to ``<path>.meta.json`` (also atomic), with
    ``num_lists`` and ``candidates_fingerprint`` (sha256 of the JSONL) added so a reader can check they belong
    together. Without provenance, a stale ``.meta.json`` from an earlier write is removed."""
    path = Path(path)
    count = 0
    with atomic_write(path) as f:
        for cand in lists:
            f.write(json.dumps(cand.to_dict(), ensure_ascii=False))
            f.write("\n")
            count += 1
    meta = _meta_path(path)
    if provenance is None:
        meta.unlink(missing_ok=True)
        return
    write_json(meta, {**provenance, "num_lists": count, "candidates_fingerprint": file_fingerprint(path)})


def read_provenance(path: PathLike) -> dict | None:
    """The ``<path>.meta.json`` written beside a candidates file, or None when there is none."""
    meta = _meta_path(path)
    return read_json(meta) if meta.exists() else None


# ----------------------------------------------------------------------------------------------------------------
# whole collections


@dataclass
class RetrievalData:
    """A loaded collection: the corpus, all queries, qrels by split, and unlabeled queries (may be empty)."""

    corpus: Corpus
    queries: Queries
    qrels: dict[str, Qrels]
    path: Path
    unlabeled_queries: Queries = field(default_factory=dict)

    @property
    def splits(self) -> list[str]:
        return list(self.qrels)

    def split_queries(self, split: str) -> Queries:
        """The queries judged in ``split`` (every query id of that split's qrels), in qrels order."""
        if split not in self.qrels:
            raise KeyError(f"no split {split!r} in {self.path} (loaded: {', '.join(self.qrels) or 'none'})")
        return {qid: self.queries[qid] for qid in self.qrels[split]}


_BEIR_LAYOUT = "BEIR layout (corpus.jsonl, queries.jsonl, qrels/<split>.tsv)"
_MSMARCO_LAYOUT = "MS MARCO layout (collection.tsv, queries.<split>.tsv, qrels.<split>.tsv)"


def _pick_splits(folder: Path, found: list[str], splits: Sequence[str] | None, pattern: str) -> list[str]:
    if splits is None:
        return found
    if isinstance(splits, str):
        splits = [splits]
    missing = [s for s in splits if s not in found]
    if missing:
        raise DataFormatError(
            folder,
            f"no qrels for split(s) {', '.join(missing)}: looked for {pattern}; found {', '.join(found) or 'none'}",
        )
    return list(splits)


def load_retrieval_data(
    path: PathLike, splits: Sequence[str] | None = None, cache_dir: PathLike | None = None
) -> RetrievalData:
    """Load a BEIR-layout or MS MARCO-layout folder; qrels of each split (all found if ``splits`` is None) are
    checked against the queries and the corpus. ``queries_unlabeled.jsonl`` (or ``.tsv``) is loaded when present."""
    folder = Path(path)
    if not folder.exists():
        raise DataFormatError(folder, f"no such folder; expected a {_BEIR_LAYOUT} or an {_MSMARCO_LAYOUT}")
    if not folder.is_dir():
        raise DataFormatError(
            folder, f"is a file; expected a folder in the {_BEIR_LAYOUT} or the {_MSMARCO_LAYOUT}"
        )

    if (folder / "corpus.jsonl").exists():
        corpus = Corpus.from_beir(folder / "corpus.jsonl", cache_dir=cache_dir)
        queries = load_queries(folder / "queries.jsonl")
        qrels_dir = folder / "qrels"
        found = sorted(p.stem for p in qrels_dir.glob("*.tsv")) if qrels_dir.is_dir() else []
        chosen = _pick_splits(folder, found, splits, "qrels/<split>.tsv")
        qrels = {s: load_qrels(qrels_dir / f"{s}.tsv", queries=queries, corpus=corpus) for s in chosen}
    elif (folder / "collection.tsv").exists():
        corpus = Corpus.from_msmarco(folder / "collection.tsv", cache_dir=cache_dir)
        found = sorted(p.name[len("qrels.") : -len(".tsv")] for p in folder.glob("qrels.*.tsv"))
        chosen = _pick_splits(folder, found, splits, "qrels.<split>.tsv")
        queries = {}
        for split in chosen:
            qfile = folder / f"queries.{split}.tsv"
            if not qfile.exists():
                raise DataFormatError(qfile, f"no such file (needed for the qrels of split {split!r})")
            for qid, text in load_queries(qfile).items():
                if queries.setdefault(qid, text) != text:
                    raise DataFormatError(
                        qfile, f"query {qid!r} has a different text in another split's queries"
                    )
        qrels = {s: load_qrels(folder / f"qrels.{s}.tsv", queries=queries, corpus=corpus) for s in chosen}
    else:
        present = sorted(p.name for p in folder.iterdir())[:20]
        raise DataFormatError(
            folder,
            f"matches neither the {_BEIR_LAYOUT} nor the {_MSMARCO_LAYOUT}; found: {', '.join(present) or 'nothing'}",
        )

    unlabeled: Queries = {}
    for name in ("queries_unlabeled.jsonl", "queries_unlabeled.tsv"):
        if (folder / name).exists():
            unlabeled = load_queries(folder / name)
            break
    return RetrievalData(
        corpus=corpus, queries=queries, qrels=qrels, path=folder, unlabeled_queries=unlabeled
    )
