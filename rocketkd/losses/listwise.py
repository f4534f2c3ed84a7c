"""Listwise losses over each query's candidate list.

Convention used throughout ``rocketkd.losses``: a batch is a ``(B, G)`` tensor of raw
scores (logits). Row ``b`` is the candidate list of query ``b`` (``G`` candidates:
one positive followed by ``G - 1`` negatives) and column 0 holds the positive. The
order of columns 1..G-1 carries no meaning.

References
----------
* Hinton, Vinyals, Dean (2015), "Distilling the Knowledge in a Neural Network",
  arXiv:1503.02531 -- temperature softmax, soft targets, the T**2 factor.
* Ren et al. (2021), "RocketQAv2: A Joint Training Method for Dense Passage Retrieval
  and Passage Re-ranking", arXiv:2110.07367 -- listwise distillation of the
  re-ranker's distribution over a candidate list into the retriever's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "hinton_loss",
    "listwise_ce",
    "listwise_kl",
    "temperature_log_softmax",
    "temperature_softmax",
]

_LIST_REDUCTIONS = ("batchmean", "sum", "none")
_KL_DIRECTIONS = ("teacher_student", "student_teacher")


def _check_temperature(temperature: float) -> None:
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")


def _check_pair(student: Tensor, teacher: Tensor) -> None:
    if student.dim() != 2:
        raise ValueError(f"expected student scores of shape (B, G), got {tuple(student.shape)}")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student and teacher shapes differ: {tuple(student.shape)} vs {tuple(teacher.shape)}"
        )


def _check_reduction(reduction: str) -> None:
    """Accept ``"batchmean"``, ``"sum"``, ``"none"``; reject everything else.

    In particular the element-wise ``"mean"`` of ``torch.nn.functional.kl_div`` (which
    divides by ``B * G`` instead of ``B``) raises ``ValueError``.
    """
    if reduction in _LIST_REDUCTIONS:
        return
    if reduction == "mean":
        raise ValueError(
            "reduction='mean' is not supported: it would divide the summed divergence by B*G "
            "(the number of elements) instead of by B (the number of lists), silently "
            "shrinking the loss by a factor of G; use 'batchmean', 'sum' or 'none'"
        )
    raise ValueError(f"unknown reduction {reduction!r}; expected one of {_LIST_REDUCTIONS}")


def _reduce_lists(per_list: Tensor, reduction: str) -> Tensor:
    """Reduce a ``(B,)`` tensor of per-list losses.

    ``"batchmean"``: mean over lists; ``"sum"``: sum over lists; ``"none"``: the ``(B,)``
    tensor itself. Other values raise ``ValueError`` (see :func:`_check_reduction`).
    """
    _check_reduction(reduction)
    if reduction == "batchmean":
        return per_list.mean()
    if reduction == "sum":
        return per_list.sum()
    return per_list


def _safe_log_probs(probs: Tensor) -> Tensor:
    """``log(probs)`` that is finite everywhere (zeros map to ``log(tiny)``).

    Only used where the zero entries are masked out afterwards (the ``0 * log 0 = 0``
    convention), so the clamp never changes a result; it only keeps ``inf``/``nan`` out
    of the autograd graph.
    """
    tiny = torch.finfo(probs.dtype).tiny
    return torch.log(probs.clamp_min(tiny))


def _kl_rows(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """Row-wise ``KL(p || q) = sum_i p_i (log p_i - log q_i)`` with ``0 * log 0 = 0``.

    ``p``, ``log_p``, ``log_q``: ``(B, G)``. Returns ``(B,)``. Entries where ``p_i == 0``
    contribute exactly 0 (also when ``log_q_i = -inf``, e.g. a candidate masked with
    ``-inf`` in both lists), and no ``nan`` reaches the gradient.
    """
    support = p > 0  # (B, G)
    diff = torch.where(support, log_p - log_q, log_q.new_zeros(()))
    return (p * diff).sum(dim=-1)  # (B,)


def _check_distribution(probs: Tensor, name: str) -> None:
    if (probs < 0).any():
        raise ValueError(f"{name} probabilities must be non-negative")
    sums = probs.sum(dim=-1)
    if not torch.allclose(sums, torch.ones_like(sums), atol=1e-3):
        raise ValueError(f"{name} probabilities must sum to 1 over each list (dim=-1)")


def temperature_softmax(scores: Tensor, T: float = 1.0, dim: int = -1) -> Tensor:
    """Softmax at temperature ``T``: ``p_i = exp(s_i / T) / sum_j exp(s_j / T)``.

    Hinton et al. 2015 (arXiv:1503.02531), eq. (1). ``T > 1`` flattens the distribution
    ("dark knowledge" about the negatives becomes visible), ``T -> inf`` gives uniform.
    """
    _check_temperature(T)
    return F.softmax(scores / T, dim=dim)


def temperature_log_softmax(scores: Tensor, T: float = 1.0, dim: int = -1) -> Tensor:
    """Numerically stable ``log temperature_softmax(scores, T, dim)``."""
    _check_temperature(T)
    return F.log_softmax(scores / T, dim=dim)


def listwise_kl(
    student: Tensor,
    teacher: Tensor,
    *,
    temperature: float = 1.0,
    direction: str = "teacher_student",
    scale_by_t2: bool = True,
    reduction: str = "batchmean",
    teacher_is_logits: bool = True,
) -> Tensor:
    """KL divergence between the teacher's and the student's distributions over each list.

    With ``q = softmax(student / T)`` and ``p = softmax(teacher / T)`` (both ``(B, G)``):

    * ``direction="teacher_student"`` (default, forward KL, mass-covering)::

          loss_b = T^2 * KL(p_b || q_b) = T^2 * sum_i p_bi (log p_bi - log q_bi)

    * ``direction="student_teacher"`` (reverse KL, mode-seeking)::

          loss_b = T^2 * KL(q_b || p_b) = T^2 * sum_i q_bi (log q_bi - log p_bi)

    The ``T^2`` factor is applied iff ``scale_by_t2`` (default True). Hinton et al. 2015
    (arXiv:1503.02531, sec. 2): the gradient of the soft loss w.r.t. the student logits
    is ``(q_i - p_i) / T``, which for large ``T`` scales like ``1 / T^2``; multiplying by
    ``T^2`` keeps its magnitude roughly constant when ``T`` changes. This is the listwise
    distillation loss of RocketQAv2 (arXiv:2110.07367, eq. 4), where the teacher is the
    cross-encoder re-ranker and the student the dual-encoder retriever.

    Args:
        student: ``(B, G)`` student logits (row = one query's list, column 0 = positive).
        teacher: ``(B, G)`` teacher logits, or -- if ``teacher_is_logits=False`` -- an
            already normalised probability distribution per row (e.g. an ensemble's
            averaged distribution); it is then used as-is, *no temperature is applied to
            it* (``T`` still sharpens/flattens the student and still sets the ``T^2``
            factor).
        temperature: ``T > 0``.
        direction: ``"teacher_student"`` or ``"student_teacher"``.
        scale_by_t2: multiply the divergence by ``T^2``.
        reduction: ``"batchmean"`` (sum over each list, mean over the ``B`` lists),
            ``"sum"`` (sum over everything) or ``"none"`` (``(B,)`` per-list losses).
            ``"mean"`` is rejected with ``ValueError``: PyTorch's element-wise mean
            divides by ``B * G`` rather than ``B``, so the loss (and its gradient) shrink by
            a factor ``G`` -- the RocketQAv2 Paddle reference implementation did exactly
            that (a mean over all elements of the point-wise KL terms).

    Returns:
        Scalar, or ``(B,)`` for ``reduction="none"``.

    Numerics: computed from ``log_softmax``; teacher entries with zero probability
    contribute ``0 * log 0 = 0`` in the forward direction (also when both lists mask a
    candidate with ``-inf``). In the reverse direction a zero teacher probability where
    the student has mass gives ``+inf``, as the mathematics says.

    Gradient flow: nothing is detached here. If the teacher should not receive gradient
    (classic distillation), pass ``teacher.detach()``; RocketQAv2's joint training
    deliberately lets the gradient reach both models.
    """
    _check_pair(student, teacher)
    _check_temperature(temperature)
    if direction not in _KL_DIRECTIONS:
        raise ValueError(f"unknown direction {direction!r}; expected one of {_KL_DIRECTIONS}")
    _check_reduction(reduction)

    log_q = temperature_log_softmax(student, temperature)  # (B, G) student
    if teacher_is_logits:
        log_p = temperature_log_softmax(teacher, temperature)  # (B, G) teacher
        p = log_p.exp()  # (B, G)
        log_p_safe = log_p
    else:
        _check_distribution(teacher, "teacher")
        p = teacher  # (B, G)
        log_p = torch.log(teacher)  # (B, G), -inf at zeros (only used in reverse KL)
        log_p_safe = _safe_log_probs(teacher)  # (B, G), zeros are masked in _kl_rows

    if direction == "teacher_student":
        per_list = _kl_rows(p, log_p_safe, log_q)  # (B,)
    else:
        per_list = _kl_rows(log_q.exp(), log_q, log_p)  # (B,)

    if scale_by_t2:
        per_list = per_list * (float(temperature) ** 2)
    return _reduce_lists(per_list, reduction)


def listwise_ce(
    scores: Tensor,
    *,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    """Softmax cross-entropy over each candidate list (supervised / InfoNCE loss).

    Without ``labels`` the positive is column 0::

        loss_b = -log softmax(s_b / T)_0 = -s_b0 / T + logsumexp_j(s_bj / T)

    This is the re-ranker's supervised listwise loss and the retriever's contrastive
    (InfoNCE) loss in RocketQAv2 (arXiv:2110.07367), and the "hard target" term of
    Hinton et al. 2015 (arXiv:1503.02531) with ``T = 1``.

    With ``labels`` (``(B, G)``, non-negative, graded relevance or several positives),
    each row is normalised into a target distribution ``y_b = labels_b / sum(labels_b)``::

        loss_b = -sum_i y_bi * log softmax(s_b / T)_i

    No ``T^2`` factor is applied.

    Args:
        scores: ``(B, G)`` logits.
        labels: optional ``(B, G)`` non-negative targets; every row needs a positive sum.
        temperature: ``T > 0`` (usually 1; a contrastive temperature otherwise).
        reduction: ``"mean"``/``"batchmean"`` (mean over the ``B`` lists -- each list
            contributes one number, so both mean the same, and this equals
            ``F.cross_entropy``'s default), ``"sum"`` or ``"none"`` (``(B,)``).
    """
    if scores.dim() != 2:
        raise ValueError(f"expected scores of shape (B, G), got {tuple(scores.shape)}")
    _check_temperature(temperature)
    if reduction == "mean":
        reduction = "batchmean"
    if reduction not in _LIST_REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; expected 'mean', 'batchmean', 'sum' or 'none'")
    log_q = temperature_log_softmax(scores, temperature)  # (B, G)
    if labels is None:
        per_list = -log_q[:, 0]  # (B,)
    else:
        if labels.shape != scores.shape:
            raise ValueError(
                f"labels shape {tuple(labels.shape)} differs from scores shape {tuple(scores.shape)}"
            )
        labels = labels.to(log_q.dtype)
        if (labels < 0).any():
            raise ValueError("labels must be non-negative")
        row_sums = labels.sum(dim=-1, keepdim=True)  # (B, 1)
        if (row_sums <= 0).any():
            raise ValueError("every row of labels needs at least one positive entry")
        target = labels / row_sums  # (B, G)
        # 0 * log q = 0 even if a masked candidate has log q = -inf
        terms = torch.where(target > 0, target * log_q, log_q.new_zeros(()))
        per_list = -terms.sum(dim=-1)  # (B,)
    return _reduce_lists(per_list, reduction)


def hinton_loss(
    student: Tensor,
    teacher: Tensor,
    *,
    alpha: float,
    beta: float,
    temperature: float,
    labels: Tensor | None = None,
) -> Tensor:
    """Hinton et al. 2015 (arXiv:1503.02531) distillation objective over candidate lists::

        loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T))      (soft targets)
             + beta  * CE(softmax(s), positive at column 0)             (hard target, T = 1)

    Both terms are averaged over the ``B`` lists ("batchmean"). ``T^2`` is applied to the
    soft term only. ``teacher`` are logits and are not detached (pass ``teacher.detach()``
    for frozen-teacher distillation). Optional ``labels`` (``(B, G)``) replace the
    column-0 positive in the hard term by a graded target distribution (see
    :func:`listwise_ce`).
    """
    soft = listwise_kl(student, teacher, temperature=temperature, scale_by_t2=True)
    hard = listwise_ce(student, labels=labels, temperature=1.0)
    return alpha * soft + beta * hard
