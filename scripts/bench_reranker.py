#!/usr/bin/env python
"""Can a re-ranker warmed up from the packaged bi-encoder beat the retriever? A sweep of its warm-up, measured.

    python scripts/bench_reranker.py --config configs/demo.yaml --output outputs/bench_reranker

Each setting trains the re-ranker on labels (``train.mode=warmup``: listwise CE, positive at column 0, on the
BM25-mined lists of ``candidates.source=mined``), then re-ranks the *base* encoder's top ``eval.rerank_depth`` of
the dev and test queries. Reported per setting and split: nDCG@10 of the base encoder's own order, of the re-ranker
alone, and of their per-query fusion with the weight chosen on dev (``rocketkd.search.rerank``), plus the last logged
re-ranker CE (log G = 2.079 for G = 8 is a re-ranker that learned nothing). One table (``table.md``) and
``raw.json`` under --output; finished settings are read back, so rerunning resumes.

Settings are ``NAME:key=value,key=value`` (config keys, as ``--set``); the default sweep varies steps, the body's
and the new head's learning rates, and which graded qrels count as positives.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_SETTINGS = (
    "demo-20:train.max_steps=20",
    "steps-80:train.max_steps=80",
    "steps-80-body-1e-4:train.max_steps=80,train.lr_reranker=1e-4",
    "steps-80-head-1e-4:train.max_steps=80,train.lr_reranker_head=1e-4",
    "steps-80-grade-1:train.max_steps=80,data.min_positive_grade=1",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--output", type=Path, default=Path("outputs/bench_reranker"))
    ap.add_argument("--setting", dest="settings", action="append", metavar="NAME:KEY=VALUE,...",
                    help="a warm-up setting (repeatable); default: the sweep in DEFAULT_SETTINGS")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="applied to every setting")
    args = ap.parse_args()

    from rocketkd.config import load_config
    from rocketkd.data.formats import load_retrieval_data
    from rocketkd.evaluation.metrics import evaluate_run
    from rocketkd.models import CrossEncoderRanker
    from rocketkd.models.loading import load_retriever
    from rocketkd.pipeline import run_train
    from rocketkd.search.fusion import choose_fusion_weight, fuse_runs
    from rocketkd.search.index import retrieve
    from rocketkd.search.rerank import rerank_run

    settings = [_parse(s) for s in (args.settings or DEFAULT_SETTINGS)]
    base_cfg = load_config(args.config, args.overrides)
    data = load_retrieval_data(base_cfg.data.path, cache_dir=base_cfg.data.cache_dir)
    splits = (base_cfg.data.dev_split, base_cfg.data.test_split)
    depth = base_cfg.eval.rerank_depth
    encoder = load_retriever(base_cfg, base_cfg.model.retriever)  # as the pipeline reads it (lengths, pooling)
    first = {s: retrieve(encoder, data, s, k=depth) for s in splits}

    def ndcg(run, split):
        return float(evaluate_run(run, data.qrels[split], ["nDCG@10"]).mean["nDCG@10"])

    rows = []
    for name, sets in settings:
        out = args.output / name
        done = out / "result.json"
        if done.exists():
            rows.append(json.loads(done.read_text()))
            continue
        cfg = load_config(args.config, [*args.overrides, *sets, "train.mode=warmup", "candidates.source=mined",
                                        "train.teachers={}", "train.eval_dev=false", "train.eval_every=null",
                                        "train.keep_best=false", f"output_dir={out}"])
        result = run_train(cfg, resume=True)
        ce = [h["reranker_ce"] for h in result.history if "reranker_ce" in h]
        ranker = CrossEncoderRanker.from_pretrained(str(result.reranker_dir), max_length=cfg.model.reranker_max_length)
        reranked = {s: rerank_run(ranker, first[s], data.split_queries(s), data.corpus, depth=depth) for s in splits}
        weight, _ = choose_fusion_weight(first[splits[0]], reranked[splits[0]], data.qrels[splits[0]])
        row = {"setting": name, "overrides": sets, "steps": result.steps,
               "reranker_ce_last": ce[-1] if ce else None, "fusion_weight": weight}
        for s in splits:
            row[s] = {"base": ndcg(first[s], s), "reranker": ndcg(reranked[s], s),
                      "fused": ndcg(fuse_runs(first[s], reranked[s], weight), s)}
        done.write_text(json.dumps(row, indent=2))
        rows.append(row)
        _write(args, rows, splits, depth)
    print(_write(args, rows, splits, depth))


def _parse(text: str) -> tuple[str, list[str]]:
    name, sep, rest = text.partition(":")
    if not sep or not name:
        raise SystemExit(f"--setting {text!r}: expected NAME:KEY=VALUE,...")
    return name, [kv for kv in rest.split(",") if kv]


def _write(args, rows: list[dict], splits, depth: int) -> str:
    dev, test = splits
    lines = [f"<!-- python scripts/bench_reranker.py --config {args.config}"
             + "".join(f" --setting {r['setting']}:{','.join(r['overrides'])}" for r in rows)
             + "".join(f" --set {o}" for o in args.overrides) + " -->",
             f"nDCG@10 re-ranking the base encoder's top {depth}; fused = per-query z-scored interpolation, "
             "weight chosen on dev",
             "",
             f"| setting | steps | last CE | {dev}: base | {dev}: re-ranker | {dev}: fused (w) | {test}: base | "
             f"{test}: re-ranker | {test}: fused |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ce = f"{r['reranker_ce_last']:.3f}" if r["reranker_ce_last"] is not None else "-"
        lines.append(f"| {r['setting']} | {r['steps']} | {ce} | {r[dev]['base']:.3f} | {r[dev]['reranker']:.3f} | "
                     f"{r[dev]['fused']:.3f} ({r['fusion_weight']:.1f}) | {r[test]['base']:.3f} | "
                     f"{r[test]['reranker']:.3f} | {r[test]['fused']:.3f} |")
    text = "\n".join(lines)
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "table.md").write_text(text + "\n")
    (args.output / "raw.json").write_text(json.dumps(rows, indent=2))
    return text


if __name__ == "__main__":
    main()
