"""Is the index the same whatever the number of processes? One process against N gloo processes (torchrun) on CPU.

    python scripts/check_process_count.py --data data/cranfield --processes 2 --output outputs/process_count

For one process and for N: ``rocketkd index`` of the dataset's corpus, then ``rocketkd search`` of its --split
queries (both through the CLI, as a user runs them), with ``--threads`` torch threads per process in both runs (the
same kernels). Then: the index vectors compared row by row, the runs compared query by query (the same top-k in the
same order, the largest score difference), nDCG@10 of each. Writes ``report.md`` and ``report.json`` under --output
and prints the report; exit 1 if anything differs (the check has failed), 0 if every bit is the same.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(processes: int, threads: int, *args: str) -> float:
    """``rocketkd ARGS`` in ``processes`` processes; its wall seconds. Raises with the tail of its output on failure."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
                     "--master_port", str(_free_port())]
    start = time.perf_counter()
    done = subprocess.run([*launcher, "-m", "rocketkd.cli", "-q", *args], env=env, cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise SystemExit(f"rocketkd {' '.join(args[:1])} with {processes} process(es) failed ({done.returncode}):\n"
                         f"{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _read_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    run: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        qid, _, pid, _, score, _ = line.split()
        run.setdefault(qid, []).append((pid, float(score)))
    return run


def compare(one: Path, many: Path, qrels: dict) -> dict:
    """The differences between the one-process outputs under ``one`` and the N-process ones under ``many``."""
    import faiss
    import numpy as np

    from rocketkd.evaluation.metrics import evaluate_run

    a = faiss.read_index(str(one / "index" / "index.faiss"))
    b = faiss.read_index(str(many / "index" / "index.faiss"))
    va, vb = a.reconstruct_n(0, a.ntotal), b.reconstruct_n(0, b.ntotal)
    same_ids = (one / "index" / "ids.txt").read_text() == (many / "index" / "ids.txt").read_text()
    r1, r2 = _read_run(one / "run.trec"), _read_run(many / "run.trec")
    reordered = [q for q in r1 if [p for p, _ in r1[q]] != [p for p, _ in r2.get(q, [])]]
    top10 = [q for q in r1 if [p for p, _ in r1[q][:10]] != [p for p, _ in r2.get(q, [])[:10]]]
    score_diff = max((abs(s1 - s2) for q in r1 if q not in reordered
                      for (_, s1), (_, s2) in zip(r1[q], r2[q])), default=0.0)

    def ndcg(run: dict) -> float:
        as_dict = {q: {p: s for p, s in hits} for q, hits in run.items()}
        return float(evaluate_run(as_dict, qrels, ["nDCG@10"]).mean["nDCG@10"])

    return {
        "passages": int(a.ntotal), "same_ids": same_ids, "vectors_equal": bool(va.shape == vb.shape and
                                                                               np.array_equal(va, vb)),
        "rows_differing": int((va != vb).any(axis=1).sum()) if va.shape == vb.shape else int(a.ntotal),
        "max_vector_diff": float(np.abs(va - vb).max()) if va.shape == vb.shape else float("inf"),
        "queries": len(r1), "same_queries": list(r1) == list(r2), "queries_reordered": len(reordered),
        "queries_reordered_top10": len(top10), "max_score_diff": score_diff,
        "ndcg@10_one": ndcg(r1), "ndcg@10_many": ndcg(r2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/cranfield", help="a dataset folder (corpus.jsonl, queries, qrels/)")
    parser.add_argument("--model", default=None, help="retriever folder or Hub id (default: the packaged MiniLM)")
    parser.add_argument("--split", default="test", help="qrels split whose queries are searched")
    parser.add_argument("--processes", type=int, default=2, help="N, the processes of the second run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process, in both runs")
    parser.add_argument("--autocast", default="bf16", choices=["bf16", "no"], help="precision of both runs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--output", required=True, help="a new folder: both runs' outputs and report.md")
    args = parser.parse_args(argv)
    if args.processes < 2:
        parser.error("--processes must be at least 2")
    out = Path(args.output)
    if out.exists() and any(out.iterdir()):
        print(f"error: --output {out} exists and is not empty: name a new folder", file=sys.stderr)
        return 2
    from rocketkd.data.formats import load_retrieval_data

    data = load_retrieval_data(args.data)
    if args.split not in data.qrels:
        print(f"error: {args.data}: no qrels split {args.split!r} (has {sorted(data.qrels)})", file=sys.stderr)
        return 2
    from rocketkd.models import resolve_model_path

    packaged = resolve_model_path(None)
    seconds = {}
    for world in (1, args.processes):
        folder = out / f"processes{world}"
        model = ["--model", args.model or str(packaged)]
        seconds[world] = _cli(world, args.threads, "index", *model, "--corpus", args.data, "--batch-size",
                              str(args.batch_size), "--autocast", args.autocast, "--output", str(folder / "index"))
        seconds[world] += _cli(world, args.threads, "search", "--index", str(folder / "index"), "--queries", args.data,
                               "--split", args.split, "--k", str(args.k), "--output", str(folder / "run.trec"))
    found = compare(out / "processes1", out / f"processes{args.processes}", data.qrels[args.split])
    identical = (found["same_ids"] and found["vectors_equal"] and found["same_queries"]
                 and found["queries_reordered"] == 0 and found["max_score_diff"] == 0.0)
    report = {"command": " ".join(["python", "scripts/check_process_count.py", *(argv or sys.argv[1:])]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "data": args.data, "split": args.split, "processes": args.processes, "threads": args.threads,
              "autocast": args.autocast, "seconds": seconds, "identical": identical, **found}
    lines = [
        f"# One process against {args.processes}: {args.data}, {found['passages']} passages, {found['queries']} "
        f"{args.split} queries, autocast {args.autocast}, {args.threads} thread(s) per process",
        "",
        "| check | result |",
        "|---|---|",
        f"| index vectors bit-identical | {found['vectors_equal']} ({found['rows_differing']} rows differ, "
        f"largest difference {found['max_vector_diff']:.3g}) |",
        f"| same passage ids in the same rows | {found['same_ids']} |",
        f"| queries whose top {args.k} differs in order | {found['queries_reordered']} "
        f"(top 10: {found['queries_reordered_top10']}) |",
        f"| largest score difference (queries in the same order) | {found['max_score_diff']:.3g} |",
        f"| nDCG@10, one process / {args.processes} | {found['ndcg@10_one']:.4f} / {found['ndcg@10_many']:.4f} |",
        f"| wall seconds, index + search, one process / {args.processes} | {seconds[1]:.1f} / "
        f"{seconds[args.processes]:.1f} |",
        "",
        f"Verdict: {'the same bits' if identical else 'DIFFERENT'}. Command: `{report['command']}`.",
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(lines))
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main())
