"""Tests of rocketkd.losses: values against hand computations / PyTorch references, gradients vs formulas."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rocketkd.losses import (
    DISTILL_LOSSES,
    ce,
    centered_mse,
    get_distill_loss,
    hinton_loss,
    listwise_ce,
    listwise_js,
    listwise_kl,
    listwise_wasserstein,
    temperature_log_softmax,
    temperature_softmax,
    wasserstein_cost,
)

DT = torch.float64


def _pair(b: int = 4, g: int = 6, seed: int = 0, scale: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(b, g, generator=gen, dtype=DT) * scale  # (B, G)
    teacher = torch.randn(b, g, generator=gen, dtype=DT) * scale  # (B, G)
    return student, teacher


# ---------------------------------------------------------------- temperature softmax


@pytest.mark.parametrize(
    ("T", "expected"),
    [
        (1.0, [0.00032, 0.04741, 0.95227]),
        (5.0, [0.11532, 0.31348, 0.5712]),
        (10.0, [0.20516, 0.33825, 0.45659]),
        (20.0, [0.26484, 0.34006, 0.3951]),
    ],
)
def test_temperature_softmax_seed_values(T: float, expected: list[float]) -> None:
    x = torch.tensor([2.0, 7.0, 10.0], dtype=DT)
    got = temperature_softmax(x, T)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=DT), atol=1e-4, rtol=0)
    torch.testing.assert_close(temperature_log_softmax(x, T), got.log())


def test_temperature_must_be_positive() -> None:
    x = torch.zeros(1, 3)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature"):
            temperature_softmax(x, bad)
        with pytest.raises(ValueError, match="temperature"):
            listwise_kl(x, x, temperature=bad)


# ---------------------------------------------------------------- listwise KL


@pytest.mark.parametrize("T", [1.0, 2.0, 7.5])
def test_kl_matches_torch_kl_div_batchmean_times_t2(T: float) -> None:
    s, t = _pair()
    ref = F.kl_div(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1), reduction="batchmean") * T**2
    torch.testing.assert_close(listwise_kl(s, t, temperature=T), ref)
    torch.testing.assert_close(listwise_kl(s, t, temperature=T, scale_by_t2=False), ref / T**2)


def test_kl_hand_computed_single_list() -> None:
    # student uniform over 2 candidates, teacher (0.8, 0.2)
    s = torch.zeros(1, 2, dtype=DT)
    t = torch.tensor([[math.log(0.8), math.log(0.2)]], dtype=DT)
    forward = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    reverse = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert forward == pytest.approx(0.1927448, abs=1e-6)
    assert reverse == pytest.approx(0.2231436, abs=1e-6)
    assert listwise_kl(s, t).item() == pytest.approx(forward, abs=1e-12)
    assert listwise_kl(s, t, direction="student_teacher").item() == pytest.approx(reverse, abs=1e-12)
    # teacher given as a distribution: same number, no temperature applied to the teacher
    probs = torch.tensor([[0.8, 0.2]], dtype=DT)
    assert listwise_kl(s, probs, teacher_is_logits=False).item() == pytest.approx(forward, abs=1e-12)
    # T = 3: student stays uniform (all zeros), teacher distribution given as-is -> 9 * forward
    got = listwise_kl(s, probs, temperature=3.0, teacher_is_logits=False).item()
    assert got == pytest.approx(9.0 * forward, abs=1e-12)


def test_kl_reverse_direction_matches_reference() -> None:
    s, t = _pair(seed=1)
    T = 2.0
    ref = F.kl_div(F.log_softmax(t / T, -1), F.softmax(s / T, -1), reduction="batchmean") * T**2
    got = listwise_kl(s, t, temperature=T, direction="student_teacher")
    torch.testing.assert_close(got, ref)
    assert not torch.allclose(got, listwise_kl(s, t, temperature=T))  # KL is asymmetric


def test_kl_reductions_and_rejections() -> None:
    s, t = _pair(b=5, g=7)
    per_list = listwise_kl(s, t, reduction="none")
    assert per_list.shape == (5,)
    assert (per_list >= 0).all()
    torch.testing.assert_close(per_list.mean(), listwise_kl(s, t))
    torch.testing.assert_close(per_list.sum(), listwise_kl(s, t, reduction="sum"))
    with pytest.raises(ValueError, match="B\\*G"):
        listwise_kl(s, t, reduction="mean")
    with pytest.raises(ValueError, match="reduction"):
        listwise_kl(s, t, reduction="elementwise")
    with pytest.raises(ValueError, match="direction"):
        listwise_kl(s, t, direction="both")
    with pytest.raises(ValueError, match="shape"):
        listwise_kl(s, t[:, :3])


def test_kl_zero_iff_equal_and_invariant_to_row_shift_and_column_permutation() -> None:
    s, t = _pair(seed=3)
    assert listwise_kl(t, t).abs().item() < 1e-12
    assert listwise_kl(s, t).item() > 1e-3
    shifted = listwise_kl(s + torch.randn(4, 1, dtype=DT), t - 5.0)
    torch.testing.assert_close(shifted, listwise_kl(s, t))
    perm = torch.tensor([0, 3, 1, 5, 2, 4])
    torch.testing.assert_close(listwise_kl(s[:, perm], t[:, perm]), listwise_kl(s, t))


def test_kl_zero_teacher_probabilities_and_masked_candidates() -> None:
    s = torch.tensor([[0.3, -1.0, 2.0, 0.0]], dtype=DT, requires_grad=True)
    probs = torch.tensor([[0.7, 0.3, 0.0, 0.0]], dtype=DT)
    loss = listwise_kl(s, probs, teacher_is_logits=False)
    log_q = F.log_softmax(s.detach(), -1)[0]
    hand = 0.7 * (math.log(0.7) - log_q[0].item()) + 0.3 * (math.log(0.3) - log_q[1].item())
    assert loss.item() == pytest.approx(hand, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all()
    # reverse KL with zero teacher mass under student mass is +inf
    assert math.isinf(listwise_kl(s, probs, teacher_is_logits=False, direction="student_teacher").item())
    # a candidate masked with -inf in both lists is ignored, with finite gradients
    sm = torch.tensor([[1.0, 2.0, float("-inf")]], dtype=DT, requires_grad=True)
    tm = torch.tensor([[0.0, 3.0, float("-inf")]], dtype=DT, requires_grad=True)
    loss = listwise_kl(sm, tm)
    ref = listwise_kl(sm[:, :2].detach(), tm[:, :2].detach())
    assert loss.item() == pytest.approx(ref.item(), abs=1e-12)
    loss.backward()
    assert torch.isfinite(sm.grad).all() and torch.isfinite(tm.grad).all()
    # invalid distributions are rejected
    with pytest.raises(ValueError, match="sum to 1"):
        listwise_kl(s, probs * 2, teacher_is_logits=False)


def test_kl_does_not_detach_teacher() -> None:
    s, t = _pair()
    t.requires_grad_(True)
    listwise_kl(s, t, temperature=2.0).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


@pytest.mark.parametrize("T", [1.0, 3.0, 10.0])
def test_soft_loss_gradient_is_q_minus_p_over_T_over_B(T: float) -> None:
    # Hinton 2015 eq. (2): dC/dz_i = (q_i - p_i) / T  (q = student, p = teacher, no T^2), batchmean -> / B
    s, t = _pair(b=3, g=5, seed=4)
    s.requires_grad_(True)
    loss = listwise_kl(s, t, temperature=T, scale_by_t2=False)
    (grad,) = torch.autograd.grad(loss, s)
    q = F.softmax(s.detach() / T, -1)
    p = F.softmax(t / T, -1)
    torch.testing.assert_close(grad, (q - p) / T / s.shape[0], atol=1e-12, rtol=1e-9)
    # soft cross-entropy -sum p log q has the same gradient (differs by the teacher entropy only)
    s.grad = None
    soft_ce = -(p * F.log_softmax(s / T, -1)).sum(-1).mean()
    (grad_ce,) = torch.autograd.grad(soft_ce, s)
    torch.testing.assert_close(grad_ce, grad, atol=1e-12, rtol=1e-9)


def test_high_temperature_gradient_tends_to_logit_matching() -> None:
    # zero-mean rows: T^2 * dKL/dz_i -> (z_i - v_i) / N as T -> inf (Hinton 2015, sec. 2.1)
    b, n = 2, 5
    s, t = _pair(b=b, g=n, seed=5)
    z = (s - s.mean(-1, keepdim=True)).requires_grad_(True)  # (B, G) zero-mean
    v = t - t.mean(-1, keepdim=True)  # (B, G) zero-mean
    limit = (z.detach() - v) / n / b  # batchmean over B lists
    errors = []
    for T in (10.0, 100.0, 1000.0):
        loss = listwise_kl(z, v, temperature=T, scale_by_t2=False)
        (grad,) = torch.autograd.grad(loss, z)
        rel = ((T**2 * grad - limit).norm() / limit.norm()).item()
        errors.append(rel)
        # with the T^2 factor built in, the same
        (grad_scaled,) = torch.autograd.grad(listwise_kl(z, v, temperature=T), z)
        torch.testing.assert_close(grad_scaled, T**2 * grad)
    assert errors[0] > 1e-2  # the approximation is visibly off at T = 10 ...
    assert errors[2] < 5e-3  # ... and tight at T = 1000
    # first-order convergence: the error shrinks about tenfold per tenfold increase of T
    assert errors[0] / errors[1] > 5.0 and errors[1] / errors[2] > 5.0
    # and the limit is exactly the gradient of centered_mse
    (grad_mse,) = torch.autograd.grad(centered_mse(z, v), z)
    torch.testing.assert_close(grad_mse, limit, atol=1e-14, rtol=1e-12)
    # the value converges too: T^2 * KL -> centered_mse
    kl_value = listwise_kl(z, v, temperature=1000.0).item()
    assert kl_value == pytest.approx(centered_mse(z, v).item(), rel=1e-3)


# ---------------------------------------------------------------- centered MSE


def test_centered_mse_value_gradient_and_shift_invariance() -> None:
    z = torch.tensor([[1.0, 2.0, 6.0]], dtype=DT, requires_grad=True)
    v = torch.tensor([[0.0, 0.0, 3.0]], dtype=DT)
    # centred: z~ = (-2, -1, 3), v~ = (-1, -1, 2); diff = (-1, 0, 1); loss = (1 + 0 + 1) / (2 * 3)
    loss = centered_mse(z, v)
    assert loss.item() == pytest.approx(1.0 / 3.0, abs=1e-12)
    (grad,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(grad, torch.tensor([[-1.0, 0.0, 1.0]], dtype=DT) / 3)
    s, t = _pair(b=3, g=4)
    base = centered_mse(s, t)
    torch.testing.assert_close(centered_mse(s + torch.randn(3, 1, dtype=DT), t + 10.0), base)
    assert centered_mse(s, t, reduction="none").shape == (3,)
    torch.testing.assert_close(centered_mse(s, t, reduction="sum"), 3 * base)
    with pytest.raises(ValueError, match="reduction"):
        centered_mse(s, t, reduction="mean")


# ---------------------------------------------------------------- listwise CE and Hinton loss


def test_listwise_ce_matches_cross_entropy_with_target_zero() -> None:
    s, _ = _pair(b=5, g=8, seed=6)
    target = torch.zeros(5, dtype=torch.long)
    torch.testing.assert_close(listwise_ce(s), F.cross_entropy(s, target))
    torch.testing.assert_close(listwise_ce(s, temperature=0.05), F.cross_entropy(s / 0.05, target))
    torch.testing.assert_close(listwise_ce(s, reduction="sum"), F.cross_entropy(s, target, reduction="sum"))
    torch.testing.assert_close(listwise_ce(s, reduction="none"), F.cross_entropy(s, target, reduction="none"))
    assert ce is listwise_ce
    with pytest.raises(ValueError, match="reduction"):
        listwise_ce(s, reduction="avg")


def test_listwise_ce_graded_labels_by_hand() -> None:
    s = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]], dtype=DT)
    labels = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]], dtype=DT)
    lse = math.log(math.e + 1.0 + math.exp(-1.0))
    row0 = (2 / 3) * (lse - 1.0) + (1 / 3) * (lse - 0.0)
    row1 = math.log(3.0)  # uniform scores: -log(1/3) whatever the target
    assert row0 == pytest.approx(0.740939, abs=1e-6)
    got = listwise_ce(s, labels=labels, reduction="none")
    torch.testing.assert_close(got, torch.tensor([row0, row1], dtype=DT))
    # one-hot labels at column 0 reduce to the default
    one_hot = torch.zeros_like(s)
    one_hot[:, 0] = 3.0
    torch.testing.assert_close(listwise_ce(s, labels=one_hot), listwise_ce(s))
    with pytest.raises(ValueError, match="positive"):
        listwise_ce(s, labels=torch.zeros_like(s))
    with pytest.raises(ValueError, match="non-negative"):
        listwise_ce(s, labels=-labels)


def test_hinton_loss_is_weighted_sum_of_soft_and_hard_terms() -> None:
    s, t = _pair(b=3, g=4, seed=7)
    alpha, beta, T = 0.7, 0.3, 4.0
    soft = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean") * T**2
    hard = F.cross_entropy(s, torch.zeros(3, dtype=torch.long))  # T = 1 for the hard term
    got = hinton_loss(s, t, alpha=alpha, beta=beta, temperature=T)
    torch.testing.assert_close(got, alpha * soft + beta * hard)
    torch.testing.assert_close(hinton_loss(s, t, alpha=1.0, beta=0.0, temperature=T), soft)


# ---------------------------------------------------------------- Jensen-Shannon


def test_js_hand_computed_symmetric_bounded() -> None:
    p = torch.tensor([[0.5, 0.5]], dtype=DT)
    q = torch.tensor([[0.9, 0.1]], dtype=DT)
    m = (0.7, 0.3)
    hand = 0.5 * (0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])) + 0.5 * (
        0.9 * math.log(0.9 / m[0]) + 0.1 * math.log(0.1 / m[1])
    )
    assert hand == pytest.approx(0.1017489, abs=1e-6)
    assert listwise_js(p.log(), q.log()).item() == pytest.approx(hand, abs=1e-12)
    assert listwise_js(q.log(), p.log()).item() == pytest.approx(hand, abs=1e-12)
    assert listwise_js(p.log(), q, teacher_is_logits=False).item() == pytest.approx(hand, abs=1e-12)

    s, t = _pair(b=6, g=5, seed=8, scale=4.0)
    torch.testing.assert_close(listwise_js(s, t, reduction="none"), listwise_js(t, s, reduction="none"))
    assert listwise_js(t, t).abs().item() < 1e-12
    assert listwise_js(s, t).item() > 1e-3
    assert (listwise_js(s, t, reduction="none") <= math.log(2.0)).all()
    # near-disjoint distributions approach log 2 from below, and stay finite
    far = listwise_js(torch.tensor([[200.0, 0.0]], dtype=DT), torch.tensor([[0.0, 200.0]], dtype=DT))
    assert far.item() == pytest.approx(math.log(2.0), abs=1e-9)
    assert far.item() <= math.log(2.0)
    # T^2 scaling
    torch.testing.assert_close(
        listwise_js(s, t, temperature=3.0), 9.0 * listwise_js(s, t, temperature=3.0, scale_by_t2=False)
    )


def test_js_gradient_finite_with_zeros_and_masks() -> None:
    s = torch.tensor([[1.0, 2.0, float("-inf")]], dtype=DT, requires_grad=True)
    t = torch.tensor([[0.0, 3.0, float("-inf")]], dtype=DT)
    loss = listwise_js(s, t)
    assert loss.item() == pytest.approx(listwise_js(s[:, :2].detach(), t[:, :2]).item(), abs=1e-12)
    loss.backward()
    assert torch.isfinite(s.grad).all()
    s2 = torch.zeros(1, 3, dtype=DT, requires_grad=True)
    listwise_js(s2, torch.tensor([[1.0, 0.0, 0.0]], dtype=DT), teacher_is_logits=False).backward()
    assert torch.isfinite(s2.grad).all() and s2.grad.abs().sum() > 0


# ---------------------------------------------------------------- Wasserstein / Sinkhorn


def _w1_line(p: torch.Tensor, q: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Exact W1 with the rank cost: 1-D closed form over the teacher-sorted candidates (no ties)."""
    order = teacher.argsort(dim=-1, descending=True)
    cdf_gap = (p.gather(-1, order) - q.gather(-1, order)).cumsum(-1)[:, :-1]
    return cdf_gap.abs().sum(-1) / (p.shape[-1] - 1)


def test_wasserstein_cost_matrices() -> None:
    t = torch.tensor([[5.0, -1.0, 3.0, 3.0]], dtype=DT)
    # mid-ranks (0 = best): 5 -> 0, 3,3 -> 1.5, -1 -> 3;  / (G - 1) = 3
    r = torch.tensor([0.0, 3.0, 1.5, 1.5], dtype=DT)
    torch.testing.assert_close(wasserstein_cost(t, "rank")[0], (r[:, None] - r[None, :]).abs() / 3)
    torch.testing.assert_close(wasserstein_cost(t, "score")[0], (t[0][:, None] - t[0][None, :]).abs() / 6.0)
    torch.testing.assert_close(wasserstein_cost(t, "uniform")[0], 1.0 - torch.eye(4, dtype=DT))
    with pytest.raises(ValueError, match="rank"):
        wasserstein_cost(t, "index")


@pytest.mark.parametrize("cost", ["rank", "score", "uniform"])
def test_wasserstein_zero_for_equal_positive_otherwise(cost: str) -> None:
    s, t = _pair(b=4, g=6, seed=9)
    assert listwise_wasserstein(t, t, cost=cost).abs().item() < 1e-12
    per_list = listwise_wasserstein(s, t, cost=cost, reduction="none")
    assert per_list.shape == (4,)
    assert (per_list > 1e-4).all()
    # the biased version is not zero for equal inputs
    assert listwise_wasserstein(t, t, cost=cost, debias=False).item() > 1e-4


def test_wasserstein_gradient_flows_and_matches_finite_differences() -> None:
    s, t = _pair(b=2, g=5, seed=10)
    s.requires_grad_(True)
    loss = listwise_wasserstein(s, t, iters=300)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 1e-4
    # envelope-theorem gradient vs central finite differences (converged Sinkhorn)
    h = 1e-6
    fd = torch.zeros_like(s)
    for b in range(s.shape[0]):
        for i in range(s.shape[1]):
            e = torch.zeros_like(s)
            e[b, i] = h
            plus = listwise_wasserstein(s.detach() + e, t, iters=300)
            minus = listwise_wasserstein(s.detach() - e, t, iters=300)
            fd[b, i] = (plus - minus) / (2 * h)
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-4)


def test_wasserstein_tends_to_exact_w1_and_is_permutation_invariant() -> None:
    s, t = _pair(b=3, g=6, seed=11)
    p, q = F.softmax(t, -1), F.softmax(s, -1)
    exact = _w1_line(p, q, t)
    coarse = listwise_wasserstein(s, t, epsilon=0.1, reduction="none")
    fine = listwise_wasserstein(s, t, epsilon=0.005, iters=2000, reduction="none")
    assert ((fine - exact).abs() < (coarse - exact).abs()).all()
    torch.testing.assert_close(fine, exact, atol=0.02, rtol=0.0)
    # the cost follows the teacher, not column positions: permuting candidates changes nothing
    perm = torch.tensor([0, 4, 2, 5, 1, 3])
    torch.testing.assert_close(
        listwise_wasserstein(s[:, perm], t[:, perm], reduction="none"), coarse, atol=1e-10, rtol=0
    )


def test_wasserstein_finite_for_extreme_inputs_float32() -> None:
    gen = torch.Generator().manual_seed(12)
    s = (torch.randn(3, 8, generator=gen) * 1e3).requires_grad_(True)
    t = torch.randn(3, 8, generator=gen) * 1e3
    loss = listwise_wasserstein(s, t, temperature=0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    s2 = torch.zeros(1, 4, requires_grad=True)
    loss2 = listwise_wasserstein(s2, probs, teacher_is_logits=False)
    loss2.backward()
    assert torch.isfinite(loss2) and loss2.item() > 0 and torch.isfinite(s2.grad).all()
    with pytest.raises(ValueError, match="epsilon"):
        listwise_wasserstein(s, t, epsilon=0.0)
    with pytest.raises(ValueError, match="iters"):
        listwise_wasserstein(s, t, iters=0)
    with pytest.raises(ValueError, match="B\\*G"):
        listwise_wasserstein(s, t, reduction="mean")


# ---------------------------------------------------------------- registry


def test_registry_returns_each_loss() -> None:
    assert set(DISTILL_LOSSES) == {"kl", "kl_reverse", "mse", "js", "wasserstein"}
    s, t = _pair(b=3, g=5, seed=13)
    T = 2.0
    expected = {
        "kl": listwise_kl(s, t, temperature=T),
        "kl_reverse": listwise_kl(s, t, temperature=T, direction="student_teacher"),
        "mse": centered_mse(s, t),
        "js": listwise_js(s, t, temperature=T),
        "wasserstein": listwise_wasserstein(s, t, temperature=T),
    }
    for name, value in expected.items():
        fn = get_distill_loss(name)
        assert fn is DISTILL_LOSSES[name]
        student = s.clone().requires_grad_(True)
        got = fn(student, t, T)
        assert got.dim() == 0
        torch.testing.assert_close(got, value)
        (grad,) = torch.autograd.grad(got, student)
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name


def test_registry_unknown_name_lists_known_losses() -> None:
    with pytest.raises(ValueError) as info:
        get_distill_loss("kld")
    message = str(info.value)
    assert "'kld'" in message
    for name in ("kl", "kl_reverse", "mse", "js", "wasserstein"):
        assert name in message
