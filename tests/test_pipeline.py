"""The whole recipe on tiny models: every stage's output, results.json with every system, resume by stage."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rocketkd.config import load_config
from rocketkd.data.formats import read_run_tags
from rocketkd.evaluation.report import REPORT_METRICS
from rocketkd.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]


def test_pipeline_end_to_end_and_resume(tiny_bert, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}", f"output_dir={out}",
        "eval.run_tag=exp1",
    ])
    results = run_pipeline(cfg)
    assert set(results["systems"]) == {"bm25", "base", "retriever", "reranked", "hybrid"}
    for metrics in results["systems"].values():
        assert set(metrics) == set(REPORT_METRICS)
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    saved = json.loads((out / "results.json").read_text())
    assert saved["systems"] == results["systems"]
    assert "teachers-1" in saved["teachers"] and "weights" in saved["teachers"]["teachers-1"]
    assert (out / "curves.png").stat().st_size > 1000
    assert (out / "index" / "index.faiss").exists() and (out / "runs" / "reranked.test.trec").exists()
    # the run tag: every run file's 6th column is TAG-SYSTEM, and results.json/.md name them
    assert saved["run_tags"] == {system: f"exp1-{system}" for system in results["systems"]}
    assert "Run tags: bm25 `exp1-bm25`" in (out / "results.md").read_text()
    assert read_run_tags(out / "runs" / "reranker-raw.dev.trec") == ["exp1-reranker-raw"]
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["baselines", "mine-0", "warmup", "mine-1", "teachers-1", "train-1", "final", "hybrid"]
    assert sum(stages["hybrid"]["weights"].values()) == pytest.approx(1.0)
    # fitted fusion weights replace the defaults (the re-ranker alone; reranked's weights, no BM25) only on
    # significant dev evidence -- on the tiny collection's few dev queries, never
    final, hybrid = stages["final"], stages["hybrid"]
    assert final["fusion_check"]["alpha"] == 0.05 and not final["fusion_check"]["use_fitted"]
    assert final["fusion_weight"] == 1.0
    assert not hybrid["fusion_check"]["use_fitted"]
    assert hybrid["weights"] == {"retriever": 0.0, "reranker": 1.0, "bm25": 0.0}
    # the offline teachers' sharpness is the warmed-up student's spread on the lists round 1 trains on
    from rocketkd.data.formats import load_retrieval_data, read_candidates
    from rocketkd.models.loading import load_retriever
    from rocketkd.teachers import RetrieverScorer
    from rocketkd.teachers.targets import student_spread

    data = load_retrieval_data(tiny_data)
    queries = data.all_queries()
    lists = read_candidates(out / "round1" / "candidates.jsonl", corpus=data.corpus, queries=queries)
    student = RetrieverScorer(load_retriever(cfg, stages["warmup"]["retriever"])).score(lists, queries, data.corpus)
    assert stages["teachers-1"]["teacher_scale"] == pytest.approx(student_spread(student, cfg.model.score_scale),
                                                                  rel=1e-4)

    # An interruption after train-1: rerunning must redo only the final stages.
    del stages["final"], stages["hybrid"]
    (out / "stages.json").write_text(json.dumps(stages))
    import rocketkd.pipeline as train_mod

    def no_training(*a, **k):
        raise AssertionError("a finished stage ran again")

    monkeypatch.setattr(train_mod, "train", no_training)
    cfg.eval.run_tag = "exp2"  # a label, not compared: the stages redone tag their runs anew, results.json says so
    again = run_pipeline(cfg)
    assert again["systems"] == results["systems"]
    assert again["run_tags"] == {**saved["run_tags"], "retriever": "exp2-retriever", "reranked": "exp2-reranked",
                                 "hybrid": "exp2-hybrid"}


def test_pipeline_teacher_members_and_kept_bad_teachers(tiny_bert, tiny_data, tmp_path):
    """pipeline.teacher_members picks who is checked; zero_bad_teachers=false distils even from a teacher that
    fails the dev check (min_gain 1.0: nothing can pass), which is how docs/results.md measures single teachers."""
    base = [f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}",
            "pipeline.teacher_members=bm25,random", "pipeline.teacher_min_gain=1.0", "pipeline.plot=false"]
    kept = run_pipeline(load_config(ROOT / "configs" / "tiny.yaml",
                                    [*base, "pipeline.zero_bad_teachers=false", f"output_dir={tmp_path / 'kept'}"]))
    t = kept["teachers"]["teachers-1"]
    assert set(t["members"]) == {"bm25", "random", "ensemble"}
    assert set(t["weights"]) == {"bm25", "random"} and sum(t["weights"].values()) == pytest.approx(1.0)
    assert t["mode"] == "joint" and t["online_teacher_weight"] == 0.0
    from rocketkd.data.formats import read_candidates

    lists = read_candidates(t["lists"])
    assert all(c.teacher_scores is not None for c in lists)

    zeroed_cfg = load_config(ROOT / "configs" / "tiny.yaml",
                             [*base, f"output_dir={tmp_path / 'zeroed'}", "pipeline.round_epochs=1.5"])
    zeroed = run_pipeline(zeroed_cfg)
    t = zeroed["teachers"]["teachers-1"]
    assert t["mode"] == "contrastive" and set(t["weights"].values()) == {0.0}
    # pipeline.round_epochs sizes each round with its lists (and overrides round_steps / train.max_steps)
    stages = json.loads((tmp_path / "zeroed" / "stages.json").read_text())
    per_epoch = math.ceil(len(read_candidates(t["lists"])) / zeroed_cfg.train.batch_size)
    assert stages["train-1"]["steps"] == math.ceil(1.5 * per_epoch) != zeroed_cfg.train.max_steps


def test_pipeline_keeps_start_retriever_and_best_of_round(tiny_bert, tiny_data, tmp_path):
    """pipeline.warmup_retriever=false: round 1 starts from model.retriever (the warm-up only readies the
    re-ranker); train.keep_best with eval_every: the round measures dev and may keep an earlier step."""
    out = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}", f"output_dir={out}",
        "pipeline.warmup_retriever=false", "train.keep_best=true", "train.eval_every=2", "pipeline.plot=false",
        "pipeline.systems=bm25,base,retriever", "train.max_steps=6", "pipeline.round_steps=4",
        "pipeline.check_on_train=true", "pipeline.teacher_members=bm25,base", "pipeline.warmup_epochs=1.5",
    ])
    run_pipeline(cfg)
    stages = json.loads((out / "stages.json").read_text())
    from rocketkd.data.formats import load_retrieval_data, read_candidates
    from rocketkd.models.loading import load_retriever
    from rocketkd.teachers import RetrieverScorer
    from rocketkd.teachers.targets import student_spread

    data = load_retrieval_data(tiny_data)
    queries = data.all_queries()
    lists = read_candidates(out / "round1" / "candidates.jsonl", corpus=data.corpus, queries=queries)
    start = RetrieverScorer(load_retriever(cfg, tiny_bert)).score(lists, queries, data.corpus)
    warmed = RetrieverScorer(load_retriever(cfg, stages["warmup"]["retriever"])).score(lists, queries, data.corpus)
    scale = stages["teachers-1"]["teacher_scale"]
    assert scale == pytest.approx(student_spread(start, cfg.model.score_scale), rel=1e-4)
    # the warm-up trained the re-ranker alone (train.mode=reranker): no retriever was trained to be dropped
    logged = [json.loads(line) for line in (out / "warmup" / "train_log.jsonl").read_text().splitlines()]
    assert logged and all("reranker_ce" in h and "retriever_ce" not in h for h in logged)
    assert student_spread(warmed, cfg.model.score_scale) == pytest.approx(scale, rel=1e-6)
    # pipeline.warmup_epochs sizes the warm-up with its lists (and overrides the config's warmup_steps)
    n_lists = len((out / "round0" / "candidates.jsonl").read_text().splitlines())
    per_epoch = math.ceil(n_lists / cfg.train.batch_size)
    assert stages["warmup"]["steps"] == math.ceil(1.5 * per_epoch) != cfg.pipeline.warmup_steps
    assert not (out / "warmup" / "dev_start.json").exists()
    state = json.loads((out / "round1" / "train_state.json").read_text())
    assert "start" in state["dev_ndcg@10"] and sorted(map(int, state["dev_curve"])) == [0, 2, 4]
    assert state["step"] == 4 and stages["train-1"]["steps"] == 4  # pipeline.round_steps, not train.max_steps
    # pipeline.check_on_train: round 1's student is the start and no member learned labels: dev + train queries
    assert stages["teachers-1"]["check_queries"] == len(data.qrels["dev"]) + len(data.qrels["train"])


def test_check_on_train_only_where_nothing_learned_the_train_labels(tiny_data, tmp_path):
    from rocketkd.data.formats import load_retrieval_data
    from rocketkd.pipeline import _check_queries

    data = load_retrieval_data(tiny_data, cache_dir=tmp_path / "cache")
    data.queries["title:d0"] = "a title query"
    data.qrels["train"]["title:d0"] = {"d0": 2}
    dev, train = data.qrels["dev"], {q: r for q, r in data.qrels["train"].items() if q != "title:d0"}

    def check(*overrides, start=True):
        cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"data.path={tiny_data}", *overrides])
        return _check_queries(cfg, data, student_is_start=start)

    queries, qrels = check()  # off by default
    assert set(queries) == set(qrels) == set(dev)
    queries, qrels = check("pipeline.check_on_train=true", "pipeline.teacher_members=bm25,base")
    assert set(queries) == set(qrels) == set(dev) | set(train)  # not the title query
    assert all(qrels[q] == train[q] for q in train) and all(qrels[q] == dev[q] for q in dev)
    queries, _ = check("pipeline.check_on_train=true", "pipeline.teacher_members=bm25,base", start=False)
    assert set(queries) == set(dev)  # the student has trained on the train labels
    queries, _ = check("pipeline.check_on_train=true", "pipeline.teacher_members=reranker,bm25")
    assert set(queries) == set(dev)  # so has the re-ranker


def test_the_rounds_reranker_rates_scale_but_the_warm_ups_do_not(tiny_bert, tiny_data, tmp_path, monkeypatch):
    """pipeline.round_reranker_lr_scale multiplies the re-ranker's body and head rates in the joint round only: the
    optimizer of the warm-up gets train.lr_reranker / lr_reranker_head as given, the round's a tenth of them."""
    import rocketkd.training.loop as loop_mod

    seen = []
    real = loop_mod.param_groups

    def spy(model, cfg):
        seen.append((cfg.train.mode, cfg.train.lr_reranker, cfg.train.lr_reranker_head))
        groups = real(model, cfg)
        seen.append(sorted({g["lr"] for g in groups}))
        return groups

    monkeypatch.setattr(loop_mod, "param_groups", spy)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}",
        f"output_dir={tmp_path / 'run'}", "pipeline.round_mode=joint", "pipeline.plot=false",
        "train.lr_retriever=5e-4", "train.lr_reranker=1e-3", "train.lr_reranker_head=2e-3",
        "pipeline.round_reranker_lr_scale=0.1"])
    run_pipeline(cfg)
    warm, warm_lrs, joint, joint_lrs = seen
    assert warm[1:] == (1e-3, 2e-3) and warm_lrs == [5e-4, 1e-3, 2e-3]
    assert joint[0] == "joint" and joint[1:] == pytest.approx((1e-4, 2e-4))
    assert joint_lrs == pytest.approx([1e-4, 2e-4, 5e-4])  # the retriever's rate is left as it is
    assert cfg.train.lr_reranker == 1e-3  # the pipeline's own config is not changed by the round's
