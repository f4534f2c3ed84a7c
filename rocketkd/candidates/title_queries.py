"""Self-supervised training queries made from the corpus itself: a passage's title as the query, the passage as its
positive.

Why: distillation from label-free teachers (BM25, the base encoder, their ensemble) can teach on any query, but a
small collection has few judged ones (Cranfield: 125 training queries). Titles are queries written by the passages'
own authors, so each titled passage yields one more training list whose positive is certain — the same idea as the
pseudo-queries of GPL (Wang et al. 2022) and InPars, without a generator. No dev or test label is read: passages are
chosen from the whole corpus by a hash of their id, not by any judgment. Dev and test query *texts* are read once, to
drop a title that nearly repeats one of them (:data:`MAX_HELD_OUT_SIMILARITY`): training on it would be training on
the test question.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Iterable
from typing import Any

from rocketkd.errors import ConfigError
from rocketkd.models.lengths import size_lengths

logger = logging.getLogger(__name__)

TITLE_QUERY_PREFIX = "title:"
MIN_TITLE_WORDS = 4  # shorter titles ("addendum", "heat transfer") name a field, not a question
# A title whose content words overlap a dev or test query's by this Jaccard similarity or more is not used: a query
# we are measured on would otherwise be trained on nearly verbatim (Cranfield: a test query is almost the title of
# its own relevant document). 0.4 drops 32 of Cranfield's 1400 titles against its 100 dev and test queries.
MAX_HELD_OUT_SIMILARITY = 0.4
_STOP_WORDS = frozenset(
    "a an the of in on for to and or with by at from as is are be been was were what how which that this these those "
    "there can do does has have any some its it into about such when where why who whom between under over than not "
    "no also other available".split())
_WORD = re.compile(r"[a-z0-9]+")


def content_words(text: str) -> frozenset[str]:
    """The lower-cased alphanumeric words of ``text``, English function words removed (the similarity's tokens)."""
    return frozenset(w for w in _WORD.findall(text.lower()) if w not in _STOP_WORDS)


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    """Jaccard similarity of two word sets: |a & b| / |a | b| (0 for two empty sets)."""
    union = len(a | b)
    return len(a & b) / union if union else 0.0


def near_held_out(title: str, held_out: list[frozenset[str]], index: dict[str, list[int]]) -> bool:
    """Whether ``title`` is within :data:`MAX_HELD_OUT_SIMILARITY` of one of the ``held_out`` word sets (``index``:
    word -> the held-out sets holding it, so only queries sharing a word are compared)."""
    words = content_words(title)
    seen = {i for w in words for i in index.get(w, ())}
    return any(similarity(words, held_out[i]) >= MAX_HELD_OUT_SIMILARITY for i in seen)


def is_title_query(qid: str) -> bool:
    return qid.startswith(TITLE_QUERY_PREFIX)


def title_queries(corpus: Any, limit: int, avoid: Iterable[str] = ()) -> dict[str, tuple[str, str]]:
    """Up to ``limit`` title queries: query id -> (title, passage id).

    A passage qualifies when its title has at least ``MIN_TITLE_WORDS`` words, its text is not empty (an empty
    passage is only its title: the pair would teach nothing), and its title is not near any query of ``avoid`` (the
    dev and test queries): content-word Jaccard similarity below :data:`MAX_HELD_OUT_SIMILARITY`. Qualifying
    passages are taken in the order of a hash of their id, so the choice is fixed for a corpus and does not favour
    its first lines.
    """
    if limit <= 0:
        return {}
    held_out = [content_words(q) for q in avoid]
    index: dict[str, list[int]] = {}
    for i, words in enumerate(held_out):
        for w in words:
            index.setdefault(w, []).append(i)
    ids, titles, texts = corpus.column("id"), corpus.column("title"), corpus.column("text")
    chosen = [
        (hashlib.sha1(pid.encode("utf-8")).hexdigest(), pid, " ".join(title.split()))
        for pid, title, text in zip(ids, titles, texts)
        if len(title.split()) >= MIN_TITLE_WORDS and text.strip()
    ]
    chosen.sort()
    kept, dropped = {}, 0
    for _, pid, title in chosen:
        if len(kept) == limit:
            break
        if held_out and near_held_out(title, held_out, index):
            dropped += 1
            continue
        kept[TITLE_QUERY_PREFIX + pid] = (title, pid)
    if held_out:
        logger.info("data.title_queries: %d titles dropped as near a dev or test query (content-word Jaccard >= %.2f)",
                    dropped, MAX_HELD_OUT_SIMILARITY)
    return kept


def add_title_queries(data: Any, split: str, limit: int, grade: int, held_out: Iterable[str] = ()) -> int:
    """Add up to ``limit`` title queries to ``data.queries`` and to the qrels of ``split`` (each judged ``grade`` on
    its own passage), none near a query of the ``held_out`` splits (:func:`title_queries`). Idempotent: a split that
    already holds title queries is left as it is. Returns how many of the split's queries are title queries."""
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
    avoid = [text for name in held_out if name in data.qrels for text in data.split_queries(name).values()]
    made = title_queries(data.corpus, limit, avoid)
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
    """What the config asks of a loaded collection beyond its files: ``data.title_queries``, and the model lengths
    left to the data (``model.*_max_length: auto``, :func:`rocketkd.models.lengths.size_lengths`); returns it."""
    size_lengths(cfg, data)  # before the title queries join: they are not the collection's queries
    d = cfg.data
    add_title_queries(data, d.train_split, d.title_queries, max(1, d.min_positive_grade),
                      held_out=(d.dev_split, d.test_split))
    return data
