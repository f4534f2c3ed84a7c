#!/usr/bin/env python
"""Search and re-ranking throughput: rocketkd against raw faiss and sentence-transformers' CrossEncoder.

Three measurements, each rocketkd and its peer in this process on the same inputs, repetitions alternated (A, B, A,
B, ...) and summarised by medians:

1. **synthetic Flat index** (default 100k random unit vectors, 384-d, 1000 random unit queries, k=100):
   rocketkd = ``search_run`` over a ``DenseIndex`` saved and re-loaded from disk, its query encoder replaced by a
   lookup of the precomputed query vectors (so the figure is search_run's own cost: faiss + the row -> passage id
   map + the run dict); peer = ``faiss.IndexFlatIP.search`` on the same vectors (row numbers only). Also the bare
   ``DenseIndex.search`` (ids, no run dict) and the load time of the folder vs ``faiss.read_index``.
2. **real cranfield index** (packaged all-MiniLM-L6-v2, rocketkd's default encoding): the same vector-search
   comparison on the 1400 cranfield vectors with the 225 cranfield queries; and end to end from query texts:
   ``search_run`` (its own query encoding, bf16 where supported) vs ``SentenceTransformer.encode`` + ``IndexFlatIP``
   + the same run dict.
3. **re-ranking** (pairs/s): ``rerank_run`` (defaults: batch 64, bf16 autocast where supported) vs
   ``sentence_transformers.CrossEncoder.predict`` (defaults: batch 32, fp32) on the same (query, passage) pairs: the
   top ``--rerank-depth`` of the cranfield run for ``--rerank-queries`` test queries, both models loaded from the
   same saved re-ranker folder (pair max length 192 by default). The queries are split into
   ``--rerank-rounds`` groups; each round re-ranks one group with every system in turn (finer alternation than
   repeating the whole set). Optionally rocketkd at fp32 too (``--rerank-fp32``).

Devices (``--device``, default cpu): rocketkd's index searches with the ``faiss`` backend on cpu and with the
``torch`` backend on cuda (``DenseIndex(backend="torch")``: exact chunked matmul + top-k on the GPU,
:func:`rocketkd.search.topk.torch_topk_search`; the corpus is copied to the GPU by the first, untimed, search); the peer of
the vector searches stays raw faiss-cpu ``IndexFlatIP`` (the faiss here has no GPU support) on the same vectors.
Whether the two agree is reported exactly (``same_results``: same ids in the same order) and as the mean top-k id
overlap (``topk_id_agreement``) and top-1 agreement, since GPU float rounding can reorder near-tied scores. On cuda
the encoder, the re-ranker, the SentenceTransformer and the CrossEncoder all run on the GPU, the peer's encoding and
re-ranking under the autocast dtype rocketkd's ``autocast="auto"`` takes there (bf16; ``--peer-autocast``), and
every timed call is bracketed by ``torch.cuda.synchronize()``.

The last line of stdout is one JSON object; ``ratio`` there is rocketkd / peer search QPS on the synthetic index
(higher is better; the target is >= 0.9, "within 10% of raw faiss").
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

bc.setup_env()


class VectorLookupEncoder:
    """Stands in for the query encoder of a DenseIndex: "encodes" a query id by looking up its precomputed vector.

    It makes ``search_run`` measurable on vectors alone (no text encoding), through the same code path.
    """

    def __init__(self, vectors, names) -> None:
        import torch

        self.vectors = vectors
        self.row = {name: i for i, name in enumerate(names)}
        self.hidden_size = int(vectors.shape[1])
        self.device = torch.device("cpu")
        self.similarity = "dot"

    def encode(self, texts, **_):
        return self.vectors[[self.row[t] for t in texts]]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bc.add_common_args(p, reps=5, mfu=False)
    p.add_argument("--vectors", type=int, default=100_000, help="synthetic index size (default 100000)")
    p.add_argument("--queries", type=int, default=1_000, help="synthetic queries (default 1000)")
    p.add_argument("--dim", type=int, default=384, help="synthetic dimension (default 384, MiniLM's)")
    p.add_argument("--k", type=int, default=100, help="neighbours per query (default 100)")
    p.add_argument(
        "--data", default=str(bc.REPO / "data" / "cranfield"), help="collection for the real index"
    )
    bc.add_model_arg(p, "the encoder and the re-ranker")
    p.add_argument(
        "--search-backend",
        choices=("auto", "faiss", "torch"),
        default="auto",
        help="rocketkd's DenseIndex backend: auto (default) = torch (exact top-k on the GPU) on cuda, faiss on cpu; "
        "torch on cpu runs rocketkd.search.topk.torch_topk_search on the CPU",
    )
    bc.add_peer_autocast_arg(p, "SentenceTransformer.encode / CrossEncoder.predict")
    p.add_argument(
        "--passages", type=int, default=None, help="index only the first N passages of --data (default all)"
    )
    p.add_argument(
        "--text-queries", type=int, default=None, help="query texts searched end to end (default all)"
    )
    p.add_argument("--rerank-queries", type=int, default=24, help="test queries re-ranked (default 24)")
    p.add_argument(
        "--rerank-depth", type=int, default=30, help="passages re-ranked per query (default 30, demo.yaml)"
    )
    p.add_argument(
        "--rerank-rounds",
        type=int,
        default=6,
        help="the re-ranked queries are split into this many groups, one per alternated round (default 6)",
    )
    p.add_argument("--reranker-max-length", type=int, default=192, help="pair max length (default 192)")
    p.add_argument(
        "--rerank-fp32", action="store_true", help="also time rerank_run with autocast off (equal precision)"
    )
    p.add_argument("--skip-real", action="store_true", help="skip the cranfield index and the re-ranking")
    p.add_argument("--skip-rerank", action="store_true", help="skip the re-ranking")
    args = p.parse_args(argv)
    if args.quick:
        args.vectors, args.queries, args.k = min(args.vectors, 5_000), min(args.queries, 50), min(args.k, 10)
        args.rerank_queries, args.rerank_depth, args.rerank_rounds = 2, 4, 1
        args.passages, args.text_queries = min(args.passages or 64, 64), min(args.text_queries or 16, 16)
    args.reps = args.reps or (2 if args.quick else 5)
    return args


def run_dict(qids, ids_of_rows, scores, rows):
    """The run search_run returns, built from raw faiss output (for the end-to-end peer)."""
    out = {}
    for qid, s_row, r_row in zip(qids, scores, rows):
        keep = r_row >= 0
        out[qid] = {ids_of_rows[r]: float(s) for r, s in zip(r_row[keep].tolist(), s_row[keep].tolist())}
    return out


def vector_search_bench(args, tag, emb, ids, queries, work, load, results, device=None, backend="auto") -> dict:
    """search_run (vectors looked up) and DenseIndex.search vs IndexFlatIP.search; folder load vs read_index."""
    import faiss
    import numpy as np

    from rocketkd.search.index import DenseIndex, search_run

    folder = Path(work) / f"index-{tag}"
    DenseIndex.from_embeddings(emb, ids).save(folder, save_encoder=False)
    qnames = [f"q{i}" for i in range(len(queries))]
    qtexts = {name: name for name in qnames}  # search_run's "texts" are the lookup keys

    load_times, loaded = bc.interleaved(
        {
            "rocketkd_load": lambda: DenseIndex.load(folder, backend=backend),
            "faiss_read_index": lambda: faiss.read_index(str(folder / "index.faiss")),
        },
        args.reps,
        warmup=1,
        load=load,
        verbose=False,
    )
    index = loaded["rocketkd_load"]
    index.attach_encoder(
        VectorLookupEncoder(queries, qnames)
    )  # vectors of unknown origin: only the dim is checked
    raw = faiss.IndexFlatIP(emb.shape[1])
    raw.add(np.ascontiguousarray(emb, dtype=np.float32))
    k = min(args.k, len(ids))

    bc.log(f"[{tag}] search {len(queries)} queries, k={k}, {len(ids)} vectors, rocketkd backend {backend}")
    times, last = bc.interleaved(
        {
            "rocketkd_search_run": lambda: search_run(index, qtexts, k),
            "faiss_search": lambda: raw.search(queries, k),
            "rocketkd_DenseIndex_search": lambda: index.search(queries, k),
        },
        args.reps,
        warmup=1,
        load=load,
        device=device,
    )
    # same neighbours (ids and order) from both
    scores, rows = last["faiss_search"]
    got = last["rocketkd_search_run"]
    faiss_ids = [[ids[r] for r in rows[i] if r >= 0] for i in range(len(qnames))]
    same = all(list(got[q]) == faiss_ids[i] for i, q in enumerate(qnames))
    topk_agree, top1_agree = bc.topk_agreement([list(got[q]) for q in qnames], faiss_ids, k)
    nq = len(queries)
    out = {
        "vectors": len(ids),
        "queries": nq,
        "k": k,
        "rocketkd_backend": backend,
        "rocketkd_qps": bc.rnd(nq / bc.median(times["rocketkd_search_run"]), 1),
        "faiss_qps": bc.rnd(nq / bc.median(times["faiss_search"]), 1),
        "rocketkd_index_search_qps": bc.rnd(nq / bc.median(times["rocketkd_DenseIndex_search"]), 1),
        "rocketkd_best_qps": bc.rnd(nq / min(times["rocketkd_search_run"]), 1),
        "faiss_best_qps": bc.rnd(nq / min(times["faiss_search"]), 1),
        "rocketkd_load_ms": bc.rnd(1000 * bc.median(load_times["rocketkd_load"]), 2),
        "faiss_read_index_ms": bc.rnd(1000 * bc.median(load_times["faiss_read_index"]), 2),
        "same_results": same,
        "topk_id_agreement": bc.rnd(topk_agree, 5),
        "top1_agreement": bc.rnd(top1_agree, 5),
        "seconds": {n: [bc.rnd(t, 5) for t in v] for n, v in times.items()},
    }
    out["ratio"] = bc.rnd(out["rocketkd_qps"] / out["faiss_qps"])
    out["index_search_ratio"] = bc.rnd(out["rocketkd_index_search_qps"] / out["faiss_qps"])
    results[tag] = out
    return out


def main(argv=None) -> dict:
    args = parse_args(argv)
    bc.set_threads(args.threads)
    device = bc.resolve_device(args.device)
    import numpy as np
    import torch

    from rocketkd.search.encode import resolve_autocast

    backend = args.search_backend
    if backend == "auto":  # explicit: DenseIndex's own "auto" would pick the GPU whenever one is present
        backend = "torch" if device.type == "cuda" else "faiss"
    rk_dtype = resolve_autocast("auto", device)  # what search_run / rerank_run use (autocast="auto")
    peer_dtype = {"no": None, "bf16": torch.bfloat16}.get(
        args.peer_autocast, rk_dtype if device.type == "cuda" else None
    )

    def with_peer_autocast(fn, *a):
        with bc.autocast_context(device, peer_dtype):
            return fn(*a)

    info = bc.machine_info(device)
    bc.log(f"device: {device} (--device {args.device}); rocketkd search backend {backend}")
    load = bc.LoadLog()
    results: dict = {}
    start = time.perf_counter()
    work = bc.work_dir("rocketkd-bench-search-")

    # 1. synthetic ------------------------------------------------------------------------------------------
    rng = np.random.default_rng(args.seed)
    emb = rng.standard_normal((args.vectors, args.dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    ids = [f"doc{i}" for i in range(args.vectors)]
    vector_search_bench(args, "synthetic", emb, ids, q, work, load, results, device, backend)
    del emb

    # 2. real cranfield index -------------------------------------------------------------------------------
    if not args.skip_real:
        import faiss

        from rocketkd.data.formats import load_retrieval_data
        from rocketkd.models import DualEncoder, resolve_model_path
        from rocketkd.search.encode import encode_corpus, encode_queries
        from rocketkd.search.index import DenseIndex, search_run

        model_path = resolve_model_path(args.model)
        data = load_retrieval_data(args.data, cache_dir=os.path.join(work, "cache"))
        corpus = data.corpus
        encoder = DualEncoder.from_pretrained(model_path).to(device)
        n_passages = min(args.passages or len(corpus), len(corpus))
        t0 = time.perf_counter()
        emb = encode_corpus(encoder, corpus, rows=np.arange(n_passages), show_progress=False)
        qids = list(data.queries)[: args.text_queries or None]
        qemb = encode_queries(encoder, [data.queries[x] for x in qids])
        bc.log(
            f"[real] encoded {n_passages} passages + {len(qids)} queries in {time.perf_counter() - t0:.1f}s"
        )
        pids = [corpus.ids[i] for i in range(n_passages)]
        vector_search_bench(args, "real_vectors", emb, pids, qemb, work, load, results, device, backend)

        # end to end from query texts: search_run vs ST encode + IndexFlatIP
        from sentence_transformers import SentenceTransformer

        folder = Path(work) / "index-real"
        index = DenseIndex.from_embeddings(
            emb, pids, encoder=encoder, metadata={"encoder_fingerprint": encoder.fingerprint()}
        )
        index.save(folder)
        index = DenseIndex.load(folder, encoder=encoder, backend=backend)
        st = SentenceTransformer(model_path, device=str(device))
        st.max_seq_length = encoder.query_max_length  # the same query truncation as rocketkd's
        raw = faiss.IndexFlatIP(emb.shape[1])
        raw.add(np.ascontiguousarray(emb))
        queries = {x: data.queries[x] for x in qids}
        qlist = [queries[x] for x in qids]
        k = min(args.k, len(pids))

        def st_e2e():
            qv = with_peer_autocast(st.encode, qlist)
            s, r = raw.search(np.ascontiguousarray(qv, dtype=np.float32), k)
            return run_dict(qids, pids, s, r)

        bc.log(f"[real] end to end: {len(qids)} query texts, k={k}")
        times, last = bc.interleaved(
            {"rocketkd_search_run": lambda: search_run(index, queries, k), "st_encode_faiss": st_e2e},
            args.reps,
            warmup=1,
            load=load,
            device=device,
        )
        overlap = np.mean(
            [
                len(
                    set(list(last["rocketkd_search_run"][x])[:10])
                    & set(list(last["st_encode_faiss"][x])[:10])
                )
                / 10
                for x in qids
            ]
        )
        e2e = {
            "queries": len(qids),
            "rocketkd_dtype": bc.dtype_name(rk_dtype),
            "peer_dtype": bc.dtype_name(peer_dtype),
            "rocketkd_qps": bc.rnd(len(qids) / bc.median(times["rocketkd_search_run"]), 1),
            "peer_qps": bc.rnd(len(qids) / bc.median(times["st_encode_faiss"]), 1),
            "rocketkd_best_qps": bc.rnd(len(qids) / min(times["rocketkd_search_run"]), 1),
            "peer_best_qps": bc.rnd(len(qids) / min(times["st_encode_faiss"]), 1),
            "top10_overlap": bc.rnd(float(overlap)),
            "seconds": {n: [bc.rnd(t, 4) for t in v] for n, v in times.items()},
        }
        e2e["ratio"] = bc.rnd(e2e["rocketkd_qps"] / e2e["peer_qps"])
        results["real_text_e2e"] = e2e

        # 3. re-ranking -----------------------------------------------------------------------------------------
        if not args.skip_rerank:
            from sentence_transformers import CrossEncoder

            from rocketkd.evaluation.metrics import rank_scores
            from rocketkd.models import CrossEncoderRanker
            from rocketkd.search.rerank import rerank_run

            ce_dir = Path(work) / "reranker"
            CrossEncoderRanker.from_pretrained(model_path, max_length=args.reranker_max_length).save(ce_dir)
            ranker = CrossEncoderRanker.from_pretrained(ce_dir).to(device)
            peer = CrossEncoder(str(ce_dir), device=str(device))
            split = "test" if "test" in data.qrels else next(iter(data.qrels))
            chosen = sorted(data.qrels[split])[: args.rerank_queries]
            queries = dict(data.queries)
            full = search_run(index, {x: queries[x] for x in chosen}, max(args.rerank_depth, k))
            groups = [
                g.tolist()
                for g in np.array_split(np.array(chosen, dtype=object), args.rerank_rounds)
                if len(g)
            ]
            rounds = []
            for (
                group
            ) in groups:  # each round: its queries' top `depth`, in rerank_run's own order (metrics ranking)
                sub_run = {x: full[x] for x in group}
                plan = [(x, pid) for x in group for pid in rank_scores(sub_run[x], x)[: args.rerank_depth]]
                pairs = [(queries[x], corpus.get_text(pid)) for x, pid in plan]
                rounds.append((sub_run, plan, pairs))
            n_pairs = sum(len(r[2]) for r in rounds)
            bc.log(
                f"[rerank] {n_pairs} pairs ({len(chosen)} queries x depth {args.rerank_depth}) in {len(rounds)} rounds"
            )
            systems = ["rocketkd_rerank_run", "st_CrossEncoder_predict"] + (
                ["rocketkd_rerank_run_fp32"] if args.rerank_fp32 else []
            )
            if args.rerank_fp32 and peer_dtype is not None:
                systems.append("st_CrossEncoder_predict_fp32")  # equal precision for rocketkd's fp32

            def call(system, sub_run, pairs):
                if system == "st_CrossEncoder_predict":
                    return with_peer_autocast(peer.predict, pairs)
                if system == "st_CrossEncoder_predict_fp32":
                    return peer.predict(pairs)
                autocast = "no" if system.endswith("fp32") else "auto"
                return rerank_run(
                    ranker,
                    sub_run,
                    queries,
                    corpus,
                    depth=args.rerank_depth,
                    autocast=autocast,
                    show_progress=False,
                )

            if not args.quick:  # warm-up: one query's pairs per system, untimed
                w_run = {chosen[0]: full[chosen[0]]}
                w_pairs = [p for (x, _), p in zip(rounds[0][1], rounds[0][2]) if x == chosen[0]]
                for system in systems:
                    call(system, w_run, w_pairs)
            times = {system: [] for system in systems}
            rk_scores, st_scores = [], []
            for r, (sub_run, plan, pairs) in enumerate(rounds):
                for system in systems:
                    load.mark()
                    bc.synchronize(device)
                    t0 = time.perf_counter()
                    out = call(system, sub_run, pairs)
                    bc.synchronize(device)
                    times[system].append(time.perf_counter() - t0)
                    if system == "rocketkd_rerank_run":
                        rk_scores += [out[x][pid] for x, pid in plan]
                    elif system == "st_CrossEncoder_predict":
                        st_scores += np.asarray(out, dtype=np.float64).tolist()
                bc.log(
                    f"  round {r + 1}/{len(rounds)} ({len(pairs)} pairs): "
                    + "  ".join(f"{s_}={times[s_][-1]:.2f}s" for s_ in systems)
                    + f"  load={bc.load_avg()}"
                )
            sizes = [len(r[2]) for r in rounds]

            def rate(system, best=False):
                rates = [n_ / t_ for n_, t_ in zip(sizes, times[system])]
                return bc.rnd(max(rates) if best else bc.median(rates), 2)

            rr = {
                "pairs": n_pairs,
                "rounds": len(rounds),
                "rocketkd_pairs_per_s": rate("rocketkd_rerank_run"),
                "peer_pairs_per_s": rate("st_CrossEncoder_predict"),
                "rocketkd_best_pairs_per_s": rate("rocketkd_rerank_run", True),
                "peer_best_pairs_per_s": rate("st_CrossEncoder_predict", True),
                "max_abs_score_diff": bc.rnd(
                    float(np.abs(np.array(rk_scores) - np.array(st_scores)).max()), 4
                ),
                "autocast": str(rk_dtype),
                "rocketkd_dtype": bc.dtype_name(rk_dtype),
                "peer_dtype": bc.dtype_name(peer_dtype),
                "seconds": {n_: [bc.rnd(t_, 3) for t_ in v] for n_, v in times.items()},
            }
            rr["ratio"] = bc.rnd(rr["rocketkd_pairs_per_s"] / rr["peer_pairs_per_s"])
            rr["ratio_best"] = bc.rnd(rr["rocketkd_best_pairs_per_s"] / rr["peer_best_pairs_per_s"])
            if args.rerank_fp32:
                rr["rocketkd_fp32_pairs_per_s"] = rate("rocketkd_rerank_run_fp32")
                fp32_peer = "st_CrossEncoder_predict_fp32" if peer_dtype is not None else "st_CrossEncoder_predict"
                rr["peer_fp32_pairs_per_s"] = rate(fp32_peer)
                rr["ratio_fp32"] = bc.rnd(rr["rocketkd_fp32_pairs_per_s"] / rr["peer_fp32_pairs_per_s"])
            results["rerank"] = rr

    syn = results["synthetic"]
    result = {
        "bench": "search",
        "quick": args.quick,
        "device": device.type,
        "requested_device": args.device,
        "rocketkd_backend": backend,
        "peer": "faiss-cpu IndexFlatIP",
        "rocketkd_qps": syn["rocketkd_qps"],
        "faiss_qps": syn["faiss_qps"],
        "ratio": syn["ratio"],
        "same_results": syn["same_results"],
        "topk_id_agreement": syn["topk_id_agreement"],
        "target_within_10pct": syn["ratio"] >= 0.9,
        **{k: v for k, v in results.items()},
        "load": load.summary(),
        "machine": info,
        "wall_s": bc.rnd(time.perf_counter() - start, 1),
    }
    if "rerank" in results:
        result["rerank_ratio"] = results["rerank"]["ratio"]

    rows = [
        [
            name,
            r["vectors"],
            r["queries"],
            r["k"],
            r["rocketkd_qps"],
            r["rocketkd_index_search_qps"],
            r["faiss_qps"],
            r["ratio"],
            r["rocketkd_load_ms"],
            r["faiss_read_index_ms"],
            r["same_results"],
            r["topk_id_agreement"],
        ]
        for name, r in results.items()
        if name in ("synthetic", "real_vectors")
    ]
    print(
        bc.md_table(
            [
                "index",
                "vectors",
                "queries",
                "k",
                "search_run QPS",
                "DenseIndex.search QPS",
                "faiss QPS",
                "ratio",
                "load ms",
                "read_index ms",
                "same results",
                "top-k id agreement",
            ],
            rows,
        )
    )
    if "real_text_e2e" in results:
        e = results["real_text_e2e"]
        print()
        print(
            bc.md_table(
                ["end to end (texts)", "queries", "rocketkd QPS", "ST+faiss QPS", "ratio", "top-10 overlap"],
                [
                    [
                        "cranfield",
                        e["queries"],
                        e["rocketkd_qps"],
                        e["peer_qps"],
                        e["ratio"],
                        e["top10_overlap"],
                    ]
                ],
            )
        )
    if "rerank" in results:
        r = results["rerank"]
        print()
        row = [
            "cranfield test",
            r["pairs"],
            r["rocketkd_pairs_per_s"],
            r["peer_pairs_per_s"],
            r["ratio"],
            f"{r['rocketkd_best_pairs_per_s']} / {r['peer_best_pairs_per_s']} = {r['ratio_best']}",
            r["max_abs_score_diff"],
        ]
        heads = [
            "re-ranking",
            "pairs",
            "rerank_run pairs/s",
            "CrossEncoder.predict pairs/s",
            "ratio (medians)",
            "best round: rocketkd / ST = ratio",
            "max |score diff|",
        ]
        if "ratio_fp32" in r:
            row += [r["rocketkd_fp32_pairs_per_s"], r["ratio_fp32"]]
            heads += ["rerank_run fp32 pairs/s", "ratio fp32"]
        print(bc.md_table(heads, [row]))
    print(f"\nload average (1 min) during the run: {result['load']}")
    bc.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
