"""The demo's picture: recall@k per system on the test split, and the training loss curves of every stage."""

from __future__ import annotations

import json
from pathlib import Path

from rocketkd.io import atomic_write


def plot_run(out: Path, curves: dict[str, dict[int, float]]) -> Path:
    """Draw ``out/curves.png``: recall@k per system (``curves``: system -> {k: R@k}) and the loss curves of every
    ``out/*/train_log.jsonl``. Raises ImportError without matplotlib."""
    # matplotlib on first use: start-up time (~1 s) of every importer of the report, and the caller may do without
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt  # as above

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for system, curve in curves.items():
        ks = sorted(curve)
        ax1.plot(ks, [curve[k] for k in ks], marker="o", label=system)
    ax1.set_xscale("log")
    ax1.set_xlabel("k")
    ax1.set_ylabel("Recall@k (test)")
    ax1.set_title("Retrieval quality")
    ax1.grid(alpha=0.3)
    ax1.legend()
    for log in sorted(out.glob("*/train_log.jsonl")):
        rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
        if not rows:
            continue
        for key in ("reranker_ce", "distill", "retriever_ce"):
            if key in rows[0]:
                ax2.plot([r["step"] for r in rows], [r[key] for r in rows], label=f"{log.parent.name}: {key}")
    ax2.set_xlabel("step")
    ax2.set_ylabel("loss")
    ax2.set_title("Training losses")
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = out / "curves.png"
    with atomic_write(path, mode="wb", encoding=None) as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)
    return path
