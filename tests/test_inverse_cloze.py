"""Inverse-cloze queries (rocketkd.candidates.inverse_cloze): which sentence is cut, what the cut corpus holds."""

import pytest

from rocketkd.candidates.inverse_cloze import ICT_QUERY_PREFIX, inverse_cloze, sentences
from rocketkd.data import Corpus

CASED = ("Heat shock proteins fold other proteins in the cell. They are made in large amounts after stress. "
         "Mice without HSP70 die young from many causes. Et al. (2019) is not a sentence start here e.g. this one.")
LOWER = ("flow over a flat plate . the boundary layer thickens downstream of the leading edge . "
         "transition to turbulence was measured at high reynolds numbers . results agree with theory .")


def _corpus():
    return Corpus.from_records([
        {"_id": "a", "title": "Heat shock proteins", "text": CASED},
        {"_id": "b", "title": "flow over a flat plate .", "text": LOWER},
        {"_id": "c", "title": "short", "text": "One sentence only, which cannot be cut into a query."},
    ])


def test_sentences_cased_and_lower_cased():
    assert sentences(CASED) == [
        "Heat shock proteins fold other proteins in the cell.",
        "They are made in large amounts after stress.",
        "Mice without HSP70 die young from many causes.",
        "Et al. (2019) is not a sentence start here e.g. this one.",
    ]
    # lower-cased text (Cranfield) splits at every stop before white space
    assert sentences(LOWER)[0] == "flow over a flat plate ."
    assert len(sentences(LOWER)) == 4


def test_each_query_is_a_sentence_cut_out_of_its_passage():
    ict = inverse_cloze(_corpus(), limit=10)
    assert set(ict.queries) == {ICT_QUERY_PREFIX + "a", ICT_QUERY_PREFIX + "b"}  # "c" has one sentence: no query
    for qid, sentence in ict.queries.items():
        pid = ict.positives[qid]
        original = _corpus().get_text(pid)
        assert sentence in original
        assert sentence not in ict.corpus.get_text(pid)  # cut out, and the title did not bring it back
    # the passage that repeats its title as its first sentence never loses that sentence
    assert ict.queries[ICT_QUERY_PREFIX + "b"] != "flow over a flat plate ."
    assert ict.corpus.get_text("c") == _corpus().get_text("c")
    assert list(ict.corpus.ids) == ["a", "b", "c"]


def test_choice_is_fixed_limited_and_avoids_held_out_queries():
    first, again = inverse_cloze(_corpus(), limit=10), inverse_cloze(_corpus(), limit=10)
    assert first.queries == again.queries
    one = inverse_cloze(_corpus(), limit=1)
    assert len(one.queries) == 1 and set(one.queries) < set(first.queries)
    # a judged query that nearly repeats the cut sentence keeps that sentence from becoming a query
    avoid = [first.queries[ICT_QUERY_PREFIX + "a"]]
    kept = inverse_cloze(_corpus(), limit=10, avoid=avoid)
    assert ICT_QUERY_PREFIX + "a" not in kept.queries and ICT_QUERY_PREFIX + "b" in kept.queries
    # the cut corpus is the same whatever became a query: negatives and positives lose a sentence alike
    assert kept.corpus.get_text("a") == first.corpus.get_text("a")


def test_title_cut_asks_the_title_of_a_passage_that_lost_it():
    ict = inverse_cloze(_corpus(), limit=10, cut="title")
    # "short" has fewer than 4 words: no query, but every passage loses its title alike
    assert ict.queries == {ICT_QUERY_PREFIX + "b": "flow over a flat plate ."}
    assert ict.corpus.get_text("b").startswith("the boundary layer")  # the repeated title went with it
    assert ict.corpus.get_text("a") == CASED  # no title left in front
    assert "short" not in ict.corpus.get_text("c")
    with pytest.raises(ValueError, match="cut must be one of"):
        inverse_cloze(_corpus(), limit=10, cut="abstract")
