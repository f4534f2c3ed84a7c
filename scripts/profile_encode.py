#!/usr/bin/env python
"""Where encoding time goes: ``torch.profiler`` over rocketkd's encode path, at fp32 and under bf16 autocast.

``--passages`` Cranfield passages (a seeded random sample) go through the three steps of a corpus encode, each under
its own ``record_function`` range so the table shows them beside the operators:

* ``tokenise``: :func:`rocketkd.data.tokens.tokenize_texts` (batch calls of the fast tokenizer; done once per corpus
  and stored, so a later encode of the corpus skips it);
* ``pad``: ``DualEncoder.pad_ids`` of every batch (token ids -> padded tensors);
* ``forward``: ``DualEncoder.encode_passages`` of every batch (the transformer and the pooling).

Batches are the ones ``encode_corpus`` runs (``DualEncoder.encode_ids``: token-count sort, ``--batch-size`` rows and
the device's token budget). Each precision is warmed up once on the same passages, then profiled once. Printed per
precision: the step totals, operator groups (matmul: ``aten::addmm``/``mm``/``bmm``/``linear``; attention: the
scaled-dot-product kernels; norm; activation; other) as shares of the forward's self CPU time, and the top
``--top`` operators by self CPU time. ``--out DIR`` also writes each table (``profile-<precision>.txt``) and a JSON
summary. The last line of stdout is one JSON object.

    python scripts/profile_encode.py --threads 1                  # MiniLM, 200 passages, fp32 and bf16
    python scripts/profile_encode.py --model DIR --passages 64 --precisions bf16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

bc.setup_env()

GROUPS = {
    "matmul": ("aten::addmm", "aten::mm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn"),
    "attention": ("scaled_dot_product", "aten::_softmax", "aten::softmax", "flash_attention"),
    "norm": ("layer_norm",),
    "activation": ("aten::gelu", "aten::tanh"),
}
STEPS = ("tokenise", "pad", "forward")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="packaged:all-MiniLM-L6-v2", help="a model name/folder for resolve_model_path")
    p.add_argument("--data", default=str(bc.REPO / "data" / "cranfield"), help="a BEIR folder")
    p.add_argument("--passages", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--top", type=int, default=12, help="operators in each table")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="a folder for the tables and the JSON summary")
    return p.parse_args(argv)


def group_of(name: str) -> str:
    for group, keys in GROUPS.items():
        if any(k in name for k in keys):
            return group
    return "other"


def main(argv=None) -> dict:
    args = parse_args(argv)
    bc.set_threads(args.threads)
    import numpy as np
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from rocketkd.data.formats import load_retrieval_data
    from rocketkd.data.tokens import tokenize_texts
    from rocketkd.models import DualEncoder, resolve_model_path

    work = bc.work_dir("rocketkd-profile-encode-")
    model = DualEncoder.from_pretrained(resolve_model_path(args.model))
    corpus = load_retrieval_data(args.data, cache_dir=work / "cache").corpus
    rows = np.sort(np.random.default_rng(args.seed).permutation(len(corpus))[: args.passages])
    texts = corpus.texts(rows)
    max_length = model.passage_max_length

    pad, forward = model.pad_ids, model.encode_passages

    def pad_ranged(seqs):
        with record_function("pad"):
            return pad(seqs)

    def forward_ranged(inputs):
        with record_function("forward"):
            return forward(inputs)

    model.pad_ids, model.encode_passages = pad_ranged, forward_ranged  # what encode_ids calls, per batch

    def run(dtype):
        with record_function("tokenise"):
            seqs = tokenize_texts(model.tokenizer, texts, max_length)
        return model.encode_ids(seqs, side="passage", batch_size=args.batch_size, autocast_dtype=dtype)

    info = bc.machine_info()
    bc.log(f"profiling {len(texts)} passages of {args.data}, {args.model}, threads {torch.get_num_threads()}, "
           f"load {bc.load_avg()}")
    summary: dict = {"bench": "profile-encode", "model": args.model, "passages": len(texts),
                     "threads": torch.get_num_threads(), "precisions": {}}
    for name in args.precisions:
        dtype = torch.bfloat16 if name == "bf16" else None
        run(dtype)  # warm-up: thread pools, kernel choices
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(dtype)
        wall = time.perf_counter() - start
        events = prof.key_averages()
        steps = {e.key: e.cpu_time_total / 1e6 for e in events if e.key in STEPS}
        ops = [e for e in events if e.key not in STEPS and e.key.startswith("aten::")]
        groups: dict[str, float] = {}
        for e in ops:
            groups[group_of(e.key)] = groups.get(group_of(e.key), 0.0) + e.self_cpu_time_total / 1e6
        ops_total = sum(groups.values()) or 1.0
        table = events.table(sort_by="self_cpu_time_total", row_limit=args.top)
        top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[: args.top]
        summary["precisions"][name] = {
            "wall_s": bc.rnd(wall, 3),
            "steps_s": {k: bc.rnd(v, 3) for k, v in steps.items()},
            "op_groups_share": {k: bc.rnd(v / ops_total, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
            "top_ops": [{"op": e.key, "self_s": bc.rnd(e.self_cpu_time_total / 1e6, 3), "calls": e.count,
                         "share": bc.rnd(e.self_cpu_time_total / 1e6 / ops_total, 3)} for e in top],
        }
        print(f"\n## {name}: {wall:.2f} s profiled (with the profiler's own overhead)\n")
        print(bc.md_table(["step", "s", "share of the three"],
                          [[k, round(v, 3), round(v / max(sum(steps.values()), 1e-9), 3)] for k, v in steps.items()]))
        print()
        print(bc.md_table(["operator group", "share of operator self time"],
                          [[k, v] for k, v in summary["precisions"][name]["op_groups_share"].items()]))
        print()
        print(bc.md_table(["operator", "self s", "calls", "share"],
                          [[t["op"], t["self_s"], t["calls"], t["share"]] for t in summary["precisions"][name]["top_ops"]]))
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / f"profile-{name}.txt").write_text(table)
    summary["machine"] = info
    summary["load_end"] = bc.load_avg()
    bc.emit(summary, str(Path(args.out) / "profile.json") if args.out else None)
    return summary


if __name__ == "__main__":
    main()
