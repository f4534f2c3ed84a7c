"""Self-supervised training queries made from the corpus itself: a passage's title as the query, the passage as its
positive.

Why: distillation from label-free teachers (BM25, the base encoder, their ensemble) can teach on any query, but a
small collection has few judged ones (Cranfield: 125 training queries). Titles are queries written by the passages'
own authors, so each titled passage yields one more training list whose positive is certain — the same idea as the
pseudo-queries of GPL (Wang et al. 2022) and InPars, without a generator. No dev or test label is read: passages are
chosen from the whole corpus by a hash of their id, not by any judgment.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

from rocketkd.errors import ConfigError

logger = logging.getLogger(__name__)

TITLE_QUERY_PREFIX = "title:"
MIN_TITLE_WORDS = 4  # shorter titles ("addendum", "heat transfer") name a field, not a question


def is_title_query(qid: str) -> bool:
    return qid.startswith(TITLE_QUERY_PREFIX)


def title_queries(corpus: Any, limit: int) -> dict[str, tuple[str, str]]:
    """Up to ``limit`` title queries: query id -> (title, passage id).

    A passage qualifies when its title has at least ``MIN_TITLE_WORDS`` words and its text is not empty (an empty
    passage is only its title: the pair would teach nothing). Qualifying passages are taken in the order of a hash
    of their id, so the choice is fixed for a corpus and does not favour its first lines.
    """
    if limit <= 0:
        return {}
    ids, titles, texts = corpus.column("id"), corpus.column("title"), corpus.column("text")
    chosen = [
        (hashlib.sha1(pid.encode("utf-8")).hexdigest(), pid, " ".join(title.split()))
        for pid, title, text in zip(ids, titles, texts)
        if len(title.split()) >= MIN_TITLE_WORDS and text.strip()
    ]
    chosen.sort()
    return {TITLE_QUERY_PREFIX + pid: (title, pid) for _, pid, title in chosen[:limit]}


def add_title_queries(data: Any, split: str, limit: int, grade: int) -> int:
    """Add up to ``limit`` title queries to ``data.queries`` and to the qrels of ``split`` (each judged ``grade`` on
    its own passage). Idempotent: a split that already holds title queries is left as it is. Returns how many of
    the split's queries are title queries."""
    if limit <= 0:
        return 0
    if split not in data.qrels:
        raise ConfigError(
            f"config key 'data.train_split': no qrels split {split!r} (loaded: {', '.join(data.qrels) or 'none'})"
        )
    qrels = data.qrels[split]
    present = sum(1 for qid in qrels if is_title_query(qid))
    if present:
        return present
    made = title_queries(data.corpus, limit)
    clash = next((qid for qid in made if qid in data.queries), None)
    if clash is not None:
        raise ConfigError(
            f"config key 'data.title_queries': the collection already has a query with id {clash!r}; "
            f"title queries are named {TITLE_QUERY_PREFIX}<passage id>"
        )
    for qid, (title, pid) in made.items():
        data.queries[qid] = title
        qrels[qid] = {pid: grade}
    if len(made) < limit:
        logger.info("data.title_queries: %d asked, %d passages have a title of >= %d words and a text",
                    limit, len(made), MIN_TITLE_WORDS)
    logger.info("data.title_queries: %d title queries join split %r (each positive: its own passage, grade %d)",
                len(made), split, grade)
    return len(made)


def apply_data_config(cfg: Any, data: Any) -> Any:
    """What ``cfg.data`` asks of a loaded collection beyond its files (now: ``data.title_queries``); returns it."""
    add_title_queries(data, cfg.data.train_split, cfg.data.title_queries, max(1, cfg.data.min_positive_grade))
    return data
