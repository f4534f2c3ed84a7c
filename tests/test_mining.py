"""Mining: the pure steps by hand, then ``mine`` end to end on the tiny collection (BM25, dense + re-ranker, fakes)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from rocketkd.candidates.mining import mine
from rocketkd.candidates.negatives import (
    build_list,
    denoise,
    drop_positives,
    label_lists,
    label_unlabeled,
    pseudo_positives,
    ranked,
    sample_negatives,
    sigmoid,
)
from rocketkd.config import Config
from rocketkd.data.formats import load_retrieval_data, read_candidates, read_provenance
from rocketkd.errors import ConfigError
from rocketkd.models import CrossEncoderRanker

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


def _label_lists_before(qrels, corpus_ids, *, list_length, seed=13, min_grade=1, pool_size=None):
    """label_lists as written before it drew through sample_negatives (its own rejection loop), for comparison."""
    rng = random.Random(seed)
    pool = pool_size or 4 * (list_length - 1)
    lists = []
    for qid in sorted(qrels):
        judged = qrels[qid]
        positives = sorted((p for p, g in judged.items() if g >= min_grade), key=lambda p: (-judged[p], p))
        relevant = set(positives)
        for pos in positives:
            negatives, seen, attempts = [], set(), 0
            while len(negatives) < pool and attempts < 50 * pool:
                attempts += 1
                pid = corpus_ids[rng.randrange(len(corpus_ids))]
                if pid in relevant or pid in seen:
                    continue
                seen.add(pid)
                negatives.append(pid)
            lists.append((qid, [pos, *negatives]))
    return lists


@pytest.mark.parametrize(("n_passages", "list_length", "pool_size"), [(60, 8, None), (200, 4, 5), (6, 4, None)])
def test_label_lists_draws_as_before(n_passages, list_length, pool_size):
    """The same lists for a seed as its former own sampling loop, also when the corpus runs out (6 passages, 12
    wanted: the draw budget ends before any fill-up)."""
    corpus = [f"d{i}" for i in range(n_passages)]
    qrels = {"q1": {"d1": 2, "d2": 1, "d3": 0}, "q0": {"d0": 1}, "q2": {"d4": 0}}
    for seed in (0, 13, 99):
        got = label_lists(qrels, corpus, list_length=list_length, seed=seed, pool_size=pool_size)
        want = _label_lists_before(qrels, corpus, list_length=list_length, seed=seed, pool_size=pool_size)
        assert [(cl.qid, cl.pids) for cl in got] == want
        assert all(cl.source == "sampled" for cl in got)


# ---------------------------------------------------------------------------------------------- mine end to end


def _cfg(tiny_data, tmp_path, **mining):
    cfg = Config()
    cfg.data.path = str(tiny_data)
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.candidates.list_length = 8
    cfg.index.autocast = "no"
    cfg.index.batch_size = 16
    for key, value in mining.items():
        setattr(cfg.mining, key, value)
    return cfg


def _load(cfg):
    return load_retrieval_data(cfg.data.path, cache_dir=cfg.data.cache_dir)


def _check_lists(lists, data, cfg):
    """Every list: >= G pids, distinct, and no negative judged relevant (grade > 0) to its query in any split."""
    assert lists
    for cl in lists:
        assert len(cl.pids) >= cfg.candidates.list_length, cl
        assert len(set(cl.pids)) == len(cl.pids)
        for split, qrels in data.qrels.items():
            judged = qrels.get(cl.qid, {})
            leaked = [pid for pid in cl.negatives if judged.get(pid, 0) > 0]
            assert not leaked, f"{cl.qid}: judged positives {leaked} ({split}) among the negatives"


class FakeReranker:
    """Duck-typed re-ranker: ``rule(query_text, passage_text) -> logit``; records how it was called."""

    def __init__(self, rule):
        self.rule = rule
        self.calls = 0
        self.pairs = 0

    def predict(self, pairs, *, batch_size=64, show_progress=False, autocast_dtype=None):
        self.calls += 1
        self.pairs += len(pairs)
        return np.array([self.rule(q, p) for q, p in pairs], dtype=np.float32)


def test_mine_bm25_first_round(tiny_data, tmp_path):
    # a judgement of training query q0 in another split (dev, grade 1): it must never be a negative of q0
    with open(tiny_data / "qrels" / "dev.tsv", "a") as f:
        f.write("q0\td59\t1\n")
    cfg = _cfg(tiny_data, tmp_path)
    cfg.data.min_positive_grade = 2  # grade-1 passages are then neither positives nor negatives
    data = _load(cfg)
    assert "d59" in data.qrels["dev"]["q0"]
    out = tmp_path / "mined" / "candidates.jsonl"
    result = mine(cfg, output=out, data=data, show_progress=False)

    lists = read_candidates(out, corpus=data.corpus)
    assert result.path == out and result.num_lists == len(lists) and result.source == "bm25"
    _check_lists(lists, data, cfg)
    # one list per (training query, positive of grade >= 2): the 12 train queries have one grade-2 passage each
    train = data.qrels["train"]
    assert sorted((cl.qid, cl.positive) for cl in lists) == sorted(
        (q, p) for q, judged in train.items() for p, g in judged.items() if g >= 2
    )
    assert result.num_queries == len(train)
    assert all(cl.source == "bm25" for cl in lists)
    q0 = next(cl for cl in lists if cl.qid == "q0")
    assert not {"d0", "d1", "d2", "d59"} & set(q0.negatives)
    # the mined part is BM25's ranking: q0's first negative shares a term with it
    assert "wing" in data.corpus.get_text(q0.negatives[0]) or "data" in data.corpus.get_text(q0.negatives[0])

    meta = read_provenance(out)
    assert meta is not None
    for key in ("round", "retriever", "reranker", "first_round", "depth", "false_negative_threshold",
                "false_negative_rank", "pseudo_positive_threshold", "unlabeled_positive_threshold",
                "unlabeled_negative_threshold", "dropped_false_negatives", "topped_up"):
        assert key in meta, key
    assert meta["retriever"] == "bm25" and meta["reranker"] is None and meta["num_lists"] == len(lists)
    assert meta["false_negative_threshold"] == cfg.mining.false_negative_threshold


def test_mine_tops_up_short_lists(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, depth=3, sampled_negatives=1)
    data = _load(cfg)
    out = tmp_path / "c.jsonl"
    result = mine(cfg, output=out, data=data, show_progress=False)
    lists = read_candidates(out, corpus=data.corpus)
    _check_lists(lists, data, cfg)
    # at most 3 mined + 1 sampled < G - 1 = 7: every list needed a top-up
    assert result.topped_up == len(lists) == 36
    assert all(len(cl.pids) == cfg.candidates.list_length for cl in lists)


def test_mine_dense_with_tiny_cross_encoder(tiny_data, tiny_bert, tmp_path):
    # the rank rule alone (margin 0): drop every candidate the re-ranker puts above the list's positive
    cfg = _cfg(tiny_data, tmp_path, depth=20, false_negative_rank=0, false_negative_threshold=None)
    data = _load(cfg)
    torch.manual_seed(0)  # the one-logit head is new: seeded, so the test does not depend on the tests run before it
    reranker = CrossEncoderRanker.from_pretrained(tiny_bert)
    # A new head on a random tiny BERT scores all pairs within ~1e-4 of each other, no further apart than the float
    # noise of other batchings; scaled up, the order is the same and the gaps stand far above that noise.
    with torch.no_grad():
        reranker.model.classifier.weight.mul_(1e5)
    out = tmp_path / "dense.jsonl"
    result = mine(cfg, output=out, data=data, retriever=str(tiny_bert), reranker=reranker, round_index=1,
                  show_progress=False)
    lists = read_candidates(out, corpus=data.corpus)
    assert result.source == "dense" and result.num_lists == len(lists) == 36
    assert all(cl.source == "dense" for cl in lists)
    _check_lists(lists, data, cfg)
    meta = read_provenance(out)
    assert meta["round"] == 1 and meta["denoise"] is True and meta["retriever"] == str(tiny_bert)
    assert meta["false_negative_rank"] == 0 and meta["dropped_false_negatives"] == result.dropped_false_negatives

    # The candidates before denoising: the same retrieval without a re-ranker. Its lists are [positive, *mined,
    # *sampled] (depth 20 on 60 passages: no top-up), and sampled or top-up negatives are never mined candidates.
    plain = read_candidates(mine(cfg, output=tmp_path / "plain.jsonl", data=data, retriever=str(tiny_bert),
                                 show_progress=False).path)
    assert [(cl.qid, cl.positive) for cl in plain] == [(cl.qid, cl.positive) for cl in lists]
    # Denoising drops exactly the candidates the re-ranker puts above the list's positive, keeps the others in rank
    # order, and dropped_false_negatives counts the distinct (query, passage) pairs dropped. Logits are recomputed
    # here in other batches, so a candidate within `tol` of the positive may go either way.
    tol = 1e-2
    dropped: dict[str, set[str]] = {}
    for cl, before in zip(lists, plain):
        cands = before.pids[1 : len(before.pids) - cfg.mining.sampled_negatives]
        texts = [data.corpus.get_text(p) for p in [cl.positive, *cands]]
        logits = reranker.predict([(data.queries[cl.qid], t) for t in texts])
        positive, scores = float(logits[0]), dict(zip(cands, logits[1:].tolist()))
        kept = [p for p in cl.pids[1:] if p in scores]
        gone = set(cands) - set(kept)
        assert kept == [p for p in cands if p not in gone], cl.qid  # rank order kept
        assert all(scores[p] <= positive + tol for p in kept), cl.qid
        assert all(scores[p] > positive - tol for p in gone), cl.qid
        dropped.setdefault(cl.qid, set()).update(gone)
    assert result.dropped_false_negatives == sum(len(g) for g in dropped.values()) > 0


def test_mine_base_encoder_first_round(tiny_data, tiny_bert, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, first_round="base", depth=10)
    cfg.model.retriever = str(tiny_bert)
    data = _load(cfg)
    result = mine(cfg, output=tmp_path / "base.jsonl", data=data, show_progress=False)
    assert result.source == "dense"
    _check_lists(read_candidates(tmp_path / "base.jsonl"), data, cfg)


def test_mine_drops_a_false_negative_the_reranker_is_sure_of(tiny_data, tmp_path):
    cfg = _cfg(tiny_data, tmp_path, sampled_negatives=0)
    data = _load(cfg)
    plain = mine(cfg, output=tmp_path / "plain.jsonl", data=data, show_progress=False)
    before = read_candidates(plain.path)
    q0_lists = [cl for cl in before if cl.qid == "q0"]
    target = q0_lists[0].negatives[0]  # BM25's best unjudged passage for q0
    target_text = data.corpus.get_text(target)
    q0_text = data.queries["q0"]

    fake = FakeReranker(lambda q, p: 6.0 if (q, p) == (q0_text, target_text) else -3.0)
    result = mine(cfg, output=tmp_path / "denoised.jsonl", data=data, reranker=fake, show_progress=False)
    after = read_candidates(result.path)
    assert fake.calls >= 1
    assert result.dropped_false_negatives == 1
    for cl in after:
        if cl.qid == "q0":
            assert target not in cl.pids
    # everything else is unchanged: same lists, same mined negatives minus the target
    assert [(cl.qid, cl.positive) for cl in after] == [(cl.qid, cl.positive) for cl in before]
    for a, b in zip(after, before):
        if a.qid != "q0":
            assert a.pids == b.pids
        else:
            assert a.pids[: len(b.pids) - 1] == [p for p in b.pids if p != target]
    _check_lists(after, data, cfg)

    # the same passage above a pseudo-positive threshold becomes the positive of its own list
    cfg.mining.pseudo_positive_threshold = 0.99
    result = mine(cfg, output=tmp_path / "pseudo.jsonl", data=data, reranker=fake, show_progress=False)
    lists = read_candidates(result.path)
    pseudo = [cl for cl in lists if cl.source == "pseudo"]
    assert result.pseudo_positives == 1 and [(cl.qid, cl.positive) for cl in pseudo] == [("q0", target)]
    assert target not in [p for cl in lists if cl.qid == "q0" for p in cl.negatives]
    _check_lists(lists, data, cfg)


def test_mine_teacher_labels_unlabeled_queries(tiny_data, tmp_path):
    with open(tiny_data / "queries_unlabeled.jsonl", "w") as f:
        f.write(json.dumps({"_id": "u0", "text": "flutter wing"}) + "\n")
        f.write(json.dumps({"_id": "u1", "text": "heat nozzle"}) + "\n")  # the teacher finds nothing: no list
        f.write(json.dumps({"_id": "q5", "text": "nozzle"}) + "\n")  # a judged query: never teacher-labelled
    cfg = _cfg(tiny_data, tmp_path, label_unlabeled=True, denoise=False)
    data = _load(cfg)
    assert set(data.unlabeled_queries) == {"u0", "u1", "q5"}

    def rule(q, p):
        if q == "flutter wing":
            return 5.0 if p.startswith("flutter report") else (0.0 if "flutter" in p else -5.0)
        return -5.0

    fake = FakeReranker(rule)
    result = mine(cfg, output=tmp_path / "t.jsonl", data=data, reranker=fake, show_progress=False)
    lists = read_candidates(result.path)
    teacher = [cl for cl in lists if cl.source == "teacher"]
    assert {cl.qid for cl in teacher} == {"u0"}
    assert sorted(cl.positive for cl in teacher) == ["d3", "d4", "d5"]
    assert result.labelled_queries == 1 and result.teacher_lists == 3
    assert result.num_queries == 12 + 1
    for cl in teacher:
        assert len(cl.pids) >= cfg.candidates.list_length
        for pid in cl.negatives:
            text = data.corpus.get_text(pid)
            # neither a teacher positive nor a passage the teacher was unsure about (d2 mentions flutter)
            assert not text.startswith("flutter report") and pid != "d2"
    # denoise off: training lists equal those of a run without a re-ranker
    plain = read_candidates(mine(cfg, output=tmp_path / "p.jsonl", data=data, show_progress=False).path)
    assert [cl.pids for cl in lists if cl.source != "teacher"] == [cl.pids for cl in plain]
