"""Typed configuration, one dataclass per stage, filled from YAML and ``--set section.key=value`` overrides.

An unknown section or key, or a value of the wrong type, is a ``ConfigError`` that names the key. The resolved
config is written next to every output (``config.yaml``) so a result can always be traced to its settings.

It is long (over 500 lines) because every key is declared here once, with the help text ``--help`` and
``rocketkd config`` print, and the checks that refuse a bad value at load time sit beside the keys they check.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rocketkd.errors import ConfigError
from rocketkd.io import atomic_write


def _f(default: Any, help: str, **kw) -> Any:  # noqa: A002 - "help" mirrors argparse
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    path: str = _f("data/cranfield", "dataset folder in BEIR layout (corpus.jsonl, queries.jsonl, qrels/) or MS MARCO layout")
    train_split: str = _f("train", "qrels split whose queries train the models")
    dev_split: str = _f("dev", "qrels split used to check teachers and pick weights (held out from training)")
    test_split: str = _f("test", "qrels split reported in results.json")
    min_positive_grade: int = _f(1, "a judged passage counts as a positive when its grade is at least this")
    cache_dir: str | None = _f(None, "where the Arrow cache of the corpus goes (default: a temp folder)")
    title_queries: int = _f(
        0,
        "self-supervised training queries: up to this many titled passages (title of >= 4 words) join the train "
        "split, the title as query and the passage as its positive, so label-free teachers teach on more queries "
        "than the qrels have (rocketkd.candidates.title_queries); 0 = off. Dev and test are untouched",
    )


@dataclass
class ModelConfig:
    retriever: str | None = _f(None, "retriever start point: a local folder or Hub id; empty = packaged all-MiniLM-L6-v2")
    reranker: str | None = _f(None, "re-ranker start point (new one-logit head if the folder has none); empty = packaged MiniLM")
    shared_towers: bool = _f(True, "one encoder for queries and passages (False: two towers, separate weights)")
    pooling: str | None = _f(None, "mean or cls; empty = what the model folder says, else mean")
    similarity: str | None = _f(None, "dot or cosine; empty = what the model folder says (MiniLM: cosine)")
    score_scale: float = _f(20.0, "retriever scores are multiplied by this before any softmax (cosine needs ~20; dot: 1)")
    query_max_length: int | typing.Literal["auto"] = _f(64, "maximum query tokens, or auto: the 99th percentile of the train + dev "
                                     "queries' tokens, up to the model's own (rocketkd.models.lengths)")
    passage_max_length: int | typing.Literal["auto"] = _f(256, "maximum passage tokens, or auto: the 95th percentile of the corpus's "
                                       "tokens, up to the model folder's max_seq_length")
    reranker_max_length: int | typing.Literal["auto"] = _f(320, "maximum tokens of a (query, passage) pair, or auto: query + passage "
                                        "lengths, up to the re-ranker's position limit")
    reranker_prior: bool = _f(
        False,
        "the re-ranker scores a list as prior + cross-encoder: the prior is the lists' stored teacher scores (the "
        "label-free BM25 + base-encoder ensemble, checked on held-out queries), the cross-encoder's new head starts "
        "at zero, so at step 0 the re-ranker is the prior and label training adds what cross-attention sees "
        "(rocketkd.teachers.prior)",
    )


@dataclass
class CandidatesConfig:
    path: str | None = _f(None, "candidate lists (JSONL from `rocketkd mine`); empty = built per candidates.source")
    source: str = _f(
        "sampled",
        "lists built when no path is given: sampled (qrels positives + random corpus negatives) or mined "
        "(top mining.depth of mining.first_round, BM25 or the base encoder: hard negatives, as `rocketkd mine`)",
    )
    mined_by: str | None = _f(
        None,
        "source=mined: who mines a lone `rocketkd train`'s lists, bm25 or base (the start encoder: the student's own "
        "candidates, as RocketQAv2 mines with the retriever it trains); empty = mining.first_round. The pipeline "
        "mines its own lists and ignores it",
    )
    list_length: int = _f(8, "G: candidates per query in a training list (1 positive + G-1 negatives)")
    seed: int = _f(13, "seed for sampling negatives when lists are built without mining")


@dataclass
class TrainConfig:
    mode: str = _f(
        "joint",
        "joint: re-ranker CE on labels + retriever distilled from it in the same step (RocketQAv2); "
        "warmup: both models on labels only; contrastive: retriever on labels only; "
        "static: retriever distilled from a frozen re-ranker or stored teacher scores; "
        "reranker: the re-ranker alone on labels (the retriever is saved unchanged)",
    )
    teacher: str = _f("online", "static mode: 'reranker' (frozen model.reranker) or 'stored' (teacher_scores in the lists)")
    distill_loss: str = _f("kl", "retriever distillation loss: kl, kl_reverse, mse, js, wasserstein")
    temperature: float = _f(1.0, "distillation temperature T (RocketQAv2 used none, i.e. 1)")
    online_teacher_weight: float = _f(
        1.0,
        "joint mode with stored teacher scores in the lists: target = (1-w)·softmax(stored) + w·softmax(re-ranker); "
        "1 = the online re-ranker alone (RocketQAv2), 0 = the stored ensemble alone",
    )
    teachers: dict = _f(
        {},
        "offline teachers scored on the lists before training, name -> weight: bm25, base (model.retriever as it "
        "starts), reranker (model.reranker frozen as it starts), random (seeded noise: a control); their ensemble (rocketkd.teachers) is the stored "
        "target that online_teacher_weight mixes with the online re-ranker; empty = none (lists' own scores if any)",
    )
    teacher_combine: str = _f("arithmetic", "how train.teachers combine: arithmetic (mean of softmaxes) or geometric")
    teacher_scale: float | None = _f(
        None,
        "offline teachers' per-list z-scores are multiplied by this before their softmax (their temperature is its "
        "inverse); empty = the start retriever's own mean per-list spread (std of score_scale * score), so a teacher "
        "that ranks like the student also has its sharpness and the student is not pushed to rescale its scores",
    )
    check_teachers: bool = _f(
        True,
        "before distilling from train.teachers, re-rank the start retriever's dev top-k (eval.rerank_depth) with "
        "each member and the configured ensemble; if the ensemble does not beat the retriever by "
        "pipeline.teacher_min_gain it gets weight 0 and the retriever is not distilled (teacher_check.json)",
    )
    eval_dev: bool = _f(True, "measure the retriever's nDCG@10 on data.dev_split before and after training (logged, saved)")
    eval_every: int | None = _f(
        None, "steps between dev nDCG@10 measurements of the retriever during training (needs eval_dev); "
        "empty = at the start and the end only")
    keep_best: bool = _f(
        False, "save the retriever of the best dev measurement (the start included) instead of the last one, as "
        "sentence-transformers' save_best_model; the choice is made on dev, so report test numbers")
    distill_to_reranker: bool = _f(False, "let the distillation gradient reach the re-ranker (paper) or not (released code)")
    distill_weight: float = _f(1.0, "weight of the retriever's distillation loss (alpha)")
    retriever_ce_weight: float = _f(0.0, "weight of the retriever's hard-label listwise CE (beta); contrastive mode uses 1")
    reranker_ce_weight: float = _f(1.0, "weight of the re-ranker's listwise CE on labels")
    in_batch_negatives: bool = _f(False, "retriever CE also sees the other lists' passages (and other processes')")
    batch_size: int = _f(8, "query lists per step per process")
    epochs: float = _f(1.0, "passes over the training lists")
    max_steps: int | None = _f(None, "optimizer steps; overrides epochs when set")
    lr_retriever: float = _f(2e-5, "retriever learning rate")
    lr_reranker: float = _f(2e-5, "re-ranker body learning rate")
    lr_reranker_head: float | None = _f(None, "re-ranker head learning rate (new heads learn faster); empty = lr_reranker")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    warmup_ratio: float = _f(0.1, "linear warm-up share of the steps, then linear decay")
    gradient_accumulation_steps: int = _f(1, "micro-batches per optimizer step")
    max_grad_norm: float = _f(1.0, "gradient clipping (0 = off)")
    mixed_precision: str = _f("no", "no, bf16 or fp16 (bf16 works on CPUs with AVX512-BF16 too)")
    dropout: bool = _f(True, "train with the models' dropout on (their train mode); false = deterministic eval-mode forward")
    attention_dropout: float | None = _f(
        None,
        "dropout of the attention probabilities while training; empty = the model's own (MiniLM: 0.1). 0 lets "
        "PyTorch's fused attention run on CPU: at SciFact's lengths (224-token pairs) a joint step takes half the "
        "time and 0.42x the memory (docs/scaling.md); the saved model folders keep their own setting",
    )
    gradient_checkpointing: bool = _f(False, "trade compute for activation memory")
    chunk_size: int | None = _f(None, "cached-gradient chunking of passages/pairs (rows per chunk); empty = off")
    seed: int = _f(42, "seed of initialisation order, sampling and dropout")
    log_every: int = _f(10, "steps between log lines")
    save_every: int | None = _f(None, "steps between resumable checkpoints (empty = only at the end)")
    keep_checkpoints: int = _f(2, "complete checkpoints kept")
    num_workers: int = _f(0, "data loader workers")


@dataclass
class MiningConfig:
    first_round: str = _f("bm25", "candidates when no trained retriever exists: bm25 or base (the untrained encoder)")
    depth: int = _f(50, "top-k retrieved per training query")
    skip_top: int = _f(0, "ignore the first ranks (near-duplicates of the positive)")
    denoise: bool = _f(True, "drop negatives the re-ranker scores as likely positives")
    false_negative_threshold: float = _f(0.9, "a negative whose re-ranker probability (sigmoid) is above this is dropped")
    false_negative_rank: int | None = _f(None, "alternatively: drop negatives the re-ranker ranks above the positive's rank minus this")
    pseudo_positive_threshold: float | None = _f(None, "promote candidates above this re-ranker probability to positives")
    sampled_negatives: int = _f(2, "undenoised negatives sampled from the corpus per list (hybrid augmentation)")
    label_unlabeled: bool = _f(False, "teacher labelling: the re-ranker labels the unlabeled queries into lists")
    unlabeled_positive_threshold: float = _f(0.9, "teacher labelling: pseudo-positive when probability is above this")
    unlabeled_negative_threshold: float = _f(0.1, "teacher labelling: negative when probability is below this")
    seed: int = _f(17, "seed of negative sampling")


@dataclass
class IndexConfig:
    factory: str = _f("Flat", "faiss.index_factory string (inner product); IVF/HNSW/PQ train on a sample")
    batch_size: int = _f(128, "passages per encoding batch")
    autocast: str = _f("auto", "auto (bf16 where the CPU/GPU supports it), bf16, fp16 or no")
    train_sample: int = _f(100_000, "vectors used to train an IVF/PQ index")


@dataclass
class EvalConfig:
    k: int = _f(100, "passages retrieved per query")
    rerank_depth: int = _f(100, "retrieved passages re-ranked")
    fuse_rerank: bool = _f(True, "interpolate re-ranker and retriever scores per query, weight chosen on dev")
    fusion_alpha: float = _f(
        0.05,
        "a dev-fitted fusion weight replaces its default -- the re-ranker alone for reranked, reranked's own weights "
        "(no BM25) for hybrid -- only when it beats that default on dev in a paired randomization test at this "
        "level: on a few dozen dev queries a fitted weight is mostly noise (1 = always take the fitted weight)",
    )
    run_tag: str = _f("rocketkd", "TREC run tag (6th column) of the pipeline's runs: each system's is TAG-SYSTEM")


@dataclass
class PipelineConfig:
    rounds: int = _f(2, "mine -> train rounds after warm-up")
    warmup: bool = _f(True, "train both models on labels before distilling (a fresh head is a random teacher)")
    warmup_steps: int | None = _f(None, "warm-up optimizer steps (empty = train.max_steps, or train.epochs worth)")
    warmup_epochs: float | None = _f(
        None,
        "warm-up length in passes over its lists (overrides warmup_steps): sizes itself with the collection. How long "
        "the re-ranker may learn from labels is chosen on folds of train (docs/results.md: SciFact 2, Cranfield 0)",
    )
    round_steps: int | None = _f(None, "optimizer steps of each round's training (empty = train.max_steps)")
    round_epochs: float | None = _f(
        None, "each round's length in passes over its lists (overrides round_steps): sizes itself with the collection")
    round_reranker_lr_scale: float = _f(
        1.0,
        "the re-ranker's rates (train.lr_reranker and lr_reranker_head) in each round, as a multiple; the warm-up "
        "keeps them. Below 1 the online teacher learns its training lists more slowly: at 1 its listwise CE on them "
        "falls to about 0.3 in a two-pass SciFact round, and targets that close to the labels may teach the "
        "retriever little beyond its own CE -- not yet measured (docs/results.md, \"Attention dropout off on SciFact\")",
    )
    warmup_retriever: bool = _f(
        True,
        "keep the warm-up's retriever (false: round 1 starts from model.retriever as given -- for a start that is "
        "already a trained retriever, e.g. all-MiniLM-L6-v2, which a few label-only steps on small data can only "
        "perturb; the re-ranker is still warmed up)",
    )
    round_mode: str = _f(
        "auto",
        "how each round trains the retriever: auto (teachers checked on dev decide: joint with the best ensemble, or "
        "labels only when none helps), joint (online re-ranker alone, RocketQAv2), static (frozen copy of the round's re-ranker), "
        "contrastive (labels only, no teacher)",
    )
    teacher_min_gain: float = _f(0.005, "a teacher (or ensemble) must beat the student on dev nDCG@10 by this to teach")
    teacher_members: list = _f(
        ["reranker", "bm25", "base"],
        "auto mode: the teachers checked on dev and fitted into the ensemble: reranker (the warmed-up re-ranker, "
        "online in the joint step), bm25, base (model.retriever as it starts), random (seeded noise: a control)",
    )
    check_on_train: bool = _f(
        False,
        "auto mode: check the teachers and fit their weights on the train queries too (title queries excepted), "
        "not dev alone -- sound only where nothing checked has learned the train labels: used when the round's "
        "student is model.retriever as given (round 1 with pipeline.warmup_retriever false) and the re-ranker is "
        "not a member; otherwise dev alone, logged. Cranfield: 150 queries instead of dev's 25",
    )
    zero_bad_teachers: bool = _f(
        True,
        "auto mode: a teacher (or ensemble) not better than the student on dev gets weight 0 (false: keep the fitted "
        "weights and distil anyway, e.g. to measure what a single teacher does to the retriever)",
    )
    systems: list = _f(
        ["bm25", "base", "retriever", "reranked", "hybrid"],
        "systems evaluated on the test split: bm25, base (zero-shot encoder), retriever, reranked (retriever + "
        "re-ranker, fused), hybrid (the retriever's top-k re-scored by retriever + re-ranker + BM25, weights on dev)",
    )
    prior_alpha: float = _f(
        0.05,
        "model.reranker_prior: the fitted prior replaces the student's own encoder only when, cross-fitted over "
        "pipeline.prior_folds folds of held-out queries, it beats the student in a paired randomization test at it",
    )
    prior_folds: int = _f(5, "model.reranker_prior: folds for the prior's cross-fitted evidence (weights fitted on "
                             "the other folds, measured on each; 5: each fit sees 80% of the queries)")
    reranker_pretrain: int = _f(
        0,
        "model.reranker_prior: inverse-cloze queries (a sentence cut out of a passage; no label read) on which the "
        "cross-encoder g learns over its prior before round 1, label-free (0 = off). The pre-trained g is kept only "
        "when prior + g beats the prior alone on the dev + train queries in a paired test at pipeline.prior_alpha",
    )
    reranker_pretrain_cut: str = _f("sentence", "what each pre-training query is: a sentence cut out of its passage "
                                                "(the inverse cloze task) or the passage's title (every passage "
                                                "then loses its title)")
    reranker_pretrain_steps: int | None = _f(None, "optimizer steps of that pre-training (empty = one pass over its "
                                                   "lists)")
    reranker_pretrain_data: str | None = _f(
        None,
        "model.reranker_prior: another judged collection (a data folder, e.g. data/scifact) on whose train labels the "
        "cross-encoder g learns over this collection's prior before round 1, instead of inverse-cloze queries -- "
        "RocketQA starts its cross-encoder from MS MARCO's labels. Kept only when prior + g beats the prior alone on "
        "this collection's dev + train queries in a paired test at pipeline.prior_alpha",
    )
    plot: bool = _f(True, "write recall@k and loss curves as PNG next to results.json")


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mining: MiningConfig = field(default_factory=MiningConfig)
    index: IndexConfig = field(default_factory=IndexConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    output_dir: str = _f("outputs/run", "where every output of the run goes")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def dump(self, path: str | Path) -> None:
        with atomic_write(path) as f:
            yaml.safe_dump(self.to_dict(), f, sort_keys=False)


def _describe(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(repr(a) for a in typing.get_args(annotation))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(annotation, str(annotation))


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check ``value`` against a field's type, converting the strings of ``--set`` where unambiguous."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        wanted = " or ".join(_describe(arg) for arg in args if arg is not type(None))
        raise ConfigError(f"config key {key!r}: expected {wanted}, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ConfigError(f"config key {key!r}: expected {_describe(annotation)}, got {value!r}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        raise ConfigError(f"config key {key!r}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        if value is False and key.rsplit(".", 1)[-1] in _NO_MEANS_NO:  # YAML 1.1 reads a bare `no` as false
            return "no"
        raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
    if annotation is dict or origin is dict:
        if isinstance(value, dict):
            return dict(value)
        if isinstance(value, str):  # --set train.teachers=bm25:0.5,base:0.5
            out = {}
            for item in (v.strip() for v in value.split(",")):
                if not item:
                    continue
                name, sep, weight = item.partition(":")
                try:
                    out[name.strip()] = float(weight) if sep else 1.0
                except ValueError:
                    raise ConfigError(f"config key {key!r}: {item!r} is not NAME:WEIGHT") from None
            return out
        raise ConfigError(f"config key {key!r}: expected a mapping, got {value!r}")
    if annotation is list or origin is list:
        if isinstance(value, list):
            return value
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
    return value


def _fill(obj: Any, values: dict, prefix: str) -> None:
    hints = typing.get_type_hints(type(obj))
    known = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            raise ConfigError(
                f"unknown config key {dotted!r}; known keys here: {', '.join(sorted(known))}"
            )
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {dotted!r} is a section: give it a mapping")
            _fill(current, value, dotted + ".")
        else:
            setattr(obj, key, _coerce(value, hints[key], dotted))


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {part!r} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a ``Config`` from defaults, then the YAML file, then ``KEY=VALUE`` overrides (dotted keys)."""
    values: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{p}: the top level must be a mapping of sections")
        values = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.batch_size=16")
        key, raw = item.split("=", 1)
        _set_dotted(values, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    cfg = Config()
    _fill(cfg, values, "")
    validate_config(cfg)
    return cfg


_NO_MEANS_NO = ("mixed_precision", "autocast")  # string keys whose value may be "no"
OFFLINE_TEACHERS = ("bm25", "base", "reranker", "random")
PIPELINE_TEACHERS = ("reranker", "bm25", "base", "random")  # pipeline.teacher_members (auto mode)
PIPELINE_SYSTEMS = ("bm25", "base", "retriever", "reranked", "hybrid")

_CHOICES = {
    "train.mode": ("joint", "warmup", "contrastive", "static", "reranker"),
    "train.teacher": ("online", "reranker", "stored"),
    "train.teacher_combine": ("arithmetic", "geometric"),
    "candidates.source": ("sampled", "mined"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "mining.first_round": ("bm25", "base"),
    "candidates.mined_by": ("bm25", "base", None),
    "index.autocast": ("auto", "bf16", "fp16", "no"),
    "pipeline.round_mode": ("auto", "joint", "static", "contrastive"),
    "pipeline.reranker_pretrain_cut": ("sentence", "title"),
}


def validate_config(cfg: Config) -> None:
    for dotted, choices in _CHOICES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value not in choices:
            raise ConfigError(f"config key {dotted!r}: {value!r} is not one of {', '.join(str(c) for c in choices)}")
    for key in ("query_max_length", "passage_max_length", "reranker_max_length"):
        value = getattr(cfg.model, key)
        if value != "auto" and value < 4:  # [CLS] x [SEP] at the least
            raise ConfigError(f"config key 'model.{key}': a number of tokens (at least 4) or auto, got {value!r}")
    if cfg.train.mode == "static" and cfg.train.teacher == "online":
        raise ConfigError("config key 'train.teacher': static mode needs a frozen 'reranker' or 'stored' scores, not 'online'")
    if not isinstance(cfg.eval.run_tag, str) or cfg.eval.run_tag.split() != [cfg.eval.run_tag]:  # one word
        raise ConfigError(f"config key 'eval.run_tag': a TREC run tag is one word, got {cfg.eval.run_tag!r}")
    for name in cfg.pipeline.systems:
        if name not in PIPELINE_SYSTEMS:
            raise ConfigError(f"config key 'pipeline.systems': unknown system {name!r} (known: {', '.join(PIPELINE_SYSTEMS)})")
    members = cfg.pipeline.teacher_members
    if not members:
        raise ConfigError("config key 'pipeline.teacher_members': name at least one teacher")
    for name in members:
        if name not in PIPELINE_TEACHERS:
            raise ConfigError(f"config key 'pipeline.teacher_members': unknown teacher {name!r} "
                              f"(known: {', '.join(PIPELINE_TEACHERS)})")
    if len(set(members)) != len(members):
        raise ConfigError(f"config key 'pipeline.teacher_members': a teacher is named twice in {members}")
    for name, weight in cfg.train.teachers.items():
        if name not in OFFLINE_TEACHERS:
            raise ConfigError(f"config key 'train.teachers': unknown teacher {name!r} (known: {', '.join(OFFLINE_TEACHERS)})")
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight >= 0:
            raise ConfigError(f"config key 'train.teachers': weight of {name!r} must be a number >= 0, got {weight!r}")
    if cfg.pipeline.reranker_pretrain < 0:
        raise ConfigError(f"config key 'pipeline.reranker_pretrain': must be >= 0 (0 = off), got "
                          f"{cfg.pipeline.reranker_pretrain}")
    if cfg.pipeline.reranker_pretrain_data is not None and not cfg.model.reranker_prior:
        raise ConfigError("config key 'pipeline.reranker_pretrain_data': pre-trains the cross-encoder over its prior; "
                          "set model.reranker_prior: true (or leave pipeline.reranker_pretrain_data empty)")
    if cfg.pipeline.reranker_pretrain and not cfg.model.reranker_prior:
        raise ConfigError("config key 'pipeline.reranker_pretrain': pre-trains the cross-encoder over its prior; "
                          "set model.reranker_prior: true (or pipeline.reranker_pretrain: 0)")
    if cfg.pipeline.reranker_pretrain_steps is not None and cfg.pipeline.reranker_pretrain_steps < 1:
        raise ConfigError(f"config key 'pipeline.reranker_pretrain_steps': must be at least 1 (or empty), got "
                          f"{cfg.pipeline.reranker_pretrain_steps}")
    for key in ("warmup_epochs", "round_epochs"):
        value = getattr(cfg.pipeline, key)
        if value is not None and not value > 0:
            raise ConfigError(f"config key 'pipeline.{key}': must be > 0 (or empty), got {value}")
    scale = cfg.pipeline.round_reranker_lr_scale
    if not (math.isfinite(scale) and scale > 0):  # 0 would freeze the online teacher: that is round_mode static
        raise ConfigError(f"config key 'pipeline.round_reranker_lr_scale': must be a number > 0 (round_mode static "
                          f"freezes the re-ranker), got {scale}")
    if cfg.data.title_queries < 0:
        raise ConfigError(f"config key 'data.title_queries': must be >= 0 (0 = off), got {cfg.data.title_queries}")
    if cfg.candidates.list_length < 2:
        raise ConfigError("config key 'candidates.list_length': needs at least 2 (a positive and a negative)")
    if cfg.train.batch_size < 1:
        raise ConfigError("config key 'train.batch_size': must be at least 1")
    if not 0.0 < cfg.eval.fusion_alpha <= 1.0:
        raise ConfigError(f"config key 'eval.fusion_alpha': must lie in (0, 1], got {cfg.eval.fusion_alpha}")
    if not 0.0 < cfg.pipeline.prior_alpha <= 1.0:
        raise ConfigError(f"config key 'pipeline.prior_alpha': must lie in (0, 1], got {cfg.pipeline.prior_alpha}")
    if cfg.pipeline.prior_folds < 2:
        raise ConfigError(f"config key 'pipeline.prior_folds': needs at least 2, got {cfg.pipeline.prior_folds}")
    if cfg.model.pooling not in (None, "mean", "cls"):
        raise ConfigError(f"config key 'model.pooling': {cfg.model.pooling!r} is not one of mean, cls")
    if cfg.model.similarity not in (None, "dot", "cosine"):
        raise ConfigError(f"config key 'model.similarity': {cfg.model.similarity!r} is not one of dot, cosine")
    _check_train_values(cfg.train)
    _check_splits_differ(cfg.data)


def _check_train_values(t: TrainConfig) -> None:
    """Values that would fail deep inside training (or train on something else than asked): refused at load."""
    if t.mode == "reranker" and t.chunk_size:
        raise ConfigError("config key 'train.chunk_size': cached-gradient chunks split the retriever's rows; "
                          "train.mode=reranker runs no retriever (leave train.chunk_size empty)")
    if t.attention_dropout is not None and not 0 <= t.attention_dropout < 1:
        raise ConfigError(f"config key 'train.attention_dropout': must be in [0, 1) (or empty: the model's own), "
                          f"got {t.attention_dropout}")
    if t.gradient_accumulation_steps < 1:
        raise ConfigError(f"config key 'train.gradient_accumulation_steps': must be at least 1, got "
                          f"{t.gradient_accumulation_steps}")
    if not (math.isfinite(t.temperature) and t.temperature > 0):
        raise ConfigError(f"config key 'train.temperature': must be a number > 0, got {t.temperature}")
    if t.max_steps is not None and t.max_steps < 1:
        raise ConfigError(f"config key 'train.max_steps': must be at least 1 (or empty: train.epochs decides), got "
                          f"{t.max_steps}")
    if not (math.isfinite(t.epochs) and t.epochs > 0):
        raise ConfigError(f"config key 'train.epochs': must be a number > 0, got {t.epochs}")
    for key in ("lr_retriever", "lr_reranker", "lr_reranker_head"):
        value = getattr(t, key)
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"config key 'train.{key}': a learning rate must be a number >= 0, got {value}")


def _check_splits_differ(d: DataConfig) -> None:
    """Checkpoints, teachers and weights are chosen on dev: dev (or train) being the test split would select on it."""
    named = {"train_split": d.train_split, "dev_split": d.dev_split, "test_split": d.test_split}
    keys = list(named)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            if named[a] == named[b]:
                raise ConfigError(f"config keys 'data.{a}' and 'data.{b}' are both {named[a]!r}: training, "
                                  "selection (dev) and the reported test need three different splits")


def check_disjoint_splits(cfg: Config, qrels: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse a collection whose train, dev and test splits (``qrels``: split -> query id -> judgments) share a query:
    a dev query that is also a test query selects on test; a train query that is a test query is learned.
    Splits the collection lacks are left to the stages that need them."""
    d = cfg.data
    splits = [(key, name) for key, name in (("train_split", d.train_split), ("dev_split", d.dev_split),
                                           ("test_split", d.test_split)) if name in qrels]
    for i, (key_a, a) in enumerate(splits):
        for key_b, b in splits[i + 1:]:
            shared = [qid for qid in qrels[a] if qid in qrels[b]]
            if shared:
                raise ConfigError(f"data.{key_a} {a!r} and data.{key_b} {b!r} share {len(shared)} query id(s), e.g. "
                                  f"{shared[0]!r}: the splits must be disjoint (a query in both is selected or "
                                  "trained on and then reported)")


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, help) for every key: printed by ``rocketkd config``."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", repr(default), f.metadata.get("help", "")))
    return rows
