"""The body of each CLI stage (``cmd_<stage>``): parse nothing, call the Python API, print what happened.

:mod:`rocketkd.cli` imports this module only once a stage runs, so ``rocketkd --help`` and ``rocketkd config``
(printed by the CLI itself) stay fast while the imports below (torch, transformers, faiss) are paid by the stages
that need them.

Output folders (docs/reliability.md): ``train``, ``pipeline`` and ``index`` claim their ``--output`` before any data
or model is read (:func:`rocketkd.io.claim_output`): a new folder, an empty one or one rocketkd wrote as the same kind
of output, marked and locked for the run; anything else is refused with one line. Values the stage checks itself
(``--k``, ``--batch-size``, ``--query``) are checked first as well.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from rocketkd.candidates.mining import mine
from rocketkd.config import load_config
from rocketkd.data import Corpus, load_qrels, load_queries, load_retrieval_data, read_trec_run, write_trec_run
from rocketkd.distributed import barrier, init_if_launched, is_main, local_device, main_process_first
from rocketkd.errors import ConfigError, DataFormatError, OutputError
from rocketkd.evaluation.metrics import (
    DEFAULT_METRICS,
    evaluate_run,
    format_table,
    parse_metric,
    rank_scores,
    to_json,
    write_per_query,
)
from rocketkd.io import claim_output
from rocketkd.models import CrossEncoderRanker, DualEncoder, resolve_model_path
from rocketkd.pipeline import run_pipeline, run_train
from rocketkd.search.benchmark import benchmark, format_benchmark, write_benchmark
from rocketkd.search.fusion import fuse_stages
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.search.rerank import bm25_run, rerank_run


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
    """A file output (run file, candidate lists) must not name a folder: atomic_write would fail after the work."""
    if path is not None and Path(path).is_dir():
        raise OutputError(f"{flag} {path}: is a folder; give the file to write")


def cmd_train(args: argparse.Namespace) -> int:
    cfg = _load(args)
    with claim_output(cfg.output_dir, "train", main=_launched_main()):
        result = run_train(cfg, output_dir=cfg.output_dir, resume=args.resume)
    print(f"retriever: {result.retriever_dir}")
    if result.reranker_dir:
        print(f"reranker:  {result.reranker_dir}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    init_if_launched()  # under torchrun / accelerate launch: retrieval and denoising shard across the processes
    cfg = load_config(args.config, args.overrides)
    output = args.output or Path(cfg.output_dir) / "candidates.jsonl"
    _file_output(Path(output))
    result = mine(cfg, output=Path(output), retriever=args.retriever, reranker=args.reranker)
    if is_main():  # mine() wrote the file on the main process and returned the same result everywhere
        print(f"{result.num_lists} candidate lists for {result.num_queries} queries -> {result.path}")
    return 0


def _corpus_from(path: str) -> Corpus:
    p = Path(path)
    if p.is_dir():
        return load_retrieval_data(p).corpus
    if p.suffix == ".tsv":
        return Corpus.from_msmarco(p)
    return Corpus.from_beir(p)


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
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    init_if_launched()
    # the folder is replaced whole (atomically) once the index is built: checked and locked (beside it) first
    with claim_output(args.output, "index", whole=True, main=is_main()):
        model_path = resolve_model_path(None if args.model == "packaged" else args.model)
        _refuse_reranker(model_path)  # before the corpus is read
        with main_process_first():  # one process parses the corpus into the Arrow cache, the others then read it
            corpus = _corpus_from(args.corpus)
        model = DualEncoder.from_pretrained(model_path)
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
    rerank_weight = float(args.fusion_weight) if args.rerank else 0.0
    if not (0.0 <= bm25_weight <= 1.0 and 0.0 <= rerank_weight <= 1.0):
        raise ConfigError(f"--bm25-weight and --fusion-weight must lie in [0, 1], got {bm25_weight} and "
                          f"{args.fusion_weight}")
    if bm25_weight > 0 and rerank_weight + bm25_weight > 1.0 + 1e-9:
        raise ConfigError(f"--fusion-weight {rerank_weight} + --bm25-weight {bm25_weight} exceed 1: the retriever's "
                          "share is what is left of 1")
    if args.query is None and args.queries is None:
        raise ConfigError("give --queries FILE (with --output) or --query TEXT")
    if args.query is None and args.output is None:
        raise ConfigError("--queries needs --output RUN_FILE")
    if args.query is not None and not args.query.strip():
        raise ConfigError("--query is empty: type the query text")
    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    _file_output(args.output)
    index = DenseIndex.load(args.index)
    with main_process_first():  # a dataset folder's corpus goes into the Arrow cache once
        queries = {"query": args.query} if args.query is not None else _queries_from(args.queries, args.split)
    index.encoder.to(local_device())
    # queries in the precision the passages were encoded in (the index records it)
    run = search_run(index, queries, args.k, autocast=index.meta.get("autocast") or "auto")
    if not is_main():  # its share is in the main process's run
        barrier()
        return 0
    corpus = None
    if args.rerank or bm25_weight > 0 or args.query is not None:
        corpus_path = args.corpus or index.meta.get("corpus_path")
        if not corpus_path:
            raise ConfigError("re-ranking and printing hits need the passage texts: pass --corpus")
        corpus = _corpus_from(corpus_path)
    # The pipeline's fusion (final and hybrid stages): the retriever's top --k re-scored by the re-ranker and/or
    # BM25 (its lexical specialist), fused per query; the retriever keeps what is left of 1.
    rescored, weights = [], [max(0.0, 1.0 - rerank_weight - bm25_weight)]
    if args.rerank:
        ranker = CrossEncoderRanker.from_pretrained(args.rerank).to(local_device())
        rescored.append(rerank_run(ranker, run, queries, corpus, depth=args.k))
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
    if args.output is not None:
        write_trec_run(args.output, run)
        print(f"{len(run)} queries x top-{args.k} -> {args.output}")
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
        print(f"({result.num_queries} queries; {len(result.missing_from_run)} missing from the run counted as 0; "
              f"{len(result.skipped_no_relevant)} without a relevant passage skipped)")
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for name in metrics:
        parse_metric(name)
    if args.k < 1 or args.batch_size < 1:
        raise ConfigError(f"--k and --batch-size must be at least 1, got {args.k} and {args.batch_size}")
    _file_output(args.output)
    model_path = resolve_model_path(None if args.model == "packaged" else args.model)
    _refuse_reranker(model_path)
    model = DualEncoder.from_pretrained(model_path).to(local_device())
    rows = benchmark(model, args.datasets, split=args.split, k=args.k, metrics=metrics, batch_size=args.batch_size,
                     autocast=args.autocast)
    print(format_benchmark(rows, metrics))
    if args.output:
        write_benchmark(args.output, rows, metrics)
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    cfg = _load(args)
    with claim_output(cfg.output_dir, "pipeline", main=_launched_main()):  # a rerun continues its own folder
        results = run_pipeline(cfg)
    print(json.dumps(results.get("systems", results), indent=2))
    return 0
