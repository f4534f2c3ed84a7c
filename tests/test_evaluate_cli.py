"""``rocketkd evaluate`` conveniences (issue 22): per-query output, trec_eval's metric names, a relevance level,
gzip'd run and qrels files; every number checked against pytrec_eval."""

from __future__ import annotations

import gzip
import json
import random

import pytest
import pytrec_eval

from rocketkd.cli import main
from rocketkd.data import load_qrels, read_trec_run


def _files(tmp_path, *, gz: bool):
    rng = random.Random(5)
    qrels_lines, run_lines = [], []
    for q in range(12):
        for d in rng.sample(range(40), 6):
            qrels_lines.append(f"q{q} 0 d{d} {rng.choice([0, 1, 2, 3])}")
        for rank, d in enumerate(rng.sample(range(40), 25), 1):
            run_lines.append(f"q{q} Q0 d{d} {rank} {30 - rank + rng.random():.6f} sys")
    qrels, run = tmp_path / "qrels.txt", tmp_path / "run.trec"
    for path, lines in ((qrels, qrels_lines), (run, run_lines)):
        data = ("\n".join(lines) + "\n").encode()
        if gz:
            path = path.with_name(path.name + ".gz")
            data = gzip.compress(data)
        path.write_bytes(data)
    return (run.with_name(run.name + ".gz") if gz else run), (qrels.with_name(qrels.name + ".gz") if gz else qrels)


def test_gzip_inputs_read_as_plain_ones(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "gz").mkdir()
    plain, packed = _files(tmp_path / "plain", gz=False), _files(tmp_path / "gz", gz=True)
    assert read_trec_run(packed[0]) == read_trec_run(plain[0])
    assert load_qrels(packed[1]) == load_qrels(plain[1])


def test_damaged_gzip_is_one_error_line(tmp_path, capsys):
    run, qrels = _files(tmp_path, gz=True)
    run.write_bytes(run.read_bytes()[:60])  # cut mid-stream
    assert main(["evaluate", "--run", str(run), "--qrels", str(qrels)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "gzip" in err[0] and str(run) in err[0]


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("suffix", [".json", ".tsv"])
def test_per_query_output_and_relevance_level_match_pytrec_eval(tmp_path, capsys, level, suffix):
    run_file, qrels_file = _files(tmp_path, gz=True)
    per_query = tmp_path / f"per_query{suffix}"
    names = ["ndcg_cut_10", "recip_rank", "recall_10", "P_5", "map", "nDCG@10", "mrr@10"]
    argv = ["evaluate", "--run", str(run_file), "--qrels", str(qrels_file), "--metrics", ",".join(names),
            "--relevance-level" if level == 1 else "--min-grade", str(level), "--per-query", str(per_query), "--json"]
    assert main(argv) == 0
    mean = json.loads(capsys.readouterr().out)
    assert list(mean) == names

    if suffix == ".json":
        rows = json.loads(per_query.read_text())
    else:
        header, *lines = per_query.read_text().splitlines()
        cols = header.split("\t")
        assert cols == ["query_id", *names]
        rows = {ln.split("\t")[0]: dict(zip(names, map(float, ln.split("\t")[1:]))) for ln in lines}

    qrels, run = load_qrels(qrels_file), read_trec_run(run_file)
    measures = {"ndcg_cut_10", "recip_rank", "recall_10", "P_5", "map"}
    trec = pytrec_eval.RelevanceEvaluator(qrels, measures, relevance_level=level).evaluate(run)
    with_relevant = {q for q, judged in qrels.items() if any(g >= level for g in judged.values())}
    assert set(rows) == with_relevant
    for q in with_relevant:
        for name in measures:
            assert rows[q][name] == pytest.approx(trec[q][name], abs=1e-6), (q, name)
        assert rows[q]["nDCG@10"] == pytest.approx(trec[q]["ndcg_cut_10"], abs=1e-6)
    for name in measures:
        assert mean[name] == pytest.approx(sum(trec[q][name] for q in with_relevant) / len(with_relevant), abs=1e-6)


def test_bad_metric_name_and_level_are_refused(tmp_path, capsys):
    run, qrels = _files(tmp_path, gz=False)
    assert main(["evaluate", "--run", str(run), "--qrels", str(qrels), "--metrics", "ndcg_cut_10,nope@3"]) == 2
    assert "nope@3" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "--qrels", str(qrels), "--relevance-level", "0"]) == 2
    assert "--relevance-level" in capsys.readouterr().err
