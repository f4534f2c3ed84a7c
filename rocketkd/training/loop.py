"""``train(cfg, lists)``: one explicit accelerate loop over the joint model (retriever + re-ranker).

Readable top to bottom: data -> models -> one optimizer with a param group per model part
(:mod:`~rocketkd.training.optim`) -> loop over groups with ``accelerator.accumulate``, each step
(:mod:`~rocketkd.training.step`, or :mod:`~rocketkd.training.gradcache` with ``train.chunk_size``) -> dev curve and
keep-best (:mod:`~rocketkd.training.dev`) -> checkpoints that resume exactly (model, optimizer, scheduler, RNG, data
position) and the final export (:mod:`~rocketkd.training.checkpoint`). No argv parsing here: ``rocketkd.cli`` is thin.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from rocketkd.config import Config
from rocketkd.distributed import leave_at_exit
from rocketkd.errors import TrainingError
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.training.batch import JointCollator
from rocketkd.training.checkpoint import (
    SIGTERM_EXIT,
    StopFlag,
    TrainResult,
    discard_previous,
    export_run,
    finished,
    list_checkpoints,
    load_latest,
    load_result,
    result_of,
    save_checkpoint,
    training_card,
)
from rocketkd.training.dataset import GroupDataset
from rocketkd.training.dev import DevTracker
from rocketkd.training.gradcache import chunked_backward
from rocketkd.training.joint import JointModel
from rocketkd.training.objective import LossParts, needs_reranker
from rocketkd.training.optim import param_groups
from rocketkd.training.step import check_gradients, step_loss
from rocketkd.types import CandidateList

logger = logging.getLogger(__name__)


def make_accelerator(**kwargs) -> Accelerator:
    """An ``Accelerator`` that also joins a torchrun/gloo group on machines without a GPU.

    accelerate only treats WORLD_SIZE>1 as multi-CPU when told ``cpu=True``; without CUDA there is nothing else
    to run on, so say so (on one process this changes nothing).
    """
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), **kwargs)
    leave_at_exit()
    # Say which engine wraps the models: accelerate falls back silently (e.g. FSDP on CPU runs as DDP).
    logger.info("accelerate: %s on %s, %d process(es), mixed precision %s", accelerator.distributed_type.value,
                accelerator.device, accelerator.num_processes, accelerator.mixed_precision)
    return accelerator


def train(
    cfg: Config,
    lists: list[CandidateList],
    *,
    data,
    output_dir: str | Path | None = None,
    resume: bool = False,
    retriever_path: str | None = None,
    reranker_path: str | None = None,
) -> TrainResult:
    """Train on ready candidate ``lists`` per ``cfg.train.mode``; save ``retriever/`` (+ ``reranker/``) under the
    output folder. Lists, and any teacher scores they carry, are built before (``rocketkd.pipeline.run_train``)."""
    t = cfg.train
    out = Path(output_dir or cfg.output_dir)
    ckpt_root = out / "checkpoints"
    accelerator = make_accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.gradient_accumulation_steps)
    set_seed(t.seed)
    if resume and finished(out):
        logger.info("%s already holds a finished run; nothing to resume", out)
        return load_result(out)
    # A run that starts at step 0 -- new, or resumed with no checkpoint to resume from (a folder seeded with another
    # run's files) -- hands on nothing of an earlier run there: keep-best would otherwise compare against its best.
    if accelerator.is_main_process and (not resume or not list_checkpoints(ckpt_root)):
        discard_previous(out)
    accelerator.wait_for_everyone()
    dataset = GroupDataset(lists, cfg.candidates.list_length, seed=t.seed)
    retriever, reranker, teacher_model = _load_models(cfg, lists, retriever_path, reranker_path)
    if t.mode == "reranker":  # the retriever neither runs nor changes: no gradient for DDP to wait for
        retriever.requires_grad_(False)
    dev = DevTracker(retriever, data, cfg, out, retriever_path)  # measures (or reads back) the start's dev nDCG@10
    loader = _loader(dataset, data, cfg, retriever, reranker or teacher_model)
    model = JointModel(retriever, reranker, score_scale=cfg.model.score_scale)
    model.train(t.dropout)  # from_pretrained returns eval mode: dropout would silently stay off
    optimizer = torch.optim.AdamW(param_groups(model, cfg))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if teacher_model is not None:
        teacher_model.to(accelerator.device)
    steps_per_epoch = max(1, math.ceil(len(loader) / t.gradient_accumulation_steps))
    total_steps = t.max_steps or max(1, math.ceil(steps_per_epoch * t.epochs))
    # The scheduler is stepped by hand once per optimizer step (not prepared: accelerate would step it once per
    # process), so the schedule is the same for any number of processes. Its state is checkpointed as JSON by
    # save_checkpoint, not registered with accelerate (which pickles it and unpickles it unsafely on resume).
    scheduler = get_linear_schedule_with_warmup(optimizer, int(t.warmup_ratio * total_steps), total_steps)
    step, history = load_latest(accelerator, ckpt_root, total_steps, scheduler) if resume else (0, [])
    if accelerator.is_main_process:
        _announce(cfg, out, len(dataset), accelerator.num_processes, total_steps, steps_per_epoch)

    bar = tqdm(total=total_steps, initial=step, desc=f"train[{t.mode}]", disable=not accelerator.is_main_process,
               dynamic_ncols=True)
    last_saved, start = step, time.time()
    with StopFlag() as stop:
        while step < total_steps:
            epoch = step // steps_per_epoch
            skip = (step % steps_per_epoch) * t.gradient_accumulation_steps  # batches of this epoch already done
            for batch in _epoch_batches(accelerator, loader, epoch, skip):
                with accelerator.accumulate(model):
                    if t.chunk_size:  # cached score gradients: forwards in chunks, backward done inside
                        parts = chunked_backward(model, batch, cfg, teacher_model, accelerator, step)
                    else:
                        parts = step_loss(model, batch, cfg, teacher_model, accelerator, step)
                        accelerator.backward(parts.total)
                    if accelerator.sync_gradients:
                        check_gradients(model, accelerator, step, parts, t.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                history.append(_record(accelerator, parts, step, epoch, scheduler.get_last_lr()[0], bar, total_steps,
                                       t.log_every))
                if dev.due(step, total_steps):  # every process encodes
                    dev.measure(accelerator.unwrap_model(model).retriever, step, total_steps)
                if stop.requested or (t.save_every and step % t.save_every == 0):
                    save_checkpoint(accelerator, ckpt_root, step, history, t.keep_checkpoints, scheduler)
                    last_saved = step
                if stop.requested:  # a non-zero status: `rocketkd train ... && next-stage` must not go on
                    bar.close()
                    logger.warning("SIGTERM: saved a checkpoint at step %d; rerun with --resume to continue", step)
                    raise SystemExit(SIGTERM_EXIT)
                if step >= total_steps:
                    break
    bar.close()
    if last_saved != step and t.save_every:
        save_checkpoint(accelerator, ckpt_root, step, history, t.keep_checkpoints, scheduler)
    unwrapped = accelerator.unwrap_model(model)
    dev_values = dev.finish(unwrapped.retriever, step)  # with train.keep_best: the best step's weights
    if accelerator.is_main_process:
        cards = training_card(cfg, step, dev_values, retriever_from=retriever_path or cfg.model.retriever,
                              reranker_from=reranker_path or cfg.model.reranker)
        export_run(out, unwrapped, step, history, dev_values, dev.best.curve, cards)
        logger.info("trained %d steps in %.1fs; models saved under %s", step, time.time() - start, out)
    accelerator.wait_for_everyone()
    return result_of(out, {"step": step, "history": history, "has_reranker": needs_reranker(cfg),
                           "dev_ndcg@10": dev_values})


def _load_models(cfg: Config, lists: list[CandidateList], retriever_path: str | None, reranker_path: str | None):
    """(retriever, re-ranker trained online or None, frozen teacher re-ranker of static mode or None)."""
    t, m = cfg.train, cfg.model
    retriever = load_retriever(cfg, retriever_path or m.retriever, for_training=True)
    reranker = None
    teacher_model = None
    if needs_reranker(cfg) or (t.mode == "static" and t.teacher == "reranker"):
        reranker = load_reranker(cfg, reranker_path or m.reranker, trainable=needs_reranker(cfg))
        if not needs_reranker(cfg):
            teacher_model, reranker = reranker, None
    if t.mode == "static" and t.teacher == "stored" and lists[0].teacher_scores is None and t.distill_weight != 0:
        raise TrainingError("train.teacher=stored but the candidate lists carry no teacher_scores")
    return retriever, reranker, teacher_model


def _loader(dataset: GroupDataset, data, cfg: Config, retriever, pair_model) -> torch.utils.data.DataLoader:
    """Batches of ``JointBatch``; pair tokens only where a re-ranker (online or frozen) scores the pairs, retriever
    tokens only where the retriever runs (not in ``train.mode=reranker``)."""
    queries = data.all_queries()
    alone = cfg.train.mode == "reranker"
    collator = JointCollator(
        query_text=queries.__getitem__,
        passage_text=data.corpus.get_text,
        tokenize_queries=None if alone else retriever.tokenize_queries,
        tokenize_passages=None if alone else retriever.tokenize_passages,
        tokenize_pairs=pair_model.tokenize_pairs if pair_model else None,
    )
    # Its own generator: creating an iterator draws a worker seed, and drawing it from the global RNG would shift
    # the dropout stream of a resumed run (which creates one iterator more) against an uninterrupted one.
    return torch.utils.data.DataLoader(
        dataset, batch_size=cfg.train.batch_size, shuffle=False, collate_fn=collator,
        num_workers=cfg.train.num_workers, generator=torch.Generator().manual_seed(cfg.train.seed),
    )


def _epoch_batches(accelerator, loader, epoch: int, skip: int):
    """The prepared ``loader`` for ``epoch``, its first ``skip`` batches skipped (a resumed epoch)."""
    epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
    # accelerate's loader calls dataset.set_epoch(its own iteration count) when iterated; a fresh skip-loader
    # would count from 0, so give it the real epoch (this also redraws the negatives).
    epoch_loader.set_epoch(epoch)
    return epoch_loader


def _record(accelerator, parts: LossParts, step: int, epoch: int, lr: float, bar, total_steps: int,
            log_every: int) -> dict:
    """The step's history entry: its losses averaged over processes (a device sync point); shown and logged."""
    logged = {k: accelerator.reduce(v.float(), reduction="mean").item() for k, v in parts.parts.items()}
    logged["loss"] = accelerator.reduce(parts.total.detach().float(), reduction="mean").item()
    bar.update(1)
    bar.set_postfix({k: f"{v:.4f}" for k, v in logged.items()})
    if accelerator.is_main_process and (step % log_every == 0 or step == total_steps):
        logger.info("step %d/%d %s", step, total_steps, " ".join(f"{k}={v:.4f}" for k, v in logged.items()))
    return {"step": step, "epoch": epoch, "lr": lr, **logged}


def _announce(cfg: Config, out: Path, n_lists: int, processes: int, total_steps: int, steps_per_epoch: int) -> None:
    """Main process: create ``out``, write the resolved ``config.yaml`` beside the run, log the plan."""
    t = cfg.train
    out.mkdir(parents=True, exist_ok=True)
    cfg.dump(out / "config.yaml")
    logger.info(
        "training mode=%s: %d lists of %d, batch %d x %d process(es), %d steps (%d per epoch), precision %s",
        t.mode, n_lists, cfg.candidates.list_length, t.batch_size, processes, total_steps, steps_per_epoch,
        t.mixed_precision,
    )
