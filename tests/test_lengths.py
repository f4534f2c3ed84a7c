"""model.*_max_length: auto -- lengths sized from the collection's token counts, capped by the model folder."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from rocketkd.config import load_config
from rocketkd.data import load_retrieval_data
from rocketkd.errors import ConfigError
from rocketkd.models.lengths import auto_lengths, size_lengths
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]


class Words:
    """A tokenizer stand-in: one token per word plus [CLS] and [SEP]."""

    def __call__(self, texts, add_special_tokens=True, verbose=False):
        return {"input_ids": [[0] * (len(t.split()) + 2) for t in texts]}


def test_auto_lengths_are_percentiles_rounded_up_and_capped():
    queries = [" ".join(["w"] * n) for n in range(1, 101)]  # 3..102 tokens: 99th percentile 101.01
    passages = [" ".join(["w"] * n) for n in range(1, 201)]  # 3..202 tokens: 95th percentile 192.05
    got = auto_lengths(Words(), queries, passages, caps=(512, 512, 512))
    assert got["query_tokens_p99"] == pytest.approx(np.percentile(np.arange(3, 103), 99))
    assert got["query_max_length"] == 104  # 101.01 up to a multiple of 8
    assert got["passage_max_length"] == 224  # 192.05 up to a multiple of 32
    assert got["reranker_max_length"] == 328  # 104 + 224
    capped = auto_lengths(Words(), queries, passages, caps=(64, 128, 160))
    assert (capped["query_max_length"], capped["passage_max_length"], capped["reranker_max_length"]) == (64, 128, 160)
    short = auto_lengths(Words(), ["a"], ["b c"], caps=(512, 512, 512))  # floors: 8 and 32 tokens
    assert (short["query_max_length"], short["passage_max_length"], short["reranker_max_length"]) == (8, 32, 40)


def _cfg(tiny_bert, tiny_data, out, *extra):
    return load_config(ROOT / "configs" / "tiny.yaml", [f"data.path={tiny_data}", f"model.retriever={tiny_bert}",
                                                        f"model.reranker={tiny_bert}", f"output_dir={out}", *extra])


def test_size_lengths_reads_the_collection_and_the_folders_limit(tiny_bert, tiny_data, tmp_path):
    cfg = _cfg(tiny_bert, tiny_data, tmp_path, "model.query_max_length=auto", "model.passage_max_length=auto",
               "model.reranker_max_length=auto")
    data = load_retrieval_data(tiny_data)
    sized = size_lengths(cfg, data)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(tiny_bert)
    queries = [data.queries[q] for s in ("train", "dev") for q in data.qrels[s]]
    q99 = np.percentile([len(tok(t)["input_ids"]) for t in dict.fromkeys(queries)], 99)
    p95 = np.percentile([len(tok(data.corpus.get_text(p))["input_ids"]) for p in data.corpus.ids], 95)
    assert sized["query_tokens_p99"] == pytest.approx(q99) and sized["passage_tokens_p95"] == pytest.approx(p95)
    assert sized["caps"] == [64, 128, 128]  # a plain folder: min(64, positions), its 128 positions, the pair's
    want_q, want_p = min(64, 8 * int(np.ceil(q99 / 8))), min(128, max(32, 32 * int(np.ceil(p95 / 32))))
    assert (cfg.model.query_max_length, cfg.model.passage_max_length) == (want_q, want_p)
    assert cfg.model.reranker_max_length == min(128, want_q + want_p)
    assert size_lengths(cfg, data) is None  # ints now: nothing left to size
    # a fixed length stays, and the pair is sized to the two lengths actually used
    cfg = _cfg(tiny_bert, tiny_data, tmp_path, "model.passage_max_length=20", "model.reranker_max_length=auto")
    size_lengths(cfg, data)
    assert (cfg.model.query_max_length, cfg.model.passage_max_length, cfg.model.reranker_max_length) == (16, 20, 40)


def test_auto_without_a_collection_is_the_folders_own(tiny_bert, tiny_data, tmp_path):
    cfg = _cfg(tiny_bert, tiny_data, tmp_path, "model.query_max_length=auto", "model.passage_max_length=auto",
               "model.reranker_max_length=auto")
    retriever = load_retriever(cfg, str(tiny_bert))
    assert (retriever.query_max_length, retriever.passage_max_length) == (64, 128)
    assert load_reranker(cfg, str(tiny_bert), trainable=False).max_length == 128


@pytest.mark.parametrize("value", ["long", "2", "true"])
def test_a_length_that_is_neither_tokens_nor_auto_is_refused(value):
    with pytest.raises(ConfigError, match="model.passage_max_length") as err:
        load_config(None, [f"model.passage_max_length={value}"])
    assert "auto" in str(err.value)


def test_the_pipeline_writes_the_sized_lengths_and_resumes_on_them(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    extra = ("model.query_max_length=auto", "model.passage_max_length=auto", "model.reranker_max_length=auto",
             "pipeline.rounds=1", "train.max_steps=2", "pipeline.round_steps=2")
    run_pipeline(_cfg(tiny_bert, tiny_data, out, *extra))
    written = yaml.safe_load((out / "config.yaml").read_text())["model"]
    assert all(isinstance(written[k], int) for k in ("query_max_length", "passage_max_length", "reranker_max_length"))
    served = json.loads((out / "index" / "encoder" / "rocketkd.json").read_text())
    assert served["passage_max_length"] == written["passage_max_length"]  # the index's encoder: the sized length
    stages = (out / "stages.json").read_text()
    run_pipeline(_cfg(tiny_bert, tiny_data, out, *extra))  # the same given config: every stage is reused
    assert (out / "stages.json").read_text() == stages
