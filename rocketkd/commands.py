"""The body of each CLI stage (``cmd_<stage>``): parse nothing, call the Python API, print what happened.

:mod:`rocketkd.cli` imports this module only once a stage runs, so ``rocketkd --help`` and ``rocketkd config``
(printed by the CLI itself) stay fast while the imports below (torch, transformers, faiss) are paid by the stages
that need them.

Output folders (docs/reliability.md): ``train``, ``pipeline`` and ``index`` claim their ``--output`` before any data
or model is read (:func:`rocketkd.io.claim_output`): a new folder, an empty one or one rocketkd wrote as the same kind
of output, marked and locked for the run; anything else is refused with one line. ``mine``, ``search`` and
``benchmark`` write one file: into their ``--output`` folder (claimed the same way) under a fixed name, or to
``--output`` itself when it ends in the file's suffix (:func:`rocketkd.io.output_file`). Values the stage checks itself
(``--k``, ``--batch-size``, ``--query``) are checked first as well.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
from contextlib import nullcontext
from pathlib import Path

from rocketkd.candidates.mining import mine
from rocketkd.config import load_config, validate_config
from rocketkd.data import Corpus, load_qrels, load_queries, load_retrieval_data, read_trec_run, write_trec_run
from rocketkd.data.formats import is_candidates_file, is_trec_run, read_run_tags
from rocketkd.data.lines import plain_suffix
from rocketkd.distributed import barrier, init_if_launched, is_main, local_device, main_process_first
from rocketkd.errors import ConfigError, DataFormatError, OutputError
from rocketkd.evaluation.compare import EXACT_MAX, compare_runs
from rocketkd.evaluation.metrics import (
    DEFAULT_METRICS,
    evaluate_run,
    format_table,
    parse_metric,
    rank_scores,
    to_json,
    write_per_query,
)
from rocketkd.io import ONE_FILE_OUTPUTS, claim_output, output_file
from rocketkd.models import CrossEncoderRanker, DualEncoder, resolve_model_path
from rocketkd.models.loading import load_retriever
from rocketkd.pipeline import run_pipeline, run_train
from rocketkd.search.benchmark import benchmark, format_benchmark, is_benchmark_table, write_benchmark
from rocketkd.search.fusion import fuse_stages
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.search.rerank import bm25_run, load_fusion_weight, rerank_run
from rocketkd.stamps import check_unchanged, record_config
from rocketkd.teachers.prior import Prior, PriorScorer, add_prior_to_run, prior_members

logger = logging.getLogger(__name__)


def _load(args: argparse.Namespace):
    cfg = load_config(args.config, args.overrides)
    if getattr(args, "output", None):
        cfg.output_dir = str(args.output)
    return cfg


def _launched_main() -> bool:
    """Rank 0 of a torchrun / ``accelerate launch`` (before any process group exists), or a lone process."""
    try:
        return int(os.environ.get("RANK", "0") or 0) == 0
    except ValueError:
        return True


def _file_output(path: Path | None, flag: str = "--output") -> None:
    """A file output (``evaluate --per-query``) must not name a folder: atomic_write would fail after the work."""
    if path is not None and Path(path).is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give the file to write")


# What an existing file must be for a rerun of a one-file stage to replace it (rocketkd.io.output_file).
_REPLACEABLE = {"mine": is_candidates_file, "search": is_trec_run, "benchmark": is_benchmark_table}


def _one_file_output(path: Path, kind: str) -> tuple[Path, Path | None]:
    """(the file a one-file stage writes, its --output folder to claim or None): rocketkd.io.output_file."""
    return output_file(path, kind, ours=_REPLACEABLE[kind])


def _claimed(folder: Path | None, kind: str, main: bool):
    """The ``with`` of a one-file stage: its --output folder claimed (marked, locked) as train's is, or nothing for a
    file named by its suffix."""
    return claim_output(folder, kind, main=main) if folder is not None else nullcontext()


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args)
    with claim_output(cfg.output_dir, "train", main=_launched_main()):
        # a resumed run keeps the config it started with, unless --force (rocketkd.stamps): then it has the new one
        if args.resume and check_unchanged(cfg.output_dir, cfg, force=args.force, what="train --resume"):
            if _launched_main():
                record_config(cfg.output_dir, cfg)
        written = Path(cfg.output_dir) / "config.yaml"
        before = written.stat().st_mtime_ns if written.exists() else None
        given = copy.deepcopy(cfg)  # run_train sizes `auto` lengths from the data in cfg; --resume compares the given
        try:
            result = run_train(cfg, output_dir=cfg.output_dir, resume=args.resume)
        finally:  # once training has begun (it wrote config.yaml), keep the config it was given for --resume
            if _launched_main() and written.exists() and written.stat().st_mtime_ns != before:
                record_config(cfg.output_dir, given)
    print(f"retriever: {result.retriever_dir}")
    if result.reranker_dir:
        print(f"reranker:  {result.reranker_dir}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    init_if_launched()  # under torchrun / accelerate launch: retrieval and denoising shard across the processes
    cfg = load_config(args.config, args.overrides)
    output, folder = _one_file_output(args.output or Path(cfg.output_dir) / ONE_FILE_OUTPUTS["mine"][0], "mine")
    with _claimed(folder, "mine", is_main()):
        result = mine(cfg, output=output, retriever=args.retriever, reranker=args.reranker)
    if is_main():  # mine() wrote the file on the main process and returned the same result everywhere
        print(f"{result.num_lists} candidate lists for {result.num_queries} queries -> {result.path}")
    return 0


def _corpus_from(path: str) -> Corpus:
    """A corpus file (``.jsonl`` BEIR, ``.tsv`` MS MARCO, either ``.gz``) or a dataset folder's corpus alone: its
    queries and qrels are not needed, so not read."""
    p = Path(path)
    if p.is_dir():
        for name, make in (("corpus.jsonl", Corpus.from_beir), ("collection.tsv", Corpus.from_msmarco)):
            for found in (p / name, p / f"{name}.gz"):
                if found.is_file():
                    return make(found)
        return load_retrieval_data(p).corpus  # names the layouts it expected
    if plain_suffix(p) == ".tsv":
        return Corpus.from_msmarco(p)
    return Corpus.from_beir(p)


def _indexed_corpus(index: DenseIndex, given: str | None) -> Corpus:
    """The passage texts of ``index``: ``--corpus`` (checked against the index's corpus fingerprint) or the corpus
    recorded in its metadata (an absolute path; a relative one of an older index is looked up from the folders above
    the index)."""
    path = given or index.meta.get("corpus_path")
    if not path:
        raise ConfigError("re-ranking and printing hits need the passage texts: pass --corpus")
    if not given and not Path(path).is_absolute() and not Path(path).exists() and index.path is not None:
        found = [a / path for a in Path(index.path).resolve().parents if (a / path).exists()]
        path = str(found[0]) if found else path
    corpus = _corpus_from(path)
    expected = index.meta.get("corpus_fingerprint")
    if expected and corpus.fingerprint() != expected:
        raise ConfigError(f"--corpus {path}: not the corpus the index {index.path} was built from (fingerprint "
                          f"{corpus.fingerprint()}, {len(corpus)} passages; the index: {expected}, {index.ntotal} "
                          "passages)")
    return corpus


def _refuse_reranker(model_path: str) -> None:
    """``index --model`` names a retriever: a re-ranker's folder (rocketkd's, or any one-logit sequence-classification
    model) would load as a bare encoder without its head and index vectors nobody trained for search."""
    folder = Path(model_path)
    if not folder.is_dir():
        return  # a Hub id: its files are the loader's to find
    own = _json_or_empty(folder / "rocketkd.json")
    architectures = _json_or_empty(folder / "config.json").get("architectures") or []
    if own.get("format") == "rocketkd.cross_encoder" or (
            not (folder / "modules.json").is_file()
            and any(str(a).endswith("ForSequenceClassification") for a in architectures)):
        raise ConfigError(f"--model {model_path}: is a re-ranker (cross-encoder) folder; index a retriever folder "
                          "(e.g. the retriever/ beside it), and pass the re-ranker to `rocketkd search --rerank`")


def _json_or_empty(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def cmd_index(args: argparse.Namespace) -> int:
    # Under torchrun / accelerate launch every process encodes its share of the corpus; the main process gathers
    # the vectors in row order, builds and saves the index; the others wait for it, then exit.
    configured = bool(getattr(args, "config", None) or getattr(args, "overrides", None))
    cfg = load_config(getattr(args, "config", None), getattr(args, "overrides", None))  # checked before any work
    for flag, key in (("factory", "factory"), ("batch_size", "batch_size"), ("autocast", "autocast")):
        if getattr(args, flag, None) is None:  # the command line first, then the config (or its defaults)
            setattr(args, flag, getattr(cfg.index, key))
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    init_if_launched()
    # the folder is replaced whole (atomically) once the index is built: checked and locked (beside it) first
    with claim_output(args.output, "index", whole=True, main=is_main()):
        model_path = resolve_model_path(None if args.model == "packaged" else args.model)
        _refuse_reranker(model_path)  # before the corpus is read
        with main_process_first():  # one process parses the corpus into the Arrow cache, the others then read it
            corpus = _corpus_from(args.corpus)
        # with a config, the encoder as training built it (model.* lengths, pooling); else the folder's own settings
        model = load_retriever(cfg, model_path) if configured else DualEncoder.from_pretrained(model_path)
        model.to(local_device())
        index = DenseIndex.build(model, corpus, factory=args.factory, batch_size=args.batch_size,
                                 autocast=args.autocast)
        if index is not None:  # None on the other processes of a multi-process run
            index.save(args.output)
            print(f"indexed {index.ntotal} passages ({args.factory}, dim {index.meta['dim']}) -> {args.output}")
    barrier()
    return 0


def _queries_from(path: str, split: str | None) -> dict[str, str]:
    p = Path(path)
    if p.is_dir():
        data = load_retrieval_data(p)
        if split and split not in data.qrels:
            found = ", ".join(data.qrels) or "none"
            raise ConfigError(f"--split {split!r}: {p} has no qrels for it (found: {found})")
        return data.split_queries(split) if split else data.queries
    if split:
        raise ConfigError("--split needs --queries to name a dataset folder")
    return load_queries(p)


def cmd_search(args: argparse.Namespace) -> int:
    # Under torchrun / accelerate launch every process encodes and searches its share of the queries; the main
    # process merges the run (in query order), re-ranks and writes it; the others wait for it, then exit.
    init_if_launched()
    bm25_weight = float(args.bm25_weight)
    rerank_weight = 0.0
    if args.rerank:
        try:
            stored = load_fusion_weight(args.rerank) if Path(args.rerank).is_dir() else None
        except ValueError as e:
            raise ConfigError(f"--rerank {args.rerank}: {e}") from None
        rerank_weight = float(args.fusion_weight if args.fusion_weight is not None else
                              stored if stored is not None else 1.0)
        if args.fusion_weight is None:
            logger.info("--fusion-weight %.2f (%s)", rerank_weight, "fitted on dev, stored with the re-ranker"
                        if stored is not None else "no weight stored with the re-ranker: the re-ranker alone")
    if not (0.0 <= bm25_weight <= 1.0 and 0.0 <= rerank_weight <= 1.0):
        raise ConfigError(f"--bm25-weight and --fusion-weight must lie in [0, 1], got {bm25_weight} and "
                          f"{rerank_weight}")
    if bm25_weight > 0 and rerank_weight + bm25_weight > 1.0 + 1e-9:
        raise ConfigError(f"--fusion-weight {rerank_weight} + --bm25-weight {bm25_weight} exceed 1: the retriever's "
                          "share is what is left of 1")
    if args.query is None and args.queries is None:
        raise ConfigError("give --queries FILE (with --output) or --query TEXT")
    if args.query is None and args.output is None:
        raise ConfigError("--queries needs --output (a folder for run.trec, or a .trec file)")
    if args.query is not None and not args.query.strip():
        raise ConfigError("--query is empty: type the query text")
    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not args.tag or any(c.isspace() for c in args.tag):
        raise ConfigError(f"--tag {args.tag!r}: a TREC run tag is one word (no whitespace)")
    output, folder = _one_file_output(args.output, "search") if args.output else (None, None)
    index = DenseIndex.load(args.index)
    corpus = None
    if is_main() and (args.rerank or bm25_weight > 0 or args.query is not None):
        corpus = _indexed_corpus(index, args.corpus)  # checked against the index before any model loads
    with main_process_first():  # a dataset folder's corpus goes into the Arrow cache once
        queries = {"query": args.query} if args.query is not None else _queries_from(args.queries, args.split)
    index.encoder.to(local_device())
    # queries in the precision the passages were encoded in (the index records it)
    run = search_run(index, queries, args.k, batch_size=args.batch_size,
                     autocast=args.autocast or index.meta.get("autocast") or "auto")
    if not is_main():  # its share is in the main process's run
        barrier()
        return 0
    # The pipeline's fusion (final and hybrid stages): the retriever's top --k re-scored by the re-ranker and/or
    # BM25 (its lexical specialist), fused per query; the retriever keeps what is left of 1.
    rescored, weights = [], [max(0.0, 1.0 - rerank_weight - bm25_weight)]
    if args.rerank:
        ranker = CrossEncoderRanker.from_pretrained(args.rerank).to(local_device())
        second = rerank_run(ranker, run, queries, corpus, depth=args.k)
        prior = Prior.load(args.rerank)
        if prior is not None:  # a composite re-ranker: its score is prior + cross-encoder (rocketkd_prior.json)
            second = add_prior_to_run(second, PriorScorer(prior, prior_members(prior, corpus)), queries, corpus)
        rescored.append(second)
        weights.append(rerank_weight)
    if bm25_weight > 0:  # builds a BM25 index of the corpus
        rescored.append(bm25_run(run, queries, corpus, depth=args.k))
        weights.append(bm25_weight)
    if args.rerank and bm25_weight == 0 and rerank_weight >= 1:
        run = rescored[0]  # the re-ranker alone: its own scores, not z-scored
    elif rescored:
        run = fuse_stages(run, rescored, weights)
    if args.query is not None:  # every one of the top --k, best first (trec_eval's order on ties)
        width = len(str(args.k))
        for rank, pid in enumerate(rank_scores(run["query"])[: args.k], 1):
            print(f"{rank:>{width}}. {pid}\t{run['query'][pid]:.4f}\t{corpus.get_text(pid)[:100]}")
    if output is not None:
        with _claimed(folder, "search", main=True):  # only this (main) process writes
            write_trec_run(output, run, tag=args.tag)
        print(f"{len(run)} queries x top-{args.k} -> {output}")
    barrier()
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.relevance_level < 1:
        raise ConfigError(f"--relevance-level must be at least 1 (grade 0 means judged not relevant), got "
                          f"{args.relevance_level}")
    _file_output(args.per_query, "--per-query")
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else list(DEFAULT_METRICS)
    for name in metrics:
        parse_metric(name)  # a misspelt name fails before the files are read
    run = read_trec_run(args.run)
    qrels = load_qrels(args.qrels)
    if not qrels:
        raise DataFormatError(args.qrels, "no judgments")
    try:
        result = evaluate_run(run, qrels, metrics, relevance_threshold=args.relevance_level)
    except ValueError as e:  # no query with a relevant passage: nothing to average
        raise DataFormatError(args.qrels, str(e)) from None
    if args.per_query:
        write_per_query(args.per_query, result)
    if args.json:
        print(to_json(result.mean))
    else:
        print(format_table(result.mean))
        tags = ", ".join(read_run_tags(args.run)) or "none"  # the run's TREC tag (search --tag, pipeline --tag)
        print(f"(run tag {tags}; {result.num_queries} queries; {len(result.missing_from_run)} missing from the run "
              f"counted as 0; {len(result.skipped_no_relevant)} without a relevant passage skipped)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise ConfigError(f"--samples must be at least 1, got {args.samples}")
    if not 0.0 < args.level < 1.0:
        raise ConfigError(f"--level must lie in (0, 1), got {args.level}")
    run_a, run_b = read_trec_run(args.run_a), read_trec_run(args.run_b)
    qrels = load_qrels(args.qrels)
    if not qrels:
        raise DataFormatError(args.qrels, "no judgments")
    try:
        (cmp,) = compare_runs(run_a, run_b, qrels, [args.metric.strip()], level=args.level, samples=args.samples,
                              seed=args.seed)
    except ValueError as e:  # no query with a relevant passage: nothing to compare
        raise DataFormatError(args.qrels, str(e)) from None
    if args.json:
        print(json.dumps({**cmp.to_dict(), "level": args.level, "run_a": str(args.run_a), "run_b": str(args.run_b)}))
        return 0
    test = "exact" if cmp.queries <= EXACT_MAX else f"{args.samples} sign flips"
    print(f"{cmp.metric} over {cmp.queries} queries")
    print(f"  A      {cmp.mean_a:.4f}  {args.run_a}")
    print(f"  B      {cmp.mean_b:.4f}  {args.run_b}")
    print(f"  B - A  {cmp.delta:+.4f}  {args.level:.0%} CI [{cmp.ci_low:+.4f}, {cmp.ci_high:+.4f}] (bootstrap)  "
          f"p = {cmp.p_value:.4g} (paired randomization, two-sided, {test})")
    print(f"  B better on {cmp.wins} queries, worse on {cmp.losses}, equal on {cmp.queries - cmp.wins - cmp.losses}")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for name in metrics:
        parse_metric(name)
    if args.k < 1 or args.batch_size < 1:
        raise ConfigError(f"--k and --batch-size must be at least 1, got {args.k} and {args.batch_size}")
    output, folder = _one_file_output(args.output, "benchmark") if args.output else (None, None)
    model_path = resolve_model_path(None if args.model == "packaged" else args.model)
    _refuse_reranker(model_path)
    model = DualEncoder.from_pretrained(model_path).to(local_device())
    rows = benchmark(model, args.datasets, split=args.split, k=args.k, metrics=metrics, batch_size=args.batch_size,
                     autocast=args.autocast)
    print(format_benchmark(rows, metrics))
    if output is not None:
        with _claimed(folder, "benchmark", main=True):
            write_benchmark(output, rows, metrics)
            if folder is not None:
                write_benchmark(folder / "benchmark.json", rows, metrics)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if args.tag is not None:  # --tag is eval.run_tag (kept as text: --set would read "2024" as a number)
        cfg.eval.run_tag = args.tag
        validate_config(cfg)
    with claim_output(cfg.output_dir, "pipeline", main=_launched_main()):  # a rerun continues its own folder
        check_unchanged(cfg.output_dir, cfg, force=args.force, what="pipeline rerun of")
        results = run_pipeline(cfg)
    print(json.dumps(results.get("systems", results), indent=2))
    return 0
