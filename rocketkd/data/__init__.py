"""Data loading and validation: corpus, queries, qrels, runs and candidate lists (see ``formats``)."""

from rocketkd.data.formats import (
    Corpus,
    EmptyPassageWarning,
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
