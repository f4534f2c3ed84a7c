"""Mining: the pure steps by hand, then ``mine`` end to end on the tiny collection (BM25, dense + re-ranker, fakes)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from rocketkd.errors import ConfigError
from rocketkd.mining import (
    build_list,
    denoise,
    drop_positives,
    label_unlabeled,
    pseudo_positives,
    ranked,
    sample_negatives,
    sigmoid,
)

# ------------------------------------------------------------------------------------------------ pure pieces


def test_drop_positives_removes_every_grade_above_zero():
    qrels = {"a": 2, "b": 1, "c": 0, "z": 3}
    assert drop_positives(["a", "x", "b", "c", "y"], qrels) == ["x", "c", "y"]
    assert drop_positives([], qrels) == []
    assert drop_positives(["x", "y"], {}) == ["x", "y"]


def test_ranked_breaks_ties_by_pid():
    assert ranked({"b": 1.0, "a": 1.0, "c": 2.0}) == ["c", "a", "b"]


def test_sigmoid_is_stable():
    p = sigmoid([-1000.0, 0.0, 1000.0])
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, [0.0, 0.5, 1.0])


def test_denoise_threshold_drops_exactly_those_above():
    cands = ["n1", "n2", "n3", "n4", "n5"]
    # probabilities: 0.5, ~0.953, ~0.881, ~0.018, ~0.9933
    logits = np.array([0.0, 3.0, 2.0, -4.0, 5.0])
    kept, dropped = denoise(cands, logits, false_negative_threshold=0.9)
    assert dropped == ["n2", "n5"]
    assert kept == ["n1", "n3", "n4"]
    kept, dropped = denoise(cands, logits, false_negative_threshold=0.99)
    assert dropped == ["n5"]
    kept, dropped = denoise(cands, logits, false_negative_threshold=None)
    assert kept == cands and dropped == []
    with pytest.raises(ValueError):
        denoise(cands, logits[:3], false_negative_threshold=0.9)


def test_denoise_rank_rule():
    cands = ["n1", "n2", "n3", "n4"]
    logits = np.array([1.0, 4.0, -1.0, 3.0])  # re-ranker order: n2 (4), n4 (3), [positive 2.5], n1, n3
    # margin 0: every negative above the positive goes
    kept, dropped = denoise(cands, logits, false_negative_threshold=None, false_negative_rank=0, positive_score=2.5)
    assert dropped == ["n2", "n4"] and kept == ["n1", "n3"]
    # margin 1: only the one more than one place above the positive
    kept, dropped = denoise(cands, logits, false_negative_threshold=None, false_negative_rank=1, positive_score=2.5)
    assert dropped == ["n2"]
    # margin >= number above: nothing
    _, dropped = denoise(cands, logits, false_negative_threshold=None, false_negative_rank=2, positive_score=2.5)
    assert dropped == []
    # rules combine: threshold 0.5 alone drops n1 (0.73), n2, n4
    _, dropped = denoise(cands, logits, false_negative_threshold=0.5, false_negative_rank=1, positive_score=2.5)
    assert dropped == ["n1", "n2", "n4"]
    with pytest.raises(ValueError, match="positive"):
        denoise(cands, logits, false_negative_threshold=None, false_negative_rank=0)


def test_pseudo_positives():
    cands = ["a", "b", "c"]
    logits = np.array([3.0, -2.0, 0.5])  # 0.953, 0.119, 0.622
    assert pseudo_positives(cands, logits, 0.9) == ["a"]
    assert pseudo_positives(cands, logits, 0.6) == ["a", "c"]
    assert pseudo_positives(cands, logits, None) == []


def test_sample_negatives_never_returns_an_excluded_id():
    corpus = [f"d{i}" for i in range(50)]
    exclude = {f"d{i}" for i in range(0, 50, 2)} | {"d1", "d3"}
    rng = random.Random(0)
    allowed = set(corpus) - exclude
    for _ in range(500):
        got = sample_negatives(corpus, exclude, 5, rng)
        assert len(got) == 5 and len(set(got)) == 5
        assert set(got) <= allowed
    # asking for more than is left gives all that is left, still none excluded
    got = sample_negatives(corpus, exclude, 100, rng)
    assert set(got) == allowed and len(got) == len(allowed)
    assert sample_negatives(corpus, set(corpus), 3, rng) == []
    # seeded: same rng state, same draw
    assert sample_negatives(corpus, exclude, 4, random.Random(5)) == sample_negatives(
        corpus, exclude, 4, random.Random(5)
    )


def test_build_list_order_and_top_up():
    corpus = [f"d{i}" for i in range(20)]
    rng = random.Random(1)
    cl, topped = build_list(
        "q", "p", ["m1", "m2", "m3"], ["s1", "m2", "s2"], list_length=4, rng=rng, corpus_ids=corpus, source="dense"
    )
    # mined in rank order, then sampled; duplicates removed; nothing cut (the trainer samples G-1 per epoch)
    assert cl.pids == ["p", "m1", "m2", "m3", "s1", "s2"]
    assert topped == 0 and cl.source == "dense" and cl.qid == "q"

    exclude = {f"d{i}" for i in range(10)}
    cl, topped = build_list(
        "q", "p", ["m1"], [], list_length=6, rng=rng, corpus_ids=corpus, exclude=exclude, source="bm25"
    )
    assert cl.pids[:2] == ["p", "m1"] and len(cl.pids) == 6 and topped == 4
    assert not set(cl.pids[2:]) & exclude and len(set(cl.pids)) == 6

    with pytest.raises(ConfigError, match="list_length"):
        build_list("q", "p", [], [], list_length=5, rng=rng, corpus_ids=["p", "x"], source="bm25")


def test_label_unlabeled():
    run = {
        "u1": {"a": 9.0, "b": 8.0, "c": 7.0, "d": 6.0, "e": 5.0},
        "u2": {"a": 9.0, "b": 8.0},
        "u3": {"a": 9.0, "b": 8.0},
    }
    scores = {
        "u1": {"a": 4.0, "b": 0.0, "c": -4.0, "d": 3.0, "e": -5.0},  # a, d positive; c, e negative; b unsure
        "u2": {"a": 4.0, "b": 3.0},  # no negative -> skipped
        "u3": {"a": -4.0, "b": -3.0},  # no positive -> skipped
    }
    lists = label_unlabeled({"u1": "x", "u2": "y", "u3": "z", "u4": "w"}, run, scores, 0.9, 0.1)
    assert [(cl.qid, cl.pids) for cl in lists] == [("u1", ["a", "c", "e"]), ("u1", ["d", "c", "e"])]
    assert all(cl.source == "teacher" for cl in lists)
