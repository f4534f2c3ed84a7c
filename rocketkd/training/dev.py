"""The retriever on the dev split during training: its start, its curve every ``train.eval_every`` steps, its end,
and the best step (``train.keep_best`` keeps that step's weights instead of the last step's).

Every process calls the measuring methods (corpus encoding is shared across processes); the main process alone
gets the values, writes ``dev_start.json``/``dev_curve.json``/``best_retriever.pt`` and keeps the best weights.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from rocketkd.config import Config
from rocketkd.distributed import is_main
from rocketkd.evaluation.metrics import evaluate_run
from rocketkd.io import atomic_write, write_json
from rocketkd.models import DualEncoder
from rocketkd.search.index import DenseIndex, search_run
from rocketkd.stamps import dev_start_stamp, reusable, write_stamp

logger = logging.getLogger(__name__)


def dev_ndcg(retriever: DualEncoder, data, cfg: Config) -> float | None:
    """The retriever's nDCG@10 on ``data.dev_split`` (full-corpus exact search); None where there is no dev split.

    Every process must call it (encoding is shared across processes); the main process gets the value, the others
    None.
    """
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


def dev_start(retriever: DualEncoder, data, cfg: Config, out: Path, start: str | None = None) -> dict[str, float]:
    """The start point's dev nDCG@10, measured once per output folder and start (a resumed run reads it back):
    ``dev_start.json`` is reused only while its stamp (``start``, else ``model.retriever``; the corpus; the data,
    model and index keys) matches, so a new start model is measured, not credited with the old one's value."""
    path = out / "dev_start.json"
    stamp = dev_start_stamp(cfg, data.corpus, start)
    if reusable(path, stamp, "dev start"):
        return json.loads(path.read_text())
    value = dev_ndcg(retriever, data, cfg)
    if value is None:
        if cfg.data.dev_split not in data.qrels:
            logger.info("no %r qrels: the retriever is not evaluated on dev", cfg.data.dev_split)
        return {}
    logger.info("retriever dev nDCG@10 at the start: %.4f", value)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {"start": value})
    write_stamp(path, stamp)
    return {"start": value}


class BestRetriever:
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


class DevTracker:
    """One run's dev measurements: ``values`` (start, end; best and best_step with keep-best) and the
    :class:`BestRetriever` behind them. Built before training (it measures or reads back the start)."""

    def __init__(self, retriever: DualEncoder, data, cfg: Config, out: Path, start: str | None = None) -> None:
        self.data, self.cfg = data, cfg
        self.measures = cfg.train.eval_dev and cfg.train.mode != "reranker"  # that mode leaves the retriever as it is
        self.values: dict[str, float] = dev_start(retriever, data, cfg, out, start) if self.measures else {}
        self.best = BestRetriever(out, keep=cfg.train.keep_best)
        if "start" in self.values and self.best.value is None and is_main():  # a fresh run: the start is a candidate
            self.best.offer(retriever, self.values["start"], 0)

    def due(self, step: int, total_steps: int) -> bool:
        """Whether the retriever is measured after ``step`` (every ``train.eval_every`` steps, the last one aside)."""
        t = self.cfg.train
        return bool(self.measures and t.eval_every and step % t.eval_every == 0 and step < total_steps
                    and self.cfg.data.dev_split in self.data.qrels)

    def measure(self, retriever: DualEncoder, step: int, total_steps: int) -> None:
        """Measure the retriever after ``step`` and offer it as the best (every process calls this)."""
        value = dev_ndcg(retriever, self.data, self.cfg)
        if is_main() and value is not None:
            logger.info("step %d/%d: retriever dev nDCG@10 %.4f", step, total_steps, value)
            self.best.offer(retriever, value, step)

    def finish(self, retriever: DualEncoder, step: int) -> dict[str, float]:
        """Measure the last step (every process), then, with keep-best, put the best step's weights back into
        ``retriever`` (main process). Returns ``values``."""
        cfg, dev = self.cfg, self.values
        if self.measures and cfg.data.dev_split in self.data.qrels:  # every process: the encoding is shared
            end = dev_ndcg(retriever, self.data, cfg)
            if end is not None and "start" in dev:
                dev["end"] = end
                logger.info("retriever dev nDCG@10 (%s, %d queries): %.4f at the start -> %.4f after %d steps (%+.4f)",
                            cfg.data.dev_split, len(self.data.qrels[cfg.data.dev_split]), dev["start"], end, step,
                            end - dev["start"])
        best = self.best
        if is_main() and "end" in dev:
            best.offer(retriever, dev["end"], step, save=False)
            dev.update(best.summary())
            if best.keep and best.step != step:
                logger.info("train.keep_best: keeping the retriever of step %d (dev nDCG@10 %.4f) over the last "
                            "step's %.4f", best.step, best.value, dev["end"])
                best.restore_into(retriever)
        return dev
