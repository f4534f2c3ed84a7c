#!/usr/bin/env python
"""Corpus encoding: rocketkd's ``encode_corpus`` vs ``SentenceTransformer.encode``, same model, texts and max length.

* **Throughput** (passages/s): the packaged all-MiniLM-L6-v2 (max length 256, its folder's setting, for both) on the
  real cranfield passages. The corpus is shuffled (seeded) and split into ``--reps`` disjoint parts; round r encodes
  part r with each system in turn (default 3 rounds) (rocketkd with its defaults -- length-sorted chunks, dynamic padding, batch 128,
  bf16 autocast where the CPU has native bf16 --, sentence-transformers with its defaults -- batch 32, fp32 --, and
  rocketkd with autocast off), so the rounds together cover the whole corpus once per system and contention hits
  every system alike. Medians over the rounds.
* **Achieved GFLOP/s** from the token counts of the batches each system actually runs (rebuilt from its sort and
  batch size): "executed" counts the padded tokens the hardware computes, "useful" only the real tokens.
  FLOPs per sequence = 2 x (weights of the encoder's Linear layers) x tokens + 4 x layers x hidden x length^2
  (QK^T and attention x V); the embedding lookups and the pooler are not counted. Compared with a torch matmul peak
  (2048^3 ``torch.mm``, fp32 and bf16) measured between the rounds, under the same load.
* **Quality**: nDCG@10 on the cranfield test split with the fp32 and the default (bf16) embeddings of those rounds
  (queries encoded at the same precision), exact search.
* **Memory**: peak RSS of ``encode_corpus`` (defaults) over a synthetic corpus of ``--mem-scale`` x cranfield vs 1x
  (texts of the real passages' word counts, words resampled from cranfield), each in a fresh child process: the rise
  of VmHWM (peak RSS, reset through /proc/self/clear_refs just before encoding) and of sampled RssAnon (anonymous
  memory, i.e. not the memory-mapped corpus) over the RSS just before encoding. By default the children use the
  model cut to its first ``--mem-layers`` transformer layer(s): in inference each layer's activations are freed
  before the next layer runs, so the per-batch peak is the same as the full model's, and the 10x corpus costs minutes
  instead of ten (``--mem-layers 0`` = the full model).

* **Devices** (``--device``, default cpu): rocketkd's model and the SentenceTransformer run on the same device. On
  cuda rocketkd's default autocast resolves to bf16 and sentence-transformers runs under the same bf16 autocast
  (``--peer-autocast``; on cpu the peer keeps its fp32 default as before), the fp32 rows are rocketkd and
  sentence-transformers with autocast off (``st_fp32``), every round is bracketed by ``torch.cuda.synchronize()``,
  and the CPU matmul peak (GFLOP/s) is not measured. The memory children always run on the CPU (RSS; use
  ``--skip-memory`` on a GPU machine).
* **MFU** (``mfu`` in the JSON line; on cuda by default, on cpu with ``--matmul-n``): achieved TFLOP/s of each system
  with FLOPs = 2 x non-embedding parameters x tokens (forward only), counted both over the **real** (non-padding)
  tokens and over the **padded** tokens of each system's batches, divided by a bf16 matmul peak measured on the
  same device in this run (``--matmul-n`` cubed ``torch.matmul``, 3 warm-ups, mean of ``--matmul-reps`` products,
  measured before and after the rounds; the higher is the peak).

* **Equal precision** (``--peer-autocast bf16``): sentence-transformers runs under the same bf16 autocast as
  rocketkd's default and ``st_fp32`` joins the rounds, so one run gives both ratios at equal precision:
  ``ratio_equal_bf16`` (both bf16) and ``ratio_fp32`` (both fp32). ``padding_fraction`` is the share of each system's
  computed tokens that are padding, from the batches each system forms (rocketkd: token-count sort and token budget,
  :func:`rocketkd.models.batching.token_batches`; sentence-transformers: character sort, batches of 32).

The last line of stdout is one JSON object; ``ratio`` is rocketkd / sentence-transformers passages/s (defaults;
on cuda both bf16). ``matmul_peak_tflops`` and ``mfu`` are null without a matmul peak (cpu default).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

bc.setup_env()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bc.add_common_args(p, reps=3)
    p.add_argument(
        "--data", default=str(bc.REPO / "data" / "cranfield"), help="BEIR collection (default data/cranfield)"
    )
    bc.add_model_arg(p, "the encoder")
    bc.add_peer_autocast_arg(p, "sentence-transformers' encode")
    p.add_argument(
        "--passages", type=int, default=None, help="time only N passages (default: the whole corpus)"
    )
    p.add_argument("--skip-fp32", action="store_true", help="do not time rocketkd with autocast off")
    p.add_argument("--skip-quality", action="store_true", help="no nDCG@10 comparison")
    p.add_argument("--skip-memory", action="store_true", help="no memory measurement")
    p.add_argument("--mem-scale", type=int, default=10, help="synthetic corpus size in corpora (default 10)")
    p.add_argument(
        "--mem-layers",
        type=int,
        default=1,
        help="transformer layers kept in the memory children (0 = all; default 1)",
    )
    p.add_argument(
        "--mem-malloc-fix",
        action="store_true",
        help="run the memory children with MALLOC_MMAP_THRESHOLD_=1048576 (glibc: activation-sized buffers "
        "are mmapped and returned to the system when freed) to show the effect of allocator retention",
    )
    p.add_argument("--only-memory", action="store_true", help="only the memory measurement")
    p.add_argument(
        "--mem-child", default=None, help=argparse.SUPPRESS
    )  # internal: run one memory measurement
    args = p.parse_args(argv)
    if args.quick:
        args.passages = min(args.passages or 24, 24)
        args.mem_scale = min(args.mem_scale, 2)
    args.reps = args.reps or (2 if args.quick else 3)
    return args


# ----------------------------------------------------------------------------------------------------------------
# FLOP accounting


def model_shape(encoder) -> dict:
    import torch

    linear = sum(
        m.weight.numel()
        for n, m in encoder.named_modules()
        if isinstance(m, torch.nn.Linear) and "pooler" not in n
    )
    cfg = encoder.config
    return {
        "linear_params": int(linear),
        "layers": int(cfg.num_hidden_layers),
        "hidden": int(cfg.hidden_size),
    }


def seq_flops(length: int, shape: dict) -> float:
    return 2.0 * shape["linear_params"] * length + 4.0 * shape["layers"] * shape["hidden"] * length * length


def batch_flops(batches, lengths, shape: dict) -> tuple[float, float, int, int]:
    """(executed FLOPs, useful FLOPs, executed tokens, useful tokens) of ``batches`` (lists of row positions), each
    padded to its longest."""
    executed = useful = 0.0
    tok_exec = tok_use = 0
    for rows in batches:
        lens = [int(lengths[i]) for i in rows]
        pad = max(lens)
        executed += len(lens) * seq_flops(pad, shape)
        useful += sum(seq_flops(x, shape) for x in lens)
        tok_exec += len(lens) * pad
        tok_use += sum(lens)
    return executed, useful, tok_exec, tok_use


def rocketkd_batches(lengths, batch_size: int, max_tokens: int) -> list[list[int]]:
    """encode_corpus's batches: rows sorted by token count, longest first (stable), cut by rows and by padded tokens
    with the same function the encoder uses."""
    import numpy as np

    from rocketkd.models.batching import token_batches

    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    return [order[b].tolist() for b in token_batches(lengths[order], batch_size, max_tokens)]


def st_batches(texts, batch_size: int = 32) -> list[list[int]]:
    """SentenceTransformer.encode's batches: np.argsort of minus the character length (its default sort)."""
    import numpy as np

    order = np.argsort([-len(t) for t in texts]).tolist()
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


# ----------------------------------------------------------------------------------------------------------------
# memory


def synthetic_corpus(real_texts, scale: int, folder: Path, seed: int) -> Path:
    """``scale`` x len(real_texts) passages: passage i has the word count of real passage i mod N, words drawn
    uniformly from all cranfield word occurrences (so the unigram distribution, hence token lengths, match)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pool = np.array([w for t in real_texts for w in t.split()] or ["empty"], dtype=object)
    counts = [len(t.split()) for t in real_texts]
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w", encoding="utf-8") as f:
        for i in range(scale * len(real_texts)):
            n = max(counts[i % len(counts)], 1)
            text = " ".join(pool[rng.integers(0, len(pool), n)].tolist())
            f.write(json.dumps({"_id": f"s{i}", "title": "", "text": text}) + "\n")
    return folder


def mem_child(args) -> None:
    """One fresh process: load model + memory-mapped corpus, then measure encode_corpus alone."""
    import gc

    from rocketkd.data.corpus import Corpus
    from rocketkd.models import DualEncoder, resolve_model_path
    from rocketkd.search.encode import CHUNK_BATCHES, encode_corpus

    folder = Path(args.mem_child)
    model = DualEncoder.from_pretrained(resolve_model_path(args.model))
    layers = getattr(getattr(model.passage_encoder, "encoder", None), "layer", None)
    kept = model.passage_encoder.config.num_hidden_layers
    if args.mem_layers and layers is not None and args.mem_layers < len(layers):
        model.passage_encoder.encoder.layer = layers[: args.mem_layers]
        model.passage_encoder.config.num_hidden_layers = kept = args.mem_layers
    corpus = Corpus.from_beir(folder / "corpus.jsonl", cache_dir=folder / "cache")
    encode_corpus(model, corpus, rows=list(range(min(8, len(corpus)))), show_progress=False)  # warm-up
    gc.collect()
    before = bc.proc_status_kib()
    reset = bc.reset_peak_rss()
    start = time.perf_counter()
    with bc.AnonPeakSampler() as sampler:
        emb = encode_corpus(model, corpus, show_progress=False)
    seconds = time.perf_counter() - start
    after = bc.proc_status_kib()
    chunk_texts = corpus.texts(list(range(min(len(corpus), CHUNK_BATCHES * 128))))
    print(
        json.dumps(
            {
                "passages": len(corpus),
                "layers": kept,
                "emb_bytes": int(emb.nbytes),
                "before_kib": before,
                "after_kib": after,
                "peak_reset": reset,
                "peak_anon_kib": sampler.peak,
                "seconds": round(seconds, 2),
                "first_chunk_text_bytes": int(sum(sys.getsizeof(t) for t in chunk_texts)),
            }
        )
    )


def memory_bench(args, real_texts, work: Path) -> dict:
    from rocketkd.data.corpus import Corpus

    out: dict = {"scales": {}, "layers_kept": None, "malloc_fix": bool(args.mem_malloc_fix)}
    for scale in (1, args.mem_scale):
        folder = synthetic_corpus(real_texts, scale, work / f"synthetic-{scale}x", args.seed + scale)
        Corpus.from_beir(folder / "corpus.jsonl", cache_dir=folder / "cache")  # build the Arrow cache here
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--mem-child",
            str(folder),
            "--mem-layers",
            str(args.mem_layers),
        ]
        if args.model:
            cmd += ["--model", args.model]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        bc.log(f"[memory] {scale}x: {scale * len(real_texts)} synthetic passages in a child process")
        env = dict(os.environ)
        if args.mem_malloc_fix:
            env["MALLOC_MMAP_THRESHOLD_"] = str(1 << 20)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        child = json.loads(proc.stdout.strip().splitlines()[-1])
        b, a = child["before_kib"], child["after_kib"]
        child["hwm_rise_mib"] = round((a["VmHWM"] - b["VmRSS"]) / 1024, 2)
        child["anon_rise_mib"] = round((child["peak_anon_kib"] - b["RssAnon"]) / 1024, 2)
        child["vmhwm_mib"] = round(a["VmHWM"] / 1024, 1)
        out["scales"][str(scale)] = child
        out["layers_kept"] = child["layers"]
        bc.log(
            f"[memory] {scale}x: peak rise {child['hwm_rise_mib']} MiB (anon {child['anon_rise_mib']} MiB), {child['seconds']}s"
        )
    s1, sk = out["scales"]["1"], out["scales"][str(args.mem_scale)]
    emb_growth = (sk["emb_bytes"] - s1["emb_bytes"]) / 2**20
    chunk_growth = (sk["first_chunk_text_bytes"] - s1["first_chunk_text_bytes"]) / 2**20
    out.update(
        {
            "scale": args.mem_scale,
            "embedding_growth_mib": round(emb_growth, 2),
            "chunk_text_growth_mib": round(chunk_growth, 2),
            "hwm_growth_mib": round(sk["hwm_rise_mib"] - s1["hwm_rise_mib"], 2),
            "anon_growth_mib": round(sk["anon_rise_mib"] - s1["anon_rise_mib"], 2),
        }
    )
    # Holds when the anonymous-memory growth is the embedding matrix plus at most the texts of one chunk (bounded by
    # the chunk size, not by the corpus) and 4 MiB of allocator noise.
    out["residual_anon_mib"] = round(out["anon_growth_mib"] - emb_growth, 2)
    out["target_holds"] = out["anon_growth_mib"] <= emb_growth + max(chunk_growth, 0) + 4.0
    return out


# ----------------------------------------------------------------------------------------------------------------


def peer_dtype(choice: str, device, rocketkd_default):
    """The autocast dtype of the sentence-transformers side (see --peer-autocast)."""
    import torch

    if choice == "no":
        return None
    if choice == "bf16":
        return torch.bfloat16
    return rocketkd_default if device.type == "cuda" else None


def main(argv=None) -> dict:
    args = parse_args(argv)
    bc.set_threads(args.threads)
    if args.mem_child:
        mem_child(args)
        return {}
    device = bc.resolve_device(args.device)
    import numpy as np
    from sentence_transformers import SentenceTransformer

    from rocketkd.data.formats import load_retrieval_data
    from rocketkd.evaluation.metrics import evaluate_run
    from rocketkd.models import DualEncoder, resolve_model_path
    from rocketkd.models.batching import default_max_tokens
    from rocketkd.search.encode import encode_corpus, encode_queries, resolve_autocast
    from rocketkd.search.index import DenseIndex

    info = bc.machine_info(device)
    bc.log(f"device: {device} (--device {args.device})")
    load = bc.LoadLog()
    peaks = bc.PeakTracker() if device.type == "cpu" else None  # CPU GFLOP/s peak (fp32, bf16): cpu runs only
    mpeak = bc.MatmulPeak(device, args.matmul_n, args.matmul_reps)  # bf16 peak of the MFU figures
    start_all = time.perf_counter()
    work = bc.work_dir("rocketkd-bench-encode-")

    model_path = resolve_model_path(args.model)
    data = load_retrieval_data(args.data, cache_dir=work / "cache")
    corpus = data.corpus
    if args.only_memory:
        real_texts = corpus.texts(list(range(min(len(corpus), 48 if args.quick else len(corpus)))))
        memory = memory_bench(args, real_texts, work)
        print(
            bc.md_table(
                [
                    "corpus",
                    "passages",
                    "peak RSS MiB",
                    "peak rise MiB",
                    "anon rise MiB",
                    "embeddings MiB",
                    "encode s",
                ],
                [
                    [
                        f"{k}x",
                        v["passages"],
                        v["vmhwm_mib"],
                        v["hwm_rise_mib"],
                        v["anon_rise_mib"],
                        round(v["emb_bytes"] / 2**20, 2),
                        v["seconds"],
                    ]
                    for k, v in memory["scales"].items()
                ],
            )
        )
        result = {
            "bench": "encode-memory",
            "quick": args.quick,
            "device": "cpu",
            "requested_device": args.device,
            "ratio": None,
            "memory": memory,
            "targets": {"memory_embedding_only": memory["target_holds"]},
            "machine": info,
            "wall_s": bc.rnd(time.perf_counter() - start_all, 1),
        }
        bc.emit(result, args.json_out)
        return result
    model = DualEncoder.from_pretrained(model_path).to(device)
    st = SentenceTransformer(model_path, device=str(device))
    if st.max_seq_length != model.passage_max_length:
        # e.g. a plain transformers folder: ST takes the tokenizer's limit (512), rocketkd 256; time equal work
        bc.log(f"max lengths differ (ST {st.max_seq_length}, rocketkd {model.passage_max_length}): ST set to rocketkd's")
        st.max_seq_length = model.passage_max_length
    default_dtype = resolve_autocast("auto", device)
    default_name = bc.dtype_name(default_dtype)
    st_dtype = peer_dtype(args.peer_autocast, device, default_dtype)
    st_name = bc.dtype_name(st_dtype)
    shape = model_shape(model.passage_encoder)
    ne_params = bc.non_embedding_params(model.passage_encoder)

    n = min(args.passages or len(corpus), len(corpus))
    rng = np.random.default_rng(args.seed)
    perm = rng.permutation(len(corpus))[:n]
    parts = [np.sort(p) for p in np.array_split(perm, args.reps)]
    part_texts = [corpus.texts(p) for p in parts]
    max_len = model.passage_max_length
    bc.log(
        f"encoding {n} passages of {args.data} in {args.reps} rounds on {device}; rocketkd default autocast = "
        f"{default_name}, sentence-transformers {st_name}; threads = {info['torch_threads']}; load = {bc.load_avg()}"
    )

    def st_encode(texts, dtype):
        with bc.autocast_context(device, dtype):
            return st.encode(texts)

    # warm-up (thread pools, kernels; on cuda a full batch of each, for the kernel choices), untimed
    warm_rows = list(range(min(8 if device.type == "cpu" else 256, len(corpus))))
    few = corpus.texts(warm_rows)
    encode_corpus(model, corpus, rows=warm_rows, show_progress=False)
    encode_corpus(model, corpus, rows=warm_rows, show_progress=False, autocast="no")
    st_encode(few, st_dtype)
    if st_dtype is not None:
        st_encode(few, None)
    bc.synchronize(device)
    if peaks is not None:
        peaks.measure()
    mpeak.measure()

    systems = ["rocketkd", "st"] + ([] if args.skip_fp32 else ["rocketkd_fp32"])
    if st_dtype is not None and not args.skip_fp32:
        systems.append("st_fp32")  # equal precision for rocketkd_fp32
    times = {s: [] for s in systems}
    embs = {s: [] for s in systems}
    for r, (rows, texts) in enumerate(zip(parts, part_texts)):
        fns = {
            "rocketkd": lambda rows=rows: encode_corpus(model, corpus, rows=rows, show_progress=False),
            "st": lambda texts=texts: st_encode(texts, st_dtype),
            "rocketkd_fp32": lambda rows=rows: encode_corpus(
                model, corpus, rows=rows, show_progress=False, autocast="no"
            ),
            "st_fp32": lambda texts=texts: st_encode(texts, None),
        }
        for s in systems:
            load.mark()
            bc.synchronize(device)
            t0 = time.perf_counter()
            out = fns[s]()
            bc.synchronize(device)
            times[s].append(time.perf_counter() - t0)
            embs[s].append(np.asarray(out, dtype=np.float32))
        bc.log(
            f"  round {r + 1}/{args.reps} ({len(rows)} passages): "
            + "  ".join(f"{s}={times[s][-1]:.2f}s" for s in systems)
            + f"  load={bc.load_avg()}"
        )
        if peaks is not None:
            peaks.measure()
    mpeak.measure()

    # FLOPs from the real token counts of each part
    tok = model.tokenizer
    systems_flops = {s: {"executed": [], "useful": [], "tok_exec": [], "tok_use": []} for s in systems}
    budget = default_max_tokens(device)
    for texts in part_texts:
        lengths = [len(x) for x in tok(list(texts), truncation=True, max_length=max_len)["input_ids"]]
        for s in systems:
            batches = st_batches(texts) if s.startswith("st") else rocketkd_batches(lengths, 128, budget)
            e, u, te, tu = batch_flops(batches, lengths, shape)
            for key, v in (("executed", e), ("useful", u), ("tok_exec", te), ("tok_use", tu)):
                systems_flops[s][key].append(v)

    # padding of one whole-corpus encode (what `rocketkd index` runs): rocketkd sorts every row by token count
    all_texts = corpus.texts(list(range(len(corpus))))
    all_lengths = [len(x) for x in tok(all_texts, truncation=True, max_length=max_len)["input_ids"]]
    whole_padding = {}
    for name, batches in (("rocketkd", rocketkd_batches(all_lengths, 128, budget)), ("st", st_batches(all_texts))):
        _, _, te, tu = batch_flops(batches, all_lengths, shape)
        whole_padding[name] = bc.rnd(1 - tu / te, 4)

    peak = peaks.summary() if peaks is not None else None
    peak_tflops = mpeak.tflops
    dtypes = {"rocketkd": default_name, "st": st_name, "rocketkd_fp32": "fp32", "st_fp32": "fp32"}
    figures: dict = {}
    for s in systems:
        dtype = dtypes[s]
        rates = [len(p) / t for p, t in zip(parts, times[s])]
        gf_exec = [f / t / 1e9 for f, t in zip(systems_flops[s]["executed"], times[s])]
        gf_use = [f / t / 1e9 for f, t in zip(systems_flops[s]["useful"], times[s])]
        pk = peak.get(dtype, peak["fp32"])["median_gflops"] if peak is not None else None
        # MFU: 2 x non-embedding params x tokens (forward), per round, medians over the rounds
        tf_real = [bc.tflops(bc.forward_flops(ne_params, k), t) for k, t in zip(systems_flops[s]["tok_use"], times[s])]
        tf_pad = [bc.tflops(bc.forward_flops(ne_params, k), t) for k, t in zip(systems_flops[s]["tok_exec"], times[s])]
        figures[s] = {
            "dtype": dtype,
            "passages_per_s": bc.rnd(bc.median(rates), 2),
            "best_passages_per_s": bc.rnd(max(rates), 2),
            "seconds": [bc.rnd(t, 3) for t in times[s]],
            "gflops_executed": bc.rnd(bc.median(gf_exec), 1),
            "gflops_useful": bc.rnd(bc.median(gf_use), 1),
            "matmul_peak_gflops": pk,
            "pct_peak_executed": bc.rnd(100 * bc.median(gf_exec) / pk, 1) if pk else None,
            "pct_peak_useful": bc.rnd(100 * bc.median(gf_use) / pk, 1) if pk else None,
            "padding_overhead_pct": bc.rnd(
                100 * (sum(systems_flops[s]["tok_exec"]) / sum(systems_flops[s]["tok_use"]) - 1), 1
            ),
            # share of the computed tokens that are padding
            "padding_fraction": bc.rnd(1 - sum(systems_flops[s]["tok_use"]) / sum(systems_flops[s]["tok_exec"]), 4),
            "tokens_real": int(sum(systems_flops[s]["tok_use"])),
            "tokens_padded": int(sum(systems_flops[s]["tok_exec"])),
            "tflops_real": bc.rnd(bc.median(tf_real), 4),
            "tflops_padded": bc.rnd(bc.median(tf_pad), 4),
            "mfu_real": bc.rnd(bc.median(tf_real) / peak_tflops, 4) if peak_tflops else None,
            "mfu_padded": bc.rnd(bc.median(tf_pad) / peak_tflops, 4) if peak_tflops else None,
        }
    ratio = figures["rocketkd"]["passages_per_s"] / figures["st"]["passages_per_s"]
    ratio_best = figures["rocketkd"]["best_passages_per_s"] / figures["st"]["best_passages_per_s"]
    fp32_peer = "st_fp32" if "st_fp32" in figures else "st"  # st is fp32 itself unless it runs under autocast
    ratio_fp32 = (
        (figures["rocketkd_fp32"]["passages_per_s"] / figures[fp32_peer]["passages_per_s"])
        if "rocketkd_fp32" in figures
        else None
    )
    mfu = (
        {s: {"real": f["mfu_real"], "padded": f["mfu_padded"]} for s, f in figures.items()}
        if peak_tflops
        else None
    )

    # quality: nDCG@10 fp32 vs default encoding (needs the whole corpus)
    quality = None
    if not args.skip_quality and not args.skip_fp32 and n == len(corpus):
        split = "test" if "test" in data.qrels else next(iter(data.qrels))
        qrels = data.qrels[split]
        qids = list(qrels)
        qtexts = [data.queries[q] for q in qids]
        pids = [corpus.ids[i] for i in range(len(corpus))]
        quality = {"split": split, "queries": len(qids)}
        for s, autocast in (("rocketkd_fp32", "no"), ("rocketkd", "auto"), ("st", None)):
            emb = np.empty((len(corpus), model.hidden_size), dtype=np.float32)
            for rows, e in zip(parts, embs[s]):
                emb[rows] = e
            if autocast is None:
                qemb = np.asarray(
                    st_encode(qtexts, st_dtype), dtype=np.float32
                )  # ST truncates queries at 256, as it would
            else:
                qemb = encode_queries(model, qtexts, autocast=autocast)
            res = DenseIndex.from_embeddings(emb, pids).search(qemb, 100)
            run = {q: dict(zip(ids, sc.tolist())) for q, ids, sc in zip(qids, res.ids, res.scores)}
            quality[f"ndcg10_{s}"] = bc.rnd(evaluate_run(run, qrels, ["nDCG@10"]).mean["nDCG@10"], 4)
            if s == "rocketkd":
                ref = np.empty_like(emb)
                for rows, e in zip(parts, embs["rocketkd_fp32"]):
                    ref[rows] = e
                quality["min_cosine_default_vs_fp32"] = bc.rnd(float((emb * ref).sum(1).min()), 5)
        quality["delta_default_minus_fp32"] = bc.rnd(
            quality["ndcg10_rocketkd"] - quality["ndcg10_rocketkd_fp32"], 4
        )
        quality["target_holds"] = abs(quality["delta_default_minus_fp32"]) <= 0.005

    memory = None
    if not args.skip_memory:
        real_texts = corpus.texts(list(range(min(len(corpus), 48 if args.quick else len(corpus)))))
        memory = memory_bench(args, real_texts, work)

    pct_default = figures["rocketkd"]["pct_peak_useful"]
    pct_exec = figures["rocketkd"]["pct_peak_executed"]
    result = {
        "bench": "encode",
        "quick": args.quick,
        "device": device.type,
        "requested_device": args.device,
        "passages": n,
        "rocketkd_passages_per_s": figures["rocketkd"]["passages_per_s"],
        "st_passages_per_s": figures["st"]["passages_per_s"],
        "ratio": bc.rnd(ratio),
        "ratio_best_round": bc.rnd(ratio_best),
        "ratio_fp32": None if ratio_fp32 is None else bc.rnd(ratio_fp32),
        "ratio_fp32_peer": fp32_peer if ratio_fp32 is not None else None,
        # equal precision, same run: both fp32 (ratio_fp32), and both under bf16 autocast (None unless both are)
        "ratio_equal_bf16": bc.rnd(ratio) if default_name == st_name == "bf16" else None,
        "padding_fraction": {s: f["padding_fraction"] for s, f in figures.items()},
        "padding_fraction_whole_corpus": whole_padding,
        "rocketkd_dtype": default_name,
        "st_dtype": st_name,
        "matmul_peak_tflops": bc.rnd(peak_tflops, 2),
        "mfu": mfu,
        "mfu_model": {
            "non_embedding_params": ne_params,
            "flops": "2 x non_embedding_params x tokens (forward only; attention L^2 terms not counted)",
            "tokens": "real = non-padding tokens; padded = tokens of each system's padded batches (what runs)",
            "rate": "median over the rounds of flops / round seconds; mfu = TFLOP/s / matmul_peak_tflops",
        },
        "matmul_peak_device": mpeak.summary(),
        "targets": {
            "speed_ge_1.5x": ratio >= 1.5,
            "pct_peak_ge_70_useful": None if pct_default is None else pct_default >= 70,
            "pct_peak_ge_70_executed": None if pct_exec is None else pct_exec >= 70,
            "ndcg_within_0.005": None if quality is None else quality["target_holds"],
            "memory_embedding_only": None if memory is None else memory["target_holds"],
        },
        "systems": figures,
        "matmul_peak": peak,
        "flop_model": {**shape, "counted": "2*linear_params*tokens + 4*layers*hidden*len^2 per sequence"},
        "quality": quality,
        "memory": memory,
        "load": load.summary(),
        "machine": info,
        "wall_s": bc.rnd(time.perf_counter() - start_all, 1),
    }

    rows = [
        [
            s,
            f["dtype"],
            f["passages_per_s"],
            f["best_passages_per_s"],
            f["gflops_useful"],
            f["gflops_executed"],
            f["matmul_peak_gflops"],
            f["pct_peak_useful"],
            f["pct_peak_executed"],
            f["padding_overhead_pct"],
            f["tflops_real"],
            f["mfu_real"],
            f["mfu_padded"],
        ]
        for s, f in figures.items()
    ]
    print(
        bc.md_table(
            [
                "system",
                "dtype",
                "passages/s (median)",
                "best round",
                "GFLOP/s useful",
                "GFLOP/s executed",
                "matmul peak GFLOP/s",
                "% peak useful",
                "% peak executed",
                "padding %",
                "TFLOP/s real (2N/token)",
                "MFU real",
                "MFU padded",
            ],
            rows,
        )
    )
    print(
        f"\nratio rocketkd (defaults) / sentence-transformers = {ratio:.3f} (medians), {ratio_best:.3f} (best rounds)"
        + (f"; rocketkd fp32 / {fp32_peer} = {ratio_fp32:.3f}" if ratio_fp32 is not None else "")
    )
    if peak_tflops:
        print(f"bf16 matmul peak on {device}: {peak_tflops:.1f} TFLOP/s (MFU = achieved / this)")
    if quality:
        print(
            f"nDCG@10 ({quality['split']}, {quality['queries']} q): fp32 {quality['ndcg10_rocketkd_fp32']}, "
            f"default {quality['ndcg10_rocketkd']} (delta {quality['delta_default_minus_fp32']:+}), ST {quality['ndcg10_st']}"
        )
    if memory:
        print(
            bc.md_table(
                [
                    "corpus",
                    "passages",
                    "peak RSS MiB",
                    "peak rise MiB",
                    "anon rise MiB",
                    "embeddings MiB",
                    "encode s",
                ],
                [
                    [
                        f"{k}x",
                        v["passages"],
                        v["vmhwm_mib"],
                        v["hwm_rise_mib"],
                        v["anon_rise_mib"],
                        round(v["emb_bytes"] / 2**20, 2),
                        v["seconds"],
                    ]
                    for k, v in memory["scales"].items()
                ],
            )
        )
        print(
            f"growth {memory['scale']}x vs 1x: anon {memory['anon_growth_mib']} MiB, peak RSS {memory['hwm_growth_mib']} MiB; "
            f"embedding matrix {memory['embedding_growth_mib']} MiB, one chunk of texts {memory['chunk_text_growth_mib']} MiB"
        )
    print(f"padding fraction of one whole-corpus encode: {whole_padding}")
    print(f"load average (1 min) during the run: {result['load']}")
    bc.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
