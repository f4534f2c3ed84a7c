"""rocketkd: dense retrievers distilled from a cross-encoder re-ranker (RocketQAv2), FAISS serving, honest metrics.

The public API, in the order data flows::

    from rocketkd import load_config, load_retrieval_data, mine, train, run_train, DenseIndex, evaluate_run
    from rocketkd import run_pipeline
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "Config": "config", "load_config": "config",
    "load_retrieval_data": "data.formats", "Corpus": "data.corpus",
    "CandidateList": "types", "JointBatch": "training.batch",
    "DualEncoder": "models", "CrossEncoderRanker": "models",
    "mine": "candidates.mining", "train": "training.loop",
    "DenseIndex": "search.index", "BM25Retriever": "search.bm25",
    "rerank_run": "search.rerank", "fuse_runs": "search.fusion",
    "evaluate_run": "evaluation.metrics",
    "run_train": "pipeline", "run_pipeline": "pipeline",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    # Lazy: `rocketkd --help` and the data layer should not pay for importing torch/transformers/faiss.
    if name in _EXPORTS:
        module = importlib.import_module(f".{_EXPORTS[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'rocketkd' has no attribute {name!r}")
