"""Bad input through the CLI (issue "Reliability"): every malformed input ends in exit status 2 and exactly one
line on stderr, ``rocketkd <stage>: error: ...``, naming the file and line (or the config key, the model path, the
index folder), with no traceback and no partial output: the output path does not exist afterwards and no temporary
sibling of it is left behind (nor in the corpus cache).

Each case runs ``rocketkd.cli.main`` in-process (captured with ``capsys``); almost all fail while the inputs are
read, before any model is loaded. The defects are written into a private copy of the tiny collection.

A training query without a positive: ``mine`` and ``label_lists`` (``train`` without ``candidates.path``) skip it
and log how many they skipped; a training split where *no* query has a positive is an error.

``train`` checks a candidate file's query ids and the training split before it creates its output folder.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rocketkd.cli import main
from rocketkd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"
STAGES = ("train", "mine", "index", "search", "evaluate", "pipeline", "config")


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


# ----------------------------------------------------------------------------------------------------------------
# corpus.jsonl


def test_corpus_invalid_json_line(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    corpus = tiny_data / "corpus.jsonl"
    lines = lines_of(corpus)
    lines[4] = lines[4][:-1]  # drop the closing brace of line 5
    write_lines(corpus, lines)
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out))
    assert_one_error(result, "train", f"{corpus}:5:", "invalid JSON")
    assert_no_output(out, corpus_cache)


def test_corpus_invalid_json_line_subprocess(tiny_data, tiny_bert, tmp_path, corpus_cache):
    """The same through a real process: nothing else (log lines, library warnings) reaches stderr with -q."""
    corpus = tiny_data / "corpus.jsonl"
    lines = lines_of(corpus)
    lines[4] = lines[4][:-1]
    write_lines(corpus, lines)
    out = tmp_path / "run"
    env = {**os.environ, "ROCKETKD_CACHE_DIR": str(corpus_cache), "HF_HUB_OFFLINE": "1"}
    argv = [sys.executable, "-m", "rocketkd.cli", "-q", *map(str, train_args(tiny_data, tiny_bert, out))]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert_one_error((proc.returncode, proc.stdout, proc.stderr), "train", f"{corpus}:5:", "invalid JSON")
    assert proc.stdout == ""
    assert_no_output(out, corpus_cache)


def test_corpus_missing_id(capsys, tiny_data, tmp_path, corpus_cache):
    corpus = tiny_data / "corpus.jsonl"
    lines = lines_of(corpus)
    obj = json.loads(lines[2])
    del obj["_id"]
    lines[2] = json.dumps(obj)
    write_lines(corpus, lines)
    out = tmp_path / "mined" / "candidates.jsonl"
    result = cli(capsys, *mine_args(tiny_data, out))
    assert_one_error(result, "mine", f"{corpus}:3:", "missing field '_id'")
    assert_no_output(out, corpus_cache)


def test_corpus_missing_text(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    corpus = tiny_data / "corpus.jsonl"
    lines = lines_of(corpus)
    obj = json.loads(lines[-1])
    del obj["text"]
    lines[-1] = json.dumps(obj)
    write_lines(corpus, lines)
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out))
    assert_one_error(result, "train", f"{corpus}:{len(lines)}:", "missing field 'text'")
    assert_no_output(out, corpus_cache)


def test_corpus_duplicate_id(capsys, tiny_data, tmp_path, corpus_cache):
    corpus = tiny_data / "corpus.jsonl"
    lines = lines_of(corpus)
    obj = json.loads(lines[9])
    obj["_id"] = "d3"  # line 10 repeats the id of line 4
    lines[9] = json.dumps(obj)
    write_lines(corpus, lines)
    out = tmp_path / "mined" / "candidates.jsonl"
    result = cli(capsys, *mine_args(tiny_data, out))
    assert_one_error(result, "mine", f"{corpus}:10:", "duplicate passage id 'd3'", "line 4")
    assert_no_output(out, corpus_cache)
    assert not list(corpus_cache.glob("*.arrow")), "a cache entry of a corpus with duplicate ids was kept"


def test_corpus_empty_file(capsys, tiny_bert, tmp_path, corpus_cache):
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_bytes(b"")
    out = tmp_path / "index"
    result = cli(capsys, "index", "--model", tiny_bert, "--corpus", corpus, "--output", out)
    assert_one_error(result, "index", str(corpus), "empty file")
    assert_no_output(out, corpus_cache)


def test_corpus_latin1_bytes(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    corpus = tiny_data / "corpus.jsonl"
    raw = corpus.read_bytes().split(b"\n")
    raw[6] = json.dumps({"_id": "d6", "title": "aile", "text": "caf\u00e9 r\u00e9sultats"}, ensure_ascii=False).encode(
        "latin-1"
    )
    corpus.write_bytes(b"\n".join(raw))
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out))
    assert_one_error(result, "train", f"{corpus}:7:", "not valid UTF-8")
    assert_no_output(out, corpus_cache)


# ----------------------------------------------------------------------------------------------------------------
# queries and qrels


def test_query_empty_text(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    queries = tiny_data / "queries.jsonl"
    lines = lines_of(queries)
    lines[1] = json.dumps({"_id": "q1", "text": "   "})
    write_lines(queries, lines)
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out))
    assert_one_error(result, "train", f"{queries}:2:", "query 'q1' has empty text")
    assert_no_output(out, corpus_cache)


def test_qrels_unknown_query(capsys, tiny_data, tmp_path, corpus_cache):
    qrels = tiny_data / "qrels" / "train.tsv"
    write_lines(qrels, [*lines_of(qrels), "q99\td5\t1"])
    out = tmp_path / "mined" / "candidates.jsonl"
    result = cli(capsys, *mine_args(tiny_data, out))
    assert_one_error(result, "mine", f"{qrels}:{len(lines_of(qrels))}:", "query id 'q99'")
    assert_no_output(out, corpus_cache)


def test_qrels_unknown_passage(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    qrels = tiny_data / "qrels" / "dev.tsv"
    lines = lines_of(qrels)
    lines[3] = lines[3].split("\t")[0] + "\td999\t1"
    write_lines(qrels, lines)
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out))
    assert_one_error(result, "train", f"{qrels}:4:", "passage id 'd999' is not in the corpus")
    assert_no_output(out, corpus_cache)


def test_qrels_non_integer_score(capsys, tiny_data, tmp_path, corpus_cache):
    qrels = tiny_data / "qrels" / "train.tsv"
    lines = lines_of(qrels)
    lines[5] = "q1\td4\t0.5"
    write_lines(qrels, lines)
    out = tmp_path / "mined" / "candidates.jsonl"
    result = cli(capsys, *mine_args(tiny_data, out))
    assert_one_error(result, "mine", f"{qrels}:6:", "must be an integer", "'0.5'")
    assert_no_output(out, corpus_cache)


# ----------------------------------------------------------------------------------------------------------------
# training queries without a positive: skipped with a count in the log; none at all is an error


def _zero_grades(qrels: Path, qids: set[str] | None) -> None:
    lines = lines_of(qrels)
    out = [lines[0]]
    for line in lines[1:]:
        qid, pid, _ = line.split("\t")
        out.append(f"{qid}\t{pid}\t0" if qids is None or qid in qids else line)
    write_lines(qrels, out)


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
    from rocketkd.data.dataset import label_lists

    qrels = {"q1": {"d1": 1}, "q2": {"d2": 0}, "q3": {"d3": 2}}
    with caplog.at_level(logging.INFO, logger="rocketkd"):
        lists = label_lists(qrels, [f"d{i}" for i in range(10)], list_length=3)
    assert [cl.qid for cl in lists] == ["q1", "q3"]
    assert "1 of 3 queries" in caplog.text and "no positive" in caplog.text, caplog.text


def test_mine_training_split_without_any_positive(capsys, tiny_data, tmp_path, corpus_cache):
    _zero_grades(tiny_data / "qrels" / "train.tsv", None)
    out = tmp_path / "mined" / "candidates.jsonl"
    result = cli(capsys, *mine_args(tiny_data, out))
    assert_one_error(result, "mine", "split 'train'", "data.min_positive_grade")
    assert_no_output(out, corpus_cache)


def test_train_training_split_without_any_positive(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    _zero_grades(tiny_data / "qrels" / "train.tsv", None)
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out))
    assert_one_error(result, "train", "has a positive of grade >= 1", "data.train_split",
                     "data.min_positive_grade")
    assert_no_output(out, corpus_cache)


# ----------------------------------------------------------------------------------------------------------------
# candidate lists


def test_candidates_positive_also_negative(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    cands = tmp_path / "candidates.jsonl"
    write_lines(cands, [
        json.dumps({"qid": "q0", "pids": ["d0", "d40", "d41", "d42"]}),
        json.dumps({"qid": "q1", "pids": ["d3", "d43", "d3", "d44"]}),
    ])
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out, f"candidates.path={cands}"))
    assert_one_error(result, "train", f"{cands}:2:", "positive 'd3' is also listed as a negative")
    assert_no_output(out, corpus_cache)


def test_candidates_unknown_query(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    # would otherwise be a KeyError in the collator, after the output folder was made
    cands = tmp_path / "candidates.jsonl"
    write_lines(cands, [
        json.dumps({"qid": "q0", "pids": ["d0", "d40", "d41", "d42"]}),
        json.dumps({"qid": "q77", "pids": ["d3", "d43", "d45", "d44"]}),
    ])
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out, f"candidates.path={cands}"))
    assert_one_error(result, "train", f"{cands}:2:", "'q77'")
    assert_no_output(out, corpus_cache)


def test_train_unknown_train_split(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out, "data.train_split=nosuch"))
    assert_one_error(result, "train", "'data.train_split'", "'nosuch'")
    assert_no_output(out, corpus_cache)


def test_mine_unknown_train_split(capsys, tiny_data, tmp_path, corpus_cache):
    out = tmp_path / "mined" / "candidates.jsonl"
    result = cli(capsys, *mine_args(tiny_data, out, "data.train_split=nosuch"))
    assert_one_error(result, "mine", "'data.train_split'", "'nosuch'")
    assert_no_output(out, corpus_cache)


def test_train_list_length_above_candidates(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out, "candidates.list_length=100"))
    assert_one_error(result, "train", "candidates.list_length=100")
    assert_no_output(out, corpus_cache)


def test_mine_list_length_above_corpus(capsys, tiny_data, tmp_path, corpus_cache):
    out = tmp_path / "mined" / "candidates.jsonl"
    result = cli(capsys, *mine_args(tiny_data, out, "candidates.list_length=100"))
    assert_one_error(result, "mine", "'candidates.list_length': 100", "only 60 passages")
    assert_no_output(out, corpus_cache)


def test_train_list_length_above_mined_lists(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    cands = tmp_path / "candidates.jsonl"
    write_lines(cands, [json.dumps({"qid": "q0", "pids": ["d0", "d40", "d41"]})])
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out, f"candidates.path={cands}"))
    assert_one_error(result, "train", "candidates.list_length=4", "'q0' has 3")
    assert_no_output(out, corpus_cache)


# ----------------------------------------------------------------------------------------------------------------
# config and model paths


def test_config_unknown_key(capsys, tiny_data, tiny_bert, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(TINY_CONFIG.read_text().replace("  depth: 10", "  depht: 10"))
    out = tmp_path / "run"
    result = cli(capsys, "train", "--config", config, "--set", f"data.path={tiny_data}", "--output", out)
    assert_one_error(result, "train", "unknown config key 'mining.depht'")
    assert_no_output(out)


def test_config_wrong_type(capsys, tiny_data, tiny_bert, tmp_path):
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out, "train.batch_size=abc"))
    assert_one_error(result, "train", "'train.batch_size'", "expected an integer", "'abc'")
    assert_no_output(out)


def test_model_path_missing(capsys, tiny_data, tiny_bert, tmp_path, corpus_cache):
    out = tmp_path / "run"
    result = cli(capsys, *train_args(tiny_data, tiny_bert, out, "model.retriever=./no/such/model"))
    assert_one_error(result, "train", "./no/such/model", "no such model folder")
    assert_no_output(out, corpus_cache)


def test_index_model_path_missing(capsys, tiny_data, tmp_path, corpus_cache):
    out = tmp_path / "index"
    result = cli(capsys, "index", "--model", "./no/such/model", "--corpus", tiny_data, "--output", out)
    assert_one_error(result, "index", "./no/such/model", "no such model folder")
    assert_no_output(out, corpus_cache)


# ----------------------------------------------------------------------------------------------------------------
# index folders and run files


@pytest.fixture
def index_folder(tiny_bert, tiny_data, tmp_path) -> Path:
    from rocketkd.data.formats import Corpus
    from rocketkd.models import DualEncoder
    from rocketkd.search.index import DenseIndex

    corpus = Corpus.from_beir(tiny_data / "corpus.jsonl")
    index = DenseIndex.build(DualEncoder.from_pretrained(tiny_bert), corpus, show_progress=False)
    return index.save(tmp_path / "index")


@pytest.mark.parametrize("missing", ["ids.txt", "index.faiss", "meta.json"])
def test_search_index_missing_file(capsys, index_folder, tiny_data, tmp_path, missing):
    (index_folder / missing).unlink()
    out = tmp_path / "runs" / "test.run"
    result = cli(capsys, "search", "--index", index_folder, "--queries", tiny_data, "--split", "test", "--output", out)
    assert_one_error(result, "search", str(index_folder), f"{missing} is missing")
    assert_no_output(out)


def test_search_unknown_split(capsys, index_folder, tiny_data, tmp_path):
    out = tmp_path / "runs" / "test.run"
    result = cli(capsys, "search", "--index", index_folder, "--queries", tiny_data, "--split", "valid",
                 "--output", out)
    assert_one_error(result, "search", "'valid'", "--split")
    assert_no_output(out)


def test_search_bm25_weight_rescores_the_top_k_and_rejects_weights_over_one(capsys, index_folder, tiny_data,
                                                                          tmp_path):
    from rocketkd.data.formats import Corpus, read_trec_run
    from rocketkd.evaluation.metrics import rank_scores
    from rocketkd.teachers import BM25Scorer, candidates_from_run, scores_on_candidates

    dense, lexical = tmp_path / "dense.run", tmp_path / "lexical.run"
    base = ["search", "--index", index_folder, "--queries", tiny_data, "--split", "test", "--k", 10]
    assert cli(capsys, *base, "--output", dense)[0] == 0
    assert cli(capsys, *base, "--output", lexical, "--bm25-weight", 1)[0] == 0
    first, fused = read_trec_run(dense), read_trec_run(lexical)
    corpus = Corpus.from_beir(tiny_data / "corpus.jsonl")
    from rocketkd.data.formats import load_retrieval_data

    queries = load_retrieval_data(tiny_data).split_queries("test")
    bm25 = scores_on_candidates(BM25Scorer(corpus), candidates_from_run(first, 10), queries, corpus)
    for qid in first:  # the same ten passages, in BM25's order (weight 1: BM25 alone re-scores them)
        assert set(fused[qid]) == set(first[qid])
        assert [bm25[qid][p] for p in rank_scores(fused[qid], qid)] == sorted(bm25[qid].values(), reverse=True)
    out = tmp_path / "bad.run"
    result = cli(capsys, *base, "--output", out, "--rerank", index_folder, "--fusion-weight", 0.6, "--bm25-weight", 0.6)
    assert_one_error(result, "search", "--bm25-weight 0.6", "exceed 1")
    assert_no_output(out)


def _write_run(path: Path) -> None:
    from rocketkd.data.formats import load_qrels, write_trec_run

    qrels = load_qrels(TINY_DATA_QRELS)
    run = {}
    for i, (qid, judged) in enumerate(qrels.items()):
        pids = sorted(judged) + [f"d{j}" for j in range(0, 60, 7)]
        run[qid] = {pid: ((7 * i + 13 * j) % 17) / 17 for j, pid in enumerate(dict.fromkeys(pids))}
    write_trec_run(path, run)


TINY_DATA_QRELS = ROOT / "tests" / "resources" / "tiny" / "qrels" / "test.tsv"


def test_evaluate_run_malformed_line(capsys, tmp_path):
    run = tmp_path / "test.run"
    _write_run(run)
    lines = lines_of(run)
    lines[6] = " ".join(lines[6].split()[:5])  # a line with 5 columns
    write_lines(run, lines)
    code, out, err = result = cli(capsys, "evaluate", "--run", run, "--qrels", TINY_DATA_QRELS)
    assert_one_error(result, "evaluate", f"{run}:7:", "expected 6 columns")
    assert out == ""


def test_evaluate_qrels_without_relevant(capsys, tmp_path):
    run = tmp_path / "test.run"
    _write_run(run)
    qrels = tmp_path / "qrels.tsv"
    write_lines(qrels, ["query-id\tcorpus-id\tscore", "q16\td48\t0", "q17\td51\t0"])
    code, out, err = result = cli(capsys, "evaluate", "--run", run, "--qrels", qrels)
    assert_one_error(result, "evaluate", str(qrels), "no query")
    assert out == ""


# ----------------------------------------------------------------------------------------------------------------
# evaluate --json and --help


def test_evaluate_json_matches_python_api(capsys, tmp_path):
    from rocketkd.data.formats import load_qrels, read_trec_run
    from rocketkd.evaluation.metrics import evaluate_run

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
