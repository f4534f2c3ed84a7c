#!/usr/bin/env python
"""The re-ranker prior's cross-fitted evidence for several fold counts, on held-out queries only (dev + train).

    python scripts/prior_evidence.py --config configs/demo.yaml --folds 2 5 10 [--lists RUN/round1/candidates.jsonl]

The members (BM25, the base encoder) score the student's top ``eval.rerank_depth`` of every dev and judged train
query once; then :func:`rocketkd.teachers.prior.fit_prior` runs with each ``--folds``. Prints, per fold count, the
out-of-fold nDCG@10 against the student's, the paired randomization p-value and whether the prior is accepted. No
test query is read: this is where ``pipeline.prior_folds`` is chosen (docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import tempfile

from rocketkd.candidates.lists import build_lists
from rocketkd.candidates.title_queries import apply_data_config
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data, read_candidates
from rocketkd.teachers.prior import fit_prior_on, prior_inputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--folds", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--lists", help="the training lists whose student spread sets the members' temperature (a "
                    "pipeline's round1/candidates.jsonl; default: built as the config says, in a temporary folder)")
    ap.add_argument("--output", help="also write the evidence per fold count as JSON here")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    data = apply_data_config(cfg, load_retrieval_data(cfg.data.path, cache_dir=cfg.data.cache_dir))
    if args.lists:
        lists = read_candidates(args.lists, corpus=data.corpus, queries=data.all_queries())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            lists = build_lists(cfg, data, tmp)
    inputs = prior_inputs(cfg, data, lists)
    rows = {}
    for k in args.folds:
        cfg.pipeline.prior_folds = k
        e = fit_prior_on(cfg, data, lists, inputs=inputs).evidence
        rows[k] = e
        print(f"folds {k:>2}: out-of-fold nDCG@10 {e['out_of_fold_ndcg@10']:.4f} vs student {e['student_ndcg@10']:.4f} "
              f"({e['gain']:+.4f}, p={e['p_value']:.3f}, {e['queries']} queries) -> "
              f"{'accepted ' + json.dumps(e['fitted_weights']) if e['accepted'] else 'rejected'}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({str(k): v for k, v in rows.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
