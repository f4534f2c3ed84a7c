"""``rocketkd <stage>``: thin wrappers over the Python API, one sub-command per stage of the flow.

data -> mine -> train -> index -> search -> evaluate, or all of it with ``pipeline``. Any ``RocketKDError`` is
printed as one line (file and line, config key, or step) with exit status 2 and no traceback; so is a full disk,
a read-only folder or a denied permission met while writing. Exit status (docs/reliability.md): 0 done, 2 refused
(bad input or output, a value error, a failed check), 130 interrupted (Ctrl-C), 143 stopped by SIGTERM after the
training checkpoint (rerun ``train --resume``, or ``pipeline``, to continue).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import tqdm.std
import yaml

from rocketkd.config import describe, load_config
from rocketkd.errors import RocketKDError
from rocketkd.io import ONE_FILE_OUTPUTS, RUN_LOG, names_a_file, output_kind

EPILOG = """stages, in the order data flows:
  mine      candidate lists for training (BM25 / dense top-k, denoised by the re-ranker)
  train     joint training: re-ranker on labels + retriever distilled from it (RocketQAv2)
  index     encode a corpus with a retriever into a FAISS index folder
  search    retrieve (and optionally re-rank) queries into a TREC run file
  evaluate  MRR@10, nDCG@10, Recall@k, MAP of a run file against qrels
  compare   paired test of two run files (randomization p-value, bootstrap CI)
  benchmark one retriever over several BEIR-layout datasets into one table
  pipeline  all of the above, round after round, into one results.json
  config    list every config key with its default and meaning

--output is where a stage writes, on every stage: a folder (a new one, or one rocketkd wrote as the same kind of
output). Stages that write one file (mine, search, benchmark) put it into the folder under a fixed name, or write
the file itself when the path ends in its suffix (run.trec, candidates.jsonl, table.md).

example:  rocketkd pipeline --config configs/demo.yaml --output outputs/demo
"""


def _config_args(p: argparse.ArgumentParser, output_help: str) -> None:
    p.add_argument("--config", type=Path, help="YAML config (see configs/ and `rocketkd config`)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override one config key, e.g. --set train.batch_size=16 (repeatable)",
    )
    p.add_argument("--output", type=Path, help=output_help)


def _console_flags() -> argparse.ArgumentParser:
    """-q / -v / --no-progress, accepted before and after the stage: both parsers hold them, with no default, so a
    flag given in either place reaches the namespace (the stage's parser copies what it saw over the main one's)."""
    flags = argparse.ArgumentParser(add_help=False)
    group = flags.add_argument_group("console")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="errors only, no progress bars (results still print)")
    group.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                       help="also rocketkd's and the libraries' INFO lines (-vv: DEBUG)")
    group.add_argument("--no-progress", action="store_true", default=argparse.SUPPRESS, help="no progress bars")
    return flags


def build_parser() -> argparse.ArgumentParser:
    flags = _console_flags()
    parser = argparse.ArgumentParser(
        prog="rocketkd",
        description="Train dense retrievers by distilling a cross-encoder re-ranker (RocketQAv2), "
        "serve them with FAISS, evaluate them honestly.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[flags],
    )
    sub = parser.add_subparsers(dest="stage", metavar="STAGE")

    def stage(name: str, **kwargs) -> argparse.ArgumentParser:  # every stage takes the console flags too
        return sub.add_parser(name, parents=[flags], **kwargs)

    p = stage("train", help="joint training of retriever and re-ranker", description=(
        "Train per train.mode (joint | warmup | contrastive | static) on candidate lists "
        "(candidates.path, or qrels + sampled negatives). Saves retriever/ (SentenceTransformer folder), "
        "reranker/ (CrossEncoder folder), config.yaml, train_log.jsonl and checkpoints/ under --output. "
        "For several GPUs or processes use scripts/train.sh (accelerate launch)."))
    _config_args(p, "output folder (default: output_dir from the config)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --output")
    p.add_argument("--force", action="store_true",
                   help="with --resume: continue even though config keys changed since the run started (else refused)")

    p = stage("mine", help="mine and denoise candidate lists", description=(
        "Retrieve the top mining.depth passages for each training query (BM25 on the first round, else the "
        "--retriever's index), drop judged positives, denoise with --reranker, mix in sampled negatives, and "
        "write candidate lists (JSONL + .meta.json provenance) that `rocketkd train` reads."))
    _config_args(p, "output folder: candidates.jsonl (+ .meta.json) goes into it; a path ending in .jsonl[.gz] is "
                 "the file itself (default: <output_dir>/candidates.jsonl)")
    p.add_argument("--retriever", help="retriever folder (default: BM25 or the base encoder, per mining.first_round)")
    p.add_argument("--reranker", help="re-ranker folder used to denoise (default: no denoising)")

    p = stage("index", help="encode a corpus into a FAISS index folder", description=(
        "Encode the corpus with the retriever in bounded memory and save index.faiss, ids.txt, meta.json and "
        "the encoder under --output (atomically)."))
    p.add_argument("--model", required=True, help="retriever folder (or 'packaged' for all-MiniLM-L6-v2)")
    p.add_argument("--corpus", required=True, help="corpus.jsonl (BEIR), collection.tsv (MS MARCO) or a dataset folder")
    p.add_argument("--output", required=True, type=Path, help="index folder to write")
    p.add_argument("--factory", default=None, help="faiss index_factory string, inner product (default: "
                   "index.factory of the config, Flat)")
    p.add_argument("--batch-size", type=int, default=None, help="passages per encoding batch (default: "
                   "index.batch_size, 128)")
    p.add_argument("--autocast", default=None, choices=["auto", "bf16", "fp16", "no"],
                   help="encoding precision (default: index.autocast, auto)")
    p.add_argument("--config", type=Path, help="YAML config: the retriever is built with its model.* settings "
                   "(lengths, pooling, similarity, as it was trained) and index.* gives the defaults above")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable), as for train and pipeline")

    p = stage("search", help="retrieve (and re-rank) into a TREC run file", description=(
        "Encode queries with the index's encoder, take the top --k, optionally re-rank with a cross-encoder "
        "(fused with the first-stage score by --fusion-weight; BM25 joins with --bm25-weight), and write a TREC "
        "run file. "
        "With --query, print the hits for one typed query instead."))
    p.add_argument("--index", required=True, type=Path, help="index folder from `rocketkd index`")
    p.add_argument("--queries", help="queries.jsonl / queries.tsv (or a dataset folder with --split)")
    p.add_argument("--split", help="only the queries judged in this qrels split (with a dataset folder)")
    p.add_argument("--query", help="one query typed on the command line")
    p.add_argument("--output", type=Path, help="output folder: the TREC run goes into it as run.trec; a path ending in "
                   ".trec, .run or .txt (or .gz) is the run file itself")
    p.add_argument("--k", type=int, default=100, help="passages per query (default 100)")
    p.add_argument("--tag", default="rocketkd", help="TREC run tag: the run file's 6th column (default rocketkd)")
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
    p.add_argument("--batch-size", type=int, default=128, help="queries per encoding batch (as index's --batch-size)")
    p.add_argument("--autocast", default=None, choices=["auto", "bf16", "fp16", "no"],
                   help="query encoding precision (default: the precision the index's passages were encoded in)")

    p = stage("evaluate", help="metrics of a run file", description=(
        "MRR@10, nDCG@10 (trec_eval's linear gains), Recall@k and MAP, averaged over the qrels queries that have "
        "a relevant passage (a query missing from the run counts 0). Run and qrels may be gzip'd. The table's last "
        "line names the run's tag (its 6th column: search --tag, pipeline --tag)."))
    p.add_argument("--run", required=True, type=Path, help="TREC run file (or .gz)")
    p.add_argument("--qrels", required=True, type=Path, help="qrels (BEIR tsv with header, or TREC 4-column; or .gz)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated, e.g. MRR@10,nDCG@10,R@100 (default: all); trec_eval's and ranx's names "
                        "work too: ndcg_cut_10, recip_rank, recall_100, P_10, map_cut_10, ndcg@10, mrr@10")
    p.add_argument("--relevance-level", "--min-grade", dest="relevance_level", type=int, default=1, metavar="GRADE",
                   help="lowest grade that counts as relevant for MRR, R@k, P@k and MAP (trec_eval -l; default 1); "
                        "nDCG's gains are the grades themselves")
    p.add_argument("--per-query", type=Path, metavar="FILE",
                   help="also write every query's metrics: FILE.json (query -> metric -> value) or a TSV (one row a "
                        "query, one column a metric)")
    p.add_argument("--json", action="store_true", help="print one JSON object of metric -> value")

    p = stage("compare", help="paired test of two run files on one metric", description=(
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

    p = stage("benchmark", help="one retriever over several BEIR-layout datasets into one table", description=(
        "For each dataset folder: encode its corpus (exact inner-product index, in memory), search the --split "
        "queries, evaluate; print one row per dataset and their mean (BEIR's habit)."))
    p.add_argument("--model", required=True, help="retriever folder (or 'packaged' for all-MiniLM-L6-v2)")
    p.add_argument("--datasets", required=True, nargs="+", help="dataset folders in BEIR layout")
    p.add_argument("--split", default="test", help="qrels split to evaluate (default test)")
    p.add_argument("--k", type=int, default=100, help="passages retrieved per query (default 100)")
    p.add_argument("--metrics", default="nDCG@10,MRR@10,R@100", help="comma-separated metric names")
    p.add_argument("--batch-size", type=int, default=128, help="passages per encoding batch")
    p.add_argument("--autocast", default="auto", choices=["auto", "bf16", "fp16", "no"], help="encoding precision")
    p.add_argument("--output", type=Path, help="also write the table: an output folder gets benchmark.md and "
                   "benchmark.json; a path ending in .md (Markdown), .tsv or .json is that file")

    p = stage("pipeline", help="the whole recipe: mine, warm up, train, re-mine, train, evaluate",
                       description=(
        "First-round candidates -> warm-up -> joint training -> index -> re-mine -> joint training -> final index "
        "-> evaluation on the test split. Every stage writes under --output; rerunning continues from the last "
        "completed stage. Ends with results.json (+ PNG curves) in --output."))
    _config_args(p, "run folder (default: output_dir from the config)")
    p.add_argument("--force", action="store_true", help="rerun with changed config keys (else refused): the first "
                   "stage they change and every stage after it are redone")
    p.add_argument("--tag", help="TREC run tag of the run files: each system's is TAG-SYSTEM, named in results.json/.md "
                   "(= --set eval.run_tag=TAG; default rocketkd)")

    p = stage("config", help="list every config key, its default and meaning; or show a merged config as YAML",
              description=("Without arguments: every config key with its default and meaning. With --config and/or "
                           "--set (or --yaml): the merged, checked config as YAML -- what a stage given the same "
                           "flags would run with (pipe it to a file to keep a recipe)."))
    p.add_argument("--config", type=Path, help="YAML config to merge over the defaults")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config key (repeatable)")
    p.add_argument("--yaml", action="store_true", help="print the merged config as YAML even without --config/--set")
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.stage:
        parser.print_help()
        return 0
    rank0 = _launched_rank() == 0
    # -1 errors only, 0 warnings (the default), 1 INFO, 2 DEBUG; the other processes of a launch stay silent
    level = -1 if getattr(args, "quiet", False) or not rank0 else min(int(getattr(args, "verbose", 0) or 0), 2)
    progress = level >= 0 and not getattr(args, "no_progress", False)
    with contextlib.ExitStack() as stack:
        stack.enter_context(_library_noise(level))
        if not progress:
            stack.enter_context(_no_progress_bars())
        if not rank0:  # under torchrun / accelerate launch only rank 0 prints results
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        header = f"rocketkd {shlex.join(sys.argv[1:] if argv is None else [str(a) for a in argv])} (pid {os.getpid()})"
        log = stack.enter_context(_logging(level, _log_target(args) if rank0 else None, header))
        started = time.monotonic()
        code = _run(args, log)
        log.info("rocketkd %s: exit %d after %.1f s", args.stage, code, time.monotonic() - started)
        return code


def _run(args: argparse.Namespace, log: logging.Logger) -> int:
    try:
        return int(_stage_body(args.stage)(args) or 0)
    except RocketKDError as e:
        return _refuse(args.stage, str(e), log)
    except OSError as e:
        if e.errno not in _STORAGE_ERRORS:
            raise
        where = f"{e.filename}: " if e.filename else ""
        return _refuse(args.stage, f"{where}{e.strerror or e}", log)
    except KeyboardInterrupt:
        print(f"rocketkd {args.stage}: interrupted", file=sys.stderr)
        log.info("interrupted", extra={_FILE_ONLY: True})
        return 130


def _refuse(stage: str, message: str, log: logging.Logger) -> int:
    print(f"rocketkd {stage}: error: {message}", file=sys.stderr)
    log.error("error: %s", message, extra={_FILE_ONLY: True})
    return 2


# The machine's storage refused a write: the user's to fix (free space, permissions), not a bug to trace back.
_STORAGE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


def _print_config(args: argparse.Namespace) -> int:
    if getattr(args, "config", None) or getattr(args, "overrides", None) or getattr(args, "yaml", False):
        # the same loading (and checks) as every stage: a bad key or value is one line and exit 2, from main()
        cfg = load_config(args.config, args.overrides)
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=False), end="")
        return 0
    width = max(len(k) for k, _, _ in describe())
    for key, default, help_ in describe():
        print(f"{key:<{width}}  {default:<14} {help_}")
    return 0


def _stage_body(stage: str) -> Callable[[argparse.Namespace], int]:
    """The function that runs ``stage``: ``rocketkd.commands.cmd_<stage>``, or :func:`_print_config`."""
    if stage == "config":
        return _print_config
    # start-up time: commands imports torch, transformers and faiss (seconds), which `--help` and `config` do not
    # need.
    from rocketkd import commands

    return getattr(commands, f"cmd_{stage}")


# ---------------------------------------------------------------------------------------------------------------
# The console: one result line per stage on stdout, warnings and errors on stderr, progress bars; the rest goes to
# the run's log file (rocketkd.log in its output folder) or nowhere.

LOG_FILE = RUN_LOG
_FILE_ONLY = "rocketkd_file_only"  # a record's attribute: for the log file, not the console
_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# the libraries' loggers held at WARNING unless -vv: faiss's loader reports each CPU build it could not load,
# bm25s sets its own logger to DEBUG
_CHATTY = ("faiss", "bm25s", "accelerate", "datasets", "urllib3", "httpx", "filelock")


def _launched_rank() -> int:
    """This process's rank under torchrun / accelerate launch (their RANK), 0 for a lone process."""
    try:
        return int(os.environ.get("RANK", "0") or 0)
    except ValueError:
        return 0


def _log_target(args: argparse.Namespace) -> tuple[Path, str] | None:
    """(output folder, kind of output) of a stage that writes into a folder; None for the others."""
    if args.stage == "index":
        return Path(args.output), "index"
    if args.stage in ("train", "pipeline"):
        if getattr(args, "output", None):
            return Path(args.output), args.stage
        try:  # the folder named by the config; a config that does not load is the stage's error to report
            return Path(load_config(args.config, args.overrides).output_dir), args.stage
        except Exception:
            return None
    if args.stage in ONE_FILE_OUTPUTS and getattr(args, "output", None) and not names_a_file(args.output, args.stage):
        return Path(args.output), args.stage  # an --output folder of mine / search / benchmark
    return None


def _stage_line(record: logging.LogRecord) -> bool:
    """The pipeline's one INFO line per stage ("stage NAME: done in ...", "... already done, skipped"), which the
    console shows by default although it holds rocketkd's other INFO lines back for -v."""
    return record.name == "rocketkd.pipeline" and str(record.msg).startswith("stage ") and "done" in str(record.msg)


class _RunLog(logging.Handler):
    """The run's lines for ``folder/rocketkd.log``, appended only once rocketkd has claimed ``folder`` as a ``kind``
    output (its marker is there): never into a folder it refused or has not claimed yet. Every line is kept, so a
    folder swapped in whole (an index) still gets the lines written before the swap; a rerun appends."""

    def __init__(self, folder: Path, kind: str, header: str) -> None:
        super().__init__(logging.INFO)
        self.file, self.kind = folder / LOG_FILE, kind
        self.lines = [f"==> {header}"]
        self.written_to: tuple[int, int] | None = None  # (device, inode) of the file that holds our lines
        self.setFormatter(logging.Formatter(_LOG_FORMAT, "%Y-%m-%d %H:%M:%S"))
        # rocketkd's INFO lines, everyone's warnings: the libraries' INFO lines are for -v on the console
        self.addFilter(lambda r: r.levelno >= logging.WARNING or r.name.startswith("rocketkd"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:
            self.handleError(record)
            return
        self._write(self.lines[-1:])

    def _write(self, new: list[str]) -> None:
        if output_kind(self.file.parent) != self.kind:
            return
        try:
            st = self.file.stat()
            same = (st.st_dev, st.st_ino) == self.written_to
        except OSError:
            same = False
        try:
            with open(self.file, "a", encoding="utf-8") as f:
                f.writelines(line + "\n" for line in (new if same else self.lines))
            st = self.file.stat()
            self.written_to = (st.st_dev, st.st_ino)
        except OSError:  # a log file must never fail the run it records
            pass

    def close(self) -> None:
        self._write([])
        super().close()


class _StdoutTee(io.TextIOBase):
    """stdout as it was, each complete line also logged for the log file (what the stage printed)."""

    def __init__(self, stream, log: logging.Logger) -> None:
        self.stream, self.log, self.pending = stream, log, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            if line.strip():
                self.log.info("%s", line, extra={_FILE_ONLY: True})
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


@contextlib.contextmanager
def _logging(level: int, target: tuple[Path, str] | None, header: str) -> Iterator[logging.Logger]:
    """Console handler at WARNING (``level`` 0), ERROR (-1), INFO (1) or DEBUG (2); the log file, if any, at INFO;
    stdout teed into the log file. Everything is put back as it was at exit (the CLI also runs in-process)."""
    root = logging.getLogger()
    console = logging.StreamHandler(sys.stderr)
    threshold = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}.get(level, logging.DEBUG)
    console.setLevel(logging.INFO if level == 0 else threshold)  # the filter below holds the threshold
    console.setFormatter(logging.Formatter(_LOG_FORMAT, "%H:%M:%S"))
    console.addFilter(lambda r: not getattr(r, _FILE_ONLY, False) and (r.levelno >= threshold or _stage_line(r)))
    handlers: list[logging.Handler] = [console] + ([_RunLog(*target, header)] if target else [])
    chatty = [logging.getLogger(name) for name in _CHATTY]
    saved = (root.level, [lg.level for lg in chatty])
    root.setLevel(logging.DEBUG if level >= 2 else logging.INFO)
    for lg in chatty:
        lg.setLevel(logging.DEBUG if level >= 2 else logging.WARNING)
    for h in handlers:
        root.addHandler(h)
    log = logging.getLogger("rocketkd.cli")
    try:
        with contextlib.redirect_stdout(_StdoutTee(sys.stdout, log)):
            yield log
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(saved[0])
        for lg, old in zip(chatty, saved[1]):
            lg.setLevel(old)


@contextlib.contextmanager
def _library_noise(level: int) -> Iterator[None]:
    """transformers' load reports and "Loading weights" / "Writing model shards" bars off unless -v (its INFO lines
    with -vv): through its
    environment variables when it is not imported yet, through its API when it is; both put back at exit."""
    names = ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")
    saved_env = {name: os.environ.get(name) for name in names}
    verbosity = {0: "error", 1: "warning"}.get(max(level, 0), "info")
    os.environ["TRANSFORMERS_VERBOSITY"] = verbosity
    if level < 1:
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    hf = None
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf  # already imported: costs nothing here

        saved_hf = (hf.get_verbosity(), hf.is_progress_bar_enabled())
        hf.set_verbosity(logging.getLevelName(verbosity.upper()))
        if level < 1:
            hf.disable_progress_bar()
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if hf is not None:
            hf.set_verbosity(saved_hf[0])
            (hf.enable_progress_bar if saved_hf[1] else hf.disable_progress_bar)()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Every tqdm bar of the run disabled (rocketkd's, transformers', bm25s'), whatever ``disable=`` its caller gave."""
    original = tqdm.std.tqdm.__init__

    def silent(self, *args, **kwargs):
        kwargs["disable"] = True
        original(self, *args, **kwargs)

    tqdm.std.tqdm.__init__ = silent
    try:
        yield
    finally:
        tqdm.std.tqdm.__init__ = original


if __name__ == "__main__":
    sys.exit(main())
