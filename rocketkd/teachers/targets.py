"""Teacher targets: turn candidate lists into the distributions the retriever is distilled toward.

``teacher_lists`` (a lone ``rocketkd train``: the ensemble named in ``train.teachers``, checked on dev first) and the
pipeline's teachers stage both end here.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from rocketkd.config import Config
from rocketkd.data.formats import read_candidates, read_provenance, write_candidates
from rocketkd.distributed import barrier, is_main
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.io import write_json
from rocketkd.models.dual_encoder import resolve_model_path
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.teachers.core import (
    BM25Scorer,
    RandomScorer,
    RerankerScorer,
    RetrieverScorer,
    attach_teacher_scores,
    candidates_from_run,
    check_ensemble,
    ensemble_logprobs,
    scores_on_candidates,
)
from rocketkd.types import CandidateList

logger = logging.getLogger(__name__)


def student_spread(scores: list, score_scale: float) -> float:
    """Mean over lists of the standard deviation of ``score_scale * score``: how sharp the student's softmax is.

    A z-scored teacher has spread 1 per list; the packaged MiniLM at scale 20 has ~2.7 on cranfield's BM25 lists.
    Distilling toward the spread-1 teacher costs a KL of ~0.6 nats even where both rank alike, and the student can
    only pay it by squeezing its embedding space (measured: dev nDCG@10 falls); at the student's own spread the
    same teacher costs ~0.07 and only the ranking differences teach.
    """
    spreads = [float(np.std(score_scale * np.asarray(s, dtype=np.float64))) for s in scores if len(s) > 1]
    value = float(np.mean(spreads)) if spreads else 1.0
    return value if value > 1e-6 else 1.0



def teacher_lists(cfg: Config, data, lists: list[CandidateList], output_dir: str | Path,
                  retriever_path: str | None = None, reranker_path: str | None = None) -> list[CandidateList]:
    """``lists`` with the ensemble of ``train.teachers`` attached as stored teacher log-probabilities.

    The members score every list once before training (BM25; the base encoder; the start re-ranker, frozen),
    each normalised per list (z-score; the re-ranker's logits kept at ``train.temperature``, as the online one is
    used), then combined per ``train.teacher_combine`` with the configured weights (:mod:`rocketkd.teachers`).
    Written to ``<output_dir>/teacher_lists.jsonl`` and reused on resume. Lists that already carry teacher scores
    (e.g. the pipeline's checked ensemble) are returned unchanged.
    """
    t = cfg.train
    weights = {name: float(w) for name, w in t.teachers.items() if w > 0}
    if not weights:
        return lists
    if lists and lists[0].teacher_scores is not None:
        logger.info("the candidate lists carry teacher scores already: train.teachers is not applied")
        return lists
    if not (t.mode == "joint" or (t.mode == "static" and t.teacher == "stored")):
        logger.warning("train.teachers is ignored in mode=%s (teacher=%s): only joint and static/stored distil "
                       "from stored scores", t.mode, t.teacher)
        return lists
    if t.mode == "joint" and t.online_teacher_weight >= 1.0:
        logger.warning("train.teachers is set but train.online_teacher_weight=1: the online re-ranker alone teaches")
    path = Path(output_dir) / "teacher_lists.jsonl"
    queries = {**getattr(data, "unlabeled_queries", {}), **data.queries}
    if not path.exists():
        if is_main():
            start = retriever_path or cfg.model.retriever
            base = RetrieverScorer(load_retriever(cfg, cfg.model.retriever))
            makers = {
                "bm25": lambda: BM25Scorer(data.corpus),
                "base": lambda: base,
                "reranker": lambda: RerankerScorer(load_reranker(cfg, reranker_path or cfg.model.reranker,
                                                                 trainable=False)),
                "random": lambda: RandomScorer(t.seed),
            }
            scorers = {n: makers[n]() for n in weights}
            same = resolve_model_path(start) == resolve_model_path(cfg.model.retriever)
            student = base if same else RetrieverScorer(load_retriever(cfg, start))
            logger.info("scoring %d lists with the offline teachers %s", len(lists), weights)
            member_scores = {n: s.score(lists, queries, data.corpus) for n, s in scorers.items()}
            scale = t.teacher_scale
            if scale is None:
                spread = member_scores["base"] if same and "base" in member_scores else student.score(
                    lists, queries, data.corpus)
                scale = student_spread(spread, cfg.model.score_scale)
                logger.info("offline teachers at the start retriever's spread: z-scores x %.3f", scale)
            temperatures = {n: t.temperature if n == "reranker" else 1.0 / scale for n in weights}
            hows = {n: "none" if n == "reranker" else "zscore" for n in weights}
            provenance = {"teachers": weights, "combine": t.teacher_combine, "scale": scale}
            if t.check_teachers and cfg.data.dev_split in data.qrels:
                choice = _check_on_dev(cfg, data, student, scorers, weights, temperatures, hows, Path(output_dir))
                provenance["dev_check"] = {"student": choice.student_ndcg, "ensemble": choice.ensemble_ndcg,
                                           "usable": choice.usable}
                if not choice.usable:
                    provenance["rejected"] = True
            if provenance.get("rejected"):
                out_lists = list(lists)  # no teacher scores: train() turns distillation off
            else:
                logprobs = ensemble_logprobs(
                    [member_scores[n] for n in weights], list(weights.values()), combine=t.teacher_combine,
                    temperatures=[temperatures[n] for n in weights], normalize_how=[hows[n] for n in weights],
                )
                out_lists = attach_teacher_scores(lists, logprobs)
            write_candidates(path, out_lists, provenance=provenance)
        barrier()
    return read_candidates(path, corpus=data.corpus, queries=queries)



def _check_on_dev(cfg: Config, data, student, scorers: dict, weights: dict, temperatures: dict, hows: dict,
                  out: Path):
    """Measure the configured ensemble on the start retriever's dev candidates (:func:`check_ensemble`).

    Main process only (the index is built in this process alone). Writes ``teacher_check.json`` beside the lists,
    and with ``train.eval_dev`` the start retriever's dev nDCG@10 (``dev_start.json``, read by :func:`_dev_start`):
    the same search answers both, so the corpus is encoded once, not twice, before training.
    """
    split = cfg.data.dev_split
    dev = data.split_queries(split)
    index = DenseIndex.build(student.model, data.corpus, batch_size=cfg.index.batch_size,
                             autocast=cfg.index.autocast, show_progress=False, distributed=False)
    run = search_run(index, dev, cfg.eval.rerank_depth, distributed=False)
    candidates = candidates_from_run(run, cfg.eval.rerank_depth)
    members = {n: scores_on_candidates(s, candidates, dev, data.corpus) for n, s in scorers.items()}
    choice = check_ensemble(
        candidates, run, members, weights, data.qrels[split], min_gain=cfg.pipeline.teacher_min_gain,
        combine=cfg.train.teacher_combine, normalize_how=hows, temperatures=temperatures,
    )
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.eval_dev and not (out / "dev_start.json").exists():
        start = float(evaluate_run(run, data.qrels[split], ["nDCG@10"]).mean["nDCG@10"])
        logger.info("retriever dev nDCG@10 at the start: %.4f", start)
        write_json(out / "dev_start.json", {"start": start})
    write_json(out / "teacher_check.json", {
        "split": split, "queries": len(dev), "depth": cfg.eval.rerank_depth,
        "min_gain": cfg.pipeline.teacher_min_gain, "student_ndcg@10": choice.student_ndcg,
        "ensemble_ndcg@10": choice.ensemble_ndcg, "usable": choice.usable, "weights": choice.weights,
        "members": {r.name: {"nDCG@10": r.ndcg, "weight": r.weight} for r in choice.reports},
    })
    return choice



def teachers_rejected(cfg: Config, out: Path) -> bool:
    """True when this run's ``train.teachers`` were checked on dev and got weight 0 (``teacher_lists`` meta)."""
    if not any(w > 0 for w in cfg.train.teachers.values()):
        return False
    provenance = read_provenance(Path(out) / "teacher_lists.jsonl") or {}
    return bool(provenance.get("rejected"))
