"""How SciFact's test claims overlap its training claims (docs/results.md, Limits; data/scifact/README.md).

Counts the test claims that share a relevant abstract with a train or dev claim, the abstracts relevant to both,
and the test claims whose text equals a train or dev claim's (case and surrounding space ignored).

    python scripts/scifact_overlap.py [data/scifact]
"""

from __future__ import annotations

import sys
from pathlib import Path

from rocketkd.data import load_retrieval_data


def relevant(qrels: dict) -> dict[str, set[str]]:
    return {q: {p for p, grade in judged.items() if grade > 0} for q, judged in qrels.items()}


def _key(text: str) -> str:
    return " ".join(text.lower().split())


def main(folder: str = "data/scifact") -> None:
    data = load_retrieval_data(Path(folder))
    train, dev, test = (relevant(data.qrels[s]) for s in ("train", "dev", "test"))
    train_docs = set().union(*train.values())
    seen_docs = train_docs | set().union(*dev.values())
    test_docs = set().union(*test.values())
    print(f"judged claims: train {len(train)}, dev {len(dev)}, test {len(test)}")
    print(f"test claim ids also in train or dev: {len(set(test) & (set(train) | set(dev)))}")
    print(f"test claims sharing a relevant abstract with a train or dev claim: "
          f"{sum(bool(docs & seen_docs) for docs in test.values())} of {len(test)} "
          f"(with a train claim alone: {sum(bool(docs & train_docs) for docs in test.values())})")
    print(f"abstracts relevant to a test claim: {len(test_docs)}, also relevant to a train or dev claim: "
          f"{len(test_docs & seen_docs)}")
    seen = {_key(data.queries[q]): q for split in (train, dev) for q in split}
    copies = [(q, seen[_key(data.queries[q])]) for q in test if _key(data.queries[q]) in seen]
    print(f"test claims whose text equals a train or dev claim's: {len(copies)} {copies}")


if __name__ == "__main__":
    main(*sys.argv[1:])
