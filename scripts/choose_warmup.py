#!/usr/bin/env python
"""Choose how long the re-ranker's cross-encoder learns from the labels before the joint round
(``pipeline.warmup_epochs``), on two folds of train; no test query is read.

    python scripts/choose_warmup.py --config configs/scifact.yaml --prior RUN/prior --output OUT [--epochs 1 2 3]
        [--lists RUN/round1/candidates.jsonl]

``--prior``: a finished pipeline's ``prior/`` folder. ``--lists``: the judged training lists (a pipeline's
``round*/candidates.jsonl``); without it they are mined with the base encoder into OUT as the pipeline's first round
does. For each ``--epochs`` value, ``g`` is trained over the prior on one fold of the judged queries and checked on
the other fold (dev queries included), then the folds swap (``rocketkd.pretrain.choose_warmup_epochs``). Prints one
line per length and the choice; writes them to ``OUT/choice.json``. A rerun with the same OUT resumes.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from rocketkd.candidates.mining import mine
from rocketkd.candidates.title_queries import apply_data_config
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data, read_candidates
from rocketkd.pretrain import choose_warmup_epochs
from rocketkd.search.cache import embedding_cache
from rocketkd.teachers.prior import Prior


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--prior", required=True, help="a folder holding rocketkd_prior.json (a pipeline's prior/)")
    ap.add_argument("--output", required=True, help="the choice's folder (fold runs, choice.json)")
    ap.add_argument("--epochs", type=float, nargs="+", default=[1.0, 2.0], help="warm-up lengths to try (passes)")
    ap.add_argument("--lists", help="judged training lists (candidates.jsonl); default: mined with the base encoder")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config, args.overrides)
    prior = Prior.load(args.prior)
    if prior is None:
        ap.error(f"--prior {args.prior}: no rocketkd_prior.json there")
    if any(not e > 0 for e in args.epochs):
        ap.error(f"--epochs: every length must be > 0, got {args.epochs}")
    if args.lists and not Path(args.lists).is_file():
        ap.error(f"--lists {args.lists}: no such file")
    out = Path(args.output)
    data = apply_data_config(cfg, load_retrieval_data(cfg.data.path, cache_dir=cfg.data.cache_dir))
    with embedding_cache(out / "embedding-cache"):
        lists_path = Path(args.lists) if args.lists else out / "candidates.jsonl"
        if not lists_path.exists():
            mine(cfg, output=lists_path, data=data)
        lists = read_candidates(lists_path, corpus=data.corpus, queries=data.all_queries())
        choice = choose_warmup_epochs(cfg, data, out, prior, lists, epochs=tuple(args.epochs))
    for t in choice["tried"]:
        print(f"{t['epochs']:g} epoch(s): prior + g nDCG@10 {t['reranker_ndcg@10']:.4f} vs prior "
              f"{t['prior_ndcg@10']:.4f} ({t['delta']:+.4f}, p={t['p_value']:.3f}, {t['queries']} held-out queries; "
              f"g spread {t['g_std']:.3f}, prior {t['prior_std']:.3f})")
    print(f"pipeline.warmup_epochs: {choice['epochs']:g}" if choice["epochs"] else
          "pipeline.warmup: false (no length gained significantly at pipeline.prior_alpha)")
    (out / "choice.json").write_text(json.dumps({"config": args.overrides, "lists": str(lists_path), **choice},
                                                indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
