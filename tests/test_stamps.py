"""Reused outputs carry what made them (issue 21, items 3 and 6; docs/reliability.md "Reused outputs").

Each test failed on the code before stamps: ``candidates.jsonl``, ``teacher_lists.jsonl`` and ``dev_start.json`` were
reused whatever config made them, ``--resume`` and pipeline reruns accepted changed keys silently, a forced pipeline
rerun kept the stages the change invalidated, and a new run in an old folder inherited its checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import yaml

import rocketkd.candidates.lists as lists_mod
import rocketkd.commands as commands
import rocketkd.teachers.targets as targets_mod
import rocketkd.training.dev as dev_mod
from rocketkd.cli import main
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data, read_candidates
from rocketkd.io import mark_output
from rocketkd.pipeline import StageLog, run_train
from rocketkd.stamps import check_unchanged, differences, make_stamp, read_stamp
from rocketkd.training.checkpoint import list_checkpoints

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


def tiny_cfg(tiny_bert: Path, tiny_data: Path, out: Path, *extra: str):
    overrides = [f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}",
                 f"output_dir={out}", "train.eval_dev=false", *extra]
    return load_config(TINY_CONFIG, overrides)


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


def test_stamp_differences_name_keys_and_inputs():
    cfg = load_config(TINY_CONFIG)
    a = make_stamp(cfg, ("mining",), corpus="c1")
    cfg.mining.depth = 99
    cfg.train.lr_retriever = 1.0  # not in the sections asked for: not part of the stamp
    b = make_stamp(cfg, ("mining",), corpus="c2")
    assert differences(a, b) == ["mining.depth", "input:corpus"]
    assert differences(b, json.loads(json.dumps(b))) == []  # a stamp read back from JSON compares equal
    # an option added since (absent from the old stamp) counts as unchanged while it is left empty, not once set
    old = {"config": {k: v for k, v in b["config"].items() if k != "mining.depth"}, "inputs": b["inputs"]}
    assert differences(old, {**b, "config": {**b["config"], "mining.depth": None}}) == []
    assert differences(old, b) == ["mining.depth"]
    assert differences({"inputs": {}}, {"inputs": {"corpus": None}}) == ["input:corpus"]  # inputs: no such leniency


def test_a_longer_round_keeps_the_prior_warm_up_and_check_before_it(tmp_path):
    corpus = SimpleNamespace(fingerprint=lambda: "corpus-1")
    ran: list[str] = []

    def run_all(cfg, previous=None):
        log = StageLog(tmp_path / "stages.json", cfg, corpus, previous)
        for name in ("baselines", "mine-0", "prior", "warmup", "mine-1", "teachers-1", "train-1", "final"):
            log.run(name, lambda name=name: ran.append(name) or {"made": name})

    cfg = load_config(TINY_CONFIG, ["pipeline.round_steps=4"])
    run_all(cfg)
    ran.clear()
    longer = load_config(TINY_CONFIG, ["pipeline.round_steps=8"])
    run_all(longer, cfg.to_dict())
    assert ran == ["train-1", "final"]
    ran.clear()
    alone = load_config(TINY_CONFIG, ["pipeline.round_steps=8", "pipeline.warmup_retriever=false"])
    run_all(alone, longer.to_dict())  # a pipeline key: the prior (every pipeline key counts there) and all after it
    assert ran == ["prior", "warmup", "mine-1", "teachers-1", "train-1", "final"]
    ran.clear()
    best = load_config(TINY_CONFIG, ["pipeline.round_steps=8", "pipeline.warmup_retriever=false",
                                     "train.keep_best=true", "train.eval_every=2"])
    run_all(best, alone.to_dict())  # keys of the retriever's training: a warm-up of the re-ranker alone is kept
    assert ran == ["train-1", "final"]
    ran.clear()
    both = load_config(TINY_CONFIG, ["pipeline.round_steps=8", "pipeline.warmup_retriever=true",
                                     "train.keep_best=true", "train.eval_every=2"])
    run_all(both, best.to_dict())
    ran.clear()
    run_all(load_config(TINY_CONFIG, ["pipeline.round_steps=8", "pipeline.warmup_retriever=true"]), both.to_dict())
    assert ran[0] == "warmup"  # ... but one that trains the retriever too reads them
    ran.clear()
    passes = load_config(TINY_CONFIG, ["pipeline.round_epochs=2", "pipeline.round_steps=8"])
    run_all(passes, longer.to_dict())
    ran.clear()
    run_all(load_config(TINY_CONFIG, ["pipeline.round_epochs=2"]), passes.to_dict())
    assert ran == []  # round_steps (8 -> unset) has no effect beside round_epochs: nothing redone
    rate = load_config(TINY_CONFIG, ["pipeline.round_steps=8", "pipeline.warmup_retriever=true", "train.lr_reranker=0.5"])
    run_all(rate, longer.to_dict())  # the warm-up trains the re-ranker at that rate: it and every later stage redone
    assert ran == ["warmup", "mine-1", "teachers-1", "train-1", "final"]
    ran.clear()
    slower = load_config(TINY_CONFIG, ["pipeline.round_steps=8", "pipeline.warmup_retriever=true", "train.lr_reranker=0.5",
                                       "pipeline.round_reranker_lr_scale=0.1"])
    run_all(slower, rate.to_dict())  # the round's rates alone: the warm-up (at the rates as given) and check are kept
    assert ran == ["train-1", "final"]


# ----------------------------------------------------------------------------------------------------------------
# reused artefacts are rebuilt when their stamp differs


def test_mined_lists_are_mined_again_when_mining_keys_change(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    real_mine = lists_mod.mine
    monkeypatch.setattr(lists_mod, "mine", lambda *a, **k: calls.append(1) or real_mine(*a, **k))
    data = load_retrieval_data(tiny_data)
    cfg = load_config(TINY_CONFIG, [f"data.path={tiny_data}", "candidates.source=mined", "mining.depth=5"])
    first = lists_mod.build_lists(cfg, data, out)
    assert len(calls) == 1 and read_stamp(out / "candidates.jsonl") is not None
    lists_mod.build_lists(cfg, data, out)  # same keys: reused
    assert len(calls) == 1
    cfg.mining.depth = 3  # the reported case: a changed mining.depth reused the old lists
    again = lists_mod.build_lists(cfg, data, out)
    assert len(calls) == 2
    assert max(len(c.pids) for c in again) <= max(len(c.pids) for c in first)
    (out / "candidates.jsonl.stamp.json").unlink()  # lists of unknown origin (before stamps): mined again
    lists_mod.build_lists(cfg, data, out)
    assert len(calls) == 3


def test_dev_start_is_measured_again_for_a_new_start_model(tiny_data, tmp_path, monkeypatch):
    """The reported case: a new start model logged a false gain against the old model's dev_start.json."""
    out = tmp_path / "run"
    out.mkdir()
    data = load_retrieval_data(tiny_data)
    cfg = load_config(TINY_CONFIG, [f"data.path={tiny_data}"])
    values = iter([0.25, 0.5, 0.75])
    monkeypatch.setattr(dev_mod, "dev_ndcg", lambda *a, **k: next(values))
    assert dev_mod.dev_start(None, data, cfg, out, "model-a") == {"start": 0.25}
    assert dev_mod.dev_start(None, data, cfg, out, "model-a") == {"start": 0.25}  # reused
    assert dev_mod.dev_start(None, data, cfg, out, "model-b") == {"start": 0.5}
    cfg.model.pooling = "cls"  # a key of the model section: measured again
    assert dev_mod.dev_start(None, data, cfg, out, "model-b") == {"start": 0.75}


def test_teacher_lists_are_built_again_when_their_inputs_change(tiny_bert, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    calls = []
    real = targets_mod.build_targets
    monkeypatch.setattr(targets_mod, "build_targets", lambda *a, **k: calls.append(1) or real(*a, **k))
    data = load_retrieval_data(tiny_data)
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.teachers={bm25: 1.0}", "train.check_teachers=false")
    lists = lists_mod.build_lists(cfg, data, out)
    targets_mod.teacher_lists(cfg, data, lists, out)
    targets_mod.teacher_lists(cfg, data, lists, out)
    assert len(calls) == 1
    targets_mod.teacher_lists(cfg, data, lists[:-1], out)  # other lists
    assert len(calls) == 2
    cfg.train.teacher_scale = 3.0  # another config key
    built = targets_mod.teacher_lists(cfg, data, lists[:-1], out)
    assert len(calls) == 3 and built[0].teacher_scores is not None
    assert [c.qid for c in read_candidates(out / "teacher_lists.jsonl")] == [c.qid for c in lists[:-1]]


def test_a_new_run_does_not_inherit_an_old_runs_checkpoints(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    run_train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=4", "train.save_every=4"))
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000004"]
    (out / "dev_curve.json").write_text(json.dumps({"best": 9.0, "best_step": 4, "curve": {"4": 9.0}}))
    run_train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=2", "train.save_every=2"))
    # a later --resume would have picked the old run's step-4; keep-best would have kept its 9.0
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000002"]
    assert not (out / "dev_curve.json").exists()


# ----------------------------------------------------------------------------------------------------------------
# --resume and pipeline reruns with changed keys: refused naming them, unless --force


def test_resume_with_changed_keys_is_refused_unless_forced(capsys, tiny_bert, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    args = ["train", "--config", TINY_CONFIG, "--set", f"data.path={tiny_data}", "--set", f"model.retriever={tiny_bert}",
            "--set", f"model.reranker={tiny_bert}", "--set", "train.eval_dev=false", "--set", "train.max_steps=2",
            "--output", out]
    assert cli(capsys, *args)[0] == 0
    assert cli(capsys, *args, "--resume")[0] == 0  # the same config: resumes (here: already finished)

    def refuse(*a, **k):
        raise AssertionError("run_train ran before the config was compared")

    monkeypatch.setattr(commands, "run_train", refuse)
    changed = [*args, "--set", "train.lr_retriever=0.5", "--set", "mining.depth=3", "--resume"]
    line = one_error(cli(capsys, *changed), "train", "train.lr_retriever", "mining.depth", "--force", str(out))
    assert "0.001" in line and "0.5" in line
    monkeypatch.undo()
    assert cli(capsys, *changed, "--force")[0] == 0
    # what --force accepted is the config the run now continues with
    assert cli(capsys, *changed)[0] == 0


def test_pipeline_rerun_with_changed_keys_is_refused(capsys, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "pipe"
    out.mkdir()
    mark_output(out, "pipeline")
    (out / "stages.json").write_text("{}")
    load_config(TINY_CONFIG, [f"data.path={tiny_data}"]).dump(out / "config.yaml")
    monkeypatch.setattr(commands, "run_pipeline", lambda cfg: {"systems": {}})
    base = ["pipeline", "--config", TINY_CONFIG, "--set", f"data.path={tiny_data}", "--output", out]
    assert cli(capsys, *base)[0] == 0
    one_error(cli(capsys, *base, "--set", "mining.depth=3"), "pipeline", "mining.depth (10 -> 3)", "--force")
    assert cli(capsys, *base, "--set", "mining.depth=3", "--force")[0] == 0
    changed = load_config(TINY_CONFIG, [f"data.path={tiny_data}", "mining.depth=3"])
    assert check_unchanged(out, changed, force=True, what="x") == ["mining.depth"]


def test_forced_pipeline_rerun_redoes_the_changed_stage_and_every_later_one(tmp_path):
    corpus = SimpleNamespace(fingerprint=lambda: "corpus-1")
    ran: list[tuple[str, bool]] = []

    def run_all(cfg, previous=None):
        log = StageLog(tmp_path / "stages.json", cfg, corpus, previous)
        for name in ("baselines", "mine-1", "teachers-1", "train-1", "final"):
            log.run(name, lambda name=name: ran.append((name, log.fresh)) or {"made": name})
        return log

    cfg = load_config(TINY_CONFIG)
    run_all(cfg)
    assert [n for n, _ in ran] == ["baselines", "mine-1", "teachers-1", "train-1", "final"]
    ran.clear()
    run_all(cfg, cfg.to_dict())
    assert ran == []  # nothing changed: nothing redone
    new = load_config(TINY_CONFIG, ["mining.depth=3"])  # not a key of the baselines
    run_all(new, cfg.to_dict())
    assert ran == [("mine-1", True), ("teachers-1", True), ("train-1", True), ("final", True)]
    ran.clear()
    run_all(new, new.to_dict())
    assert ran == []

    # an interrupted forced rerun: train-1 left partial with the new keys continues (not fresh); with other keys
    # it starts over; a stage recorded before stamps existed is judged by the previous config.yaml
    stages = json.loads((tmp_path / "stages.json").read_text())
    del stages["train-1"], stages["final"]
    (tmp_path / "stages.json").write_text(json.dumps(stages))
    (tmp_path / "stages.stamps.json").unlink()
    run_all(new, new.to_dict())
    assert ran == [("train-1", False), ("final", False)]
    ran.clear()
    lr = load_config(TINY_CONFIG, ["mining.depth=3", "train.lr_retriever=0.5"])
    run_all(lr, new.to_dict())
    # a training-only key: the teachers' check before the round's training is kept, the training starts over
    assert ran == [("train-1", True), ("final", True)]
    ran.clear()
    temp = load_config(TINY_CONFIG, ["mining.depth=3", "train.lr_retriever=0.5", "train.temperature=2.0"])
    run_all(temp, lr.to_dict())  # the teachers' check reads train.temperature: redone
    assert ran == [("teachers-1", True), ("train-1", True), ("final", True)]
    ran.clear()
    # a run stamped before the training-only keys were ignored: its teachers' stamp holds them, and is still kept
    stamps = json.loads((tmp_path / "stages.stamps.json").read_text())
    stamps["teachers-1"]["config"]["train.lr_retriever"] = 0.5
    (tmp_path / "stages.stamps.json").write_text(json.dumps(stamps))
    rate = load_config(TINY_CONFIG, ["mining.depth=3", "train.lr_retriever=0.25", "train.temperature=2.0"])
    run_all(rate, temp.to_dict())
    assert ran == [("train-1", True), ("final", True)]


def test_training_only_keys_are_train_keys_read_only_by_the_training_step():
    """What lets a rerun keep the prior and the teachers' check when a training-only key changes: no module outside
    rocketkd/training reads one of them (the config and CLI define and set them, stamps.py names one in an example; the pipeline's stage functions before
    training are checked one by one, the rest of pipeline.py builds the training config from them)."""
    import inspect
    import re
    from dataclasses import fields

    import rocketkd.pipeline as pipeline_mod
    from rocketkd.config import TrainConfig

    names = {k.removeprefix("train.") for k in pipeline_mod.TRAINING_ONLY_KEYS}
    assert names <= {f.name for f in fields(TrainConfig)}
    root = Path(__file__).resolve().parents[1] / "rocketkd"
    sources = {path.relative_to(root).as_posix(): path.read_text(encoding="utf-8") for path in root.rglob("*.py")}
    sources = {rel: text for rel, text in sources.items()
               if not rel.startswith("training/")
               and rel not in ("config.py", "cli.py", "pipeline.py", "stamps.py", "pretrain.py")}  # pretrain: a training stage
    for fn in (pipeline_mod._stage_prior, pipeline_mod._stage_prior_teachers, pipeline_mod._stage_teachers,
               pipeline_mod._check_queries):
        sources[f"pipeline.py:{fn.__name__}"] = inspect.getsource(fn)
    readers = {name: rel for rel, text in sources.items() for name in names
               if re.search(rf"\.{name}\b|[\"']{name}[\"']", text)}
    assert readers == {}
    # and the check can fail: a key the teachers' check does read is found
    assert re.search(r"\.temperature\b", sources["pipeline.py:_stage_prior_teachers"])


def test_train_resume_with_auto_lengths_compares_the_given_config(capsys, tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--config", TINY_CONFIG, "--set", f"data.path={tiny_data}", "--set", f"model.retriever={tiny_bert}",
            "--set", f"model.reranker={tiny_bert}", "--set", "train.eval_dev=false", "--set", "train.max_steps=2",
            "--set", "model.passage_max_length=auto", "--output", out]
    assert cli(capsys, *args)[0] == 0
    assert yaml.safe_load((out / "config.given.yaml").read_text())["model"]["passage_max_length"] == "auto"
    trained = yaml.safe_load((out / "config.yaml").read_text())["model"]["passage_max_length"]
    assert isinstance(trained, int) and trained >= 32  # what it trained with: the length the tiny corpus needs
    assert cli(capsys, *args, "--resume")[0] == 0  # auto again: the same given config, no "keys changed"
