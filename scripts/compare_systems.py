#!/usr/bin/env python
"""The ablation table of docs/results.md: each training recipe over several seeds, mean ± std on the test split.

    python scripts/compare_systems.py --config configs/demo.yaml --seeds 1 2 3 --output outputs/compare

Recipes (pipeline.round_mode): contrastive (labels only), static (frozen warmed-up re-ranker), joint (online
re-ranker, RocketQAv2), auto (teachers checked on dev, ensemble). For one seed the recipes share the baselines, the
first-round candidates and the warm-up (the stages before they differ): they are run once and copied, and the
pipeline resumes from there. Prints a markdown table and writes it with the raw numbers to --output.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

SHARED = ("baselines", "mine-0", "warmup")
MODES = ("contrastive", "static", "joint", "auto")
METRICS = ("MRR@10", "nDCG@10", "R@10", "R@100")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--output", type=Path, default=Path("outputs/compare"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()

    from rocketkd.config import load_config
    from rocketkd.pipeline import run_pipeline

    rows: dict[str, list[dict]] = {}
    for seed in args.seeds:
        first: Path | None = None
        for mode in args.modes:
            out = args.output / f"seed{seed}" / mode
            if first is not None and not (out / "stages.json").exists():
                _copy_shared(first, out)
            cfg = load_config(args.config, [*args.overrides, f"train.seed={seed}", f"candidates.seed={seed}",
                                            f"mining.seed={seed}", f"pipeline.round_mode={mode}", f"output_dir={out}",
                                            "pipeline.plot=false"])
            res = run_pipeline(cfg)["systems"]
            first = first or out
            if "bm25" not in rows:
                rows["bm25"], rows["base"] = [], []
            if mode == args.modes[0]:
                rows["bm25"].append(res["bm25"])
                rows["base"].append(res["base"])
            rows.setdefault(f"retriever ({mode})", []).append(res["retriever"])
            rows.setdefault(f"reranked ({mode})", []).append(res["reranked"])
    table = _table(rows, args)
    print(table)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "table.md").write_text(table + "\n")
    (args.output / "raw.json").write_text(json.dumps(rows, indent=2))


def _copy_shared(src: Path, dst: Path) -> None:
    """Start a recipe from another recipe's shared stages (same seed, so identical work)."""
    dst.mkdir(parents=True, exist_ok=True)
    for sub in ("runs", "round0", "warmup"):
        if (src / sub).exists():
            shutil.copytree(src / sub, dst / sub, dirs_exist_ok=True)
    stages = json.loads((src / "stages.json").read_text())
    kept = {k: v for k, v in stages.items() if k in SHARED}
    for v in kept.values():  # paths inside the stage records point at the source run
        for key, value in list(v.items()):
            if isinstance(value, str) and value.startswith(str(src)):
                v[key] = str(dst) + value[len(str(src)):]
    for f in (dst / "runs").glob("*"):
        if not f.name.startswith(("bm25.", "base.")):
            f.unlink()
    (dst / "stages.json").write_text(json.dumps(kept, indent=2))


def _table(rows: dict[str, list[dict]], args) -> str:
    head = "| system | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS)
    lines = [f"<!-- python scripts/compare_systems.py --config {args.config} --seeds {' '.join(map(str, args.seeds))}"
             f" {' '.join('--set ' + o for o in args.overrides)} -->", head]
    for name, results in rows.items():
        cells = []
        for m in METRICS:
            vals = [r[m] for r in results]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        lines.append(f"| {name} (n={len(results)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
