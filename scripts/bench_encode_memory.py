#!/usr/bin/env python
"""Memory of a whole-corpus encode: RSS growth of ``encode_corpus`` against the embedding matrix plus a stated budget.

A synthetic BEIR corpus of ``--passages`` passages is written line by line (never held as a list of strings):
passage i has a word count drawn uniformly from ``--words LOW HIGH``, its words drawn from a pool of 5,000 random
lowercase pseudo-words (seeded). The parent process builds the corpus's Arrow cache; then a fresh child process loads
the model and the memory-mapped corpus, warms up on 8 passages, and measures one ``encode_corpus(model, corpus)``
with its defaults (so it includes the first tokenisation of the corpus, stored beside the Arrow file, as a first
``rocketkd index`` of a new corpus does). The embeddings stay in memory (no ``out_path``), as ``rocketkd index``
keeps them.

Readings (Linux ``/proc/self/status``, in the child), each as a rise over the child just before the encode:

* **anon**: peak of ``RssAnon`` (anonymous memory: heap, arrays, tensors), sampled every 5 ms. The target is on it.
* **rss**: ``VmHWM`` (peak resident set, reset through ``/proc/self/clear_refs`` before the encode). It also counts
  the pages of the memory-mapped corpus and token-id files that were read, which the kernel can drop at will.

The target: ``anon rise <= embeddings + per-row bookkeeping + fixed budget``, where embeddings = N x dim x 4 bytes,
the per-row bookkeeping is ``BOOKKEEPING_BYTES_PER_ROW`` (the token offsets, lengths and sort order of the rows: a
handful of int64 per row) and the fixed budget is ``--budget-mib`` (default: 256 MiB for ``--model tiny``, 768 MiB
otherwise). The budget covers what does not grow with N: one batch's activations; the allocator's and oneDNN's caches
(oneDNN keeps up to 1,024 kernel primitives, one set per batch shape; under bf16 they are most of the tiny model's
figure); tokenisation blocks of 2,048 texts; one encoder call's vectors. Holding every text, every token id or every
batch's tensors would break it at a large N.

``--model tiny`` (default) builds a 2-layer, hidden-32 BERT with a word-level fast tokenizer over the pseudo-word
pool (nothing downloaded): fast enough for 1M passages in minutes on a 2-core CPU. ``--model NAME_OR_DIR`` takes
anything :func:`rocketkd.models.resolve_model_path` does (e.g. ``packaged:all-MiniLM-L6-v2``, the packaged MiniLM).

    python scripts/bench_encode_memory.py                       # 1M passages, tiny model
    python scripts/bench_encode_memory.py --passages 20000      # the size tests/test_encode_memory.py runs
    python scripts/bench_encode_memory.py --model packaged:all-MiniLM-L6-v2 --passages 2000 --words 5 30

The last line of stdout is one JSON object; ``holds`` is the target.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import string
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_common as bc  # noqa: E402

bc.setup_env()

BOOKKEEPING_BYTES_PER_ROW = 64  # int64 token offsets, lengths, sort order, row map, batch order: 8 bytes each, x2
POOL_WORDS = 5000
BLOCK = 10_000  # passages generated per block


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--passages", type=int, default=1_000_000, help="passages in the synthetic corpus")
    p.add_argument("--words", type=int, nargs=2, default=(10, 100), metavar=("LOW", "HIGH"),
                   help="words per passage, drawn uniformly from LOW..HIGH")
    p.add_argument("--model", default="tiny", help="'tiny' (built here) or a model name/folder for resolve_model_path")
    p.add_argument("--budget-mib", type=float, default=None,
                   help="fixed budget in MiB (default 256 for --model tiny, 768 otherwise)")
    p.add_argument("--autocast", default="auto", help="encode_corpus autocast: auto, bf16, fp16, no")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in the child (default 1: memory does not need speed, and on a shared 2-core "
                        "machine one thread runs the tiny model several times faster than two)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", default=None)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: a work folder to measure in
    return p.parse_args(argv)


def word_pool(seed: int):
    """``POOL_WORDS`` distinct random lowercase words of 3-10 letters."""
    import numpy as np

    rng = np.random.default_rng(seed)
    letters = np.array(list(string.ascii_lowercase))
    words: set[str] = set()
    while len(words) < POOL_WORDS:
        words.add("".join(letters[rng.integers(0, 26, int(rng.integers(3, 11)))].tolist()))
    return np.array(sorted(words), dtype=object)


def write_corpus(path: Path, n: int, words: tuple[int, int], pool, seed: int) -> None:
    """``n`` passages written block by block: a block of ``BLOCK`` passages is the most held at once."""
    import numpy as np

    rng = np.random.default_rng(seed + 1)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, n, BLOCK):
            count = min(BLOCK, n - start)
            sizes = rng.integers(words[0], words[1] + 1, count)
            drawn = pool[rng.integers(0, len(pool), int(sizes.sum()))]
            ends = np.cumsum(sizes)
            lines = [
                json.dumps({"_id": str(start + i), "title": "", "text": " ".join(drawn[e - s : e].tolist())})
                for i, (s, e) in enumerate(zip(sizes.tolist(), ends.tolist()))
            ]
            f.write("\n".join(lines) + "\n")


def build_tiny_model(path: Path, pool) -> Path:
    """A 2-layer, hidden-32 BERT and a word-level fast tokenizer over ``pool`` (plus [PAD] [UNK] [CLS] [SEP])."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    vocab = {w: i for i, w in enumerate(specials + pool.tolist())}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]",
        model_max_length=128,
    )
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    fast.save_pretrained(path)
    return path


def child(args) -> None:
    """Load the model and the corpus, then measure one whole-corpus encode_corpus; print one JSON line."""
    from rocketkd.data.corpus import Corpus
    from rocketkd.models import DualEncoder
    from rocketkd.search.encode import encode_corpus

    bc.set_threads(args.threads)
    folder = Path(args.child)
    spec = json.loads((folder / "spec.json").read_text())
    model = DualEncoder.from_pretrained(spec["model"])
    corpus = Corpus.from_beir(folder / "corpus.jsonl", cache_dir=folder / "cache")
    encode_corpus(model, corpus, rows=list(range(min(8, len(corpus)))), show_progress=False, autocast=args.autocast)
    gc.collect()
    before = bc.proc_status_kib()
    reset = bc.reset_peak_rss()
    start = time.perf_counter()
    with bc.AnonPeakSampler() as sampler:
        emb = encode_corpus(model, corpus, show_progress=False, autocast=args.autocast)
    seconds = time.perf_counter() - start
    after = bc.proc_status_kib()
    print(json.dumps({
        "passages": len(corpus), "dim": int(emb.shape[1]), "emb_bytes": int(emb.nbytes),
        "max_length": model.passage_max_length, "before_kib": before, "after_kib": after,
        "peak_anon_kib": sampler.peak, "peak_reset": reset, "seconds": round(seconds, 2),
    }))


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.child:
        child(args)
        return {}
    from rocketkd.data.corpus import Corpus
    from rocketkd.models import resolve_model_path

    start_all = time.perf_counter()
    work = bc.work_dir("rocketkd-bench-encode-memory-")
    pool = word_pool(args.seed)
    t0 = time.perf_counter()
    write_corpus(work / "corpus.jsonl", args.passages, tuple(args.words), pool, args.seed)
    bc.log(f"[memory] {args.passages} synthetic passages written in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    Corpus.from_beir(work / "corpus.jsonl", cache_dir=work / "cache")  # the Arrow cache, outside the measurement
    bc.log(f"[memory] Arrow cache built in {time.perf_counter() - t0:.1f}s")
    tiny = args.model == "tiny"
    model = str(build_tiny_model(work / "tiny-model", pool)) if tiny else resolve_model_path(args.model)
    (work / "spec.json").write_text(json.dumps({"model": model}))
    budget_mib = args.budget_mib if args.budget_mib is not None else (256.0 if tiny else 768.0)

    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(work), "--autocast", args.autocast]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"memory child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    before, after = got["before_kib"], got["after_kib"]
    mib = 1 / 1024
    emb_mib = got["emb_bytes"] / 2**20
    bookkeeping_mib = BOOKKEEPING_BYTES_PER_ROW * got["passages"] / 2**20
    anon_rise = (got["peak_anon_kib"] - before["RssAnon"]) * mib
    rss_rise = (after["VmHWM"] - before["VmRSS"]) * mib
    allowed = emb_mib + bookkeeping_mib + budget_mib
    result = {
        "bench": "encode-memory",
        "passages": got["passages"],
        "model": args.model,
        "dim": got["dim"],
        "max_length": got["max_length"],
        "words": list(args.words),
        "autocast": args.autocast,
        "embeddings_mib": bc.rnd(emb_mib, 2),
        "bookkeeping_mib": bc.rnd(bookkeeping_mib, 2),
        "budget_mib": budget_mib,
        "allowed_mib": bc.rnd(allowed, 2),
        "anon_rise_mib": bc.rnd(anon_rise, 2),
        "anon_over_embeddings_mib": bc.rnd(anon_rise - emb_mib, 2),
        "rss_rise_mib": bc.rnd(rss_rise, 2) if got["peak_reset"] else None,
        "file_rss_rise_mib": bc.rnd((after["RssFile"] - before["RssFile"]) * mib, 2),
        "holds": anon_rise <= allowed,
        "encode_s": got["seconds"],
        "child": got,
        "machine": bc.machine_info(),
        "wall_s": bc.rnd(time.perf_counter() - start_all, 1),
    }
    print(bc.md_table(
        ["passages", "dim", "embeddings MiB", "anon rise MiB", "peak RSS rise MiB", "allowed MiB", "holds", "encode s"],
        [[result["passages"], result["dim"], result["embeddings_mib"], result["anon_rise_mib"], result["rss_rise_mib"],
          result["allowed_mib"], result["holds"], result["encode_s"]]],
    ))
    bc.emit(result, args.json_out)
    return result


if __name__ == "__main__":
    main()
