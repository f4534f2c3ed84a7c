#!/usr/bin/env python
"""Joint-training throughput (query lists/s): rocketkd's joint step vs the same work with sentence-transformers.

Settings from ``--config`` (default configs/demo.yaml): B = train.batch_size lists of G = candidates.list_length
passages (positive first, label lists from the cranfield train qrels, min grade as the config), query/passage/pair
max lengths from model.query_max_length / passage_max_length / reranker_max_length, packaged all-MiniLM-L6-v2 as both
the retriever and the re-ranker (the re-ranker's new head is created once and saved, and both sides load that same
folder).

* **rocketkd** -- the body of ``rocketkd.training.train``'s loop with its own public pieces: ``JointCollator`` batches from a
  DataLoader over ``GroupDataset``, ``JointModel`` (retriever + re-ranker) -> ``step_loss`` (compute_objective:
  re-ranker listwise CE + KL distillation of the retriever + 0.2 x in-batch CE, as the config) ->
  ``accelerator.backward`` -> ``check_gradients`` (clip at 1.0) -> AdamW step (``param_groups``) -> zero_grad ->
  linear schedule step -> ``.item()`` of the logged losses. ``rocketkd`` runs with the config's precision (bf16:
  the model prepared by ``make_accelerator(mixed_precision="bf16")``, i.e. bf16 autocast of the forward, as
  train() does); ``rocketkd_fp32`` runs the same step on an unprepared copy (no autocast). Like train(), the step
  leaves the transformer backbones in the eval mode ``from_pretrained`` gives them, i.e. **dropout off**;
  ``--rocketkd-train-mode`` calls ``.train()`` first (dropout on, the same work as the peer).
* **sentence-transformers** (``st``) -- a manual loop over its own pieces, defaults everywhere (fp32, each
  column tokenised and padded on its own, models in train mode as its trainer puts them): a ``CrossEncoder`` trained
  with ``cross_encoder.losses.ListNetLoss`` (labels 1 for the positive, 0 for the others; default mini-batching =
  B pairs per forward) and a ``SentenceTransformer`` bi-encoder (max_seq_length = passage max length) trained with
  ``DistillKLDivLoss`` toward the cross-encoder's scores of the same lists (captured by a forward hook during the
  ListNet forward, detached: no second forward); one AdamW over both models with the same learning rates, gradient
  clipping at 1.0 (the HF trainer's default) and a linear schedule; ``.item()`` of the loss.

Timing: ``--warmup`` untimed steps per system, then ``--reps`` timed steps per system, alternated step by step
(rocketkd, st, rocketkd_fp32, rocketkd, ...); every system sees the same lists at step i. Medians of the step times;
lists/s = B / median step time. The CPU seconds of each step (this process, all threads) are reported too: they
move much less than wall time when other processes load the machine.

List lengths and devices:

* ``--lengths L [L ...]`` times each list length L (candidates per query) in turn, each with freshly loaded models;
  the lists are then sampled from the labels (``candidates.source=sampled``: the positive + random corpus
  negatives, so any L fits and nothing is mined); ``--batch`` sets B (default the config's train.batch_size).
* ``--device cuda`` (or ``auto`` on a GPU machine) puts rocketkd's models and batches (the collated batch is
  moved with ``JointBatch.to`` inside the timed step, as the prepared DataLoader of train() does) and both
  sentence-transformers models and their features on the GPU. The peer's forward then runs under the autocast
  dtype of the config's precision (bf16 for bf16: equal precision on both sides; ``--peer-autocast``), and with
  fp32 timed (no ``--skip-fp32``) an ``st_fp32`` row is the peer without autocast, the partner of
  ``rocketkd_fp32``. Every step is bracketed by ``torch.cuda.synchronize()``. A length that runs out of GPU memory
  is reported as such (``error``) and the others still run.
* **MFU** (on cuda by default; on cpu with ``--matmul-n``): FLOPs of a step = 6 x non-embedding parameters x tokens
  (forward + backward) summed over every forward of the step's transformer models -- the re-ranker's B x L pairs,
  the retriever's B queries and B x L passages -- counted by forward pre-hooks on the models (the same counting
  for rocketkd and the peer), over the **real** (non-padding, attention mask) and the **padded** tokens; achieved
  TFLOP/s per step, median over the timed steps, over a bf16 matmul peak measured on the device in the same run.

The last line of stdout is one JSON object; ``ratio`` is rocketkd (config precision) / st lists/s. With several
lengths, the top-level figures are those of the first length and ``by_length`` holds every length's;
``matmul_peak_tflops`` and ``mfu`` are null without a matmul peak (the cpu default).
"""

from __future__ import annotations

import argparse
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
        "--config",
        default=str(bc.REPO / "configs" / "demo.yaml"),
        help="rocketkd config (default configs/demo.yaml)",
    )
    p.add_argument("--data", default=None, help="collection (default: the config's data.path)")
    bc.add_model_arg(p, "both models")
    p.add_argument(
        "--lengths",
        type=int,
        nargs="+",
        default=None,
        help="list lengths L (candidates per query) timed one after the other, e.g. --lengths 32 128; lists "
        "sampled from the labels (candidates.source=sampled) then (default: the config's candidates.list_length "
        "and candidate source)",
    )
    p.add_argument("--batch", type=int, default=None, help="B: lists per step (default: the config's train.batch_size)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per system first (default 1)")
    p.add_argument("--skip-fp32", action="store_true", help="do not time rocketkd (nor, on cuda, the peer) at fp32")
    bc.add_peer_autocast_arg(p, "the peer's forward")
    p.add_argument(
        "--rocketkd-train-mode",
        action="store_true",
        help="put rocketkd's models in train mode (dropout on) before timing; rocketkd.training.train() leaves "
        "the backbones in the eval mode from_pretrained gives them (dropout off)",
    )
    p.add_argument(
        "--peer-dropout-off",
        action="store_true",
        help="run the ST models in eval mode (dropout off), as rocketkd's train() runs its backbones",
    )
    args = p.parse_args(argv)
    args.reps = args.reps or (1 if args.quick else 3)
    args.warmup = args.warmup if args.warmup is not None else 1
    if args.lengths and min(args.lengths) < 2:
        p.error("--lengths: every L needs at least 2 (a positive and a negative)")
    if args.batch is not None and args.batch < 1:
        p.error("--batch must be >= 1")
    return args


def step_figures(times, cpu, last, spans, counter, B, precision, peak_tflops) -> dict:
    """Per-system figures: lists/s from the median step time; FLOPs of each timed step (6 x params x tokens)."""
    timed = spans[-len(times) :]  # the last len(times) calls are the timed ones (warm-ups come first)
    tot = [counter.totals(a, b) for a, b in timed]
    tf_real = [bc.tflops(bc.train_flops(1, x["param_tokens_real"]), t) for x, t in zip(tot, times)]
    tf_pad = [bc.tflops(bc.train_flops(1, x["param_tokens_padded"]), t) for x, t in zip(tot, times)]
    med_real, med_pad = bc.median(tf_real), bc.median(tf_pad)
    return {
        "precision": precision,
        "step_s_median": bc.rnd(bc.median(times), 4),
        "lists_per_s": bc.rnd(B / bc.median(times), 3),
        "best_lists_per_s": bc.rnd(B / min(times), 3),
        "step_s": [bc.rnd(x, 4) for x in times],
        "cpu_s_median": bc.rnd(bc.median(cpu), 3),
        "cpu_s": [bc.rnd(x, 3) for x in cpu],
        "last_losses": {k: bc.rnd(v, 4) for k, v in last.items()},
        "tokens_real_per_step": int(bc.median([x["tokens_real"] for x in tot])),
        "tokens_padded_per_step": int(bc.median([x["tokens_padded"] for x in tot])),
        "tflop_per_step_real": bc.rnd(bc.median([bc.train_flops(1, x["param_tokens_real"]) / 1e12 for x in tot]), 4),
        "tflops_real": bc.rnd(med_real, 4),
        "tflops_padded": bc.rnd(med_pad, 4),
        "mfu_real": bc.rnd(med_real / peak_tflops, 4) if peak_tflops else None,
        "mfu_padded": bc.rnd(med_pad / peak_tflops, 4) if peak_tflops else None,
        "_tflops_raw": (med_real, med_pad),  # unrounded, for the MFU once the peak is known (popped before output)
    }


def main(argv=None) -> dict:
    args = parse_args(argv)
    bc.set_threads(args.threads)
    device = bc.resolve_device(args.device)
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.cross_encoder.losses import ListNetLoss
    from transformers import get_linear_schedule_with_warmup

    try:
        from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import DistillKLDivLoss

    from rocketkd.candidates.lists import build_lists
    from rocketkd.config import load_config
    from rocketkd.data.formats import load_retrieval_data
    from rocketkd.models import CrossEncoderRanker, resolve_model_path
    from rocketkd.models.loading import load_reranker, load_retriever
    from rocketkd.search.encode import resolve_autocast
    from rocketkd.training import JointCollator, JointModel, check_gradients, param_groups, step_loss
    from rocketkd.training.dataset import GroupDataset

    # The peer implements the two losses over the cross-encoder's own scores; a config's re-ranker prior (the demo's
    # model.reranker_prior) adds fixed per-pair scores that need stored lists and no model work: off for both sides.
    overrides = ["model.reranker_prior=false"]
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.quick:
        overrides += [
            "train.batch_size=2",
            "candidates.list_length=3",
            "model.query_max_length=16",
            "model.passage_max_length=32",
            "model.reranker_max_length=48",
        ]
    if args.batch:
        overrides.append(f"train.batch_size={args.batch}")
    base_cfg = load_config(args.config, overrides)
    lengths = list(args.lengths) if args.lengths else [base_cfg.candidates.list_length]
    info = bc.machine_info(device)
    bc.log(f"device: {device} (--device {args.device})")
    load = bc.LoadLog()
    mpeak = bc.MatmulPeak(device, args.matmul_n, args.matmul_reps)
    start_all = time.perf_counter()
    work = bc.work_dir("rocketkd-bench-train-")
    m = base_cfg.model
    data = load_retrieval_data(base_cfg.data.path, cache_dir=work / "cache")
    queries = data.all_queries()
    model_path = resolve_model_path(args.model or m.retriever)
    ce_dir = work / "reranker"
    CrossEncoderRanker.from_pretrained(
        resolve_model_path(args.model or m.reranker), max_length=m.reranker_max_length
    ).save(ce_dir)

    # rocketkd: the accelerator train() builds (on --device); one for every length
    accelerator = bc.make_accelerator_on(
        device, mixed_precision=base_cfg.train.mixed_precision, gradient_accumulation_steps=1
    )
    rk_precision = base_cfg.train.mixed_precision.replace("no", "fp32")
    rk_dtype = resolve_autocast(base_cfg.train.mixed_precision, device)
    if args.peer_autocast == "no":
        st_dtype = None
    elif args.peer_autocast == "bf16":
        st_dtype = torch.bfloat16
    else:
        st_dtype = rk_dtype if device.type == "cuda" else None
    st_precision = bc.dtype_name(st_dtype)
    mpeak.measure()

    def run_length(G: int) -> dict:
        length_overrides = [f"candidates.list_length={G}", "candidates.source=sampled"] if args.lengths else []
        cfg = load_config(args.config, overrides + length_overrides)
        t, m = cfg.train, cfg.model
        B = t.batch_size
        torch.manual_seed(t.seed)
        lists = build_lists(cfg, data)
        dataset = GroupDataset(lists, G, seed=t.seed)
        steps_needed = args.warmup + args.reps
        if len(dataset) < steps_needed * B:
            raise SystemExit(f"{len(dataset)} lists: too few for {steps_needed} steps of {B}")

        # ------------------------------------------------------------ rocketkd: the pieces train() builds
        def build_rocketkd(prepare: bool):
            # the same builders train() uses (pooler and head bias frozen as there)
            retriever = load_retriever(cfg, model_path, for_training=True)
            reranker = load_reranker(cfg, str(ce_dir), trainable=True)
            collator = JointCollator(
                query_text=queries.__getitem__,
                passage_text=data.corpus.get_text,
                tokenize_queries=retriever.tokenize_queries,
                tokenize_passages=retriever.tokenize_passages,
                tokenize_pairs=reranker.tokenize_pairs,
            )
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=B, shuffle=False, collate_fn=collator, num_workers=t.num_workers
            )
            model = JointModel(retriever, reranker, score_scale=m.score_scale)
            if not prepare:
                model.to(device)  # prepare() places the bf16 model; the fp32 copy is placed by hand
            optimizer = torch.optim.AdamW(param_groups(model, cfg))
            if args.rocketkd_train_mode:
                model.train()
            if prepare:
                model, optimizer = accelerator.prepare(model, optimizer)
            scheduler = get_linear_schedule_with_warmup(optimizer, int(t.warmup_ratio * 1000), 1000)
            state = {"it": iter(loader), "step": 0}
            on_gpu = device.type != "cpu"

            def step():
                batch = next(state["it"])
                if on_gpu:
                    batch = batch.to(device)  # what the prepared DataLoader of train() does
                with accelerator.accumulate(model):
                    parts = step_loss(model, batch, cfg, None, accelerator, state["step"])
                    accelerator.backward(parts.total)
                    check_gradients(model, accelerator, state["step"], parts, t.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                state["step"] += 1
                logged = {k: v.float().item() for k, v in parts.parts.items()}
                logged["loss"] = parts.total.detach().float().item()
                return logged

            return step, model, bc.BackboneTokenCounter(model)

        # ------------------------------------------------------------ sentence-transformers: its own pieces
        def build_st(dtype):
            ce = CrossEncoder(str(ce_dir), device=str(device))
            bi = SentenceTransformer(model_path, device=str(device))
            bi.max_seq_length = m.passage_max_length
            listnet = ListNetLoss(ce)
            kd = DistillKLDivLoss(bi)
            captured: list = []
            ce.register_forward_hook(lambda mod, inp, out: captured.append(out["scores"].view(-1)))
            body = {id(p) for p in ce.model.base_model.parameters()} if hasattr(ce, "model") else set()
            ce_params = [p for p in ce.parameters() if p.requires_grad]
            groups = [
                {"params": [p for p in bi.parameters() if p.requires_grad], "lr": t.lr_retriever},
                {"params": [p for p in ce_params if id(p) in body] or ce_params, "lr": t.lr_reranker},
            ]
            head = [p for p in ce_params if body and id(p) not in body]
            if head:
                groups.append({"params": head, "lr": t.lr_reranker_head or t.lr_reranker})
            params = [p for g in groups for p in g["params"]]
            optimizer = torch.optim.AdamW(groups, weight_decay=t.weight_decay)
            scheduler = get_linear_schedule_with_warmup(optimizer, int(t.warmup_ratio * 1000), 1000)
            mode = not args.peer_dropout_off
            ce.train(mode)
            bi.train(mode)
            loader = torch.utils.data.DataLoader(
                dataset, batch_size=B, shuffle=False, collate_fn=lambda items: items
            )
            state = {"it": iter(loader)}
            # on the model's device: sentence-transformers 6.0's ListNetLoss scatters them into a tensor there
            # (CPU labels failed on an H100: "Expected all tensors to be on the same device")
            labels = [torch.tensor([1.0] + [0.0] * (G - 1), device=device) for _ in range(B)]

            def step():
                items = next(state["it"])
                qs = [queries[it["qid"]] for it in items]
                docs = [[data.corpus.get_text(pid) for pid in it["pids"]] for it in items]
                captured.clear()
                with bc.autocast_context(device, dtype):
                    loss_ce = listnet([qs, docs], labels[: len(items)])
                    teacher = torch.cat(captured).view(len(items), G).detach().float()
                    # the trainer's collator moves features to the model's device; so does this loop
                    features = [bc.to_device(bi.preprocess(qs), device)] + [
                        bc.to_device(bi.preprocess([d[g] for d in docs]), device) for g in range(G)
                    ]
                    loss_kd = kd(features, teacher)
                    loss = loss_ce + loss_kd
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                return {"listnet": loss_ce.item(), "distill": loss_kd.item()}

            return step, (ce, bi), bc.BackboneTokenCounter(ce, bi)

        built = {}
        built["rocketkd"] = build_rocketkd(prepare=True)
        built["st"] = build_st(st_dtype)
        if not args.skip_fp32:
            built["rocketkd_fp32"] = build_rocketkd(prepare=False)
            if st_dtype is not None:
                built["st_fp32"] = build_st(None)  # equal precision for rocketkd_fp32
        precisions = {"rocketkd": rk_precision, "st": st_precision, "rocketkd_fp32": "fp32", "st_fp32": "fp32"}
        spans: dict = {name: [] for name in built}

        def counted(name):
            fn, _, counter = built[name]

            def run():
                a = counter.mark()
                out = fn()
                spans[name].append((a, counter.mark()))
                return out

            return run

        bc.log(
            f"L={G} B={B}, lengths q/p/pair {m.query_max_length}/{m.passage_max_length}/{m.reranker_max_length}, "
            f"device {device}, rocketkd precision {rk_precision}, peer {st_precision}, "
            f"threads {info['torch_threads']}, load {bc.load_avg()}"
        )
        cpu: dict = {}
        times, last = bc.interleaved(
            {name: counted(name) for name in built},
            args.reps,
            warmup=args.warmup,
            load=load,
            cpu=cpu,
            device=device,
        )
        figures = {
            name: step_figures(
                times[name], cpu[name], last[name], spans[name], built[name][2], B, precisions[name], None
            )
            for name in built
        }
        for _, _, counter in built.values():
            counter.remove()
        built.clear()
        ratio = figures["rocketkd"]["lists_per_s"] / figures["st"]["lists_per_s"]
        fp32_peer = "st_fp32" if "st_fp32" in figures else "st"
        ratio_fp32 = (
            figures["rocketkd_fp32"]["lists_per_s"] / figures[fp32_peer]["lists_per_s"]
            if "rocketkd_fp32" in figures
            else None
        )
        ratio_best = figures["rocketkd"]["best_lists_per_s"] / figures["st"]["best_lists_per_s"]
        ratio_fp32_best = (
            figures["rocketkd_fp32"]["best_lists_per_s"] / figures[fp32_peer]["best_lists_per_s"]
            if "rocketkd_fp32" in figures
            else None
        )
        return {
            "B": B,
            "G": G,
            "max_lengths": {
                "query": m.query_max_length,
                "passage": m.passage_max_length,
                "pair": m.reranker_max_length,
            },
            "candidate_source": cfg.candidates.source,
            "rocketkd_precision": figures["rocketkd"]["precision"],
            "st_precision": st_precision,
            "rocketkd_lists_per_s": figures["rocketkd"]["lists_per_s"],
            "st_lists_per_s": figures["st"]["lists_per_s"],
            "ratio": bc.rnd(ratio),
            "ratio_fp32": None if ratio_fp32 is None else bc.rnd(ratio_fp32),
            "ratio_fp32_peer": fp32_peer if ratio_fp32 is not None else None,
            "ratio_best_step": bc.rnd(ratio_best),
            "ratio_cpu_time": bc.rnd(figures["st"]["cpu_s_median"] / figures["rocketkd"]["cpu_s_median"]),
            "ratio_fp32_cpu_time": (
                bc.rnd(figures[fp32_peer]["cpu_s_median"] / figures["rocketkd_fp32"]["cpu_s_median"])
                if "rocketkd_fp32" in figures
                else None
            ),
            "ratio_fp32_best_step": None if ratio_fp32_best is None else bc.rnd(ratio_fp32_best),
            "targets": {
                "defaults_ge_1.3x": ratio >= 1.3,
                "equal_precision_ge_1.0x": None if ratio_fp32 is None else ratio_fp32 >= 1.0,
            },
            "systems": figures,
        }

    by_length: dict = {}
    for G in lengths:
        try:
            by_length[str(G)] = run_length(G)
        except torch.cuda.OutOfMemoryError as exc:  # report the length, keep the others
            bc.log(f"L={G}: out of GPU memory ({str(exc).splitlines()[0]})")
            by_length[str(G)] = {"G": G, "error": f"out of memory: {str(exc).splitlines()[0]}"}
        import gc

        accelerator.free_memory()  # drop its references to this length's prepared model and optimizer
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    mpeak.measure()
    peak_tflops = mpeak.tflops
    for res in by_length.values():  # MFU once the peak (measured before and after) is known
        for f in res.get("systems", {}).values():
            raw_real, raw_pad = f.pop("_tflops_raw")
            f["mfu_real"] = bc.rnd(raw_real / peak_tflops, 4) if peak_tflops else None
            f["mfu_padded"] = bc.rnd(raw_pad / peak_tflops, 4) if peak_tflops else None
        if "systems" in res:
            res["mfu"] = (
                {n: {"real": f["mfu_real"], "padded": f["mfu_padded"]} for n, f in res["systems"].items()}
                if peak_tflops
                else None
            )
    ok = [r for r in by_length.values() if "error" not in r]
    if not ok:
        raise SystemExit(f"no list length completed: {by_length}")
    first = ok[0]
    result = {
        "bench": "train",
        "quick": args.quick,
        "device": device.type,
        "requested_device": args.device,
        **first,
        "lengths": lengths,
        "lists_per_s_by_length": {
            k: (
                {n: f["lists_per_s"] for n, f in r["systems"].items()} if "systems" in r else {"error": r["error"]}
            )
            for k, r in by_length.items()
        },
        "matmul_peak_tflops": bc.rnd(peak_tflops, 2),
        "mfu_model": {
            "flops": "6 x non_embedding_params x tokens per forward of each transformer model in the step "
            "(forward + backward; retriever queries + passages, re-ranker B x L pairs)",
            "tokens": "real = non-padding tokens (attention mask); padded = input_ids.numel(), what runs",
            "rate": "median over the timed steps of step flops / step seconds; mfu = TFLOP/s / matmul_peak_tflops",
        },
        "matmul_peak_device": mpeak.summary(),
        "by_length": by_length,
        "peer_train_mode": not args.peer_dropout_off,
        "rocketkd_backbones_train_mode": bool(args.rocketkd_train_mode),
        "load": load.summary(),
        "machine": info,
        "wall_s": bc.rnd(time.perf_counter() - start_all, 1),
    }
    for key, res in by_length.items():
        if "error" in res:
            print(f"\nL={key}: {res['error']}")
            continue
        figures = res["systems"]
        print(f"\nL={res['G']} (B={res['B']}, {result['device']})")
        print(
            bc.md_table(
                [
                    "system",
                    "precision",
                    "median step s",
                    "lists/s (median)",
                    "lists/s (best step)",
                    "steps s",
                    "median CPU s/step",
                    "TFLOP/s real",
                    "MFU real",
                    "MFU padded",
                ],
                [
                    [
                        n,
                        f["precision"],
                        f["step_s_median"],
                        f["lists_per_s"],
                        f["best_lists_per_s"],
                        " ".join(str(x) for x in f["step_s"]),
                        f["cpu_s_median"],
                        f["tflops_real"],
                        f["mfu_real"],
                        f["mfu_padded"],
                    ]
                    for n, f in figures.items()
                ],
            )
        )
        print(
            f"ratio rocketkd ({res['rocketkd_precision']}) / st ({res['st_precision']}) = {res['ratio']:.3f} (medians), "
            f"{res['ratio_best_step']:.3f} (best steps)"
            + (
                f"; fp32: rocketkd_fp32 / {res['ratio_fp32_peer']} = {res['ratio_fp32']:.3f} (medians), "
                f"{res['ratio_fp32_best_step']:.3f} (best steps)"
                if res["ratio_fp32"] is not None
                else ""
            )
        )
        print(
            f"CPU-time ratio (st CPU s / rocketkd CPU s per step): {res['ratio_cpu_time']}"
            + (f", fp32: {res['ratio_fp32_cpu_time']}" if res["ratio_fp32_cpu_time"] is not None else "")
        )
    if peak_tflops:
        print(f"bf16 matmul peak on {device}: {peak_tflops:.1f} TFLOP/s (MFU = achieved / this)")
    print(f"load average (1 min) during the run: {result['load']}")
    bc.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
