"""Batches of pre-tokenised sequences for inference: padding them as the tokenizer would, and cutting a length-sorted
list into batches bounded by rows and by padded tokens (so short texts go in larger batches, long ones in smaller)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "CPU_MAX_TOKENS",
    "GPU_MAX_TOKENS",
    "check_batches",
    "default_max_tokens",
    "pad_token_ids",
    "token_batches",
]

CPU_MAX_TOKENS = 4096  # padded tokens per batch on a CPU: 16 rows of 256 tokens, more when shorter. Half of the
# earlier 8192: a MiniLM batch's activations then stay nearer the cache (scripts/bench_token_budget.py on the 2-core
# AVX-512 machine, bf16: 1.15-1.16x faster than 8192 on Cranfield and SciFact; 2048 gained nothing clear over 4096;
# docs/benchmarks.md)
GPU_MAX_TOKENS = 131_072  # on a GPU: large batches keep it busy (MiniLM: 512 rows of 256 tokens)


def default_max_tokens(device: torch.device | str) -> int:
    """The padded-token budget of one encoding batch on ``device`` when none is given."""
    return CPU_MAX_TOKENS if torch.device(device).type == "cpu" else GPU_MAX_TOKENS


def token_batches(sorted_lengths: np.ndarray, max_rows: int, max_tokens: int) -> list[slice]:
    """Consecutive batches of rows already sorted longest first: each holds at most ``max_rows`` rows and at most
    ``max_tokens`` padded tokens (rows x its first, longest row), and at least one row."""
    batches: list[slice] = []
    start, n = 0, len(sorted_lengths)
    while start < n:
        rows = max(1, min(max_rows, max_tokens // max(1, int(sorted_lengths[start]))))
        batches.append(slice(start, min(n, start + rows)))
        start += rows
    return batches


def check_batches(batches: Sequence[slice], n: int) -> None:
    """Raise ValueError unless ``batches`` are non-empty consecutive slices (step 1) covering ``0..n-1`` in order."""
    start = 0
    for b in batches:
        if b.start != start or b.stop is None or b.stop <= start or b.stop > n or b.step not in (None, 1):
            raise ValueError(f"batches must be consecutive non-empty slices covering 0..{n - 1}; got {b} at row {start}")
        start = b.stop
    if start != n:
        raise ValueError(f"batches cover rows 0..{start - 1} of {n}")


def pad_token_ids(seqs: Sequence[Sequence[int] | np.ndarray], tokenizer: Any) -> dict[str, torch.Tensor]:
    """Token id sequences (with special tokens, as the tokenizer made them) -> the tensors the tokenizer's
    ``padding=True`` would give: input_ids, attention_mask (+ token_type_ids when the model takes them), each
    (b, longest), padded on the tokenizer's side with its pad id."""
    longest = max((len(x) for x in seqs), default=0)
    ids = np.full((len(seqs), longest), tokenizer.pad_token_id or 0, dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    left = getattr(tokenizer, "padding_side", "right") == "left"
    for row, seq in enumerate(seqs):
        span = slice(longest - len(seq), longest) if left else slice(0, len(seq))
        ids[row, span] = seq
        mask[row, span] = 1
    out = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if "token_type_ids" in getattr(tokenizer, "model_input_names", ()):
        out["token_type_ids"] = torch.zeros_like(out["input_ids"])  # one segment
    return out
