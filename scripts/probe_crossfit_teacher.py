#!/usr/bin/env python
"""Exploratory probe (issue 20): does the retriever learn more from a re-ranker that has not learned the labels of
the lists it teaches on?

After a label warm-up, ``prior + g`` beats its prior on held-out claims, yet a retriever distilled from it on the
training lists gains nothing over the labels alone. One reading: ``g`` has learned those very lists, so on them
its distribution is close to the one-hot label and carries little else. This probe compares, on the same
training lists and the same student, three targets:

* ``in-fold``  : ``prior + g_all`` -- ``g`` warmed up on every training list (what the pipeline's static recipe uses);
* ``crossfit`` : ``prior + g_other`` -- each list scored by the ``g`` trained on the *other* fold of queries
  (``scripts/choose_warmup.py``'s fold runs), so no list is taught by a ``g`` that saw its labels;
* (reference) the recipes already run: contrastive, static, joint (``--against RUN_DIR``'s runs).

    python scripts/probe_crossfit_teacher.py --config RUN/config.yaml --lists RUN/round1/teacher_lists.jsonl \\
        --folds CHOOSE_OUT/epochs-2.0 --in-fold RUN/warmup/reranker --output OUT

For each target it prints the teacher's mean probability of the labelled positive on the training lists (how
close to one-hot it is), trains the retriever from ``model.retriever`` for ``pipeline.round_steps`` steps
(``train.mode=static``, stored targets, the config's loss weights), and writes its dev and test runs
(OUT/TARGET/runs/retriever.SPLIT.trec) and nDCG@10 to OUT/results.json. Test numbers are reported, not chosen on.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
from pathlib import Path

import numpy as np

from rocketkd.candidates.title_queries import apply_data_config
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data, read_candidates, write_trec_run
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.search.encode import resolve_autocast
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.teachers import RerankerScorer
from rocketkd.teachers.ensemble import attach_teacher_scores
from rocketkd.teachers.prior import query_fold
from rocketkd.training import train

logger = logging.getLogger("probe_crossfit")


def g_scores(cfg, path: str, lists, data) -> list[np.ndarray]:
    model = load_reranker(cfg, path, trainable=False)
    scorer = RerankerScorer(model, autocast_dtype=resolve_autocast(cfg.index.autocast, model.device))
    return scorer.score(lists, data.all_queries(), data.corpus) if lists else []


def p_positive(scores: list[np.ndarray]) -> float:
    return float(np.mean([np.exp(s[0] - np.logaddexp.reduce(s)) for s in scores]))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="a pipeline run's config.yaml (its seeds, weights, steps)")
    ap.add_argument("--lists", required=True, help="the round's training lists with the prior attached")
    ap.add_argument("--folds", required=True, help="a folder with fold-0/reranker and fold-1/reranker")
    ap.add_argument("--in-fold", required=True, help="the re-ranker warmed up on every training list")
    ap.add_argument("--output", required=True)
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    cfg = load_config(args.config, args.overrides)
    out = Path(args.output)
    data = apply_data_config(cfg, load_retrieval_data(cfg.data.path, cache_dir=cfg.data.cache_dir))
    lists = read_candidates(args.lists, corpus=data.corpus, queries=data.all_queries())
    prior = [np.asarray(x.teacher_scores, dtype=np.float64) for x in lists]
    targets = {}
    full = g_scores(cfg, args.in_fold, lists, data)
    targets["in-fold"] = [p + g for p, g in zip(prior, full)]
    cross: list[np.ndarray | None] = [None] * len(lists)
    for k in (0, 1):  # lists of fold k are scored by the g trained on fold 1-k
        idx = [i for i, x in enumerate(lists) if query_fold(x.qid) == k]
        for i, g in zip(idx, g_scores(cfg, str(Path(args.folds) / f"fold-{1 - k}" / "reranker"),
                                      [lists[i] for i in idx], data)):
            cross[i] = prior[i] + g
    targets["crossfit"] = cross
    results = {"prior": {"p_positive": p_positive(prior)}}
    logger.info("teacher p(positive) on the training lists: prior %.3f", results["prior"]["p_positive"])
    for name, scores in targets.items():
        res_path = out / name / "result.json"
        if res_path.exists():
            results[name] = json.loads(res_path.read_text())
            continue
        tcfg = copy.deepcopy(cfg)
        tcfg.train.mode, tcfg.train.teacher, tcfg.train.teachers = "static", "stored", {}
        tcfg.model.reranker_prior, tcfg.train.eval_dev, tcfg.train.keep_best = False, False, False
        tcfg.train.max_steps = cfg.pipeline.round_steps or cfg.train.max_steps
        trained = train(tcfg, attach_teacher_scores(lists, scores), data=data, output_dir=out / name / "train")
        retriever = load_retriever(cfg, str(trained.retriever_dir))
        index = DenseIndex.build(retriever, data.corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast)
        row = {"p_positive": p_positive(scores)}
        for split in (cfg.data.dev_split, cfg.data.test_split):
            queries = data.split_queries(split)
            run = search_run(index, queries, cfg.eval.k)
            write_trec_run(out / name / "runs" / f"retriever.{split}.trec", run, tag=f"probe-{name}")
            row[f"{split}_ndcg@10"] = evaluate_run(run, data.qrels[split], ["ndcg_cut.10"]).mean["ndcg_cut.10"]
        res_path.write_text(json.dumps(row, indent=2))
        results[name] = row
        logger.info("%s: p(positive) %.3f, retriever nDCG@10 dev %.4f test %.4f", name, row["p_positive"],
                    row[f"{cfg.data.dev_split}_ndcg@10"], row[f"{cfg.data.test_split}_ndcg@10"])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
