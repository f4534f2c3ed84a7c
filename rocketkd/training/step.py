"""One joint step: forward -> scores -> :func:`loss_from_scores` -> ``LossParts``; then the gradient check.

:func:`step_loss` is the plain path: the wrapped ``JointModel`` scores the whole batch (and, in static mode with a
frozen re-ranker, the teacher scores it without graph). The cached-gradient path
(``rocketkd.training.gradcache.chunked_backward``) builds the same ``JointScores`` chunk by chunk and calls
:func:`loss_from_scores` itself, so both paths share the teacher targets, the in-batch/cross-device negatives, the
objective (``rocketkd.training.objective``) and the non-finite check.
"""

from __future__ import annotations

import torch

from rocketkd.config import Config
from rocketkd.distributed import world
from rocketkd.errors import TrainingError
from rocketkd.losses import in_batch_ce
from rocketkd.training.batch import JointBatch
from rocketkd.training.joint import JointScores
from rocketkd.training.objective import LossParts, compute_objective


def gather_passages(p: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' passage embeddings with gradient, and this process's row offset in them.

    The offset keeps each query aligned with its own positive after the gather (rank order is the concat order).
    """
    rank, size = world()
    if size == 1:
        return p, 0
    # here: torch.distributed is optional in a torch build (world() is (0, 1) there, so this line is not reached)
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(p.contiguous())
    return torch.cat(parts), sum(x.shape[0] for x in parts[:rank])


def loss_from_scores(scores: JointScores, batch: JointBatch, cfg: Config, step: int,
                     frozen_teacher: torch.Tensor | None = None) -> LossParts:
    """The step's loss from its scores; raises ``TrainingError`` on a non-finite loss (``step`` is 0-based).

    ``frozen_teacher``: the (B, G) scores of the frozen re-ranker (static mode with ``train.teacher=reranker``).
    Stored teacher scores come with the batch: the static target, or in joint mode an ensemble that the online
    re-ranker joins.
    """
    t = cfg.train
    teacher = batch.teacher_scores if t.mode == "joint" else None
    if t.mode == "static":
        teacher = batch.teacher_scores if t.teacher == "stored" else frozen_teacher
    reranker = scores.reranker
    if cfg.model.reranker_prior and reranker is not None:
        if batch.teacher_scores is None:
            raise TrainingError("model.reranker_prior: the candidate lists carry no prior (stored teacher scores); "
                                "attach one (rocketkd.teachers.prior.attach_prior, or train.teachers) or turn it off")
        # (B, G): the re-ranker's full score is prior + cross-encoder (rocketkd.teachers.prior); the stored scores
        # are inside that teacher already, so they do not join it a second time.
        reranker = batch.teacher_scores.to(reranker.dtype) + reranker
        teacher = None if t.mode == "joint" else teacher
    if cfg.model.reranker_prior and t.mode == "static" and frozen_teacher is not None:
        if batch.teacher_scores is None:
            raise TrainingError("model.reranker_prior: the candidate lists carry no prior (stored teacher scores)")
        teacher = batch.teacher_scores.to(frozen_teacher.dtype) + frozen_teacher  # the frozen re-ranker's full score
    inbatch = None
    if t.in_batch_negatives and scores.passage_emb is not None:
        p_all, offset = gather_passages(scores.passage_emb)  # (W*B*G, H)
        positive_cols = offset + torch.arange(batch.batch_size, device=p_all.device) * batch.group_size
        inbatch = in_batch_ce(scores.query_emb, p_all, positive_cols, cfg.model.score_scale)
    parts = compute_objective(t, scores.retriever, reranker, teacher=teacher, retriever_inbatch=inbatch)
    if not torch.isfinite(parts.total):
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.parts.items())
        raise TrainingError(
            f"non-finite loss at step {step + 1} ({detail}); the last good checkpoint is kept, "
            "lower the learning rate or check the inputs"
        )
    return parts


def step_loss(model, batch: JointBatch, cfg: Config, teacher_model, accelerator, step: int) -> LossParts:
    """The plain step's loss: ``model`` (the possibly wrapped ``JointModel``) over the whole batch.

    ``teacher_model`` is the frozen re-ranker of static mode (None otherwise); the caller runs the backward.
    """
    scores = model(batch)  # JointScores: (B, G) each
    frozen = None
    if cfg.train.mode == "static" and cfg.train.teacher != "stored":
        with torch.no_grad(), accelerator.autocast():  # a frozen teacher needs no graph
            frozen = teacher_model.score_groups(batch.pair_inputs, batch.group_size).float()
    return loss_from_scores(scores, batch, cfg, step, frozen)


def check_gradients(model, accelerator, step: int, parts: LossParts, max_grad_norm: float) -> None:
    """Clip the gradients to ``max_grad_norm`` (if > 0); raise ``TrainingError`` if their norm is not finite."""
    params = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm and max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.detach().float().norm() for p in params]))
    if not torch.isfinite(torch.as_tensor(norm)):
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.parts.items())
        raise TrainingError(f"non-finite gradients at step {step + 1} ({detail}); the last good checkpoint is kept")
