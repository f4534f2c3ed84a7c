"""The ensemble of teachers: each member's raw scores of a list become one target distribution per list.

An *ensemble of soft targets* as in Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"
(arXiv:1503.02531, sec. 1 and 5: the soft targets of an ensemble, optionally with the generalist model itself as a
member).

Normalisation, and why. Raw scores of different members live on different scales: BM25 scores are unbounded
sums of idf-weighted term weights (often 5-40 and query-length dependent), cosines lie in [-1, 1] and bunch up
within a few hundredths, cross-encoder logits spread over +-10. A softmax of the raw scores would make BM25 an
almost one-hot teacher and the cosine an almost uniform one, so the same temperature would mean different things
per member. Each member's scores are therefore z-scored *per list* (``(s - mean) / std`` over that query's
candidates) before the softmax: the temperature is then in units of that list's standard deviation for every
member, and an arithmetic mixture weighs members by the weights given, not by their accidental scale.

The ensemble's output, per list, is log-probabilities (:func:`ensemble_logprobs`). They are what
``CandidateList.teacher_scores`` holds (:func:`attach_teacher_scores`); :func:`rocketkd.training.objective.mix_teachers`
applies ``log_softmax`` to them again, which leaves log-probabilities unchanged, and mixes in the online re-ranker.

Everything here is arithmetic on score arrays: no model, no corpus.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from rocketkd.types import CandidateList

__all__ = [
    "COMBINATIONS",
    "NORMALIZATIONS",
    "attach_teacher_scores",
    "combine_logprobs",
    "ensemble_logprobs",
    "member_logprobs",
    "normalize",
]

NORMALIZATIONS = ("zscore", "minmax", "none")
COMBINATIONS = ("arithmetic", "geometric")


def normalize(scores: np.ndarray | Sequence[float], how: str = "zscore") -> np.ndarray:
    """One list's scores put on a common scale, float64 ``(G,)``.

    ``"zscore"``: ``(s - mean) / std`` (population std) -- the default, see the module docstring for why;
    ``"minmax"``: ``(s - min) / (max - min)`` in [0, 1]; ``"none"``: the scores as they are.
    A constant list (no spread, including a single candidate) becomes all zeros under ``"zscore"`` and ``"minmax"``:
    it carries no preference, and zeros give a uniform softmax. Non-finite scores raise ``ValueError``.
    """
    if how not in NORMALIZATIONS:
        raise ValueError(f"unknown normalisation {how!r}; expected one of {', '.join(NORMALIZATIONS)}")
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"expected one list's scores (1-D), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite (got NaN or inf)")
    if how == "none" or s.size == 0:
        return s.copy()
    if how == "zscore":
        std = float(s.std())
        if std <= 1e-12 * max(1.0, float(np.abs(s).max())):
            return np.zeros_like(s)
        return (s - s.mean()) / std
    spread = float(s.max() - s.min())
    if spread <= 1e-12 * max(1.0, float(np.abs(s).max())):
        return np.zeros_like(s)
    return (s - s.min()) / spread


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max()
    return shifted - math.log(float(np.exp(shifted).sum()))


def _logsumexp(x: np.ndarray, axis: int = 0) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return np.squeeze(top, axis=axis) + np.log(np.exp(x - top).sum(axis=axis))


def member_logprobs(scores: np.ndarray | Sequence[float], how: str = "zscore", temperature: float = 1.0) -> np.ndarray:
    """One member's distribution over one list, as log-probabilities: ``log_softmax(normalize(s, how) / T)``."""
    return _log_softmax(normalize(scores, how) / temperature)


def combine_logprobs(logp: np.ndarray, weights: np.ndarray, combine: str = "arithmetic") -> np.ndarray:
    """(M, G) member log-probabilities and (M,) weights summing to 1 -> (G,) ensemble log-probabilities.

    ``"arithmetic"``: ``log sum_m w_m p_m``; ``"geometric"``: ``log_softmax(sum_m w_m log p_m)``
    (see :func:`ensemble_logprobs`).
    """
    if combine == "arithmetic":
        return _logsumexp(logp + np.log(weights)[:, None], axis=0)
    return _log_softmax((weights[:, None] * logp).sum(axis=0))


def _check_weights(weights: Sequence[float], count: int) -> np.ndarray:
    """Weights >= 0, not all 0, one per member -> renormalised to sum to 1."""
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (count,):
        raise ValueError(f"expected {count} weights (one per member), got {len(weights)}")
    if not np.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"ensemble weights must be finite and >= 0, got {list(map(float, w))}")
    if w.sum() <= 0:
        raise ValueError("ensemble weights are all zero: there is no teacher to distil from")
    return w / w.sum()


def _per_member(value: str | Sequence[str], count: int, what: str) -> list[str]:
    if isinstance(value, str):
        return [value] * count
    value = list(value)
    if len(value) != count:
        raise ValueError(f"expected one {what} per member ({count}), got {len(value)}")
    return value


def ensemble_logprobs(
    members: Sequence[Sequence[np.ndarray | Sequence[float]]],
    weights: Sequence[float],
    *,
    temperatures: Sequence[float] | None = None,
    combine: str = "arithmetic",
    normalize_how: str | Sequence[str] = "zscore",
) -> list[np.ndarray]:
    """One target distribution per list from M members' raw scores; returns log-probabilities (float64 per list).

    ``members[m][i]`` is member m's raw scores of list i (all members score the same lists, in the same order).
    Per list, each member's scores are normalised (``normalize_how``, one name or one per member; z-scores by
    default, see the module docstring) and turned into a distribution at the member's temperature::

        p_m = softmax(normalize(s_m) / T_m)

    ``combine="arithmetic"``: ``log sum_m w_m p_m`` -- the mean of the members' distributions, Hinton et al. 2015's
    ensemble of soft targets (a mixture: a candidate any member ranks high keeps mass).
    ``combine="geometric"``: ``log_softmax(sum_m w_m log p_m)`` -- the renormalised weighted geometric mean (a
    product of experts: a candidate needs every member's support).

    ``weights`` must be >= 0 and not all zero; they are renormalised to sum to 1 (so ``[2, 2]`` means
    ``[0.5, 0.5]``). A member of weight 0 is not computed at all. ``temperatures`` default to 1 for every member.
    An ensemble of one member is that member's ``log_softmax(normalize(s) / T)`` under both combinations.
    """
    if combine not in COMBINATIONS:
        raise ValueError(f"unknown combination {combine!r}; expected one of {', '.join(COMBINATIONS)}")
    if not members:
        raise ValueError("an ensemble needs at least one member")
    count = len(members)
    w = _check_weights(weights, count)
    temps = [1.0] * count if temperatures is None else [float(t) for t in temperatures]
    if len(temps) != count:
        raise ValueError(f"expected one temperature per member ({count}), got {len(temps)}")
    for t in temps:
        if not (math.isfinite(t) and t > 0):
            raise ValueError(f"temperatures must be finite and > 0, got {t!r}")
    hows = _per_member(normalize_how, count, "normalisation")
    num_lists = len(members[0])
    for m, member in enumerate(members):
        if len(member) != num_lists:
            raise ValueError(f"member {m} scores {len(member)} lists, member 0 scores {num_lists}")
    active = [m for m in range(count) if w[m] > 0]
    out: list[np.ndarray] = []
    for i in range(num_lists):
        sizes = {len(members[m][i]) for m in range(count)}
        if len(sizes) != 1:
            raise ValueError(f"list {i}: the members score different numbers of candidates {sorted(sizes)}")
        logp = np.stack([member_logprobs(members[m][i], hows[m], temps[m]) for m in active])  # (M', G)
        out.append(combine_logprobs(logp, w[active], combine))
    return out


def attach_teacher_scores(lists: Sequence[CandidateList], logprobs: Sequence[np.ndarray]) -> list[CandidateList]:
    """New ``CandidateList`` objects carrying ``logprobs`` (one array per list, ``pids`` order) as teacher_scores."""
    if len(lists) != len(logprobs):
        raise ValueError(f"{len(lists)} lists but {len(logprobs)} score arrays")
    out = []
    for cl, lp in zip(lists, logprobs):
        values = np.asarray(lp, dtype=np.float64).reshape(-1)
        if len(values) != len(cl.pids):
            raise ValueError(f"query {cl.qid!r}: {len(values)} teacher scores for {len(cl.pids)} candidates")
        if not np.isfinite(values).all():
            raise ValueError(f"query {cl.qid!r}: non-finite teacher scores")
        out.append(dataclasses.replace(cl, pids=list(cl.pids), teacher_scores=[float(v) for v in values]))
    return out
