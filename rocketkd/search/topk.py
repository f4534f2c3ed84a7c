"""Exact inner-product top-k in torch: the :class:`~rocketkd.search.index.DenseIndex` backend for exact (``Flat``)
indexes on a CUDA machine whose faiss has no GPU support (the same result as FAISS Flat up to float rounding and the
order of tied scores)."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["torch_topk_search"]


def torch_topk_search(
    corpus_emb: np.ndarray | torch.Tensor,
    query_emb: np.ndarray | torch.Tensor,
    k: int,
    *,
    chunk_size: int = 262_144,
    query_block: int = 1_024,
    device: torch.device | str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k by chunked matmul: ``(scores (Q, k'), rows (Q, k'))``, k' = min(k, N), best first.

    The corpus is visited ``chunk_size`` rows at a time (moved to ``device`` chunk by chunk when it is a NumPy
    array, so it need not fit there), queries ``query_block`` at a time; each chunk's top-k is merged into the
    running top-k, so memory is O(query_block * (chunk_size + k)). ``device`` defaults to the corpus tensor's device
    (CPU for a NumPy array). Scores are float32, rows int64.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if device is None:
        device = corpus_emb.device if isinstance(corpus_emb, torch.Tensor) else torch.device("cpu")
    device = torch.device(device)
    n = int(corpus_emb.shape[0])
    q_all = (
        torch.as_tensor(np.ascontiguousarray(query_emb, dtype=np.float32))
        if not isinstance(query_emb, torch.Tensor)
        else query_emb.float()
    )
    if q_all.dim() != 2 or q_all.shape[1] != corpus_emb.shape[1]:
        raise ValueError(
            f"queries {tuple(q_all.shape)} do not match corpus vectors {tuple(corpus_emb.shape)}"
        )
    kk = min(k, n)
    n_q = q_all.shape[0]
    out_scores = np.empty((n_q, kk), dtype=np.float32)
    out_rows = np.empty((n_q, kk), dtype=np.int64)
    if n_q == 0 or kk == 0:
        return out_scores, out_rows

    def corpus_chunk(start: int) -> torch.Tensor:
        part = corpus_emb[start : start + chunk_size]
        if isinstance(part, torch.Tensor):
            return part.to(device).float()
        return torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32)).to(device)

    # Every query block keeps a running top-k (b, <=k) on the device; each corpus chunk is moved there once.
    q_blocks = [q_all[s : s + query_block].to(device) for s in range(0, n_q, query_block)]
    best: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(q_blocks)
    with torch.inference_mode():
        for c in range(0, n, chunk_size):
            block = corpus_chunk(c)  # (C, H)
            for qi, q in enumerate(q_blocks):
                s, r = (q @ block.T).topk(min(kk, block.shape[0]), dim=1)  # (b, C) -> (b, <=k), descending
                r = r + c
                if best[qi] is not None:
                    s = torch.cat([best[qi][0], s], dim=1)  # (b, <=2k)
                    r = torch.cat([best[qi][1], r], dim=1)
                    s, pick = s.topk(min(kk, s.shape[1]), dim=1)
                    r = r.gather(1, pick)
                best[qi] = (s, r)
        start = 0
        for (s, r), q in zip(best, q_blocks):
            out_scores[start : start + q.shape[0]] = s.float().cpu().numpy()
            out_rows[start : start + q.shape[0]] = r.cpu().numpy()
            start += q.shape[0]
    return out_scores, out_rows
