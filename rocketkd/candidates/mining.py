"""Candidate mining, the driver: retrieve, drop judged positives, denoise with the re-ranker, augment, pseudo-label.

RocketQA's recipe; the pure steps live in :mod:`rocketkd.candidates.negatives`, the model work (retrieval, re-ranker
logits, shared out across processes) in :mod:`rocketkd.candidates.retrieve`:

1. retrieve the top ``depth`` passages of every training query (BM25, the base encoder, or a trained retriever);
2. skip the first ``skip_top`` ranks (near-duplicates of the positive) and drop every passage judged relevant to
   the query in *any* qrels split with *any* grade > 0 (``drop_positives``): a grade-1 passage is no negative;
3. with a re-ranker, drop likely false negatives (``denoise``: a hard negative the re-ranker is confident about is
   most likely an unlabeled positive) and, optionally, promote confident candidates to pseudo-positives;
4. hybrid augmentation (``build_list``): the denoised mined negatives in rank order, then a few undenoised negatives
   sampled from the corpus, topped up with more sampled ones when a list would be shorter than G;
5. teacher labelling of unlabeled queries (``label_unlabeled``): the re-ranker's confident candidates become
   positives, its confident rejections negatives.

Invariant of every list written here: no negative is a judged positive (grade > 0, any split) of the list's query.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rocketkd.candidates.negatives import (
    build_list,
    denoise,
    drop_positives,
    judged_relevant,
    label_unlabeled,
    positives_of,
    pseudo_positives,
    ranked,
    sample_negatives,
    sigmoid,
)
from rocketkd.candidates.retrieve import describe, first_stage, reranker_logits
from rocketkd.candidates.title_queries import apply_data_config, is_title_query
from rocketkd.config import Config
from rocketkd.data.formats import load_retrieval_data, write_candidates
from rocketkd.distributed import broadcast_object, is_main, main_process_first
from rocketkd.errors import ConfigError
from rocketkd.models import resolve_model_path
from rocketkd.models.loading import load_reranker
from rocketkd.types import CandidateList, Qrels

logger = logging.getLogger(__name__)

__all__ = ["MiningResult", "mine"]


@dataclass
class MiningResult:
    """What ``mine`` wrote: the lists file and the counts also recorded in its provenance (``<path>.meta.json``)."""

    path: Path
    num_lists: int
    num_queries: int
    dropped_false_negatives: int  # distinct (query, passage) pairs the re-ranker removed from the negatives
    pseudo_positives: int  # lists whose positive is a re-ranker pseudo-positive of a training query
    topped_up: int  # lists that needed extra sampled negatives to reach candidates.list_length
    source: str  # "bm25" or "dense"
    labelled_queries: int = 0  # unlabeled queries the teacher turned into lists
    teacher_lists: int = 0  # lists from those queries


def _training_queries(cfg: Config, data: Any) -> dict[str, str]:
    split = cfg.data.train_split
    if split not in data.qrels:
        raise ConfigError(
            f"config key 'data.train_split': no qrels split {split!r} (loaded: {', '.join(data.qrels) or 'none'})"
        )
    qrels = data.qrels[split]
    queries = {qid: data.queries[qid] for qid in sorted(qrels) if positives_of(qrels, qid, cfg.data.min_positive_grade)}
    if not queries:
        raise ConfigError(
            f"split {split!r} has no query with a positive of grade >= {cfg.data.min_positive_grade} "
            "(config key 'data.min_positive_grade')"
        )
    if len(queries) < len(qrels):
        logger.info(
            "split %r: %d of %d queries have no positive of grade >= %d (config key 'data.min_positive_grade'): "
            "skipped",
            split, len(qrels) - len(queries), len(qrels), cfg.data.min_positive_grade,
        )
    return queries


def _check_mining_config(m: Any) -> None:
    if m.depth < 1:
        raise ConfigError(f"config key 'mining.depth': must be at least 1, got {m.depth}")
    if m.skip_top < 0:
        raise ConfigError(f"config key 'mining.skip_top': must be >= 0, got {m.skip_top}")
    if m.sampled_negatives < 0:
        raise ConfigError(f"config key 'mining.sampled_negatives': must be >= 0, got {m.sampled_negatives}")
    if m.false_negative_rank is not None and m.false_negative_rank < 0:
        raise ConfigError(f"config key 'mining.false_negative_rank': must be >= 0, got {m.false_negative_rank}")
    for key in ("false_negative_threshold", "pseudo_positive_threshold", "unlabeled_positive_threshold",
                "unlabeled_negative_threshold"):
        value = getattr(m, key)
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key 'mining.{key}': a probability in [0, 1], got {value}")
    if m.unlabeled_negative_threshold > m.unlabeled_positive_threshold:
        raise ConfigError(
            "config keys 'mining.unlabeled_negative_threshold' > 'mining.unlabeled_positive_threshold': "
            "a candidate cannot be both"
        )


def _load_reranker(cfg: Config, reranker: Any) -> tuple[Any, str | None]:
    """(the re-ranker, its description): one given as an object with ``predict`` is used as it is."""
    if reranker is None or hasattr(reranker, "predict"):
        return reranker, (None if reranker is None else describe(reranker))
    path = resolve_model_path(reranker)
    return load_reranker(cfg, path, trainable=False), path


def mine(
    cfg: Config,
    *,
    output: str | Path,
    data: Any = None,
    retriever: Any = None,
    reranker: Any = None,
    round_index: int = 0,
    show_progress: bool = True,
) -> MiningResult:
    """Mine candidate lists for every training query and write them (JSONL + ``<output>.meta.json`` provenance).

    ``retriever``: a trained retriever (folder, or a loaded ``DualEncoder``); None = ``mining.first_round``
    (``bm25``, or ``base``: the untrained ``model.retriever``). ``reranker``: a re-ranker folder or any object with
    ``predict(pairs, *, batch_size, show_progress, autocast_dtype) -> logits``; None = no denoising, no
    pseudo-positives, no teacher labelling. ``data``: a loaded ``RetrievalData`` (else ``data.path`` is loaded).

    One list per (training query, judged positive of grade >= ``data.min_positive_grade``), plus one per
    pseudo-positive (source ``"pseudo"``) and per teacher-labelled positive of an unlabeled query (``"teacher"``).
    Negatives: the retrieved top ``mining.depth`` minus the first ``skip_top`` ranks, minus every passage judged
    relevant to the query in any split (any grade > 0), minus the re-ranker's likely false negatives (per list,
    see :func:`denoise`), in rank order; then ``sampled_negatives`` undenoised corpus samples; then a top-up to
    ``candidates.list_length``.

    Several processes (torchrun / ``accelerate launch``, a process group initialised; every process calls it): the
    retrieval (corpus and query encoding, or BM25 search) and the re-ranker scoring are split into contiguous shares
    across the processes and gathered on the main process by position, which alone builds and writes the lists;
    every process returns the main process's result. The lists equal those of one process.
    """
    m = cfg.mining
    _check_mining_config(m)
    output = Path(output)
    show_progress = show_progress and is_main()
    if data is None:
        with main_process_first():  # one process fills the corpus cache, the others then read it
            data = load_retrieval_data(cfg.data.path, cache_dir=cfg.data.cache_dir)
    apply_data_config(cfg, data)
    corpus = data.corpus
    corpus_ids = corpus.ids
    list_length = cfg.candidates.list_length
    if list_length > len(corpus):
        raise ConfigError(
            f"config key 'candidates.list_length': {list_length} candidates per list, but the corpus has only "
            f"{len(corpus)} passages"
        )
    train_queries = _training_queries(cfg, data)
    train_qrels = data.qrels[cfg.data.train_split]

    reranker_model, reranker_desc = _load_reranker(cfg, reranker)
    score = reranker_model is not None and (m.denoise or m.pseudo_positive_threshold is not None)
    unlabeled: dict[str, str] = {}
    if m.label_unlabeled:
        if reranker_model is None:
            logger.warning("mining.label_unlabeled is set but no re-ranker was given: unlabeled queries are skipped")
        else:
            # a query judged in any split (dev/test included) must never be labelled by the teacher
            judged_anywhere = {qid for qrels in data.qrels.values() for qid in qrels}
            unlabeled = {
                qid: text
                for qid, text in sorted(getattr(data, "unlabeled_queries", {}).items())
                if qid not in judged_anywhere and qid not in train_queries
            }

    search, source, retriever_desc = first_stage(cfg, data, retriever, show_progress)
    run = search({**train_queries, **unlabeled}, m.depth)
    if run is None:  # another process of a multi-process run: only the main process holds the run, and uses it
        run = {}

    # candidates per training query: rank order, skip_top skipped, every judged positive (any split) dropped
    judged: dict[str, dict[str, int]] = {qid: judged_relevant(data.qrels, qid) for qid in train_queries}
    candidates = {
        qid: drop_positives(ranked(run.get(qid, {}))[m.skip_top :], judged[qid]) for qid in train_queries
    }

    scores: dict[str, dict[str, float]] = {}
    if score or unlabeled:
        plan = []
        if score:
            # title queries (data.title_queries) are not denoised: their positive is certain, and a cross-encoder
            # pass over each of their candidates would cost more than the rest of mining on a small collection
            for qid in (q for q in train_queries if not is_title_query(q)):
                plan += [(qid, pid) for pid in positives_of(train_qrels, qid, cfg.data.min_positive_grade)]
                plan += [(qid, pid) for pid in candidates[qid]]
        for qid in unlabeled:
            plan += [(qid, pid) for pid in ranked(run.get(qid, {}))]
        scores = reranker_logits(
            reranker_model, plan, {**train_queries, **unlabeled}, corpus,
            batch_size=cfg.index.batch_size, autocast=cfg.index.autocast, show_progress=show_progress,
        )
    if not is_main():  # its shares of the work are with the main process: wait for the main process's result
        return broadcast_object(None)

    rng = random.Random(f"{m.seed}-{round_index}")
    lists: list[CandidateList] = []
    dropped_pairs = 0
    n_pseudo = 0
    topped_up = 0
    for qid in train_queries:
        cands = candidates[qid]
        relevant = {pid for pid, grade in judged[qid].items() if grade > 0}
        heads = [(pos, source) for pos in positives_of(train_qrels, qid, cfg.data.min_positive_grade)]
        negatives_of: dict[str, list[str]] = {}
        dropped: set[str] = set()
        pseudo: list[str] = []
        if score and not is_title_query(qid):
            q_scores = scores[qid]
            cand_scores = np.array([q_scores[pid] for pid in cands], dtype=np.float64)
            pseudo = pseudo_positives(cands, cand_scores, m.pseudo_positive_threshold)
            heads += [(pid, "pseudo") for pid in pseudo]
            for pos, _ in heads:
                if m.denoise:
                    kept, gone = denoise(
                        cands, cand_scores, false_negative_threshold=m.false_negative_threshold,
                        false_negative_rank=m.false_negative_rank, positive_score=q_scores[pos],
                    )
                else:
                    kept, gone = list(cands), []
                dropped.update(gone)
                negatives_of[pos] = kept
        else:
            negatives_of = {pos: list(cands) for pos, _ in heads}
        pseudo_set = set(pseudo)
        dropped_pairs += len(dropped - pseudo_set)
        n_pseudo += len(pseudo)
        exclude = relevant | dropped | pseudo_set
        for pos, src in heads:
            mined = [pid for pid in negatives_of[pos] if pid not in pseudo_set][: m.depth]
            sampled = sample_negatives(corpus_ids, exclude | set(mined) | {pos}, m.sampled_negatives, rng)
            cl, topped = build_list(
                qid, pos, mined, sampled, list_length=list_length, rng=rng, corpus_ids=corpus_ids,
                exclude=exclude, source=src,
            )
            topped_up += topped > 0
            lists.append(cl)

    teacher_lists: list[CandidateList] = []
    if unlabeled:
        labelled = label_unlabeled(
            unlabeled, {qid: run.get(qid, {}) for qid in unlabeled}, scores,
            m.unlabeled_positive_threshold, m.unlabeled_negative_threshold,
        )
        for raw in labelled:
            # not negatives either: every candidate the teacher did not call a confident negative
            q_scores = scores.get(raw.qid, {})
            unsure = {pid for pid, s in q_scores.items() if sigmoid(s) >= m.unlabeled_negative_threshold}
            exclude = unsure | {raw.positive}
            sampled = sample_negatives(corpus_ids, exclude | set(raw.negatives), m.sampled_negatives, rng)
            cl, topped = build_list(
                raw.qid, raw.positive, raw.negatives, sampled, list_length=list_length, rng=rng,
                corpus_ids=corpus_ids, exclude=exclude, source=raw.source,
            )
            topped_up += topped > 0
            teacher_lists.append(cl)
    lists += teacher_lists

    _check_no_positive_negatives(lists, data.qrels)
    num_queries = len({cl.qid for cl in lists})
    labelled_queries = len({cl.qid for cl in teacher_lists})
    provenance = {
        "round": round_index,
        "source": source,
        "retriever": retriever_desc,
        "reranker": reranker_desc,
        "first_round": m.first_round,
        "depth": m.depth,
        "skip_top": m.skip_top,
        "denoise": bool(score and m.denoise),
        "false_negative_threshold": m.false_negative_threshold,
        "false_negative_rank": m.false_negative_rank,
        "pseudo_positive_threshold": m.pseudo_positive_threshold,
        "sampled_negatives": m.sampled_negatives,
        "label_unlabeled": bool(unlabeled),
        "unlabeled_positive_threshold": m.unlabeled_positive_threshold,
        "unlabeled_negative_threshold": m.unlabeled_negative_threshold,
        "seed": m.seed,
        "list_length": list_length,
        "train_split": cfg.data.train_split,
        "min_positive_grade": cfg.data.min_positive_grade,
        "data_path": str(getattr(data, "path", cfg.data.path)),
        "corpus_fingerprint": corpus.fingerprint() if hasattr(corpus, "fingerprint") else None,
        "num_queries": num_queries,
        "training_queries": len(train_queries),
        "title_queries": sum(1 for qid in train_queries if is_title_query(qid)),
        "dropped_false_negatives": dropped_pairs,
        "pseudo_positives": n_pseudo,
        "topped_up": topped_up,
        "labelled_queries": labelled_queries,
        "teacher_lists": len(teacher_lists),
    }
    write_candidates(output, lists, provenance=provenance)
    logger.info(
        "mined %d lists for %d queries (%s, depth %d, round %d): %d false negatives dropped, %d pseudo-positives, "
        "%d lists topped up, %d unlabeled queries labelled -> %s",
        len(lists), num_queries, source, m.depth, round_index, dropped_pairs, n_pseudo, topped_up,
        labelled_queries, output,
    )
    return broadcast_object(MiningResult(  # the same result on every process (they wait for it here)
        path=output,
        num_lists=len(lists),
        num_queries=num_queries,
        dropped_false_negatives=dropped_pairs,
        pseudo_positives=n_pseudo,
        topped_up=topped_up,
        source=source,
        labelled_queries=labelled_queries,
        teacher_lists=len(teacher_lists),
    ))


def _check_no_positive_negatives(lists: Sequence[CandidateList], qrels_by_split: Mapping[str, Qrels]) -> None:
    """The invariant, checked before anything is written: no negative is a judged positive of its query."""
    for cl in lists:
        judged = judged_relevant(qrels_by_split, cl.qid)
        bad = [pid for pid in cl.negatives if judged.get(pid, 0) > 0]
        if bad:  # a bug here, never a data problem: fail loudly rather than train on it
            raise AssertionError(f"mining produced judged positive(s) {bad} of query {cl.qid!r} as negatives")
