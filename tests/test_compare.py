"""Paired significance tests: a hand-worked case, scipy's implementations, and the run-level comparison."""

from __future__ import annotations

import json

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


# ----------------------------------------------------------------------------------------------------------------
# `rocketkd compare RUN_A RUN_B --qrels Q` (issue 21): the paired test on the command line


def _write_run(path, run):
    path.write_text("".join(f"{q} Q0 {p} {r} {s} x\n" for q, docs in run.items()
                            for r, (p, s) in enumerate(sorted(docs.items(), key=lambda kv: -kv[1]), 1)))
    return path


def _compare_cli(capsys, *argv):
    from rocketkd.cli import main

    capsys.readouterr()
    code = main(["-q", "compare", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_compare_cli_hand_worked(capsys, tmp_path):
    """MRR@10 per query: A = (1, 1/2, 1/2), B = (1, 1, 1), d = (0, 1/2, 1/2). Mean A 2/3, mean B 1, B - A 1/3.
    Randomization: of the 8 sign patterns of d, the 4 with both halves of one sign reach |sum| = 1 -> p = 1/2.
    Bootstrap of mean(d) over 3 queries: 0 with probability 1/27 > 2.5% and 1/2 with 8/27 > 2.5% -> [0, 1/2]."""
    qrels = tmp_path / "qrels.tsv"
    qrels.write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\nq2\tb\t1\nq3\tc\t1\n")
    a = _write_run(tmp_path / "a.trec", {"q1": {"a": 2.0, "x": 1.0}, "q2": {"x": 2.0, "b": 1.0},
                                         "q3": {"x": 2.0, "c": 1.0}})
    b = _write_run(tmp_path / "b.trec", {"q1": {"a": 2.0, "x": 1.0}, "q2": {"b": 2.0, "x": 1.0},
                                         "q3": {"c": 2.0, "x": 1.0}})
    code, out, err = _compare_cli(capsys, a, b, "--qrels", qrels, "--metric", "MRR@10", "--json")
    assert code == 0, err
    got = json.loads(out)
    assert got["queries"] == 3 and got["mean_a"] == pytest.approx(2 / 3) and got["mean_b"] == pytest.approx(1.0)
    assert got["delta"] == pytest.approx(1 / 3) and got["p_value"] == pytest.approx(0.5)
    assert (got["ci_low"], got["ci_high"]) == (pytest.approx(0.0), pytest.approx(0.5))
    code, out, _ = _compare_cli(capsys, a, b, "--qrels", qrels, "--metric", "MRR@10")
    assert code == 0
    assert "0.6667" in out and "1.0000" in out and "+0.3333" in out and "p = 0.5" in out and "95% CI" in out


def test_compare_cli_agrees_with_scipy(capsys, tmp_path):
    stats = pytest.importorskip("scipy.stats")
    from rocketkd.evaluation.metrics import evaluate_run

    rng = np.random.default_rng(7)
    docs = [f"d{i}" for i in range(8)]
    qrels = {f"q{i}": {docs[i % 8]: 1} for i in range(12)}
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(
        f"{q}\t{p}\t1\n" for q, rel in qrels.items() for p in rel))
    runs = [{q: {d: float(rng.random()) for d in docs} for q in qrels} for _ in range(2)]
    a, b = _write_run(tmp_path / "a.trec", runs[0]), _write_run(tmp_path / "b.trec", runs[1])
    code, out, err = _compare_cli(capsys, a, b, "--qrels", tmp_path / "q.tsv", "--json")
    assert code == 0, err
    got = json.loads(out)
    va, vb = (np.array([evaluate_run(r, qrels, ["nDCG@10"]).per_query[q]["nDCG@10"] for q in sorted(qrels)])
              for r in runs)
    ref = stats.permutation_test((va, vb), lambda x, y: np.mean(y - x), permutation_type="samples",
                                 alternative="two-sided", n_resamples=np.inf).pvalue
    assert got["p_value"] == pytest.approx(ref, abs=1e-9)
    assert got["delta"] == pytest.approx(float(np.mean(vb - va)))
    ci = stats.bootstrap((vb - va,), np.mean, method="percentile", n_resamples=20_000, random_state=0)
    assert got["ci_low"] == pytest.approx(ci.confidence_interval.low, abs=0.02)
    assert got["ci_high"] == pytest.approx(ci.confidence_interval.high, abs=0.02)


@pytest.mark.parametrize("extra, needle", [(["--metric", "nDCG@x"], "nDCG@x"), (["--samples", "0"], "--samples"),
                                           (["--level", "1.5"], "--level")])
def test_compare_cli_bad_input_is_one_line(capsys, tmp_path, extra, needle):
    (tmp_path / "q.tsv").write_text("query-id\tcorpus-id\tscore\nq1\ta\t1\n")
    run = _write_run(tmp_path / "a.trec", {"q1": {"a": 1.0}})
    code, _, err = _compare_cli(capsys, run, run, "--qrels", tmp_path / "q.tsv", *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err
