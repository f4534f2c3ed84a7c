"""Cached score gradients (``train.chunk_size``): the same loss and parameter gradients as the plain joint step.

With dropout off the chunked step is compared with the plain step itself (``step_loss`` + backward on the whole
batch). With dropout on the two cannot agree (a dropout mask is drawn per forward call, for that call's shape), so
the chunked step is compared with the full-graph step over the same forward calls: this checks that the second
pass replays each chunk's random state and that the cached gradients are exact.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

import rocketkd.training.gradcache as gradcache
import rocketkd.training.step as step_mod
from rocketkd.candidates.negatives import label_lists
from rocketkd.config import load_config
from rocketkd.data.formats import load_retrieval_data
from rocketkd.models import CrossEncoderRanker, DualEncoder
from rocketkd.pipeline import run_train as train
from rocketkd.training import JointCollator, JointModel, JointScores, make_accelerator, step_loss
from rocketkd.training.dataset import GroupDataset
from rocketkd.training.gradcache import chunked_backward, plan_chunks

ROOT = Path(__file__).resolve().parents[1]
B, G = 3, 4


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models run faster on one thread (and the timing stays steady on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _set_dropout(model_dir: Path, p: float) -> Path:
    cfg = json.loads((model_dir / "config.json").read_text())
    cfg.update(hidden_dropout_prob=p, attention_probs_dropout_prob=p)
    (model_dir / "config.json").write_text(json.dumps(cfg))
    return model_dir


def _setup(tiny_bert, tiny_data, *overrides, dropout=0.0, stored=False, batches=1):
    """(model, teacher, cfg, [JointBatch]) the way ``train`` builds them for ``overrides``, in train mode."""
    _set_dropout(tiny_bert, dropout)
    cfg = load_config(ROOT / "configs" / "tiny.yaml", [f"candidates.list_length={G}", *overrides])
    t = cfg.train
    data = load_retrieval_data(tiny_data)
    lists = label_lists(data.qrels["train"], data.corpus.ids, list_length=G, seed=1)
    if stored:
        gen = torch.Generator().manual_seed(3)
        for cl in lists:
            cl.teacher_scores = torch.randn(len(cl.pids), generator=gen).tolist()
    ds = GroupDataset(lists, G, seed=0)
    retriever = DualEncoder.from_pretrained(str(tiny_bert), similarity=cfg.model.similarity,
                                            shared=cfg.model.shared_towers)
    for name, param in retriever.named_parameters():
        if ".pooler." in f".{name}":
            param.requires_grad_(False)
    reranker = CrossEncoderRanker.from_pretrained(str(tiny_bert)) if t.mode != "contrastive" else None
    teacher = None
    if t.mode == "static":
        if t.teacher == "reranker":
            teacher = reranker.eval().requires_grad_(False)
        reranker = None
    pair_tok = (reranker or teacher).tokenize_pairs if (reranker or teacher) else None
    collate = JointCollator(data.queries.__getitem__, data.corpus.get_text, retriever.tokenize_queries,
                            retriever.tokenize_passages, pair_tok)
    found = [collate([ds[i] for i in range(k * B, k * B + B)]) for k in range(batches)]
    if t.gradient_checkpointing:
        retriever.gradient_checkpointing_enable()
        if reranker is not None:
            reranker.gradient_checkpointing_enable()
    model = JointModel(retriever, reranker, score_scale=cfg.model.score_scale).train()
    return model, teacher, cfg, found


def _grads(model) -> dict[str, torch.Tensor | None]:
    out = {n: (p.grad.detach().clone() if p.grad is not None else None) for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return out


def _assert_same_grads(a, b, atol=1e-5, rtol=1e-4):
    assert a.keys() == b.keys()
    assert {n for n, g in a.items() if g is None} == {n for n, g in b.items() if g is None}
    assert any(g is not None for g in a.values())
    for n in a:
        if a[n] is not None:
            torch.testing.assert_close(a[n], b[n], atol=atol, rtol=rtol, msg=lambda m, n=n: f"{n}: {m}")
    towers = {n.split(".")[0] for n, g in a.items() if g is not None and g.abs().sum() > 0}
    return towers


def _plain(model, batch, cfg, teacher, acc):
    parts = step_loss(model, batch, cfg, teacher, acc, 0)
    acc.backward(parts.total)
    return parts


def _same_calls_full_graph(model, batch, cfg, teacher, acc, chunk_size):
    """The plain full-graph step, but over the chunked step's forward calls (so the dropout draws are the same)."""
    chunks = plan_chunks(batch, chunk_size, with_pairs=model.reranker is not None)
    qs, ps, rs = [], [], []
    for ch in chunks:
        s = model(ch.sub)
        if ch.query_rows is not None:
            qs.append(s.query_emb)
        ps.append(s.passage_emb)
        if s.reranker is not None:
            rs.append(s.reranker.reshape(-1))
    q, p = torch.cat(qs), torch.cat(ps)
    r = torch.cat(rs).view(batch.batch_size, batch.group_size) if rs else None
    scores = JointScores((model.score_scale * DualEncoder.score_groups(q, p)).float(), r, q, p)
    parts = step_loss(lambda _b: scores, batch, cfg, teacher, acc, 0)
    acc.backward(parts.total)
    return parts


CASES = {
    "joint": [],
    "joint-inbatch": ["train.in_batch_negatives=true", "train.retriever_ce_weight=0.5"],
    "joint-stored-mix": ["train.online_teacher_weight=0.5"],
    "joint-distill-to-reranker": ["train.distill_to_reranker=true", "train.temperature=2"],
    "joint-two-towers-cosine": ["model.shared_towers=false", "model.similarity=cosine", "model.score_scale=20"],
    "joint-checkpointing": ["train.gradient_checkpointing=true", "train.in_batch_negatives=true"],
    "warmup": ["train.mode=warmup"],
    "contrastive-inbatch": ["train.mode=contrastive", "train.in_batch_negatives=true"],
    "static-reranker": ["train.mode=static", "train.teacher=reranker", "train.retriever_ce_weight=0.3"],
    "static-stored": ["train.mode=static", "train.teacher=stored"],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("chunk_size", [2, 5])
def test_chunked_equals_plain_step_dropout_off(tiny_bert, tiny_data, case, chunk_size):
    stored = case in ("joint-stored-mix", "static-stored")
    model, teacher, cfg, (batch,) = _setup(tiny_bert, tiny_data, *CASES[case], stored=stored)
    acc = make_accelerator()
    plain = _plain(model, batch, cfg, teacher, acc)
    want = _grads(model)
    got_parts = chunked_backward(model, batch, cfg, teacher, acc, 0, chunk_size=chunk_size)
    got = _grads(model)
    assert not got_parts.total.requires_grad
    assert abs(got_parts.total.item() - plain.total.item()) < 1e-5
    assert got_parts.parts.keys() == plain.parts.keys()
    for k in plain.parts:
        assert abs(got_parts.parts[k].item() - plain.parts[k].item()) < 1e-5, k
    towers = _assert_same_grads(got, want)
    assert "retriever" in towers
    assert ("reranker" in towers) == (model.reranker is not None)


@pytest.mark.parametrize("chunk_size", [1, 3, 12, 100])
def test_chunk_sizes_at_the_edges(tiny_bert, tiny_data, chunk_size):
    """One row per call, chunks that straddle lists, exactly B*G rows, more than B*G rows."""
    model, teacher, cfg, (batch,) = _setup(tiny_bert, tiny_data, *CASES["joint-inbatch"])
    acc = make_accelerator()
    plain = _plain(model, batch, cfg, teacher, acc)
    want = _grads(model)
    parts = chunked_backward(model, batch, cfg, teacher, acc, 0, chunk_size=chunk_size)
    assert abs(parts.total.item() - plain.total.item()) < 1e-5
    _assert_same_grads(_grads(model), want)


def test_plan_covers_every_row_once_and_ends_with_a_real_query(tiny_bert, tiny_data):
    *_, (batch,) = _setup(tiny_bert, tiny_data)
    for size in (1, 2, 3, 5, 7, 12, 13, 100):
        chunks = plan_chunks(batch, size, with_pairs=True)
        q_rows = [i for c in chunks if c.query_rows is not None for i in range(*c.query_rows.indices(B))]
        p_rows = [i for c in chunks for i in range(*c.passage_rows.indices(B * G))]
        assert q_rows == list(range(B)) and p_rows == list(range(B * G))
        for c in chunks:
            for inputs in (c.sub.query_inputs, c.sub.passage_inputs, c.sub.pair_inputs or {}):
                assert all(v.shape[0] <= size for v in inputs.values())
        last = chunks[-1]  # the synchronising chunk under DDP reaches every tower
        assert last.query_rows is not None and last.passage_rows is not None and last.sub.pair_inputs is not None


@pytest.mark.parametrize("chunk_size", [2, 5])
@pytest.mark.parametrize("case", ["joint-inbatch", "joint-two-towers-cosine", "joint-checkpointing"])
def test_dropout_on_gradients_are_exact_for_the_chunked_loss(tiny_bert, tiny_data, chunk_size, case):
    model, teacher, cfg, (batch,) = _setup(tiny_bert, tiny_data, *CASES[case], dropout=0.1)
    acc = make_accelerator()
    torch.manual_seed(7)
    ref = _same_calls_full_graph(model, batch, cfg, teacher, acc, chunk_size)
    rng_after_ref = torch.get_rng_state()
    want = _grads(model)
    torch.manual_seed(7)
    got_parts = chunked_backward(model, batch, cfg, teacher, acc, 0, chunk_size=chunk_size)
    # deterministic: the RNG continues from where running every chunk once leaves it
    assert torch.equal(torch.get_rng_state(), rng_after_ref)
    got = _grads(model)
    assert abs(got_parts.total.item() - ref.total.item()) < 1e-5
    _assert_same_grads(got, want)
    # ... and dropout really is on: the plain step's masks give another loss
    torch.manual_seed(7)
    assert abs(_plain(model, batch, cfg, teacher, acc).total.item() - ref.total.item()) > 1e-4
    model.zero_grad(set_to_none=True)


def test_one_chunk_is_the_plain_step_dropout_included(tiny_bert, tiny_data):
    model, teacher, cfg, (batch,) = _setup(tiny_bert, tiny_data, *CASES["joint-inbatch"], dropout=0.1)
    acc = make_accelerator()
    assert len(plan_chunks(batch, B * G, with_pairs=True)) == 1
    torch.manual_seed(7)
    plain = _plain(model, batch, cfg, teacher, acc)
    want = _grads(model)
    torch.manual_seed(7)
    parts = chunked_backward(model, batch, cfg, teacher, acc, 0, chunk_size=B * G)
    assert abs(parts.total.item() - plain.total.item()) < 1e-6
    _assert_same_grads(_grads(model), want)


def test_without_rng_replay_the_gradients_would_be_wrong(tiny_bert, tiny_data, monkeypatch):
    """The check above has teeth: a second pass with fresh dropout masks gives other gradients."""
    model, teacher, cfg, (batch,) = _setup(tiny_bert, tiny_data, *CASES["joint-inbatch"], dropout=0.1)
    acc = make_accelerator()
    torch.manual_seed(7)
    _same_calls_full_graph(model, batch, cfg, teacher, acc, 2)
    want = _grads(model)
    monkeypatch.setattr(gradcache, "_set_rng", lambda state, cuda: None)
    torch.manual_seed(7)
    chunked_backward(model, batch, cfg, teacher, acc, 0, chunk_size=2)
    got = _grads(model)
    worst = max((got[n] - want[n]).abs().max().item() for n in want if want[n] is not None)
    assert worst > 1e-4


def test_non_finite_loss_raises_the_plain_error_before_touching_gradients(tiny_bert, tiny_data, monkeypatch):
    from rocketkd.errors import TrainingError

    real = step_mod.compute_objective

    def poisoned(*args, **kwargs):
        parts = real(*args, **kwargs)
        parts.total = parts.total * float("nan")
        return parts

    monkeypatch.setattr(step_mod, "compute_objective", poisoned)
    model, teacher, cfg, (batch,) = _setup(tiny_bert, tiny_data)
    with pytest.raises(TrainingError, match=r"non-finite loss at step 5 \(reranker_ce="):
        chunked_backward(model, batch, cfg, teacher, make_accelerator(), 4, chunk_size=2)
    assert all(p.grad is None for p in model.parameters())


def test_composes_with_gradient_accumulation(tiny_bert, tiny_data):
    model, teacher, cfg, batches = _setup(tiny_bert, tiny_data, *CASES["joint-inbatch"], batches=2)
    acc = make_accelerator(gradient_accumulation_steps=2)
    other = copy.deepcopy(model)
    syncs = []
    for batch in batches:
        with acc.accumulate(model):
            _plain(model, batch, cfg, teacher, acc)
            syncs.append(acc.sync_gradients)
    want = _grads(model)
    for batch in batches:
        with acc.accumulate(other):
            chunked_backward(other, batch, cfg, teacher, acc, 0, chunk_size=3)
    assert syncs == [False, True]
    _assert_same_grads(_grads(other), want)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate fixes the precision at its first Accelerator in a process: start and leave a clean state."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def test_bf16_autocast_runs_and_agrees_roughly(tiny_bert, tiny_data, fresh_accelerate_state):
    model, teacher, cfg, (batch,) = _setup(tiny_bert, tiny_data, *CASES["joint-inbatch"])
    acc = make_accelerator(mixed_precision="bf16")
    plain = _plain(model, batch, cfg, teacher, acc)
    want = _grads(model)
    parts = chunked_backward(model, batch, cfg, teacher, acc, 0, chunk_size=5)
    got = _grads(model)
    assert abs(parts.total.item() - plain.total.item()) < 0.05 * max(1.0, abs(plain.total.item()))
    flat_w = torch.cat([g.flatten() for g in want.values() if g is not None])
    flat_g = torch.cat([got[n].flatten() for n, g in want.items() if g is not None])
    assert torch.isfinite(flat_g).all()
    assert torch.nn.functional.cosine_similarity(flat_w, flat_g, dim=0) > 0.95


def test_train_with_chunk_size_matches_the_unchunked_first_step(tiny_bert, tiny_data, tmp_path):
    """``train()`` end to end. Dropout off: with dropout on the two runs draw different masks (see the module doc)."""
    _set_dropout(tiny_bert, 0.0)

    def run(name, *extra):
        overrides = [f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}",
                     f"output_dir={tmp_path / name}", "train.max_steps=2", *extra]
        return train(load_config(ROOT / "configs" / "tiny.yaml", overrides)).history

    plain = run("plain")
    chunked = run("chunked", "train.chunk_size=2")
    assert len(chunked) == len(plain) == 2
    for key in ("loss", "reranker_ce", "distill"):
        assert abs(chunked[0][key] - plain[0][key]) < 1e-5, (key, chunked[0][key], plain[0][key])
