"""How the padded-token budget of an encoding batch changes rocketkd's encode speed: one model, one corpus, several
budgets timed in alternation, each against the first.

    python scripts/bench_token_budget.py --data data/cranfield data/scifact --budgets 8192 4096 --reps 4

For each corpus the first ``--passages`` passages are tokenised once (the corpus's stored token ids), then
``DualEncoder.encode_ids`` embeds them at every budget in turn (budget A, budget B, A, B, ...), after one untimed
warm-up of each; ``--batch-size`` caps the rows of a batch as in ``rocketkd index``. Reported per budget: the median
seconds, the speed ratio against the first budget (higher is faster) and the largest difference of a vector
element against the first budget's vectors (bf16 batches of other shapes round differently). This is how
``CPU_MAX_TOKENS`` in ``rocketkd/models/batching.py`` was chosen (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import bench_common as bc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", nargs="+", default=[str(bc.REPO / "data" / "cranfield")], help="BEIR folders")
    p.add_argument("--model", default=None, help="bi-encoder folder (default: the packaged MiniLM)")
    p.add_argument("--budgets", type=int, nargs="+", default=[8192, 4096], help="padded tokens per batch")
    p.add_argument("--batch-size", type=int, default=64, help="most rows in a batch")
    p.add_argument("--passages", type=int, default=1400, help="passages encoded from each corpus (its first ones)")
    p.add_argument("--reps", type=int, default=4, help="timed rounds")
    p.add_argument("--autocast", default="bf16", choices=["bf16", "no"])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default torch's)")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    if any(b < 1 for b in args.budgets) or args.reps < 1 or args.passages < 1:
        p.error("--budgets, --reps and --passages must be positive")
    bc.setup_env()
    bc.set_threads(args.threads)
    import numpy as np
    import torch

    from rocketkd.data.formats import load_retrieval_data
    from rocketkd.data.tokens import corpus_token_ids
    from rocketkd.models import DualEncoder

    model = DualEncoder.from_pretrained(args.model)
    dtype = torch.bfloat16 if args.autocast == "bf16" else None
    results, rows = [], []
    for path in args.data:
        corpus = load_retrieval_data(path).corpus
        tokens = corpus_token_ids(corpus, model.tokenizer, int(model.passage_max_length))
        seqs = tokens.rows(np.arange(min(args.passages, len(corpus))))
        fns = {b: (lambda b=b, seqs=seqs: model.encode_ids(seqs, batch_size=args.batch_size, max_tokens=b,
                                                            autocast_dtype=dtype))
               for b in args.budgets}
        bc.log(f"{path}: {len(seqs)} passages, budgets {args.budgets}")
        times, last = bc.interleaved(fns, args.reps)
        first = args.budgets[0]
        base = bc.median(times[first])
        per = {}
        for b in args.budgets:
            med = bc.median(times[b])
            per[str(b)] = {"seconds": [bc.rnd(t, 6) for t in times[b]], "median_s": bc.rnd(med, 6),
                           "speed_vs_first": bc.rnd(base / med, 3),
                           "max_abs_diff_vs_first": float(np.abs(last[b] - last[first]).max())}
            rows.append([path, len(seqs), b, bc.rnd(med, 3), per[str(b)]["speed_vs_first"],
                         f"{per[str(b)]['max_abs_diff_vs_first']:.1e}"])
        results.append({"data": path, "passages": len(seqs), "budgets": per})
    print(bc.md_table(["corpus", "passages", "token budget", "median s", "speed vs first", "max |diff|"], rows))
    bc.emit({"bench": "token_budget", "reps": args.reps, "batch_size": args.batch_size, "autocast": args.autocast,
             "results": results, "machine": bc.machine_info()}, args.json_out)


if __name__ == "__main__":
    main()
