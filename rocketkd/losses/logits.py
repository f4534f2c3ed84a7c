"""Logit-matching distillation losses (the high-temperature limit of listwise KL)."""

from __future__ import annotations

from torch import Tensor

from rocketkd.losses.listwise import _check_pair, _reduce_lists

__all__ = ["centered_mse"]


def centered_mse(student: Tensor, teacher: Tensor, reduction: str = "batchmean") -> Tensor:
    """Mean squared difference of per-list *centred* logits.

    With ``z`` = student and ``v`` = teacher logits of one list of ``G`` candidates,
    ``z~ = z - mean(z)`` and ``v~ = v - mean(v)``::

        loss_b = 1 / (2 G) * sum_i (z~_bi - v~_bi)^2

    Definition chosen so that the gradient is exactly::

        d loss_b / d z_bi = (z~_bi - v~_bi) / G

    (the centring term drops out because ``sum_i (z~_i - v~_i) = 0``), i.e.
    ``(z_i - v_i) / G`` for zero-mean rows. Hinton et al. 2015 (arXiv:1503.02531, sec.
    2.1) show that for ``T`` much larger than the logits and zero-mean logits the gradient
    of the soft loss is ``d KL / d z_i ~= (z_i - v_i) / (G T^2)``, so ``T^2 * KL`` (the
    loss of :func:`rocketkd.losses.listwise_kl` with its default ``scale_by_t2=True``)
    tends to this loss -- value *and* gradient -- as ``T -> inf``. Distilling by
    matching logits is therefore the high-temperature limit of listwise KL (RocketQAv2,
    arXiv:2110.07367, uses the KL form). No temperature and no ``T^2`` factor appear here:
    the limit is independent of ``T``.

    Centring makes the loss invariant to adding a constant to a row of either model's
    scores, as softmax is (a dense retriever's dot products and a cross-encoder's logits
    live on different offsets).

    Args:
        student: ``(B, G)`` student logits.
        teacher: ``(B, G)`` teacher logits (not detached here).
        reduction: ``"batchmean"`` (mean of ``loss_b`` over the ``B`` lists, default),
            ``"sum"`` or ``"none"`` (``(B,)``). ``"mean"`` raises ``ValueError``.
    """
    _check_pair(student, teacher)
    z = student - student.mean(dim=-1, keepdim=True)  # (B, G)
    v = teacher - teacher.mean(dim=-1, keepdim=True)  # (B, G)
    group = student.shape[-1]
    per_list = (z - v).pow(2).sum(dim=-1) / (2.0 * group)  # (B,)
    return _reduce_lists(per_list, reduction)
