"""Readers, writers and validation for the on-disk formats: BEIR, MS MARCO, TREC qrels and runs, candidate lists,
and :func:`load_retrieval_data` for a whole collection folder.

Every reader checks its input line by line (:mod:`rocketkd.data.lines`) and raises one
:class:`~rocketkd.errors.DataFormatError` naming the file and the 1-based line at fault. The corpus itself, a
memory-mapped Arrow table, is :class:`rocketkd.data.corpus.Corpus`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rocketkd.data.corpus import Corpus
from rocketkd.data.lines import (
    WHITESPACE,
    PathLike,
    check_id,
    iter_lines,
    json_object,
    json_type,
    plain_suffix,
    required,
    text_field,
    tsv_fields,
)
from rocketkd.errors import DataFormatError
from rocketkd.io import atomic_write, file_fingerprint, read_json, write_json
from rocketkd.types import CandidateList, Qrels, Queries, Run

__all__ = [
    "RetrievalData",
    "load_qrels",
    "load_queries",
    "load_retrieval_data",
    "read_candidates",
    "read_provenance",
    "read_qrels",
    "read_run_tags",
    "read_trec_run",
    "write_candidates",
    "write_trec_run",
]


# ----------------------------------------------------------------------------------------------------------------
# queries and qrels


def load_queries(path: PathLike) -> Queries:
    """BEIR ``queries.jsonl`` (``_id``, ``text``) or MS MARCO ``queries.*.tsv`` (``qid<TAB>text``), by extension."""
    path = Path(path)
    suffix = plain_suffix(path)  # queries.jsonl.gz is read through gzip
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
    for lineno, line in iter_lines(path):
        if jsonl:
            obj = json_object(path, lineno, line)
            qid = check_id(path, lineno, required(path, lineno, obj, "_id"), "_id")
            text = text_field(path, lineno, obj, "text")
        else:
            qid, text = tsv_fields(path, lineno, line, 2, "qid, text")
            qid = check_id(path, lineno, qid, "query id")
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
    for lineno, line in iter_lines(path):
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
        check_id(path, lineno, qid, "query id")
        check_id(path, lineno, pid, "passage id")
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
    for lineno, line in iter_lines(path):
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
    if not isinstance(value, str) or not value or WHITESPACE.search(value):
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


def read_run_tags(path: PathLike) -> list[str]:
    """The run tags (6th column) of a TREC run file, in order of first appearance (one, for a run rocketkd wrote)."""
    tags: dict[str, None] = {}
    for _, line in iter_lines(Path(path)):
        fields = line.split()
        if len(fields) == 6:
            tags.setdefault(fields[5])
    return list(tags)


def is_trec_run(path: PathLike) -> bool:
    """Whether ``path`` reads as a TREC run file (its first line: ``qid Q0 pid rank score tag``): one a rerun of
    ``rocketkd search`` may replace (:func:`rocketkd.io.output_file`)."""
    try:
        for _, line in iter_lines(Path(path)):
            fields = line.split()
            return len(fields) == 6 and fields[1] == "Q0" and fields[3].isdigit()
    except (DataFormatError, OSError):
        return False
    return False


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
    for lineno, line in iter_lines(path):
        obj = json_object(path, lineno, line)
        qid = check_id(path, lineno, required(path, lineno, obj, "qid"), "qid")
        if queries is not None and qid not in queries:
            raise DataFormatError(path, f"query id {qid!r} is not among the queries", line=lineno)
        pids = required(path, lineno, obj, "pids")
        if not isinstance(pids, list):
            raise DataFormatError(path, f"'pids' must be a list, got {json_type(pids)}", line=lineno)
        for pid in pids:
            check_id(path, lineno, pid, "each pid")
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
            raise DataFormatError(path, f"'source' must be a string, got {json_type(source)}", line=lineno)
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


def is_candidates_file(path: PathLike) -> bool:
    """Whether ``path`` is a candidate list rocketkd wrote (its ``.meta.json`` provenance beside it)."""
    return _meta_path(path).is_file()


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

    def all_queries(self) -> Queries:
        """Judged and unlabeled queries in one dict (a judged query's text wins): what a candidate list may name,
        since teacher-labelled lists name unlabeled queries."""
        return {**self.unlabeled_queries, **self.queries}


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
