#!/usr/bin/env python
"""The ablation table of docs/results.md: each training recipe over several seeds, mean ± std on the test split.

    python scripts/compare_systems.py --config configs/demo.yaml --seeds 1 2 3 --output outputs/compare

Recipes (pipeline.round_mode): contrastive (labels only), static (frozen copy of the round's re-ranker), joint (online
re-ranker, RocketQAv2), auto (teachers checked on dev, ensemble). ``--teachers bm25 base`` adds one recipe per
named teacher: the retriever distilled from that teacher alone, kept even where it fails the dev check
(pipeline.teacher_members=[NAME], pipeline.zero_bad_teachers=false) -- what each teacher does to the student. For one seed the recipes share the stages before
they differ -- the first-round candidates, the warm-up and the first re-mining -- and every seed shares the
baselines: they are run once and copied, and the pipeline resumes from there. Rerunning the command resumes where
it stopped; a recipe added later (--modes static after a finished joint) starts from that seed's finished recipe. After each recipe, --output gets table.md (mean ± std over the seeds so far) and raw.json.

Paired tests of finished runs, nothing trained: ``--paired-only`` (paired.md, the test split), ``--split dev``
(paired.dev.md: the split to decide on), ``--against DIR`` (the same recipes run with other keys: each recipe
paired with its namesake there, and a recipe finished only there, e.g. contrastive, joins the ablation order):

    python scripts/compare_systems.py --config configs/scifact.yaml --seeds 1 2 3 --modes joint static \
        --set train.retriever_ce_weight=1.0 --output OUT_B1 --paired-only --against OUT --split dev

Keeping finished seeds for later sessions: ``--paired-only --export DIR`` writes, per finished recipe, its
``results.json`` and ``per_query.json`` (every system's per-query nDCG@10 on dev and test, a few KB) under
``DIR/seedN/MODE`` -- small enough to commit (``docs/runs/``). Where a recipe's run files are gone, the paired tests
read its ``per_query.json``, so ``--output DIR`` (or ``--against DIR``) pairs seeds run in different sessions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
from pathlib import Path

SHARED = ("baselines", "mine-0", "warmup", "mine-1")  # what the recipes of one seed have in common
SEED_FREE = ("baselines",)  # BM25 and the untrained encoder do not depend on the seed
MODES = ("contrastive", "static", "joint", "auto")
LABELS = {
    "contrastive": "contrastive only (labels, in-batch + mined negatives)",
    "static": "static distillation (frozen copy of the round's re-ranker)",
    "joint": "joint, online re-ranker alone (RocketQAv2)",
    "auto": "joint, teachers checked on dev (ensemble)",
}
METRICS = ("MRR@10", "nDCG@10", "R@10", "R@100")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--teachers", nargs="*", default=[], choices=("reranker", "bm25", "base", "random"),
                    help="also distil from each of these teachers alone (one recipe each, run after --modes)")
    ap.add_argument("--output", type=Path, default=Path("outputs/compare"))
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--paired-only", action="store_true",
                    help="train nothing: write paired.md from the recipes already finished under --output")
    ap.add_argument("--split", default=None,
                    help="split of the paired tests (default: data.test_split; another one writes paired.SPLIT.md): "
                         "compare on dev to decide, on test to report")
    ap.add_argument("--against", type=Path, default=None, metavar="DIR",
                    help="another --output of this script (e.g. the same recipes under other --set keys): a recipe "
                         "finished in both is also paired with its namesake there, and one finished only there "
                         "(e.g. contrastive) joins the ablation order")
    ap.add_argument("--export", type=Path, default=None, metavar="DIR",
                    help="with --paired-only: write each finished recipe's results.json and per-query nDCG@10 "
                         "(per_query.json) under DIR/seedN/MODE, to keep (commit) after the run files are gone")
    args = ap.parse_args()
    if args.export is not None and not args.paired_only:
        ap.exit(2, "compare_systems: --export goes with --paired-only (it writes finished recipes, trains nothing)\n")
    if args.paired_only:
        if not args.output.is_dir():
            ap.exit(2, f"compare_systems: --output {args.output}: no such folder (nothing finished to compare)\n")
        if args.export is not None:
            for line in _export(args):
                print(line)
        paired = _paired(args, [(m, LABELS[m], []) for m in args.modes])
        (args.output / _paired_name(args)).write_text(paired + "\n")
        print(paired)
        return

    from rocketkd.config import load_config
    from rocketkd.pipeline import run_pipeline

    rows: dict[str, list[dict]] = {}
    teachers: dict[str, list] = {}
    seed_free: Path | None = None
    for seed in args.seeds:
        first = _finished_sibling(args.output / f"seed{seed}")
        recipes = [(m, LABELS[m], [f"pipeline.round_mode={m}"]) for m in args.modes]
        recipes += [(f"only-{t}", f"distilled from {t} alone (kept without the dev check)",
                     ["pipeline.round_mode=auto", f"pipeline.teacher_members={t}", "pipeline.zero_bad_teachers=false"])
                    for t in args.teachers]
        for mode, label, recipe in recipes:
            out = args.output / f"seed{seed}" / mode
            if not (out / "stages.json").exists():
                if first is not None:
                    # with model.reranker_prior every recipe of a seed also shares the prior and the round's check
                    prior_mode = "prior" in json.loads((first / "stages.json").read_text())
                    _copy_shared(first, out, SHARED + (("prior", "teachers-1") if prior_mode else ()))
                elif seed_free is not None:
                    _copy_shared(seed_free, out, SEED_FREE)
            cfg = load_config(args.config, [*args.overrides, f"train.seed={seed}", f"candidates.seed={seed}",
                                            f"mining.seed={seed}", *recipe, f"output_dir={out}", "pipeline.plot=false"])
            result = run_pipeline(cfg)
            res = result["systems"]
            first = first or out
            seed_free = seed_free or out
            if mode == recipes[0][0]:
                rows.setdefault("BM25", []).append(res["bm25"])
                rows.setdefault("base MiniLM (zero-shot)", []).append(res["base"])
            rows.setdefault(f"retriever: {label}", []).append(res["retriever"])
            rows.setdefault(f"retriever + re-ranker: {label}", []).append(res["reranked"])
            if "hybrid" in res:
                rows.setdefault(f"hybrid (retriever + re-ranker + BM25): {label}", []).append(res["hybrid"])
            if result.get("teachers"):
                teachers.setdefault(f"seed{seed}", []).append({"recipe": mode, **result["teachers"]})
            _write(args, rows, teachers)  # after every recipe: a long run that stops still leaves its table
    print(_table(rows, args))
    paired = _paired(args, recipes)
    if paired:
        (args.output / _paired_name(args)).write_text(paired + "\n")
        print(paired)


def _paired_name(args) -> str:
    return "paired.md" if args.split is None else f"paired.{args.split}.md"


def _paired(args, recipes) -> str:
    """Paired randomization tests over the queries of ``--split`` (default: test), per-query nDCG@10 averaged over
    the seeds: each recipe in RocketQAv2's ablation order against the next (joint >= static >= contrastive >
    zero-shot base), then each recipe's retriever against BM25 and its re-ranked second stage against its retriever;
    with ``--against``, each recipe against its namesake there."""
    from rocketkd.config import load_config
    from rocketkd.data.formats import load_qrels
    from rocketkd.evaluation.compare import compare_values

    cfg = load_config(args.config, args.overrides)
    split = args.split or cfg.data.test_split
    qrels = load_qrels(Path(cfg.data.path) / "qrels" / f"{split}.tsv")
    per: dict[str, dict[str, list[float]]] = {}

    def read(root: Path, seed: int, mode: str, suffix: str = "") -> None:
        # with model.reranker_prior: the re-ranker alone (prior + g) and its prior alone on the retriever's top
        # eval.rerank_depth -- whether the cross-encoder part added anything on these queries
        kept = _per_query(root / f"seed{seed}" / mode, split, qrels)
        systems = (("retriever", mode), ("reranked", f"{mode} re-ranked"), ("reranker-raw", f"{mode} re-ranker alone"),
                   ("prior", f"{mode} prior alone"), ("base", "base"), ("bm25", "bm25"))
        for system, name in systems:
            name += suffix if system not in ("base", "bm25") else ""
            if system not in kept or (system in ("base", "bm25") and name in per):
                continue  # BM25 and the untrained encoder do not depend on the seed: counted once
            for q, v in kept[system].items():
                per.setdefault(name, {}).setdefault(q, []).append(v)

    namesakes = []
    for seed in args.seeds:
        modes = [m for m, _, _ in recipes]
        for mode in modes + ([m for m in MODES if m not in modes] if args.against else []):
            here = _finished(args.output / f"seed{seed}" / mode)
            there = args.against is not None and _finished(args.against / f"seed{seed}" / mode)
            if here:
                read(args.output, seed, mode)
            if there:
                suffix = f" [{args.against.name}]" if here else ""
                read(args.against, seed, mode, suffix)
                if suffix and mode not in namesakes:
                    namesakes.append(mode)
    order = [m for m in ("joint", "auto", "static", "contrastive") if m in per] + (["base"] if "base" in per else [])
    pairs = list(zip(order, order[1:]))
    pairs += [(m, "bm25") for m in order if m != "base" and "bm25" in per]
    pairs += [(f"{m} re-ranked", other) for m in order for other in (m, "base") if f"{m} re-ranked" in per]
    pairs += [(f"{m} re-ranker alone", f"{m} prior alone") for m in order if f"{m} prior alone" in per]
    tag = f" [{args.against.name}]" if args.against else ""
    pairs += [(f"{m}{r}", f"{m}{r}{tag}") for m in namesakes for r in ("", " re-ranked") if f"{m}{r}{tag}" in per]
    lines = [f"| A vs B ({split} nDCG@10, mean over seeds per query) | A | B | A - B | 95% CI | p (paired randomization) |",
             "|---|---|---|---|---|---|"]
    for a, b in pairs:
        va = {q: statistics.mean(v) for q, v in per[a].items()}
        vb = {q: statistics.mean(v) for q, v in per[b].items()}
        c = compare_values(vb, va, metric="nDCG@10")
        lines.append(f"| {a} vs {b} | {c.mean_b:.4f} | {c.mean_a:.4f} | {c.delta:+.4f} | [{c.ci_low:+.4f}, "
                     f"{c.ci_high:+.4f}] | {c.p_value:.3f} |")
    return "\n".join(lines) if len(pairs) else ""


SYSTEMS = ("retriever", "reranked", "reranker-raw", "prior", "base", "bm25")  # the run files paired above


def _finished(recipe: Path) -> bool:
    """A recipe with run files, or one kept by ``--export`` (its per-query values, the run files gone)."""
    return (recipe / "runs").is_dir() or (recipe / "per_query.json").is_file()


def _per_query(recipe: Path, split: str, qrels) -> dict[str, dict[str, float]]:
    """Per system, per query nDCG@10 on ``split``: from the recipe's run files where they exist, else from the
    ``per_query.json`` that ``--export`` kept."""
    from rocketkd.data.formats import read_trec_run
    from rocketkd.evaluation.metrics import evaluate_run

    found = {}
    for system in SYSTEMS:
        run_file = recipe / "runs" / f"{system}.{split}.trec"
        if run_file.exists():
            res = evaluate_run(read_trec_run(run_file), qrels, ["nDCG@10"]).per_query
            found[system] = {q: v["nDCG@10"] for q, v in res.items()}
    if not found and (recipe / "per_query.json").is_file():
        found = json.loads((recipe / "per_query.json").read_text()).get(split, {})
    return found


def _export(args) -> list[str]:
    """``--export``: each finished recipe's results.json and per-query nDCG@10 (dev and test) under the folder."""
    from rocketkd.config import load_config
    from rocketkd.data.formats import load_qrels

    cfg = load_config(args.config, args.overrides)
    splits = {s: load_qrels(Path(cfg.data.path) / "qrels" / f"{s}.tsv")
              for s in (cfg.data.dev_split, cfg.data.test_split)}
    written = []
    for seed in args.seeds:
        for mode in args.modes:
            src = args.output / f"seed{seed}" / mode
            if not (src / "runs").is_dir() or not (src / "results.json").is_file():
                continue  # unfinished: nothing to keep yet
            dst = args.export / f"seed{seed}" / mode
            dst.mkdir(parents=True, exist_ok=True)
            per = {split: _per_query(src, split, qrels) for split, qrels in splits.items()}
            tmp = dst / "per_query.json.tmp"  # written whole, then moved: no half-written file is left
            tmp.write_text(json.dumps(per, indent=1, sort_keys=True))
            tmp.replace(dst / "per_query.json")
            shutil.copy(src / "results.json", dst / "results.json")
            written.append(f"kept seed {seed} {mode}: {dst}")
    return written


def _write(args, rows: dict[str, list[dict]], teachers: dict) -> None:
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "table.md").write_text(_table(rows, args) + "\n")
    (args.output / "raw.json").write_text(json.dumps({"systems": rows, "teachers": teachers}, indent=2))


def _finished_sibling(seed_dir: Path) -> Path | None:
    """A recipe of this seed finished by an earlier invocation (e.g. joint, before --modes static): the recipes run
    now start from its shared stages instead of redoing them."""
    for mode in MODES:
        stages = seed_dir / mode / "stages.json"
        if stages.exists() and all(s in json.loads(stages.read_text()) for s in SHARED):
            return seed_dir / mode
    return None


def _copy_shared(src: Path, dst: Path, shared: tuple[str, ...]) -> None:
    """Start a recipe from another run's finished shared stages (identical work, so copied, not redone)."""
    dst.mkdir(parents=True, exist_ok=True)
    stages = json.loads((src / "stages.json").read_text())
    kept = {k: v for k, v in stages.items() if k in shared}
    subs = {"baselines": ["runs"], "mine-0": ["round0"], "warmup": ["warmup"], "mine-1": ["round1"], "prior": ["prior"]}
    lists = "teacher_lists.jsonl*" if "teachers-1" not in kept else "nothing-to-ignore"
    for stage in kept:
        for sub in subs.get(stage, []):
            if (src / sub).exists():
                shutil.copytree(src / sub, dst / sub, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("checkpoints", lists, "retriever",
                                                              "reranker", "train_*", "COMPLETE") if sub == "round1" else None)
    for v in kept.values():  # paths inside the stage records point at the source run
        for key, value in list(v.items()):
            if isinstance(value, str) and value.startswith(str(src)):
                v[key] = str(dst) + value[len(str(src)):]
    for f in (dst / "runs").glob("*") if (dst / "runs").exists() else []:
        if not f.name.startswith(("bm25.", "base.")):
            f.unlink()
    (dst / "stages.json").write_text(json.dumps(kept, indent=2))


def _table(rows: dict[str, list[dict]], args) -> str:
    head = "| system | " + " | ".join(METRICS) + " |\n|---|" + "---|" * len(METRICS)
    command = f"python scripts/compare_systems.py --config {args.config} --seeds {' '.join(map(str, args.seeds))}"
    command += f" --modes {' '.join(args.modes)}" + (f" --teachers {' '.join(args.teachers)}" if args.teachers else "")
    command += "".join(f" --set {o}" for o in args.overrides)
    lines = [f"<!-- {command} -->", head]
    for name, results in rows.items():
        cells = []
        for m in METRICS:
            vals = [r[m] for r in results]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cells.append(f"{statistics.mean(vals):.3f} ± {sd:.3f}")
        lines.append(f"| {name} (n={len(results)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
