"""``train(cfg)``: one explicit accelerate loop over the joint model (retriever + re-ranker).

Readable top to bottom: build data -> build models -> one optimizer with a param group per model -> loop over
groups with ``accelerator.accumulate`` -> checkpoints that resume exactly (model, optimizer, scheduler, RNG, data
position) -> export both models in sentence-transformers formats. No argv parsing here: ``rocketkd.cli`` is thin.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rocketkd.config import Config
from rocketkd.data.dataset import GroupDataset
from rocketkd.errors import TrainingError
from rocketkd.models import DualEncoder
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.training.collator import JointCollator
from rocketkd.training.joint import JointModel
from rocketkd.training.objective import compute_objective, in_batch_ce
from rocketkd.types import CandidateList

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"


@dataclass
class TrainResult:
    output_dir: Path
    retriever_dir: Path
    reranker_dir: Path | None
    steps: int
    history: list[dict] = field(default_factory=list)
    # retriever nDCG@10 on the dev split: start, end (last step), and with train.keep_best best and best_step
    dev: dict[str, float] = field(default_factory=dict)


def make_accelerator(**kwargs):
    """An ``Accelerator`` that also joins a torchrun/gloo group on machines without a GPU.

    accelerate only treats WORLD_SIZE>1 as multi-CPU when told ``cpu=True``; without CUDA there is nothing else
    to run on, so say so (on one process this changes nothing).
    """
    from accelerate import Accelerator

    from rocketkd.distributed import leave_at_exit

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), **kwargs)
    leave_at_exit()
    # Say which engine wraps the models: accelerate falls back silently (e.g. FSDP on CPU runs as DDP).
    logger.info("accelerate: %s on %s, %d process(es), mixed precision %s", accelerator.distributed_type.value,
                accelerator.device, accelerator.num_processes, accelerator.mixed_precision)
    return accelerator


def needs_reranker(cfg: Config) -> bool:
    """Whether the run trains a re-ranker online (joint, warmup) — static uses a frozen one outside the optimizer."""
    return cfg.train.mode in ("joint", "warmup")


def _is_main() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def dev_ndcg(retriever: DualEncoder, data, cfg: Config) -> float | None:
    """The retriever's nDCG@10 on ``data.dev_split`` (full-corpus exact search); None where there is no dev split.

    Every process must call it (encoding is shared across processes); the main process gets the value, the others
    None.
    """
    from rocketkd.evaluation.metrics import evaluate_run
    from rocketkd.search.index import DenseIndex, search_run

    split = cfg.data.dev_split
    if split not in data.qrels:
        return None
    was_training = retriever.training
    retriever.eval()
    try:
        index = DenseIndex.build(retriever, data.corpus, batch_size=cfg.index.batch_size, autocast=cfg.index.autocast,
                                 show_progress=False)
        # the main process alone holds the index; its search needs no other process
        run = search_run(index, data.split_queries(split), 10, distributed=False) if index is not None else None
    finally:
        retriever.train(was_training)
    if run is None:
        return None
    return float(evaluate_run(run, data.qrels[split], ["nDCG@10"]).mean["nDCG@10"])


def _param_groups(model: JointModel, cfg: Config) -> list[dict]:
    t = cfg.train
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight", "norm.weight")

    def split(named, lr):
        decay = [p for n, p in named if p.requires_grad and not n.endswith(no_decay)]
        rest = [p for n, p in named if p.requires_grad and n.endswith(no_decay)]
        return [
            {"params": decay, "lr": lr, "weight_decay": t.weight_decay},
            {"params": rest, "lr": lr, "weight_decay": 0.0},
        ]

    # Shared towers: the same parameters appear twice in named_parameters(); dedupe by identity.
    seen: set[int] = set()

    def unique(named):
        out = []
        for n, p in named:
            if id(p) not in seen:
                seen.add(id(p))
                out.append((n, p))
        return out

    groups = split(unique(model.retriever.named_parameters()), t.lr_retriever)
    if model.reranker is not None:
        body_ids = {id(p) for p in model.reranker.model.base_model.parameters()}
        named = unique(model.reranker.named_parameters())
        body = [(n, p) for n, p in named if id(p) in body_ids]
        head = [(n, p) for n, p in named if id(p) not in body_ids]
        groups += split(body, t.lr_reranker)
        groups += split(head, t.lr_reranker_head or t.lr_reranker)
    return [g for g in groups if g["params"]]


def _gather_passages(p: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All processes' passage embeddings with gradient, and this process's row offset in them.

    The offset keeps each query aligned with its own positive after the gather (rank order is the concat order).
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return p, 0
    from torch.distributed.nn.functional import all_gather

    parts = all_gather(p.contiguous())
    rank = dist.get_rank()
    return torch.cat(parts), sum(x.shape[0] for x in parts[:rank])


def _checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a folder without the completion marker is ignored."""
    if not root.is_dir():
        return []
    done = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step-") and (d / COMPLETE_MARKER).exists()]
    return sorted(done, key=lambda d: int(d.name.split("-")[1]))


class _StopFlag:
    """SIGTERM asks the loop to checkpoint at the next step boundary and exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._old = None

    def __enter__(self):
        try:
            self._old = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to restore
            self._old = None
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)


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
    from accelerate.utils import set_seed
    from transformers import get_linear_schedule_with_warmup

    t = cfg.train
    out = Path(output_dir or cfg.output_dir)
    ckpt_root = out / "checkpoints"
    accelerator = make_accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=t.gradient_accumulation_steps)
    set_seed(t.seed)
    is_main = accelerator.is_main_process

    if resume and finished(out):
        logger.info("%s already holds a finished run; nothing to resume", out)
        return load_result(out)
    dataset = GroupDataset(lists, cfg.candidates.list_length, seed=t.seed)

    m = cfg.model
    retriever = load_retriever(cfg, retriever_path or m.retriever, for_training=True)
    reranker = None
    teacher_model = None
    if needs_reranker(cfg) or (t.mode == "static" and t.teacher == "reranker"):
        reranker = load_reranker(cfg, reranker_path or m.reranker, trainable=needs_reranker(cfg))
        if not needs_reranker(cfg):
            teacher_model, reranker = reranker, None
    if t.mode == "static" and t.teacher == "stored" and lists[0].teacher_scores is None and t.distill_weight != 0:
        raise TrainingError("train.teacher=stored but the candidate lists carry no teacher_scores")

    dev: dict[str, float] = {}
    if t.eval_dev:
        dev = _dev_start(retriever, data, cfg, out)
    best = _BestRetriever(out, keep=t.keep_best)
    if "start" in dev and best.value is None and _is_main():  # a fresh run: the start is the first candidate
        best.offer(retriever, dev["start"], 0)

    queries = {**getattr(data, "unlabeled_queries", {}), **data.queries}
    pair_tokenizer = (reranker or teacher_model).tokenize_pairs if (reranker or teacher_model) else None
    collator = JointCollator(
        query_text=queries.__getitem__,
        passage_text=data.corpus.get_text,
        tokenize_queries=retriever.tokenize_queries,
        tokenize_passages=retriever.tokenize_passages,
        tokenize_pairs=pair_tokenizer,
    )
    # Its own generator: creating an iterator draws a worker seed, and drawing it from the global RNG would shift
    # the dropout stream of a resumed run (which creates one iterator more) against an uninterrupted one.
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=t.batch_size, shuffle=False, collate_fn=collator, num_workers=t.num_workers,
        generator=torch.Generator().manual_seed(t.seed),
    )
    model = JointModel(retriever, reranker, score_scale=m.score_scale)
    model.train(t.dropout)  # from_pretrained returns eval mode: dropout would silently stay off
    optimizer = torch.optim.AdamW(_param_groups(model, cfg))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if teacher_model is not None:
        teacher_model.to(accelerator.device)

    steps_per_epoch = max(1, math.ceil(len(loader) / t.gradient_accumulation_steps))
    total_steps = t.max_steps or max(1, math.ceil(steps_per_epoch * t.epochs))
    # The scheduler is stepped by hand once per optimizer step (not prepared: accelerate would step it once per
    # process), so the schedule is the same for any number of processes; it is registered to be checkpointed.
    scheduler = get_linear_schedule_with_warmup(optimizer, int(t.warmup_ratio * total_steps), total_steps)
    accelerator.register_for_checkpointing(scheduler)

    step, history = 0, []
    if resume:
        found = _checkpoints(ckpt_root)
        if found:
            accelerator.load_state(str(found[-1]))
            state = json.loads((found[-1] / "trainer_state.json").read_text())
            step, history = state["step"], state["history"]
            logger.info("resumed from %s (step %d of %d)", found[-1], step, total_steps)
        else:
            logger.info("--resume: no complete checkpoint under %s, starting from scratch", ckpt_root)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        cfg.dump(out / "config.yaml")
        logger.info(
            "training mode=%s: %d lists of %d, batch %d x %d process(es), %d steps (%d per epoch), precision %s",
            t.mode, len(dataset), cfg.candidates.list_length, t.batch_size, accelerator.num_processes,
            total_steps, steps_per_epoch, t.mixed_precision,
        )

    bar = tqdm(total=total_steps, initial=step, desc=f"train[{t.mode}]", disable=not is_main, dynamic_ncols=True)
    last_saved = step
    start = time.time()
    with _StopFlag() as stop:
        while step < total_steps:
            epoch = step // steps_per_epoch
            skip = (step % steps_per_epoch) * t.gradient_accumulation_steps
            epoch_loader = accelerator.skip_first_batches(loader, skip) if skip else loader
            # accelerate's loader calls dataset.set_epoch(its own iteration count) when iterated; a fresh
            # skip-loader would count from 0, so give it the real epoch (this also redraws the negatives).
            epoch_loader.set_epoch(epoch)
            for batch in epoch_loader:
                with accelerator.accumulate(model):
                    if t.chunk_size:  # cached score gradients: forwards in chunks, backward done inside
                        from rocketkd.training.gradcache import chunked_backward

                        parts = chunked_backward(model, batch, cfg, teacher_model, accelerator, step)
                    else:
                        parts = _step_loss(model, batch, cfg, teacher_model, accelerator, step)
                        accelerator.backward(parts.total)
                    if accelerator.sync_gradients:
                        _check_gradients(model, accelerator, step, parts, t.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                if not accelerator.sync_gradients:
                    continue
                scheduler.step()
                step += 1
                logged = {k: accelerator.reduce(v.float(), reduction="mean").item() for k, v in parts.parts.items()}
                logged["loss"] = accelerator.reduce(parts.total.detach().float(), reduction="mean").item()
                history.append({"step": step, "epoch": epoch, "lr": scheduler.get_last_lr()[0], **logged})
                bar.update(1)
                bar.set_postfix({k: f"{v:.4f}" for k, v in logged.items()})
                if is_main and (step % t.log_every == 0 or step == total_steps):
                    logger.info("step %d/%d %s", step, total_steps, " ".join(f"{k}={v:.4f}" for k, v in logged.items()))
                if (t.eval_dev and t.eval_every and step % t.eval_every == 0 and step < total_steps
                        and cfg.data.dev_split in data.qrels):
                    value = dev_ndcg(accelerator.unwrap_model(model).retriever, data, cfg)  # every process encodes
                    if is_main and value is not None:
                        logger.info("step %d/%d: retriever dev nDCG@10 %.4f", step, total_steps, value)
                        best.offer(accelerator.unwrap_model(model).retriever, value, step)
                if stop.requested or (t.save_every and step % t.save_every == 0):
                    save_checkpoint(accelerator, ckpt_root, step, history, t.keep_checkpoints)
                    last_saved = step
                if stop.requested:
                    bar.close()
                    logger.warning("SIGTERM: saved a checkpoint at step %d; rerun with --resume to continue", step)
                    raise SystemExit(0)
                if step >= total_steps:
                    break
    bar.close()
    if last_saved != step and t.save_every:
        save_checkpoint(accelerator, ckpt_root, step, history, t.keep_checkpoints)
    unwrapped = accelerator.unwrap_model(model)
    if t.eval_dev and cfg.data.dev_split in data.qrels:  # every process: the encoding is shared
        end = dev_ndcg(unwrapped.retriever, data, cfg)
        if end is not None and "start" in dev:
            dev["end"] = end
            logger.info("retriever dev nDCG@10 (%s, %d queries): %.4f at the start -> %.4f after %d steps (%+.4f)",
                        cfg.data.dev_split, len(data.qrels[cfg.data.dev_split]), dev["start"], end, step,
                        end - dev["start"])
    if is_main and "end" in dev:
        best.offer(unwrapped.retriever, dev["end"], step, save=False)
        dev.update(best.summary())
        if best.keep and best.step != step:
            logger.info("train.keep_best: keeping the retriever of step %d (dev nDCG@10 %.4f) over the last step's "
                        "%.4f", best.step, best.value, dev["end"])
            best.restore_into(unwrapped.retriever)
    if is_main:
        unwrapped.retriever.save(out / "retriever")
        (out / "retriever" / COMPLETE_MARKER).touch()
        if unwrapped.reranker is not None:
            unwrapped.reranker.save(out / "reranker")
        from rocketkd.io import atomic_write

        with atomic_write(out / "train_log.jsonl") as f:
            f.writelines(json.dumps(h) + "\n" for h in history)
        state = {"step": step, "history": history, "has_reranker": unwrapped.reranker is not None, "dev_ndcg@10": dev,
                 "dev_curve": best.curve}
        with atomic_write(out / "train_state.json") as f:
            json.dump(state, f)
        logger.info("trained %d steps in %.1fs; models saved under %s", step, time.time() - start, out)
    accelerator.wait_for_everyone()
    return _result(out, {"step": step, "history": history, "has_reranker": needs_reranker(cfg), "dev_ndcg@10": dev})


class _BestRetriever:
    """The retriever's dev measurements during training and the best one (main process only), kept on disk so a
    resumed run knows them: ``dev_curve.json`` (step -> nDCG@10, best step and value) and, with
    ``train.keep_best``, the best weights in ``best_retriever.pt``."""

    def __init__(self, out: Path, keep: bool) -> None:
        self.keep = keep
        self.weights, self.meta = out / "best_retriever.pt", out / "dev_curve.json"
        self.value: float | None = None
        self.step: int | None = None
        self.curve: dict[str, float] = {}
        if self.meta.exists():
            state = json.loads(self.meta.read_text())
            self.value, self.step, self.curve = state["best"], state["best_step"], state["curve"]

    def offer(self, retriever: DualEncoder, value: float, step: int, *, save: bool = True) -> None:
        """Record ``value`` at ``step``; if it is the best so far (ties keep the earlier one), keep the weights."""
        from rocketkd.io import atomic_write, write_json

        self.curve[str(step)] = value
        improved = self.value is None or value > self.value
        if improved:
            self.value, self.step = value, step
        if self.keep and improved and save:
            with atomic_write(self.weights, mode="wb") as f:
                torch.save({k: v.detach().cpu().clone() for k, v in retriever.state_dict().items()}, f)
        write_json(self.meta, {"best": self.value, "best_step": self.step, "curve": self.curve})

    def restore_into(self, retriever: DualEncoder) -> None:
        retriever.load_state_dict(torch.load(self.weights, map_location="cpu", weights_only=True))

    def summary(self) -> dict[str, float]:
        if not self.keep or self.value is None:
            return {}
        return {"best": self.value, "best_step": float(self.step)}


def finished(out: Path) -> bool:
    """Whether ``out`` holds a finished training run."""
    return (Path(out) / "retriever" / COMPLETE_MARKER).exists()


def load_result(out: Path) -> TrainResult:
    """The result of the finished run in ``out``."""
    return _result(Path(out), json.loads((Path(out) / "train_state.json").read_text()))


def _result(out: Path, state: dict) -> TrainResult:
    return TrainResult(
        output_dir=out,
        retriever_dir=out / "retriever",
        reranker_dir=(out / "reranker") if state.get("has_reranker") else None,
        steps=state["step"],
        history=state["history"],
        dev=state.get("dev_ndcg@10", {}),
    )


def _dev_start(retriever: DualEncoder, data, cfg: Config, out: Path) -> dict[str, float]:
    """The start point's dev nDCG@10, measured once per output folder (a resumed run reads it back)."""
    path = out / "dev_start.json"
    if path.exists():
        return json.loads(path.read_text())
    value = dev_ndcg(retriever, data, cfg)
    if value is None:
        if cfg.data.dev_split not in data.qrels:
            logger.info("no %r qrels: the retriever is not evaluated on dev", cfg.data.dev_split)
        return {}
    from rocketkd.io import write_json

    logger.info("retriever dev nDCG@10 at the start: %.4f", value)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {"start": value})
    return {"start": value}


def _step_loss(model, batch, cfg: Config, teacher_model, accelerator, step: int):
    t = cfg.train
    scores = model(batch)  # JointScores: (B, G) each
    teacher = batch.teacher_scores if t.mode == "joint" else None  # a stored ensemble joins the online re-ranker
    if t.mode == "static":
        if t.teacher == "stored":
            teacher = batch.teacher_scores
        else:
            with torch.no_grad(), accelerator.autocast():  # a frozen teacher needs no graph
                teacher = teacher_model.score_groups(batch.pair_inputs, batch.group_size).float()
    inbatch = None
    if t.in_batch_negatives:
        p_all, offset = _gather_passages(scores.passage_emb)  # (W*B*G, H)
        positive_cols = offset + torch.arange(batch.batch_size, device=p_all.device) * batch.group_size
        inbatch = in_batch_ce(scores.query_emb, p_all, positive_cols, cfg.model.score_scale)
    parts = compute_objective(t, scores.retriever, scores.reranker, teacher=teacher, retriever_inbatch=inbatch)
    if not torch.isfinite(parts.total):
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.parts.items())
        raise TrainingError(
            f"non-finite loss at step {step + 1} ({detail}); the last good checkpoint is kept, "
            "lower the learning rate or check the inputs"
        )
    return parts


def _check_gradients(model, accelerator, step: int, parts, max_grad_norm: float) -> None:
    params = [p for p in model.parameters() if p.grad is not None]
    if max_grad_norm and max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(params, max_grad_norm)
    else:
        norm = torch.norm(torch.stack([p.grad.detach().float().norm() for p in params]))
    if not torch.isfinite(torch.as_tensor(norm)):
        detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.parts.items())
        raise TrainingError(f"non-finite gradients at step {step + 1} ({detail}); the last good checkpoint is kept")


def save_checkpoint(accelerator, root: Path, step: int, history: list[dict], keep: int) -> Path:
    """Write ``root/step-N`` through a temp folder + completion marker, then drop all but the newest ``keep``."""
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # Shared towers hold one tensor under two names; safetensors refuses that, torch's format does not.
    accelerator.save_state(str(tmp), safe_serialization=False)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "history": history}))
        with open(tmp / COMPLETE_MARKER, "w") as f:
            f.write(str(step))
            f.flush()
            os.fsync(f.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in _checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
