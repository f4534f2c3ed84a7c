"""One retriever over several collections into one table (BEIR's habit): per BEIR-layout dataset folder, encode
the corpus into an exact in-memory index, search the split's queries, evaluate; then the mean over datasets.

``rocketkd benchmark --model M --datasets A B ...`` prints the table (and writes it as Markdown, TSV or JSON).
Nothing is written into the dataset folders beyond the corpus' Arrow cache the readers keep anyway.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

from rocketkd.data import load_retrieval_data
from rocketkd.errors import ConfigError
from rocketkd.evaluation.metrics import evaluate_run, parse_metric
from rocketkd.io import atomic_write
from rocketkd.models import DualEncoder
from rocketkd.search.index import DenseIndex, search_run

logger = logging.getLogger(__name__)

BENCHMARK_METRICS = ("nDCG@10", "MRR@10", "R@100")


def benchmark(model: DualEncoder, datasets: Sequence[str | Path], *, split: str = "test", k: int = 100,
              metrics: Sequence[str] = BENCHMARK_METRICS, batch_size: int = 128, autocast: str = "auto",
              show_progress: bool = True) -> list[dict]:
    """One row per dataset: ``{"dataset", "queries", "passages", <metric>: value, ...}`` in ``datasets``' order.

    The mean of each metric is over that dataset's judged queries with a relevant passage
    (:func:`~rocketkd.evaluation.metrics.evaluate_run`). Every dataset is checked (folder, ``split`` qrels) before
    any is encoded.
    """
    for name in metrics:
        parse_metric(name)
    if k < 1:
        raise ConfigError(f"k must be at least 1, got {k}")
    if not datasets:
        raise ConfigError("no datasets to benchmark")
    loaded = []
    for folder in datasets:
        data = load_retrieval_data(folder)
        if split not in data.qrels:
            found = ", ".join(data.qrels) or "none"
            raise ConfigError(f"{folder}: no qrels for split {split!r} (found: {found})")
        loaded.append((Path(folder), data))
    rows = []
    for folder, data in loaded:
        index = DenseIndex.build(model, data.corpus, batch_size=batch_size, autocast=autocast,
                                 show_progress=show_progress, distributed=False)
        run = search_run(index, data.split_queries(split), k, autocast=autocast, distributed=False)
        result = evaluate_run(run, data.qrels[split], list(metrics))
        row = {"dataset": folder.name or str(folder), "queries": result.num_queries, "passages": index.ntotal,
               **result.mean}
        logger.info("benchmark %s: %s", row["dataset"], row)
        rows.append(row)
    return rows


def mean_row(rows: Sequence[dict], metrics: Sequence[str]) -> dict:
    """The unweighted mean over datasets (each dataset counts once, as BEIR averages)."""
    return {"dataset": "mean", "queries": sum(r["queries"] for r in rows), "passages": sum(r["passages"] for r in rows),
            **{m: math.fsum(r[m] for r in rows) / len(rows) for m in metrics}}


def format_benchmark(rows: Sequence[dict], metrics: Sequence[str], *, style: str = "markdown") -> str:
    """The rows and their mean as a Markdown table (``style="markdown"``), TSV or JSON."""
    table = [*rows, mean_row(rows, metrics)] if len(rows) > 1 else list(rows)
    if style == "json":
        return json.dumps(table, indent=2)
    head = ["dataset", "queries", "passages", *metrics]
    cells = [[str(r["dataset"]), str(r["queries"]), str(r["passages"]), *(f"{r[m]:.4f}" for m in metrics)]
             for r in table]
    if style == "tsv":
        return "\n".join("\t".join(line) for line in [head, *cells])
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(head)]
    line = lambda values: "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, cells)])


def is_benchmark_table(path: str | Path) -> bool:
    """Whether ``path`` holds a table :func:`write_benchmark` wrote (Markdown, TSV or JSON): one a rerun may replace."""
    try:
        head = Path(path).read_text(encoding="utf-8")[:200]
    except (OSError, UnicodeDecodeError):
        return False
    return head.startswith(("| dataset ", "dataset\tqueries\tpassages")) or (
        head.startswith("[") and '"dataset"' in head)


def write_benchmark(path: str | Path, rows: Sequence[dict], metrics: Sequence[str]) -> Path:
    """The table to ``path``: JSON for ``.json``, TSV for ``.tsv``, else Markdown. Written atomically."""
    path = Path(path)
    style = {".json": "json", ".tsv": "tsv"}.get(path.suffix.lower(), "markdown")
    with atomic_write(path) as f:
        f.write(format_benchmark(rows, metrics, style=style) + "\n")
    return path
