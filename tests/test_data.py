"""rocketkd.io, rocketkd.data.corpus and rocketkd.data.formats: round trips, title joining, and one DataFormatError per malformed input,
naming the file and the 1-based line."""

from __future__ import annotations

import json
import os
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import rocketkd.data.corpus as corpus_module
import rocketkd.io
from rocketkd.data import (
    Corpus,
    EmptyPassageWarning,
    load_qrels,
    load_queries,
    load_retrieval_data,
    read_candidates,
    read_provenance,
    read_trec_run,
    write_candidates,
    write_trec_run,
)
from rocketkd.errors import DataFormatError
from rocketkd.io import atomic_dir, atomic_write, file_fingerprint, read_json, write_json
from rocketkd.types import CandidateList

REPO_DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Corpus caches go under the test's own tmp folder, never the shared temp dir."""
    monkeypatch.setenv("ROCKETKD_CACHE_DIR", str(tmp_path / "default-cache"))


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def jl(**obj) -> str:
    return json.dumps(obj)


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders an atomic writer may have left behind."""
    return sorted(p.name for p in folder.iterdir() if re.match(r"^\..*\.(tmp|old)-", p.name))


def raises_at(path: Path, line: int | None, what: str):
    """pytest.raises for a DataFormatError whose message is '<path>:<line>: ...<what>...'."""
    where = re.escape(str(path)) + (f":{line}:" if line is not None else ":")
    return pytest.raises(DataFormatError, match=rf"^{where} .*{what}")


# ---------------------------------------------------------------------------------------------------------------
# rocketkd.io


def test_atomic_write_replaces_and_uses_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    with atomic_write(target) as f:
        f.write("first\n")
    with atomic_write(target) as f:
        f.write("second\n")
    assert target.read_text() == "second\n"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert leftovers(target.parent) == []


def test_atomic_write_exception_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target, "wb") as f:
            f.write(b"partial new content")
            assert len(leftovers(tmp_path)) == 1  # the temp sibling exists while writing
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("swap", [True, False], ids=["rename-exchange", "two-renames"])
def test_atomic_dir_creates_replaces_and_rolls_back(tmp_path, monkeypatch, swap):
    if not swap:
        monkeypatch.setattr(rocketkd.io, "_exchange", lambda a, b: False)  # platforms without renameat2
    target = tmp_path / "ckpt"
    with atomic_dir(target) as d:
        (d / "a.txt").write_text("1")
    assert (target / "a.txt").read_text() == "1"
    with atomic_dir(target) as d:
        (d / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]  # the old folder is gone, not merged
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as d:
            (d / "c.txt").write_text("half")
            raise KeyboardInterrupt
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert leftovers(tmp_path) == []


def test_json_round_trip_and_errors(tmp_path):
    path = tmp_path / "r.json"
    obj = {"z": 1, "a": [1.5, "x"], "path": tmp_path, "np": np.float32(0.5)}
    write_json(path, obj)
    assert list(read_json(path)) == ["z", "a", "path", "np"]  # key order kept, not sorted
    assert read_json(path)["path"] == str(tmp_path) and read_json(path)["np"] == 0.5
    with pytest.raises(TypeError):
        write_json(path, {"ok": 1, "bad": object()})  # fails after part of the JSON is written
    assert read_json(path)["z"] == 1 and leftovers(tmp_path) == []
    with raises_at(tmp_path / "nope.json", None, "no such file"):
        read_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{\n  "a": 1,\n  "b": oops\n}\n')
    with raises_at(tmp_path / "bad.json", 3, "invalid JSON"):
        read_json(tmp_path / "bad.json")


def test_file_fingerprint(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.write_bytes(b"x" * 3_000_000)
    b.write_bytes(b"x" * 3_000_000)
    c.write_bytes(b"x" * 2_999_999 + b"y")
    assert file_fingerprint(a) == file_fingerprint(b) != file_fingerprint(c)
    assert len(file_fingerprint(a)) == 16
    assert file_fingerprint(a, max_bytes=1000) == file_fingerprint(c, max_bytes=1000)


# ---------------------------------------------------------------------------------------------------------------
# Corpus


def test_corpus_from_beir_tiny(tiny_data, tmp_path):
    corpus = Corpus.from_beir(tiny_data / "corpus.jsonl", cache_dir=tmp_path / "cache")
    records = [json.loads(line) for line in (tiny_data / "corpus.jsonl").read_text().splitlines()]
    assert len(corpus) == 60 == len(records)
    assert list(corpus.ids) == [r["_id"] for r in records] == corpus.ids.to_list()
    assert corpus.ids[-1] == records[-1]["_id"] and corpus.ids[1:3] == [records[1]["_id"], records[2]["_id"]]
    assert corpus.row_of("d7") == 7 and "d7" in corpus and "d999" not in corpus and 7 not in corpus
    assert corpus.text(0) == "wing report results the method of wing a wing wing"  # title + " " + text
    assert corpus.get_text("d0") == corpus.text(0)
    assert corpus.texts([2, 0]) == [corpus.text(2), corpus.text(0)]
    assert corpus.lengths().tolist() == [len(corpus.text(i)) for i in range(len(corpus))]
    with pytest.raises(KeyError, match="'d999' is not in the corpus"):
        corpus.row_of("d999")
    with pytest.raises(IndexError):
        corpus.texts([60])
    batches = list(corpus.iter_batches(7))
    assert [len(rows) for rows, _ in batches] == [7] * 8 + [4]
    assert [r for rows, _ in batches for r in rows] == list(range(60))
    assert [t for _, texts in batches for t in texts] == corpus.texts(range(60))
    order = np.argsort(-corpus.lengths(), kind="stable")
    rows, texts = next(corpus.iter_batches(5, order=order))
    assert rows == order[:5].tolist() and texts == corpus.texts(order[:5])
    assert len(corpus.dataset) == 60


def test_title_joining_rules():
    with pytest.warns(EmptyPassageWarning, match="ids e"):
        corpus = Corpus.from_records(
            [
                # the text already starts with its title (as in Cranfield): not repeated
                {"_id": "a", "title": "Wing flow.", "text": "Wing flow. measured at Mach 2"},
                {"_id": "b", "title": "Wing flow", "text": "was measured"},
                {"_id": "c", "text": "no title here"},
                {"_id": "d", "title": None, "text": "null title"},
                {"_id": "e", "title": "only a title", "text": ""},
            ]
        )
    assert corpus.texts(range(5)) == [
        "Wing flow. measured at Mach 2",
        "Wing flow was measured",
        "no title here",
        "null title",
        "only a title",
    ]
    assert corpus.lengths().tolist() == [len(t) for t in corpus.texts(range(5))]


def test_corpus_cache_is_reused_and_outside_the_data_folder(tiny_data, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    before = sorted(p.name for p in tiny_data.rglob("*"))
    first = Corpus.from_beir(tiny_data / "corpus.jsonl", cache_dir=cache)
    assert len(list(cache.glob("*.arrow"))) == 1
    assert sorted(p.name for p in tiny_data.rglob("*")) == before

    def no_parse(*args):
        raise AssertionError("parsed again despite a cache")

    with monkeypatch.context() as patch:
        patch.setattr(corpus_module, "_parse_beir_corpus", no_parse)
        second = Corpus.from_beir(tiny_data / "corpus.jsonl", cache_dir=cache)
    assert second.fingerprint() == first.fingerprint() and second.texts(range(60)) == first.texts(range(60))
    # changed contents -> a new cache entry and a new corpus fingerprint
    with open(tiny_data / "corpus.jsonl", "a") as f:
        f.write(jl(_id="extra", text="one more passage") + "\n")
    third = Corpus.from_beir(tiny_data / "corpus.jsonl", cache_dir=cache)
    assert len(third) == 61 and third.fingerprint() != first.fingerprint()
    assert len(list(cache.glob("*.arrow"))) == 2
    # default cache location comes from ROCKETKD_CACHE_DIR (set by the autouse fixture)
    Corpus.from_beir(tiny_data / "corpus.jsonl")
    assert list((tmp_path / "default-cache").glob("*.arrow"))


def test_damaged_cache_is_rebuilt(tiny_data, tmp_path):
    cache = tmp_path / "cache"
    first = Corpus.from_beir(tiny_data / "corpus.jsonl", cache_dir=cache)
    (arrow,) = cache.glob("*.arrow")
    head = arrow.read_bytes()[:100]
    arrow.unlink()  # a new inode: `first` still maps the old one (truncating a mapped file in place is SIGBUS)
    arrow.write_bytes(head)  # a truncated cache entry
    again = Corpus.from_beir(tiny_data / "corpus.jsonl", cache_dir=cache)
    assert again.texts(range(60)) == first.texts(range(60))


def test_fingerprint_depends_on_content_not_source():
    recs = [{"_id": "1", "title": "t", "text": "x"}, {"_id": "2", "text": "y"}]
    fp = Corpus.from_records(recs).fingerprint()
    assert Corpus.from_records(recs).fingerprint() == fp
    assert Corpus.from_records([recs[0], {"_id": "2", "text": "z"}]).fingerprint() != fp
    assert Corpus.from_records([{"_id": "1", "title": "", "text": "tx"}, recs[1]]).fingerprint() != fp


def test_records_and_file_agree(tmp_path):
    recs = [{"_id": f"p{i}", "title": f"title {i}", "text": f"text number {i}"} for i in range(5)]
    path = write_lines(tmp_path / "corpus.jsonl", [json.dumps(r) for r in recs])
    from_file = Corpus.from_beir(path, cache_dir=tmp_path / "c")
    from_recs = Corpus.from_records(recs)
    assert from_file.fingerprint() == from_recs.fingerprint()
    assert from_file.texts(range(5)) == from_recs.texts(range(5))


@pytest.mark.parametrize("ids", [["5", "17", "3", "0"], ["d5", "d17", "d3", "d0"], ["5", "017", "3", "0"]])
def test_id_lookup_numeric_and_string_ids(tmp_path, ids):
    path = write_lines(tmp_path / "collection.tsv", [f"{pid}\ttext of {pid}" for pid in ids])
    corpus = Corpus.from_msmarco(path, cache_dir=tmp_path / "c")
    for row, pid in enumerate(ids):
        assert corpus.row_of(pid) == row and corpus.get_text(pid) == f"text of {pid}"
    for absent in ["4", "05", "+5", " 5", "d4", "", "99999999999999999999999"]:
        assert absent not in corpus
    restored = pickle.loads(pickle.dumps(corpus))
    assert restored.row_of(ids[2]) == 2 and restored.texts([3, 1]) == corpus.texts([3, 1])


@pytest.mark.parametrize("ids", [["1", "2", "3", "2", "1"], ["a", "b", "c", "b", "a"]])
def test_duplicate_passage_ids(tmp_path, ids):
    path = write_lines(tmp_path / "corpus.jsonl", [jl(_id=pid, text="t") for pid in ids])
    with raises_at(path, 4, r"duplicate passage id '2?b?' \(first at line 2\)"):
        Corpus.from_beir(path, cache_dir=tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.arrow"))  # no reusable cache of a bad file
    with raises_at(Path("<records>"), 4, "duplicate passage id"):
        Corpus.from_records([{"_id": pid, "text": "t"} for pid in ids])


def test_empty_passages_are_kept_with_a_warning(tmp_path):
    path = write_lines(
        tmp_path / "corpus.jsonl",
        [jl(_id="1", title="a", text="x"), jl(_id="2", title="", text=""), jl(_id="3", text="   ")],
    )
    with pytest.warns(EmptyPassageWarning, match=r"2 passage\(s\) with empty text kept \(ids 2, 3\)"):
        corpus = Corpus.from_beir(path, cache_dir=tmp_path / "c")
    assert len(corpus) == 3 and corpus.text(1) == ""
    with pytest.warns(EmptyPassageWarning):  # also when loaded from the cache
        Corpus.from_beir(path, cache_dir=tmp_path / "c")


def test_msmarco_collection_round_trip(tmp_path):
    path = write_lines(
        tmp_path / "collection.tsv", ["0\tfirst passage", "1\tsecond\u00e9 passage", "2\tthird"]
    )
    corpus = Corpus.from_msmarco(path, cache_dir=tmp_path / "c")
    assert list(corpus.ids) == ["0", "1", "2"] and corpus.text(1) == "second\u00e9 passage"


BAD_CORPUS = [
    # (lines or bytes, line, message)
    ([jl(_id="a", text="x"), jl(_id="b", text="y"), '{"_id": "c", "text": '], 3, "invalid JSON"),
    ([jl(_id="a", text="x"), '["c", "text"]'], 2, "expected a JSON object, got an array"),
    ([jl(_id="a", text="x"), jl(text="y")], 2, "missing field '_id'"),
    ([jl(_id="a", text="x"), jl(_id="b", title="y")], 2, "missing field 'text'"),
    ([jl(_id="a", text="x"), jl(_id=7, text="y")], 2, "_id must be a string, got a number"),
    ([jl(_id="a", text="x"), jl(_id="b", text=3)], 2, "field 'text' must be a string"),
    ([jl(_id="a", text="x"), jl(_id="b c", text="y")], 2, "contains whitespace"),
    ([jl(_id="a", text="x"), jl(_id="", text="y")], 2, "_id is empty"),
    ([jl(_id="a", text="x"), "", jl(_id="b", text="y")], 2, "blank line inside the file"),
    (b'{"_id": "a", "text": "x"}\n{"_id": "b", "text": "caf\xe9"}\n', 2, "not valid UTF-8"),
    (b"", None, "empty file"),
    (b"\n\n", None, "empty file"),
]


@pytest.mark.parametrize("content,line,message", BAD_CORPUS)
def test_malformed_beir_corpus(tmp_path, content, line, message):
    path = tmp_path / "corpus.jsonl"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        write_lines(path, content)
    with raises_at(path, line, message) as info:
        Corpus.from_beir(path, cache_dir=tmp_path / "c")
    assert info.value.line == line and info.value.path == str(path)
    assert leftovers(tmp_path / "c") == [] if (tmp_path / "c").exists() else True


def test_missing_corpus_file(tmp_path):
    with raises_at(tmp_path / "corpus.jsonl", None, "no such file"):
        Corpus.from_beir(tmp_path / "corpus.jsonl")


def test_trailing_blank_lines_are_ignored(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text(jl(_id="a", text="x") + "\r\n" + jl(_id="b", text="y") + "\n\n  \n")
    assert list(Corpus.from_beir(path, cache_dir=tmp_path / "c").ids) == ["a", "b"]


@pytest.mark.parametrize(
    "lines,line,message",
    [
        (["1\tok", "2\ttoo\tmany"], 2, "expected 2 tab-separated columns"),
        (["1\tok", "2 only spaces"], 2, "expected 2 tab-separated columns"),
        (["1\tok", "1\tagain"], 2, r"duplicate passage id '1' \(first at line 1\)"),
    ],
)
def test_malformed_msmarco_collection(tmp_path, lines, line, message):
    path = write_lines(tmp_path / "collection.tsv", lines)
    with raises_at(path, line, message):
        Corpus.from_msmarco(path, cache_dir=tmp_path / "c")


# ---------------------------------------------------------------------------------------------------------------
# queries and qrels


def test_queries_round_trip_both_formats(tmp_path):
    beir = write_lines(
        tmp_path / "queries.jsonl",
        [jl(_id="q1", text="what is lift", metadata={}), jl(_id="q2", text="drag?")],
    )
    tsv = write_lines(tmp_path / "queries.dev.tsv", ["q1\twhat is lift", "q2\tdrag?"])
    assert load_queries(beir) == load_queries(tsv) == {"q1": "what is lift", "q2": "drag?"}


@pytest.mark.parametrize(
    "name,lines,line,message",
    [
        ("queries.jsonl", [jl(_id="q1", text="a"), jl(_id="q2", text="  ")], 2, "query 'q2' has empty text"),
        (
            "queries.jsonl",
            [jl(_id="q1", text="a"), jl(_id="q1", text="b")],
            2,
            r"duplicate query id 'q1' \(first at line 1\)",
        ),
        ("queries.jsonl", [jl(_id="q1", text="a"), jl(_id=2, text="b")], 2, "_id must be a string"),
        ("queries.jsonl", [jl(_id="q1", text="a"), "not json"], 2, "invalid JSON"),
        ("queries.train.tsv", ["q1\ta", "q2"], 2, "expected 2 tab-separated columns"),
        ("queries.train.tsv", ["q1\ta", "q2\t"], 2, "query 'q2' has empty text"),
        ("queries.csv", ["q1,a"], None, "cannot tell the queries format"),
    ],
)
def test_malformed_queries(tmp_path, name, lines, line, message):
    path = write_lines(tmp_path / name, lines)
    with raises_at(path, line, message):
        load_queries(path)


def test_qrels_beir_and_trec_round_trip(tmp_path):
    expected = {"q1": {"d1": 2, "d2": 0}, "q2": {"d3": 1}}
    beir = write_lines(
        tmp_path / "test.tsv", ["query-id\tcorpus-id\tscore", "q1\td1\t2", "q1\td2\t0", "q2\td3\t1"]
    )
    trec = write_lines(tmp_path / "qrels.txt", ["q1 0 d1 2", "q1 0 d2 0", "q2 0 d3 1"])
    trec_tabs = write_lines(tmp_path / "qrels.dev.tsv", ["q1\t0\td1\t2", "q1\t0\td2\t0", "q2\t0\td3\t1"])
    no_header = write_lines(tmp_path / "nh.tsv", ["q1\td1\t2", "q1\td2\t0", "q2\td3\t1"])
    for path in (beir, trec, trec_tabs, no_header):
        assert load_qrels(path) == expected
    assert load_qrels(beir, queries={"q1": "a", "q2": "b"}, corpus={"d1", "d2", "d3"}) == expected


@pytest.mark.parametrize(
    "lines,line,message",
    [
        (
            ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2\t1.5"],
            3,
            "relevance score must be an integer, got '1.5'",
        ),
        (["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td2"], 3, "expected 3 columns"),
        (["q1 0 d1 1", "q1 0 d2 1", "q1 d3 1"], 3, "expected 4 columns"),
        (["q1 d1 x y z"], 1, "expected 3 columns .* or 4"),
        (
            ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q1\td1\t2"],
            3,
            r"duplicate judgment .* \(first at line 2\)",
        ),
        (
            ["query-id\tcorpus-id\tscore", "q1\td1\t1", "q9\td2\t1"],
            3,
            "query id 'q9' is not among the queries",
        ),
        (["query-id\tcorpus-id\tscore", "q1\td1\t1", "q2\td9\t1"], 3, "passage id 'd9' is not in the corpus"),
        (["query-id\tcorpus-id\tscore"], None, "no judgments"),
    ],
)
def test_malformed_qrels(tmp_path, lines, line, message):
    path = write_lines(tmp_path / "train.tsv", lines)
    corpus = Corpus.from_records([{"_id": f"d{i}", "text": "t"} for i in range(1, 4)])
    with raises_at(path, line, message):
        load_qrels(path, queries={"q1": "a", "q2": "b"}, corpus=corpus)


# ---------------------------------------------------------------------------------------------------------------
# runs


def test_trec_run_round_trip_order_and_k(tmp_path):
    run = {"q2": {"a": 0.5, "b": 2.0, "c": 0.5, "d": -1.25}, "q1": {"x": 1e-7, "y": 3.0}}
    path = tmp_path / "run.trec"
    write_trec_run(path, run, tag="test")
    lines = path.read_text().splitlines()
    assert lines[:4] == [
        "q2 Q0 b 1 2.0 test",
        "q2 Q0 c 2 0.5 test",
        "q2 Q0 a 3 0.5 test",
        "q2 Q0 d 4 -1.25 test",
    ]
    assert read_trec_run(path) == run
    write_trec_run(path, run, k=2)
    assert read_trec_run(path) == {"q2": {"b": 2.0, "c": 0.5}, "q1": {"y": 3.0, "x": 1e-7}}
    assert all(line.endswith(" rocketkd") for line in path.read_text().splitlines())


def test_write_trec_run_failure_leaves_old_file(tmp_path):
    path = tmp_path / "run.trec"
    write_trec_run(path, {"q1": {"a": 1.0}})
    old = path.read_text()
    with pytest.raises(ValueError, match="not finite"):
        write_trec_run(path, {"q0": {"a": 1.0, "b": 0.5}, "q1": {"a": float("nan")}})
    assert path.read_text() == old and leftovers(tmp_path) == []
    with pytest.raises(ValueError, match="whitespace"):
        write_trec_run(path, {"q1": {"a": 1.0}}, tag="my tag")


@pytest.mark.parametrize(
    "lines,line,message",
    [
        (["q1 Q0 a 1 2.0 t", "q1 Q0 b 2 1.0"], 2, "expected 6 columns"),
        (["q1 Q0 a 1 2.0 t", "q1 Q0 b two 1.0 t"], 2, "rank must be an integer"),
        (["q1 Q0 a 1 2.0 t", "q1 Q0 b 2 high t"], 2, "score must be a number"),
        (["q1 Q0 a 1 2.0 t", "q1 Q0 b 2 nan t"], 2, "score must be finite"),
        (["q1 Q0 a 1 2.0 t", "q1 Q0 a 2 1.0 t"], 2, r"listed twice .* \(first at line 1\)"),
    ],
)
def test_malformed_run(tmp_path, lines, line, message):
    path = write_lines(tmp_path / "run.trec", lines)
    with raises_at(path, line, message):
        read_trec_run(path)


# ---------------------------------------------------------------------------------------------------------------
# candidate lists


def test_candidates_round_trip_with_provenance(tmp_path):
    lists = [
        CandidateList("q1", ["d1", "d2", "d3"], teacher_scores=[3.0, 1.0, -2.5], source="dense"),
        CandidateList("q2", ["d4", "d1"]),
    ]
    path = tmp_path / "round1" / "candidates.jsonl"
    write_candidates(path, lists, provenance={"retriever": "model-a", "k": 100})
    assert read_candidates(path) == lists
    meta = read_provenance(path)
    assert meta["retriever"] == "model-a" and meta["num_lists"] == 2
    assert meta["candidates_fingerprint"] == file_fingerprint(path)
    assert (tmp_path / "round1" / "candidates.jsonl.meta.json").exists()
    corpus = Corpus.from_records([{"_id": f"d{i}", "text": "t"} for i in range(1, 5)])
    assert read_candidates(path, corpus=corpus) == lists
    write_candidates(path, lists[:1])  # no provenance: the stale one must not describe the new file
    assert read_provenance(path) is None and read_candidates(path) == lists[:1]


def test_write_candidates_failure_leaves_old_files(tmp_path):
    path = tmp_path / "candidates.jsonl"
    write_candidates(path, [CandidateList("q1", ["a", "b"])], provenance={"round": 1})
    old, old_meta = path.read_text(), read_provenance(path)
    bad = CandidateList("q2", ["a", "b"], teacher_scores=[1.0, "not a number"])  # fails in to_dict, mid-write
    with pytest.raises(ValueError):
        write_candidates(path, [CandidateList("q0", ["a", "c"]), bad], provenance={"round": 2})
    assert path.read_text() == old and read_provenance(path) == old_meta and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "obj,message",
    [
        ('{"qid": "q1", "pids": ["a", "b"]', "invalid JSON"),
        (jl(pids=["a", "b"]), "missing field 'qid'"),
        (jl(qid="q1"), "missing field 'pids'"),
        (jl(qid="q1", pids="a b"), "'pids' must be a list"),
        (jl(qid="q1", pids=["a"]), "needs a positive and at least one negative, got 1"),
        (jl(qid="q1", pids=["a", "b", "a"]), "positive 'a' is also listed as a negative"),
        (jl(qid="q1", pids=["a", "b", "c", "b"]), "pid 'b' listed twice"),
        (jl(qid="q1", pids=["a", 5]), "each pid must be a string"),
        (
            jl(qid="q1", pids=["a", "b"], teacher_scores=[1.0]),
            "'teacher_scores' must be a list as long as 'pids'",
        ),
        (jl(qid="q1", pids=["a", "zzz"]), "passage id 'zzz' is not in the corpus"),
    ],
)
def test_malformed_candidates(tmp_path, obj, message):
    path = write_lines(tmp_path / "cands.jsonl", [jl(qid="q0", pids=["a", "b"]), obj])
    corpus = Corpus.from_records([{"_id": pid, "text": "t"} for pid in "abc"])
    with raises_at(path, 2, message):
        read_candidates(path, corpus=corpus)


# ---------------------------------------------------------------------------------------------------------------
# whole collections


def test_load_retrieval_data_beir(tiny_data, tmp_path):
    data = load_retrieval_data(tiny_data, cache_dir=tmp_path / "c")
    assert len(data.corpus) == 60 and len(data.queries) == 20 and data.unlabeled_queries == {}
    assert data.splits == ["dev", "test", "train"]
    assert {s: (len(q), sum(map(len, q.values()))) for s, q in data.qrels.items()} == {
        "dev": (4, 12),
        "test": (4, 12),
        "train": (12, 36),
    }
    train = data.split_queries("train")
    assert list(train) == list(data.qrels["train"]) and train["q0"] == data.queries["q0"]
    with pytest.raises(KeyError, match="no split 'valid'"):
        data.split_queries("valid")
    only = load_retrieval_data(tiny_data, splits=["test"], cache_dir=tmp_path / "c")
    assert only.splits == ["test"]
    with raises_at(tiny_data, None, r"no qrels for split\(s\) valid: .* found dev, test, train"):
        load_retrieval_data(tiny_data, splits=["valid"], cache_dir=tmp_path / "c")


def test_load_retrieval_data_checks_qrels_against_corpus_and_queries(tiny_data, tmp_path):
    qrels = tiny_data / "qrels" / "dev.tsv"
    n = len(qrels.read_text().splitlines())
    with open(qrels, "a") as f:
        f.write("q12\td999\t1\n")
    with raises_at(qrels, n + 1, "passage id 'd999' is not in the corpus"):
        load_retrieval_data(tiny_data, cache_dir=tmp_path / "c")


def test_load_retrieval_data_bad_paths(tmp_path):
    with raises_at(tmp_path / "missing", None, "no such folder; expected a BEIR layout .* MS MARCO layout"):
        load_retrieval_data(tmp_path / "missing")
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "docs.txt").write_text("x")
    with raises_at(
        odd, None, r"matches neither the BEIR layout \(corpus.jsonl.*collection.tsv.*found: docs.txt"
    ):
        load_retrieval_data(odd)
    beir = tmp_path / "beir"
    write_lines(beir / "corpus.jsonl", [jl(_id="d1", text="x")])
    with raises_at(beir / "queries.jsonl", None, "no such file"):
        load_retrieval_data(beir, cache_dir=tmp_path / "c")


def test_load_retrieval_data_msmarco(tmp_path):
    folder = tmp_path / "msmarco"
    write_lines(folder / "collection.tsv", [f"{i}\tpassage number {i}" for i in range(6)])
    write_lines(folder / "queries.train.tsv", ["100\tfirst query", "101\tsecond query"])
    write_lines(folder / "queries.dev.tsv", ["200\tdev query"])
    write_lines(folder / "qrels.train.tsv", ["100\t0\t0\t1", "100\t0\t3\t1", "101\t0\t5\t1"])
    write_lines(folder / "qrels.dev.tsv", ["200\t0\t2\t1"])
    write_lines(folder / "queries_unlabeled.jsonl", [jl(_id="300", text="no labels")])
    data = load_retrieval_data(folder, cache_dir=tmp_path / "c")
    assert len(data.corpus) == 6 and data.corpus.get_text("3") == "passage number 3"
    assert data.queries == {"200": "dev query", "100": "first query", "101": "second query"}
    assert data.qrels == {"dev": {"200": {"2": 1}}, "train": {"100": {"0": 1, "3": 1}, "101": {"5": 1}}}
    assert data.split_queries("dev") == {"200": "dev query"}
    assert data.unlabeled_queries == {"300": "no labels"}
    assert data.all_queries() == {"300": "no labels", "200": "dev query", "100": "first query", "101": "second query"}
    data.unlabeled_queries["100"] = "an unlabeled copy"  # a judged query's own text wins
    assert data.all_queries()["100"] == "first query" and len(data.all_queries()) == 4
    (folder / "queries.dev.tsv").unlink()
    with raises_at(folder / "queries.dev.tsv", None, "no such file"):
        load_retrieval_data(folder, cache_dir=tmp_path / "c")


@pytest.mark.skipif(not (REPO_DATA / "cranfield" / "corpus.jsonl").exists(), reason="data/ not present")
def test_shipped_collections_load_with_documented_counts(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cran = load_retrieval_data(REPO_DATA / "cranfield", cache_dir=tmp_path / "c")
    assert [str(w.message) for w in caught if w.category is EmptyPassageWarning] == [
        f"{REPO_DATA / 'cranfield' / 'corpus.jsonl'}: 2 passage(s) with empty text kept (ids 471, 995)"
    ]
    assert len(cran.corpus) == 1400 and len(cran.queries) == 225
    assert {s: len(q) for s, q in cran.qrels.items()} == {"train": 125, "dev": 25, "test": 75}
    assert sum(len(j) for q in cran.qrels.values() for j in q.values()) == 1612
    assert cran.corpus.get_text("1").startswith(
        "experimental investigation of the aerodynamics of a wing in a slip"
    )
    assert (
        cran.corpus.get_text("1").count("experimental investigation of the aerodynamics") == 1
    )  # no doubled title
    sci = load_retrieval_data(REPO_DATA / "scifact", cache_dir=tmp_path / "c")
    assert len(sci.corpus) == 5183 and len(sci.queries) == 1109 and len(sci.unlabeled_queries) == 300
    assert {s: len(q) for s, q in sci.qrels.items()} == {"train": 759, "dev": 50, "test": 300}
    assert sum(len(j) for j in sci.qrels["test"].values()) == 339
