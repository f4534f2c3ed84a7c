"""Teacher targets: the one place candidate lists become the distributions the retriever is distilled toward.

Both recipes call :func:`build_targets`, and differ only in what they hand it:

- the pipeline's teachers stage (``rocketkd.pipeline``): the members of ``pipeline.teacher_members``, their weights
  *fitted* on held-out queries (:func:`~rocketkd.teachers.check.check_teachers`), the re-ranker weighed there but
  taught online in the joint step, so never stored;
- a lone ``rocketkd train`` (:func:`teacher_lists`): the members and weights of ``train.teachers``, the configured
  mixture judged on dev (:func:`~rocketkd.teachers.check.check_ensemble`); written to ``teacher_lists.jsonl``
  and reused on resume.

What :func:`build_targets` does, in this order:

1. a scorer per member (:func:`member_scorer`: BM25; ``base`` = ``model.retriever`` as it starts; the re-ranker
   frozen; seeded noise), models made only by :mod:`rocketkd.models.loading`;
2. the offline members' sharpness: ``train.teacher_scale``, else the student's own mean per-list spread on the
   lists it will train on (:func:`student_spread`). Offline members are z-scored per list and taken at temperature
   ``1 / scale``; the re-ranker's raw logits at ``train.temperature``, as the online one is used;
3. the held-out check, where one is asked for: the student searches the held-out queries (``eval.rerank_depth``
   deep), every member scores those candidates, and the check fits or judges the weights;
4. the ensemble of the members stored (positive weight, not online) scored on the lists and attached as their
   ``teacher_scores`` (:func:`apply_ensemble`). Nothing is attached when the check rejects the teachers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rocketkd.config import PIPELINE_TEACHERS, Config
from rocketkd.data.formats import read_candidates, read_provenance, write_candidates
from rocketkd.distributed import barrier, is_main
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.io import write_json
from rocketkd.models import resolve_model_path
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.search.fusion import candidates_from_run
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.stamps import dev_start_stamp, lists_fingerprint, make_stamp, reusable, write_stamp
from rocketkd.teachers.check import EnsembleChoice, check_ensemble, check_teachers
from rocketkd.teachers.ensemble import attach_teacher_scores, ensemble_logprobs
from rocketkd.teachers.scorers import (
    BM25Scorer,
    RandomScorer,
    RerankerScorer,
    RetrieverScorer,
    Scorer,
    scores_on_candidates,
)
from rocketkd.types import CandidateList

if TYPE_CHECKING:
    from rocketkd.data.corpus import Corpus
    from rocketkd.data.formats import RetrievalData
    from rocketkd.models import DualEncoder
    from rocketkd.types import Qrels, Queries, Run

__all__ = [
    "HeldOut",
    "MEMBERS",
    "Targets",
    "apply_ensemble",
    "build_targets",
    "member_scorer",
    "student_spread",
    "teacher_lists",
    "teachers_rejected",
]

logger = logging.getLogger(__name__)

MEMBERS = PIPELINE_TEACHERS  # the teachers a config can name (train.teachers, pipeline.teacher_members)
ONLINE = "reranker"  # its raw logits are a distribution already: not z-scored, taken at train.temperature


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


def member_scorer(cfg: Config, data: RetrievalData, name: str, *, reranker: str | None = None) -> Scorer:
    """The scorer of teacher ``name`` (one of :data:`MEMBERS`).

    ``bm25``: BM25 over ``data.corpus``; ``base``: ``model.retriever`` as it starts; ``reranker``: the re-ranker at
    ``reranker`` (default ``model.reranker``), frozen; ``random``: seeded noise (``train.seed``), a control.
    """
    if name == "bm25":
        return BM25Scorer(data.corpus)
    if name == "base":
        return RetrieverScorer(load_retriever(cfg, cfg.model.retriever))
    if name == "reranker":
        return RerankerScorer(load_reranker(cfg, reranker or cfg.model.reranker, trainable=False))
    if name == "random":
        return RandomScorer(cfg.train.seed)
    raise ValueError(f"unknown teacher {name!r}; expected one of {', '.join(MEMBERS)}")


def apply_ensemble(
    lists: Sequence[CandidateList],
    scorers: Mapping[str, Scorer],
    weights: Mapping[str, float],
    queries: Queries,
    corpus: Corpus,
    *,
    temperatures: Mapping[str, float] | None = None,
    combine: str = "arithmetic",
    normalize_how: str | Mapping[str, str] = "zscore",
    scored: Mapping[str, Sequence[np.ndarray]] | None = None,
) -> list[CandidateList]:
    """Score ``lists`` with every scorer of positive weight, ensemble them, and attach the log-probabilities.

    Members are scored and mixed in the order of ``weights`` (:func:`~rocketkd.teachers.ensemble.ensemble_logprobs`
    with ``temperatures``, name -> T, default 1, and ``normalize_how``, one name or name -> name). ``scored``: a
    member's scores of these very ``lists`` computed already (name -> one array per list), used instead of scoring
    again. Members named in ``weights`` but absent from ``scorers`` must have weight 0. Raises ``ValueError`` when
    no weight is positive (a check said: do not distil).
    """
    used = [n for n, w in weights.items() if w > 0]
    if not used:
        raise ValueError("every teacher weight is 0: there is nothing to distil (train on labels only)")
    scored = scored or {}
    missing = [n for n in used if n not in scorers and n not in scored]
    if missing:
        raise ValueError(f"no scorer for teacher(s) {missing} of positive weight")
    member_scores = [scored[n] if n in scored else scorers[n].score(lists, queries, corpus) for n in used]
    hows = [normalize_how if isinstance(normalize_how, str) else normalize_how.get(n, "zscore") for n in used]
    temps = [float((temperatures or {}).get(n, 1.0)) for n in used]
    logprobs = ensemble_logprobs(
        member_scores, [weights[n] for n in used], temperatures=temps, combine=combine, normalize_how=hows
    )
    return attach_teacher_scores(lists, logprobs)


@dataclass
class HeldOut:
    """Where the teachers are checked before they teach: held-out queries and their qrels.

    ``encoder`` encodes the corpus for the student's search of them. None: the student as ``cfg.model`` makes it
    (:func:`rocketkd.models.loading.load_retriever`), the model whose spread sets the teachers' sharpness. A model
    folder: loaded by :meth:`rocketkd.search.index.DenseIndex.build` with the folder's *own* settings (pooling,
    similarity, max lengths), not ``cfg.model``'s -- the pipeline's teachers stage has always searched so, and
    keeps it so that its recorded numbers do not move; a config that overrides the lengths (demo.yaml) searches
    with other lengths there than the student trains with.
    """

    queries: Queries
    qrels: Qrels
    encoder: DualEncoder | str | None = None


@dataclass
class Targets:
    """What :func:`build_targets` made.

    lists:        the candidate lists, with the stored ensemble's log-probabilities as ``teacher_scores`` (the lists
                  as given when nothing is stored)
    scale:        the offline members' sharpness (z-scores times ``scale``; temperature ``1 / scale``)
    stored:       the weights of the ensemble attached, name -> weight > 0 (empty: nothing attached)
    choice:       the held-out check's verdict (None: not checked)
    run:          the student's search of the held-out queries, ``eval.rerank_depth`` deep (None: not checked)
    temperatures: every member's temperature
    """

    lists: list[CandidateList]
    scale: float
    stored: dict[str, float]
    choice: EnsembleChoice | None = None
    run: Run | None = None
    temperatures: dict[str, float] = field(default_factory=dict)


def build_targets(
    cfg: Config,
    data: RetrievalData,
    lists: Sequence[CandidateList],
    members: Sequence[str],
    *,
    weights: Mapping[str, float] | None = None,
    held_out: HeldOut | None = None,
    online: Sequence[str] = (),
    student: str | None = None,
    reranker: str | None = None,
) -> Targets:
    """Score, check and ensemble the teachers ``members`` (names of :data:`MEMBERS`, scored in this order) on
    ``lists``; see the module docstring for the steps.

    ``weights``: None fits the weights on ``held_out`` (``check_teachers``: ``pipeline.teacher_min_gain``,
    ``pipeline.zero_bad_teachers``); a mapping (name -> weight > 0, over ``members``) is the configured mixture,
    judged as a whole on ``held_out`` when given (``check_ensemble``) and stored with these weights if it passes.
    ``held_out``: where to check (None: no check; then ``weights`` are needed). ``online``: members taught online in
    the joint step -- checked and weighted beside the others, never stored. ``student``: the retriever being
    distilled (default ``model.retriever``); ``reranker``: the re-ranker member's folder (default ``model.reranker``).
    Ensembles combine per ``train.teacher_combine``.
    """
    t = cfg.train
    names = list(members)
    if weights is None and held_out is None:
        raise ValueError("build_targets: fitting the teachers' weights needs held-out queries")
    if weights is not None and any(n not in names for n in weights):
        raise ValueError(f"build_targets: weights {dict(weights)} name teachers outside the members {names}")
    queries = data.all_queries()
    scorers = {n: member_scorer(cfg, data, n, reranker=reranker) for n in names}
    start = student or cfg.model.retriever
    same = resolve_model_path(start) == resolve_model_path(cfg.model.retriever)

    @functools.cache
    def the_student() -> RetrieverScorer:  # loaded only where needed: for the spread or the held-out search
        if same and "base" in scorers:
            return scorers["base"]
        return RetrieverScorer(load_retriever(cfg, start))

    # The student's spread on the lists it will train on, not on its held-out top-k: those candidates all score
    # near the top, so their spread is ~4x smaller (cranfield: 0.63 against 2.69) and the teachers would be that
    # much too flat.
    scored: dict[str, list[np.ndarray]] = {}
    scale = t.teacher_scale
    if not scale:
        spread = the_student().score(lists, queries, data.corpus)
        if the_student() is scorers.get("base"):
            scored["base"] = spread  # the same encoder scores the same lists: not twice
        scale = student_spread(spread, cfg.model.score_scale)
        logger.info("offline teachers at the student's spread: z-scores x %.3f", scale)
    temperatures = {n: t.temperature if n == ONLINE else 1.0 / scale for n in names}
    hows = {n: "none" if n == ONLINE else "zscore" for n in names}

    choice = run = None
    if held_out is not None:
        encoder = held_out.encoder if held_out.encoder is not None else the_student().model
        index = DenseIndex.build(encoder, data.corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast,
                                 distributed=False)
        run = search_run(index, held_out.queries, cfg.eval.rerank_depth, distributed=False)
        candidates = candidates_from_run(run, cfg.eval.rerank_depth)
        on_held_out = {n: scores_on_candidates(s, candidates, held_out.queries, data.corpus) for n, s in scorers.items()}
        if weights is None:
            choice = check_teachers(
                candidates, run, on_held_out, held_out.qrels, min_gain=cfg.pipeline.teacher_min_gain,
                normalize_how=hows, temperatures=temperatures, combine=t.teacher_combine,
                zero_bad=cfg.pipeline.zero_bad_teachers,
            )
        else:
            choice = check_ensemble(
                candidates, run, on_held_out, weights, held_out.qrels, min_gain=cfg.pipeline.teacher_min_gain,
                combine=t.teacher_combine, normalize_how=hows, temperatures=temperatures,
            )

    stored: dict[str, float] = {}
    if choice is None or choice.usable:
        chosen = weights if weights is not None else choice.weights
        stored = {n: w for n, w in chosen.items() if w > 0 and n not in online}
    out = list(lists)
    if stored:
        logger.info("scoring %d lists with the offline teachers %s", len(out), stored)
        out = apply_ensemble(out, scorers, stored, queries, data.corpus, temperatures=temperatures,
                             combine=t.teacher_combine, normalize_how=hows, scored=scored)
    return Targets(lists=out, scale=scale, stored=stored, choice=choice, run=run, temperatures=temperatures)


# ----------------------------------------------------------------------------------------------------------------
# A lone `rocketkd train`


def teacher_lists(cfg: Config, data: RetrievalData, lists: list[CandidateList], output_dir: str | Path,
                  retriever_path: str | None = None, reranker_path: str | None = None) -> list[CandidateList]:
    """``lists`` with the ensemble of ``train.teachers`` attached as stored teacher log-probabilities.

    The configured members (the start re-ranker frozen) score every list once before training and are mixed with
    the configured weights (:func:`build_targets`), after the mixture is judged on ``data.dev_split`` where
    ``train.check_teachers`` asks (``teacher_check.json``; with ``train.eval_dev`` the same search gives the start
    retriever's dev nDCG@10, ``dev_start.json``). Written to ``<output_dir>/teacher_lists.jsonl`` and reused on
    resume; a rejected mixture leaves the lists bare and says so in its provenance (:func:`teachers_rejected`).
    Lists that already carry teacher scores (e.g. the pipeline's checked ensemble) are returned unchanged.
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
    out = Path(output_dir)
    path = out / "teacher_lists.jsonl"
    # reused only if made from the same lists, models, corpus and config (rocketkd.stamps); else built again
    stamp = make_stamp(cfg, None, corpus=data.corpus.fingerprint(), lists=lists_fingerprint(lists),
                       retriever=str(retriever_path or cfg.model.retriever), reranker=str(reranker_path or cfg.model.reranker))
    reuse = reusable(path, stamp, "teacher lists")
    barrier()  # every process has decided before the main process rewrites the file
    if not reuse:
        if is_main():  # the held-out index is built in this process alone
            split = cfg.data.dev_split
            held_out = None
            if t.check_teachers and split in data.qrels:
                held_out = HeldOut(data.split_queries(split), data.qrels[split])
            targets = build_targets(cfg, data, lists, list(weights), weights=weights, held_out=held_out,
                                    student=retriever_path, reranker=reranker_path)
            provenance = {"teachers": weights, "combine": t.teacher_combine, "scale": targets.scale}
            if targets.choice is not None:
                _write_dev_check(cfg, data, targets, out, retriever_path)
                choice = targets.choice
                provenance["dev_check"] = {"student": choice.student_ndcg, "ensemble": choice.ensemble_ndcg,
                                           "usable": choice.usable}
                if not choice.usable:
                    provenance["rejected"] = True  # no teacher scores: train() turns distillation off
            write_candidates(path, targets.lists, provenance=provenance)
            write_stamp(path, stamp)
        barrier()
    return read_candidates(path, corpus=data.corpus, queries=data.all_queries())


def _write_dev_check(cfg: Config, data: RetrievalData, targets: Targets, out: Path, start: str | None) -> None:
    """``teacher_check.json``, and with ``train.eval_dev`` the start retriever's dev nDCG@10 (``dev_start.json``,
    read by the training loop): the check's search answers both, so the corpus is encoded once, not twice."""
    split = cfg.data.dev_split
    choice = targets.choice
    out.mkdir(parents=True, exist_ok=True)
    stamp = dev_start_stamp(cfg, data.corpus, start)
    if cfg.train.eval_dev and not reusable(out / "dev_start.json", stamp, "dev start"):
        value = float(evaluate_run(targets.run, data.qrels[split], ["nDCG@10"]).mean["nDCG@10"])
        logger.info("retriever dev nDCG@10 at the start: %.4f", value)
        write_json(out / "dev_start.json", {"start": value})
        write_stamp(out / "dev_start.json", stamp)
    write_json(out / "teacher_check.json", {
        "split": split, "queries": len(data.split_queries(split)), "depth": cfg.eval.rerank_depth,
        "min_gain": cfg.pipeline.teacher_min_gain, "student_ndcg@10": choice.student_ndcg,
        "ensemble_ndcg@10": choice.ensemble_ndcg, "usable": choice.usable, "weights": choice.weights,
        "members": {r.name: {"nDCG@10": r.ndcg, "weight": r.weight} for r in choice.reports},
    })


def teachers_rejected(cfg: Config, out: Path) -> bool:
    """True when this run's ``train.teachers`` were checked on dev and got weight 0 (``teacher_lists`` meta)."""
    if not any(w > 0 for w in cfg.train.teachers.values()):
        return False
    provenance = read_provenance(Path(out) / "teacher_lists.jsonl") or {}
    return bool(provenance.get("rejected"))
