"""Line-level reading and validation shared by every reader of :mod:`rocketkd.data` (corpus, queries, qrels, runs,
candidate lists).

Each helper raises one :class:`~rocketkd.errors.DataFormatError` naming the file and the 1-based line at fault.
Files are read in binary (a gzip'd file, told by its first bytes, is decompressed on the fly) and decoded line by
line, so a byte that is not UTF-8 is reported on its own line. Blank lines are allowed only at the end of a file.
Ids (passages and queries) are non-empty strings without whitespace: TREC run and qrels files are split on
whitespace, so an id holding a space could not be written back.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rocketkd.errors import DataFormatError

PathLike = str | os.PathLike
WHITESPACE = re.compile(r"\s")


GZIP_MAGIC = b"\x1f\x8b"


def plain_suffix(path: PathLike) -> str:
    """The format suffix of ``path``, lower-cased, looking through a ``.gz`` (``corpus.jsonl.gz`` -> ``.jsonl``)."""
    path = Path(path)
    if path.suffix.lower() == ".gz":
        path = path.with_suffix("")
    return path.suffix.lower()


def _open_binary(path: Path):
    """The file's bytes, decompressed when it is gzip'd (told by its first two bytes, whatever its name)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise DataFormatError(path, "is a folder, expected a file") from None
    if f.peek(2)[:2] != GZIP_MAGIC:
        return f
    f.close()
    return gzip.open(path, "rb")


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its end-of-line) for each non-blank line.

    Raises on a byte sequence that is not UTF-8, on a blank line followed by more content, and on a file with no
    content at all (after the last line has been yielded).
    """
    seen = 0
    blank_at: int | None = None
    with _open_binary(path) as f:
        for lineno, raw in _numbered(f, path):
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


def _numbered(f, path: Path) -> Iterator[tuple[int, bytes]]:
    """(1-based line number, raw line) of an open file; a damaged gzip stream is the file's error, not a crash."""
    lineno = 0
    try:
        for lineno, raw in enumerate(f, 1):
            yield lineno, raw
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataFormatError(path, f"damaged gzip data after line {lineno} ({e})") from None


def json_object(path: Path, lineno: int, line: str) -> dict:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=lineno) from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"expected a JSON object, got {json_type(obj)}", line=lineno)
    return obj


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"a number ({value!r})"
    return names.get(type(value), type(value).__name__)


def check_id(path: Path, lineno: int, value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataFormatError(
            path, f"{what} must be a string, got {json_type(value)} (write it in quotes)", line=lineno
        )
    if not value:
        raise DataFormatError(path, f"{what} is empty", line=lineno)
    if WHITESPACE.search(value):
        raise DataFormatError(
            path, f"{what} {value!r} contains whitespace, which TREC files cannot hold", lineno
        )
    return value


def required(path: Path, lineno: int, obj: dict, key: str) -> Any:
    if key not in obj:
        present = ", ".join(sorted(obj)) or "none"
        raise DataFormatError(path, f"missing field {key!r} (fields present: {present})", line=lineno)
    return obj[key]


def text_field(path: Path, lineno: int, obj: dict, key: str, *, optional: bool = False) -> str:
    if optional and obj.get(key) is None:
        return ""
    value = required(path, lineno, obj, key)
    if not isinstance(value, str):
        raise DataFormatError(path, f"field {key!r} must be a string, got {json_type(value)}", line=lineno)
    return value


def tsv_fields(path: Path, lineno: int, line: str, expected: int, what: str) -> list[str]:
    parts = line.split("\t")
    if len(parts) != expected:
        raise DataFormatError(
            path, f"expected {expected} tab-separated columns ({what}), got {len(parts)}", line=lineno
        )
    return parts
