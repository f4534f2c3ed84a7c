"""``run_pipeline(cfg)``: the whole RocketQAv2 recipe as a sequence of resumable stages.

    baselines  BM25 and the untrained encoder on dev and test (runs kept for the teacher check and results)
    mine-0     first-round candidates (BM25 or the base encoder)
    prior      (model.reranker_prior) the re-ranker's label-free prior, fitted on held-out queries
    pretrain   (pipeline.reranker_pretrain / _data) its cross-encoder pre-trained over the prior on inverse-cloze
               queries or another collection's labels, kept only on held-out evidence
    warmup     both models on labels only: a re-ranker with a fresh head is a random teacher (the re-ranker
               alone with pipeline.warmup_retriever false: round 1 would drop a warmed-up retriever)
    for each round r = 1..rounds:
      mine-r      candidates from the current retriever, denoised by the current re-ranker
      teachers-r  every teacher (re-ranker, BM25, base encoder) measured on dev beside the student; an ensemble is
                  fitted there; a teacher worse than the student gets weight 0 (issue: teachers that help)
      train-r     joint step: re-ranker on labels + retriever distilled toward the ensemble
    final      index of the final retriever, its runs, the fused re-ranked runs, results.json and the PNG

Each finished stage is recorded in ``stages.json`` (written atomically after the stage's own outputs), so rerunning
after an interruption skips what is done and continues with the first unfinished stage.
"""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path

import numpy as np

from rocketkd.candidates.lists import build_lists
from rocketkd.candidates.mining import mine
from rocketkd.candidates.title_queries import apply_data_config, is_title_query
from rocketkd.config import Config, check_disjoint_splits
from rocketkd.data.formats import (
    load_retrieval_data,
    read_candidates,
    read_run_tags,
    read_trec_run,
    write_candidates,
    write_trec_run,
)
from rocketkd.distributed import barrier, is_main
from rocketkd.evaluation.compare import compare_runs
from rocketkd.evaluation.report import evaluate_systems, system_intervals, write_results
from rocketkd.io import read_json, write_json
from rocketkd.models import resolve_model_path
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.pretrain import labelled_source_data, pretrain_reranker
from rocketkd.search.bm25 import BM25Retriever
from rocketkd.search.cache import embedding_cache
from rocketkd.search.fusion import (
    candidates_from_run,
    choose_fusion_weight,
    choose_fusion_weights,
    fitted_or_default,
    fuse_stages,
    head_of_run,
)
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.search.rerank import bm25_run, rerank_run, save_fusion_weight
from rocketkd.stamps import describe_changes, differences, make_stamp, previous_config
from rocketkd.teachers import RandomScorer, RerankerScorer, check_teachers, scores_on_candidates
from rocketkd.teachers.prior import (
    CompositeScorer,
    Prior,
    PriorScorer,
    add_prior_to_run,
    attach_prior,
    fit_prior_on,
    prior_members,
)
from rocketkd.teachers.targets import HeldOut, build_targets, teacher_lists, teachers_rejected
from rocketkd.training import TrainResult, finished, load_result, train

logger = logging.getLogger(__name__)


# The config sections each kind of stage depends on (its stamp, rocketkd.stamps); any other stage: every section.
STAGE_KEYS = {"baselines": ("data", "model", "index", "eval"), "mine": ("data", "model", "mining", "candidates", "index")}
# Keys that only the training step reads (its length, rates, loss weights, precision, bookkeeping). The stages that
# run before a round's training -- the prior's fit, the teachers' check -- do not depend on them, so a rerun that
# changes one redoes that round's training and what follows, not the quarter-hour of prior fitting and checking
# before it (SciFact). A key not listed counts as a dependency; tests/test_stamps.py checks that none of these is
# read outside rocketkd/training.
TRAINING_ONLY_KEYS = frozenset(f"train.{k}" for k in (
    "max_steps", "epochs", "lr_retriever", "lr_reranker", "lr_reranker_head", "weight_decay", "warmup_ratio",
    "gradient_accumulation_steps", "max_grad_norm", "distill_loss", "distill_weight", "retriever_ce_weight",
    "reranker_ce_weight", "distill_to_reranker", "in_batch_negatives", "mixed_precision", "dropout", "keep_best",
    "eval_every", "save_every", "num_workers"))
BEFORE_TRAINING = ("prior", "teachers")  # stage kinds that ignore TRAINING_ONLY_KEYS
# Pipeline keys that only shape a round's training (its length, the re-ranker's rates in it): the stages before it
# (prior, pre-training, warm-up, teachers' check) do not read them, so a longer round reuses the warm-up before it.
ROUND_ONLY_KEYS = frozenset({"pipeline.round_steps", "pipeline.round_epochs", "pipeline.round_reranker_lr_scale"})
# The re-ranker's label-free pre-training trains the cross-encoder alone: the retriever's keys do not touch it.
RETRIEVER_ONLY_KEYS = frozenset(f"train.{k}" for k in (
    "max_steps", "epochs", "lr_retriever", "distill_loss", "distill_weight", "retriever_ce_weight",
    "distill_to_reranker", "in_batch_negatives", "keep_best", "eval_every"))


def _pipeline_value(cfg, key: str):
    """``cfg.pipeline.<key>`` of a Config or of its dict (the previous run's config.yaml)."""
    return (cfg.get("pipeline") or {}).get(key) if isinstance(cfg, dict) else getattr(cfg.pipeline, key)


class StageLog:
    """Which stages finished, with what they produced; persisted after each stage.

    With ``cfg`` each finished stage is stamped (``stages.stamps.json``: its config keys and the corpus). A rerun
    redoes the first recorded stage whose stamp differs from today's, and every stage after it (their inputs
    changed with it); a stage recorded without a stamp is judged by ``previous``, the config of the run before.
    ``fresh`` tells the stage now running whether it must start over rather than continue its partial state."""

    def __init__(self, path: Path, cfg: Config | None = None, corpus=None, previous: dict | None = None):
        self.path = path
        self.done: dict[str, dict] = read_json(path) if path.exists() else {}
        self.stamps_path = path.with_name(path.stem + ".stamps.json")
        self.stamps: dict[str, dict] = read_json(self.stamps_path) if self.stamps_path.exists() else {}
        self.cfg, self.previous = cfg, previous
        self.inputs = {"corpus": corpus.fingerprint()} if corpus is not None else {}
        self.redo = False  # once a stage is redone, every later one is
        self.fresh = False

    @staticmethod
    def _ignored(name: str, cfg) -> frozenset[str]:
        kind = name.split("-")[0]
        # a length in steps has no effect beside a length in passes (pipeline.*_epochs overrides it)
        unused = frozenset(f"pipeline.{k}_steps" for k in ("warmup", "round") if _pipeline_value(cfg, f"{k}_epochs"))
        if kind in BEFORE_TRAINING:
            return TRAINING_ONLY_KEYS | ROUND_ONLY_KEYS | unused
        # the pre-training, and a warm-up without the retriever, train the cross-encoder alone
        alone = kind == "pretrain" or (kind == "warmup" and not _pipeline_value(cfg, "warmup_retriever"))
        return ((RETRIEVER_ONLY_KEYS if alone else frozenset()) | unused
                | (ROUND_ONLY_KEYS if kind in ("pretrain", "warmup") else frozenset()))

    def _stamp(self, name: str, cfg) -> dict:
        return make_stamp(cfg, STAGE_KEYS.get(name.split("-")[0]), ignore=self._ignored(name, cfg), **self.inputs)

    def _check(self, name: str, now: dict) -> None:
        """Decide ``redo`` and ``fresh`` for stage ``name`` whose stamp today is ``now``."""
        before = self._stamp(name, self.previous) if self.previous is not None else None
        if name in self.done and not self.redo:
            old = self.stamps.get(name, before)
            ignore = self._ignored(name, self.cfg)
            if old is not None and ignore:  # a stamp written before these keys were ignored may still hold them
                old = {**old, "config": {k: v for k, v in (old.get("config") or {}).items() if k not in ignore}}
            changed = differences(old, now) if old is not None else []
            if changed:
                logger.warning("stage %s: made with other settings, redone with every stage after it: %s", name,
                               describe_changes(old, now, changed))
                self.redo = True
        if self.redo and name in self.done:  # forget it and every later record (in the order they ran)
            names = list(self.done)
            for later in names[names.index(name):]:
                self.done.pop(later)
                self.stamps.pop(later, None)
            write_json(self.stamps_path, self.stamps)
            write_json(self.path, self.done)
        # a partial stage (e.g. a training run's checkpoints) continues only if its keys did not change since
        self.fresh = self.redo or (before is not None and bool(differences(before, now)))

    def run(self, name: str, fn, *args, **kwargs) -> dict:
        now = self._stamp(name, self.cfg) if self.cfg is not None else None
        if now is not None:
            self._check(name, now)
        if name in self.done:
            logger.info("stage %s: already done, skipped", name)
            return self.done[name]
        logger.info("stage %s: starting", name)
        start = time.time()
        result = fn(*args, **kwargs) or {}
        result["seconds"] = round(time.time() - start, 1)
        self.done[name] = result
        if now is not None:  # the stamp first: a stage recorded without one is judged by the previous config
            self.stamps[name] = now
            write_json(self.stamps_path, self.stamps)
        write_json(self.path, self.done)
        logger.info("stage %s: done in %.1fs", name, result["seconds"])
        return result


def _run_path(out: Path, system: str, split: str) -> Path:
    return out / "runs" / f"{system}.{split}.trec"


def _run_tag(cfg: Config, system: str) -> str:
    """A system's TREC run tag: ``eval.run_tag``-SYSTEM, so every run file of the pipeline names its system."""
    return f"{cfg.eval.run_tag}-{system}"


def _write_run(cfg: Config, out: Path, system: str, split: str, run: dict) -> None:
    write_trec_run(_run_path(out, system, split), run, tag=_run_tag(cfg, system))


def _stage_baselines(cfg: Config, data, out: Path) -> dict:
    k = cfg.eval.k
    splits = [cfg.data.dev_split, cfg.data.test_split]
    bm25 = BM25Retriever.build(data.corpus)
    base = load_retriever(cfg, cfg.model.retriever)  # model.pooling/similarity/shared_towers honoured, as everywhere
    index = DenseIndex.build(base, data.corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast)
    for split in splits:
        queries = data.split_queries(split)
        _write_run(cfg, out, "bm25", split, bm25.search(queries, k))
        _write_run(cfg, out, "base", split, search_run(index, queries, k))
    return {"systems": ["bm25", "base"]}


def _train_cfg(cfg: Config, **train_overrides) -> Config:
    """The config of one training stage. The pipeline checks teachers itself (teachers-r stages) and measures the
    student on dev there, so ``train.teachers`` is off, and ``train.eval_dev`` is on only for ``train.keep_best``."""
    new = copy.deepcopy(cfg)
    new.train.teachers = {}
    # Dev measurements inside a round only where train.keep_best asks for them: then a round never hands on a
    # retriever worse on dev than the one it started from.
    new.train.eval_dev = bool(cfg.train.keep_best and cfg.train.eval_every)
    for key, value in train_overrides.items():
        setattr(new.train, key, value)
    return new


def _round_rates(cfg: Config) -> dict:
    """The re-ranker's rates in a round: ``pipeline.round_reranker_lr_scale`` times the warm-up's."""
    scale = cfg.pipeline.round_reranker_lr_scale
    if scale == 1.0:
        return {}
    head = cfg.train.lr_reranker_head if cfg.train.lr_reranker_head is not None else cfg.train.lr_reranker
    return {"lr_reranker": cfg.train.lr_reranker * scale, "lr_reranker_head": head * scale}


def _length(epochs: float | None, steps: int) -> dict:
    """A training stage's length: ``epochs`` passes over its lists where given (sized with the collection), else
    ``steps`` optimizer steps."""
    return {"max_steps": None, "epochs": epochs} if epochs else {"max_steps": steps}


def _stage_teachers(cfg: Config, data, out: Path, r: int, retriever: str, reranker: str, lists_path: Path) -> dict:
    """Measure each teacher of ``pipeline.teacher_members`` on held-out queries (dev, or more:
    :func:`_check_queries`) beside the round's student, fit the ensemble's weights there, and write the lists the
    round trains on (:func:`rocketkd.teachers.targets.build_targets`). The re-ranker is weighed beside the others
    but teaches online in the joint step (``online_teacher_weight``); the other members' ensemble is stored."""
    queries, qrels = _check_queries(cfg, data, student_is_start=r == 1 and retriever == resolve_model_path(
        cfg.model.retriever))
    lists = read_candidates(lists_path, corpus=data.corpus, queries=data.all_queries())
    # encoder=retriever: the held-out search encodes with the folder's own settings, as this stage always has (HeldOut)
    targets = build_targets(cfg, data, lists, cfg.pipeline.teacher_members, held_out=HeldOut(queries, qrels, retriever),
                            online=("reranker",), student=retriever, reranker=reranker)
    choice, static = targets.choice, targets.stored
    online_weight = choice.weights.get("reranker", 0.0)
    mode = "joint"
    if not choice.usable:
        mode = "contrastive"
        logger.warning("round %d: no teacher beats the student on held-out queries; training on labels only", r)
    path = out / f"round{r}" / "teacher_lists.jsonl"
    write_candidates(path, targets.lists, provenance={"round": r, "weights": choice.weights})
    report = {
        "check_queries": len(queries),
        "student_ndcg@10": choice.student_ndcg,
        "ensemble_ndcg@10": choice.ensemble_ndcg,
        "weights": choice.weights,
        "teacher_scale": targets.scale,
        "members": {t.name: {"nDCG@10": t.ndcg, "weight": t.weight, "helps": t.helps} for t in choice.reports},
        "mode": mode,
        "online_teacher_weight": online_weight / max(1e-9, online_weight + sum(static.values())) if static else 1.0,
        "lists": str(path),
    }
    return report


def _stage_prior(cfg: Config, data, out: Path, lists_path: Path | None = None, *, lists: list | None = None) -> dict:
    """Fit the re-ranker's prior (:func:`rocketkd.teachers.prior.fit_prior_on`): BM25 + the base encoder, weighed
    on dev and train queries (nothing has learned their labels yet), accepted only on a significant cross-fitted gain
    over the student; written to ``prior/rocketkd_prior.json``."""
    if lists is None:
        lists = read_candidates(lists_path, corpus=data.corpus, queries=data.all_queries())
    prior = fit_prior_on(cfg, data, lists)
    prior.save(out / "prior")
    e = prior.evidence
    logger.info("re-ranker prior %s: %s (out-of-fold nDCG@10 %.4f against the student's %.4f on %d held-out queries, "
                "p=%.3g)", "accepted" if e["accepted"] else "rejected, the student's own encoder instead",
                prior.weights, e["out_of_fold_ndcg@10"] or 0.0, e["student_ndcg@10"] or 0.0, e["queries"], e["p_value"])
    return {"weights": prior.weights, "evidence": e, "path": str(out / "prior")}


def _stage_prior_teachers(cfg: Config, data, out: Path, r: int, retriever: str, reranker: str, lists_path: Path,
                          prior: Prior) -> dict:
    """The round's check with a re-ranker that has a prior: the re-ranker alone (``prior + g``) re-ranks the
    student's dev top ``eval.rerank_depth`` beside the student, the prior alone and a random order (the controls).
    It teaches online (the joint step) unless it is below the student; ``reranker_above_student`` records whether it
    beats it by ``pipeline.teacher_min_gain``. The round's lists get the prior attached (the joint model adds it to ``g``)."""
    dev = cfg.data.dev_split
    queries, qrels = data.split_queries(dev), data.qrels[dev]
    # The student encodes as it trains and as the prior's base member scores: with model.* settings (lengths,
    # pooling), not its folder's own. The packaged MiniLM's folder says 256 passage tokens where the demo trains at
    # 128, and that alone put "the prior" 0.015 above "the student" that it equals (seed 42, 80272ae).
    index = DenseIndex.build(load_retriever(cfg, retriever), data.corpus, batch_size=cfg.index.batch_size,
                             autocast=cfg.index.autocast)
    run = search_run(index, queries, cfg.eval.rerank_depth)
    candidates = candidates_from_run(run, cfg.eval.rerank_depth)
    student = {q: {p: run[q][p] for p in pids} for q, pids in candidates.items()}
    prior_scorer = PriorScorer(prior, prior_members(prior, data.corpus))
    composite = CompositeScorer(RerankerScorer(load_reranker(cfg, reranker, trainable=False)), prior_scorer)
    scored = {name: scores_on_candidates(s, candidates, queries, data.corpus)
              for name, s in (("reranker", composite), ("prior", prior_scorer), ("random", RandomScorer(cfg.train.seed)))}
    choice = check_teachers(candidates, student, {"reranker": scored["reranker"]}, qrels,
                            min_gain=cfg.pipeline.teacher_min_gain, normalize_how={"reranker": "none"},
                            temperatures={"reranker": cfg.train.temperature}, zero_bad=cfg.pipeline.zero_bad_teachers)
    compared = {name: compare_runs(student, scored[name], qrels, ["nDCG@10"])[0].to_dict() for name in scored}
    for name, c in compared.items():
        logger.info("round %d check on %s: %s nDCG@10 %.4f against the student's %.4f (p=%.3f)", r, dev, name,
                    c["mean_b"], c["mean_a"], c["p_value"])
    # It starts as its prior: the student itself, or a prior that beat the student on held-out evidence. So it
    # teaches unless label training made it worse than the student; a teacher equal to the student costs nothing
    # (KL ~ 0) and departs from it only by what the cross-encoder learns from labels, in the same step (RocketQAv2).
    above = choice.weights.get("reranker", 0.0) > 0
    usable = above or compared["reranker"]["mean_b"] >= compared["reranker"]["mean_a"] - 1e-9
    if not usable:
        logger.warning("round %d: the re-ranker is below the student on %s; training on labels only", r, dev)
    lists = attach_prior(data, read_candidates(lists_path, corpus=data.corpus, queries=data.all_queries()), prior)
    path = out / f"round{r}" / "teacher_lists.jsonl"
    write_candidates(path, lists, provenance={"round": r, "prior": prior.weights})
    return {
        "check_queries": len(queries),
        "student_ndcg@10": choice.student_ndcg,
        "weights": {"reranker": 1.0 if usable else 0.0},
        "reranker_above_student": above,  # by pipeline.teacher_min_gain
        "members": {name: {"nDCG@10": c["mean_b"], "vs_student": c} for name, c in compared.items()},
        "mode": "joint" if usable else "contrastive",
        "online_teacher_weight": 1.0,
        "lists": str(path),
    }


def _check_queries(cfg: Config, data, *, student_is_start: bool) -> tuple[dict[str, str], dict]:
    """The held-out queries the teachers are checked on, and their qrels: dev, plus the train queries where
    ``pipeline.check_on_train`` asks and nothing checked has learned their labels (see its help)."""
    queries = data.split_queries(cfg.data.dev_split)
    qrels = dict(data.qrels[cfg.data.dev_split])
    if not cfg.pipeline.check_on_train:
        return queries, qrels
    why = ("the re-ranker, a member, learned the train labels" if "reranker" in cfg.pipeline.teacher_members
           else None if student_is_start else "the round's student has trained on the train labels")
    if why:
        logger.info("pipeline.check_on_train: teachers checked on %r alone: %s", cfg.data.dev_split, why)
        return queries, qrels
    train = {qid: text for qid, text in data.split_queries(cfg.data.train_split).items()
             if not is_title_query(qid) and qid not in queries}
    queries.update(train)
    qrels.update({qid: data.qrels[cfg.data.train_split][qid] for qid in train})
    logger.info("pipeline.check_on_train: teachers checked on %d queries (%r and %d of %r; none of the members "
                "or the student learned their labels)", len(queries), cfg.data.dev_split, len(train),
                cfg.data.train_split)
    return queries, qrels


def run_train(
    cfg: Config,
    *,
    output_dir: str | Path | None = None,
    resume: bool = False,
    data=None,
    lists: list | None = None,
    retriever_path: str | None = None,
    reranker_path: str | None = None,
) -> TrainResult:
    """A lone ``rocketkd train``: candidate lists (given, ``candidates.path``, mined or sampled), the offline teachers
    of ``train.teachers`` checked on dev and attached, then :func:`rocketkd.training.train.train`."""
    out = Path(output_dir or cfg.output_dir)
    if resume and finished(out):
        logger.info("%s already holds a finished run; nothing to resume", out)
        return load_result(out)
    if data is None:
        data = load_retrieval_data(cfg.data.path, cache_dir=cfg.data.cache_dir)
    check_disjoint_splits(cfg, data.qrels)  # nothing selected on dev may be a test (or train) query
    apply_data_config(cfg, data)
    if lists is None:
        lists = build_lists(cfg, data, out)
    prior = None
    t = cfg.train
    uses_reranker = t.mode in ("joint", "warmup") or (t.mode == "static" and t.teacher != "stored")
    if cfg.model.reranker_prior and uses_reranker and not (lists and lists[0].teacher_scores is not None):
        # The lone recipe of a prior re-ranker: the prior is fitted here (once; reused on resume) and is the lists'
        # stored score; train.teachers would be a second stored teacher, so it gives way (the re-ranker teaches).
        prior, lists, cfg = _lone_prior(cfg, data, lists, out)
    lists = teacher_lists(cfg, data, lists, out, retriever_path, reranker_path)
    if teachers_rejected(cfg, out):
        # A teacher no better than the student on dev would only pull the retriever away from its start (issue
        # 11); the online re-ranker is no fallback (a new head is a random teacher), so nothing distils.
        logger.warning("train.teachers did not beat the start retriever on %s (see %s): the retriever is not "
                       "distilled (distill_weight 0)", cfg.data.dev_split, out / "teacher_check.json")
        cfg = copy.deepcopy(cfg)
        cfg.train.distill_weight = 0.0
    result = train(cfg, lists, data=data, output_dir=out, resume=resume, retriever_path=retriever_path,
                   reranker_path=reranker_path)
    if prior is not None and result.reranker_dir is not None and is_main():
        prior.save(result.reranker_dir)  # the folder reproduces prior + g (rocketkd search --rerank)
    return result


def _lone_prior(cfg: Config, data, lists: list, out: Path) -> tuple[Prior, list, Config]:
    """``model.reranker_prior`` in a lone ``rocketkd train``: the prior fitted on dev + train (``out/prior``, once),
    attached to ``lists``; the config with ``train.teachers`` off and the online re-ranker as the only teacher."""
    folder = out / "prior"
    prior = Prior.load(folder)
    if prior is None:
        if is_main():
            _stage_prior(cfg, data, out, lists=lists)
        barrier()
        prior = Prior.load(folder)
    if cfg.train.teachers or cfg.train.online_teacher_weight < 1.0:
        logger.info("model.reranker_prior: the re-ranker (prior %s + cross-encoder) is the teacher; train.teachers "
                    "%s and train.online_teacher_weight %s are not used", prior.weights, dict(cfg.train.teachers),
                    cfg.train.online_teacher_weight)
        cfg = copy.deepcopy(cfg)
        cfg.train.teachers, cfg.train.online_teacher_weight = {}, 1.0
    return prior, attach_prior(data, lists, prior), cfg


def run_pipeline(cfg: Config) -> dict:
    # a frozen encoder (the base model, a finished round's retriever) encodes the corpus once per run: every later
    # index of it with the same settings reads its vectors back (rocketkd.search.cache; the log says so)
    with embedding_cache(Path(cfg.output_dir) / "embedding-cache"):
        return _run_stages(cfg)


def _run_stages(cfg: Config) -> dict:
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = previous_config(out)  # the config of the run this one continues: judges its unstamped stages
    data = apply_data_config(cfg, load_retrieval_data(cfg.data.path, cache_dir=cfg.data.cache_dir))
    cfg.dump(out / "config.yaml")  # after the data: lengths left to it (auto) are written as the ints they became
    check_disjoint_splits(cfg, data.qrels)  # nothing selected on dev may be a test (or train) query
    # another collection's labels for the re-ranker's pre-training: read now, so a bad folder fails before any work
    source = (labelled_source_data(cfg, cfg.pipeline.reranker_pretrain_data)
              if cfg.pipeline.reranker_pretrain_data else None)
    stages = StageLog(out / "stages.json", cfg, data.corpus, previous)
    p = cfg.pipeline

    use_prior = cfg.model.reranker_prior
    stages.run("baselines", _stage_baselines, cfg, data, out)
    retriever = resolve_model_path(cfg.model.retriever)
    reranker = resolve_model_path(cfg.model.reranker)
    prior: Prior | None = None

    def fit_prior(lists_path: Path) -> Prior:  # once, on the first lists there are, before anything learns labels
        nonlocal reranker
        stages.run("prior", _stage_prior, cfg, data, out, lists_path)
        fitted = Prior.load(out / "prior")
        if p.reranker_pretrain or source is not None:  # g learns over the prior on inverse-cloze queries or
            # another collection's labels, kept only on held-out evidence
            reranker = stages.run("pretrain", lambda: pretrain_reranker(
                cfg, data, out / "pretrain", fitted, resume=not stages.fresh, source=source))["reranker"]
        return fitted

    if p.warmup:
        round0 = out / "round0" / "candidates.jsonl"
        stages.run("mine-0", lambda: _mined(mine(cfg, output=round0, data=data)))
        if use_prior:
            prior = fit_prior(round0)

        def warm() -> dict:
            # A retriever the round would drop is not trained at all: the re-ranker learns alone (same loss for it)
            wcfg = _train_cfg(cfg, mode="warmup" if p.warmup_retriever else "reranker",
                              **_length(p.warmup_epochs, p.warmup_steps or cfg.train.max_steps))
            lists = read_candidates(round0, corpus=data.corpus, queries=data.all_queries())
            if prior is not None:
                lists = attach_prior(data, lists, prior)
            res = train(wcfg, lists, data=data, output_dir=out / "warmup", resume=not stages.fresh,
                        reranker_path=reranker)
            if prior is not None:
                prior.save(res.reranker_dir)
            return {"retriever": str(res.retriever_dir), "reranker": str(res.reranker_dir), "steps": res.steps}

        w = stages.run("warmup", warm)
        reranker = w["reranker"]
        if p.warmup_retriever:
            retriever = w["retriever"]
        else:
            logger.info("pipeline.warmup_retriever is false: round 1 starts from %s, not the warm-up's retriever",
                        retriever)
    for r in range(1, p.rounds + 1):
        lists_path = out / f"round{r}" / "candidates.jsonl"
        # A re-ranker with a prior does not denoise: its cross-encoder part alone is no relevance probability.
        denoiser = None if use_prior else reranker
        stages.run(f"mine-{r}", lambda r=r, lists_path=lists_path, retriever=retriever, denoiser=denoiser: _mined(
            mine(cfg, output=lists_path, data=data, retriever=retriever, reranker=denoiser, round_index=r)))
        if use_prior and prior is None:
            prior = fit_prior(lists_path)
        if use_prior:  # the check is reported in every mode; a fixed round_mode (the ablations) then overrides it
            t = stages.run(f"teachers-{r}", _stage_prior_teachers, cfg, data, out, r, retriever, reranker, lists_path,
                           prior)
            if p.round_mode != "auto":
                t = {**t, "mode": p.round_mode, "teacher": {"static": "reranker"}.get(p.round_mode, cfg.train.teacher)}
        elif p.round_mode == "auto":
            t = stages.run(f"teachers-{r}", _stage_teachers, cfg, data, out, r, retriever, reranker, lists_path)
        else:  # a fixed recipe, e.g. for the ablation table in docs/results.md
            teacher = {"static": "reranker"}.get(p.round_mode, cfg.train.teacher)
            t = {"mode": p.round_mode, "online_teacher_weight": 1.0, "lists": str(lists_path), "teacher": teacher}

        def joint(t=t, r=r, retriever=retriever, reranker=reranker, prior=prior) -> dict:
            jcfg = _train_cfg(cfg, mode=t["mode"], online_teacher_weight=t["online_teacher_weight"],
                              teacher=t.get("teacher", cfg.train.teacher), **_round_rates(cfg),
                              **_length(p.round_epochs, p.round_steps or cfg.train.max_steps))
            lists = read_candidates(t["lists"], corpus=data.corpus, queries=data.all_queries())
            res = train(jcfg, lists, data=data, output_dir=out / f"round{r}", resume=not stages.fresh,
                        retriever_path=retriever, reranker_path=reranker)
            if prior is not None and res.reranker_dir is not None:
                prior.save(res.reranker_dir)
            return {"retriever": str(res.retriever_dir), "reranker": str(res.reranker_dir or reranker), "steps": res.steps}

        j = stages.run(f"train-{r}", joint)
        retriever, reranker = j["retriever"], j["reranker"]
    stages.run("final", _stage_final, cfg, data, out, retriever, reranker, prior)
    if "hybrid" in p.systems:
        stages.run("hybrid", _stage_hybrid, cfg, data, out, stages.done["final"]["reranker"],
                   stages.done["final"].get("fusion_weight", 1.0))
    results = _write_results(cfg, data, out, stages)
    return results


def _mined(result) -> dict:
    return {"path": str(result.path), "lists": result.num_lists, "queries": result.num_queries}


def _stage_final(cfg: Config, data, out: Path, retriever: str, reranker: str, prior: Prior | None = None) -> dict:
    """The final retriever's index and runs (``retriever``), the re-ranker's scores of their top
    ``eval.rerank_depth`` (``reranker-raw``, kept for the hybrid stage), and the two fused (``reranked``,
    :func:`rocketkd.search.fusion.fuse_stages`) with a weight fitted on dev (``eval.fuse_rerank``; else 1).

    With a prior the re-ranker's score is ``prior + g``; the prior alone re-ranks the same candidates too
    (``prior`` runs), and ``reranker_vs_prior`` says whether label training added anything (paired test)."""
    prior_scorer = PriorScorer(prior, prior_members(prior, data.corpus)) if prior is not None else None
    checks = {}
    index = DenseIndex.build(retriever, data.corpus, factory=cfg.index.factory, batch_size=cfg.index.batch_size,
                             autocast=cfg.index.autocast)
    index.save(out / "index")
    ranker = load_reranker(cfg, reranker, trainable=False)
    dev, test = cfg.data.dev_split, cfg.data.test_split
    reranked = {}
    for split in (dev, test):
        queries = data.split_queries(split)
        run = search_run(index, queries, cfg.eval.k)
        _write_run(cfg, out, "retriever", split, run)
        reranked[split] = rerank_run(ranker, run, queries, data.corpus, depth=cfg.eval.rerank_depth)
        if prior_scorer is not None:
            alone = add_prior_to_run({q: dict.fromkeys(s, 0.0) for q, s in reranked[split].items()}, prior_scorer,
                                     queries, data.corpus)
            spread = _spreads(reranked[split], alone)  # before the sum: reranked holds g alone here
            reranked[split] = {q: {pid: s + alone[q][pid] for pid, s in scores.items()}
                               for q, scores in reranked[split].items()}
            _write_run(cfg, out, "prior", split, alone)
            (cmp,) = compare_runs(alone, reranked[split], data.qrels[split], ["nDCG@10"])
            checks[split] = {**cmp.to_dict(), **spread}
            logger.info("%s: per list, the cross-encoder's scores spread %.3f against the prior's %.3f (std)", split,
                        spread["g_std"], spread["prior_std"])
            logger.info("%s: re-ranker (prior + cross-encoder) nDCG@10 %.4f against the prior alone %.4f (%+.4f, "
                        "p=%.3f, %d queries)", split, cmp.mean_b, cmp.mean_a, cmp.delta, cmp.p_value, cmp.queries)
        _write_run(cfg, out, "reranker-raw", split, reranked[split])  # for the hybrid stage
    weight, fusion = 1.0, None
    if cfg.eval.fuse_rerank:  # a fitted weight replaces the re-ranker alone only on significant dev evidence
        first = read_trec_run(_run_path(out, "retriever", dev))
        fitted, _ = choose_fusion_weight(first, reranked[dev], data.qrels[dev])
        fusion = fitted_or_default(fuse_stages(first, [reranked[dev]], [1.0 - fitted, fitted]),
                                   fuse_stages(first, [reranked[dev]], [0.0, 1.0]), data.qrels[dev],
                                   cfg.eval.fusion_alpha)
        weight = fitted if fusion["use_fitted"] else 1.0
        logger.info("re-ranker fusion weight %.2f fitted on %s: %+.4f nDCG@10 over the re-ranker alone (p=%.3g) -> %s",
                    fitted, dev, fusion["delta"], fusion["p_value"],
                    f"weight {weight:.2f}" if fusion["use_fitted"] else "kept the re-ranker alone (weight 1)")
    for split in (dev, test):
        first = read_trec_run(_run_path(out, "retriever", split))
        _write_run(cfg, out, "reranked", split, fuse_stages(first, [reranked[split]], [1.0 - weight, weight]))
    if Path(reranker).resolve().is_relative_to(out.resolve()):  # a folder this run wrote, never the user's model
        save_fusion_weight(reranker, weight, fitted_on=f"{dev} ({len(data.split_queries(dev))} queries)",
                           first_stage=str(out / "index"), depth=cfg.eval.rerank_depth,
                           prior=prior is not None)
    result = {"index": str(out / "index"), "retriever": retriever, "reranker": reranker, "fusion_weight": weight}
    if fusion is not None:
        result["fusion_check"] = {**fusion, "fitted_weight": fitted}
    if checks:
        result["reranker_vs_prior"] = checks
    return result


def _spreads(g: dict, prior: dict) -> dict[str, float]:
    """Mean over queries of the per-list std of the cross-encoder's scores ``g`` and of the prior's: a ``g`` far
    smaller than the prior cannot reorder what the prior ranks (measured: 0.14 against 2.2 after the demo's 40 steps)."""
    g_std = [float(np.std(list(scores.values()))) for scores in g.values() if scores]
    p_std = [float(np.std(list(scores.values()))) for scores in prior.values() if scores]
    return {"g_std": float(np.mean(g_std)) if g_std else 0.0, "prior_std": float(np.mean(p_std)) if p_std else 0.0}


def _stage_hybrid(cfg: Config, data, out: Path, reranker: str, rerank_weight: float = 1.0) -> dict:
    """The retriever's top ``eval.rerank_depth`` re-scored by three specialists -- the retriever itself, the
    re-ranker and BM25 -- fused per query (:func:`rocketkd.search.fusion.fuse_stages`), weights fitted on dev; they
    replace the ``reranked`` system's own (``rerank_weight``, no BM25) only on significant dev evidence
    (``eval.fusion_alpha``).

    On small data the lexical specialist is what a learned re-ranker is not (issue 11: a fused zero-shot bi-encoder
    and BM25 beat a trained MiniLM cross-encoder on cranfield); ``reranked`` keeps the two-stage system alone.
    """
    dev, test = cfg.data.dev_split, cfg.data.test_split
    depth = cfg.eval.rerank_depth
    bm25 = BM25Retriever.build(data.corpus)
    ranker = None
    parts: dict[str, list] = {}
    for split in (dev, test):
        queries = data.split_queries(split)
        first = read_trec_run(_run_path(out, "retriever", split))
        raw_path = _run_path(out, "reranker-raw", split)
        if raw_path.exists():
            raw = read_trec_run(raw_path)
        else:  # a run finished before the final stage kept the re-ranker's own scores
            ranker = ranker or load_reranker(cfg, reranker, trainable=False)
            raw = rerank_run(ranker, first, queries, data.corpus, depth=depth)
            write_trec_run(raw_path, raw, tag=_run_tag(cfg, "reranker-raw"))
        lexical = bm25_run(first, queries, data.corpus, depth=depth, bm25=bm25)
        parts[split] = [first, raw, lexical]
    first, raw, lexical = parts[dev]
    fitted, dev_value = choose_fusion_weights([head_of_run(first, depth), raw, lexical], data.qrels[dev])
    default = (1.0 - rerank_weight, rerank_weight, 0.0)
    check = fitted_or_default(fuse_stages(first, [raw, lexical], fitted, depth=depth),
                              fuse_stages(first, [raw, lexical], default, depth=depth), data.qrels[dev],
                              cfg.eval.fusion_alpha)
    weights = fitted if check["use_fitted"] else default
    for split in (dev, test):
        first, raw, lexical = parts[split]
        _write_run(cfg, out, "hybrid", split, fuse_stages(first, [raw, lexical], weights, depth=depth))
    names = ("retriever", "reranker", "bm25")
    named = dict(zip(names, weights))
    logger.info("hybrid re-ranking weights fitted on %s: %s, %+.4f nDCG@10 over reranked's own (p=%.3g) -> %s", dev,
                dict(zip(names, fitted)), check["delta"], check["p_value"],
                named if check["use_fitted"] else "kept reranked's weights")
    return {"weights": named, "dev_ndcg@10": check["fitted"] if check["use_fitted"] else check["default"],
            "fusion_check": {**check, "fitted_weights": dict(zip(names, fitted))}}


def _write_results(cfg: Config, data, out: Path, stages: StageLog) -> dict:
    """Every system's test-split metrics, the stages' records, into results.json/.md (+ curves.png)."""
    test = cfg.data.test_split
    run_files = {system: _run_path(out, system, test) for system in cfg.pipeline.systems}
    systems, curves = evaluate_systems(run_files, data.qrels[test])
    teachers = {name: v for name, v in stages.done.items() if name.startswith("teachers-")}
    results = {
        "dataset": cfg.data.path,
        "split": test,
        "num_queries": len(data.split_queries(test)),
        "systems": systems,
        # what each run file's 6th column says (read back: a rerun with another eval.run_tag keeps finished runs)
        "run_tags": {system: ", ".join(read_run_tags(path)) for system, path in run_files.items()},
        "teachers": teachers,
        "fusion_weight": stages.done.get("final", {}).get("fusion_weight"),
        "hybrid_weights": stages.done.get("hybrid", {}).get("weights"),
        **({"prior": stages.done["prior"]} if "prior" in stages.done else {}),
        **({"reranker_pretrain": stages.done["pretrain"]} if "pretrain" in stages.done else {}),
        **({"reranker_vs_prior": stages.done["final"]["reranker_vs_prior"]}
           if "reranker_vs_prior" in stages.done.get("final", {}) else {}),
        "stages": {k: v.get("seconds") for k, v in stages.done.items()},
    }
    write_results(out, results, curves, plot=cfg.pipeline.plot, group_size=cfg.candidates.list_length,
                  intervals=system_intervals(run_files, data.qrels[test]) if cfg.pipeline.plot else None)
    return results
