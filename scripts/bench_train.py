#!/usr/bin/env python
"""Joint-training throughput (query lists/s): rocketkd's joint step vs the same work with sentence-transformers.

Settings from ``--config`` (default configs/demo.yaml): B = train.batch_size lists of G = candidates.list_length
passages (positive first, label lists from the cranfield train qrels, min grade as the config), query/passage/pair
max lengths from model.query_max_length / passage_max_length / reranker_max_length, packaged all-MiniLM-L6-v2 as both
the retriever and the re-ranker (the re-ranker's new head is created once and saved, and both sides load that same
folder).

* **rocketkd** -- the body of ``rocketkd.train.train``'s loop with its own pieces: ``JointCollator`` batches from a
  DataLoader over ``GroupDataset``, ``JointModel`` (retriever + re-ranker) -> ``_step_loss`` (compute_objective:
  re-ranker listwise CE + KL distillation of the retriever + 0.2 x in-batch CE, as the config) ->
  ``accelerator.backward`` -> ``_check_gradients`` (clip at 1.0) -> AdamW step (``_param_groups``) -> zero_grad ->
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

The last line of stdout is one JSON object; ``ratio`` is rocketkd (config precision) / st lists/s.
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
    p.add_argument(
        "--model", default=None, help="start point of both models (default: packaged all-MiniLM-L6-v2)"
    )
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per system first (default 1)")
    p.add_argument("--skip-fp32", action="store_true", help="do not time rocketkd at fp32")
    p.add_argument(
        "--rocketkd-train-mode",
        action="store_true",
        help="put rocketkd's models in train mode (dropout on) before timing; rocketkd.train.train() leaves "
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
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    bc.set_threads(args.threads)
    import torch
    from sentence_transformers import CrossEncoder, SentenceTransformer
    from sentence_transformers.cross_encoder.losses import ListNetLoss
    from transformers import get_linear_schedule_with_warmup

    try:
        from sentence_transformers.sentence_transformer.losses import DistillKLDivLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import DistillKLDivLoss

    from rocketkd.config import load_config
    from rocketkd.data.collator import JointCollator
    from rocketkd.data.dataset import GroupDataset
    from rocketkd.data.formats import load_retrieval_data
    from rocketkd.joint import JointModel
    from rocketkd.models import CrossEncoderRanker, resolve_model_path
    from rocketkd.train import (
        _check_gradients,
        _param_groups,
        _step_loss,
        build_lists,
        load_reranker,
        load_retriever,
        make_accelerator,
    )

    overrides = []
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
    cfg = load_config(args.config, overrides)
    t, m = cfg.train, cfg.model
    B, G = t.batch_size, cfg.candidates.list_length
    info = bc.machine_info()
    load = bc.LoadLog()
    start_all = time.perf_counter()
    work = bc.work_dir("rocketkd-bench-train-")
    torch.manual_seed(t.seed)

    data = load_retrieval_data(cfg.data.path, cache_dir=work / "cache")
    lists = build_lists(cfg, data)
    dataset = GroupDataset(lists, G, seed=t.seed)
    steps_needed = args.warmup + args.reps
    if len(dataset) < steps_needed * B:
        raise SystemExit(f"{len(dataset)} lists: too few for {steps_needed} steps of {B}")
    queries = {**getattr(data, "unlabeled_queries", {}), **data.queries}
    model_path = resolve_model_path(args.model or m.retriever)
    ce_dir = work / "reranker"
    CrossEncoderRanker.from_pretrained(
        resolve_model_path(m.reranker or args.model), max_length=m.reranker_max_length
    ).save(ce_dir)

    # ---------------------------------------------------------------- rocketkd: the pieces train() builds
    accelerator = make_accelerator(mixed_precision=t.mixed_precision, gradient_accumulation_steps=1)

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
        optimizer = torch.optim.AdamW(_param_groups(model, cfg))
        if args.rocketkd_train_mode:
            model.train()
        if prepare:
            model, optimizer = accelerator.prepare(model, optimizer)
        scheduler = get_linear_schedule_with_warmup(optimizer, int(t.warmup_ratio * 1000), 1000)
        state = {
            "model": model,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "it": iter(loader),
            "step": 0,
        }

        def step():
            batch = next(state["it"])
            with accelerator.accumulate(model):
                parts = _step_loss(model, batch, cfg, None, accelerator, state["step"])
                accelerator.backward(parts.total)
                _check_gradients(model, accelerator, state["step"], parts, t.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            state["step"] += 1
            logged = {k: v.float().item() for k, v in parts.parts.items()}
            logged["loss"] = parts.total.detach().float().item()
            return logged

        return step, model

    # ---------------------------------------------------------------- sentence-transformers: its own pieces
    def build_st():
        ce = CrossEncoder(str(ce_dir), device="cpu")
        bi = SentenceTransformer(model_path, device="cpu")
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
        labels = [torch.tensor([1.0] + [0.0] * (G - 1)) for _ in range(B)]

        def step():
            items = next(state["it"])
            qs = [queries[it["qid"]] for it in items]
            docs = [[data.corpus.get_text(pid) for pid in it["pids"]] for it in items]
            captured.clear()
            loss_ce = listnet([qs, docs], labels[: len(items)])
            teacher = torch.cat(captured).view(len(items), G).detach()
            features = [bi.preprocess(qs)] + [bi.preprocess([d[g] for d in docs]) for g in range(G)]
            loss_kd = kd(features, teacher)
            loss = loss_ce + loss_kd
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, t.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            return {"listnet": loss_ce.item(), "distill": loss_kd.item()}

        return step, (ce, bi)

    steps = {}
    steps["rocketkd"], _ = build_rocketkd(prepare=True)
    steps["st"], _ = build_st()
    if not args.skip_fp32:
        steps["rocketkd_fp32"], _ = build_rocketkd(prepare=False)
    bc.log(
        f"B={B} G={G}, lengths q/p/pair {m.query_max_length}/{m.passage_max_length}/{m.reranker_max_length}, "
        f"rocketkd precision {t.mixed_precision}, threads {info['torch_threads']}, load {bc.load_avg()}"
    )
    cpu: dict = {}
    times, last = bc.interleaved(steps, args.reps, warmup=args.warmup, load=load, cpu=cpu)

    figures = {}
    for name, ts in times.items():
        figures[name] = {
            "precision": (t.mixed_precision if name == "rocketkd" else "fp32").replace("no", "fp32"),
            "step_s_median": bc.rnd(bc.median(ts), 3),
            "lists_per_s": bc.rnd(B / bc.median(ts), 3),
            "best_lists_per_s": bc.rnd(B / min(ts), 3),
            "step_s": [bc.rnd(x, 3) for x in ts],
            "cpu_s_median": bc.rnd(bc.median(cpu[name]), 3),
            "cpu_s": [bc.rnd(x, 3) for x in cpu[name]],
            "last_losses": {k: bc.rnd(v, 4) for k, v in last[name].items()},
        }
    ratio = figures["rocketkd"]["lists_per_s"] / figures["st"]["lists_per_s"]
    ratio_fp32 = (
        figures["rocketkd_fp32"]["lists_per_s"] / figures["st"]["lists_per_s"]
        if "rocketkd_fp32" in figures
        else None
    )
    ratio_best = figures["rocketkd"]["best_lists_per_s"] / figures["st"]["best_lists_per_s"]
    ratio_fp32_best = (
        figures["rocketkd_fp32"]["best_lists_per_s"] / figures["st"]["best_lists_per_s"]
        if "rocketkd_fp32" in figures
        else None
    )
    result = {
        "bench": "train",
        "quick": args.quick,
        "B": B,
        "G": G,
        "max_lengths": {
            "query": m.query_max_length,
            "passage": m.passage_max_length,
            "pair": m.reranker_max_length,
        },
        "rocketkd_precision": figures["rocketkd"]["precision"],
        "rocketkd_lists_per_s": figures["rocketkd"]["lists_per_s"],
        "st_lists_per_s": figures["st"]["lists_per_s"],
        "ratio": bc.rnd(ratio),
        "ratio_fp32": None if ratio_fp32 is None else bc.rnd(ratio_fp32),
        "ratio_best_step": bc.rnd(ratio_best),
        "ratio_cpu_time": bc.rnd(figures["st"]["cpu_s_median"] / figures["rocketkd"]["cpu_s_median"]),
        "ratio_fp32_cpu_time": (
            bc.rnd(figures["st"]["cpu_s_median"] / figures["rocketkd_fp32"]["cpu_s_median"])
            if "rocketkd_fp32" in figures
            else None
        ),
        "ratio_fp32_best_step": None if ratio_fp32_best is None else bc.rnd(ratio_fp32_best),
        "targets": {
            "defaults_ge_1.3x": ratio >= 1.3,
            "equal_precision_ge_1.0x": None if ratio_fp32 is None else ratio_fp32 >= 1.0,
        },
        "systems": figures,
        "peer_train_mode": not args.peer_dropout_off,
        "rocketkd_backbones_train_mode": bool(args.rocketkd_train_mode),
        "load": load.summary(),
        "machine": info,
        "wall_s": bc.rnd(time.perf_counter() - start_all, 1),
    }
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
                ]
                for n, f in figures.items()
            ],
        )
    )
    print(
        f"\nratio rocketkd ({figures['rocketkd']['precision']}) / st = {ratio:.3f} (medians), {ratio_best:.3f} (best steps)"
        + (
            f"; at equal precision (fp32) = {ratio_fp32:.3f} (medians), {ratio_fp32_best:.3f} (best steps)"
            if ratio_fp32 is not None
            else ""
        )
    )
    print(
        f"CPU-time ratio (st CPU s / rocketkd CPU s per step): {result['ratio_cpu_time']}"
        + (f", fp32: {result['ratio_fp32_cpu_time']}" if result["ratio_fp32_cpu_time"] is not None else "")
    )
    print(f"load average (1 min) during the run: {result['load']}")
    bc.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
