#!/usr/bin/env python
"""Linearity of encode -> index -> search from 10k to 1M passages, on synthetic text with a tiny random BERT.

The point is how time and memory grow with the corpus, not how fast a real model is: the encoder is a BERT built
from a config (2 layers, hidden 32, 2 heads, intermediate 64, random weights, seeded) with the real fast tokenizer
of the packaged all-MiniLM-L6-v2, so tokenisation, batching, padding and the faiss work are those of a real run
while the transformer itself is cheap. Passages are 60-100 words drawn uniformly from the tokenizer's vocabulary of
whole lowercase ASCII words (each one WordPiece token, so ~80 tokens per passage); queries are 6-10 such words. The
text is a fixed function of ``--seed``: the first N passages are the same for every size N.

For each size a fresh child process (so every peak is its own) loads the BEIR-layout corpus as rocketkd does
(``Corpus.from_beir``: a memory-mapped Arrow table) and the model (``DualEncoder.from_pretrained``), resets its peak
RSS through ``/proc/self/clear_refs``, then runs the three stages through the project's code:

1. **encode**: ``rocketkd.search.encode.encode_corpus`` (length-sorted chunks, batches of ``--batch-size``, in memory);
2. **index**: ``DenseIndex.from_embeddings`` (what ``DenseIndex.build`` does after encoding; ``--factory``, Flat
   by default), then the embedding array is dropped;
3. **search**: ``rocketkd.search.index.search_run`` over ``--queries`` query texts, top ``--k`` (query encoding included).

Times are wall clock and process CPU seconds (user + system; the child runs ``--threads`` torch threads, 1 by
default, so CPU time is compute time and a neighbour's load disturbs it less than the wall clock). The
"per passage / smallest" columns divide each size's seconds per passage by the smallest size's: 1.0 is linear,
above 1 super-linear. ``slope`` is the least-squares slope of log(time) on log(passages) (1.0 = linear).

Memory (anonymous memory, RssAnon, sampled every 10 ms: heap, tensors, arrays, faiss; not the memory-mapped
corpus, whose pages show in RSS as file pages) above the child's level before encoding. ``vectors`` is the index's
own size, 4 x dim x N bytes (a Flat index stores exactly that). Encoding returns an (N, dim) float32 array, so its
peak is expected to be vectors + a constant; building the index holds that array and faiss's copy at once, so its
peak is expected to be 2 x vectors + the passage-id list + a constant. The "above vectors" columns subtract those
expected vector bytes: flat columns mean memory grows with the vectors only. Peak RSS growth (VmHWM, file pages of
the corpus included) is reported as well.

The last line of stdout is one JSON object with every figure. ``--out FILE.png`` also draws time (CPU seconds per
stage, wall seconds of the total) and memory against passages, log-log, with the linear reference through the
smallest size.

    python scripts/bench_scaling.py                                  # 10k ... 1M; ~15 min on 2 shared cores
    python scripts/bench_scaling.py --sizes 200 400 --queries 20     # seconds
    python scripts/bench_scaling.py --out docs/scaling_linearity.png --json-out scaling.json
    python scripts/bench_scaling.py --replot scaling.json --out docs/scaling_linearity.png   # redraw only
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

bc.setup_env()

DEFAULT_SIZES = (10_000, 30_000, 100_000, 300_000, 1_000_000)
BLOCK = 10_000  # passages generated per numpy draw
MODEL_CONFIG = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=list(DEFAULT_SIZES), help="corpus sizes (passages)")
    p.add_argument("--queries", type=int, default=1_000, help="query texts searched (default 1000)")
    p.add_argument("--k", type=int, default=100, help="passages retrieved per query (default 100)")
    p.add_argument("--batch-size", type=int, default=128, help="encoding batch (default 128, index.batch_size)")
    p.add_argument("--autocast", default="no", help="encoding autocast (default no: fp32 is faster at hidden 32)")
    p.add_argument("--factory", default="Flat", help="faiss factory string (default Flat)")
    p.add_argument("--passage-max-length", type=int, default=128, help="passage tokens kept (default 128)")
    p.add_argument("--min-words", type=int, default=60)
    p.add_argument("--max-words", type=int, default=100)
    p.add_argument("--threads", type=int, default=1, help="torch threads in each child (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the text and of the model's weights")
    p.add_argument("--out", default=None, help="write a plot (PNG) of time and memory against passages here")
    p.add_argument("--json-out", default=None, help="also write the final JSON object to this file")
    p.add_argument("--replot", default=None, metavar="JSON",
                   help="print the table and draw --out from a file holding a previous run's JSON line; no run")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # a size's folder: measure it
    args = p.parse_args(argv)
    args.sizes = sorted(set(args.sizes))
    if args.sizes[0] < 1 or args.queries < 1 or args.k < 1 or not 1 <= args.min_words <= args.max_words:
        p.error("sizes, --queries, --k must be positive and 1 <= --min-words <= --max-words")
    return args


# ----------------------------------------------------------------------------------------------------------------
# inputs: model folder, corpus files, queries


def whole_words(tokenizer) -> list[str]:
    """Vocabulary entries that are whole lowercase ASCII words of 2+ letters (no ``##`` pieces, no [SPECIAL])."""
    return sorted(w for w in tokenizer.get_vocab() if len(w) >= 2 and w.isascii() and w.isalpha() and w.islower())


def build_model(folder: Path, seed: int) -> dict:
    """The tiny random BERT + the packaged MiniLM tokenizer, saved as a transformers folder."""
    import torch
    from transformers import BertConfig, BertModel

    from rocketkd.models import resolve_model_path
    from rocketkd.models._hf import load_tokenizer

    tokenizer = load_tokenizer(resolve_model_path(None))
    config = BertConfig(vocab_size=len(tokenizer), max_position_embeddings=512, **MODEL_CONFIG)
    torch.manual_seed(seed)
    bert = BertModel(config, add_pooling_layer=False)
    bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    n_params = sum(p.numel() for p in bert.parameters())
    return {"tokenizer": "packaged all-MiniLM-L6-v2 (fast WordPiece)", "params": n_params, **MODEL_CONFIG,
            "_words": whole_words(tokenizer)}


def write_corpora(work: Path, sizes: list[int], words: list[str], args) -> dict[int, Path]:
    """``work/corpus-N/corpus.jsonl`` for every size, from one seeded stream (file N = the stream's first N)."""
    import numpy as np

    vocab = np.array(words)
    rng = np.random.default_rng(args.seed)
    paths = {n: work / f"corpus-{n}" / "corpus.jsonl" for n in sizes}
    for path in paths.values():
        path.parent.mkdir(parents=True, exist_ok=True)
    files = {n: open(path, "w", encoding="utf-8") for n, path in paths.items()}  # noqa: SIM115
    try:
        for start in range(0, sizes[-1], BLOCK):
            count = min(BLOCK, sizes[-1] - start)
            lengths = rng.integers(args.min_words, args.max_words + 1, size=count)
            drawn = vocab[rng.integers(0, len(vocab), size=int(lengths.sum()))]
            ends = np.cumsum(lengths)
            lines = [
                json.dumps({"_id": f"p{start + i}", "text": " ".join(drawn[end - length : end])}) + "\n"
                for i, (end, length) in enumerate(zip(ends.tolist(), lengths.tolist()))
            ]
            for n, f in files.items():
                if n > start:
                    f.writelines(lines[: n - start])
    finally:
        for f in files.values():
            f.close()
    return paths


def write_queries(work: Path, words: list[str], args) -> Path:
    import numpy as np

    rng = np.random.default_rng(args.seed + 1)
    queries = {
        f"q{i}": " ".join(rng.choice(words, size=int(rng.integers(6, 11)))) for i in range(args.queries)
    }
    path = work / "queries.json"
    path.write_text(json.dumps(queries))
    return path


# ----------------------------------------------------------------------------------------------------------------
# one size, in a fresh process


def child(args) -> dict:
    from rocketkd.data.corpus import Corpus
    from rocketkd.models import DualEncoder
    from rocketkd.search.encode import encode_corpus
    from rocketkd.search.index import DenseIndex, search_run

    bc.set_threads(args.threads)
    folder = Path(args.child)
    work = folder.parent
    start = time.perf_counter()
    corpus = Corpus.from_beir(folder / "corpus.jsonl", cache_dir=folder / "cache")
    corpus_s = time.perf_counter() - start
    model = DualEncoder.from_pretrained(
        work / "model", passage_max_length=args.passage_max_length, query_max_length=32
    )
    queries = json.loads((work / "queries.json").read_text())
    encode_corpus(model, corpus, rows=range(min(8, len(corpus))), show_progress=False, autocast=args.autocast)
    gc.collect()

    before = bc.proc_status_kib()
    reset = bc.reset_peak_rss()
    base_anon = before.get("RssAnon", 0)
    stages: dict[str, dict] = {}

    def stage(name: str, fn, *fn_args, **fn_kwargs):
        c0, t0 = bc.cpu_seconds(), time.perf_counter()
        with bc.AnonPeakSampler(period=0.01) as sampler:
            value = fn(*fn_args, **fn_kwargs)
        stages[name] = {
            "s": time.perf_counter() - t0,
            "cpu_s": bc.cpu_seconds() - c0,
            "anon_peak_mib": (sampler.peak - base_anon) / 1024,
        }
        return value

    emb = stage(
        "encode", encode_corpus, model, corpus, batch_size=args.batch_size, autocast=args.autocast, show_progress=False
    )
    metadata = {"corpus_fingerprint": corpus.fingerprint(), "corpus_path": corpus.source, "autocast": args.autocast}
    index = stage(
        "index", DenseIndex.from_embeddings, emb, corpus.ids, factory=args.factory, metadata=metadata, encoder=model
    )
    dim = int(emb.shape[1])
    del emb  # as DenseIndex.build returns: only the index keeps the vectors
    gc.collect()
    after_index = bc.proc_status_kib()
    k = min(args.k, len(corpus))
    run = stage(
        "search", search_run, index, queries, k, batch_size=args.batch_size, autocast=args.autocast, distributed=False
    )
    after = bc.proc_status_kib()
    assert len(run) == len(queries) and all(len(hits) == k for hits in run.values())

    n = len(corpus)
    tokens = model.tokenize_passages(corpus.texts(range(min(n, 1000))))["attention_mask"].sum(1).float()
    return {
        "passages": n,
        "dim": dim,
        "vectors_mib": n * dim * 4 / 2**20,
        "mean_tokens": float(tokens.mean()),
        "corpus_load_s": corpus_s,
        "stages": stages,
        "resident_after_index_mib": (after_index.get("RssAnon", 0) - base_anon) / 1024,
        "resident_after_search_mib": (after.get("RssAnon", 0) - base_anon) / 1024,
        "peak_rss_growth_mib": (after.get("VmHWM", 0) - before.get("VmRSS", 0)) / 1024 if reset else None,
        "peak_reset": reset,
        "rss_before_mib": before.get("VmRSS", 0) / 1024,
        "anon_before_mib": base_anon / 1024,
        "faiss_ntotal": index.ntotal,
    }


# ----------------------------------------------------------------------------------------------------------------
# summary, table, plot


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log(y) on log(x) (None with fewer than two points)."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    mx = sum(p[0] for p in pts) / len(pts)
    my = sum(p[1] for p in pts) / len(pts)
    den = sum((p[0] - mx) ** 2 for p in pts)
    return sum((p[0] - mx) * (p[1] - my) for p in pts) / den if den else None


def summarise(children: list[dict]) -> list[dict]:
    rows = []
    first = children[0]
    for c in children:
        n, st = c["passages"], c["stages"]
        row = {"passages": n, "mean_tokens": bc.rnd(c["mean_tokens"], 1), "corpus_load_s": bc.rnd(c["corpus_load_s"], 2)}
        total = {"s": 0.0, "cpu_s": 0.0}
        for name in ("encode", "index", "search"):
            row[f"{name}_s"] = bc.rnd(st[name]["s"], 3)
            row[f"{name}_cpu_s"] = bc.rnd(st[name]["cpu_s"], 3)
            total["s"] += st[name]["s"]
            total["cpu_s"] += st[name]["cpu_s"]
        row["total_s"], row["total_cpu_s"] = bc.rnd(total["s"], 3), bc.rnd(total["cpu_s"], 3)
        row["encode_passages_per_s"] = bc.rnd(n / st["encode"]["s"], 1)
        row["total_passages_per_s"] = bc.rnd(n / total["s"], 1)
        for name in ("encode", "index", "search", "total"):
            for kind in ("s", "cpu_s"):
                mine = _stage_value(c, name, kind) / n
                base = _stage_value(first, name, kind) / first["passages"]
                row[f"{name}_{kind}_per_passage_rel"] = bc.rnd(mine / base, 3) if base > 0 else None
        v = c["vectors_mib"]
        row["vectors_mib"] = bc.rnd(v, 2)
        row["encode_anon_peak_mib"] = bc.rnd(st["encode"]["anon_peak_mib"], 1)
        row["index_anon_peak_mib"] = bc.rnd(st["index"]["anon_peak_mib"], 1)
        row["search_anon_peak_mib"] = bc.rnd(st["search"]["anon_peak_mib"], 1)
        row["peak_anon_mib"] = bc.rnd(max(s["anon_peak_mib"] for s in st.values()), 1)
        # expected vector bytes at each peak: the encoded array; the array + faiss's copy; faiss's copy
        row["encode_above_vectors_mib"] = bc.rnd(st["encode"]["anon_peak_mib"] - v, 1)
        row["index_above_vectors_mib"] = bc.rnd(st["index"]["anon_peak_mib"] - 2 * v, 1)
        row["search_above_vectors_mib"] = bc.rnd(st["search"]["anon_peak_mib"] - v, 1)
        row["resident_after_index_mib"] = bc.rnd(c["resident_after_index_mib"], 1)
        row["resident_above_vectors_mib"] = bc.rnd(c["resident_after_index_mib"] - v, 1)
        row["peak_rss_growth_mib"] = (
            bc.rnd(c["peak_rss_growth_mib"], 1) if c["peak_rss_growth_mib"] is not None else None
        )
        row["rss_before_mib"] = bc.rnd(c["rss_before_mib"], 1)
        rows.append(row)
    return rows


def _stage_value(child: dict, name: str, kind: str) -> float:
    if name == "total":
        return sum(child["stages"][s][kind] for s in ("encode", "index", "search"))
    return child["stages"][name][kind]


def print_table(rows: list[dict]) -> None:
    headers = ["passages", "encode s", "index s", "search s", "encode psg/s", "encode s/psg ÷ first",
               "index ÷ first", "search ÷ first", "total ÷ first", "total CPU ÷ first", "vectors MiB",
               "peak anon MiB", "encode − vectors", "index − 2×vectors", "kept − vectors", "peak RSS growth MiB"]
    table = [[r["passages"], r["encode_s"], r["index_s"], r["search_s"], r["encode_passages_per_s"],
              r["encode_s_per_passage_rel"], r["index_s_per_passage_rel"], r["search_s_per_passage_rel"],
              r["total_s_per_passage_rel"], r["total_cpu_s_per_passage_rel"], r["vectors_mib"],
              r["peak_anon_mib"], r["encode_above_vectors_mib"], r["index_above_vectors_mib"],
              r["resident_above_vectors_mib"], r["peak_rss_growth_mib"]] for r in rows]
    print(bc.md_table(headers, table))


def plot(rows: list[dict], path: Path) -> Path:
    """Left: CPU seconds per stage (wall for the total) against passages, log-log, with the linear reference
    through the smallest size. Right: the memory figures against passages."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["passages"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for name, marker in (("encode", "o"), ("index", "s"), ("search", "^"), ("total", "D")):
        ys = [r[f"{name}_cpu_s"] for r in rows]
        (line,) = ax1.plot(ns, ys, marker=marker, label=f"{name}, CPU s (slope {slope(ns, ys) or float('nan'):.2f})")
        ax1.plot(ns, [ys[0] * n / ns[0] for n in ns], ls=":", color=line.get_color(), alpha=0.6)
    walls = [r["total_s"] for r in rows]
    ax1.plot(ns, walls, ls="--", color="gray", lw=1, label=f"total, wall s (slope {slope(ns, walls) or float('nan'):.2f})")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("passages")
    ax1.set_ylabel("seconds")
    ax1.set_title("Time (dotted: linear from the smallest size)")
    ax1.grid(alpha=0.3, which="both")
    ax1.legend(fontsize=8)
    series = []
    for key, label in (("peak_anon_mib", "peak anonymous memory"), ("vectors_mib", "vectors (4·dim·N)"),
                       ("encode_above_vectors_mib", "encode peak − vectors"),
                       ("index_above_vectors_mib", "index-build peak − 2×vectors"),
                       ("resident_above_vectors_mib", "kept after build − vectors"),
                       ("peak_rss_growth_mib", "peak RSS growth (incl. mmapped corpus)")):
        ys = [r.get(key) for r in rows]
        if all(y is not None for y in ys):
            ax2.plot(ns, ys, marker="o", label=label)
            series += ys
    ax2.set_xscale("log")
    if series and min(series) > 0:
        ax2.set_yscale("log")
    else:
        ax2.set_yscale("symlog", linthresh=10)
    ax2.set_xlabel("passages")
    ax2.set_ylabel("MiB above the level before encoding")
    ax2.set_title("Memory")
    ax2.grid(alpha=0.3, which="both")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)), flush=True)
        return {}
    if args.replot:  # table and plot again from a saved JSON line, nothing measured
        result = json.loads(Path(args.replot).read_text().strip().splitlines()[-1])
        print_table(result["rows"])
        if args.out:
            print(f"plot: {plot(result['rows'], Path(args.out))}")
        return result
    start_all = time.perf_counter()
    info = bc.machine_info()
    info["torch_threads"] = args.threads
    load = bc.LoadLog()
    work = bc.work_dir("rocketkd-bench-scaling-")
    model = build_model(work / "model", args.seed)
    words = model.pop("_words")
    bc.log(f"[scaling] {len(words)} whole words; writing corpora of {args.sizes} passages under {work}")
    t0 = time.perf_counter()
    paths = write_corpora(work, args.sizes, words, args)
    write_queries(work, words, args)
    generate_s = time.perf_counter() - t0

    children = []
    for n in args.sizes:
        load.mark()
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(paths[n].parent),
               "--k", str(args.k), "--batch-size", str(args.batch_size), "--autocast", args.autocast,
               "--factory", args.factory, "--passage-max-length", str(args.passage_max_length),
               "--threads", str(args.threads), "--seed", str(args.seed)]
        bc.log(f"[scaling] {n} passages in a child process")
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            raise SystemExit(f"child for {n} passages failed ({proc.returncode})")
        children.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        c = children[-1]["stages"]
        bc.log(f"  encode {c['encode']['s']:.1f}s  index {c['index']['s']:.2f}s  search {c['search']['s']:.2f}s  "
               f"load={bc.load_avg()}")
        if n != args.sizes[-1]:
            import shutil

            shutil.rmtree(paths[n].parent, ignore_errors=True)  # keep the disk use to the largest corpus
    load.mark()

    rows = summarise(children)
    ns = [r["passages"] for r in rows]
    slopes = {
        f"{name}_{kind}": (bc.rnd(s, 3) if (s := slope(ns, [r[f"{name}_{kind}"] for r in rows])) is not None else None)
        for name in ("encode", "index", "search", "total")
        for kind in ("s", "cpu_s")
    }
    print_table(rows)
    print(f"\nlog-log slopes (1.0 = linear): {json.dumps(slopes)}")
    plot_path = None
    if args.out:
        plot_path = str(plot(rows, Path(args.out)))
        print(f"plot: {plot_path}")
    result = {
        "bench": "scaling",
        "sizes": ns,
        "queries": args.queries,
        "k": args.k,
        "batch_size": args.batch_size,
        "autocast": args.autocast,
        "factory": args.factory,
        "passage_max_length": args.passage_max_length,
        "words_per_passage": [args.min_words, args.max_words],
        "seed": args.seed,
        "model": model,
        "rows": rows,
        "slopes": slopes,
        "generate_s": bc.rnd(generate_s, 1),
        "plot": plot_path,
        "load": load.summary(),
        "machine": info,
        "wall_s": bc.rnd(time.perf_counter() - start_all, 1),
    }
    bc.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
