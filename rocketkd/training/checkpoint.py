"""What a training run leaves on disk, and how it is read back.

``out/checkpoints/step-N/`` -- accelerate's full state (models, optimizer, scheduler, RNG) + ``trainer_state.json``
    (step, history) + a ``COMPLETE`` marker, written through a temp folder and renamed, so a half-written checkpoint
    is never picked on resume; the newest ``train.keep_checkpoints`` are kept.
``out/retriever/`` (+ ``reranker/``) -- the final models in sentence-transformers formats; ``retriever/COMPLETE``
    marks a finished run. ``train_log.jsonl`` (one line per step) and ``train_state.json`` (step, history, dev
    nDCG@10, dev curve) beside them; :func:`load_result` reads a finished run back as a :class:`TrainResult`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

from rocketkd.io import atomic_write
from rocketkd.training.joint import JointModel

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


def finished(out: Path) -> bool:
    """Whether ``out`` holds a finished training run."""
    return (Path(out) / "retriever" / COMPLETE_MARKER).exists()


def load_result(out: Path) -> TrainResult:
    """The result of the finished run in ``out``."""
    return result_of(Path(out), json.loads((Path(out) / "train_state.json").read_text()))


def result_of(out: Path, state: dict) -> TrainResult:
    """A :class:`TrainResult` from a ``train_state.json``-shaped dict (step, history, has_reranker, dev_ndcg@10)."""
    return TrainResult(
        output_dir=out,
        retriever_dir=out / "retriever",
        reranker_dir=(out / "reranker") if state.get("has_reranker") else None,
        steps=state["step"],
        history=state["history"],
        dev=state.get("dev_ndcg@10", {}),
    )


def list_checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first; a folder without the completion marker is ignored."""
    if not root.is_dir():
        return []
    done = [d for d in root.iterdir() if d.is_dir() and d.name.startswith("step-") and (d / COMPLETE_MARKER).exists()]
    return sorted(done, key=lambda d: int(d.name.split("-")[1]))


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
        for old in list_checkpoints(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_latest(accelerator, root: Path, total_steps: int) -> tuple[int, list[dict]]:
    """Restore the newest complete checkpoint under ``root`` into ``accelerator``'s prepared objects (and RNG);
    returns its (step, history), or (0, []) where there is none."""
    found = list_checkpoints(root)
    if not found:
        logger.info("--resume: no complete checkpoint under %s, starting from scratch", root)
        return 0, []
    accelerator.load_state(str(found[-1]))
    state = json.loads((found[-1] / "trainer_state.json").read_text())
    logger.info("resumed from %s (step %d of %d)", found[-1], state["step"], total_steps)
    return state["step"], state["history"]


class StopFlag:
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


def export_run(out: Path, model: JointModel, step: int, history: list[dict], dev: dict[str, float],
           dev_curve: dict[str, float]) -> None:
    """The finished run (main process): ``retriever/`` (+ ``reranker/``), ``train_log.jsonl``, ``train_state.json``."""
    model.retriever.save(out / "retriever")
    (out / "retriever" / COMPLETE_MARKER).touch()
    if model.reranker is not None:
        model.reranker.save(out / "reranker")
    with atomic_write(out / "train_log.jsonl") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)
    state = {"step": step, "history": history, "has_reranker": model.reranker is not None, "dev_ndcg@10": dev,
             "dev_curve": dev_curve}
    with atomic_write(out / "train_state.json") as f:
        json.dump(state, f)
