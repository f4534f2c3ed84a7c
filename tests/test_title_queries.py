"""data.title_queries: passages' titles as self-supervised training queries (rocketkd.candidates.title_queries)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from rocketkd.candidates.mining import mine
from rocketkd.candidates.title_queries import add_title_queries, title_queries
from rocketkd.config import Config, validate_config
from rocketkd.data.formats import load_retrieval_data, read_candidates, read_provenance
from rocketkd.errors import ConfigError

TITLED = [f"d{i}" for i in range(10)]  # the passages given a title of >= 4 words below


@pytest.fixture
def titled_data(tiny_data):
    """The tiny collection with long titles on d0..d9, a long title over an empty text on d10, short ones elsewhere."""
    path = tiny_data / "corpus.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        i = int(row["_id"][1:])
        if i < 10:
            row["title"] = f"flutter of a wing number {i}"
        elif i == 10:
            row["title"], row["text"] = "a long title over nothing", ""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tiny_data


def _load(path, tmp_path):
    with pytest.warns(UserWarning):  # d10 is empty: the loader warns, as for Cranfield's two empty abstracts
        return load_retrieval_data(path, cache_dir=tmp_path / "cache")


def _by_hash(pids):
    return sorted(pids, key=lambda pid: hashlib.sha1(pid.encode()).hexdigest())


def test_title_queries_take_titled_passages_in_hash_order(titled_data, tmp_path):
    data = _load(titled_data, tmp_path)
    every = title_queries(data.corpus, 100)
    assert sorted(every) == sorted(f"title:{pid}" for pid in TITLED)  # not d10 (empty text), not 2-word titles
    assert every["title:d3"] == ("flutter of a wing number 3", "d3")
    three = title_queries(data.corpus, 3)
    assert list(three) == [f"title:{pid}" for pid in _by_hash(TITLED)[:3]]
    assert title_queries(data.corpus, 0) == {}


def test_add_title_queries_extends_the_train_split_only(titled_data, tmp_path):
    data = _load(titled_data, tmp_path)
    before = {split: {q: dict(p) for q, p in qrels.items()} for split, qrels in data.qrels.items()}
    n_queries = len(data.queries)
    assert add_title_queries(data, "train", 4, grade=2) == 4
    added = [qid for qid in data.qrels["train"] if qid.startswith("title:")]
    assert added == [f"title:{pid}" for pid in _by_hash(TITLED)[:4]]
    for qid in added:
        pid = qid.split(":", 1)[1]
        assert data.qrels["train"][qid] == {pid: 2}
        assert data.queries[qid] == data.corpus.column("title")[data.corpus.row_of(pid)]
    assert len(data.queries) == n_queries + 4
    assert data.qrels["dev"] == before["dev"] and data.qrels["test"] == before["test"]
    # a second call (train after mine, on the same data) adds nothing
    assert add_title_queries(data, "train", 4, grade=2) == 4
    assert len(data.queries) == n_queries + 4
    with pytest.raises(ConfigError, match="data.train_split"):
        add_title_queries(data, "nosuch", 4, grade=2)


def test_title_query_id_clash_is_an_error(titled_data, tmp_path):
    with open(titled_data / "queries.jsonl", "a") as f:
        f.write(json.dumps({"_id": "title:" + _by_hash(TITLED)[0], "text": "a query with an unlucky id"}) + "\n")
    data = _load(titled_data, tmp_path)
    with pytest.raises(ConfigError, match="data.title_queries.*already has a query with id 'title:d"):
        add_title_queries(data, "train", 2, grade=1)


def test_negative_title_queries_rejected():
    cfg = Config()
    cfg.data.title_queries = -1
    with pytest.raises(ConfigError, match="data.title_queries"):
        validate_config(cfg)


def test_mine_lists_title_queries_without_denoising_them(titled_data, tmp_path):
    class CountingReranker:
        def __init__(self):
            self.queries = []

        def predict(self, pairs, *, batch_size=64, show_progress=False, autocast_dtype=None):
            self.queries += [q for q, _ in pairs]
            return np.full(len(pairs), -3.0, dtype=np.float32)

    cfg = Config()
    cfg.data.path = str(titled_data)
    cfg.data.cache_dir = str(tmp_path / "cache")
    cfg.data.title_queries = 5
    cfg.candidates.list_length = 6
    cfg.index.autocast = "no"
    data = _load(titled_data, tmp_path)
    fake = CountingReranker()
    result = mine(cfg, output=tmp_path / "lists.jsonl", data=data, reranker=fake, show_progress=False)
    lists = read_candidates(result.path)
    titled = [cl for cl in lists if cl.qid.startswith("title:")]
    assert len(titled) == 5
    for cl in titled:
        assert cl.positive == cl.qid.split(":", 1)[1] and cl.positive not in cl.negatives
        assert len(cl.pids) >= 6  # depth + sampled; the trainer takes list_length of them
    assert read_provenance(result.path)["title_queries"] == 5
    assert fake.queries and not set(fake.queries) & {data.queries[cl.qid] for cl in titled}
    labelled = [cl for cl in lists if not cl.qid.startswith("title:")]
    assert len(labelled) == len(lists) - 5 and labelled


def test_titles_near_a_dev_or_test_query_are_dropped(titled_data, tmp_path, caplog):
    """The stated rule (issue 21): a title whose content words have Jaccard similarity >= 0.4 with a dev or test
    query's is not a training query; the next titles in hash order take its place, and the drop is logged."""
    from rocketkd.candidates.title_queries import MAX_HELD_OUT_SIMILARITY, content_words, similarity

    # "flutter of a wing number 3" -> {flutter, wing, number, 3}
    assert similarity(content_words("flutter of a wing number 3"), content_words("what is the flutter of a wing 3 ?")
                      ) == pytest.approx(3 / 4)  # {flutter, wing, 3} of {flutter, wing, number, 3}
    assert similarity(content_words("flutter of a wing number 3"), content_words("wing loads")) == pytest.approx(1 / 5)
    assert MAX_HELD_OUT_SIMILARITY == 0.4
    first = _by_hash(TITLED)[0]
    path = titled_data / "corpus.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        if row["_id"] == first:
            row["title"] = "measured vibration of supersonic panels in a wind tunnel"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _load(titled_data, tmp_path)
    # {measured, vibration, supersonic, panels, wind, tunnel} against {vibration, supersonic, panels, measured,
    # tunnel}: Jaccard 5/6 with the first title in hash order, 0 with the others
    near = "how was the vibration of supersonic panels measured in the tunnel ?"
    test_qid = next(iter(data.qrels["test"]))
    data.queries[test_qid] = near
    with caplog.at_level("INFO", logger="rocketkd.candidates.title_queries"):
        assert add_title_queries(data, "train", 3, grade=1, held_out=("dev", "test")) == 3
    added = [qid for qid in data.qrels["train"] if qid.startswith("title:")]
    assert f"title:{first}" not in added
    assert added == [f"title:{pid}" for pid in _by_hash(TITLED)[1:4]]
    assert "1 titles dropped as near a dev or test query" in caplog.text

    # without held-out splits (the old behaviour) the near-copy of the test query would have been trained on
    again = _load(titled_data, tmp_path)
    again.queries[test_qid] = near
    assert f"title:{first}" in title_queries(again.corpus, 3)
    assert f"title:{first}" not in title_queries(again.corpus, 3, avoid=[near])
