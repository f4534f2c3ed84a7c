"""Token lengths sized from the collection: ``model.query_max_length`` / ``passage_max_length`` /
``reranker_max_length: auto``.

Why: lengths chosen for one collection do not carry to another. The demo's 32 / 128 tokens, picked on Cranfield's
25 dev queries, cost the untrained MiniLM 0.06 nDCG@10 on a collection kept aside against the model's own
settings (issue 20), while on Cranfield's 150 dev + train queries the two settings tie (dev 0.461 / 0.446, train
0.333 / 0.338 for 32/128 / 64/256). Truncating below what the texts need is a speed choice, not a quality one, so
``auto`` keeps what the texts hold, up to what the model was built for:

* query: the 99th percentile of the token counts of the train + dev queries, rounded up to a multiple of 8, at most
  the model's own query length (the folder's, else min(64, its max_seq_length));
* passage: the 95th percentile over up to :data:`SAMPLE` passages (evenly spaced), rounded up to a multiple of 32,
  at most the model folder's ``max_seq_length`` (all-MiniLM-L6-v2: 256; else its position limit);
* pair (the cross-encoder): query + passage, rounded up to 8, at most the re-ranker's position limit.

Counts include the special tokens. Nothing here reads a label, and only token counts of texts are read, so the
lengths cannot be tuned to test. :func:`size_lengths` writes the ints into ``cfg.model`` (the run's
``config.yaml`` keeps them) and logs them with the percentiles they came from.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np

from rocketkd.models._hf import ROCKETKD_JSON, load_tokenizer, read_model_json, resolve_model_path
from rocketkd.models.st_layout import read_st_layout

__all__ = ["AUTO", "SAMPLE", "auto_lengths", "size_lengths"]

logger = logging.getLogger(__name__)

AUTO = "auto"
SAMPLE = 2000  # passages whose tokens are counted: percentiles settle long before, and a large corpus stays cheap
KEYS = ("query_max_length", "passage_max_length", "reranker_max_length")


def _round_up(n: float, step: int) -> int:
    return int(step * math.ceil(n / step))


def _position_limit(root: str, subfolder: str) -> int | None:
    config = read_model_json(root, "config.json", subfolder) or {}
    limit = config.get("max_position_embeddings")
    # RoBERTa-style models count two padding positions in max_position_embeddings
    return int(limit) - (2 if config.get("model_type") in ("roberta", "xlm-roberta", "camembert") else 0) \
        if isinstance(limit, int) and limit > 0 else None


def _model_caps(retriever: str | None, reranker: str | None) -> tuple[int, int, int]:
    """(query, passage, pair) caps: what the retriever folder was built for, and the re-ranker's position limit."""
    root = resolve_model_path(retriever)
    layout = read_st_layout(root)
    own = read_model_json(root, ROCKETKD_JSON) or {}
    if own.get("format") != "rocketkd.dual_encoder":
        own = {}
    positions = _position_limit(root, layout.transformer_subfolder) or 512
    passage = int(own.get("passage_max_length") or layout.max_seq_length or positions)
    query = int(own.get("query_max_length") or layout.query_max_seq_length or min(64, passage))
    rroot = resolve_model_path(reranker)
    pair = _position_limit(rroot, read_st_layout(rroot).transformer_subfolder) or 512
    return min(query, positions), min(passage, positions), pair


def auto_lengths(tokenizer: Any, queries: list[str], passages: list[str], caps: tuple[int, int, int]) -> dict:
    """The three lengths (see the module docstring) from the texts' token counts under ``caps``, with the
    percentiles they came from."""
    def counts(texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros(1)
        return np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=True, verbose=False)["input_ids"]])

    q99 = float(np.percentile(counts(queries), 99))
    p95 = float(np.percentile(counts(passages), 95))
    query = max(8, min(caps[0], _round_up(q99, 8)))
    passage = max(32, min(caps[1], _round_up(p95, 32)))
    pair = min(caps[2], _round_up(query + passage, 8))
    return {"query_max_length": query, "passage_max_length": passage, "reranker_max_length": pair,
            "query_tokens_p99": q99, "passage_tokens_p95": p95, "caps": list(caps)}


def size_lengths(cfg: Any, data: Any) -> dict | None:
    """Replace each ``auto`` among ``cfg.model``'s lengths by what :func:`auto_lengths` gives for ``data``; None if
    no key is ``auto``. Idempotent: a second call finds ints and does nothing."""
    m = cfg.model
    wanted = [k for k in KEYS if getattr(m, k) == AUTO]
    if not wanted:
        return None
    d = cfg.data
    qids = [q for split in (d.train_split, d.dev_split) for q in data.qrels.get(split, {})] or list(data.queries)
    queries = [data.queries[q] for q in dict.fromkeys(qids) if q in data.queries]
    ids = data.corpus.ids
    step = max(1, len(ids) // SAMPLE)
    passages = [data.corpus.get_text(ids[i]) for i in range(0, len(ids), step)][:SAMPLE]
    root = resolve_model_path(m.retriever)
    tokenizer = load_tokenizer(root, read_st_layout(root).transformer_subfolder)
    sized = auto_lengths(tokenizer, queries, passages, _model_caps(m.retriever, m.reranker))
    if m.query_max_length != AUTO or m.passage_max_length != AUTO:  # a pair fits the two lengths actually used
        q = sized["query_max_length"] if m.query_max_length == AUTO else int(m.query_max_length)
        p = sized["passage_max_length"] if m.passage_max_length == AUTO else int(m.passage_max_length)
        sized["reranker_max_length"] = min(sized["caps"][2], _round_up(q + p, 8))
    for key in wanted:
        setattr(m, key, sized[key])
    logger.info("model lengths sized from %s (auto): %s (queries: 99th percentile %.0f tokens over %d; passages: "
                "95th percentile %.0f over %d; caps q/p/pair %s)", d.path,
                ", ".join(f"{k} {sized[k]}" for k in wanted), sized["query_tokens_p99"], len(queries),
                sized["passage_tokens_p95"], len(passages), "/".join(map(str, sized["caps"])))
    return sized
