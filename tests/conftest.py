"""Shared fixtures: tiny BERT model folders built from a config (nothing downloads) and the tiny collection."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESOURCES = Path(__file__).parent / "resources"
TINY_DATA = RESOURCES / "tiny"


def build_tiny_bert(path: Path, seed: int = 0) -> Path:
    """A 2-layer, hidden-32 BERT with a WordPiece vocabulary of the tiny collection, saved as a transformers folder."""
    from transformers import BertConfig, BertModel, BertTokenizer

    words = (RESOURCES / "tiny_vocab.txt").read_text().split()
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(words)}, do_lower_case=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    torch.manual_seed(seed)
    model = BertModel(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(autouse=True, scope="session")
def _private_corpus_cache(tmp_path_factory):
    """Keep the Arrow corpus caches of the suite out of the shared temp folder."""
    old = os.environ.get("ROCKETKD_CACHE_DIR")
    os.environ["ROCKETKD_CACHE_DIR"] = str(tmp_path_factory.mktemp("corpus-cache"))
    yield
    if old is None:
        os.environ.pop("ROCKETKD_CACHE_DIR", None)
    else:
        os.environ["ROCKETKD_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def _tiny_bert_session(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert") / "model")


@pytest.fixture
def tiny_bert(_tiny_bert_session, tmp_path) -> Path:
    """A private copy of the tiny model folder per test, so a test that writes into it cannot leak."""
    dst = tmp_path / "tiny-bert"
    shutil.copytree(_tiny_bert_session, dst)
    return dst


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    """A private copy of the tiny BEIR-layout collection (60 passages, 20 queries, train/dev/test qrels)."""
    dst = tmp_path / "tiny-data"
    shutil.copytree(TINY_DATA, dst)
    return dst
