"""Cached score gradients for the joint step: long candidate lists in memory that does not grow with the list.

The idea is gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup", arXiv 2101.06983), extended here to the joint step, where a re-ranker is trained beside the retriever.
The loss of a step depends on the models only through a few small tensors: the B query embeddings, the B*G passage
embeddings and the B*G re-ranker logits. So :func:`chunked_backward`

1. runs the encoders over the rows ``chunk_size`` at a time without keeping activations (``no_grad``; the first
   chunk alone keeps its graph, see below) and collects those tensors;
2. makes them leaf tensors that require grad and computes the ordinary loss of the step from them (the same code as
   the plain path: ``rocketkd.training.step.loss_from_scores``, so in-batch/cross-device negatives, stored teacher
   scores, the static teacher and the non-finite check are all the same), then backpropagates it to the leaves only;
3. runs each chunk again with gradients and backpropagates the cached leaf gradients of its rows into the
   parameters (``torch.autograd.backward(outputs, grads)``), so parameter gradients accumulate chunk by chunk.

Peak activation memory is then one chunk's, whatever the list length; the price is one extra forward pass (without
graph) of every chunk but the first. The parameter gradients are the gradients of the loss that was computed: with
dropout on, each chunk's second pass replays the random state of its first pass (below).

Chunks. ``JointModel.forward`` takes a whole :class:`JointBatch`, and the DDP wrapper must see that call for its
hooks, so a chunk is a small JointBatch of rows run through the wrapped model (:func:`plan_chunks`). With
``chunk_size >= G`` a chunk is ``chunk_size // G`` whole lists with their queries. With ``chunk_size < G`` (long
lists, the case this is for) it is a run of ``chunk_size`` passage rows with the same pair rows, scored as one
"list" against one query: the queries ride one per chunk on the last B chunks (so the last chunk, whose backward
synchronises under DDP, reaches every tower) and the other chunks get a one-token filler query whose output is
dropped. A chunk's inputs are cut to its own longest row (trailing all-padding columns dropped), which changes
nothing but float rounding and saves work when lengths vary.

Random state (dropout). Before each chunk's first pass the CPU RNG state (and, on CUDA, the device's RNG state) is
saved; before its second pass it is restored, so both passes draw the same dropout masks. After the step the RNG is
set to its state at the end of the first pass, which is where it would be had every chunk run once: the stream
after a chunked step is a fixed function of the stream before it, the batch and ``chunk_size``. It is not the plain
step's stream, and with dropout on the masks differ from the plain step's (a dropout mask is drawn per call, for the
shape of that call), so the chunked loss and gradients equal the plain step's only with dropout off (to float
rounding); with dropout on they are the exact gradients of the chunked step's own loss.

Composition. Forwards run under ``accelerator.autocast()``; the loss backward is ``accelerator.backward`` (so the
1/gradient_accumulation_steps factor and an fp16 loss scale reach the cached gradients and, through them, the
parameters); every backward but the last runs under ``accelerator.no_sync(model)`` and the last chunk's forward +
backward synchronise as the plain step does (inside ``accelerator.accumulate``'s no-sync micro-steps nothing
synchronises). Optimizer steps are the caller's business. DeepSpeed is not supported (it owns the backward).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from rocketkd.models import DualEncoder
from rocketkd.training.batch import JointBatch
from rocketkd.training.joint import JointScores
from rocketkd.training.objective import LossParts
from rocketkd.training.step import loss_from_scores

Inputs = dict[str, torch.Tensor]


@dataclass
class Chunk:
    """One forward call of the wrapped model: ``sub`` and which rows of the full batch its outputs hold.

    ``query_rows`` is None when the chunk's query is a filler (computed, not used). ``passage_rows`` index the B*G
    passages and the B*G (query, passage) pairs alike.
    """

    sub: JointBatch
    query_rows: slice | None
    passage_rows: slice


def _last_used(inputs: Inputs) -> list[int] | None:
    """Per row, the index of its last attended token (None when the inputs carry no 2-D attention mask)."""
    mask = inputs.get("attention_mask")
    if mask is None or mask.dim() != 2:
        return None
    cols = torch.arange(mask.shape[1], device=mask.device)
    return (mask.ne(0) * cols).amax(dim=1).tolist()  # one host sync per input set, not per chunk


def _rows(inputs: Inputs, start: int, stop: int, last: list[int] | None) -> Inputs:
    """Rows ``start:stop`` of tokenised inputs, cut to the longest of those rows (trailing padding dropped)."""
    part = {k: v[start:stop] for k, v in inputs.items()}
    if last is None:
        return part
    full = inputs["attention_mask"].shape[1]
    width = max(last[start:stop]) + 1
    if width >= full:
        return part
    return {k: v[:, :width] if v.dim() >= 2 and v.shape[1] == full else v for k, v in part.items()}


def _filler(inputs: Inputs) -> Inputs:
    """One one-token row (the first token of row 0, attended): a placeholder query whose output is dropped."""
    out = {k: v[:1, :1].contiguous() for k, v in inputs.items()}
    if "attention_mask" in out:
        out["attention_mask"] = torch.ones_like(out["attention_mask"])
    return out


def plan_chunks(batch: JointBatch, chunk_size: int, with_pairs: bool) -> list[Chunk]:
    """The chunks of ``batch``, in the order they run; every encoder call gets at most ``chunk_size`` rows.

    ``chunk_size >= G``: whole lists, ``chunk_size // G`` per chunk, each with its own queries (``chunk_size >= B*G``
    is one chunk: the plain step). ``chunk_size < G``: runs of ``chunk_size`` passage rows, one query riding on
    each of the last B chunks (there are more than B), a one-token filler query on the others. ``with_pairs`` adds
    the pair rows of each chunk (for a re-ranker trained online).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    B, G = batch.batch_size, batch.group_size
    N = B * G
    q_last = _last_used(batch.query_inputs)
    p_last = _last_used(batch.passage_inputs)
    x_last = _last_used(batch.pair_inputs) if with_pairs else None

    def make(q_rows: slice | None, s: int, e: int, group_size: int) -> Chunk:
        if q_rows is None:
            query = _filler(batch.query_inputs)
        else:
            query = _rows(batch.query_inputs, q_rows.start, q_rows.stop, q_last)
        sub = JointBatch(
            query_inputs=query,
            passage_inputs=_rows(batch.passage_inputs, s, e, p_last),
            pair_inputs=_rows(batch.pair_inputs, s, e, x_last) if with_pairs else None,
            group_size=group_size,
        )
        return Chunk(sub, q_rows, slice(s, e))

    if chunk_size >= G:
        per = chunk_size // G
        return [make(slice(a, min(a + per, B)), a * G, min(a + per, B) * G, G) for a in range(0, B, per)]
    starts = list(range(0, N, chunk_size))
    first_with_query = len(starts) - B  # > 0, as G > chunk_size
    chunks = []
    for k, s in enumerate(starts):
        e = min(s + chunk_size, N)
        qi = k - first_with_query
        chunks.append(make(slice(qi, qi + 1) if qi >= 0 else None, s, e, e - s))
    return chunks


def _rng_device(batch: JointBatch) -> torch.device | None:
    dev = batch.query_inputs["input_ids"].device
    return dev if dev.type == "cuda" else None


def _get_rng(cuda: torch.device | None):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(cuda) if cuda is not None else None)


def _set_rng(state, cuda: torch.device | None) -> None:
    torch.set_rng_state(state[0])
    if cuda is not None:
        torch.cuda.set_rng_state(state[1], cuda)


def _outputs(chunk: Chunk, scores: JointScores) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(query embeddings or None for a filler, passage embeddings, flat re-ranker logits or None)."""
    q = scores.query_emb if chunk.query_rows is not None else None
    p = scores.passage_emb
    r = scores.reranker.reshape(-1) if scores.reranker is not None else None
    return q, p, r


def _teacher_scores(teacher_model, batch: JointBatch, chunk_size: int, accelerator) -> torch.Tensor:
    """The frozen teacher's (B, G) logits, ``chunk_size`` pairs at a time, without graph."""
    last = _last_used(batch.pair_inputs)
    N = batch.batch_size * batch.group_size
    out = []
    with torch.no_grad(), accelerator.autocast():
        for s in range(0, N, chunk_size):
            out.append(teacher_model(_rows(batch.pair_inputs, s, min(s + chunk_size, N), last)).float())
    return torch.cat(out).view(batch.batch_size, batch.group_size)


def chunked_backward(model, batch: JointBatch, cfg, teacher_model, accelerator, step: int,
                     chunk_size: int | None = None) -> LossParts:
    """One joint step's loss and backward, ``chunk_size`` rows per forward call; returns the step's ``LossParts``.

    A drop-in for ``step_loss(...)`` + ``accelerator.backward(parts.total)`` in the training loop (same
    arguments; ``chunk_size`` defaults to ``cfg.train.chunk_size``). Parameter gradients accumulate into ``.grad``
    as the plain backward's would; ``total`` is returned detached. A non-finite loss raises the plain step's
    ``TrainingError`` before any parameter gradient is touched. ``model`` is the (possibly DDP-wrapped) JointModel.
    """
    size = int(chunk_size or cfg.train.chunk_size or 0)
    if size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size or cfg.train.chunk_size!r}")
    if getattr(accelerator, "distributed_type", None) == "DEEPSPEED":
        raise ValueError("train.chunk_size (cached gradients) is not supported under DeepSpeed")
    inner = accelerator.unwrap_model(model)
    B, G = batch.batch_size, batch.group_size
    with_pairs = inner.reranker is not None and batch.pair_inputs is not None
    chunks = plan_chunks(batch, size, with_pairs)
    cuda = _rng_device(batch)

    # Pass 1: every chunk once. The first keeps its graph (it is backpropagated right after the loss, so it costs
    # no second forward); the others run without graph after their RNG state is saved for the replay.
    # Under DDP the first chunk must not synchronise unless it is the only one (the last backward synchronises).
    def first_ctx():
        return accelerator.no_sync(model) if len(chunks) > 1 else nullcontext()

    states = [None] * len(chunks)
    cached: list[tuple] = []
    with first_ctx(), accelerator.autocast():
        kept = _outputs(chunks[0], model(chunks[0].sub))
    cached.append(tuple(None if t is None else t.detach() for t in kept))
    with torch.no_grad():
        for i in range(1, len(chunks)):
            states[i] = _get_rng(cuda)
            with accelerator.autocast():
                cached.append(_outputs(chunks[i], model(chunks[i].sub)))
    end_state = _get_rng(cuda)

    def leaf(pos: int) -> torch.Tensor | None:
        parts = [c[pos] for c in cached if c[pos] is not None]
        return torch.cat(parts).detach().requires_grad_() if parts else None

    q, p, r = leaf(0), leaf(1), leaf(2)
    if q is None or p is None or q.shape[0] != B or p.shape[0] != B * G:  # pragma: no cover - plan invariant
        raise RuntimeError("chunk plan did not cover every query and passage row")
    with accelerator.autocast():  # the plain path scores inside the (autocast) forward
        retriever = inner.score_scale * DualEncoder.score_groups(q, p)
    scores = JointScores(retriever.float(), None if r is None else r.view(B, G), q, p)
    frozen = None
    t = cfg.train
    if t.mode == "static" and t.teacher != "stored" and teacher_model is not None:
        frozen = _teacher_scores(teacher_model, batch, size, accelerator)

    # The loss on the cached tensors: the plain path's own code (raises on a non-finite loss).
    parts = loss_from_scores(scores, batch, cfg, step, frozen)
    accelerator.backward(parts.total)  # grads reach the leaves only (1/accumulation and loss scale included)

    def grads_for(chunk: Chunk, outs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        o_list, g_list = [], []
        for out, leaf_t, rows in ((outs[0], q, chunk.query_rows), (outs[1], p, chunk.passage_rows),
                                  (outs[2], r, chunk.passage_rows)):
            if out is None or leaf_t is None or leaf_t.grad is None or not out.requires_grad:
                continue
            o_list.append(out)
            g_list.append(leaf_t.grad[rows].view_as(out))
        return o_list, g_list

    # Pass 2: the first chunk's kept graph, then every other chunk again with its pass-1 random state.
    last = len(chunks) - 1
    with first_ctx():
        outs, grads = grads_for(chunks[0], kept)
        if outs:
            torch.autograd.backward(outs, grads)
    del kept
    for i in range(1, len(chunks)):
        with accelerator.no_sync(model) if i < last else nullcontext():
            _set_rng(states[i], cuda)
            with accelerator.autocast():
                outs, grads = grads_for(chunks[i], _outputs(chunks[i], model(chunks[i].sub)))
            if outs:
                torch.autograd.backward(outs, grads)
            del outs, grads
    _set_rng(end_state, cuda)
    return LossParts(parts.total.detach(), parts.parts)
