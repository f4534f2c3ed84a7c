"""Candidate mining: retrieve, drop judged positives, denoise with the re-ranker, augment, pseudo-label.

RocketQA's recipe, one pure step per function so each can be tested by hand, then the driver ``mine``:

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rocketkd.config import Config
from rocketkd.data.dataset import positives_of
from rocketkd.distributed import (
    broadcast_object,
    gather_objects,
    gather_rows,
    is_main,
    local_device,
    scatter_objects,
    shard_rows,
    world,
)
from rocketkd.errors import ConfigError
from rocketkd.types import CandidateList, Qrels, Run

logger = logging.getLogger(__name__)

__all__ = [
    "MiningResult",
    "build_list",
    "denoise",
    "drop_positives",
    "judged_relevant",
    "label_unlabeled",
    "mine",
    "pseudo_positives",
    "ranked",
    "sample_negatives",
    "sigmoid",
]

# (query, passage) pairs scored per ``predict`` call: big enough to keep the re-ranker busy, small enough that
# the texts of one chunk fit comfortably in memory on MS MARCO.
PAIRS_PER_CHUNK = 8192


# --------------------------------------------------------------------------------------------------- pure pieces


def sigmoid(logits: np.ndarray | Sequence[float]) -> np.ndarray:
    """Logistic function, numerically stable for large |x| (the re-ranker's one-logit head -> probability)."""
    x = np.asarray(logits, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def ranked(scores: Mapping[str, float]) -> list[str]:
    """A run's passages best first; ties broken by passage id so the order never depends on dict order."""
    return sorted(scores, key=lambda pid: (-float(scores[pid]), pid))


def judged_relevant(qrels_by_split: Mapping[str, Qrels], qid: str) -> dict[str, int]:
    """The query's judgements merged over every split (highest grade wins): what no negative may ever be."""
    merged: dict[str, int] = {}
    for qrels in qrels_by_split.values():
        for pid, grade in qrels.get(qid, {}).items():
            merged[pid] = max(int(grade), merged.get(pid, int(grade)))
    return merged


def drop_positives(ranked: Sequence[str], qrels_for_query: Mapping[str, int]) -> list[str]:
    """``ranked`` without any passage judged relevant to the query (grade > 0, whatever ``min_positive_grade`` is).

    Passages judged 0 (explicitly not relevant) stay: they are the safest negatives there are.
    """
    return [pid for pid in ranked if qrels_for_query.get(pid, 0) <= 0]


def denoise(
    candidates: Sequence[str],
    scores: np.ndarray | Sequence[float],
    *,
    false_negative_threshold: float | None,
    false_negative_rank: int | None = None,
    positive_score: float | None = None,
) -> tuple[list[str], list[str]]:
    """Split mined negatives into (kept, dropped) by the re-ranker's logits ``scores`` (one per candidate).

    Two rules; a candidate is dropped when either fires:

    * threshold (RocketQA): ``sigmoid(logit) > false_negative_threshold``: the re-ranker is confident the passage
      is relevant, so it is most likely an unlabeled positive. ``None`` switches the rule off.
    * rank (optional): let r be the number of candidates the re-ranker scores strictly above the list's positive
      (``positive_score``, a logit). The top ``max(0, r - false_negative_rank)`` candidates by score are dropped,
      i.e. every negative ranked more than ``false_negative_rank`` places above the positive. ``0`` drops every
      negative that outscores the positive.

    Both lists keep the candidates' original (retrieval) order.
    """
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores) != len(candidates):
        raise ValueError(f"denoise: {len(candidates)} candidates but {len(scores)} scores")
    drop = np.zeros(len(candidates), dtype=bool)
    if false_negative_threshold is not None:
        drop |= sigmoid(scores) > false_negative_threshold
    if false_negative_rank is not None:
        if positive_score is None:
            raise ValueError("denoise: the rank rule (false_negative_rank) needs the positive's score")
        if false_negative_rank < 0:
            raise ValueError(f"denoise: false_negative_rank must be >= 0, got {false_negative_rank}")
        above = int((scores > positive_score).sum())
        n_drop = max(0, above - false_negative_rank)
        order = np.argsort(-scores, kind="stable")  # ties keep retrieval order
        drop[order[:n_drop]] = True
    kept = [pid for pid, d in zip(candidates, drop) if not d]
    dropped = [pid for pid, d in zip(candidates, drop) if d]
    return kept, dropped


def pseudo_positives(
    candidates: Sequence[str], scores: np.ndarray | Sequence[float], threshold: float | None
) -> list[str]:
    """Candidates whose re-ranker probability is above ``threshold`` (``None``: none), in candidate order."""
    if threshold is None:
        return []
    probs = sigmoid(scores).reshape(-1)
    if len(probs) != len(candidates):
        raise ValueError(f"pseudo_positives: {len(candidates)} candidates but {len(probs)} scores")
    return [pid for pid, p in zip(candidates, probs) if p > threshold]


def sample_negatives(
    corpus_ids: Sequence[str], exclude: Iterable[str], n: int, rng: random.Random
) -> list[str]:
    """``n`` distinct passages drawn uniformly from ``corpus_ids``, none of them in ``exclude``.

    Rejection sampling (cheap on a large corpus); when rejections pile up (a tiny corpus, a huge ``exclude``) it
    falls back to sampling from the explicit remainder. Returns fewer than ``n`` only when fewer are left.
    """
    if n <= 0 or not corpus_ids:
        return []
    excluded = set(exclude)
    chosen: list[str] = []
    seen: set[str] = set()
    attempts, max_attempts = 0, 20 * n + 100
    while len(chosen) < n and attempts < max_attempts:
        attempts += 1
        pid = corpus_ids[rng.randrange(len(corpus_ids))]
        if pid in excluded or pid in seen:
            continue
        seen.add(pid)
        chosen.append(pid)
    if len(chosen) < n:
        rest = [pid for pid in dict.fromkeys(corpus_ids) if pid not in excluded and pid not in seen]
        chosen += rng.sample(rest, min(n - len(chosen), len(rest)))
    return chosen


def build_list(
    qid: str,
    positive: str,
    denoised_negatives: Sequence[str],
    sampled_negatives: Sequence[str],
    *,
    list_length: int,
    rng: random.Random,
    corpus_ids: Sequence[str] = (),
    exclude: Iterable[str] = (),
    source: str = "",
) -> tuple[CandidateList, int]:
    """Hybrid augmentation: ``[positive, *denoised_negatives, *sampled_negatives]`` (duplicates removed, order kept).

    The mined negatives keep their rank order; the sampled ones follow, undenoised. When fewer than
    ``list_length - 1`` negatives remain, more are sampled from ``corpus_ids`` (never one in ``exclude``, which must
    hold the query's judged positives, nor one already in the list). Returns the list and how many top-up
    negatives it needed (0 for most lists). Raises ``ConfigError`` when the corpus cannot fill the list.
    """
    pids = [positive]
    seen = {positive}
    for pid in [*denoised_negatives, *sampled_negatives]:
        if pid not in seen:
            seen.add(pid)
            pids.append(pid)
    missing = list_length - len(pids)
    topped = 0
    if missing > 0:
        extra = sample_negatives(corpus_ids, seen | set(exclude), missing, rng)
        pids += extra
        topped = len(extra)
    if len(pids) < max(list_length, 2):
        raise ConfigError(
            f"candidates.list_length={list_length} but query {qid!r} can only get {len(pids)} candidates "
            f"(corpus of {len(corpus_ids)} passages); lower candidates.list_length"
        )
    return CandidateList(qid=qid, pids=pids, source=source), topped


def label_unlabeled(
    queries: Mapping[str, str] | Iterable[str],
    run: Run,
    scores: Mapping[str, Mapping[str, float]],
    pos_threshold: float,
    neg_threshold: float,
    *,
    source: str = "teacher",
) -> list[CandidateList]:
    """Teacher labelling (RocketQA's data augmentation) of queries that have no judgements.

    For each query (in id order) the retrieved candidates are taken in rank order; one with re-ranker probability
    ``sigmoid(logit) > pos_threshold`` becomes the positive of its own list, those with probability
    ``< neg_threshold`` are the negatives of every such list (candidates in between are left out: the teacher is
    unsure). A query without a confident positive or without a confident negative gives no list. Candidates the
    teacher did not score are ignored.

    The lists hold only the teacher's own negatives and may be shorter than G: ``mine`` augments them with
    ``build_list`` like every other list (sampled negatives, top-up).
    """
    if neg_threshold > pos_threshold:
        raise ValueError(f"label_unlabeled: neg_threshold {neg_threshold} is above pos_threshold {pos_threshold}")
    lists = []
    for qid in sorted(queries):
        q_scores = scores.get(qid, {})
        order = [pid for pid in ranked(run.get(qid, {})) if pid in q_scores]
        if not order:
            continue
        probs = sigmoid([q_scores[pid] for pid in order])
        positives = [pid for pid, p in zip(order, probs) if p > pos_threshold]
        negatives = [pid for pid, p in zip(order, probs) if p < neg_threshold]
        if not positives or not negatives:
            continue
        lists += [CandidateList(qid=qid, pids=[pos, *negatives], source=source) for pos in positives]
    return lists


# -------------------------------------------------------------------------------------------------------- driver


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


def _describe(model: Any) -> str:
    if isinstance(model, (str, Path)):
        return str(model)
    for attr in ("name_or_path", "path"):
        value = getattr(model, attr, None)
        if isinstance(value, (str, Path)) and str(value):
            return str(value)
    inner = getattr(model, "model", None)
    value = getattr(getattr(inner, "config", None), "_name_or_path", None)
    return str(value) if value else type(model).__name__


def _first_stage(cfg: Config, data: Any, retriever: Any, show_progress: bool):
    """(search(queries, k) -> Run, source, description) for BM25, the base encoder or a trained retriever."""
    if retriever is None and cfg.mining.first_round == "bm25":
        from rocketkd.search.bm25 import BM25Retriever

        bm25 = BM25Retriever.build(data.corpus, show_progress=show_progress)
        return _sharded(bm25.search), "bm25", "bm25"

    from rocketkd.models import resolve_model_path
    from rocketkd.search.index import DenseIndex, search_run

    m = cfg.model
    model = retriever
    if retriever is None or isinstance(retriever, (str, Path)):
        path = resolve_model_path(retriever if retriever is not None else m.retriever)
        from rocketkd.models.loading import load_retriever

        model = load_retriever(cfg, path)
        description = path
    else:
        description = _describe(retriever)
    ix = cfg.index
    # several processes: each encodes its share of the corpus, the main process alone holds the index (None here)
    index = DenseIndex.build(
        model, data.corpus, factory=ix.factory, batch_size=ix.batch_size, autocast=ix.autocast,
        train_sample=ix.train_sample, show_progress=show_progress,
    )

    def search(queries: Mapping[str, str], k: int) -> Run | None:
        if world()[1] == 1:
            return search_run(index, queries, k, batch_size=ix.batch_size, autocast=ix.autocast)
        # each process encodes its share of the queries; the main process searches them all against its index
        from rocketkd.search.encode import encode_queries

        qids = list(queries)
        share = shard_rows(len(qids), *world())
        emb = encode_queries(
            model, [queries[q] for q in qids[share.start : share.stop]], batch_size=ix.batch_size,
            autocast=ix.autocast,
        )
        emb = gather_rows(emb, share, len(qids))
        if index is None or emb is None:
            return None
        result = index.search(emb, k)
        return {
            qid: {pid: float(x) for pid, x in zip(pids, scores.tolist())}
            for qid, pids, scores in zip(qids, result.ids, result.scores)
        }

    return search, "dense", description


def _sharded(search: Any) -> Any:
    """``search(queries, k) -> Run`` run by every process on its share of the queries, merged on the main process.

    One process: ``search`` itself. Several: the main process gets the whole run (in query order), the others None.
    """

    def sharded(queries: Mapping[str, str], k: int) -> Run | None:
        if world()[1] == 1:
            return search(queries, k)
        qids = list(queries)
        share = shard_rows(len(qids), *world())
        part = search({q: queries[q] for q in qids[share.start : share.stop]}, k)
        hits = gather_objects([part.get(q, {}) for q in qids[share.start : share.stop]], share, len(qids))
        return None if hits is None else dict(zip(qids, hits))

    return sharded


def _load_reranker(cfg: Config, reranker: Any) -> tuple[Any, str]:
    if reranker is None or hasattr(reranker, "predict"):
        return reranker, (None if reranker is None else _describe(reranker))
    from rocketkd.models import CrossEncoderRanker, resolve_model_path

    path = resolve_model_path(reranker)
    model = CrossEncoderRanker.from_pretrained(path, max_length=cfg.model.reranker_max_length).to(local_device())
    return model, path


def _score_pairs(
    reranker: Any,
    plan: Sequence[tuple[str, str]] | None,
    queries: Mapping[str, str],
    corpus: Any,
    *,
    batch_size: int,
    autocast: str,
    show_progress: bool,
) -> dict[str, dict[str, float]] | None:
    """Re-ranker logits of (query id, passage id) pairs: one batched ``predict`` per chunk of pairs.

    Several processes (every one calls it; only the main process's ``plan`` is read): the pairs are split into
    contiguous shares, each process scores its share, and the main process gets every logit back by pair position
    and returns the dict; the others return None.
    """
    from rocketkd.search.encode import resolve_autocast
    from rocketkd.search.rerank import score_pairs

    sharded = world()[1] > 1
    full = list(dict.fromkeys(plan)) if plan is not None and is_main() else None
    plan, share, n_total = scatter_objects(full) if sharded else (full, range(len(full)), len(full))
    dtype = resolve_autocast(autocast, getattr(reranker, "device", "cpu"))
    logits_all = score_pairs(reranker, plan, queries, corpus, batch_size=batch_size, autocast_dtype=dtype,
                             desc="denoise", show_progress=show_progress, chunk=PAIRS_PER_CHUNK)
    if sharded:
        logits_all = gather_rows(logits_all, share, n_total)
        if logits_all is None:  # not the main process: its logits are with the main process now
            return None
        plan = full
    out: dict[str, dict[str, float]] = {}
    for (qid, pid), score in zip(plan, logits_all.tolist()):
        out.setdefault(qid, {})[pid] = score
    return out


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
    from rocketkd.candidates.title_queries import apply_data_config, is_title_query
    from rocketkd.data.formats import load_retrieval_data, write_candidates
    from rocketkd.distributed import main_process_first

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

    search, source, retriever_desc = _first_stage(cfg, data, retriever, show_progress)
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
        scores = _score_pairs(
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
