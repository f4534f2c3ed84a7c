"""Symmetric / transport distances between the student's and the teacher's list distributions.

Both losses compare ``q = softmax(student / T)`` with ``p = softmax(teacher / T)`` over
each query's ``G`` candidates (``(B, G)`` tensors, column 0 = positive), as the KL
distillation loss of RocketQAv2 (arXiv:2110.07367) does, but with a different
divergence.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from rocketkd.losses.listwise import (
    _check_distribution,
    _check_pair,
    _check_reduction,
    _check_temperature,
    _kl_rows,
    _reduce_lists,
    _safe_log_probs,
    temperature_log_softmax,
)

__all__ = ["WASSERSTEIN_COSTS", "listwise_js", "listwise_wasserstein", "wasserstein_cost"]

WASSERSTEIN_COSTS = ("rank", "score", "uniform")


def _teacher_probs(teacher: Tensor, temperature: float, teacher_is_logits: bool) -> tuple[Tensor, Tensor]:
    """Return ``(p, log p)`` for the teacher, both ``(B, G)``; ``log p`` finite everywhere."""
    if teacher_is_logits:
        log_p = temperature_log_softmax(teacher, temperature)  # (B, G)
        return log_p.exp(), log_p
    _check_distribution(teacher, "teacher")
    return teacher, _safe_log_probs(teacher)


def listwise_js(
    student: Tensor,
    teacher: Tensor,
    temperature: float = 1.0,
    *,
    scale_by_t2: bool = True,
    reduction: str = "batchmean",
    teacher_is_logits: bool = True,
) -> Tensor:
    """Jensen-Shannon divergence between the teacher's and the student's list distributions.

    With ``q = softmax(student / T)``, ``p = softmax(teacher / T)``, ``m = (p + q) / 2``::

        loss_b = T^2 * [ KL(p_b || m_b) / 2 + KL(q_b || m_b) / 2 ]      (natural log)

    Symmetric, zero iff ``p = q``, finite even where one distribution has zeros, and
    bounded by ``log 2`` (times ``T^2`` when scaled). The ``T^2`` factor is applied iff
    ``scale_by_t2`` (default True, as in :func:`rocketkd.losses.listwise_kl`): like KL,
    JS is locally quadratic in ``p - q``, so its gradient w.r.t. the student logits shrinks
    like ``1 / T^2`` for large ``T`` and Hinton et al.'s (arXiv:1503.02531) correction
    applies; at ``T = 1`` the value is the plain JS divergence.

    Used as an alternative to RocketQAv2's (arXiv:2110.07367) forward KL. Nothing is
    detached. ``teacher_is_logits=False``: ``teacher`` is a probability distribution per
    row, used as-is (no temperature). ``reduction``: ``"batchmean"`` (mean over lists),
    ``"sum"``, ``"none"`` (``(B,)``); ``"mean"`` raises ``ValueError``.
    """
    _check_pair(student, teacher)
    _check_temperature(temperature)
    _check_reduction(reduction)
    log_q = temperature_log_softmax(student, temperature)  # (B, G) student
    q = log_q.exp()  # (B, G)
    p, log_p = _teacher_probs(teacher, temperature, teacher_is_logits)  # (B, G) each
    # clamp -inf (masked candidates) so that logaddexp's backward stays finite; such
    # entries have zero mass in p and q and are masked out of the KL sums anyway
    floor = torch.finfo(log_q.dtype).min
    log_m = torch.logaddexp(log_p.clamp_min(floor), log_q.clamp_min(floor)) - math.log(2.0)  # (B, G)
    per_list = 0.5 * (_kl_rows(p, log_p, log_m) + _kl_rows(q, log_q, log_m))  # (B,)
    if scale_by_t2:
        per_list = per_list * (float(temperature) ** 2)
    return _reduce_lists(per_list, reduction)


def wasserstein_cost(teacher: Tensor, cost: str = "rank") -> Tensor:
    """Ground cost ``C`` (``(B, G, G)``, values in ``[0, 1]``, zero diagonal) for one batch.

    The column order of a candidate list is arbitrary (except that column 0 is the
    positive), so a cost on column indices such as ``|i - j|`` would be meaningless. The
    costs therefore place the candidates on a line using the *teacher*:

    * ``"rank"`` (default): ``C_ij = |r_i - r_j| / (G - 1)`` where ``r`` is the teacher's
      rank of each candidate (mid-ranks for ties, so tied candidates cost 0). Moving mass
      between candidates the teacher ranks next to each other is cheap; moving it from
      the teacher's top candidate to its bottom one costs 1. Invariant to any monotone
      rescaling of the teacher scores (a cross-encoder's logits have no calibrated
      scale), and to ``T``.
    * ``"score"``: ``C_ij = |v_i - v_j| / (max_k v_k - min_k v_k)``: candidates the teacher
      scores alike are cheap to swap, in proportion to the score gap. Invariant to affine
      rescaling of the row, but sensitive to outlying scores.
    * ``"uniform"``: ``C_ij = 1 - delta_ij``: no geometry at all; the unregularised
      distance is then the total-variation distance.

    All three are distances on a line (or the discrete metric), so ``exp(-C / eps)`` is a
    positive-definite kernel and the debiased Sinkhorn divergence is non-negative. The
    cost is computed from ``teacher.detach()`` -- it is a fixed ground metric, not a
    quantity to optimise.
    """
    if teacher.dim() != 2:
        raise ValueError(f"expected teacher of shape (B, G), got {tuple(teacher.shape)}")
    v = teacher.detach()  # (B, G)
    group = v.shape[-1]
    if cost == "rank":
        vi = v.unsqueeze(-1)  # (B, G, 1)
        vj = v.unsqueeze(-2)  # (B, 1, G)
        # mid-rank: #{j : v_j > v_i} + (#{j : v_j == v_i} - 1) / 2  (0 = teacher's best)
        ranks = (vj > vi).sum(dim=-1).to(v.dtype) + 0.5 * ((vj == vi).sum(dim=-1).to(v.dtype) - 1.0)
        dist = (ranks.unsqueeze(-1) - ranks.unsqueeze(-2)).abs()  # (B, G, G)
        return dist / max(group - 1, 1)
    if cost == "score":
        dist = (v.unsqueeze(-1) - v.unsqueeze(-2)).abs()  # (B, G, G)
        spread = (v.max(dim=-1).values - v.min(dim=-1).values).clamp_min(torch.finfo(v.dtype).tiny)
        return dist / spread[:, None, None]
    if cost == "uniform":
        eye = torch.eye(group, dtype=v.dtype, device=v.device)  # (G, G)
        return (1.0 - eye).expand(v.shape[0], group, group)
    raise ValueError(f"unknown cost {cost!r}; expected one of {WASSERSTEIN_COSTS}")


@torch.no_grad()
def _sinkhorn_potentials(
    log_a: Tensor, log_b: Tensor, cost: Tensor, epsilon: float, iters: int
) -> tuple[Tensor, Tensor]:
    """Log-domain Sinkhorn for ``min_P <P, C> + eps * KL(P || a b^T)``, batched.

    ``log_a``, ``log_b``: ``(B, G)``; ``cost``: ``(B, G, G)``. Returns the dual potentials
    ``(f, g)``, each ``(B, G)``, after ``iters`` full (f, g) updates; the last update is
    on ``g``, so the column marginal constraint holds exactly.
    """
    f = torch.zeros_like(log_a)  # (B, G)
    g = torch.zeros_like(log_b)  # (B, G)
    for _ in range(iters):
        # f_i = -eps * log sum_j b_j exp((g_j - C_ij) / eps)
        f = -epsilon * torch.logsumexp(log_b.unsqueeze(-2) + (g.unsqueeze(-2) - cost) / epsilon, dim=-1)
        # g_j = -eps * log sum_i a_i exp((f_i - C_ij) / eps)
        g = -epsilon * torch.logsumexp(log_a.unsqueeze(-1) + (f.unsqueeze(-1) - cost) / epsilon, dim=-2)
    return f, g


def _entropic_ot(
    a: Tensor, log_a: Tensor, b: Tensor, log_b: Tensor, cost: Tensor, epsilon: float, iters: int
) -> Tensor:
    """``OT_eps(a, b)`` per list, ``(B,)``; gradient ``(f, g)`` by the envelope theorem."""
    f, g = _sinkhorn_potentials(log_a, log_b, cost, epsilon, iters)  # (B, G) each, no grad
    # dual value <a, f> + <b, g>: the dual's exponential term vanishes after the g update
    return (a * f).sum(dim=-1) + (b * g).sum(dim=-1)  # (B,)


def listwise_wasserstein(
    student: Tensor,
    teacher: Tensor,
    temperature: float = 1.0,
    cost: str = "rank",
    epsilon: float = 0.1,
    iters: int = 50,
    *,
    debias: bool = True,
    reduction: str = "batchmean",
    teacher_is_logits: bool = True,
) -> Tensor:
    """Entropic optimal-transport (Sinkhorn) distance between teacher and student lists.

    With ``q = softmax(student / T)``, ``p = softmax(teacher / T)``, a ground cost ``C``
    over the ``G`` candidates (see :func:`wasserstein_cost`; default: distance between
    the teacher's ranks) and ``eps = epsilon``::

        OT_eps(p, q) = min_{P >= 0, P 1 = p, P^T 1 = q}  <P, C> + eps * KL(P || p q^T)
        loss_b = OT_eps(p_b, q_b) - OT_eps(p_b, p_b) / 2 - OT_eps(q_b, q_b) / 2    (debias)

    The debiased form is the Sinkhorn divergence (Feydy et al. 2019, arXiv:1810.08278):
    exactly 0 when ``p = q``, non-negative, and tends to the Wasserstein-1 distance under
    ``C`` as ``eps -> 0``. With ``debias=False`` the loss is ``OT_eps(p, q)`` alone, which
    is biased (positive for ``p = q``). ``C`` lies in ``[0, 1]``, so ``epsilon`` is
    relative to the largest cost; smaller ``epsilon`` is sharper but needs more ``iters``.

    Unlike KL, this divergence knows which candidates are *similar*: moving the
    student's mass onto a candidate the teacher ranks just below the right one costs
    little, onto one it ranks last costs much. It is an alternative to RocketQAv2's
    (arXiv:2110.07367) KL objective. No ``T^2`` factor is applied: the transport cost is
    linear (not quadratic) in ``p - q`` at small ``eps``, so Hinton et al.'s
    (arXiv:1503.02531) ``T^2`` argument does not carry over; scale the loss weight instead.

    Computation: batched log-domain Sinkhorn (``iters`` iterations, no loop over
    candidates) run without autograd; the gradient w.r.t. ``p`` and ``q`` is the converged
    dual potentials (envelope theorem), exact at convergence, so memory is ``O(B G^2)``
    whatever ``iters`` is. Gradient reaches the student (and the teacher's distribution,
    if the teacher requires grad -- nothing is detached except the ground cost).

    Args:
        student: ``(B, G)`` student logits.
        teacher: ``(B, G)`` teacher logits, or a probability distribution per row when
            ``teacher_is_logits=False`` (used as-is; the ``"score"`` cost then uses the
            probabilities).
        temperature: ``T > 0`` for both softmaxes.
        cost: ``"rank"``, ``"score"`` or ``"uniform"``.
        epsilon: entropic regularisation ``> 0``.
        iters: Sinkhorn iterations ``>= 1``.
        debias: subtract the self-transport terms (Sinkhorn divergence).
        reduction: ``"batchmean"``, ``"sum"`` or ``"none"`` (``(B,)``); ``"mean"`` is
            rejected.
    """
    _check_pair(student, teacher)
    _check_temperature(temperature)
    _check_reduction(reduction)
    if not (math.isfinite(float(epsilon)) and epsilon > 0):
        raise ValueError(f"epsilon must be a finite number > 0, got {epsilon!r}")
    if int(iters) < 1:
        raise ValueError(f"iters must be >= 1, got {iters!r}")
    eps = float(epsilon)
    n_iter = int(iters)

    c = wasserstein_cost(teacher, cost).to(student.dtype)  # (B, G, G)
    log_q = temperature_log_softmax(student, temperature)  # (B, G) student
    q = log_q.exp()  # (B, G)
    p, log_p = _teacher_probs(teacher, temperature, teacher_is_logits)  # (B, G) each
    p = p.to(student.dtype)
    log_p = log_p.to(student.dtype)

    per_list = _entropic_ot(p, log_p, q, log_q, c, eps, n_iter)  # (B,)
    if debias:
        self_p = _entropic_ot(p, log_p, p, log_p, c, eps, n_iter)  # (B,)
        self_q = _entropic_ot(q, log_q, q, log_q, c, eps, n_iter)  # (B,)
        per_list = per_list - 0.5 * (self_p + self_q)
    return _reduce_lists(per_list, reduction)
