"""Paired comparisons of two systems over the same queries: is a gain more than query-sampling noise?

Two systems evaluated on the same queries give per-query values ``a_q`` and ``b_q``; the question is whether the
mean of ``d_q = b_q - a_q`` differs from 0 by more than the choice of queries explains. Both tests here treat the
queries as the sample (Smucker, Allan & Carterette 2007, "A comparison of statistical significance tests for
information retrieval evaluation", CIKM: the randomization test is their recommended default):

* :func:`paired_randomization_test` -- under H0 the two systems are exchangeable per query, so each ``d_q`` is as
  likely to carry either sign. The two-sided p-value is the share of sign assignments whose ``|mean|`` reaches the
  observed one. With n <= ``exact_max`` queries all 2^n assignments are enumerated (exact); otherwise ``samples``
  random ones are drawn and ``p = (hits + 1) / (samples + 1)`` (never 0, Phipson & Smyth 2010).
* :func:`bootstrap_ci` -- percentile bootstrap confidence interval of the mean difference (queries resampled with
  replacement).

:func:`compare_runs` applies both to two run files' per-query metric values (``rocketkd compare``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.types import Qrels, Run

EXACT_MAX = 16  # 2^16 = 65,536 sign assignments: exact enumeration stays cheap up to here


def _differences(a: Sequence[float], b: Sequence[float]) -> np.ndarray:
    a_, b_ = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a_.shape != b_.shape or a_.ndim != 1:
        raise ValueError(f"paired values need two equally long 1-d sequences, got {a_.shape} and {b_.shape}")
    if a_.size == 0:
        raise ValueError("paired values: no queries to compare")
    if not (np.isfinite(a_).all() and np.isfinite(b_).all()):
        raise ValueError("paired values must be finite")
    return b_ - a_


def paired_randomization_test(a: Sequence[float], b: Sequence[float], *, samples: int = 100_000, seed: int = 0,
                              exact_max: int = EXACT_MAX) -> float:
    """Two-sided p-value of ``mean(b - a) == 0`` by sign flipping (see the module docstring)."""
    d = _differences(a, b)
    n = d.size
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, observed)  # float sums of the same values in another order must count as "reaches"
    if n <= exact_max:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n)
        means = np.abs(signs @ d) / n
        return float(np.mean(means >= observed - tol))
    rng = np.random.default_rng(seed)
    hits = 0
    block = 10_000
    for start in range(0, samples, block):
        m = min(block, samples - start)
        signs = rng.choice((1.0, -1.0), size=(m, n))
        hits += int(np.sum(np.abs(signs @ d) / n >= observed - tol))
    return (hits + 1) / (samples + 1)


def bootstrap_ci(a: Sequence[float], b: Sequence[float], *, level: float = 0.95, samples: int = 10_000,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``mean(b - a)`` at ``level`` (queries resampled with replacement)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    d = _differences(a, b)
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    block = 2_000
    for start in range(0, samples, block):
        m = min(block, samples - start)
        means[start:start + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass
class PairedComparison:
    """``b`` against ``a`` on one metric over the queries both were evaluated on."""

    metric: str
    queries: int
    mean_a: float
    mean_b: float
    delta: float  # mean_b - mean_a
    p_value: float  # two-sided paired randomization test
    ci_low: float  # bootstrap interval of delta
    ci_high: float
    wins: int  # queries where b > a
    losses: int  # queries where b < a

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def to_dict(self) -> dict:
        return asdict(self)


def compare_values(a: Mapping[str, float], b: Mapping[str, float], *, metric: str = "value", level: float = 0.95,
                   samples: int = 100_000, seed: int = 0) -> PairedComparison:
    """Paired comparison of per-query values keyed by query id (the keys must be the same)."""
    if set(a) != set(b):
        only = sorted(set(a) ^ set(b))
        raise ValueError(f"paired values need the same queries; {len(only)} differ (e.g. {only[:3]})")
    qids = sorted(a)
    va, vb = [a[q] for q in qids], [b[q] for q in qids]
    d = _differences(va, vb)
    low, high = bootstrap_ci(va, vb, level=level, samples=min(samples, 20_000), seed=seed)
    return PairedComparison(
        metric=metric, queries=len(qids), mean_a=math.fsum(va) / len(qids), mean_b=math.fsum(vb) / len(qids),
        delta=float(d.mean()), p_value=paired_randomization_test(va, vb, samples=samples, seed=seed),
        ci_low=low, ci_high=high, wins=int(np.sum(d > 0)), losses=int(np.sum(d < 0)),
    )


def compare_runs(run_a: Run, run_b: Run, qrels: Qrels, metrics: Sequence[str] = ("nDCG@10",), **kwargs
                 ) -> list[PairedComparison]:
    """Per metric, ``run_b`` against ``run_a`` over the judged queries (a query missing from a run scores 0)."""
    res_a = evaluate_run(run_a, qrels, metrics)
    res_b = evaluate_run(run_b, qrels, metrics)
    return [compare_values({q: v[m] for q, v in res_a.per_query.items()},
                           {q: v[m] for q, v in res_b.per_query.items()}, metric=m, **kwargs) for m in metrics]
