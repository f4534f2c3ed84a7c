"""The demo's picture, ``curves.png``: what each system scores, where the gains lie, and how training went.

Three panels, each answering one question a user asks of a run:

1. *Which system is best, and by how much?* nDCG@10 per system on the test split, with a 95% bootstrap interval
   over queries (so a 0.01 gain on 75 queries is seen to be within the noise).
2. *Where does recall change?* Recall@k of each system minus the untrained encoder's (``base``), so gains of 0.01
   are visible instead of lines drawn on top of each other.
3. *Did the models learn?* The training losses over global steps (stages laid end to end: warm-up, round 1, ...),
   smoothed by a trailing mean with the raw values faint, the chance level ``log G`` of a listwise CE over ``G``
   candidates as a dashed line (a re-ranker whose CE stays there learned nothing), and the retriever's dev nDCG@10
   where the run measured it.

:func:`plot_data` computes everything drawn (tested); :func:`plot_run` only draws it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rocketkd.io import atomic_write

CE_KEYS = ("reranker_ce", "retriever_ce")  # listwise CEs over the G candidates: chance is log G
LOSS_KEYS = (*CE_KEYS, "distill")


def smooth(values: Sequence[float], window: int = 5) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start): the same length as ``values``."""
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return []
    csum = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, x.size + 1)
    lo = np.maximum(idx - window, 0)
    return ((csum[idx] - csum[lo]) / (idx - lo)).tolist()


def _stage_order(name: str) -> tuple[int, int, str]:
    """warmup first, then round1, round2, ... (numerically), then anything else by name."""
    if name == "warmup":
        return (0, 0, name)
    m = re.fullmatch(r"round(\d+)", name)
    return (1, int(m.group(1)), name) if m else (2, 0, name)


def _read_log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_data(out: Path, systems: Mapping[str, Mapping[str, float]], curves: Mapping[str, Mapping[int, float]], *,
              intervals: Mapping[str, tuple[float, float]] | None = None, group_size: int | None = None,
              window: int = 5) -> dict:
    """Everything :func:`plot_run` draws, from a run folder ``out`` and its test-split numbers.

    ``systems``: system -> {metric: value} (``nDCG@10`` used); ``curves``: system -> {k: R@k}; ``intervals``:
    system -> (low, high) of nDCG@10; ``group_size``: G of the candidate lists (the chance line ``log G``).
    Returns ``ndcg`` (system -> (value, low, high)), ``recall_gain`` (system -> {k: R@k - base R@k}, or absolute
    recall when there is no ``base``), ``losses`` (name -> {"steps", "raw", "smooth"} over global steps),
    ``boundaries`` ([(global step where a stage starts, stage name)]), ``dev`` ({"steps", "values"}) and ``chance``.
    """
    intervals = intervals or {}
    ndcg = {s: (m["nDCG@10"], *intervals.get(s, (m["nDCG@10"], m["nDCG@10"]))) for s, m in systems.items()
            if "nDCG@10" in m}
    base = curves.get("base")
    recall_gain = {s: {k: v - (base[k] if base else 0.0) for k, v in sorted(c.items())} for s, c in curves.items()
                   if s != "base" or not base}
    losses: dict[str, dict[str, list]] = {}
    boundaries: list[tuple[int, str]] = []
    dev = {"steps": [], "values": []}
    offset = 0
    logs = sorted((p for p in Path(out).glob("*/train_log.jsonl")), key=lambda p: _stage_order(p.parent.name))
    for log in logs:
        rows = [r for r in _read_log(log) if "step" in r]
        if not rows:
            continue
        stage = log.parent.name
        boundaries.append((offset, stage))
        for key in LOSS_KEYS:
            points = [(offset + int(r["step"]), float(r[key])) for r in rows if key in r]
            if not points:
                continue
            name = f"{stage}: {key}"
            steps, raw = [p[0] for p in points], [p[1] for p in points]
            losses[name] = {"steps": steps, "raw": raw, "smooth": smooth(raw, window)}
        curve_file = log.parent / "dev_curve.json"
        if curve_file.exists():
            curve = json.loads(curve_file.read_text()).get("curve", {})
            for step, value in sorted(curve.items(), key=lambda kv: int(kv[0])):
                dev["steps"].append(offset + int(step))
                dev["values"].append(float(value))
        offset += max(int(r["step"]) for r in rows)
    chance = math.log(group_size) if group_size and group_size > 1 else None
    return {"ndcg": ndcg, "recall_gain": recall_gain, "relative_to_base": bool(base), "losses": losses,
            "boundaries": boundaries, "dev": dev, "chance": chance}


def plot_run(out: Path, curves: Mapping[str, Mapping[int, float]], *,
             systems: Mapping[str, Mapping[str, float]] | None = None,
             intervals: Mapping[str, tuple[float, float]] | None = None, group_size: int | None = None) -> Path:
    """Draw ``out/curves.png`` from :func:`plot_data`. Raises ImportError without matplotlib."""
    # matplotlib on first use: start-up time (~1 s) of every importer of the report, and the caller may do without
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt  # as above

    d = plot_data(out, systems or {}, curves, intervals=intervals, group_size=group_size)
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(16, 4.4))
    colors = {s: f"C{i}" for i, s in enumerate(list(curves) or list(d["ndcg"]))}

    names = list(d["ndcg"])
    values = [d["ndcg"][s][0] for s in names]
    err = np.array([[v - d["ndcg"][s][1] for s, v in zip(names, values)],
                    [d["ndcg"][s][2] - v for s, v in zip(names, values)]])
    ax1.bar(names, values, yerr=err, capsize=4, color=[colors.get(s, "C7") for s in names], alpha=0.85)
    for i, v in enumerate(values):
        ax1.annotate(f"{v:.3f}", (i, v), ha="center", va="bottom", fontsize=8, xytext=(16, 2), textcoords="offset points")
    low = min([d["ndcg"][s][1] for s in names], default=0.0)
    ax1.set_ylim(max(0.0, low - 0.05), max([d["ndcg"][s][2] for s in names], default=1.0) + 0.03)
    ax1.set_ylabel("nDCG@10 (test), 95% bootstrap CI")
    ax1.set_title("Which system is best")
    ax1.grid(axis="y", alpha=0.3)
    ax1.tick_params(axis="x", labelsize=8)

    for system, gain in d["recall_gain"].items():
        ks = list(gain)
        ax2.plot(ks, [gain[k] for k in ks], marker="o", label=system, color=colors.get(system))
    ax2.axhline(0.0, color="k", lw=0.8)
    ax2.set_xscale("log")
    ax2.set_xlabel("k")
    ax2.set_ylabel("Recall@k - base's" if d["relative_to_base"] else "Recall@k")
    ax2.set_title("Recall against the untrained encoder" if d["relative_to_base"] else "Recall@k")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)

    for i, (name, series) in enumerate(d["losses"].items()):
        color = f"C{i}"
        ax3.plot(series["steps"], series["raw"], color=color, alpha=0.2, lw=0.8)
        ax3.plot(series["steps"], series["smooth"], color=color, label=f"{name} (mean of 5)")
    if d["chance"] is not None and any(k.endswith(CE_KEYS) for k in d["losses"]):
        ax3.axhline(d["chance"], color="k", ls="--", lw=1, label=f"chance: log G = {d['chance']:.2f}")
    for step, stage in d["boundaries"][1:]:
        ax3.axvline(step + 0.5, color="grey", ls=":", lw=1)
        ax3.text(step + 0.5, ax3.get_ylim()[1], f" {stage}", fontsize=7, va="top", color="grey")
    ax3.set_xlabel("global step (stages end to end)")
    ax3.set_ylabel("loss")
    ax3.set_title("Training")
    ax3.grid(alpha=0.3)
    handles, labels = ax3.get_legend_handles_labels()
    if d["dev"]["steps"]:
        twin = ax3.twinx()
        twin.plot(d["dev"]["steps"], d["dev"]["values"], color="k", marker=".", label="retriever dev nDCG@10")
        twin.set_ylabel("dev nDCG@10")
        h2, l2 = twin.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax3.legend(handles, labels, fontsize=7)
    fig.tight_layout()
    path = Path(out) / "curves.png"
    with atomic_write(path, mode="wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
