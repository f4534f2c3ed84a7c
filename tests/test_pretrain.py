"""The re-ranker's label-free pre-training (rocketkd.pretrain, pipeline.reranker_pretrain): its data, its
check against the prior on held-out queries, and the pipeline stage that keeps it only on that evidence."""

import json
import shutil
from pathlib import Path

import pytest

import rocketkd.pipeline as pipeline_mod
import rocketkd.pretrain as pretrain_mod
from rocketkd.candidates.inverse_cloze import ICT_QUERY_PREFIX
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data
from rocketkd.errors import ConfigError
from rocketkd.models import resolve_model_path
from rocketkd.pipeline import run_pipeline
from rocketkd.teachers.prior import PRIOR_FILE, Prior

ROOT = Path(__file__).resolve().parents[1]


def _sentences(tiny_data: Path) -> Path:
    """The tiny collection with every passage made of three sentences (its words in three runs), so each can be cut."""
    path = tiny_data / "corpus.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    with path.open("w") as f:
        for i, row in enumerate(rows):
            words = (row["text"] + f" extra{i} words here").split()
            third = len(words) // 3
            parts = [words[:third], words[third:2 * third], words[2 * third:]]
            row["text"] = " ".join(" ".join(p) + " ." for p in parts)
            f.write(json.dumps(row) + "\n")
    return tiny_data


def _cfg(tiny_bert, tiny_data, out, *extra):
    return load_config(ROOT / "configs" / "tiny.yaml", [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}", f"output_dir={out}",
        "model.reranker_prior=true", "pipeline.warmup=false", "pipeline.prior_alpha=1e-12",
        "pipeline.reranker_pretrain=30", "pipeline.reranker_pretrain_steps=2", "mining.depth=6", *extra])


def test_inverse_cloze_data_is_a_train_split_of_cut_sentences(tiny_bert, tiny_data, tmp_path):
    cfg = _cfg(tiny_bert, _sentences(tiny_data), tmp_path / "run", "data.min_positive_grade=2")
    data = load_retrieval_data(cfg.data.path)
    ict = pretrain_mod.inverse_cloze_data(cfg, data)
    assert list(ict.qrels) == ["train"] and 0 < len(ict.queries) <= 30
    for qid, judged in ict.qrels["train"].items():
        (pid, grade), = judged.items()
        assert qid == ICT_QUERY_PREFIX + pid and grade == 2  # the lowest grade that counts as a positive
        assert ict.queries[qid] in data.corpus.get_text(pid) and ict.queries[qid] not in ict.corpus.get_text(pid)
    assert not ict.unlabeled_queries


def test_pretrain_needs_the_prior_and_sane_values(tiny_bert, tiny_data, tmp_path):
    with pytest.raises(ConfigError, match="pipeline.reranker_pretrain.*model.reranker_prior"):
        _cfg(tiny_bert, tiny_data, tmp_path, "model.reranker_prior=false")
    with pytest.raises(ConfigError, match="pipeline.reranker_pretrain'"):
        _cfg(tiny_bert, tiny_data, tmp_path, "pipeline.reranker_pretrain=-1")
    with pytest.raises(ConfigError, match="pipeline.reranker_pretrain_steps"):
        _cfg(tiny_bert, tiny_data, tmp_path, "pipeline.reranker_pretrain_steps=0")


@pytest.mark.parametrize("evidence", ["none", "significant"])
def test_the_pipeline_keeps_the_pretrained_reranker_only_on_evidence(tiny_bert, tiny_data, tmp_path, monkeypatch,
                                                                     evidence):
    out = tmp_path / "run"
    cfg = _cfg(tiny_bert, _sentences(tiny_data), out)
    check = pretrain_mod.check_pretrained
    measured = {}

    def checked(*args, **kwargs):
        result = check(*args, **kwargs)
        measured.update(result)
        if evidence == "significant":  # the tiny collection cannot show it: pretend it did
            result = {**result, "delta": 0.01, "p_value": 0.0}
        return result

    monkeypatch.setattr(pretrain_mod, "check_pretrained", checked)
    starts = []
    teachers = pipeline_mod._stage_prior_teachers

    def spy(cfg, data, out, r, retriever, reranker, *rest):
        starts.append(reranker)
        return teachers(cfg, data, out, r, retriever, reranker, *rest)

    monkeypatch.setattr(pipeline_mod, "_stage_prior_teachers", spy)
    results = run_pipeline(cfg)
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages)[:5] == ["baselines", "mine-1", "prior", "pretrain", "teachers-1"]
    pre = stages["pretrain"]
    assert pre["steps"] == 2 and pre["lists"] == pre["queries"] > 0
    pretrained = Path(pre["pretrained"])
    assert Prior.load(pretrained) == Prior.load(out / "prior") and (pretrained / PRIOR_FILE).exists()
    # the check: prior + g against the prior alone on dev + train, as measured
    assert measured["queries"] == len(load_retrieval_data(cfg.data.path).qrels["dev"]) + len(
        load_retrieval_data(cfg.data.path).qrels["train"])
    assert measured["delta"] == pytest.approx(measured["reranker_ndcg@10"] - measured["prior_ndcg@10"])
    assert measured["g_std"] > 0  # the cross-encoder moved off zero
    assert results["reranker_pretrain"]["accepted"] is (evidence == "significant")
    if evidence == "significant":
        assert starts == [str(pretrained)] and pre["reranker"] == str(pretrained)
    else:  # no evidence: round 1 starts from model.reranker, its head at zero
        assert starts == [resolve_model_path(cfg.model.reranker)]
    # a train.* key of the retriever alone does not redo the pre-training
    again = _cfg(tiny_bert, cfg.data.path, out, "train.retriever_ce_weight=0.5")
    run_pipeline(again)
    redone = json.loads((out / "stages.json").read_text())
    assert redone["pretrain"] == pre


def test_the_script_runs_the_stage_alone_and_resumes(tiny_bert, tiny_data, tmp_path, capsys):
    import importlib.util

    from rocketkd.models.loading import retriever_settings

    spec = importlib.util.spec_from_file_location("pretrain_script", ROOT / "scripts" / "pretrain_reranker.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = _cfg(tiny_bert, _sentences(tiny_data), tmp_path / "unused")
    Prior({"bm25": 0.5, "base": 0.5}, {"bm25": 1.0, "base": 1.0}, base_model=str(tiny_bert),
          base_settings=retriever_settings(cfg)).save(tmp_path)
    args = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--prior", str(tmp_path), "--output", str(tmp_path / "o"),
            *[x for kv in [f"data.path={cfg.data.path}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}",
                           "model.reranker_prior=true", "pipeline.reranker_pretrain=30",
                           "pipeline.reranker_pretrain_steps=2", "mining.depth=6"] for x in ("--set", kv)]]
    assert script.main(args) == 0
    first = json.loads((tmp_path / "o" / "pretrain.json").read_text())
    assert first["steps"] == 2 and first["check"]["queries"] > 0 and "prior + g nDCG@10" in capsys.readouterr().out
    assert script.main(args) == 0  # resumed: the finished training is read back, the check gives the same
    assert json.loads((tmp_path / "o" / "pretrain.json").read_text())["check"] == first["check"]
    with pytest.raises(SystemExit):
        script.main(["--prior", str(tmp_path / "o" / "nothing"), "--output", str(tmp_path / "x")])
    assert "no rocketkd_prior.json" in capsys.readouterr().err
    # --check: a g trained elsewhere, checked over this prior, nothing trained: the stage's own check, reproduced
    capsys.readouterr()
    check = ["--check", first["pretrained"], "--output", str(tmp_path / "c")]
    assert script.main([*args[:4], *check, *args[6:]]) == 0
    again = json.loads((tmp_path / "c" / "pretrain.json").read_text())
    assert again["check"] == first["check"] and again["reranker"] == first["pretrained"]
    assert not (tmp_path / "c" / "checkpoints").exists()  # nothing was trained
    with pytest.raises(SystemExit) as bad:
        script.main([*args[:4], "--check", str(tmp_path / "nowhere"), "--output", str(tmp_path / "d")])
    assert bad.value.code == 2 and "--check" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["ict", "labels"])
def test_the_probe_script_measures_prior_plus_g_on_held_out_queries(tiny_bert, tiny_data, tmp_path, kind):
    import math
    import os
    import subprocess
    import sys

    from rocketkd.models.loading import retriever_settings

    cfg = _cfg(tiny_bert, _sentences(tiny_data), tmp_path / "unused")
    Prior({"bm25": 0.5, "base": 0.5}, {"bm25": 1.0, "base": 1.0}, base_model=str(tiny_bert),
          base_settings=retriever_settings(cfg)).save(tmp_path)
    config = tmp_path / "tiny.yaml"
    config.write_text((ROOT / "configs" / "tiny.yaml").read_text().replace("tests/resources/tiny-bert", str(tiny_bert))
                      .replace("tests/resources/tiny", str(cfg.data.path)).replace("depth: 10", "depth: 6"))
    out = tmp_path / "probe"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "probe_reranker_residual.py"), str(config), str(tmp_path),
                    str(out), "12", "1", f"kind={kind}", "batch=2"], check=True, cwd=ROOT,
                   env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    (result,) = json.loads((out / "results.json").read_text())
    assert math.isfinite(result["delta"]) and 0.0 <= result["p"] <= 1.0 and result["g_std"] > 0
    assert (out / "reranker" / "config.json").exists()
    log = (out / "log.txt").read_text()
    assert "held-out" in log and ("training queries" in log)


@pytest.mark.parametrize("tried, alpha, chosen", [
    ([(1, 0.008, 0.01), (2, 0.020, 0.005), (3, 0.010, 0.3)], 0.05, 2),  # SciFact's shape: the peak, significant
    ([(1, 0.008, 0.01), (2, 0.020, 0.08)], 0.05, 1),                    # the larger gain is not significant
    ([(1, -0.008, 0.2), (2, -0.061, 0.001)], 0.05, 0),                  # Cranfield's: significant, but a loss
    ([(1, 0.01, 0.01), (2, 0.01, 0.01)], 0.05, 1),                      # a tie goes to the shorter warm-up
    ([], 0.05, 0),
])
def test_the_warmup_length_needs_a_significant_held_out_gain(tried, alpha, chosen):
    rows = [{"epochs": n, "delta": d, "p_value": p} for n, d, p in tried]
    assert pretrain_mod.pick_warmup_epochs(rows, alpha) == chosen


def test_choose_warmup_epochs_scores_each_held_out_query_once_by_a_g_blind_to_it(tiny_bert, tiny_data, tmp_path,
                                                                                 monkeypatch):
    import math

    from rocketkd.candidates.mining import mine
    from rocketkd.data.formats import read_candidates
    from rocketkd.models.loading import retriever_settings
    from rocketkd.teachers.prior import held_out_for_prior, query_fold

    cfg = _cfg(tiny_bert, tiny_data, tmp_path / "unused", "pipeline.prior_alpha=0.05")
    data = load_retrieval_data(cfg.data.path)
    prior = Prior({"bm25": 0.5, "base": 0.5}, {"bm25": 1.0, "base": 1.0}, base_model=str(tiny_bert),
                  base_settings=retriever_settings(cfg))
    mine(cfg, output=tmp_path / "lists.jsonl", data=data)
    lists = read_candidates(tmp_path / "lists.jsonl", corpus=data.corpus, queries=data.all_queries())
    trained, scored = [], []
    train, g_scores = pretrain_mod.train, pretrain_mod.g_scores

    def spy_train(tcfg, fold_lists, **kw):
        trained.append((tcfg.train.epochs, {x.qid for x in fold_lists}, len(fold_lists)))
        assert tcfg.train.mode == "reranker" and tcfg.train.max_steps is None
        assert all(x.teacher_scores is not None for x in fold_lists)  # the prior's log-probabilities ride along
        return train(tcfg, fold_lists, **kw)

    def spy_g(cfg_, data_, reranker, candidates, queries):
        scored.append(set(queries))
        return g_scores(cfg_, data_, reranker, candidates, queries)

    monkeypatch.setattr(pretrain_mod, "train", spy_train)
    monkeypatch.setattr(pretrain_mod, "g_scores", spy_g)
    choice = pretrain_mod.choose_warmup_epochs(cfg, data, tmp_path / "choose", prior, lists, epochs=(1, 2))
    held, _ = held_out_for_prior(cfg, data)
    assert [t[0] for t in trained] == [1, 1, 2, 2] and len(scored) == 4
    for i in range(0, 4, 2):  # per length: the two folds' held-out queries partition the check's queries
        assert scored[i] | scored[i + 1] == set(held) and not scored[i] & scored[i + 1]
    for (_, qids, _), queries in zip(trained, scored):
        assert qids and not qids & queries  # g never scores a query whose lists it learned
        assert len({query_fold(q) for q in qids}) == 1
    steps = json.loads((tmp_path / "choose" / "epochs-2" / "fold-0" / "train_state.json").read_text())["step"]
    assert steps == math.ceil(2 * math.ceil(trained[2][2] / cfg.train.batch_size))
    assert [t["epochs"] for t in choice["tried"]] == [1, 2] and choice["alpha"] == 0.05
    assert all(t["queries"] == len(held) and t["g_std"] > 0 for t in choice["tried"])
    assert choice["epochs"] == pretrain_mod.pick_warmup_epochs(choice["tried"], 0.05)


def test_the_choose_warmup_script_prints_and_writes_the_choice(tiny_bert, tiny_data, tmp_path, capsys):
    import importlib.util

    from rocketkd.models.loading import retriever_settings

    spec = importlib.util.spec_from_file_location("choose_script", ROOT / "scripts" / "choose_warmup.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    cfg = _cfg(tiny_bert, tiny_data, tmp_path / "unused")
    Prior({"bm25": 0.5, "base": 0.5}, {"bm25": 1.0, "base": 1.0}, base_model=str(tiny_bert),
          base_settings=retriever_settings(cfg)).save(tmp_path)
    args = ["--config", str(ROOT / "configs" / "tiny.yaml"), "--prior", str(tmp_path), "--output", str(tmp_path / "o"),
            "--epochs", "1", *[x for kv in [f"data.path={cfg.data.path}", f"model.retriever={tiny_bert}",
                                            f"model.reranker={tiny_bert}", "model.reranker_prior=true",
                                            "mining.depth=6"] for x in ("--set", kv)]]
    assert script.main(args) == 0
    printed = capsys.readouterr().out
    first = json.loads((tmp_path / "o" / "choice.json").read_text())
    assert [t["epochs"] for t in first["tried"]] == [1] and "1 epoch(s): prior + g nDCG@10" in printed
    assert ("pipeline.warmup_epochs: 1" if first["epochs"] else "pipeline.warmup: false") in printed
    assert script.main(args) == 0  # resumed: the fold runs are read back, the same numbers
    assert json.loads((tmp_path / "o" / "choice.json").read_text())["tried"] == first["tried"]
    for bad, needle in ((["--epochs", "0"], "every length must be > 0"), (["--lists", "nope.jsonl"], "no such file")):
        with pytest.raises(SystemExit):
            script.main([*args, *bad])
        assert needle in capsys.readouterr().err

    # the cross-fit probe: each list taught by the fold's g that never saw it, against g trained on every list
    from rocketkd.data.formats import read_candidates, write_candidates
    from rocketkd.teachers.prior import attach_prior

    data = load_retrieval_data(cfg.data.path)
    prior = Prior.load(tmp_path)
    lists = read_candidates(tmp_path / "o" / "candidates.jsonl", corpus=data.corpus, queries=data.all_queries())
    write_candidates(tmp_path / "with_prior.jsonl", attach_prior(data, lists, prior))
    spec = importlib.util.spec_from_file_location("crossfit", ROOT / "scripts" / "probe_crossfit_teacher.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    config = tmp_path / "o" / "epochs-1.0" / "fold-0" / "config.yaml"  # a full config of this collection
    assert probe.main(["--config", str(config), "--lists", str(tmp_path / "with_prior.jsonl"),
                       "--folds", str(tmp_path / "o" / "epochs-1.0"),
                       "--in-fold", str(tmp_path / "o" / "epochs-1.0" / "fold-0" / "reranker"),
                       "--output", str(tmp_path / "x"), "--set", "pipeline.round_steps=2"]) == 0
    got = json.loads((tmp_path / "x" / "results.json").read_text())
    assert 0 < got["prior"]["p_positive"] < 1
    for name in ("in-fold", "crossfit"):
        assert 0 < got[name]["p_positive"] < 1 and 0 <= got[name]["test_ndcg@10"] <= 1
        assert (tmp_path / "x" / name / "runs" / "retriever.test.trec").exists()
        assert json.loads((tmp_path / "x" / name / "train" / "train_state.json").read_text())["step"] == 2


def _other_collection(tiny_data: Path, tmp_path: Path) -> Path:
    """Another judged collection: the tiny one's copy with its own passage and query ids, a zero grade added."""
    other = tmp_path / "other-data"
    shutil.copytree(tiny_data, other)
    for name in ("corpus.jsonl", "queries.jsonl"):
        rows = [json.loads(line) for line in (other / name).read_text().splitlines()]
        (other / name).write_text("".join(json.dumps({**r, "_id": "o" + r["_id"]}) + "\n" for r in rows))
    for split in ("train", "dev", "test"):
        lines = (other / "qrels" / f"{split}.tsv").read_text().splitlines()
        rows = [line.split("\t") for line in lines[1:]]
        (other / "qrels" / f"{split}.tsv").write_text(
            lines[0] + "\n" + "".join(f"o{q}\to{d}\t{g}\n" for q, d, g in rows) + ("oq0\tod5\t0\n" if split == "train"
                                                                                   else ""))
    return other


def test_another_collections_labels_are_its_judged_train_positives(tiny_bert, tiny_data, tmp_path):
    other = _other_collection(tiny_data, tmp_path)
    cfg = _cfg(tiny_bert, tiny_data, tmp_path / "run", "data.min_positive_grade=2")
    src = pretrain_mod.labelled_source_data(cfg, other)
    theirs = load_retrieval_data(other).qrels["train"]
    # every judged positive of any grade >= 1 there (grades 1 and 2 alike), at this config's lowest positive grade
    assert list(src.qrels) == ["train"] and set(src.queries) == set(theirs)
    assert src.qrels["train"] == {q: {d: 2 for d, g in docs.items() if g >= 1} for q, docs in theirs.items()}
    assert "od5" not in src.qrels["train"]["oq0"]  # grade 0: judged, not relevant
    assert not src.unlabeled_queries and len(src.corpus) == len(load_retrieval_data(other).corpus)
    with pytest.raises(ConfigError, match="reranker_pretrain_data.*no qrels split 'nope'"):
        pretrain_mod.labelled_source_data(_cfg(tiny_bert, tiny_data, tmp_path, "data.train_split=nope"), other)
    with pytest.raises(ConfigError, match="reranker_pretrain_data.*model.reranker_prior"):
        _cfg(tiny_bert, tiny_data, tmp_path, f"pipeline.reranker_pretrain_data={other}", "model.reranker_prior=false")


def test_the_pipeline_pretrains_g_on_another_collections_labels_and_checks_it_here(tiny_bert, tiny_data, tmp_path,
                                                                                  capsys):
    from rocketkd.errors import DataFormatError

    other = _other_collection(tiny_data, tmp_path)
    out = tmp_path / "run"
    cfg = _cfg(tiny_bert, tiny_data, out, "pipeline.reranker_pretrain=0", f"pipeline.reranker_pretrain_data={other}")
    results = run_pipeline(cfg)
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages)[:4] == ["baselines", "mine-1", "prior", "pretrain"]
    pre = stages["pretrain"]
    positives = sum(1 for docs in load_retrieval_data(other).qrels["train"].values() for g in docs.values() if g >= 1)
    # one list per judged positive of the other collection, its own passages only; the check ran on this one's
    assert pre["source"] == str(other) and pre["lists"] == positives and pre["steps"] == 2
    rows = [json.loads(line) for line in (out / "pretrain" / "candidates.jsonl").read_text().splitlines()]
    assert rows and all(r["qid"].startswith("oq") and all(p.startswith("od") for p in r["pids"]) for r in rows)
    data = load_retrieval_data(tiny_data)
    assert pre["check"]["queries"] == len(data.qrels["dev"]) + len(data.qrels["train"])
    assert results["reranker_pretrain"]["source"] == str(other)
    # a folder that is not a collection fails before any work (no output folder is made)
    bad = _cfg(tiny_bert, tiny_data, tmp_path / "bad", f"pipeline.reranker_pretrain_data={tmp_path / 'nowhere'}")
    with pytest.raises(DataFormatError, match="nowhere"):
        run_pipeline(bad)
    assert not (tmp_path / "bad" / "stages.json").exists()
