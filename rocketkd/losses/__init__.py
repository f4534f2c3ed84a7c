"""Distillation and ranking losses over candidate lists (``(B, G)`` scores, positive at column 0).

``DISTILL_LOSSES`` maps a name to ``fn(student, teacher, temperature) -> scalar Tensor``
(``student``/``teacher``: ``(B, G)`` logits, mean over the ``B`` lists):

* ``"kl"``: ``T^2 * KL(teacher || student)`` (Hinton et al. 2015; RocketQAv2's loss).
* ``"kl_reverse"``: ``T^2 * KL(student || teacher)``.
* ``"mse"``: centred-logit MSE, the ``T -> inf`` limit of ``"kl"`` (``temperature`` unused).
* ``"js"``: ``T^2 * JS(teacher, student)``.
* ``"wasserstein"``: debiased Sinkhorn divergence with the teacher-rank ground cost
  (defaults of :func:`listwise_wasserstein`; no ``T^2``).

The supervised listwise cross-entropy is :func:`listwise_ce` (alias ``ce``).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from rocketkd.losses.contrastive import in_batch_ce, in_batch_scores
from rocketkd.losses.distances import (
    WASSERSTEIN_COSTS,
    listwise_js,
    listwise_wasserstein,
    wasserstein_cost,
)
from rocketkd.losses.listwise import (
    hinton_loss,
    listwise_ce,
    listwise_kl,
    temperature_log_softmax,
    temperature_softmax,
)
from rocketkd.losses.logits import centered_mse

__all__ = [
    "DISTILL_LOSSES",
    "WASSERSTEIN_COSTS",
    "DistillLoss",
    "ce",
    "centered_mse",
    "get_distill_loss",
    "hinton_loss",
    "in_batch_ce",
    "in_batch_scores",
    "listwise_ce",
    "listwise_js",
    "listwise_kl",
    "listwise_wasserstein",
    "temperature_log_softmax",
    "temperature_softmax",
    "wasserstein_cost",
]

DistillLoss = Callable[[Tensor, Tensor, float], Tensor]
"""``fn(student (B, G), teacher (B, G), temperature) -> scalar`` (teacher given as logits)."""

ce = listwise_ce


def _kl(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))``, batchmean (Hinton 2015; RocketQAv2)."""
    return listwise_kl(student, teacher, temperature=temperature, direction="teacher_student")


def _kl_reverse(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(s/T) || softmax(t/T))``, batchmean."""
    return listwise_kl(student, teacher, temperature=temperature, direction="student_teacher")


def _mse(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Centred-logit MSE (high-temperature limit of ``T^2 * KL``); ``temperature`` is unused."""
    del temperature
    return centered_mse(student, teacher)


def _js(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * JS(softmax(t/T), softmax(s/T))``, batchmean."""
    return listwise_js(student, teacher, temperature=temperature)


def _wasserstein(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """Debiased Sinkhorn divergence, teacher-rank cost, ``eps=0.1``, 50 iterations; no ``T^2``."""
    return listwise_wasserstein(student, teacher, temperature=temperature)


DISTILL_LOSSES: dict[str, DistillLoss] = {
    "kl": _kl,
    "kl_reverse": _kl_reverse,
    "mse": _mse,
    "js": _js,
    "wasserstein": _wasserstein,
}


def get_distill_loss(name: str) -> DistillLoss:
    """Look up a distillation loss ``fn(student, teacher, temperature) -> scalar`` by name.

    Raises ``ValueError`` naming the known losses if ``name`` is not registered.
    """
    try:
        return DISTILL_LOSSES[name]
    except KeyError:
        known = ", ".join(sorted(DISTILL_LOSSES))
        raise ValueError(f"unknown distillation loss {name!r}; known losses: {known}") from None
