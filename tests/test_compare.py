"""Paired significance tests: a hand-worked case, scipy's implementations, and the run-level comparison."""

from __future__ import annotations

import numpy as np
import pytest

from rocketkd.evaluation.compare import bootstrap_ci, compare_runs, compare_values, paired_randomization_test


def test_exact_randomization_matches_hand_count():
    # d = (1, 2, 3): |mean| = 2. Of the 8 sign patterns only (+,+,+) and (-,-,-) reach |sum| = 6 -> p = 2/8.
    assert paired_randomization_test([0, 0, 0], [1, 2, 3]) == pytest.approx(0.25)
    # d = (1, -1): every pattern has |sum| in {0, 2}; observed 0 -> all 4 reach it -> p = 1.
    assert paired_randomization_test([0, 1], [1, 0]) == pytest.approx(1.0)


def test_randomization_agrees_with_scipy_permutation_test():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a = rng.random(12)
    b = a + rng.normal(0.08, 0.1, 12)
    ours = paired_randomization_test(a, b)
    ref = stats.permutation_test((a, b), lambda x, y: np.mean(y - x), permutation_type="samples",
                                 alternative="two-sided", n_resamples=np.inf).pvalue
    assert ours == pytest.approx(ref, abs=1e-9)


def test_sampled_randomization_is_close_to_the_exact_value_and_never_zero():
    rng = np.random.default_rng(0)
    a = rng.random(14)
    b = a + rng.normal(0.05, 0.1, 14)
    exact = paired_randomization_test(a, b)
    sampled = paired_randomization_test(a, b, exact_max=0, samples=50_000)
    assert sampled == pytest.approx(exact, abs=0.01)
    big = np.arange(40, dtype=float)
    assert paired_randomization_test(big * 0, big + 1, samples=1000) == pytest.approx(1 / 1001)


def test_bootstrap_ci_covers_the_mean_and_agrees_with_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(1)
    a = rng.random(50)
    b = a + rng.normal(0.1, 0.2, 50)
    low, high = bootstrap_ci(a, b, samples=20_000)
    d = b - a
    assert low < d.mean() < high
    ref = stats.bootstrap((d,), np.mean, method="percentile", n_resamples=20_000, random_state=1).confidence_interval
    assert low == pytest.approx(ref.low, abs=0.01) and high == pytest.approx(ref.high, abs=0.01)


def test_compare_runs_reports_wins_losses_and_delta():
    qrels = {"q1": {"a": 1}, "q2": {"b": 1}, "q3": {"c": 1}}
    first = {"q1": {"a": 2.0, "x": 1.0}, "q2": {"x": 2.0, "b": 1.0}, "q3": {"x": 2.0, "c": 1.0}}
    second = {"q1": {"a": 2.0, "x": 1.0}, "q2": {"b": 2.0, "x": 1.0}, "q3": {"c": 2.0, "x": 1.0}}
    (cmp,) = compare_runs(first, second, qrels, ["MRR@10"])
    assert cmp.queries == 3 and cmp.wins == 2 and cmp.losses == 0
    assert cmp.mean_a == pytest.approx((1 + 0.5 + 0.5) / 3) and cmp.delta == pytest.approx(1 / 3)
    assert cmp.p_value == pytest.approx(0.5)  # d = (0, .5, .5): 4 of 8 sign patterns reach |sum| = 1


def test_compare_values_refuses_unpaired_queries():
    with pytest.raises(ValueError, match="same queries"):
        compare_values({"a": 1.0}, {"b": 1.0})
