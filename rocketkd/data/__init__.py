"""Data loading and validation: the corpus (``corpus``: memory-mapped Arrow), queries, qrels, runs and candidate
lists (``formats``), and the line-level checks they share (``lines``)."""

from rocketkd.data.corpus import Corpus, EmptyPassageWarning
from rocketkd.data.formats import (
    RetrievalData,
    load_qrels,
    load_queries,
    load_retrieval_data,
    read_candidates,
    read_provenance,
    read_qrels,
    read_trec_run,
    write_candidates,
    write_trec_run,
)

__all__ = [
    "Corpus",
    "EmptyPassageWarning",
    "RetrievalData",
    "load_qrels",
    "load_queries",
    "load_retrieval_data",
    "read_candidates",
    "read_provenance",
    "read_qrels",
    "read_trec_run",
    "write_candidates",
    "write_trec_run",
]
