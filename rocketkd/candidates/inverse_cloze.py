"""Inverse-cloze queries: a sentence cut out of a passage is the query, the rest of the passage its positive.

Why: the re-ranker's cross-encoder ``g`` (:mod:`rocketkd.teachers.prior`) learns from a few hundred judged queries,
too few to move it beyond its prior (issue 20). The inverse cloze task (Lee et al., ACL 2019, "Latent Retrieval for
Weakly Supervised Open Domain Question Answering") makes a training query of every passage without any judgment:
the cut sentence still shares the passage's topic, entities and findings, but no longer its exact words, so BM25 and
the encoder -- the prior -- rank the passage well but not perfectly, and what cross-attention can see about the pair
is left for ``g`` to learn. Scientific claims (SciFact) are close to such sentences.

With ``cut="title"`` the query is the passage's title instead and every passage loses its title: titles are
written by the passages' authors as a summary of their finding, close to a claim (SciFact) or a topic.

Every passage of the corpus loses one sentence (the same rule for positives and negatives, so "a sentence is
missing" says nothing about which candidate is the positive). A sentence that nearly repeats a judged query of any
split is never made a query (content-word Jaccard, :func:`rocketkd.candidates.title_queries.near_held_out`): the
pre-trained ``g`` is checked on the dev and train queries and reported on test.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from rocketkd.candidates.title_queries import MIN_TITLE_WORDS, content_words, near_held_out
from rocketkd.data.corpus import Corpus, EmptyPassageWarning

ICT_QUERY_PREFIX = "ict:"
MIN_WORDS, MAX_WORDS = 6, 60  # a sentence shorter names nothing; a longer one is usually a split that failed
MIN_SENTENCES = 3  # the cut passage keeps at least two sentences (and the title)
# A sentence ends at . ! or ? before white space; in cased text the next sentence must start like one (a capital or a
# digit), which keeps "e.g. the" and "et al. (2019)" whole. Lower-cased text (Cranfield) cannot tell.
_CASED_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9])")
_ANY_END = re.compile(r"(?<=[.!?])\s+")


@dataclass
class InverseCloze:
    """The cut corpus (same ids, one sentence fewer each), the queries (id -> sentence) and each query's passage."""

    corpus: Corpus
    queries: dict[str, str]
    positives: dict[str, str]  # query id -> passage id


def sentences(text: str) -> list[str]:
    text = " ".join(text.split())
    splitter = _CASED_END if any(c.isupper() for c in text) else _ANY_END
    return [s for s in splitter.split(text) if s]


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha1("\x1f".join(parts).encode("utf-8")).digest()[:8], "little")


def _cut(pid: str, title: str, text: str) -> tuple[str, str | None]:
    """(text without its chosen sentence, the sentence) -- or (text, None) when the passage is too short to cut.
    The chosen sentence is fixed by a hash of the id; a sentence that repeats the title is never chosen (the title
    is joined to the text again when the text no longer starts with it)."""
    parts = sentences(text)
    norm_title = " ".join(title.split()).lower()
    usable = [i for i, s in enumerate(parts)
              if MIN_WORDS <= len(s.split()) <= MAX_WORDS and s.lower() != norm_title]
    if len(parts) < MIN_SENTENCES or not usable:
        return text, None
    i = usable[_hash("sentence", pid) % len(usable)]
    return " ".join(parts[:i] + parts[i + 1:]), parts[i]


def _cut_title(title: str, text: str) -> tuple[str, str | None]:
    """(text without the title, the title) -- or (text, None) for a title too short to ask anything (or no text)."""
    title, text = " ".join(title.split()), " ".join(text.split())
    after = text[len(title):] if title and text.startswith(title) else None
    if after is not None and (title[-1] in ".!?" or after[:1] in ".!?"):  # the title is the text's first sentence
        text = after.lstrip(".!? ")  # (Cranfield), not merely its first words
    if len(title.split()) < MIN_TITLE_WORDS or not text:
        return text or title, None
    return text, title


CUTS = ("sentence", "title")


def inverse_cloze(corpus: Any, limit: int, avoid: Iterable[str] = (), cut: str = "sentence") -> InverseCloze:
    """Up to ``limit`` inverse-cloze queries from ``corpus``, none near a query text of ``avoid``; ``cut`` is what
    the query is: a ``sentence`` of the passage, or its ``title``.

    Passages become queries in the order of a hash of their id, so the choice is fixed for a corpus and does not
    favour its first lines. Returns the cut corpus (every passage with a cuttable text loses its sentence) with them.
    """
    held_out = [content_words(q) for q in avoid]
    index: dict[str, list[int]] = {}
    for i, words in enumerate(held_out):
        for w in words:
            index.setdefault(w, []).append(i)
    if cut not in CUTS:
        raise ValueError(f"cut must be one of {CUTS}, got {cut!r}")
    records, made = [], []
    for pid, title, text in zip(corpus.column("id"), corpus.column("title"), corpus.column("text")):
        if cut == "title":
            rest, sentence = _cut_title(title or "", text or "")
            records.append({"_id": pid, "title": "", "text": rest})
        else:
            rest, sentence = _cut(pid, title or "", text or "")
            records.append({"_id": pid, "title": title or "", "text": rest})
        if sentence is not None:
            made.append((_hash("query", pid), pid, sentence))
    made.sort()
    queries: dict[str, str] = {}
    positives: dict[str, str] = {}
    for _, pid, sentence in made:
        if len(queries) == limit:
            break
        if held_out and near_held_out(sentence, held_out, index):
            continue
        queries[ICT_QUERY_PREFIX + pid] = sentence
        positives[ICT_QUERY_PREFIX + pid] = pid
    with warnings.catch_warnings():  # its empty passages are the corpus's own, which said so when it loaded
        warnings.simplefilter("ignore", EmptyPassageWarning)
        cut_corpus = Corpus.from_records(records, source=f"{corpus.source} (inverse cloze)")
    return InverseCloze(cut_corpus, queries, positives)
