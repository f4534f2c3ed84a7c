"""Nothing lost, nothing trusted blindly (issue 21; docs/reliability.md): output folders, locks, safe resume, the
final save's completion marker, SIGTERM's exit status.

Each test here failed on the code before issue 21: ``index --output`` deleted a folder it did not write, resume
unpickled whatever a run folder held, ``retriever/COMPLETE`` was written before the rest of the run, two writers
shared a folder, and SIGTERM exited 0.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import rocketkd.commands as commands
import rocketkd.training.loop as loop_mod
from rocketkd.cli import main
from rocketkd.config import load_config
from rocketkd.errors import OutputError, TrainingError
from rocketkd.io import LOCK_FILE, OUTPUT_MARKER, OutputLock, check_output, claim_output, output_kind
from rocketkd.pipeline import run_train
from rocketkd.search.index import DenseIndex
from rocketkd.training.checkpoint import (
    COMPLETE_MARKER,
    SIGTERM_EXIT,
    export_run,
    finished,
    list_checkpoints,
    load_result,
)

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "tiny.yaml"


def cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["-q", *(str(a) for a in argv)])
    out, err = capsys.readouterr()
    return code, out, err


def one_error(result: tuple[int, str, str], stage: str, *needles: str) -> str:
    code, _, err = result
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"rocketkd {stage}: error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert code == 2
    return lines[0]


@pytest.fixture
def no_model_loads(monkeypatch):
    """Every refusal below happens before a model is read: loading one fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(commands.DualEncoder, "from_pretrained", refuse)
    monkeypatch.setattr(commands, "run_train", refuse)
    monkeypatch.setattr(commands, "run_pipeline", refuse)


def users_folder(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    (path / "runs").mkdir()
    (path / "runs" / "old.trec").write_text("q1 Q0 d1 1 1.0 x\n")
    return path


def tree(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): p.read_text() for p in sorted(path.rglob("*")) if p.is_file()}


def tiny_index() -> DenseIndex:
    rng = np.random.default_rng(0)
    return DenseIndex.from_embeddings(rng.standard_normal((6, 4)).astype(np.float32), [f"d{i}" for i in range(6)])


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


@pytest.fixture
def live_pid():
    proc = subprocess.Popen(["sleep", "120"])
    yield proc.pid
    proc.kill()
    proc.wait()


def fake_lock(path: Path, pid: int) -> None:
    path.write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "launch": None}))


# ----------------------------------------------------------------------------------------------------------------
# 1. output folders: new, or written by rocketkd as the same kind of output; nothing else is touched


def index_args(out: Path) -> list:
    return ["index", "--model", ROOT / "no-model-needed", "--corpus", ROOT / "tests" / "resources" / "tiny",
            "--output", out]


def test_index_refuses_a_folder_it_did_not_write(capsys, tmp_path, no_model_loads):
    out = users_folder(tmp_path / "outputs")
    before = tree(out)
    one_error(cli(capsys, *index_args(out)), "index", str(out), "rocketkd did not write")
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outputs"]  # no lock or temporary left beside it


def test_index_refuses_a_regular_file_and_the_current_folder(capsys, tmp_path, no_model_loads, monkeypatch):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    one_error(cli(capsys, *index_args(target)), "index", str(target), "is a file")
    assert target.read_text() == "keep me"
    here = users_folder(tmp_path / "here")
    monkeypatch.chdir(here)
    one_error(cli(capsys, *index_args(Path("."))), "index", str(here), "current folder")
    one_error(cli(capsys, *index_args(Path(".."))), "index", "current folder")
    assert (here / "thesis.tex").read_text() == "years of work"


def test_index_refuses_a_training_run(capsys, tmp_path, no_model_loads):
    """The reported loss: `index --output outputs` over a training run (marked, and one written before markers)."""
    marked = tmp_path / "marked"
    with claim_output(marked, "train"):
        (marked / "train_state.json").write_text("{}")
    one_error(cli(capsys, *index_args(marked)), "index", str(marked), "rocketkd train output")
    legacy = tmp_path / "legacy"
    (legacy / "checkpoints").mkdir(parents=True)
    (legacy / "config.yaml").write_text("train: {}\n")
    one_error(cli(capsys, *index_args(legacy)), "index", str(legacy), "rocketkd train output")
    assert (marked / "train_state.json").exists() and (legacy / "config.yaml").exists()


def test_index_folder_is_replaced_whole_when_rocketkd_wrote_it(tmp_path):
    folder = tiny_index().save(tmp_path / "idx")
    assert output_kind(folder) == "index"
    (folder / "stale.txt").write_text("from the first build")
    tiny_index().save(folder)  # atomic swap: the new folder alone
    assert not (folder / "stale.txt").exists() and DenseIndex.load(folder).ntotal == 6
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]
    empty = tmp_path / "empty"
    empty.mkdir()
    tiny_index().save(empty)  # an empty folder is as good as a new one
    with pytest.raises(OutputError, match="rocketkd did not write"):
        tiny_index().save(users_folder(tmp_path / "mine"))


def test_index_save_drops_temporaries_of_killed_writers(tmp_path):
    left = tmp_path / f".idx.tmp-{dead_pid()}-0123abcd"
    left.mkdir()
    (left / "index.faiss").write_bytes(b"x" * 100)
    tiny_index().save(tmp_path / "idx")
    assert not left.exists()


@pytest.mark.parametrize("stage", ["train", "pipeline"])
def test_train_and_pipeline_refuse_a_folder_they_did_not_write(capsys, tmp_path, no_model_loads, stage,
                                                               monkeypatch):
    out = users_folder(tmp_path / "out")
    before = tree(out)
    argv = [stage, "--config", TINY_CONFIG, "--output", out]
    one_error(cli(capsys, *argv), stage, str(out), "rocketkd did not write")
    assert tree(out) == before and not (out / OUTPUT_MARKER).exists()
    monkeypatch.chdir(out)
    one_error(cli(capsys, stage, "--config", TINY_CONFIG, "--output", "."), stage, str(out))
    other = tmp_path / "other"
    with claim_output(other, "pipeline" if stage == "train" else "train"):
        (other / "config.yaml").write_text("{}\n")
    one_error(cli(capsys, stage, "--config", TINY_CONFIG, "--output", other), stage, str(other), "not a")


def test_own_folders_are_claimed_again_and_marked(tmp_path):
    out = tmp_path / "run"
    with claim_output(out, "pipeline") as folder:
        assert (folder / LOCK_FILE).exists() and output_kind(folder) == "pipeline"
        (folder / "stages.json").write_text("{}")
    assert not (out / LOCK_FILE).exists()
    with claim_output(out, "pipeline"):  # a rerun continues its own folder
        pass
    legacy = tmp_path / "legacy"  # a pipeline folder written before markers
    legacy.mkdir()
    (legacy / "stages.json").write_text("{}")
    with claim_output(legacy, "pipeline"):
        pass
    assert output_kind(legacy) == "pipeline" and (legacy / OUTPUT_MARKER).exists()
    with pytest.raises(OutputError, match="is a file"):
        check_output(tmp_path / "run" / "stages.json", "train")


def test_failed_claim_block_leaves_no_folder(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(RuntimeError), claim_output(out, "train"):
        raise RuntimeError("bad data")
    assert not out.exists()


def test_file_outputs_refuse_a_folder(capsys, tmp_path):
    folder = users_folder(tmp_path / "runs")
    argv = ["search", "--index", tmp_path / "no-index", "--queries", tmp_path / "q.tsv", "--output", folder]
    one_error(cli(capsys, *argv), "search", str(folder), "is a folder")


# ----------------------------------------------------------------------------------------------------------------
# 4. one writer at a time


def test_a_live_lock_refuses_a_second_writer_with_its_pid(capsys, tmp_path, live_pid, no_model_loads):
    out = tmp_path / "run"
    with claim_output(out, "train"):
        pass
    fake_lock(out / LOCK_FILE, live_pid)
    one_error(cli(capsys, "train", "--config", TINY_CONFIG, "--output", out), "train", f"pid {live_pid}", str(out))
    idx = tmp_path / "idx"
    fake_lock(tmp_path / ".idx.rocketkd-lock", live_pid)  # an index folder is replaced whole: its lock is beside it
    one_error(cli(capsys, *index_args(idx)), "index", f"pid {live_pid}")
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == live_pid  # the holder's lock is left alone


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "run"
    with claim_output(out, "train"):
        pass
    gone = dead_pid()
    fake_lock(out / LOCK_FILE, gone)
    with claim_output(out, "train"):
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (out / LOCK_FILE).exists()


def test_a_held_lock_refuses_the_same_process_too(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with OutputLock(out / LOCK_FILE, out), pytest.raises(OutputError, match=f"pid {os.getpid()}"):
        OutputLock(out / LOCK_FILE, out).acquire()


def test_a_lock_on_another_host_is_respected(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK_FILE).write_text(json.dumps({"pid": 1, "host": "elsewhere.example"}))
    with pytest.raises(OutputError, match="pid 1 on elsewhere.example"):
        OutputLock(out / LOCK_FILE, out).acquire()


def test_other_processes_of_one_launch_check_but_do_not_lock(tmp_path, monkeypatch, live_pid):
    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29555")
    (out / LOCK_FILE).write_text(json.dumps({"pid": live_pid, "host": socket.gethostname(),
                                             "launch": "127.0.0.1:29555:"}))
    with claim_output(out, "train", main=False):  # rank 0 of this launch holds it
        pass
    monkeypatch.setenv("MASTER_PORT", "29556")
    with pytest.raises(OutputError, match=f"pid {live_pid}"), claim_output(out, "train", main=False):
        pass


# ----------------------------------------------------------------------------------------------------------------
# 2, 3, 5. resume loads nothing that runs code; the run's COMPLETE is written last; SIGTERM exits 143


class Planted:
    """A pickle that creates a file when unpickled in full (``weights_only=False``)."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def tiny_cfg(tiny_bert: Path, tiny_data: Path, out: Path, *extra: str):
    overrides = [f"data.path={tiny_data}", f"model.retriever={tiny_bert}", f"model.reranker={tiny_bert}",
                 f"output_dir={out}", "train.eval_dev=false", *extra]
    return load_config(TINY_CONFIG, overrides)


def unfinish(out: Path) -> None:
    """The state a crash in the middle of the final save leaves: models partly written, no marker."""
    for marker in (out / COMPLETE_MARKER, out / "retriever" / COMPLETE_MARKER):
        marker.unlink(missing_ok=True)
    (out / "train_state.json").unlink()


def test_resume_never_unpickles_a_planted_file(tiny_bert, tiny_data, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=4", "train.save_every=2")
    run_train(cfg)
    newest = list_checkpoints(out / "checkpoints")[-1]
    ran = tmp_path / "code-ran"
    torch.save(Planted(ran), newest / "custom_checkpoint_0.pkl")
    unfinish(out)
    result = run_train(cfg, resume=True)
    assert not ran.exists(), "resume executed a pickle planted in the run folder"
    assert result.steps == 4 and finished(out)

    # a checkpoint of the older format (scheduler pickled, no scheduler.json): read with weights_only=True
    (newest / "scheduler.json").unlink()
    unfinish(out)
    with pytest.raises(TrainingError, match="cannot be loaded safely"):
        run_train(cfg, resume=True)
    assert not ran.exists()
    state = {"base_lrs": [1e-3], "last_epoch": 4, "_step_count": 5, "_is_initial": False,
             "_get_lr_called_within_step": False, "_last_lr": [0.0], "lr_lambdas": [{}]}
    torch.save(state, newest / "custom_checkpoint_0.pkl")  # an honest one loads
    assert run_train(cfg, resume=True).steps == 4


def test_crash_between_final_writes_leaves_a_resumable_run(tiny_bert, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=2", "train.save_every=2")
    def full_disk(self, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    from rocketkd.models import CrossEncoderRanker

    real_save = CrossEncoderRanker.save
    monkeypatch.setattr(CrossEncoderRanker, "save", full_disk)
    with pytest.raises(OSError):
        run_train(cfg)
    assert (out / "retriever").is_dir() and not finished(out)
    monkeypatch.setattr(CrossEncoderRanker, "save", real_save)
    result = run_train(cfg, resume=True)  # before: FileNotFoundError (train_state.json) on every resume
    assert finished(out) and result.reranker_dir == out / "reranker" and (out / "reranker").is_dir()
    assert load_result(out).steps == 2


class _Tower:
    def __init__(self, fail: bool = False):
        self.fail = fail

    def save(self, path: Path, *, card: dict | None = None) -> Path:
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        path.mkdir(parents=True, exist_ok=True)
        (path / "model.safetensors").write_bytes(b"w")
        return path


@pytest.mark.parametrize("fails", ["reranker", "train_state"])
def test_complete_is_the_last_file_of_the_export(tmp_path, monkeypatch, fails):
    import rocketkd.training.checkpoint as ckpt

    out = tmp_path / "run"
    out.mkdir()
    model = SimpleNamespace(retriever=_Tower(), reranker=_Tower(fail=fails == "reranker"))
    if fails == "train_state":
        real = ckpt.atomic_write

        def failing(path, *args, **kwargs):
            if Path(path).name == "train_state.json":
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(ckpt, "atomic_write", failing)
    with pytest.raises(OSError):
        export_run(out, model, 3, [{"step": 3}], {}, {})
    assert not finished(out)
    monkeypatch.undo()
    export_run(out, SimpleNamespace(retriever=_Tower(), reranker=_Tower()), 3, [{"step": 3}], {}, {})
    assert finished(out) and load_result(out).steps == 3
    assert (out / COMPLETE_MARKER).stat().st_mtime_ns >= (out / "train_state.json").stat().st_mtime_ns


def test_sigterm_checkpoints_then_exits_143(tiny_bert, tiny_data, tmp_path, monkeypatch):
    real = loop_mod.step_loss
    calls = {"n": 0}

    def terminated(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # StopFlag's handler: checkpoint at this step's end, then stop
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_mod, "step_loss", terminated)
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stopped:
        run_train(tiny_cfg(tiny_bert, tiny_data, out, "train.max_steps=50"))
    assert stopped.value.code == SIGTERM_EXIT == 143
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-00000002"]
    assert not finished(out)


# ----------------------------------------------------------------------------------------------------------------
# exit status of storage errors


def test_full_disk_is_one_line_and_exit_2(capsys, monkeypatch, tmp_path):
    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run.trec"))

    monkeypatch.setattr(commands, "cmd_evaluate", full)
    one_error(cli(capsys, "evaluate", "--run", "r", "--qrels", "q"), "evaluate", "run.trec", "No space left")


def test_sigterm_exit_of_the_cli_process(tiny_bert, tiny_data, tmp_path):
    """Through a real process: `rocketkd train ... && next` must stop (status 143), resumable afterwards."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "rocketkd.cli", "-q", "train", "--config", str(TINY_CONFIG),
            "--set", f"data.path={tiny_data}", "--set", f"model.retriever={tiny_bert}",
            "--set", f"model.reranker={tiny_bert}", "--set", "train.max_steps=100000", "--set", "train.save_every=2",
            "--set", "train.eval_dev=false", "--output", str(out)]
    proc = subprocess.Popen(argv, env=env, cwd=ROOT, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "step-00000002"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert not (out / LOCK_FILE).exists()  # the lock is released on the way out
