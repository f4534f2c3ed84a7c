"""Encoding once: token ids made once per (corpus, tokenizer, max length), token-budget batches that change nothing
but the padding, and the embedding cache of frozen encoders (the model runs once; any change of key recomputes;
damage rebuilds; a training model is never cached)."""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from rocketkd.config import load_config
from rocketkd.data import Corpus, load_retrieval_data
from rocketkd.data import tokens as tokens_mod
from rocketkd.data.tokens import corpus_token_ids, tokenize_texts
from rocketkd.models import DualEncoder
from rocketkd.models.batching import check_batches, pad_token_ids, token_batches
from rocketkd.pipeline import run_pipeline
from rocketkd.search.cache import embedding_cache
from rocketkd.search.encode import encode_corpus
from rocketkd.search.index import DenseIndex


@pytest.fixture
def model(tiny_bert) -> DualEncoder:
    return DualEncoder.from_pretrained(tiny_bert)


@pytest.fixture
def data(tiny_data, tmp_path):
    tokens_mod.clear_memo()
    return load_retrieval_data(tiny_data, cache_dir=tmp_path / "corpus-cache")


def _count_forwards(model: DualEncoder) -> list[int]:
    """Count the passage tower's forward calls (one per batch)."""
    calls = [0]

    def hook(module, args, kwargs):
        calls[0] += 1

    model.passage_encoder.register_forward_pre_hook(hook, with_kwargs=True)
    return calls


def _count_tokenizer_calls(model: DualEncoder, monkeypatch) -> list[int]:
    calls = [0]
    real = type(model.tokenizer).__call__

    def counting(self, *args, **kwargs):
        calls[0] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(model.tokenizer), "__call__", counting)
    return calls


def _plain_encode(model: DualEncoder, texts: list[str], batch_size: int) -> np.ndarray:
    """The reference: texts in input order, the tokenizer's own padding, fixed-size batches, no sorting."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            inputs = model.tokenize_passages(texts[start : start + batch_size])
            out.append(model.encode_passages(inputs).float().numpy())
    return np.concatenate(out)


# ----------------------------------------------------------------------------------------------------------------
# batching


def test_token_batches_respect_rows_and_tokens():
    lengths = np.array([100, 90, 40, 40, 30, 10, 10, 10, 5, 2])
    batches = token_batches(lengths, max_rows=4, max_tokens=120)
    assert [(b.start, b.stop) for b in batches] == [(0, 1), (1, 2), (2, 5), (5, 9), (9, 10)]
    for b in batches:
        assert b.stop - b.start <= 4 and ((b.stop - b.start) * lengths[b.start] <= 120 or b.stop - b.start == 1)
    # a row longer than the budget still gets a batch of its own
    assert [(b.start, b.stop) for b in token_batches(np.array([500, 3]), 8, 100)] == [(0, 1), (1, 2)]


def test_pad_token_ids_equals_the_tokenizers_padding(model):
    texts = ["flow over a wing", "heat", "", "boundary layer transition on a flat plate in supersonic flow"]
    seqs = tokenize_texts(model.tokenizer, texts, 16)
    ours = pad_token_ids(seqs, model.tokenizer)
    theirs = model.tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert set(ours) == set(theirs.keys())
    for key in ours:
        assert torch.equal(ours[key], theirs[key]), key


def test_sorted_budget_encoding_equals_plain_encoding_in_order(model, data):
    texts = data.corpus.texts(range(len(data.corpus)))
    reference = _plain_encode(model, texts, batch_size=7)
    # tiny budgets and batches: many batches of different sizes, every row moved by the sort
    for batch_size, max_tokens in ((4, 64), (64, 10_000), (1, 1)):
        got = model.encode(texts, side="passage", batch_size=batch_size, max_tokens=max_tokens)
        np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)
    got = encode_corpus(model, data.corpus, batch_size=5, max_tokens=80, chunk_size=9, autocast="no",
                        show_progress=False)
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)
    # order is the input's: a permutation of the texts permutes the rows
    perm = np.random.default_rng(0).permutation(len(texts))
    shuffled = model.encode([texts[i] for i in perm], side="passage", batch_size=6, max_tokens=100)
    np.testing.assert_allclose(shuffled, reference[perm], atol=1e-5, rtol=0)



def test_caller_planned_batches_run_as_given(model, data, monkeypatch):
    texts = data.corpus.texts(range(len(data.corpus)))
    seqs = tokenize_texts(model.tokenizer, texts, model.passage_max_length)
    reference = _plain_encode(model, texts, batch_size=7)
    plan = [slice(0, 5), slice(5, 6), slice(6, 31), slice(31, 60)]  # unsorted rows, unequal sizes: run as given
    seen = []
    pad = model.pad_ids
    monkeypatch.setattr(model, "pad_ids", lambda rows: seen.append([list(map(int, r)) for r in rows]) or pad(rows))
    got = model.encode_ids(seqs, batch_size=2, max_tokens=1, batches=plan)  # row and token bounds unused
    assert seen == [[list(map(int, r)) for r in seqs[b]] for b in plan]
    np.testing.assert_allclose(got, reference, atol=1e-5, rtol=0)
    check_batches([], 0)
    for bad in ([slice(0, 5)], [slice(0, 5), slice(6, 60)], [slice(0, 0), slice(0, 60)], [slice(0, 61)],
                [slice(0, 60, 2)]):
        with pytest.raises(ValueError):
            check_batches(bad, 60)

# ----------------------------------------------------------------------------------------------------------------
# token ids: once


def test_corpus_token_ids_made_once_and_stored_beside_the_corpus(model, data, monkeypatch):
    corpus = data.corpus
    calls = _count_tokenizer_calls(model, monkeypatch)
    first = corpus_token_ids(corpus, model.tokenizer, 24)
    assert calls[0] == 1  # one batch call for the 60 passages
    expected = model.tokenizer(corpus.texts(range(len(corpus))), truncation=True, max_length=24)["input_ids"]
    assert [list(map(int, x)) for x in first.rows(range(len(corpus)))] == expected
    calls[0] = 0
    assert corpus_token_ids(corpus, model.tokenizer, 24) is first  # the memo
    encode_corpus(model, corpus, autocast="no", show_progress=False)  # another length (the model's): tokenised
    encode_corpus(model, corpus, autocast="no", show_progress=False)  # ... once
    assert calls[0] == 1

    stored = list(corpus.cache_file.parent.glob(f"{corpus.cache_file.name}.tokens-*"))
    assert len(stored) == 2
    tokens_mod.clear_memo()  # as a new process: read back from disk, no tokenizer call
    calls[0] = 0
    again = corpus_token_ids(corpus, model.tokenizer, 24)
    assert calls[0] == 0 and np.array_equal(again.ids, first.ids)

    # a damaged store is noticed and rebuilt
    want = np.array(first.ids)  # a copy: first.ids maps the file damaged below
    folder = next(p for p in stored if (p / "meta.json").read_text().find('"max_length": 24') >= 0)
    raw = bytearray((folder / "ids.bin").read_bytes())
    raw[5] ^= 0xFF
    (folder / "ids.bin").write_bytes(bytes(raw))
    tokens_mod.clear_memo()
    rebuilt = corpus_token_ids(corpus, model.tokenizer, 24)
    assert calls[0] == 1 and np.array_equal(rebuilt.ids, want)


# ----------------------------------------------------------------------------------------------------------------
# the embedding cache


def test_a_frozen_encoder_encodes_a_corpus_once(model, data, tmp_path, caplog):
    cache = tmp_path / "emb-cache"
    calls = _count_forwards(model)
    with caplog.at_level(logging.INFO, logger="rocketkd.search.encode"):
        first = encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
        n = calls[0]
        assert n >= 1 and len(list(cache.glob("emb-*"))) == 1
        second = encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    assert calls[0] == n  # the model did not run again
    np.testing.assert_array_equal(first, second)
    assert "reused from the embedding cache" in caplog.text
    # the index is transparent: set the folder once, every build reuses it (and out_path gets a copy)
    with embedding_cache(cache):
        index = DenseIndex.build(model, data.corpus, autocast="no", show_progress=False)
        on_disk = encode_corpus(model, data.corpus, autocast="no", show_progress=False,
                                out_path=tmp_path / "e" / "p.npy")
    assert calls[0] == n and index.ntotal == len(data.corpus)
    np.testing.assert_array_equal(np.asarray(on_disk), first)


def test_any_change_of_key_encodes_again(model, data, tiny_bert, tmp_path):
    cache = tmp_path / "emb-cache"
    encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    calls = _count_forwards(model)
    encode_corpus(model, data.corpus, autocast="bf16", show_progress=False, cache_dir=cache)  # precision
    assert calls[0] >= 1
    shorter = DualEncoder.from_pretrained(tiny_bert, passage_max_length=8)  # max length
    other_calls = _count_forwards(shorter)
    encode_corpus(shorter, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    assert other_calls[0] >= 1
    cls = DualEncoder.from_pretrained(tiny_bert, pooling="cls")  # pooling
    cls_calls = _count_forwards(cls)
    encode_corpus(cls, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    assert cls_calls[0] >= 1
    # another corpus (one passage fewer)
    lines = (tmp_path / "tiny-data" / "corpus.jsonl").read_text().splitlines()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "corpus.jsonl").write_text("\n".join(lines[:-1]) + "\n")
    other = Corpus.from_beir(tmp_path / "other" / "corpus.jsonl", cache_dir=tmp_path / "corpus-cache")
    calls[0] = 0
    encode_corpus(model, other, autocast="no", show_progress=False, cache_dir=cache)
    assert calls[0] >= 1
    assert len(list(cache.glob("emb-*"))) == 5
    # and each of them is now reused
    calls[0] = 0
    encode_corpus(model, other, autocast="no", show_progress=False, cache_dir=cache)
    encode_corpus(model, data.corpus, autocast="bf16", show_progress=False, cache_dir=cache)
    assert calls[0] == 0


def test_a_damaged_cache_entry_is_rebuilt(model, data, tmp_path, caplog):
    cache = tmp_path / "emb-cache"
    first = encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    (entry,) = cache.glob("emb-*")
    npy = entry / "embeddings.npy"
    raw = bytearray(npy.read_bytes())
    raw[-3] ^= 0xFF  # one flipped byte in the last vector
    npy.write_bytes(bytes(raw))
    calls = _count_forwards(model)
    with caplog.at_level(logging.WARNING, logger="rocketkd.search.cache"):
        again = encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    assert calls[0] >= 1 and "damaged" in caplog.text
    np.testing.assert_allclose(again, first, atol=1e-6, rtol=0)
    npy.write_bytes(npy.read_bytes()[:100])  # truncated
    calls[0] = 0
    encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    assert calls[0] >= 1
    calls[0] = 0
    encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    assert calls[0] == 0  # the rebuilt entry is whole again


def test_a_model_that_trains_is_never_cached(model, data, tmp_path):
    cache = tmp_path / "emb-cache"
    assert model.frozen_source() is not None
    assert model.double().float().frozen_source() is not None  # a move or cast is no training
    model.train()
    assert model.frozen_source() is None  # training mode
    encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    assert not cache.exists() or not list(cache.glob("emb-*"))
    model.eval()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    texts = data.corpus.texts(range(4))
    model.encode_passages(model.tokenize_passages(texts)).sum().backward()
    optimizer.step()  # weights changed in place: no longer the folder's
    assert model.frozen_source() is None
    encode_corpus(model, data.corpus, autocast="no", show_progress=False, cache_dir=cache)
    assert not cache.exists() or not list(cache.glob("emb-*"))
    # a model made in memory (not loaded from a folder) is not cached either
    fresh = DualEncoder(model.passage_encoder, model.tokenizer)
    assert fresh.frozen_source() is None


def test_the_pipeline_encodes_each_model_and_corpus_once(tiny_bert, tiny_data, tmp_path, monkeypatch, caplog):
    """Every whole-corpus encode in a pipeline run, by encoder fingerprint and precision: none twice."""
    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "configs" / "tiny.yaml", [
        f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}",
        f"output_dir={tmp_path / 'run'}", "model.reranker_prior=true",
    ])
    corpus_size = len(load_retrieval_data(tiny_data).corpus)
    seen: Counter = Counter()
    rows: Counter = Counter()  # passages encoded by a frozen model, whole corpus or not (the prior's scorers too)
    real = DualEncoder.encode_ids

    def counting(self, seqs, **kwargs):
        key = (self.fingerprint(), str(kwargs.get("autocast_dtype")))
        if kwargs.get("side") == "passage" and len(seqs) == corpus_size:
            seen[key] += 1
        if kwargs.get("side") == "passage" and self.frozen_source() is not None:
            rows[key] += len(seqs)
        return real(self, seqs, **kwargs)

    monkeypatch.setattr(DualEncoder, "encode_ids", counting)
    with caplog.at_level(logging.INFO, logger="rocketkd.search.encode"):
        run_pipeline(cfg)
    assert seen and max(seen.values()) == 1, seen
    # no frozen model encodes more passages than the corpus holds at any one precision: each passage once
    assert rows and max(rows.values()) <= corpus_size, rows
    assert "reused from the embedding cache" in caplog.text
    assert list((tmp_path / "run" / "embedding-cache").glob("emb-*"))
