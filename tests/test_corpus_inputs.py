"""Corpus and queries inputs of `index` and `search` (issue 21, items 8 and 10; docs/reliability.md).

Each test failed before: `search --corpus` skipped the corpus fingerprint (a KeyError traceback, or silently wrong
texts), `meta.json` kept a relative corpus path (`search --query` failed from another folder), a `.gz` corpus got a
UTF-8 message, and `index --corpus DIR` demanded a queries file it does not need.
"""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from rocketkd.cli import main
from rocketkd.data import Corpus, load_queries, load_retrieval_data
from rocketkd.errors import DataFormatError
from rocketkd.models import DualEncoder
from rocketkd.search.index import DenseIndex


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["-q", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(result, stage: str, *needles: str) -> str:
    code, _, err = result
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"rocketkd {stage}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert code == 2
    return lines[0]


def gz(path: Path) -> Path:
    target = path.with_name(path.name + ".gz")
    with open(path, "rb") as src, gzip.open(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return target


def test_gz_corpus_and_queries_read_like_plain_ones(tiny_data, tmp_path):
    plain = Corpus.from_beir(tiny_data / "corpus.jsonl")
    packed = Corpus.from_beir(gz(tiny_data / "corpus.jsonl"))
    assert list(packed.ids) == list(plain.ids) and packed.get_text(plain.ids[3]) == plain.get_text(plain.ids[3])
    assert packed.fingerprint() == plain.fingerprint()  # the same passages: an index of one serves the other
    assert load_queries(gz(tiny_data / "queries.jsonl")) == load_queries(tiny_data / "queries.jsonl")


def test_a_damaged_gz_is_one_error_naming_the_file(tiny_data, tmp_path):
    packed = gz(tiny_data / "queries.jsonl").read_bytes()
    cut = tmp_path / "queries.jsonl.gz"
    cut.write_bytes(packed[: len(packed) // 2])  # truncated download
    with pytest.raises(DataFormatError, match="queries.jsonl.gz.*damaged gzip data"):
        load_queries(cut)
    # gzip is told by the first bytes, not the name: a plain file called .gz is read as it is
    fake = tmp_path / "corpus.jsonl.gz"
    fake.write_text('{"_id": "d1", "text": "not compressed"}\n')
    assert len(Corpus.from_beir(fake)) == 1


def test_index_of_a_folder_needs_only_its_corpus(capsys, tiny_bert, tiny_data, tmp_path):
    folder = tmp_path / "only-corpus"
    folder.mkdir()
    shutil.copy(tiny_data / "corpus.jsonl", folder / "corpus.jsonl")
    with pytest.raises(DataFormatError):  # the whole-collection loader wants the queries
        load_retrieval_data(folder)
    code, out, err = cli(capsys, "index", "--model", tiny_bert, "--corpus", folder, "--output", tmp_path / "idx")
    assert code == 0, err
    assert DenseIndex.load(tmp_path / "idx").ntotal == len(Corpus.from_beir(folder / "corpus.jsonl"))


@pytest.fixture
def index_from_relative_path(tiny_bert, tiny_data, tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tiny_data.parent)
    corpus = Corpus.from_beir(Path(tiny_data.name) / "corpus.jsonl")  # a relative path, as typed
    index = DenseIndex.build(DualEncoder.from_pretrained(tiny_bert), corpus, show_progress=False)
    return index.save(tmp_path / "index")


def test_search_query_works_from_another_folder(capsys, index_from_relative_path, tmp_path, monkeypatch):
    meta = json.loads((index_from_relative_path / "meta.json").read_text())
    assert Path(meta["corpus_path"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, out, err = cli(capsys, "search", "--index", index_from_relative_path, "--query", "wing flutter", "--k", 3)
    assert code == 0, err
    assert out.lstrip().startswith("1. ")  # the first hit (the rank column is as wide as --k needs)


def test_search_corpus_must_be_the_indexed_one(capsys, index_from_relative_path, tiny_data, tmp_path):
    other = tmp_path / "other.jsonl"
    rows = [json.loads(line) for line in (tiny_data / "corpus.jsonl").read_text().splitlines()]
    rows[0]["text"] = "a different passage text"
    other.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = cli(capsys, "search", "--index", index_from_relative_path, "--query", "wing", "--corpus", other)
    one_error(result, "search", f"--corpus {other}", "fingerprint", "not the corpus")
    assert cli(capsys, "search", "--index", index_from_relative_path, "--query", "wing", "--corpus",
               gz(tiny_data / "corpus.jsonl"))[0] == 0  # the same passages, compressed: accepted
