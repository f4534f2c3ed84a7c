#!/usr/bin/env python
"""Peak memory and time of one joint training step, plain vs cached score gradients (``train.chunk_size``).

For each list length L (candidates per query) and each path (plain: one forward/backward of the whole batch;
chunked: ``rocketkd.training.gradcache.chunked_backward``), a fresh child process loads the packaged all-MiniLM-L6-v2 as both
the retriever and the re-ranker, builds one batch of B lists of L Cranfield passages, and runs a warm-up step and
then ``--steps`` timed steps (forward + loss + backward into the parameter gradients, joint mode; no optimizer,
whose state does not depend on L). Time per step is the median over the timed steps of the wall clock and of the
process's CPU time (user + system); the ratios use CPU time, which another load on the machine disturbs far less
than the wall clock, and the child runs ``--threads`` torch threads (1 by default, so CPU time is compute time and
no thread spins waiting for a descheduled sibling). Peak memory is the child's peak resident set size (``VmHWM``) minus its resident
size after the models are loaded; the peak is reset there through ``/proc/self/clear_refs`` where the kernel allows
it. The parameter gradients (about 2 x 90 MB) are part of every figure.

On cuda (``--device cuda``, or ``auto`` on a GPU machine; each child then has its own CUDA context) the models and
the batch are on the GPU, peak memory is ``torch.cuda.max_memory_allocated()`` after
``torch.cuda.reset_peak_memory_stats()`` minus the memory allocated at that point (models and batch loaded: what
the step adds, parameter gradients included), every timed step is bracketed by ``torch.cuda.synchronize()`` and
the time ratios use the wall clock (CPU time says nothing about GPU work). ``--mixed-precision bf16`` prepares the
model with ``accelerate`` in bf16 (autocast of the forwards, as ``train()`` does) on both paths; default fp32.

The last line of output is one JSON object with every figure and ``memory_ratio`` = chunked peak at the longest L /
chunked peak at the shortest L (1 = flat). ``--quick`` runs a small version (L = 8 and 32, one timed step).

    python scripts/bench_memory.py            # L = 8, 32, 128; a few minutes on a 2-core CPU
    python scripts/bench_memory.py --quick
    python scripts/bench_memory.py --lengths 8 --batch 8 --query-len 48 --passage-len 256 --pair-len 304 \
        --mixed-precision bf16 --attention-dropout 0     # each configuration also with train.attention_dropout=0
    python scripts/bench_memory.py --device cuda --mixed-precision bf16 --batch 8 --lengths 32 128
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402


def _status_kb(field: str) -> int:
    value = bc.proc_status_kib().get(field)
    if value is None:
        raise RuntimeError(f"{field} not in /proc/self/status")
    return value


def _texts(n_lists: int, length: int, seed: int, data: Path | None = None) -> tuple[list[str], list[list[str]]]:
    data = Path(data) if data else ROOT / "data" / "cranfield"
    queries = [json.loads(x)["text"] for x in (data / "queries.jsonl").read_text().splitlines() if x.strip()]
    corpus = []
    for line in (data / "corpus.jsonl").read_text().splitlines():
        if line.strip():
            doc = json.loads(line)
            text = doc.get("text") or doc.get("title") or ""
            if text.strip():
                corpus.append(text)
    rng = random.Random(seed)
    return queries[:n_lists], [rng.sample(corpus, length) for _ in range(n_lists)]


def child(args) -> dict:
    import gc

    import torch

    from rocketkd.config import load_config
    from rocketkd.models import CrossEncoderRanker, DualEncoder, resolve_model_path
    from rocketkd.models.loading import set_attention_dropout
    from rocketkd.training import JointBatch, JointModel, chunked_backward, step_loss

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = bc.resolve_device(args.device)
    cfg = load_config(None, ["train.mode=joint", f"candidates.list_length={args.length}"])
    path = resolve_model_path(args.model)
    retriever = DualEncoder.from_pretrained(path, query_max_length=args.query_len, passage_max_length=args.passage_len)
    reranker = CrossEncoderRanker.from_pretrained(path, max_length=args.pair_len)
    model = JointModel(retriever, reranker, score_scale=cfg.model.score_scale).train()
    set_attention_dropout(model, args.attn_drop)  # None: the model's own (as train.attention_dropout empty)
    for name, param in model.named_parameters():
        if ".pooler." in f".{name}" or (name.endswith("bias") and tuple(param.shape) == (1,)):
            param.requires_grad_(False)  # as train() does
    accelerator = bc.make_accelerator_on(device, mixed_precision=args.mixed_precision)
    model.to(device)
    if args.mixed_precision != "no":
        model = accelerator.prepare(model)  # autocast of the forward, as train() prepares its model

    queries, lists = _texts(args.batch, args.length, seed=1, data=args.data)
    passages = [p for group in lists for p in group]
    batch = JointBatch(
        query_inputs=retriever.tokenize_queries(queries),
        passage_inputs=retriever.tokenize_passages(passages),
        pair_inputs=reranker.tokenize_pairs([q for q in queries for _ in range(args.length)], passages),
        group_size=args.length,
    ).to(device)

    def step() -> float:
        if args.chunk:
            parts = chunked_backward(model, batch, cfg, None, accelerator, 0, chunk_size=args.chunk)
        else:
            parts = step_loss(model, batch, cfg, None, accelerator, 0)
            accelerator.backward(parts.total)
        model.zero_grad(set_to_none=False)  # keep the gradient buffers: they are part of every step's memory
        return float(parts.total)

    cuda = device.type == "cuda"
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        base_bytes = torch.cuda.memory_allocated()
        reset = True
    else:
        reset = bc.reset_peak_rss()
        base_kb = _status_kb("VmRSS") if reset else _status_kb("VmHWM")
    losses, walls, cpus = [], [], []
    for i in range(1 + args.steps):
        bc.synchronize(device)
        start, cpu = time.perf_counter(), time.process_time()
        losses.append(step())
        bc.synchronize(device)
        if i:  # the first step is a warm-up
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
    if cuda:
        peak_mb = (torch.cuda.max_memory_allocated() - base_bytes) / 2**20
        extra = {
            "base_mb": round(base_bytes / 2**20, 1),
            "max_reserved_mb": round(torch.cuda.max_memory_reserved() / 2**20, 1),
        }
    else:
        peak_mb = (_status_kb("VmHWM") - base_kb) / 1024
        extra = {}
    return {
        "L": args.length,
        "chunk_size": args.chunk or None,
        "attention_dropout": args.attn_drop,
        "peak_mb": round(peak_mb, 1),
        "step_s": round(sorted(walls)[len(walls) // 2], 4),
        "step_cpu_s": round(sorted(cpus)[len(cpus) // 2], 3),
        "loss_first_step": round(losses[0], 5),
        "peak_reset": reset,
        "threads": torch.get_num_threads(),
        "device": device.type,
        "memory_measure": "cuda_max_memory_allocated" if cuda else "rss_vmhwm",
        **extra,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="L = 8 and 32, one timed step")
    ap.add_argument("--lengths", type=int, nargs="+", help="list lengths L (default 8 32 128)")
    ap.add_argument("--batch", type=int, default=2, help="lists per step (B)")
    ap.add_argument("--chunk-size", type=int, default=16, help="rows per forward call on the chunked path")
    ap.add_argument("--steps", type=int, help="timed steps per configuration after one warm-up (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each child (host-side work on cuda)")
    bc.add_device_arg(ap)
    ap.add_argument(
        "--mixed-precision",
        choices=("no", "bf16"),
        default="no",
        help="no (default, fp32) or bf16: the model prepared by accelerate in bf16 (autocast forwards), both paths",
    )
    bc.add_model_arg(ap, "retriever and re-ranker")
    ap.add_argument(
        "--data", default=None, help="BEIR folder whose queries.jsonl / corpus.jsonl fill the lists (default data/cranfield)"
    )
    ap.add_argument("--query-len", type=int, default=16, help="query max length (default 16)")
    ap.add_argument("--passage-len", type=int, default=32, help="passage max length (default 32)")
    ap.add_argument("--pair-len", type=int, default=48, help="(query, passage) pair max length (default 48)")
    ap.add_argument("--attention-dropout", type=float, default=None, metavar="P",
                    help="also measure every configuration with train.attention_dropout=P (peer: the model's own "
                         "dropout, measured in the same run); adds attention_dropout_ratios")
    ap.add_argument("--attn-drop", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:
        print(json.dumps(child(args)), flush=True)
        return

    device = bc.resolve_device(args.device)  # "auto" resolved once here; every child gets the same device
    lengths = args.lengths or ([8, 32] if args.quick else [8, 32, 128])
    steps = args.steps or (1 if args.quick else 2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    print(f"device: {device.type} (--device {args.device}), precision {args.mixed_precision}", flush=True)
    cuda = device.type == "cuda"
    rows = []
    drops = [None] + ([args.attention_dropout] if args.attention_dropout is not None else [])
    for length, chunk, drop in ((n, c, d) for n in lengths for c in (0, args.chunk_size) for d in drops):
        cmd = [sys.executable, __file__, "--child", "--length", str(length), "--chunk", str(chunk),
               "--batch", str(args.batch), "--steps", str(steps), "--threads", str(args.threads), "--query-len", str(args.query_len),
               "--passage-len", str(args.passage_len), "--pair-len", str(args.pair_len),
               "--device", device.type, "--mixed-precision", args.mixed_precision]
        if args.model:  # the children run in the repository root: pass folders as absolute paths
            cmd += ["--model", str(Path(args.model).resolve()) if Path(args.model).exists() else str(args.model)]
        if args.data:
            cmd += ["--data", str(Path(args.data).resolve())]
        if drop is not None:
            cmd += ["--attn-drop", str(drop)]
        out = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
        if out.returncode != 0:
            sys.stderr.write(out.stderr[-5000:])
            if cuda and "out of memory" in out.stderr.lower():  # report it, measure the other configurations
                rows.append({"L": length, "chunk_size": chunk or None, "attention_dropout": drop,
                             "error": "out of memory", "device": "cuda"})
                print(f"L={length:4d} {'chunked' if chunk else 'plain':7s} out of GPU memory", flush=True)
                continue
            raise SystemExit(f"child failed: {' '.join(cmd)}")
        row = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"L={row['L']:4d} {'chunked' if chunk else 'plain':7s} "
              f"{'' if drop is None else f'attention dropout {drop} '}peak {row['peak_mb']:8.1f} MB  "
              f"step {row['step_cpu_s']:7.3f} s CPU {row['step_s']:7.3f} s wall  loss {row['loss_first_step']:.5f}", flush=True)

    def get(length, chunked, key, drop=None):
        return next((r.get(key) for r in rows if r["L"] == length and bool(r["chunk_size"]) == chunked
                     and r["attention_dropout"] == drop), None)

    def ratio(a, b):
        return None if a is None or b is None else round(a / max(b, 1e-9), 3)

    lo, hi = min(lengths), max(lengths)
    time_key = "step_s" if cuda else "step_cpu_s"  # on cuda the CPU time of a step says nothing about GPU work
    summary = {
        "model": f"{args.model} (retriever and re-ranker)" if args.model else "packaged all-MiniLM-L6-v2 (retriever and re-ranker)",
        "device": device.type,
        "requested_device": args.device,
        "mixed_precision": args.mixed_precision,
        "memory_measure": (
            "torch.cuda.max_memory_allocated() - allocated after loading (reset_peak_memory_stats there), MB"
            if cuda
            else "VmHWM - VmRSS after loading (peak RSS reset there), MB"
        ),
        "time_ratio_basis": "wall" if cuda else "cpu",
        "batch_lists": args.batch,
        "chunk_size": args.chunk_size,
        "max_lengths": {"query": args.query_len, "passage": args.passage_len, "pair": args.pair_len},
        "timed_steps": steps,
        "rows": rows,
        "memory_ratio": ratio(get(hi, True, "peak_mb"), get(lo, True, "peak_mb")),
        "plain_memory_ratio": ratio(get(hi, False, "peak_mb"), get(lo, False, "peak_mb")),
        "peak_mb": {str(n): {"plain": get(n, False, "peak_mb"), "chunked": get(n, True, "peak_mb")} for n in lengths},
        "threads": args.threads,
        "time_ratio_chunked_over_plain": {str(n): ratio(get(n, True, time_key), get(n, False, time_key))
                                          for n in lengths},
        "wall_time_ratio_chunked_over_plain": {str(n): ratio(get(n, True, "step_s"), get(n, False, "step_s"))
                                               for n in lengths},
    }
    if args.attention_dropout is not None:  # P against the model's own, each path and length, from this run
        p = args.attention_dropout
        summary["attention_dropout_ratios"] = {
            f"{n} {'chunked' if c else 'plain'}": {
                "time": ratio(get(n, c, time_key, p), get(n, c, time_key)),
                "peak_mb": ratio(get(n, c, "peak_mb", p), get(n, c, "peak_mb")),
            } for n in lengths for c in (False, True)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
