"""Encoding in chunks, the FAISS index folder (build, save, load, its refusals), exact search three ways, BM25."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rocketkd.data import Corpus, load_retrieval_data
from rocketkd.errors import ConfigError, IndexError_
from rocketkd.models import DualEncoder
from rocketkd.search import encode as encode_mod
from rocketkd.search.bm25 import BM25Retriever
from rocketkd.search.encode import encode_corpus, encode_queries, resolve_autocast
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.search.topk import torch_topk_search


@pytest.fixture
def model(tiny_bert) -> DualEncoder:
    return DualEncoder.from_pretrained(tiny_bert)


@pytest.fixture
def data(tiny_data):
    return load_retrieval_data(tiny_data)


def _random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)


def _ids(n: int) -> list[str]:
    return [f"p{i}" for i in range(n)]


# ----------------------------------------------------------------------------------------------------------------
# encoding


def test_resolve_autocast(monkeypatch):
    assert resolve_autocast("no", "cpu") is None
    assert resolve_autocast("bf16", "cpu") is torch.bfloat16
    assert resolve_autocast("fp16", "cuda") is torch.float16
    monkeypatch.setattr(encode_mod, "cpu_supports_bf16", lambda: False)
    assert resolve_autocast("auto", "cpu") is None
    monkeypatch.setattr(encode_mod, "cpu_supports_bf16", lambda: True)
    assert resolve_autocast("auto", "cpu") is torch.bfloat16
    with pytest.raises(ConfigError, match="autocast"):
        resolve_autocast("int8", "cpu")


def test_encode_corpus_equals_encode_in_order(model, data):
    corpus = data.corpus
    reference = model.encode(corpus.texts(range(len(corpus))), side="passage", batch_size=8)
    # chunks of 7 rows (smaller than the 60-passage corpus, and not dividing it), batches of 4
    got = encode_corpus(model, corpus, batch_size=4, chunk_size=7, autocast="no", show_progress=False)
    assert got.shape == (len(corpus), model.hidden_size) and got.dtype == np.float32
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)

    rows = [41, 3, 17, 3]
    shard = encode_corpus(
        model, corpus, batch_size=2, chunk_size=3, autocast="no", rows=rows, show_progress=False
    )
    np.testing.assert_allclose(shard, reference[rows], atol=1e-5, rtol=0)

    queries = ["what is known of wing data", "heat"]
    np.testing.assert_allclose(
        encode_queries(model, queries, batch_size=1, autocast="no"),
        model.encode(queries, side="query"),
        atol=1e-5,
        rtol=0,
    )


def test_encode_corpus_to_memmap(model, data, tmp_path):
    corpus = data.corpus
    out = tmp_path / "emb" / "passages.npy"
    got = encode_corpus(
        model, corpus, batch_size=8, chunk_size=16, autocast="no", out_path=out, show_progress=False
    )
    assert isinstance(got, np.memmap)
    reference = model.encode(corpus.texts(range(len(corpus))), side="passage")
    np.testing.assert_allclose(np.load(out), reference, atol=1e-5, rtol=0)
    assert sorted(p.name for p in out.parent.iterdir()) == ["passages.npy"]  # no temporary left behind


# ----------------------------------------------------------------------------------------------------------------
# exact search: faiss Flat, brute force, torch


def test_flat_search_equals_brute_force_topk():
    emb, queries = _random_vectors(300, 16, 0), _random_vectors(9, 16, 1)
    index = DenseIndex.from_embeddings(emb, _ids(300))
    result = index.search(queries, 10)
    scores, rows = torch.from_numpy(queries @ emb.T).topk(10, dim=1)
    for q in range(len(queries)):
        assert result.ids[q] == [f"p{r}" for r in rows[q].tolist()]
        np.testing.assert_allclose(result.scores[q], scores[q].numpy(), atol=1e-4, rtol=1e-5)

    # asking for more than the index holds returns all of it, best first, nothing made up
    everything = index.search(queries[:2], 1000)
    assert [len(x) for x in everything.ids] == [300, 300]
    assert all(np.all(np.diff(s) <= 0) for s in everything.scores)


def test_torch_topk_search_equals_faiss():
    emb, queries = _random_vectors(500, 24, 2), _random_vectors(13, 24, 3)
    index = DenseIndex.from_embeddings(emb, _ids(500))
    expected = index.search(queries, 20)
    scores, rows = torch_topk_search(
        emb, queries, 20, chunk_size=37, query_block=4
    )  # several chunks and blocks
    assert scores.shape == rows.shape == (13, 20)
    for q in range(13):
        assert [f"p{r}" for r in rows[q]] == expected.ids[q]
        np.testing.assert_allclose(scores[q], expected.scores[q], atol=1e-4, rtol=1e-5)
    # the same through the index's torch backend (what runs on a CUDA machine without faiss-gpu)
    index.backend = "torch"
    via_torch = index.search(queries, 20)
    assert via_torch.ids == expected.ids
    # k larger than the corpus: all rows
    s_all, r_all = torch_topk_search(torch.from_numpy(emb), queries[:1], 900, chunk_size=64)
    assert sorted(r_all[0].tolist()) == list(range(500))


def test_ivf_factory_trains_and_searches():
    emb, queries = _random_vectors(400, 8, 4), _random_vectors(5, 8, 5)
    index = DenseIndex.from_embeddings(emb, _ids(400), factory="IVF4,Flat", train_sample=200)
    assert index.faiss_index.is_trained and index.ntotal == 400 and index.meta["factory"] == "IVF4,Flat"
    probed_one = index.search(queries, 400)  # nprobe 1: only one list visited, faiss pads with -1
    assert all(0 < len(ids) < 400 for ids in probed_one.ids)
    assert all("-1" not in ids and len(ids) == len(s) for ids, s in zip(probed_one.ids, probed_one.scores))
    index.faiss_index.nprobe = 4  # every list: exact
    exact = DenseIndex.from_embeddings(emb, _ids(400)).search(queries, 10)
    assert index.search(queries, 10).ids == exact.ids


# ----------------------------------------------------------------------------------------------------------------
# the index folder


def test_build_save_load_round_trip(model, data, tmp_path):
    index = DenseIndex.build(model, data.corpus, batch_size=16, autocast="no", show_progress=False)
    texts = list(data.queries.values())
    before = index.search_texts(texts, 5, autocast="no")
    folder = index.save(tmp_path / "idx")
    assert sorted(p.name for p in folder.iterdir()) == [".rocketkd-output", "encoder", "ids.txt", "index.faiss",
                                                        "meta.json"]
    assert (folder / "ids.txt").read_text().splitlines() == list(data.corpus.ids)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["count"] == 60 and meta["dim"] == model.hidden_size and meta["metric"] == "ip"
    assert meta["encoder_fingerprint"] == model.fingerprint()
    assert meta["corpus_fingerprint"] == data.corpus.fingerprint()

    loaded = DenseIndex.load(folder, corpus=data.corpus)  # encoder comes from folder/encoder, lazily
    after = loaded.search_texts(texts, 5, autocast="no")
    assert after.ids == before.ids
    for a, b in zip(after.scores, before.scores):
        np.testing.assert_array_equal(a, b)
    run = search_run(loaded, data.queries, 5, autocast="no")
    assert list(run) == list(data.queries)
    assert all(list(run[q]) == ids for q, ids in zip(data.queries, before.ids))


@pytest.fixture
def saved_vectors(tmp_path):
    """A 50-vector index folder without an encoder."""
    folder = tmp_path / "vec-idx"
    DenseIndex.from_embeddings(_random_vectors(50, 8, 6), _ids(50)).save(folder)
    return folder


def test_load_refuses_missing_ids(saved_vectors):
    (saved_vectors / "ids.txt").unlink()
    with pytest.raises(IndexError_, match=f"{saved_vectors}.*ids.txt is missing"):
        DenseIndex.load(saved_vectors)
    with pytest.raises(IndexError_, match="no such folder"):
        DenseIndex.load(saved_vectors.parent / "nowhere")


def test_load_refuses_truncated_index_file(saved_vectors):
    file = saved_vectors / "index.faiss"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(IndexError_, match=f"{saved_vectors}.*index.faiss cannot be read.*truncated"):
        DenseIndex.load(saved_vectors)


def test_load_refuses_count_and_dim_mismatch(saved_vectors):
    ids_file = saved_vectors / "ids.txt"
    lines = ids_file.read_text().splitlines()
    ids_file.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IndexError_, match=f"{saved_vectors}.*49 ids.*50 vectors"):
        DenseIndex.load(saved_vectors)
    ids_file.write_text("\n".join(lines) + "\n")
    meta = json.loads((saved_vectors / "meta.json").read_text())
    meta["dim"] = 16
    (saved_vectors / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(IndexError_, match=f"{saved_vectors}.*dimension 8.*16"):
        DenseIndex.load(saved_vectors)


def test_load_refuses_other_encoder_and_other_corpus(model, data, tmp_path, tiny_bert):
    folder = DenseIndex.build(model, data.corpus, autocast="no", show_progress=False).save(tmp_path / "idx")
    other = DualEncoder.from_pretrained(tiny_bert)
    with torch.no_grad():
        next(other.parameters()).add_(1e-3)
    with pytest.raises(IndexError_, match=f"{folder}.*another encoder"):
        DenseIndex.load(folder, encoder=other)
    assert DenseIndex.load(folder, encoder=model).encoder is model

    small = Corpus.from_records([{"_id": "d0", "text": "wing"}])
    with pytest.raises(IndexError_, match=f"{folder}.*different corpus"):
        DenseIndex.load(folder, corpus=small)

    # an encoder swapped inside the folder is caught when it is loaded for search
    other.save(folder / "encoder")
    with pytest.raises(IndexError_, match="another encoder"):
        DenseIndex.load(folder).search_texts(["wing"], 3)


# ----------------------------------------------------------------------------------------------------------------
# BM25


def test_bm25_finds_topic_passages(data):
    bm25 = BM25Retriever.build(data.corpus)
    assert bm25.ids == list(data.corpus.ids)
    run = bm25.search(data.queries, 3)
    for qrels in data.qrels.values():
        for qid, judged in qrels.items():
            best = max(judged, key=judged.get)  # the grade-2 passage, the one whose topic the query names
            assert best in run[qid], (qid, run[qid])
            assert len(run[qid]) == 3


def test_bm25_handles_empty_passages_and_unknown_words():
    with pytest.warns(UserWarning, match="empty text"):
        corpus = Corpus.from_records(
            [
                {"_id": "e", "text": ""},
                {"_id": "x", "text": "heat flow in a nozzle"},
                {"_id": "y", "text": "heat"},
            ]
        )
    run = BM25Retriever.build(corpus).search({"q1": "nozzle heat", "q2": "the of", "q3": "zebra"}, 10)
    assert list(run["q1"]) == ["x", "y"]  # the empty passage matches nothing
    assert run["q2"] == {} and run["q3"] == {}  # stopwords only / words the corpus lacks
