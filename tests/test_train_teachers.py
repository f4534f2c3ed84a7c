"""A lone `rocketkd train`: mined lists, offline teachers named in config, and the dev check before/after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rocketkd.candidates.lists import build_lists
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data, read_candidates
from rocketkd.errors import ConfigError
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.models import DualEncoder
from rocketkd.pipeline import run_train as train
from rocketkd.search.bm25 import BM25Retriever
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.teachers import (
    BM25Scorer,
    HeldOut,
    RandomScorer,
    RetrieverScorer,
    build_targets,
    check_ensemble,
    ensemble_logprobs,
    normalize,
)
from rocketkd.teachers.targets import student_spread, teacher_lists
from rocketkd.training import dev_ndcg

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
    assert load_config(None, ["pipeline.teacher_members=bm25,random"]).pipeline.teacher_members == ["bm25", "random"]
    with pytest.raises(ConfigError, match="pipeline.teacher_members': unknown teacher 'colbert'"):
        load_config(None, ["pipeline.teacher_members=bm25,colbert"])
    with pytest.raises(ConfigError, match="named twice"):
        load_config(None, ["pipeline.teacher_members=bm25,bm25"])


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


def test_mined_by_base_mines_a_lone_trains_lists_with_the_start_encoder(tiny_bert, tiny_data, tmp_path):
    from rocketkd.candidates.mining import mine

    data = load_retrieval_data(tiny_data)
    extra = ("candidates.source=mined", "mining.sampled_negatives=0", "mining.denoise=false")
    lists = build_lists(tiny_cfg(tiny_bert, tiny_data, tmp_path / "a", *extra, "candidates.mined_by=base"), data,
                        tmp_path / "a")
    dense_cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "b", *extra, "mining.first_round=base")
    mine(dense_cfg, output=tmp_path / "b.jsonl", data=data)
    dense = read_candidates(tmp_path / "b.jsonl")
    assert [(c.qid, c.pids) for c in lists] == [(c.qid, c.pids) for c in dense]
    bm25 = build_lists(tiny_cfg(tiny_bert, tiny_data, tmp_path / "c", *extra), data, tmp_path / "c")
    assert [c.pids for c in bm25] != [c.pids for c in lists]  # the default (mining.first_round=bm25) differs
    with pytest.raises(ConfigError, match="candidates.mined_by"):
        load_config(None, ["candidates.mined_by=colbert"])


def test_single_offline_teacher_is_log_softmax_of_its_zscored_scores(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.teachers=bm25:1", "train.online_teacher_weight=0",
                   "train.teacher_scale=1", "train.check_teachers=false")
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
                   "train.online_teacher_weight=0", "train.check_teachers=false")
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


def test_teacher_check_and_dev_start_share_one_corpus_encoding(tiny_bert, tiny_data, tmp_path, monkeypatch):
    import rocketkd.search.index as index_mod

    builds = []
    real = index_mod.DenseIndex.build.__func__
    monkeypatch.setattr(index_mod.DenseIndex, "build", classmethod(lambda cls, *a, **k: builds.append(1) or real(cls, *a, **k)))
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "candidates.source=mined", "train.teachers=bm25:1",
                   "train.online_teacher_weight=0", "pipeline.teacher_min_gain=0", "train.max_steps=1")
    result = train(cfg)
    assert len(builds) == 2  # the dev check (which also gives the start value) and the end; not a third
    check = json.loads((tmp_path / "run" / "teacher_check.json").read_text())
    data = load_retrieval_data(tiny_data)
    base = DualEncoder.from_pretrained(str(tiny_bert), similarity="dot")
    monkeypatch.undo()
    run = search_run(DenseIndex.build(base, data.corpus, show_progress=False), data.split_queries("dev"), 10)
    assert result.dev["start"] == pytest.approx(evaluate_run(run, data.qrels["dev"], ["nDCG@10"]).mean["nDCG@10"])
    assert check["student_ndcg@10"] > 0


def test_eval_dev_off_and_missing_dev_split(tiny_bert, tiny_data, tmp_path):
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "a", "train.eval_dev=false", "train.max_steps=1")
    assert train(cfg).dev == {}
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "b", "data.dev_split=nosuch", "train.max_steps=1")
    assert train(cfg).dev == {}


def test_teacher_scale_defaults_to_the_start_retrievers_spread(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.teachers=base:1", "train.online_teacher_weight=0",
                   "train.check_teachers=false")
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


def test_build_targets_weighs_online_members_but_stores_only_the_others(tiny_bert, tiny_data, tmp_path):
    """The pipeline's use of the one target builder: weights fitted on held-out queries, an online member weighed
    beside the others but never stored; the stored ensemble is the other members' at the given scale."""
    cfg = tiny_cfg(tiny_bert, tiny_data, tmp_path / "run", "pipeline.zero_bad_teachers=false", "train.teacher_scale=2")
    data = load_retrieval_data(tiny_data)
    lists = build_lists(cfg, data)
    with pytest.raises(ValueError, match="needs held-out queries"):
        build_targets(cfg, data, lists, ["bm25"])
    held_out = HeldOut(data.split_queries("dev"), data.qrels["dev"])
    targets = build_targets(cfg, data, lists, ["bm25", "random"], held_out=held_out, online=("random",))
    assert set(targets.choice.weights) == {"bm25", "random"} and targets.choice.weights["bm25"] > 0
    assert targets.stored == {"bm25": targets.choice.weights["bm25"]}
    assert targets.scale == 2 and targets.temperatures == {"bm25": 0.5, "random": 0.5}
    assert set(targets.run) == set(held_out.queries)
    raw = BM25Scorer(data.corpus).score(lists, data.all_queries(), data.corpus)
    for cl, lp in zip(targets.lists, ensemble_logprobs([raw], [1.0], temperatures=[0.5])):
        assert cl.teacher_scores == pytest.approx(lp.tolist(), abs=1e-12)
    # configured weights without a check: stored as given
    given = build_targets(cfg, data, lists, ["bm25", "random"], weights={"bm25": 0.25, "random": 0.75})
    assert given.choice is None and given.run is None and given.stored == {"bm25": 0.25, "random": 0.75}


# --- checked before it teaches (issue 11) ---------------------------------------------------------------------


def test_check_ensemble_keeps_a_better_teacher_and_zeroes_a_worse_one():
    # two held-out queries, three candidates each; d1 is relevant to q1 (grade 1), e3 to q2 (grade 2)
    candidates = {"q1": ["d1", "d2", "d3"], "q2": ["e1", "e2", "e3"]}
    qrels = {"q1": {"d1": 1}, "q2": {"e3": 2}}
    student = {"q1": {"d1": 0.1, "d2": 0.3, "d3": 0.2}, "q2": {"e1": 0.3, "e2": 0.2, "e3": 0.1}}
    good = {"q1": {"d1": 3.0, "d2": 1.0, "d3": 0.0}, "q2": {"e1": 0.0, "e2": 1.0, "e3": 2.0}}
    # by hand: the student ranks d1 3rd and e3 3rd -> nDCG@10 = 1/log2(4) = 0.5 on each query
    choice = check_ensemble(candidates, student, {"good": good, "bad": student}, {"good": 1.0, "bad": 0.0}, qrels)
    assert choice.student_ndcg == pytest.approx(0.5)
    assert choice.ensemble_ndcg == pytest.approx(1.0) and choice.usable
    assert choice.weights == {"good": 1.0, "bad": 0.0}
    # the student's own ranking as teacher: no gain over the student -> every weight 0, with a warning
    same = check_ensemble(candidates, student, {"same": student}, {"same": 1.0}, qrels)
    assert not same.usable and same.weights == {"same": 0.0} and same.ensemble_ndcg == pytest.approx(0.5)
    # a gain smaller than min_gain is not enough
    assert not check_ensemble(candidates, student, {"good": good}, {"good": 1.0}, qrels, min_gain=0.6).usable
    with pytest.raises(ValueError, match="no held-out scores"):
        check_ensemble(candidates, student, {"good": good}, {"other": 1.0}, qrels)
    with pytest.raises(ValueError, match="no score for 'd3'"):
        check_ensemble(candidates, student, {"good": {"q1": {"d1": 1, "d2": 0}, "q2": good["q2"]}}, {"good": 1}, qrels)


def test_random_scorer_is_seeded_noise_per_pair():
    a = RandomScorer(3).score_groups([("q", ["x", "y"]), ("q", ["y", "x"])], {}, None)
    assert a[0][0] == a[1][1] and a[0][1] == a[1][0] and a[0][0] != a[0][1]  # same pair, same score, any list
    b = RandomScorer(4).score_groups([("q", ["x", "y"])], {}, None)
    assert not np.allclose(a[0], b[0])


def test_a_rejected_teacher_does_not_move_the_retriever(tiny_bert, tiny_data, tmp_path):
    """The plumbing of the check: a teacher that cannot clear min_gain (1.0 nDCG) gets weight 0, the lists carry
    no teacher scores, and with no hard-label term the retriever's weights do not change at all."""
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.teachers=random:1", "train.online_teacher_weight=0",
                   "train.retriever_ce_weight=0", "train.max_steps=3", "pipeline.teacher_min_gain=1.0",
                   "train.weight_decay=0")
    result = train(cfg)
    check = json.loads((out / "teacher_check.json").read_text())
    assert check["usable"] is False and check["weights"] == {"random": 0.0} and check["min_gain"] == 1.0
    assert json.loads((out / "teacher_lists.jsonl.meta.json").read_text())["rejected"] is True
    assert result.dev["end"] == pytest.approx(result.dev["start"], abs=1e-6)
    start = DualEncoder.from_pretrained(str(tiny_bert)).state_dict()
    saved = DualEncoder.from_pretrained(str(result.retriever_dir)).state_dict()
    assert all(torch.equal(start[k], saved[k]) for k in start)


def test_without_the_check_the_random_teacher_teaches(tiny_bert, tiny_data, tmp_path):
    """The control for the test above: the same run with the check off distils from noise (lists carry scores)."""
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.teachers=random:1", "train.online_teacher_weight=0",
                   "train.retriever_ce_weight=0", "train.max_steps=3", "train.check_teachers=false")
    train(cfg)
    data = load_retrieval_data(tiny_data)
    lists = read_candidates(out / "teacher_lists.jsonl", corpus=data.corpus, queries=data.queries)
    assert all(cl.teacher_scores is not None for cl in lists)
    assert not (out / "teacher_check.json").exists()


def test_keep_best_saves_the_best_dev_retriever_and_the_curve(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.mode=contrastive", "train.max_steps=4", "train.eval_every=2",
                   "train.keep_best=true", "train.lr_retriever=5e-3")
    result = train(cfg)
    curve = json.loads((out / "dev_curve.json").read_text())["curve"]
    assert set(curve) == {"0", "2", "4"}
    assert result.dev["best"] == pytest.approx(max(curve.values()))
    best_step = int(result.dev["best_step"])
    assert curve[str(best_step)] == max(curve.values()) and all(curve[k] < result.dev["best"] for k in curve
                                                                if int(k) < best_step)
    data = load_retrieval_data(tiny_data)
    saved = DualEncoder.from_pretrained(str(result.retriever_dir))
    assert dev_ndcg(saved, data, cfg) == pytest.approx(result.dev["best"], abs=1e-6)
    assert json.loads((out / "train_state.json").read_text())["dev_curve"] == curve

    # a folder seeded with another run's dev curve and best weights (no checkpoint): a --resume starts from step 0
    # and hands on neither -- keep-best would otherwise keep the other run's retriever, whose dev value it cannot beat
    other = tmp_path / "seeded"
    other.mkdir()
    (other / "dev_curve.json").write_text(json.dumps({"best": 2.0, "best_step": 7, "curve": {"0": 0.1, "7": 2.0}}))
    (other / "best_retriever.pt").write_bytes(b"not the weights of this run")
    again = train(cfg, output_dir=other, resume=True)
    assert set(json.loads((other / "dev_curve.json").read_text())["curve"]) == {"0", "2", "4"}
    assert again.dev["best"] == pytest.approx(result.dev["best"]) and again.dev["best_step"] == best_step


def _cranfield_subset(dst: Path, *, train_queries: int = 8, extra_passages: int = 150, seed: int = 0) -> Path:
    """A small real collection: cranfield's dev queries, a few train queries, their judged passages and some others."""
    import random

    src = ROOT / "data" / "cranfield"
    qrels: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "dev"):
        rows = (src / "qrels" / f"{split}.tsv").read_text().splitlines()
        qrels[split] = {}
        for row in rows[1:]:
            q, d, g = row.split("\t")
            qrels[split].setdefault(q, []).append(f"{q}\t{d}\t{g}")
    keep_train = sorted(qrels["train"], key=int)[:train_queries]
    lines = {"train": [r for q in keep_train for r in qrels["train"][q]],
             "dev": [r for rows in qrels["dev"].values() for r in rows]}
    judged = {r.split("\t")[1] for rows in lines.values() for r in rows}
    corpus = [json.loads(x) for x in (src / "corpus.jsonl").read_text().splitlines()]
    others = [c for c in corpus if c["_id"] not in judged]
    chosen = judged | {c["_id"] for c in random.Random(seed).sample(others, extra_passages)}
    (dst / "qrels").mkdir(parents=True)
    with open(dst / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps(c) + "\n" for c in corpus if c["_id"] in chosen)
    wanted = set(keep_train) | set(qrels["dev"])
    with open(dst / "queries.jsonl", "w") as f:
        f.writelines(x + "\n" for x in (src / "queries.jsonl").read_text().splitlines() if json.loads(x)["_id"] in wanted)
    for split, rows in lines.items():
        (dst / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return dst


@pytest.mark.skipif(not (ROOT / "data" / "cranfield" / "corpus.jsonl").exists(), reason="data/ not present")
@pytest.mark.filterwarnings("ignore::rocketkd.data.corpus.EmptyPassageWarning")  # cranfield's passage 995 is empty
def test_packaged_minilm_on_real_queries_rejects_a_random_teacher(tmp_path):
    """Issue 11 on real data and the real model: the packaged MiniLM re-ranks cranfield's 25 dev queries far better
    than noise, so a random teacher gets weight 0 and the retriever's dev nDCG@10 does not fall."""
    data_dir = _cranfield_subset(tmp_path / "cran")
    out = tmp_path / "run"
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"data.path={data_dir}", f"output_dir={out}", "candidates.source=sampled", "candidates.list_length=4",
        "model.passage_max_length=64", "train.batch_size=4", "train.max_steps=2", "train.mode=static",
        "train.teacher=stored", "train.teachers=random:1", "train.retriever_ce_weight=0",
        "train.mixed_precision=no", "eval.rerank_depth=20", "pipeline.teacher_min_gain=0",
    ])
    result = train(cfg)
    check = json.loads((out / "teacher_check.json").read_text())
    assert check["usable"] is False and check["weights"] == {"random": 0.0}
    assert check["student_ndcg@10"] > check["members"]["random"]["nDCG@10"] + 0.1
    assert result.dev["end"] == pytest.approx(result.dev["start"], abs=0.005)
