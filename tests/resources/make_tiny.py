"""Regenerates tests/resources/tiny: a 60-passage BEIR-layout collection whose relevance follows topic words.

Run once by hand (python tests/resources/make_tiny.py); the files it writes are committed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TOPICS = [
    "wing", "flutter", "boundary", "shock", "heat", "nozzle", "panel", "vortex", "buckling", "plate",
    "jet", "cone", "cylinder", "turbulence", "pressure", "laminar", "supersonic", "shell", "blade", "orbit",
]
FILLER = ["the", "of", "a", "flow", "study", "results", "method", "theory", "data", "effect", "model", "test"]


def main() -> None:
    rng = random.Random(7)
    out = Path(__file__).parent / "tiny"
    (out / "qrels").mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], {"train": [], "dev": [], "test": []}
    for t, topic in enumerate(TOPICS):
        partner = TOPICS[(t + 1) % len(TOPICS)]
        for j in range(3):
            words = [topic] * (3 - j) + [partner] * (j == 2) + rng.sample(FILLER, 5)
            rng.shuffle(words)
            corpus.append({"_id": f"d{t * 3 + j}", "title": f"{topic} report", "text": " ".join(words)})
        queries.append({"_id": f"q{t}", "text": f"what is known of {topic} {rng.choice(FILLER)}"})
        split = "train" if t < 12 else ("dev" if t < 16 else "test")
        for j, grade in enumerate((2, 1, 1)):
            qrels[split].append((f"q{t}", f"d{t * 3 + j}", grade))
    with open(out / "corpus.jsonl", "w") as f:
        f.writelines(json.dumps(d) + "\n" for d in corpus)
    with open(out / "queries.jsonl", "w") as f:
        f.writelines(json.dumps(q) + "\n" for q in queries)
    for split, rows in qrels.items():
        with open(out / "qrels" / f"{split}.tsv", "w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{q}\t{d}\t{s}\n" for q, d, s in rows)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + TOPICS + FILLER
    vocab += ["what", "is", "known", "report", "."] + list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab += ["##" + c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    (Path(__file__).parent / "tiny_vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")


if __name__ == "__main__":
    main()
