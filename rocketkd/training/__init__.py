"""Training: ``train(cfg, lists)`` and the pieces of its loop.

loop (the accelerate loop, ``make_accelerator``) · step (forward -> scores -> ``loss_from_scores``) · objective (the
loss of each mode) · joint (retriever + re-ranker in one module) · batch (``JointBatch``, the collator) · optim
(parameter groups) · gradcache (the chunked step) · dev (dev curve, keep-best) · checkpoint (resume, export).
"""

from rocketkd.training.batch import JointBatch, JointCollator
from rocketkd.training.checkpoint import (
    COMPLETE_MARKER,
    StopFlag,
    TrainResult,
    export_run,
    finished,
    list_checkpoints,
    load_result,
    save_checkpoint,
)
from rocketkd.training.dev import BestRetriever, DevTracker, dev_ndcg, dev_start
from rocketkd.training.gradcache import chunked_backward
from rocketkd.training.joint import JointModel, JointScores
from rocketkd.training.loop import make_accelerator, train
from rocketkd.training.objective import LossParts, compute_objective, mix_teachers, needs_reranker
from rocketkd.training.optim import param_groups
from rocketkd.training.step import check_gradients, gather_passages, loss_from_scores, step_loss

__all__ = [
    "COMPLETE_MARKER",
    "BestRetriever",
    "DevTracker",
    "JointBatch",
    "JointCollator",
    "JointModel",
    "JointScores",
    "LossParts",
    "StopFlag",
    "TrainResult",
    "check_gradients",
    "chunked_backward",
    "compute_objective",
    "dev_ndcg",
    "dev_start",
    "export_run",
    "finished",
    "gather_passages",
    "list_checkpoints",
    "load_result",
    "loss_from_scores",
    "make_accelerator",
    "mix_teachers",
    "needs_reranker",
    "param_groups",
    "save_checkpoint",
    "step_loss",
    "train",
]
