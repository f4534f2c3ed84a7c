"""The pipeline's report: each system's test-split metrics from its run file, written as ``results.json`` (the
numbers), ``results.md`` (one table) and ``curves.png`` (:mod:`rocketkd.evaluation.plots`), and printed.

``results.json`` holds what :func:`write_results` is given; the pipeline fills it (see
:func:`rocketkd.pipeline.run_pipeline`) with ``dataset``, ``split``, ``num_queries``, ``systems`` (system ->
{metric: mean over the split's judged queries}, :data:`REPORT_METRICS`), ``run_tags`` (system -> the TREC tag its
run file carries, ``eval.run_tag``-SYSTEM; results.md lists them under the table), ``teachers``, ``fusion_weight``,
``hybrid_weights`` and ``stages`` (seconds per stage).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from rocketkd.data.formats import read_trec_run
from rocketkd.evaluation.compare import bootstrap_ci
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.evaluation.plots import plot_run
from rocketkd.io import atomic_write, write_json
from rocketkd.types import Qrels

__all__ = ["CURVE_KS", "REPORT_METRICS", "evaluate_systems", "load_results", "system_intervals", "write_results"]

logger = logging.getLogger(__name__)

REPORT_METRICS = ["MRR@10", "nDCG@10", "R@10", "R@100"]
CURVE_KS = (1, 5, 10, 20, 50, 100)  # the recall curve of the plot


def evaluate_systems(
    run_files: Mapping[str, Path], qrels: Qrels
) -> tuple[dict[str, dict[str, float]], dict[str, dict[int, float]]]:
    """``(systems, curves)``: :data:`REPORT_METRICS` of each run file that exists (system -> {metric: value}) and
    its recall at :data:`CURVE_KS` (system -> {k: R@k}), in ``run_files``' order."""
    systems, curves = {}, {}
    for system, path in run_files.items():
        if not path.exists():
            continue
        run = read_trec_run(path)
        res = evaluate_run(run, qrels, REPORT_METRICS + [f"R@{k}" for k in (1, 5, 20, 50)])
        systems[system] = {m: res.mean[m] for m in REPORT_METRICS}
        curves[system] = {k: res.mean[f"R@{k}"] for k in CURVE_KS}
    return systems, curves


def system_intervals(run_files: Mapping[str, Path], qrels: Qrels, metric: str = "nDCG@10",
                     level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Per system, the percentile bootstrap interval of ``metric``'s mean over the queries (queries resampled)."""
    out = {}
    for system, path in run_files.items():
        if path.exists():
            per_query = [v[metric] for v in evaluate_run(read_trec_run(path), qrels, [metric]).per_query.values()]
            out[system] = bootstrap_ci([0.0] * len(per_query), per_query, level=level, samples=2_000)
    return out


def write_results(out: Path, results: dict, curves: dict[str, dict[int, float]], *, plot: bool = True,
                  intervals: Mapping[str, tuple[float, float]] | None = None, group_size: int | None = None) -> None:
    """Write ``results.json`` and ``results.md`` into ``out``, print the table, and draw ``curves.png`` (when
    ``plot``; a missing matplotlib only logs a warning). ``results`` needs ``dataset``, ``split``,
    ``num_queries`` and ``systems``; ``intervals`` (system -> nDCG@10 interval) and ``group_size`` (the lists' G)
    go to the plot."""
    systems = results["systems"]
    dataset, split, num_queries = results["dataset"], results["split"], results["num_queries"]
    write_json(out / "results.json", results)
    with atomic_write(out / "results.md") as f:
        f.write(f"# {dataset} — {split} split ({num_queries} queries)\n\n")
        f.write("| system | " + " | ".join(REPORT_METRICS) + " |\n|---|" + "---|" * len(REPORT_METRICS) + "\n")
        for name, m in systems.items():
            f.write(f"| {name} | " + " | ".join(f"{m[k]:.3f}" for k in REPORT_METRICS) + " |\n")
        if results.get("run_tags"):  # the run files' TREC tags (6th column), system by system
            f.write("\nRun tags: " + ", ".join(f"{name} `{tag}`" for name, tag in results["run_tags"].items()) + "\n")
    print(f"\n{dataset}, {split} split ({num_queries} queries):")
    for name, m in systems.items():
        print(f"  {name:<10}" + "  ".join(f"{k}={m[k]:.3f}" for k in REPORT_METRICS))
    if plot:
        try:
            plot_run(out, curves, systems=systems, intervals=intervals, group_size=group_size)
        except ImportError as e:  # matplotlib is a dependency; keep results even if a user removed it
            logger.warning("no plot: %s", e)
    logger.info("results written to %s", out / "results.json")


def load_results(path: str | Path) -> dict:
    """A ``results.json`` as written by :func:`write_results`."""
    return json.loads(Path(path).read_text())
