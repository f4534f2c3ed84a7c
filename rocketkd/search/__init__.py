"""Search: encode (bounded-memory encoding), index (``DenseIndex``, ``search_run``, ``retrieve``), topk (exact torch
search), bm25, rerank (re-score a run's top passages) and fusion (the one policy combining the stages)."""
