"""`rocketkd index` as a whole process against a short sentence-transformers script, both at bf16 autocast.

    python scripts/bench_index_process.py --data data/cranfield data/scifact --reps 3

The peer (written to a temporary file and run as its own process): read corpus.jsonl, join title and text as
rocketkd does,
``SentenceTransformer(model).encode(texts, batch_size, normalize_embeddings=True)`` under
``torch.autocast("cpu", torch.bfloat16)``, add the vectors to a ``faiss.IndexFlatIP`` and write it. rocketkd:
``rocketkd index --model M --corpus DATA --autocast bf16 --batch-size B --output DIR`` (no embedding cache: it is not
on for `rocketkd index` unless ``$ROCKETKD_EMBEDDING_CACHE`` is set, and this script clears that variable).

Each side runs once untimed first (rocketkd then has the corpus's Arrow file and token ids stored, as on any second
command over a corpus; the peer has warm imports and file caches alike), then the two alternate ``--reps`` times
(A, B, A, B, ...); each side is summarised by its median wall time. Quality: nDCG@10 of the test queries against each
index, every query encoded by rocketkd in fp32 (so only the passage vectors differ). Prints one JSON line and a
Markdown table; ``--json-out`` writes the JSON too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402  (scripts/ is not a package)

PEER = """
import json, sys
import faiss, numpy as np, torch
from sentence_transformers import SentenceTransformer

corpus_path, model_path, out_path, batch_size = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
docs = [json.loads(line) for line in open(corpus_path, encoding="utf-8") if line.strip()]
def join(title, text):  # the text rocketkd encodes: "title text" unless the text starts with its title
    return f"{title} {text}" if title and text and not text.startswith(title) else (text or title)
texts = [join(d.get("title") or "", d.get("text") or "") for d in docs]
model = SentenceTransformer(model_path, device="cpu")
with torch.autocast("cpu", torch.bfloat16):
    emb = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
index = faiss.IndexFlatIP(emb.shape[1])
index.add(np.ascontiguousarray(emb, dtype=np.float32))
faiss.write_index(index, out_path)
"""


def _timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(cmd)}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return seconds


def _ndcg(index_path: Path, ids: list[str], data, queries_emb, qids) -> float:
    import faiss
    import numpy as np

    from rocketkd.evaluation.metrics import evaluate_run

    index = faiss.read_index(str(index_path))
    scores, rows = index.search(np.ascontiguousarray(queries_emb, dtype=np.float32), 10)
    run = {q: {ids[r]: float(s) for r, s in zip(rr, ss) if r >= 0} for q, rr, ss in zip(qids, rows, scores)}
    return float(evaluate_run(run, data.qrels["test"], ["nDCG@10"]).mean["nDCG@10"])


def bench(data_path: str, model: str, reps: int, batch_size: int, work: Path) -> dict:
    from rocketkd.data.formats import load_retrieval_data
    from rocketkd.models import DualEncoder
    from rocketkd.search.encode import encode_queries

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ROCKETKD_EMBEDDING_CACHE", None)
    peer_script = work / "st_index.py"
    peer_script.write_text(PEER)
    name = Path(data_path).name
    rk_out, st_out = work / f"{name}-rocketkd", work / f"{name}-st.faiss"

    def rocketkd_cmd(i: int) -> list[str]:
        return [sys.executable, "-m", "rocketkd.cli", "-q", "--no-progress", "index", "--model", model, "--corpus",
                data_path, "--autocast", "bf16", "--batch-size", str(batch_size), "--output", f"{rk_out}-{i}"]

    def st_cmd() -> list[str]:
        return [sys.executable, str(peer_script), str(Path(data_path) / "corpus.jsonl"), model, str(st_out),
                str(batch_size)]

    bc.log(f"{name}: untimed first run of each")
    first = {"rocketkd": _timed(rocketkd_cmd(0), env), "st": _timed(st_cmd(), env)}
    seconds: dict[str, list[float]] = {"rocketkd": [], "st": []}
    load = []
    for i in range(1, reps + 1):
        load.append(bc.load_avg()[0])
        seconds["rocketkd"].append(_timed(rocketkd_cmd(i), env))
        seconds["st"].append(_timed(st_cmd(), env))
        bc.log(f"{name}: rep {i}: rocketkd {seconds['rocketkd'][-1]:.1f}s, st {seconds['st'][-1]:.1f}s")
    data = load_retrieval_data(data_path)
    qids = sorted(data.qrels["test"])
    encoder = DualEncoder.from_pretrained(model)
    q = encode_queries(encoder, [data.queries[x] for x in qids], autocast="no")
    ids = (Path(f"{rk_out}-1") / "ids.txt").read_text().split()
    st_ids = [json.loads(line)["_id"] for line in open(Path(data_path) / "corpus.jsonl", encoding="utf-8")
              if line.strip()]
    rk, st = bc.median(seconds["rocketkd"]), bc.median(seconds["st"])
    return {
        "data": data_path, "passages": len(ids), "batch_size": batch_size,
        "seconds": seconds, "first_run_seconds": first, "rocketkd_median_s": bc.rnd(rk, 2),
        "st_median_s": bc.rnd(st, 2), "ratio": bc.rnd(st / rk, 3), "target_ge_1.15": st / rk >= 1.15,
        "ndcg10_rocketkd": bc.rnd(_ndcg(Path(f"{rk_out}-1") / "index.faiss", ids, data, q, qids), 4),
        "ndcg10_st": bc.rnd(_ndcg(st_out, st_ids, data, q, qids), 4), "load1_before_reps": load,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["data/cranfield"], help="dataset folders (BEIR layout)")
    parser.add_argument("--model", default=None, help="bi-encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per side, alternating")
    parser.add_argument("--batch-size", type=int, default=64, help="rows per batch, both sides")
    parser.add_argument("--json-out", default=None)
    args = parser.parse_args()
    bc.setup_env()
    from rocketkd.models import resolve_model_path

    model = str(resolve_model_path(args.model))
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        results = [bench(d, model, args.reps, args.batch_size, Path(tmp)) for d in args.data]
    print(bc.md_table(
        ["corpus", "passages", "rocketkd index (median s)", "ST + bf16 script (median s)", "ratio", "nDCG@10 rk / st"],
        [[r["data"], r["passages"], r["rocketkd_median_s"], r["st_median_s"], r["ratio"],
          f"{r['ndcg10_rocketkd']} / {r['ndcg10_st']}"] for r in results],
    ))
    bc.emit({"bench": "index_process", "reps": args.reps, "results": results, "machine": bc.machine_info(),
             "wall_s": bc.rnd(time.time() - started, 1)}, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
