"""Every command and Python snippet in README.md runs (issue 22): on the tiny collection with tiny models, in a
temporary folder, in README's order, so later commands use earlier outputs (pipeline -> index -> search -> evaluate).

README's fenced ``bash`` and ``python`` blocks are parsed. Each bash command is either run or listed in ``NOT_RUN``
with the reason; a README command in neither fails :func:`test_every_readme_command_is_run_or_excused`, and so does
a ``NOT_RUN`` entry README no longer has. ``rocketkd ...`` runs as ``python -m rocketkd.cli ...`` and ``python ...``
with this interpreter, each as a subprocess with HF_HUB_OFFLINE=1 and the temporary folder as working directory;
Python blocks run with ``exec``. Paths and sizes are substituted first (``_substitute``):

* ``configs/demo.yaml`` -> the demo's recipe at tiny sizes: configs/demo.yaml with configs/tiny.yaml's keys on top,
  models and data from the ``tiny_bert`` / ``tiny_data`` fixtures, 2 training steps;
* ``configs/tiny.yaml`` -> configs/tiny.yaml with the fixtures' paths;
* ``data/cranfield`` -> the tiny collection; ``scripts/...`` -> this checkout's scripts;
* ``outputs/...``, ``run.trec`` and every other relative path -> the temporary folder (the working directory);
* step counts (``STEP_SUBSTITUTIONS``) -> 1-2 steps.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

# README commands this test does not run, by how they start, each with the reason. Each must match exactly one
# README command; those that reach the rocketkd CLI still have their arguments parsed and their config loaded
# (test_commands_not_run_still_parse).
NOT_RUN = {
    "bash scripts/demo.sh": "set-up + the whole Cranfield demo (minutes on CPU); its recipe runs here at tiny sizes "
    "as `rocketkd pipeline --config configs/demo.yaml`",
    "bash scripts/test.sh": "set-up + this very suite: the command CI runs (.ci/run)",
    ". .venv/bin/activate": "the environment this suite already runs in",
    "rocketkd pipeline --config configs/scifact_gpu.yaml": "SciFact at one-GPU sizes: needs a GPU and an hour",
    "scripts/train.sh ddp": "accelerate launch of several (GPU) processes",
    "torchrun --nproc_per_node 2": "two processes: tests/test_distributed.py runs this launch on the tiny data",
}

# Training lengths of README -> the tiny runs here (the averaging command names the checkpoints the run saved).
STEP_SUBSTITUTIONS = {
    "train.max_steps=60": "train.max_steps=2",
    "pipeline.round_steps=60": "pipeline.round_steps=2",
    "train.save_every=10": "train.save_every=1",
}
AVERAGED_STEPS = {"10": "1", "20": "2"}  # `average_checkpoints.py --steps 10 20` -> the tiny run's steps 1 and 2

_FENCE = re.compile(r"^```(\w*)\s*$")
_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "bash", "python": "python", "py": "python"}


def readme_blocks(text: str) -> list[tuple[str, str, str]]:
    """(section title, 'bash' | 'python', body) of every fenced bash/python block, in README order."""
    blocks, section, lines, i = [], "", text.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("## "):
            section = lines[i][3:].strip()
        m = _FENCE.match(lines[i])
        if m:
            body = []
            i += 1
            while i < len(lines) and not lines[i].startswith("```"):
                body.append(lines[i])
                i += 1
            if m.group(1) in _LANGS:
                blocks.append((section, _LANGS[m.group(1)], "\n".join(body)))
        i += 1
    return blocks


def bash_commands(body: str) -> list[list[str]]:
    """The commands of a bash block as token lists: continuation lines joined, comments and blank lines dropped."""
    commands = []
    for line in re.sub(r"\\\n", " ", body).splitlines():
        tokens = shlex.split(line, comments=True)
        if tokens:
            commands.append(tokens)
    return commands


def excuse(tokens: list[str]) -> str | None:
    text = " ".join(tokens)
    return next((key for key in NOT_RUN if text == key or text.startswith(key + " ")), None)


def _readme() -> list[tuple[str, str, str]]:
    return readme_blocks(README.read_text())


# the rule ------------------------------------------------------------------------------------------------------------


def test_readme_parses_into_commands_and_snippets():
    blocks = _readme()
    commands = [c for _, lang, body in blocks if lang == "bash" for c in bash_commands(body)]
    assert sum(lang == "python" for _, lang, _ in blocks) >= 2
    assert len(commands) >= 10
    # the continuation of the re-ranking search is one command
    rerank = [c for c in commands if "--rerank" in c]
    assert rerank and rerank[0][:2] == ["rocketkd", "search"] and "--output" in rerank[0]


def test_every_readme_command_is_run_or_excused():
    commands = [c for _, lang, body in _readme() if lang == "bash" for c in bash_commands(body)]
    for tokens in commands:
        if excuse(tokens) is None:
            assert tokens[0] in ("rocketkd", "python"), (
                f"README command {shlex.join(tokens)!r}: teach tests/test_readme.py to run it, or list it in "
                "NOT_RUN with the reason")
    for key in NOT_RUN:
        hits = [c for c in commands if excuse(c) == key]
        assert len(hits) == 1, f"NOT_RUN entry {key!r} matches {len(hits)} README commands (stale or ambiguous)"


def _cli_arguments(tokens: list[str]) -> list[str] | None:
    """The `rocketkd` arguments an excused command hands to the CLI (None: it does not reach the CLI)."""
    if tokens[0] == "rocketkd":
        return tokens[1:]
    if tokens[0] == "torchrun":
        return tokens[tokens.index("rocketkd.cli") + 1:]
    if tokens[0] == "scripts/train.sh":
        assert (ROOT / "configs" / "accelerate" / f"{tokens[1]}.yaml").is_file(), tokens
        return ["train", *tokens[2:]]
    return None


def test_commands_not_run_still_parse():
    """What can be checked without the hardware: the files exist, the CLI accepts the arguments, the config loads."""
    from rocketkd.cli import build_parser
    from rocketkd.config import load_config

    commands = [c for _, lang, body in _readme() if lang == "bash" for c in bash_commands(body)]
    for tokens in (c for c in commands if excuse(c) is not None):
        for t in tokens:
            if t.startswith(("scripts/", "configs/")) or t.endswith(".sh"):
                assert (ROOT / t).is_file(), f"README command {shlex.join(tokens)!r}: no file {t}"
        cli = _cli_arguments(tokens)
        if cli is None:
            continue
        try:
            args = build_parser().parse_args(cli)
        except SystemExit as e:
            pytest.fail(f"README command {shlex.join(tokens)!r}: the CLI refuses its arguments (exit {e.code})")
        if getattr(args, "config", None):
            load_config(ROOT / args.config, getattr(args, "overrides", []))


# running them --------------------------------------------------------------------------------------------------------


def _merged(base: dict, top: dict) -> dict:
    out = dict(base)
    for k, v in top.items():
        out[k] = _merged(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _configs(tmp_path: Path, tiny_bert: Path, tiny_data: Path) -> dict[str, Path]:
    """configs/tiny.yaml and configs/demo.yaml as run here (module docstring)."""
    tiny = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    demo = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    fixtures = {"data": {"path": str(tiny_data)}, "model": {"retriever": str(tiny_bert), "reranker": str(tiny_bert)}}
    sizes = {k: v for k, v in tiny.items() if k != "output_dir"}
    short = {"train": {"max_steps": 2}, "pipeline": {"round_steps": 2, "warmup_steps": 2}}
    made = {}
    for name, cfg in (("tiny", _merged(tiny, fixtures)), ("demo", _merged(_merged(_merged(demo, sizes), fixtures),
                                                                           short))):
        path = tmp_path / "configs" / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        made[f"configs/{name}.yaml"] = path
    return made


def _substitute(text: str, configs: dict[str, Path], tiny_data: Path) -> str:
    for old, new in configs.items():
        text = text.replace(old, str(new))
    text = text.replace("data/cranfield", str(tiny_data))
    for old, new in STEP_SUBSTITUTIONS.items():
        text = text.replace(old, new)
    return text


def _command(tokens: list[str], configs: dict[str, Path], tiny_data: Path) -> list[str]:
    tokens = [_substitute(t, configs, tiny_data) for t in tokens]
    tokens = [str(ROOT / t) if t.startswith("scripts/") else t for t in tokens]
    if "average_checkpoints.py" in tokens[1]:
        tokens = [AVERAGED_STEPS.get(t, t) for t in tokens]
    if tokens[0] == "rocketkd":
        return [sys.executable, "-m", "rocketkd.cli", *tokens[1:]]
    assert tokens[0] == "python", tokens
    return [sys.executable, *tokens[1:]]


def _value(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def _check_outputs(argv: list[str], stdout: str, cwd: Path, configs: dict[str, Path]) -> None:
    """What each kind of command must have written (besides exiting 0)."""
    stage = argv[3] if argv[1:3] == ["-m", "rocketkd.cli"] else Path(argv[1]).name
    out = _value(argv, "--output")
    if out is not None:
        out = cwd / out
        assert out.exists() and (any(out.iterdir()) if out.is_dir() else out.stat().st_size > 0), out
    if stage == "--help":
        assert all(s in stdout for s in ("train", "index", "search", "evaluate", "pipeline"))
    elif stage == "config":
        assert "train.max_steps" in stdout
    elif stage == "train":
        assert (out / "COMPLETE").exists() and (out / "retriever" / "config.json").exists()
        assert (out / "reranker" / "config.json").exists()
    elif stage == "pipeline":
        from rocketkd.config import load_config

        cfg = load_config(_value(argv, "--config"), [v for i, v in enumerate(argv) if argv[i - 1] == "--set"])
        results = json.loads((cwd / (out or cfg.output_dir) / "results.json").read_text())
        assert {"bm25", "base", "retriever", "reranked", "hybrid"} <= set(results["systems"])
        assert (cwd / (out or cfg.output_dir) / "round1" / "retriever").is_dir()
    elif stage == "index":
        assert all((out / f).exists() for f in ("index.faiss", "ids.txt", "meta.json"))
    elif stage == "search" and out is not None:
        rows = [line.split() for line in out.read_text().splitlines()]
        assert rows and all(len(r) == 6 and r[1] == "Q0" for r in rows)
    elif stage == "search":
        assert re.search(r"^\s*1\.\s", stdout, re.M), stdout
    elif stage == "evaluate":
        assert 0.0 <= json.loads(stdout)["nDCG@10"] <= 1.0
    elif stage == "average_checkpoints.py":
        assert (out / "model.safetensors").exists()


@pytest.mark.slow
def test_readme_runs(tiny_bert, tiny_data, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    configs = _configs(tmp_path, tiny_bert, tiny_data)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    monkeypatch.chdir(work)  # the Python blocks' relative paths, like the commands', land in the temporary folder
    ran = 0
    for n, (section, lang, body) in enumerate(_readme()):
        if lang == "python":
            code = _substitute(body, configs, tiny_data)
            # a fresh interpreter, as a reader has: accelerate's process-wide state from earlier tests must not leak in
            script = work / f"readme_block_{n}.py"
            script.write_text(code)
            done = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                                  timeout=600)
            assert done.returncode == 0, f"README python block in {section!r} failed:\n{body}\n{done.stderr[-3000:]}"
            ran += 1
            continue
        for tokens in bash_commands(body):
            if excuse(tokens) is not None:
                continue
            argv = _command(tokens, configs, tiny_data)
            done = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, (
                f"README command {shlex.join(tokens)!r} (run as {shlex.join(argv)}) exited {done.returncode}:\n"
                f"{done.stderr[-3000:]}")
            _check_outputs(argv, done.stdout, work, configs)
            ran += 1
    assert ran >= 10
