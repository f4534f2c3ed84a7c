"""What a training run leaves on disk, and how it is read back.

``out/checkpoints/step-N/`` -- accelerate's state (models, optimizer, RNG) + ``scheduler.json`` (the learning-rate
    schedule's state, JSON: no pickle) + ``trainer_state.json`` (step, history) + a ``COMPLETE`` marker, written
    through a temp folder, flushed to disk, then renamed, so a half-written checkpoint is never picked on resume; the
    newest ``train.keep_checkpoints`` are kept. Resume unpickles nothing that can run code: accelerate reads its files
    with ``weights_only=True``, and its ``custom_checkpoint_*.pkl`` (the scheduler of checkpoints written before
    ``scheduler.json``; anything planted) are never handed to it (:func:`load_latest`).
``out/retriever/`` (+ ``reranker/``) -- the final models in sentence-transformers formats; ``train_log.jsonl`` (one
    line per step) and ``train_state.json`` (step, history, dev nDCG@10, dev curve) beside them; ``out/COMPLETE``,
    written last, marks a finished run (:func:`finished`), so a crash anywhere in the export leaves a run that
    ``--resume`` finishes. :func:`load_result` reads a finished run back as a :class:`TrainResult`.
A SIGTERM (:class:`StopFlag`) checkpoints at the next step and exits with status :data:`SIGTERM_EXIT` (143).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import shlex
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rocketkd.config import Config
from rocketkd.errors import TrainingError
from rocketkd.io import atomic_write, fsync_tree
from rocketkd.training.joint import JointModel

logger = logging.getLogger(__name__)

COMPLETE_MARKER = "COMPLETE"
SCHEDULER_FILE = "scheduler.json"
SIGTERM_EXIT = 128 + int(signal.SIGTERM)  # the shell's status of a process ended by SIGTERM: not a success
_CUSTOM_PICKLE = re.compile(r"^custom_checkpoint_\d+\.pkl$")


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
    """Whether ``out`` holds a finished training run: its ``COMPLETE``, written after everything else. (A run
    exported before that marker existed: ``retriever/COMPLETE`` with ``train_state.json``, then its last file.)"""
    out = Path(out)
    if (out / COMPLETE_MARKER).exists():
        return True
    return (out / "retriever" / COMPLETE_MARKER).exists() and (out / "train_state.json").exists()


def clear_finished(out: Path) -> None:
    """Unmark a finished run whose folder a new (not resumed) run is about to rewrite."""
    for marker in (Path(out) / COMPLETE_MARKER, Path(out) / "retriever" / COMPLETE_MARKER):
        marker.unlink(missing_ok=True)


def discard_previous(out: Path) -> None:
    """Before a new (not resumed) run in ``out``: drop what a previous run there would otherwise hand on -- its
    ``COMPLETE`` markers, its checkpoints (a later ``--resume`` would pick the old run's newest step) and its dev
    curve and best weights (keep-best would compare against the old run's best). Only rocketkd's own files."""
    out = Path(out)
    clear_finished(out)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    for name in ("dev_curve.json", "best_retriever.pt"):
        (out / name).unlink(missing_ok=True)


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


def save_checkpoint(accelerator, root: Path, step: int, history: list[dict], keep: int, scheduler=None) -> Path:
    """Write ``root/step-N`` through a temp folder + completion marker, then drop all but the newest ``keep``.

    ``scheduler``: its state goes to ``scheduler.json`` (not registered with accelerate, which would pickle it)."""
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
        if scheduler is not None:
            (tmp / SCHEDULER_FILE).write_text(json.dumps(scheduler.state_dict()))
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "history": history}))
        fsync_tree(tmp)  # every file on disk before the marker that vouches for them
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


def load_latest(accelerator, root: Path, total_steps: int, scheduler=None) -> tuple[int, list[dict]]:
    """Restore the newest complete checkpoint under ``root`` into ``accelerator``'s prepared objects (and RNG) and
    ``scheduler``; returns its (step, history), or (0, []) where there is none.

    Nothing is unpickled that could run code: accelerate loads its files with ``weights_only=True``; files it would
    unpickle fully (``custom_checkpoint_*.pkl``) are hidden from it, and the scheduler's state is read from
    ``scheduler.json`` or, in a checkpoint written before it, from its pickle with ``weights_only=True``. A file that
    does not load that way is a :class:`~rocketkd.errors.TrainingError` naming the checkpoint."""
    found = list_checkpoints(root)
    if not found:
        logger.info("--resume: no complete checkpoint under %s, starting from scratch", root)
        return 0, []
    ckpt = found[-1]
    pickles = sorted(p.name for p in ckpt.iterdir() if _CUSTOM_PICKLE.match(p.name))
    has_json = (ckpt / SCHEDULER_FILE).is_file()
    if pickles and has_json:
        logger.warning("%s: ignoring %s (not written by this version of rocketkd)", ckpt, ", ".join(pickles))
    try:
        if pickles:
            with tempfile.TemporaryDirectory(prefix="rocketkd-resume-") as view:
                for entry in ckpt.iterdir():  # the checkpoint without the pickles accelerate would load unsafely
                    if not _CUSTOM_PICKLE.match(entry.name):
                        os.symlink(entry.resolve(), Path(view) / entry.name)
                accelerator.load_state(view)
        else:
            accelerator.load_state(str(ckpt))
        if scheduler is not None:
            if has_json:
                state = json.loads((ckpt / SCHEDULER_FILE).read_text())
            elif pickles:
                state = torch.load(ckpt / pickles[0], map_location="cpu", weights_only=True)
            else:
                raise TrainingError(f"checkpoint {ckpt}: no {SCHEDULER_FILE}; cannot resume its learning-rate "
                                    "schedule (start again without --resume, or from another output folder)")
            scheduler.load_state_dict(state)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, TypeError, OSError) as e:
        reason = " ".join(str(e).split())[:200] or type(e).__name__
        raise TrainingError(f"checkpoint {ckpt} cannot be loaded safely ({type(e).__name__}: {reason}); "
                            "delete it to resume from an older one, or start again without --resume") from None
    state = json.loads((ckpt / "trainer_state.json").read_text())
    logger.info("resumed from %s (step %d of %d)", ckpt, state["step"], total_steps)
    return state["step"], state["history"]


class StopFlag:
    """SIGTERM asks the loop to checkpoint at the next step boundary and exit with status :data:`SIGTERM_EXIT`."""

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


def training_card(cfg: Config, step: int, dev: dict[str, float], *, retriever_from: str | None,
                  reranker_from: str | None) -> dict[str, dict]:
    """What the model cards of a training run's ``retriever/`` and ``reranker/`` say about it
    (:mod:`rocketkd.models.card`): command, base models, data, steps, config, and the retriever's dev nDCG@10 with
    what measured it and the commands that measure it again."""
    argv0 = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    command = (shlex.join(["rocketkd", *sys.argv[1:]]) if argv0 in ("cli.py", "rocketkd", "__main__.py")
               else f"rocketkd.run_train (Python API, from {shlex.join(sys.argv) or 'an interpreter'})")
    data = cfg.data
    common = {"command": command, "mode": cfg.train.mode, "steps": step, "config": cfg.to_dict(),
              "data": f"{data.path} (train split {data.train_split!r}, dev split {data.dev_split!r})"}
    split = data.dev_split
    again = (f"rocketkd index --model RETRIEVER --corpus {data.path} --output dev-index && rocketkd search --index "
             f"dev-index --queries {data.path} --split {split} --output dev.trec --k 100 && rocketkd evaluate --run "
             f"dev.trec --qrels {data.path}/qrels/{split}.tsv --metrics nDCG@10")
    measured = "rocketkd train's dev curve (exact search over the corpus; train_state.json)"
    metrics = [{"metric": f"nDCG@10 ({label})", "split": split, "value": float(dev[key]), "measured_by": measured,
                "command": again}
               for key, label in (("start", "before training"), ("end", f"step {step}"),
                                  ("best", f"step {int(dev.get('best_step', 0))}, the one kept (train.keep_best)"))
               if isinstance(dev.get(key), (int, float))]
    return {"retriever": {**common, "base_model": retriever_from or "packaged all-MiniLM-L6-v2", "metrics": metrics},
            "reranker": {**common, "base_model": reranker_from or "packaged all-MiniLM-L6-v2"}}


def export_run(out: Path, model: JointModel, step: int, history: list[dict], dev: dict[str, float],
               dev_curve: dict[str, float], cards: dict[str, dict] | None = None) -> None:
    """The finished run (main process): ``retriever/`` (+ ``reranker/``) with their model cards (``cards``, from
    :func:`training_card`), ``train_log.jsonl``, ``train_state.json``, then ``COMPLETE``, the last thing written:
    until it is on disk the run is unfinished and resumable."""
    cards = cards or {}
    clear_finished(out)  # a crash below must not leave an earlier export looking finished
    model.retriever.save(out / "retriever", card=cards.get("retriever"))
    if model.reranker is not None:
        model.reranker.save(out / "reranker", card=cards.get("reranker"))
    with atomic_write(out / "train_log.jsonl") as f:
        f.writelines(json.dumps(h) + "\n" for h in history)
    state = {"step": step, "history": history, "has_reranker": model.reranker is not None, "dev_ndcg@10": dev,
             "dev_curve": dev_curve}
    with atomic_write(out / "train_state.json") as f:
        json.dump(state, f)
    for folder in ("retriever", "reranker"):
        if (out / folder).is_dir():
            fsync_tree(out / folder)
    with atomic_write(out / COMPLETE_MARKER) as f:
        f.write(f"{step}\n")
