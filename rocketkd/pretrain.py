"""Label-free pre-training of the re-ranker's cross-encoder over its prior, on inverse-cloze queries (issue 20).

The re-ranker is ``prior + g`` (:mod:`rocketkd.teachers.prior`); ``g`` starts at zero and, trained on a few hundred
judged queries in the joint step, moved too little to add to its prior on held-out queries. Here ``g`` first learns
on many queries made from the corpus without labels (:mod:`rocketkd.candidates.inverse_cloze`): each is a sentence
cut out of a passage, its list the passage among the base encoder's hard negatives (mined as the judged queries'
lists are), trained with the listwise CE over ``prior + g`` (``train.mode=reranker``) -- the loss of the joint step's
re-ranker. This is Trans-Encoder's idea (Liu et al., ICLR 2022) of teaching a cross-encoder from what bi-encoder-side
scorers already know, with the inverse cloze task's own positives instead of their pseudo-labels.

Nothing departs from "no change" without evidence: the pre-trained ``g`` is kept only when ``prior + g`` re-ranks the
base encoder's top ``eval.rerank_depth`` of the dev + train queries (whose labels nothing has learned yet) better
than the prior alone, in a paired randomization test at ``pipeline.prior_alpha``. Otherwise round 1 starts from
``model.reranker`` as before.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from rocketkd.candidates.inverse_cloze import inverse_cloze
from rocketkd.candidates.mining import mine
from rocketkd.config import Config
from rocketkd.data.formats import RetrievalData, read_candidates
from rocketkd.evaluation.compare import compare_runs
from rocketkd.models import resolve_model_path
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.search.encode import resolve_autocast
from rocketkd.search.fusion import candidates_from_run
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.teachers import RerankerScorer, scores_on_candidates
from rocketkd.teachers.prior import (
    Prior,
    PriorScorer,
    attach_prior,
    held_out_for_prior,
    prior_members,
)
from rocketkd.training import train

logger = logging.getLogger(__name__)


def inverse_cloze_data(cfg: Config, data) -> RetrievalData:
    """The collection the pre-training runs on: the cut corpus, the inverse-cloze queries as ``data.train_split``
    (each judged on its own passage at the lowest grade that counts as a positive), no dev, test or unlabeled queries.
    No sentence near a judged query of any split becomes a query (the check reads dev and train)."""
    ict = inverse_cloze(data.corpus, cfg.pipeline.reranker_pretrain, avoid=data.queries.values(),
                        cut=cfg.pipeline.reranker_pretrain_cut)
    grade = max(1, cfg.data.min_positive_grade)
    qrels = {qid: {pid: grade} for qid, pid in ict.positives.items()}
    return RetrievalData(corpus=ict.corpus, queries=dict(ict.queries), qrels={cfg.data.train_split: qrels},
                         path=data.path)


def pretrain_config(cfg: Config, lists: int) -> Config:
    """``cfg`` for the pre-training: the re-ranker alone (its rates, precision and batch as configured), for
    ``pipeline.reranker_pretrain_steps`` steps or one pass over the ``lists``; no offline teachers, no dev."""
    new = copy.deepcopy(cfg)
    new.train.mode, new.train.teachers, new.train.eval_dev, new.train.keep_best = "reranker", {}, False, False
    new.train.max_steps = cfg.pipeline.reranker_pretrain_steps or max(1, -(-lists // cfg.train.batch_size))
    return new


def check_pretrained(cfg: Config, data, prior: Prior, reranker: str) -> dict:
    """``prior + g`` (``reranker``'s g) against the prior alone on :func:`held_out_for_prior`'s queries: nDCG@10 of
    the base encoder's top ``eval.rerank_depth`` re-ranked by each, paired randomization test."""
    queries, qrels = held_out_for_prior(cfg, data)
    base = load_retriever(cfg, resolve_model_path(cfg.model.retriever))
    index = DenseIndex.build(base, data.corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast)
    candidates = candidates_from_run(search_run(index, queries, cfg.eval.rerank_depth), cfg.eval.rerank_depth)
    prior_scorer = PriorScorer(prior, prior_members(prior, data.corpus))
    model = load_reranker(cfg, reranker, trainable=False)
    g = RerankerScorer(model, autocast_dtype=resolve_autocast(cfg.index.autocast, model.device))
    prior_run = scores_on_candidates(prior_scorer, candidates, queries, data.corpus)
    g_run = scores_on_candidates(g, candidates, queries, data.corpus)
    full = {q: {p: prior_run[q][p] + s for p, s in scores.items()} for q, scores in g_run.items()}
    c = compare_runs(prior_run, full, qrels, ["nDCG@10"])[0].to_dict()
    spread = lambda run: float(np.mean([np.std(list(s.values())) for s in run.values() if s]))  # noqa: E731
    return {"queries": len(queries), "prior_ndcg@10": c["mean_a"], "reranker_ndcg@10": c["mean_b"],
            "delta": c["mean_b"] - c["mean_a"], "p_value": c["p_value"], "g_std": spread(g_run),
            "prior_std": spread(prior_run)}


def pretrain_reranker(cfg: Config, data, out: Path, prior: Prior, *, resume: bool = True) -> dict:
    """Pre-train ``g`` over ``prior`` on inverse-cloze lists under ``out`` and check it; returns the re-ranker
    round 1 starts from (the pre-trained one if the check accepts it, else ``model.reranker``) and the evidence."""
    ict = inverse_cloze_data(cfg, data)
    lists_path = out / "candidates.jsonl"
    if not (resume and lists_path.exists()):
        mine(cfg, output=lists_path, data=ict, retriever=resolve_model_path(cfg.model.retriever))
    lists = attach_prior(ict, read_candidates(lists_path, corpus=ict.corpus, queries=ict.queries), prior)
    pcfg = pretrain_config(cfg, len(lists))
    logger.info("re-ranker pre-training: %d inverse-cloze lists, %d steps of the cross-encoder over its prior %s",
                len(lists), pcfg.train.max_steps, prior.weights)
    result = train(pcfg, lists, data=ict, output_dir=out, resume=resume)
    prior.save(result.reranker_dir)
    check = check_pretrained(cfg, data, prior, str(result.reranker_dir))
    accepted = check["delta"] > 0 and check["p_value"] < cfg.pipeline.prior_alpha
    logger.info("re-ranker pre-training %s: prior + g nDCG@10 %.4f against the prior's %.4f on %d held-out queries "
                "(p=%.3g; g spread %.3f, prior %.3f)", "kept" if accepted else "not kept, g starts at zero",
                check["reranker_ndcg@10"], check["prior_ndcg@10"], check["queries"], check["p_value"],
                check["g_std"], check["prior_std"])
    return {"reranker": str(result.reranker_dir) if accepted else resolve_model_path(cfg.model.reranker),
            "accepted": accepted, "queries": len(ict.queries), "lists": len(lists), "steps": result.steps,
            "check": check, "pretrained": str(result.reranker_dir)}
