#!/usr/bin/env python
"""The pipeline's ``pretrain`` stage alone: the re-ranker's cross-encoder pre-trained over a fitted prior on
label-free queries made from the corpus, and its check on held-out queries (dev + judged train; no test query).

    python scripts/pretrain_reranker.py --config configs/scifact.yaml --prior RUN/prior --output OUT \
        --set pipeline.reranker_pretrain=1200 [--set pipeline.reranker_pretrain_cut=title]
    python scripts/pretrain_reranker.py --config configs/demo.yaml --prior RUN/prior --output OUT \
        --set pipeline.reranker_pretrain_data=data/scifact      # another collection's judged train lists

``--prior``: a finished pipeline's ``prior/`` folder (``rocketkd_prior.json``). Prints the check (prior + g against
the prior alone: nDCG@10, the paired randomization p-value, g's and the prior's per-list spread) and writes it with
the stage's record to ``OUT/pretrain.json``; a rerun with the same OUT resumes. This is where
``pipeline.reranker_pretrain`` and its cut are chosen (docs/results.md).

``--check RERANKER``: train nothing; check a cross-encoder trained elsewhere (e.g. the ``warmup/reranker`` of a run
on another collection) as this collection's ``g`` over ``--prior``, on the same held-out queries -- whether what g
learned from another collection's labels transfers (issue 20):

    python scripts/pretrain_reranker.py --config configs/demo.yaml --prior RUN/prior \
        --check OTHER_RUN/warmup/reranker --output OUT
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rocketkd.candidates.title_queries import apply_data_config
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data
from rocketkd.pretrain import check_pretrained, labelled_source_data, pretrain_reranker
from rocketkd.search.cache import embedding_cache
from rocketkd.teachers.prior import Prior


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--prior", required=True, help="a folder holding rocketkd_prior.json (a pipeline's prior/)")
    ap.add_argument("--output", required=True, help="the stage's folder (lists, checkpoints, reranker/)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--check", metavar="RERANKER", default=None,
                    help="train nothing: check this cross-encoder folder as g over --prior on the held-out queries")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    prior = Prior.load(args.prior)
    if prior is None:
        ap.error(f"--prior {args.prior}: no rocketkd_prior.json there")
    if args.check is not None and not Path(args.check, "config.json").is_file():
        ap.exit(2, f"pretrain_reranker: --check {args.check}: no config.json there (not a model folder)\n")
    if args.check is None and not (cfg.pipeline.reranker_pretrain or cfg.pipeline.reranker_pretrain_data):
        ap.error("set pipeline.reranker_pretrain to the number of queries (e.g. --set pipeline.reranker_pretrain=1000), "
                 "or pipeline.reranker_pretrain_data to another judged collection (e.g. data/scifact)")
    out = Path(args.output)
    data = apply_data_config(cfg, load_retrieval_data(cfg.data.path, cache_dir=cfg.data.cache_dir))
    with embedding_cache(out / "embedding-cache"):
        if args.check is not None:
            check = check_pretrained(cfg, data, prior, args.check)
            accepted = check["delta"] > 0 and check["p_value"] < cfg.pipeline.prior_alpha
            result = {"reranker": args.check, "accepted": accepted, "check": check}
        else:
            source = (labelled_source_data(cfg, cfg.pipeline.reranker_pretrain_data)
                      if cfg.pipeline.reranker_pretrain_data else None)
            result = pretrain_reranker(cfg, data, out, prior, resume=True, source=source)
    c = result["check"]
    print(f"prior + g nDCG@10 {c['reranker_ndcg@10']:.4f} vs prior {c['prior_ndcg@10']:.4f} ({c['delta']:+.4f}, "
          f"p={c['p_value']:.3f}, {c['queries']} held-out queries; g spread {c['g_std']:.3f}, prior "
          f"{c['prior_std']:.3f}) -> {'kept' if result['accepted'] else 'not kept'}")
    (out / "pretrain.json").write_text(json.dumps({"config": args.overrides, **result}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
