"""Stamps: what made a reused output, so that an output made by other settings is never reused silently.

A stamp is a plain dict ``{"config": {dotted key: value}, "inputs": {name: fingerprint}}``: the config keys an output
depends on and the fingerprints of its inputs (the corpus, the model folder it started from, the lists it was built
from). It is written beside the output as ``<name>.stamp.json`` *after* the output itself, so an output without its
stamp (a crash between the two, or a folder from before stamps existed) counts as unknown.

The rules (docs/reliability.md):

* a reused **artefact** (``candidates.jsonl``, ``teacher_lists.jsonl``, ``dev_start.json`` of a training run) whose
  stamp differs from what the run would make now, or has no stamp, is **rebuilt**, with one log line naming the
  keys that changed (:func:`reusable`);
* ``train --resume`` and a ``pipeline`` rerun compare the whole config with the ``config.yaml`` of the run they
  continue and **refuse** (exit 2) naming the changed keys, unless ``--force`` (:func:`check_unchanged`);
* a forced pipeline rerun redoes the first stage whose stamp differs and every stage after it (stages.json).
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import yaml

from rocketkd.errors import ConfigError
from rocketkd.io import read_json, write_json

logger = logging.getLogger(__name__)

# Keys that say where things go or how often to report, not what a run computes: never compared.
# eval.run_tag labels run files: a rerun with another tag tags the runs it writes (results.json reads each file's tag).
NOT_COMPARED = frozenset({"output_dir", "data.cache_dir", "train.log_every", "train.keep_checkpoints", "pipeline.plot",
                          "eval.run_tag"})
STAMP_SUFFIX = ".stamp.json"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"train": {"lr": 1}}`` -> ``{"train.lr": 1}`` (a dict-valued key such as ``train.teachers`` stays whole)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and not prefix:
            out.update(flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def config_values(cfg: Any, sections: tuple[str, ...] | None = None,
                  ignore: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The compared config keys of ``cfg`` (a Config or its dict), only those of ``sections`` if given, none of
    ``ignore`` (dotted keys the output does not depend on)."""
    tree = cfg if isinstance(cfg, dict) else cfg.to_dict()
    flat = flatten(tree)
    return {k: _plain(v) for k, v in flat.items() if k not in NOT_COMPARED and k not in ignore
            and (sections is None or k.split(".")[0] in sections)}


def _plain(value: Any) -> Any:
    """JSON's view of a value (tuples are lists), so a stamp read back compares equal to one made now."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def make_stamp(cfg: Any, sections: tuple[str, ...] | None = None, *, ignore: frozenset[str] = frozenset(),
               **inputs: Any) -> dict:
    """The stamp of an output made from ``cfg``'s ``sections`` (all if None) less the keys in ``ignore``, and
    ``inputs`` (name -> fingerprint)."""
    return {"config": config_values(cfg, sections, ignore), "inputs": {k: _plain(v) for k, v in inputs.items()}}


def differences(old: dict, new: dict) -> list[str]:
    """The names that differ between two stamps: config keys as ``section.key``, inputs as ``input:name``.

    A config key that one stamp lacks and the other holds as ``None`` is not a difference: options are added empty
    (= off, the behaviour before they existed), so an output stamped before a new option appeared stays reusable."""
    names = []
    for part, label in (("config", ""), ("inputs", "input:")):
        a, b = old.get(part) or {}, new.get(part) or {}
        unset = None if part == "config" else _MISSING
        names += [f"{label}{k}" for k in sorted(set(a) | set(b)) if a.get(k, unset) != b.get(k, unset)]
    return names


_MISSING = object()


def describe_changes(old: dict, new: dict, names: list[str], limit: int = 6) -> str:
    """``train.lr_retriever (2e-05 -> 3e-05), ...`` for the first ``limit`` names."""
    parts = []
    for name in names[:limit]:
        part, key = ("inputs", name[len("input:"):]) if name.startswith("input:") else ("config", name)
        before = (old.get(part) or {}).get(key, "unset")
        after = (new.get(part) or {}).get(key, "unset")
        parts.append(f"{name} ({before!r} -> {after!r})")
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(parts) + more


def stamp_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + STAMP_SUFFIX)


def write_stamp(path: str | os.PathLike, stamp: dict) -> None:
    """Record ``stamp`` for the output at ``path`` (call it after the output is written)."""
    write_json(stamp_path(path), stamp)


def read_stamp(path: str | os.PathLike) -> dict | None:
    p = stamp_path(path)
    if not p.is_file():
        return None
    try:
        stamp = read_json(p)
    except Exception:  # noqa: BLE001 - a damaged stamp is an unknown one: the output is rebuilt
        return None
    return stamp if isinstance(stamp, dict) else None


def reusable(path: str | os.PathLike, stamp: dict, what: str = "") -> bool:
    """Whether the output at ``path`` exists and was made with ``stamp``. If it exists but was not (a stamp that
    differs, or none), say so in one line naming the keys, and return False: the caller rebuilds it."""
    path = Path(path)
    if not path.exists():
        return False
    old = read_stamp(path)
    if old is None:
        logger.warning("%s%s: no record of the settings that made it: rebuilt", what and f"{what} ", path)
        return False
    names = differences(old, stamp)
    if names:
        logger.warning("%s%s: made with other settings, rebuilt: %s", what and f"{what} ", path,
                       describe_changes(old, stamp, names))
        return False
    return True


GIVEN_CONFIG = "config.given.yaml"


def record_config(folder: str | os.PathLike, cfg: Any) -> None:
    """Keep the config a run was given (``config.given.yaml``): ``config.yaml`` holds what it trained with, which a
    lone ``train`` may derive from it (distillation off when its teachers fail the dev check)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    cfg.dump(Path(folder) / GIVEN_CONFIG)


def previous_config(folder: str | os.PathLike) -> dict | None:
    """The config of the run that wrote ``folder`` (``config.given.yaml``, else ``config.yaml``), or None."""
    path = Path(folder) / GIVEN_CONFIG
    if not path.is_file():
        path = Path(folder) / "config.yaml"
    if not path.is_file():
        return None
    try:
        tree = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return tree if isinstance(tree, dict) else None


def check_unchanged(folder: str | os.PathLike, cfg: Any, *, force: bool, what: str) -> list[str]:
    """Refuse to continue the run in ``folder`` with a config that differs from the one it started with.

    Returns the changed keys (empty if none, or if ``folder`` holds no previous config). Raises
    :class:`ConfigError` naming them unless ``force``; with ``force`` logs them and returns them.
    """
    old = previous_config(folder)
    if old is None:
        return []
    before, after = {"config": config_values(old)}, {"config": config_values(cfg)}
    names = differences(before, after)
    if not names:
        return names
    said = describe_changes(before, after, names)
    if not force:
        raise ConfigError(f"{what} {folder}: config keys changed since the run started: {said}; rerun with the "
                          "same config, or add --force to continue with the new values")
    logger.warning("--force: %s %s continues with changed config keys: %s", what, folder, said)
    return names


def lists_fingerprint(lists: Any) -> str:
    """A digest of candidate lists (query, passages, stored scores): the input of the teacher targets built on them."""
    digest = hashlib.sha256()
    for lst in lists:
        scores = "" if lst.teacher_scores is None else ",".join(f"{s:.6g}" for s in lst.teacher_scores)
        digest.update(f"{lst.qid}\t{' '.join(lst.pids)}\t{scores}\n".encode())
    return digest.hexdigest()[:16]


def dev_start_stamp(cfg: Any, corpus: Any, start: str | os.PathLike | None) -> dict:
    """The stamp of ``dev_start.json``: the start retriever (``start``, else ``model.retriever``), the corpus and
    the keys of the dev search. Shared by the training loop and the teacher check, which both write that file."""
    return make_stamp(cfg, ("data", "model", "index"), corpus=corpus.fingerprint(),
                      start=str(start or cfg.model.retriever))
