"""Saved models as Hugging Face artifacts (issue 22): every retriever and re-ranker folder carries a model card, the
retriever loads in sentence-transformers with rocketkd's exact query and passage encodings (both towers), and the
re-ranker's CrossEncoder folder scores and ranks as rocketkd's re-ranker does."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from rocketkd.config import Config
from rocketkd.models import CrossEncoderRanker, DualEncoder
from rocketkd.training.checkpoint import export_run, training_card
from rocketkd.training.joint import JointModel

QUERIES = ["heat flow", "panel flutter at supersonic speed report", "a theory of boundary layer transition heat "
           "flow effect data model results panel study " * 3]
PASSAGES = ["heat report a theory study heat flow heat heat the", "panel report panel panel results data model flow",
            "boundary layer " * 60]


def _front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_a_saved_retriever_and_reranker_carry_a_card(tiny_bert, tmp_path):
    retriever = DualEncoder.from_pretrained(tiny_bert, query_max_length=8, passage_max_length=32)
    card = (retriever.save(tmp_path / "r") / "README.md").read_text()
    assert _front_matter(card)["library_name"] == "sentence-transformers"
    assert "encode_query" in card and "| query_max_length | 8 |" in card and "| passage_max_length | 32 |" in card
    ranker = CrossEncoderRanker.from_pretrained(tiny_bert, max_length=48)
    card = (ranker.save(tmp_path / "x") / "README.md").read_text()
    assert _front_matter(card)["pipeline_tag"] == "text-ranking"
    assert "CrossEncoder(" in card and "| max_length | 48 |" in card


def test_a_training_export_says_what_trained_it_and_what_it_scored(tiny_bert, tmp_path):
    cfg = Config()
    cfg.data.path = "data/tiny"
    cfg.train.mode = "joint"
    retriever = DualEncoder.from_pretrained(tiny_bert)
    ranker = CrossEncoderRanker.from_pretrained(tiny_bert)
    dev = {"start": 0.25, "end": 0.3125, "best": 0.3125, "best_step": 7.0}
    cards = training_card(cfg, 7, dev, retriever_from=str(tiny_bert), reranker_from=None)
    export_run(tmp_path, JointModel(retriever, ranker), 7, [], dev, {}, cards)
    card = (tmp_path / "retriever" / "README.md").read_text()
    assert "- command: `rocketkd" in card or "run_train" in card
    assert f"- base model: {tiny_bert}" in card and "- mode: joint" in card and "- steps: 7" in card
    assert "| nDCG@10 (before training) | dev | 0.2500 |" in card and "| nDCG@10 (step 7) | dev | 0.3125 |" in card
    assert "rocketkd evaluate --run dev.trec --qrels data/tiny/qrels/dev.tsv --metrics nDCG@10" in card
    config = yaml.safe_load(card.split("```yaml\n")[1].split("```")[0])
    assert config["data"]["path"] == "data/tiny" and config["train"]["mode"] == "joint"
    card = (tmp_path / "reranker" / "README.md").read_text()
    assert "- base model: packaged all-MiniLM-L6-v2" in card and "## Config" in card


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_sentence_transformers_reproduces_both_encodings_shared_towers(tiny_bert, tmp_path, similarity):
    from sentence_transformers import SentenceTransformer

    model = DualEncoder.from_pretrained(tiny_bert, similarity=similarity, query_max_length=6, passage_max_length=24)
    folder = model.save(tmp_path / "r")
    ours_q, ours_p = model.encode(QUERIES, side="query"), model.encode(PASSAGES, side="passage")
    assert not np.allclose(ours_q, model.encode(QUERIES, side="passage"), atol=1e-4)  # the lengths matter here
    st = SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(st.encode_query(QUERIES), ours_q, atol=1e-5)
    np.testing.assert_allclose(st.encode_document(PASSAGES), ours_p, atol=1e-5)
    np.testing.assert_allclose(st.encode(PASSAGES), ours_p, atol=1e-5)  # plain encode: the passage side


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_sentence_transformers_reproduces_both_towers(tiny_bert, tmp_path, similarity):
    """Two towers are saved as a sentence-transformers Router: one folder, encode_query through the query tower at
    the query length, encode_document (and a plain encode) through the passage tower at the passage length."""
    from sentence_transformers import SentenceTransformer

    model = DualEncoder.from_pretrained(tiny_bert, shared=False, similarity=similarity, query_max_length=6,
                                        passage_max_length=24)
    with torch.no_grad():  # make the towers differ
        next(model.query_encoder.parameters()).add_(0.5)
    folder = model.save(tmp_path / "r")
    ours_q, ours_p = model.encode(QUERIES, side="query"), model.encode(PASSAGES, side="passage")
    # each side differs from the other tower and from the other length: an equality below is not by chance
    assert not np.allclose(ours_q, model.encode(QUERIES, side="passage"), atol=1e-3)
    assert not np.allclose(model.encode(PASSAGES, side="query"), ours_p, atol=1e-3)
    st = SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(st.encode_query(QUERIES), ours_q, atol=1e-5)
    np.testing.assert_allclose(st.encode_document(PASSAGES), ours_p, atol=1e-5)
    np.testing.assert_allclose(st.encode(PASSAGES), ours_p, atol=1e-5)  # plain encode: the passage side
    assert st.similarity_fn_name == similarity
    assert not (folder / "query_encoder").exists() and not (folder / "config.json").exists()
    card = (folder / "README.md").read_text()
    assert "Router" in card and "| shared | false |" in card

    # a folder sentence-transformers re-saves keeps the layout rocketkd reads, to the same weights
    st.save(str(tmp_path / "resaved"))
    again = DualEncoder.from_pretrained(tmp_path / "resaved")
    assert not again.shared and (again.query_max_length, again.passage_max_length) == (6, 24)
    np.testing.assert_allclose(again.encode(QUERIES, side="query"), ours_q, atol=1e-5)
    np.testing.assert_allclose(again.encode(PASSAGES, side="passage"), ours_p, atol=1e-5)


def test_cross_encoder_predict_ranks_as_rocketkd(tiny_bert, tmp_path):
    from sentence_transformers import CrossEncoder

    torch.manual_seed(3)
    ranker = CrossEncoderRanker.from_pretrained(tiny_bert, max_length=40)
    pairs = [(q, p) for q in QUERIES for p in PASSAGES + ["flow", "report data"]]
    ours = ranker.predict(pairs)
    folder = ranker.save(tmp_path / "x")
    theirs = CrossEncoder(str(folder), device="cpu").predict(pairs)
    np.testing.assert_allclose(theirs, ours, atol=1e-5)  # identity activation: the very scores
    for i in range(len(QUERIES)):
        block = slice(5 * i, 5 * i + 5)
        assert list(np.argsort(-theirs[block], kind="stable")) == list(np.argsort(-ours[block], kind="stable"))


def test_bf16_rerank_scores_do_not_tie(tiny_bert):
    """The score head runs in float32 under autocast: close candidates keep distinct scores (issue 22: bf16 logits
    tied 57 of 1,500 rows of the demo's re-ranked run)."""
    ranker = CrossEncoderRanker.from_pretrained(tiny_bert, max_length=40)
    words = ["panel", "report", "heat", "flow", "data", "model", "theory", "study", "effect", "results"]
    pairs = [("heat flow", " ".join(words[(i * 7 + j * 3) % 10] for j in range(5 + i % 9))) for i in range(80)]
    exact = ranker.predict(pairs)
    mixed = ranker.predict(pairs, autocast_dtype=torch.bfloat16)
    distinct = len(set(exact.tolist()))
    assert len(set(mixed.tolist())) >= distinct - 2  # the body's bf16 states may still make a rare pair equal
    assert len(set(torch.from_numpy(exact).bfloat16().tolist())) < distinct / 4  # what a bf16 logit would keep
    np.testing.assert_allclose(mixed, exact, atol=0.02)
    assert ranker.predict(pairs[:3]).dtype == np.float32
