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

The same stage can instead teach ``g`` the labels of *another* judged collection (``pipeline.reranker_pretrain_data``,
e.g. SciFact's 809 judged claims for Cranfield's 100 training questions): its judged train lists, mined by the base
encoder and scored by this collection's prior (its z-scored members carry over unchanged), as RocketQA starts its
cross-encoder from MS MARCO's labels. Kept, again, only on this collection's held-out evidence.

How long ``g`` may then learn from the labels before the joint round (``pipeline.warmup_epochs``) is chosen the same
way, on folds of train (:func:`choose_warmup_epochs`): with a few dozen judged queries ``g`` learns them by heart and
falls below its prior on the others (Cranfield), with a few hundred it adds to it (SciFact).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import numpy as np

from rocketkd.candidates.inverse_cloze import inverse_cloze
from rocketkd.candidates.mining import mine
from rocketkd.config import Config
from rocketkd.data.formats import RetrievalData, load_retrieval_data, read_candidates
from rocketkd.errors import ConfigError
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
    query_fold,
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


def labelled_source_data(cfg: Config, path: str | Path) -> RetrievalData:
    """``pipeline.reranker_pretrain_data``: another judged collection's ``data.train_split`` for ``g`` to learn from,
    every judged positive (any grade >= 1 there) at this config's lowest positive grade, so the collection's own
    grading need not match this one's; no dev, test or unlabeled query of it is kept (none is ever read)."""
    src = load_retrieval_data(path, cache_dir=cfg.data.cache_dir)
    split = cfg.data.train_split
    if split not in src.qrels:
        raise ConfigError(f"config key 'pipeline.reranker_pretrain_data': {path} has no qrels split {split!r} "
                          f"(data.train_split; it has {', '.join(src.qrels) or 'none'})")
    grade = max(1, cfg.data.min_positive_grade)
    qrels = {q: {pid: grade for pid, g in docs.items() if g >= 1} for q, docs in src.qrels[split].items()}
    qrels = {q: docs for q, docs in qrels.items() if docs and q in src.queries}
    if not qrels:
        raise ConfigError(f"config key 'pipeline.reranker_pretrain_data': split {split!r} of {path} judges no "
                          "passage relevant")
    return RetrievalData(corpus=src.corpus, queries={q: src.queries[q] for q in qrels}, qrels={split: qrels},
                         path=src.path)


def reranker_alone_config(cfg: Config, *, max_steps: int | None = None, epochs: float | None = None) -> Config:
    """``cfg`` for training the re-ranker alone (its rates, precision and batch as configured) for ``max_steps``
    steps, or ``epochs`` passes over its lists; no offline teachers, no dev measurement."""
    new = copy.deepcopy(cfg)
    new.train.mode, new.train.teachers, new.train.eval_dev, new.train.keep_best = "reranker", {}, False, False
    new.train.max_steps = max_steps
    if epochs is not None:
        new.train.epochs = epochs
    return new


def pretrain_config(cfg: Config, lists: int) -> Config:
    """The pre-training's: ``pipeline.reranker_pretrain_steps`` steps, or one pass over the ``lists``."""
    return reranker_alone_config(
        cfg, max_steps=cfg.pipeline.reranker_pretrain_steps or max(1, -(-lists // cfg.train.batch_size)))


def base_candidates(cfg: Config, data, queries: dict[str, str]) -> dict[str, list[str]]:
    """The base encoder's top ``eval.rerank_depth`` of each query: the lists every check of ``g`` re-ranks."""
    base = load_retriever(cfg, resolve_model_path(cfg.model.retriever))
    index = DenseIndex.build(base, data.corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast)
    return candidates_from_run(search_run(index, queries, cfg.eval.rerank_depth), cfg.eval.rerank_depth)


def g_scores(cfg: Config, data, reranker: str, candidates, queries) -> dict[str, dict[str, float]]:
    """``reranker``'s cross-encoder part ``g`` alone on ``candidates``."""
    model = load_reranker(cfg, reranker, trainable=False)
    g = RerankerScorer(model, autocast_dtype=resolve_autocast(cfg.index.autocast, model.device))
    return scores_on_candidates(g, candidates, queries, data.corpus)


def residual_gain(prior_run, g_run, qrels) -> dict:
    """``prior + g`` against the prior alone on ``g_run``'s queries: nDCG@10, paired randomization test, and the
    mean per-list spread of each part (how much ``g`` can reorder)."""
    prior_run = {q: prior_run[q] for q in g_run}
    full = {q: {p: prior_run[q][p] + s for p, s in scores.items()} for q, scores in g_run.items()}
    c = compare_runs(prior_run, full, qrels, ["nDCG@10"])[0].to_dict()
    spread = lambda run: float(np.mean([np.std(list(s.values())) for s in run.values() if s]))  # noqa: E731
    return {"queries": len(g_run), "prior_ndcg@10": c["mean_a"], "reranker_ndcg@10": c["mean_b"],
            "delta": c["mean_b"] - c["mean_a"], "p_value": c["p_value"], "g_std": spread(g_run),
            "prior_std": spread(prior_run)}


def check_pretrained(cfg: Config, data, prior: Prior, reranker: str) -> dict:
    """``prior + g`` (``reranker``'s g) against the prior alone on :func:`held_out_for_prior`'s queries, the base
    encoder's top ``eval.rerank_depth`` re-ranked by each (:func:`residual_gain`)."""
    queries, qrels = held_out_for_prior(cfg, data)
    candidates = base_candidates(cfg, data, queries)
    prior_run = scores_on_candidates(PriorScorer(prior, prior_members(prior, data.corpus)), candidates, queries,
                                     data.corpus)
    return residual_gain(prior_run, g_scores(cfg, data, reranker, candidates, queries), qrels)


def choose_warmup_epochs(cfg: Config, data, out: Path, prior: Prior, lists, epochs=(1, 2), *,
                         resume: bool = True) -> dict:
    """How many passes over the judged lists ``g`` may learn before the joint round, chosen on two folds of train.

    The held-out queries of the prior's check (dev + judged train) are split in two by a hash of their id. For each
    candidate length, ``g`` is trained over the prior on the lists of one fold's queries and scores the other
    fold's base top ``eval.rerank_depth``; then the folds swap, so every held-out query is scored once by a ``g``
    that never saw its labels. The pooled ``prior + g`` is compared with the prior (paired randomization test). Of the
    lengths whose gain is significant at ``pipeline.prior_alpha``, the one with the largest gain wins (a tie: the
    shorter); with none, 0 -- no warm-up, ``g`` starts at zero in the joint round.
    """
    queries, qrels = held_out_for_prior(cfg, data)
    candidates = base_candidates(cfg, data, queries)
    prior_run = scores_on_candidates(PriorScorer(prior, prior_members(prior, data.corpus)), candidates, queries,
                                     data.corpus)
    lists = attach_prior(data, lists, prior)
    tried = []
    for n in epochs:
        g_run: dict[str, dict[str, float]] = {}
        for k in (0, 1):
            fold_lists = [x for x in lists if query_fold(x.qid) == k]
            held = {q: t for q, t in queries.items() if query_fold(q) != k}
            res = train(reranker_alone_config(cfg, epochs=n), fold_lists, data=data, output_dir=out / f"epochs-{n}" / f"fold-{k}",
                        resume=resume)
            g_run.update(g_scores(cfg, data, str(res.reranker_dir), {q: candidates[q] for q in held}, held))
        gain = residual_gain(prior_run, g_run, qrels)
        logger.info("g over the prior, %s epoch(s) on one fold of train, scored on the other: nDCG@10 %+.4f (p=%.3g) "
                    "on %d held-out queries", n, gain["delta"], gain["p_value"], gain["queries"])
        tried.append({"epochs": n, **gain})
    return {"epochs": pick_warmup_epochs(tried, cfg.pipeline.prior_alpha), "tried": tried,
            "alpha": cfg.pipeline.prior_alpha}


def pick_warmup_epochs(tried: list[dict], alpha: float) -> float:
    """The length with the largest held-out gain among those significant at ``alpha`` (a tie: the shorter), else 0."""
    ok = [t for t in tried if t["delta"] > 0 and t["p_value"] < alpha]
    return max(ok, key=lambda t: (round(t["delta"], 6), -t["epochs"]))["epochs"] if ok else 0


def pretrain_reranker(cfg: Config, data, out: Path, prior: Prior, *, resume: bool = True,
                      source: RetrievalData | None = None) -> dict:
    """Pre-train ``g`` over ``prior`` under ``out`` -- on ``source``'s judged train lists (another collection:
    :func:`labelled_source_data`), else on inverse-cloze lists of this corpus -- and check it on this collection;
    returns the re-ranker round 1 starts from (the pre-trained one if the check accepts it, else
    ``model.reranker``) and the evidence."""
    kind = "labelled" if source is not None else "inverse-cloze"
    src = source if source is not None else inverse_cloze_data(cfg, data)
    lists_path = out / "candidates.jsonl"
    if not (resume and lists_path.exists()):
        mine(cfg, output=lists_path, data=src, retriever=resolve_model_path(cfg.model.retriever))
    lists = attach_prior(src, read_candidates(lists_path, corpus=src.corpus, queries=src.queries), prior)
    pcfg = pretrain_config(cfg, len(lists))
    logger.info("re-ranker pre-training: %d %s lists (%s), %d steps of the cross-encoder over its prior %s",
                len(lists), kind, src.path, pcfg.train.max_steps, prior.weights)
    result = train(pcfg, lists, data=src, output_dir=out, resume=resume)
    prior.save(result.reranker_dir)
    check = check_pretrained(cfg, data, prior, str(result.reranker_dir))
    accepted = check["delta"] > 0 and check["p_value"] < cfg.pipeline.prior_alpha
    logger.info("re-ranker pre-training %s: prior + g nDCG@10 %.4f against the prior's %.4f on %d held-out queries "
                "(p=%.3g; g spread %.3f, prior %.3f)", "kept" if accepted else "not kept, g starts at zero",
                check["reranker_ndcg@10"], check["prior_ndcg@10"], check["queries"], check["p_value"],
                check["g_std"], check["prior_std"])
    return {"reranker": str(result.reranker_dir) if accepted else resolve_model_path(cfg.model.reranker),
            "accepted": accepted, "source": kind if source is None else str(source.path),
            "queries": len(src.queries), "lists": len(lists), "steps": result.steps,
            "check": check, "pretrained": str(result.reranker_dir)}
