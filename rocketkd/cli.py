"""``rocketkd <stage>``: thin wrappers over the Python API, one sub-command per stage of the flow.

data -> mine -> train -> index -> search -> evaluate, or all of it with ``pipeline``. Any ``RocketKDError`` is
printed as one line (file and line, config key, or step) with exit status 2 and no traceback; so is a full disk,
a read-only folder or a denied permission met while writing. Exit status (docs/reliability.md): 0 done, 2 refused
(bad input or output, a value error, a failed check), 130 interrupted (Ctrl-C), 143 stopped by SIGTERM after the
training checkpoint (rerun ``train --resume``, or ``pipeline``, to continue).
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from rocketkd.config import describe
from rocketkd.errors import RocketKDError

EPILOG = """stages, in the order data flows:
  mine      candidate lists for training (BM25 / dense top-k, denoised by the re-ranker)
  train     joint training: re-ranker on labels + retriever distilled from it (RocketQAv2)
  index     encode a corpus with a retriever into a FAISS index folder
  search    retrieve (and optionally re-rank) queries into a TREC run file
  evaluate  MRR@10, nDCG@10, Recall@k, MAP of a run file against qrels
  compare   paired test of two run files (randomization p-value, bootstrap CI)
  pipeline  all of the above, round after round, into one results.json
  config    list every config key with its default and meaning

example:  rocketkd pipeline --config configs/demo.yaml --output outputs/demo
"""


def _config_args(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("--config", type=Path, help="YAML config (see configs/ and `rocketkd config`)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.batch_size=16 (repeatable)",
    )
    p.add_argument("--output", type=Path, help=output_help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rocketkd",
        description="Train dense retrievers by distilling a cross-encoder re-ranker (RocketQAv2), "
        "serve them with FAISS, evaluate them honestly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")

    p = sub.add_parser("train", help="joint training of retriever and re-ranker", description=(
        "Train per train.mode (joint | warmup | contrastive | static) on candidate lists "
        "(candidates.path, or qrels + sampled negatives). Saves retriever/ (SentenceTransformer folder), "
        "reranker/ (CrossEncoder folder), config.yaml, train_log.jsonl and checkpoints/ under --output. "
        "For several GPUs or processes use scripts/train.sh (accelerate launch)."))
    _config_args(p, "output folder (default: output_dir from the config)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --output")
    p.add_argument("--force", action="store_true",
                   help="with --resume: continue even though config keys changed since the run started (else refused)")

    p = sub.add_parser("mine", help="mine and denoise candidate lists", description=(
        "Retrieve the top mining.depth passages for each training query (BM25 on the first round, else the "
        "--retriever's index), drop judged positives, denoise with --reranker, mix in sampled negatives, and "
        "write candidate lists (JSONL + .meta.json provenance) that `rocketkd train` reads."))
    _config_args(p, "candidate list file to write (default: <output_dir>/candidates.jsonl)")
    p.add_argument("--retriever", help="retriever folder (default: BM25 or the base encoder, per mining.first_round)")
    p.add_argument("--reranker", help="re-ranker folder used to denoise (default: no denoising)")

    p = sub.add_parser("index", help="encode a corpus into a FAISS index folder", description=(
        "Encode the corpus with the retriever in bounded memory and save index.faiss, ids.txt, meta.json and "
        "the encoder under --output (atomically)."))
    p.add_argument("--model", required=True, help="retriever folder (or 'packaged' for all-MiniLM-L6-v2)")
    p.add_argument("--corpus", required=True, help="corpus.jsonl (BEIR), collection.tsv (MS MARCO) or a dataset folder")
    p.add_argument("--output", required=True, type=Path, help="index folder to write")
    p.add_argument("--factory", default="Flat", help="faiss index_factory string, inner product (default Flat)")
    p.add_argument("--batch-size", type=int, default=128, help="passages per encoding batch")
    p.add_argument("--autocast", default="auto", choices=["auto", "bf16", "fp16", "no"], help="encoding precision")

    p = sub.add_parser("search", help="retrieve (and re-rank) into a TREC run file", description=(
        "Encode queries with the index's encoder, take the top --k, optionally re-rank with a cross-encoder "
        "(fused with the first-stage score by --fusion-weight; BM25 joins with --bm25-weight), and write a TREC "
        "run file. "
        "With --query, print the hits for one typed query instead."))
    p.add_argument("--index", required=True, type=Path, help="index folder from `rocketkd index`")
    p.add_argument("--queries", help="queries.jsonl / queries.tsv (or a dataset folder with --split)")
    p.add_argument("--split", help="only the queries judged in this qrels split (with a dataset folder)")
    p.add_argument("--query", help="one query typed on the command line")
    p.add_argument("--output", type=Path, help="TREC run file to write")
    p.add_argument("--k", type=int, default=100, help="passages per query (default 100)")
    p.add_argument("--rerank", help="re-ranker folder: re-score the top-k")
    p.add_argument("--fusion-weight", type=float, default=None,
                   help="weight of the re-ranker in the per-query z-scored fusion (1 = re-ranker alone; default: the "
                        "weight the pipeline fitted on dev, stored in the re-ranker folder as rocketkd_fusion.json, "
                        "else 1). A re-ranker folder with rocketkd_prior.json scores prior + cross-encoder")
    p.add_argument("--bm25-weight", type=float, default=0.0,
                   help="weight of BM25 re-scoring the top --k in the same fusion (0 = off); the retriever keeps "
                        "1 - fusion weight - this: the pipeline's hybrid system (results.json: hybrid_weights). "
                        "Builds a BM25 index of the corpus at start")
    p.add_argument("--corpus", help="corpus for the texts to re-rank or print (default: from the index metadata)")

    p = sub.add_parser("evaluate", help="metrics of a run file", description=(
        "MRR@10, nDCG@10 (trec_eval's linear gains), Recall@k and MAP, averaged over the qrels queries that have "
        "a relevant passage (a query missing from the run counts 0)."))
    p.add_argument("--run", required=True, type=Path, help="TREC run file")
    p.add_argument("--qrels", required=True, type=Path, help="qrels (BEIR tsv with header, or TREC 4-column)")
    p.add_argument("--metrics", default=None, help="comma-separated, e.g. MRR@10,nDCG@10,R@100 (default: all)")
    p.add_argument("--json", action="store_true", help="print one JSON object of metric -> value")

    p = sub.add_parser("compare", help="paired test of two run files on one metric", description=(
        "B against A over the qrels queries with a relevant passage (a query missing from a run counts 0): mean A, "
        "mean B, B - A with its percentile bootstrap confidence interval, and the two-sided p-value of a paired "
        "randomization test (exact up to 16 queries, else --samples sign flips). Queries are the sample."))
    p.add_argument("run_a", type=Path, metavar="RUN_A", help="TREC run file of system A (the baseline)")
    p.add_argument("run_b", type=Path, metavar="RUN_B", help="TREC run file of system B")
    p.add_argument("--qrels", required=True, type=Path, help="qrels (BEIR tsv with header, or TREC 4-column)")
    p.add_argument("--metric", default="nDCG@10", help="one metric, e.g. nDCG@10, MRR@10, R@100 (default nDCG@10)")
    p.add_argument("--samples", type=int, default=100_000, help="random sign flips and bootstrap resamples")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the interval (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled test and of the bootstrap")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")

    p = sub.add_parser("pipeline", help="the whole recipe: mine, warm up, train, re-mine, train, evaluate",
                       description=(
        "First-round candidates -> warm-up -> joint training -> index -> re-mine -> joint training -> final index "
        "-> evaluation on the test split. Every stage writes under --output; rerunning continues from the last "
        "completed stage. Ends with results.json (+ PNG curves) in --output."))
    _config_args(p, "run folder (default: output_dir from the config)")
    p.add_argument("--force", action="store_true", help="rerun with changed config keys (else refused): the first "
                   "stage they change and every stage after it are redone")

    sub.add_parser("config", help="list every config key, its default and meaning")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.stage:
        parser.print_help()
        return 0
    try:
        body = _stage_body(args.stage)  # before logging is set up: see there
        logging.basicConfig(
            level=logging.WARNING if args.quiet else logging.INFO,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            datefmt="%H:%M:%S",
        )
        return int(body(args) or 0)
    except RocketKDError as e:
        print(f"rocketkd {args.stage}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in _STORAGE_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"rocketkd {args.stage}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rocketkd {args.stage}: interrupted", file=sys.stderr)
        return 130


# The machine's storage refused a write: the user's to fix (free space, permissions), not a bug to trace back.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _print_config(args: argparse.Namespace) -> int:
    width = max(len(k) for k, _, _ in describe())
    for key, default, help_ in describe():
        print(f"{key:<{width}}  {default:<14} {help_}")
    return 0


def _stage_body(stage: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs ``stage``: ``rocketkd.commands.cmd_<stage>``, or :func:`_print_config`."""
    if stage == "config":
        return _print_config
    # start-up time: commands imports torch, transformers and faiss (seconds), which `--help` and `config` do not
    # need. Imported before logging is set up, so the libraries' import-time INFO lines (faiss's loader) stay out.
    from rocketkd import commands

    return getattr(commands, f"cmd_{stage}")


if __name__ == "__main__":
    sys.exit(main())
