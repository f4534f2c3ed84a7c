"""A lone `rocketkd train`: mined lists, offline teachers named in config, and the dev check before/after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rocketkd.bm25 import BM25Retriever
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data, read_candidates
from rocketkd.errors import ConfigError
from rocketkd.index import DenseIndex, search_run
from rocketkd.metrics import evaluate_run
from rocketkd.models import DualEncoder
from rocketkd.teachers import BM25Scorer, RetrieverScorer, normalize
from rocketkd.train import build_lists, dev_ndcg, student_spread, teacher_lists, train

ROOT = Path(__file__).resolve().parents[1]


def tiny_cfg(tiny_bert: Path, tiny_data: Path, out: Path, *extra: str):
    overrides = [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}", f"output_dir={out}",
        *extra,
    ]
    return load_config(ROOT / "configs" / "tiny.yaml", overrides)


def test_teachers_parse_from_set_and_reject_unknown_names():
    cfg = load_config(None, ["train.teachers=bm25:0.25,base:0.75"])
    assert cfg.train.teachers == {"bm25": 0.25, "base": 0.75}
    with pytest.raises(ConfigError, match="unknown teacher 'colbert'"):
        load_config(None, ["train.teachers=colbert:1"])
    with pytest.raises(ConfigError, match="weight of 'bm25'"):
        load_config(None, ["train.teachers={bm25: -1}"])
    with pytest.raises(ConfigError, match="not NAME:WEIGHT"):
        load_config(None, ["train.teachers=bm25:lots"])
    with pytest.raises(ConfigError, match="candidates.source"):
        load_config(None, ["candidates.source=random"])


def test_mined_lists_hold_bm25_hard_negatives(tiny_bert, tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "candidates.source=mined", "mining.sampled_negatives=0",
                   "mining.denoise=false")
    data = load_retrieval_data(tiny_data)
    lists = build_lists(cfg, data, tmp_path / "run")
    assert (tmp_path / "run" / "candidates.jsonl").exists()
    bm25_run = BM25Retriever.build(data.corpus).search(data.split_queries("train"), cfg.mining.depth)
    judged = data.qrels["train"]
    assert lists
    for cl in lists:
        assert judged[cl.qid].get(cl.pids[0], 0) >= cfg.data.min_positive_grade  # the positive at row 0
        # BM25's unjudged hits in rank order first; only when they run out is the list topped up from the corpus
        hard = [p for p in sorted(bm25_run[cl.qid], key=lambda p: -bm25_run[cl.qid][p]) if judged[cl.qid].get(p, 0) == 0]
        negatives = cl.pids[1:]
        assert set(negatives[: len(hard)]) == set(hard)  # every unjudged BM25 hit (ties may swap neighbours)
        assert len(hard) >= cfg.candidates.list_length - 1 or len(negatives) == cfg.candidates.list_length - 1
        assert all(judged[cl.qid].get(p, 0) == 0 for p in cl.pids[1:])


def test_single_offline_teacher_is_log_softmax_of_its_zscored_scores(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.teachers=bm25:1", "train.online_teacher_weight=0",
                   "train.teacher_scale=1")
    data = load_retrieval_data(tiny_data)
    lists = build_lists(cfg, data)
    scored = teacher_lists(cfg, data, lists, out)
    raw = BM25Scorer(data.corpus).score(lists, data.queries, data.corpus)
    for cl, sc, r in zip(lists, scored, raw):
        assert sc.pids == cl.pids
        z = (r - r.mean()) / r.std() if r.std() > 0 else np.zeros_like(r)
        expected = z - np.log(np.exp(z).sum())
        np.testing.assert_allclose(sc.teacher_scores, expected, atol=1e-6)
        np.testing.assert_allclose(normalize(r), z, atol=1e-9)
    # written once, read back on resume (same scores, no re-scoring needed)
    path = out / "teacher_lists.jsonl"
    assert path.exists()
    again = teacher_lists(cfg, data, lists, out)
    for a, b in zip(again, scored):
        assert a.pids == b.pids
        np.testing.assert_allclose(a.teacher_scores, b.teacher_scores, atol=1e-9)


def test_teachers_are_left_alone_where_the_mode_does_not_distil_from_them(tiny_bert, tiny_data, tmp_path, caplog):
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "train.teachers=bm25:1", "train.mode=contrastive")
    data = load_retrieval_data(tiny_data)
    lists = build_lists(cfg, data)
    with caplog.at_level("WARNING"):
        same = teacher_lists(cfg, data, lists, tmp_path / "run")
    assert same is lists and "ignored in mode=contrastive" in caplog.text
    assert not (tmp_path / "run" / "teacher_lists.jsonl").exists()


def test_train_reports_dev_ndcg_before_and_after(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "candidates.source=mined", "train.teachers=bm25:0.5,base:0.5",
                   "train.online_teacher_weight=0")
    result = train(cfg)
    assert set(result.dev) == {"start", "end"}
    data = load_retrieval_data(tiny_data)
    # start: the untrained encoder, measured independently here
    base = DualEncoder.from_pretrained(str(tiny_bert), similarity="dot")
    run = search_run(DenseIndex.build(base, data.corpus, show_progress=False), data.split_queries("dev"), 10)
    assert result.dev["start"] == pytest.approx(evaluate_run(run, data.qrels["dev"], ["nDCG@10"]).mean["nDCG@10"])
    # end: the saved retriever, reloaded from disk
    saved = DualEncoder.from_pretrained(str(result.retriever_dir))
    assert result.dev["end"] == pytest.approx(dev_ndcg(saved, data, cfg), abs=1e-6)
    state = json.loads((out / "train_state.json").read_text())
    assert state["dev_ndcg@10"] == result.dev
    lists = read_candidates(out / "teacher_lists.jsonl", corpus=data.corpus, queries=data.queries)
    assert all(cl.teacher_scores is not None for cl in lists)


def test_eval_dev_off_and_missing_dev_split(tiny_bert, tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "a", "train.eval_dev=false", "train.max_steps=1")
    assert train(cfg).dev == {}
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "b", "data.dev_split=nosuch", "train.max_steps=1")
    assert train(cfg).dev == {}


def test_teacher_scale_defaults_to_the_start_retrievers_spread(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.teachers=base:1", "train.online_teacher_weight=0")
    data = load_retrieval_data(tiny_data)
    lists = build_lists(cfg, data)
    scored = teacher_lists(cfg, data, lists, out)
    student = RetrieverScorer(DualEncoder.from_pretrained(str(tiny_bert), similarity="dot", query_max_length=16,
                                                          passage_max_length=32)).score(lists, data.queries, data.corpus)
    scale = np.mean([np.std(cfg.model.score_scale * s) for s in student])
    assert student_spread(student, cfg.model.score_scale) == pytest.approx(scale)
    meta = json.loads((out / "teacher_lists.jsonl.meta.json").read_text())
    assert meta["scale"] == pytest.approx(scale, rel=1e-5)
    for cl, s in zip(scored, student):
        z = normalize(s) * scale
        np.testing.assert_allclose(cl.teacher_scores, z - np.log(np.exp(z).sum()), atol=1e-5)
