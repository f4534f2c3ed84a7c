"""Bad input through the CLI (issue "Reliability"): every malformed input ends in exit status 2 and exactly one
line on stderr, ``rocketkd <stage>: error: ...``, naming the file and line (or the config key, the model path, the
index folder), with no traceback and no partial output: the output path does not exist afterwards and no temporary
sibling of it is left behind (nor in the corpus cache).

Each case runs ``rocketkd.cli.main`` in-process (captured with ``capsys``); almost all fail while the inputs are
read, before any model is loaded. The defects are written into a private copy of the tiny collection; most are one
row of a table (``DATA_DEFECTS``: a defect, the stage that meets it and what its error line must name).

A training query without a positive: ``mine`` and ``label_lists`` (``train`` without ``candidates.path``) skip it
and log how many they skipped; a training split where *no* query has a positive is an error.

``train`` checks a candidate file's query ids and the training split before it creates its output folder.
Config values that would fail inside training, splits that are not three different ones, and train/dev/test splits
that share a query are refused at load (``DATA_DEFECTS``); the stages' own option values before anything is read.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from rocketkd.cli import main
from rocketkd.data import Corpus, load_qrels, load_retrieval_data, read_trec_run, write_trec_run
from rocketkd.errors import ConfigError
from rocketkd.evaluation.metrics import evaluate_run, rank_scores
from rocketkd.models import DualEncoder
from rocketkd.search.bm25 import BM25Retriever
from rocketkd.search.fusion import candidates_from_run
from rocketkd.search.index import DenseIndex

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
TINY_DATA_QRELS = ROOT / "tests" / "resources" / "tiny" / "qrels" / "test.tsv"
STAGES = ("train", "mine", "index", "search", "evaluate", "pipeline", "config")

# A defect edits the private copy of the collection (tiny_data; tmp_path for files of its own) and returns the
# config overrides that point the stage at it and the strings the error line must contain.
Defect = Callable[[Path, Path], tuple[list[str], list[str]]]


# ----------------------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True)
def corpus_cache(tmp_path, monkeypatch) -> Path:
    """A private corpus cache, checked for leftovers by ``assert_no_output``."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("ROCKETKD_CACHE_DIR", str(cache))
    return cache


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # drop what fixtures printed (e.g. progress bars while building an index)
    code = main(["-q", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error(result: tuple[int, str, str], stage: str, *needles: str) -> str:
    code, out, err = result
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, f"expected exactly one line on stderr, got:\n{err}"
    line = lines[0]
    assert line.startswith(f"rocketkd {stage}: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    assert code == 2
    return line


def assert_no_output(path: Path, cache: Path | None = None) -> None:
    assert not path.exists(), f"{path} was (partly) written"
    folder = path.parent
    if folder.is_dir():
        leftovers = [p.name for p in folder.iterdir() if p.name.startswith(f".{path.name}.")]
        assert not leftovers, f"temporary files left in {folder}: {leftovers}"
    if cache is not None and cache.is_dir():
        temps = [p.name for p in cache.iterdir() if p.name.startswith(".")]
        assert not temps, f"temporary files left in the corpus cache: {temps}"


def lines_of(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def train_args(data: Path, model: Path, out: Path, *overrides: str) -> list[str]:
    sets = [f"data.path={data}", f"model.retriever={model}", f"model.reranker={model}", *overrides]
    return ["train", "--config", TINY_CONFIG, *[x for s in sets for x in ("--set", s)], "--output", out]


def mine_args(data: Path, out: Path, *overrides: str) -> list[str]:
    sets = [f"data.path={data}", *overrides]
    return ["mine", "--config", TINY_CONFIG, *[x for s in sets for x in ("--set", s)], "--output", out]


def _edit_json_line(path: Path, index: int, edit: Callable[[dict], None]) -> list[str]:
    """Apply ``edit`` to the JSON object on line ``index + 1``; returns the file's lines."""
    lines = lines_of(path)
    obj = json.loads(lines[index])
    edit(obj)
    lines[index] = json.dumps(obj)
    write_lines(path, lines)
    return lines


def _set(*overrides: str, needles: tuple[str, ...]) -> Defect:
    """A defect that is config overrides alone."""
    return lambda data, tmp: (list(overrides), list(needles))


# ----------------------------------------------------------------------------------------------------------------
# defects of corpus.jsonl


def _corpus_invalid_json_line(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    corpus = data / "corpus.jsonl"
    lines = lines_of(corpus)
    lines[4] = lines[4][:-1]  # drop the closing brace of line 5
    write_lines(corpus, lines)
    return [], [f"{corpus}:5:", "invalid JSON"]


def _corpus_missing_id(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    corpus = data / "corpus.jsonl"
    _edit_json_line(corpus, 2, lambda obj: obj.pop("_id"))
    return [], [f"{corpus}:3:", "missing field '_id'"]


def _corpus_missing_text(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    corpus = data / "corpus.jsonl"
    lines = _edit_json_line(corpus, len(lines_of(corpus)) - 1, lambda obj: obj.pop("text"))
    return [], [f"{corpus}:{len(lines)}:", "missing field 'text'"]


def _corpus_duplicate_id(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    corpus = data / "corpus.jsonl"
    _edit_json_line(corpus, 9, lambda obj: obj.update(_id="d3"))  # line 10 repeats the id of line 4
    return [], [f"{corpus}:10:", "duplicate passage id 'd3'", "line 4"]


def _corpus_latin1_bytes(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    corpus = data / "corpus.jsonl"
    raw = corpus.read_bytes().split(b"\n")
    raw[6] = json.dumps({"_id": "d6", "title": "aile", "text": "caf\u00e9 r\u00e9sultats"}, ensure_ascii=False).encode(
        "latin-1"
    )
    corpus.write_bytes(b"\n".join(raw))
    return [], [f"{corpus}:7:", "not valid UTF-8"]


# ----------------------------------------------------------------------------------------------------------------
# defects of queries and qrels


def _query_empty_text(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    queries = data / "queries.jsonl"
    lines = lines_of(queries)
    lines[1] = json.dumps({"_id": "q1", "text": "   "})
    write_lines(queries, lines)
    return [], [f"{queries}:2:", "query 'q1' has empty text"]


def _qrels_unknown_query(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    qrels = data / "qrels" / "train.tsv"
    write_lines(qrels, [*lines_of(qrels), "q99\td5\t1"])
    return [], [f"{qrels}:{len(lines_of(qrels))}:", "query id 'q99'"]


def _qrels_unknown_passage(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    qrels = data / "qrels" / "dev.tsv"
    lines = lines_of(qrels)
    lines[3] = lines[3].split("\t")[0] + "\td999\t1"
    write_lines(qrels, lines)
    return [], [f"{qrels}:4:", "passage id 'd999' is not in the corpus"]


def _qrels_non_integer_score(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
    qrels = data / "qrels" / "train.tsv"
    lines = lines_of(qrels)
    lines[5] = "q1\td4\t0.5"
    write_lines(qrels, lines)
    return [], [f"{qrels}:6:", "must be an integer", "'0.5'"]


def _zero_grades(qrels: Path, qids: set[str] | None) -> None:
    lines = lines_of(qrels)
    out = [lines[0]]
    for line in lines[1:]:
        qid, pid, _ = line.split("\t")
        out.append(f"{qid}\t{pid}\t0" if qids is None or qid in qids else line)
    write_lines(qrels, out)


def _no_positive_at_all(*needles: str) -> Defect:
    def defect(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
        _zero_grades(data / "qrels" / "train.tsv", None)
        return [], list(needles)

    return defect


# ----------------------------------------------------------------------------------------------------------------
# defects of candidate lists (train with candidates.path)


def _candidates(*rows: dict, needles: tuple[str, ...]) -> Defect:
    """A candidate file of these rows; ``{cands}`` in a needle is its path."""

    def defect(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
        cands = tmp / "candidates.jsonl"
        write_lines(cands, [json.dumps(row) for row in rows])
        return [f"candidates.path={cands}"], [n.format(cands=cands) for n in needles]

    return defect


def _split_overlap(a: str, b: str, qid: str) -> Defect:
    """Query ``qid`` of split ``a`` judged in split ``b`` too."""

    def defect(data: Path, tmp: Path) -> tuple[list[str], list[str]]:
        source = [line for line in lines_of(data / "qrels" / f"{a}.tsv") if line.startswith(qid + "\t")]
        target = data / "qrels" / f"{b}.tsv"
        write_lines(target, [*lines_of(target), *source])
        return [], [f"data.{a}_split {a!r}", f"data.{b}_split {b!r}", repr(qid), "disjoint"]

    return defect


DATA_DEFECTS = [
    pytest.param("train", _corpus_invalid_json_line, id="corpus-invalid-json-line"),
    pytest.param("mine", _corpus_missing_id, id="corpus-missing-id"),
    pytest.param("train", _corpus_missing_text, id="corpus-missing-text"),
    pytest.param("train", _corpus_latin1_bytes, id="corpus-latin1-bytes"),
    pytest.param("train", _query_empty_text, id="query-empty-text"),
    pytest.param("mine", _qrels_unknown_query, id="qrels-unknown-query"),
    pytest.param("train", _qrels_unknown_passage, id="qrels-unknown-passage"),
    pytest.param("mine", _qrels_non_integer_score, id="qrels-non-integer-score"),
    pytest.param("mine", _no_positive_at_all("split 'train'", "data.min_positive_grade"),
                 id="mine-training-split-without-any-positive"),
    pytest.param("train", _no_positive_at_all("has a positive of grade >= 1", "data.train_split",
                                              "data.min_positive_grade"),
                 id="train-training-split-without-any-positive"),
    pytest.param("train", _candidates({"qid": "q0", "pids": ["d0", "d40", "d41", "d42"]},
                                      {"qid": "q1", "pids": ["d3", "d43", "d3", "d44"]},
                                      needles=("{cands}:2:", "positive 'd3' is also listed as a negative")),
                 id="candidates-positive-also-negative"),
    # would otherwise be a KeyError in the collator, after the output folder was made
    pytest.param("train", _candidates({"qid": "q0", "pids": ["d0", "d40", "d41", "d42"]},
                                      {"qid": "q77", "pids": ["d3", "d43", "d45", "d44"]},
                                      needles=("{cands}:2:", "'q77'")),
                 id="candidates-unknown-query"),
    pytest.param("train", _candidates({"qid": "q0", "pids": ["d0", "d40", "d41"]},
                                      needles=("candidates.list_length=4", "'q0' has 3")),
                 id="train-list-length-above-mined-lists"),
    pytest.param("train", _set("data.train_split=nosuch", needles=("'data.train_split'", "'nosuch'")),
                 id="train-unknown-train-split"),
    pytest.param("mine", _set("data.train_split=nosuch", needles=("'data.train_split'", "'nosuch'")),
                 id="mine-unknown-train-split"),
    pytest.param("train", _set("candidates.list_length=100", needles=("candidates.list_length=100",)),
                 id="train-list-length-above-candidates"),
    pytest.param("mine", _set("candidates.list_length=100", needles=("'candidates.list_length': 100",
                                                                     "only 60 passages")),
                 id="mine-list-length-above-corpus"),
    pytest.param("train", _set("train.batch_size=abc", needles=("'train.batch_size'", "expected an integer", "'abc'")),
                 id="config-wrong-type"),
    pytest.param("train", _set("model.retriever=./no/such/model", needles=("./no/such/model", "no such model folder")),
                 id="model-path-missing"),
    # values that failed deep inside training (tracebacks) or were silently accepted (issue 21)
    pytest.param("train", _set("train.gradient_accumulation_steps=0",
                               needles=("'train.gradient_accumulation_steps'", "at least 1", "0")),
                 id="gradient-accumulation-zero"),
    pytest.param("train", _set("train.temperature=0", needles=("'train.temperature'", "> 0")),
                 id="temperature-zero"),
    pytest.param("train", _set("train.max_steps=-3", needles=("'train.max_steps'", "-3")), id="max-steps-negative"),
    pytest.param("train", _set("train.max_steps=0", needles=("'train.max_steps'", "train.epochs")),
                 id="max-steps-zero"),
    pytest.param("train", _set("train.lr_retriever=-1e-5", needles=("'train.lr_retriever'", ">= 0")),
                 id="lr-retriever-negative"),
    pytest.param("train", _set("train.lr_reranker_head=-0.001", needles=("'train.lr_reranker_head'", ">= 0")),
                 id="lr-reranker-head-negative"),
    # honesty guards: nothing is selected or trained on the test split
    pytest.param("train", _set("data.dev_split=test", needles=("'data.dev_split'", "'data.test_split'", "'test'")),
                 id="dev-split-is-test-split"),
    pytest.param("mine", _set("data.train_split=dev", needles=("'data.train_split'", "'data.dev_split'")),
                 id="train-split-is-dev-split"),
    pytest.param("train", _split_overlap("dev", "test", "q12"), id="dev-query-also-in-test"),
    pytest.param("train", _split_overlap("train", "test", "q0"), id="train-query-also-in-test"),
]


def _run_stage(capsys, stage: str, data: Path, model: Path, out: Path, overrides: list[str]):
    args = train_args(data, model, out, *overrides) if stage == "train" else mine_args(data, out, *overrides)
    return cli(capsys, *args)


def _output_of(stage: str, tmp: Path) -> Path:
    return tmp / "run" if stage == "train" else tmp / "mined" / "candidates.jsonl"


@pytest.mark.parametrize("stage, defect", DATA_DEFECTS)
def test_bad_data_is_one_error_line_and_no_output(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache, stage,
                                                  defect):
    overrides, needles = defect(tiny_data, tmp_path)
    out = _output_of(stage, tmp_path)
    assert_one_error(_run_stage(capsys, stage, tiny_data, tiny_bert, out, overrides), stage, *needles)
    assert_no_output(out, corpus_cache)


def test_corpus_invalid_json_line_subprocess(tiny_data, tiny_bert, tmp_path, corpus_cache):
    """The same through a real process: nothing else (log lines, library warnings) reaches stderr with -q."""
    _, needles = _corpus_invalid_json_line(tiny_data, tmp_path)
    out = tmp_path / "run"
    env = {**os.environ, "ROCKETKD_CACHE_DIR": str(corpus_cache), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "rocketkd.cli", "-q", *map(str, train_args(tiny_data, tiny_bert, out))]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert_one_error((proc.returncode, proc.stdout, proc.stderr), "train", *needles)
    assert proc.stdout == ""
    assert_no_output(out, corpus_cache)


def test_corpus_duplicate_id(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    """Also: the corpus cache keeps no entry of a corpus with duplicate ids."""
    _, needles = _corpus_duplicate_id(tiny_data, tmp_path)
    out = _output_of("mine", tmp_path)
    assert_one_error(_run_stage(capsys, "mine", tiny_data, tiny_bert, out, []), "mine", *needles)
    assert_no_output(out, corpus_cache)
    assert not list(corpus_cache.glob("*.arrow")), "a cache entry of a corpus with duplicate ids was kept"


def test_config_unknown_key(capsys, tiny_data, tiny_bert, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(TINY_CONFIG.read_text().replace("  depth: 10", "  depht: 10"))
    out = tmp_path / "run"
    result = cli(capsys, "train", "--config", config, "--set", f"data.path={tiny_data}", "--output", out)
    assert_one_error(result, "train", "unknown config key 'mining.depht'")
    assert_no_output(out)


# ----------------------------------------------------------------------------------------------------------------
# training queries without a positive: skipped with a count in the log (none at all: DATA_DEFECTS)


def test_mine_skips_training_query_without_positive(capsys, caplog, tiny_data, tmp_path):
    _zero_grades(tiny_data / "qrels" / "train.tsv", {"q3"})
    out = tmp_path / "mined" / "candidates.jsonl"
    caplog.set_level(logging.INFO, logger="rocketkd")
    code, stdout, err = cli(capsys, *mine_args(tiny_data, out))
    assert code == 0, err
    assert "1 of 12 queries" in caplog.text and "no positive" in caplog.text, caplog.text
    qids = {json.loads(line)["qid"] for line in lines_of(out)}
    assert "q3" not in qids and len(qids) == 11


def test_label_lists_skips_training_query_without_positive(caplog):
    from rocketkd.candidates.negatives import label_lists

    qrels = {"q1": {"d1": 1}, "q2": {"d2": 0}, "q3": {"d3": 2}}
    with caplog.at_level(logging.INFO, logger="rocketkd"):
        lists = label_lists(qrels, [f"d{i}" for i in range(10)], list_length=3)
    assert [cl.qid for cl in lists] == ["q1", "q3"]
    assert "1 of 3 queries" in caplog.text and "no positive" in caplog.text, caplog.text


# ----------------------------------------------------------------------------------------------------------------
# index: corpus files and model paths


def _empty_corpus(data: Path, model: Path, tmp: Path) -> tuple[Path | str, Path, list[str]]:
    corpus = tmp / "corpus.jsonl"
    corpus.write_bytes(b"")
    return model, corpus, [str(corpus), "empty file"]


def _missing_model(data: Path, model: Path, tmp: Path) -> tuple[Path | str, Path, list[str]]:
    return "./no/such/model", data, ["./no/such/model", "no such model folder"]


@pytest.mark.parametrize("defect", [pytest.param(_empty_corpus, id="corpus-empty-file"),
                                    pytest.param(_missing_model, id="model-path-missing")])
def test_index_bad_input(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache, defect):
    model, corpus, needles = defect(tiny_data, tiny_bert, tmp_path)
    out = tmp_path / "index"
    result = cli(capsys, "index", "--model", model, "--corpus", corpus, "--output", out)
    assert_one_error(result, "index", *needles)
    assert_no_output(out, corpus_cache)


# ----------------------------------------------------------------------------------------------------------------
# values of the stages' own options: refused before any model or index is read (issue 21)


@pytest.mark.parametrize("argv, needles", [
    pytest.param(["search", "--query", "wing", "--k", "0"], ["--k", "at least 1", "0"], id="search-k-zero"),
    pytest.param(["search", "--query", "wing", "--k", "-1"], ["--k", "-1"], id="search-k-negative"),
    pytest.param(["search", "--query", ""], ["--query", "empty"], id="search-empty-query"),
    pytest.param(["search", "--query", "   "], ["--query", "empty"], id="search-blank-query"),
    pytest.param(["index", "--model", "./no/such/model", "--corpus", "c.jsonl", "--batch-size", "0"],
                 ["--batch-size", "at least 1"], id="index-batch-size-zero"),
])
def test_option_values_are_checked_first(capsys, tmp_path, argv, needles):
    if argv[0] == "search":
        argv = [*argv, "--index", str(tmp_path / "no-index")]  # not read: the value is refused first
    else:
        argv = [*argv, "--output", str(tmp_path / "index")]
    assert_one_error(cli(capsys, *argv), argv[0], *needles)
    assert_no_output(tmp_path / "index")


# ----------------------------------------------------------------------------------------------------------------
# index folders and run files


@pytest.fixture
def index_folder(tiny_bert, tiny_data, tmp_path) -> Path:
    corpus = Corpus.from_beir(tiny_data / "corpus.jsonl")
    index = DenseIndex.build(DualEncoder.from_pretrained(tiny_bert), corpus, show_progress=False)
    return index.save(tmp_path / "index")


@pytest.mark.parametrize("missing, split, needles", [
    *[pytest.param(name, "test", ("{index}", f"{name} is missing"), id=f"index-missing-{name}")
      for name in ("ids.txt", "index.faiss", "meta.json")],
    pytest.param(None, "valid", ("'valid'", "--split"), id="unknown-split"),
])
def test_search_bad_input(capsys, index_folder, tiny_data, tmp_path, missing, split, needles):
    if missing:
        (index_folder / missing).unlink()
    out = tmp_path / "runs" / "test.run"
    result = cli(capsys, "search", "--index", index_folder, "--queries", tiny_data, "--split", split, "--output", out)
    assert_one_error(result, "search", *(n.format(index=index_folder) for n in needles))
    assert_no_output(out)


def test_search_bm25_weight_rescores_the_top_k_and_rejects_weights_over_one(capsys, index_folder, tiny_data,
                                                                          tmp_path):
    dense, lexical = tmp_path / "dense.run", tmp_path / "lexical.run"
    base = ["search", "--index", index_folder, "--queries", tiny_data, "--split", "test", "--k", 10]
    assert cli(capsys, *base, "--output", dense)[0] == 0
    assert cli(capsys, *base, "--output", lexical, "--bm25-weight", 1)[0] == 0
    first, fused = read_trec_run(dense), read_trec_run(lexical)
    corpus = Corpus.from_beir(tiny_data / "corpus.jsonl")
    queries = load_retrieval_data(tiny_data).split_queries("test")
    bm25 = BM25Retriever.build(corpus).score_candidates(candidates_from_run(first, 10), queries, corpus)
    for qid in first:  # the same ten passages, in BM25's order (weight 1: BM25 alone re-scores them)
        assert set(fused[qid]) == set(first[qid])
        assert [bm25[qid][p] for p in rank_scores(fused[qid], qid)] == sorted(bm25[qid].values(), reverse=True)
    out = tmp_path / "bad.run"
    result = cli(capsys, *base, "--output", out, "--rerank", index_folder, "--fusion-weight", 0.6, "--bm25-weight", 0.6)
    assert_one_error(result, "search", "--bm25-weight 0.6", "exceed 1")
    assert_no_output(out)


def _write_run(path: Path) -> None:
    qrels = load_qrels(TINY_DATA_QRELS)
    run = {}
    for i, (qid, judged) in enumerate(qrels.items()):
        pids = sorted(judged) + [f"d{j}" for j in range(0, 60, 7)]
        run[qid] = {pid: ((7 * i + 13 * j) % 17) / 17 for j, pid in enumerate(dict.fromkeys(pids))}
    write_trec_run(path, run)


def _run_with_short_line(tmp: Path) -> tuple[Path, Path, list[str]]:
    run = tmp / "test.run"
    _write_run(run)
    lines = lines_of(run)
    lines[6] = " ".join(lines[6].split()[:5])  # a line with 5 columns
    write_lines(run, lines)
    return run, TINY_DATA_QRELS, [f"{run}:7:", "expected 6 columns"]


def _qrels_without_relevant(tmp: Path) -> tuple[Path, Path, list[str]]:
    run = tmp / "test.run"
    _write_run(run)
    qrels = tmp / "qrels.tsv"
    write_lines(qrels, ["query-id\tcorpus-id\tscore", "q16\td48\t0", "q17\td51\t0"])
    return run, qrels, [str(qrels), "no query"]


@pytest.mark.parametrize("defect", [pytest.param(_run_with_short_line, id="run-malformed-line"),
                                    pytest.param(_qrels_without_relevant, id="qrels-without-relevant")])
def test_evaluate_bad_input(capsys, tmp_path, defect):
    run, qrels, needles = defect(tmp_path)
    code, out, err = result = cli(capsys, "evaluate", "--run", run, "--qrels", qrels)
    assert_one_error(result, "evaluate", *needles)
    assert out == ""


# ----------------------------------------------------------------------------------------------------------------
# evaluate --json and --help


def test_evaluate_json_matches_python_api(capsys, tmp_path):
    run = tmp_path / "test.run"
    _write_run(run)
    code, out, err = cli(capsys, "evaluate", "--run", run, "--qrels", TINY_DATA_QRELS, "--json")
    assert code == 0, err
    result = json.loads(out)  # one JSON object and nothing else
    assert isinstance(result, dict)
    expected = evaluate_run(read_trec_run(run), load_qrels(TINY_DATA_QRELS)).mean
    for key in ("MRR@10", "nDCG@10", "R@100", "MAP"):
        assert result[key] == pytest.approx(expected[key], abs=0, rel=1e-12), key
    assert result == expected


HELP_MENTIONS = {
    None: ["train", "mine", "index", "search", "evaluate", "pipeline", "config", "--quiet"],
    "train": ["--config", "--set", "--output", "--resume"],
    "mine": ["--config", "--set", "--output", "--retriever", "--reranker"],
    "index": ["--model", "--corpus", "--output", "--factory", "--batch-size"],
    "search": ["--index", "--queries", "--split", "--query", "--output", "--k", "--rerank", "--fusion-weight",
               "--bm25-weight"],
    "evaluate": ["--run", "--qrels", "--metrics", "--json"],
    "pipeline": ["--config", "--set", "--output"],
    "config": ["usage: rocketkd config"],
}


@pytest.mark.parametrize("stage", [None, *STAGES])
def test_help(capsys, stage):
    argv = ["--help"] if stage is None else [stage, "--help"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 0
    assert err == ""
    for needle in HELP_MENTIONS[stage]:
        assert needle in out, f"{needle!r} not in `rocketkd {stage or ''} --help`"


def test_no_stage_prints_help(capsys):
    assert main([]) == 0
    assert "usage: rocketkd" in capsys.readouterr().out


def test_yaml_no_is_a_precision_not_false():
    """YAML 1.1 reads a bare `no` as false; for the precision keys it means "no", elsewhere it stays an error."""
    from rocketkd.config import load_config

    cfg = load_config(None, ["train.mixed_precision=no", "index.autocast=no"])
    assert cfg.train.mixed_precision == "no" and cfg.index.autocast == "no"
    with pytest.raises(ConfigError, match="'train.mode': expected a string, got False"):
        load_config(None, ["train.mode=no"])


@pytest.mark.parametrize("key", ["warmup_epochs", "round_epochs"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_pass_counts_must_be_positive(key, value):
    from rocketkd.config import load_config

    assert getattr(load_config(None, [f"pipeline.{key}=2"]).pipeline, key) == 2
    with pytest.raises(ConfigError, match=f"'pipeline.{key}': must be > 0 \\(or empty\\), got {value}"):
        load_config(None, [f"pipeline.{key}={value}"])


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf"])
def test_the_rounds_reranker_rate_scale_is_a_positive_number(value):
    from rocketkd.config import load_config

    assert load_config(None, ["pipeline.round_reranker_lr_scale=0.1"]).pipeline.round_reranker_lr_scale == 0.1
    with pytest.raises(ConfigError, match=f"'pipeline.round_reranker_lr_scale': must be a number > 0 \\(round_mode "
                                          f"static freezes the re-ranker\\), got {float(value)}"):
        load_config(None, [f"pipeline.round_reranker_lr_scale={value}"])


@pytest.mark.parametrize("value", ["0", "-0.1", "1.5"])
def test_the_fusion_level_lies_in_zero_one(value):
    from rocketkd.config import load_config

    assert load_config(None, ["eval.fusion_alpha=1"]).eval.fusion_alpha == 1.0
    with pytest.raises(ConfigError, match=f"'eval.fusion_alpha': must lie in \\(0, 1\\], got {float(value)}"):
        load_config(None, [f"eval.fusion_alpha={value}"])
