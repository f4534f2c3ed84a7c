"""Pooling of token states into one vector per text.

Both functions take the encoder's last hidden states (N, L, H) and the tokenizer's attention mask (N, L) with 1 on
real tokens and 0 on padding, and return (N, H). They follow sentence-transformers' ``Pooling`` module exactly, so
a folder saved with the matching ``1_Pooling/config.json`` gives the same vectors under ``SentenceTransformer``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Average of the hidden states over the real (unmasked) tokens: (N, L, H), (N, L) -> (N, H).

    Sums are accumulated in float32 when the states are fp16/bf16 (a bf16 sum over a few hundred tokens loses most
    of its digits), then cast back to the states' dtype, as sentence-transformers does. A row with no real token
    gives a zero vector instead of NaN (the count is clamped at 1e-9).
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"mean_pool wants hidden (N, L, H) and attention_mask (N, L), got {tuple(hidden.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    acc_dtype = torch.float32 if hidden.dtype in (torch.float16, torch.bfloat16) else hidden.dtype
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (N, L, 1)
    summed = (hidden * mask).sum(dim=1, dtype=acc_dtype)  # (N, H)
    counts = mask.sum(dim=1, dtype=acc_dtype).clamp(min=1e-9)  # (N, 1)
    return (summed / counts).to(hidden.dtype)


def cls_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The state of the first real token ([CLS] for BERT-style models): (N, L, H), (N, L) -> (N, H).

    The first real token is found from the mask rather than assumed at position 0, so a left-padding tokenizer
    still pools its [CLS]; with right padding (BERT, MiniLM) this is exactly ``hidden[:, 0]``.
    """
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ValueError(
            f"cls_pool wants hidden (N, L, H) and attention_mask (N, L), got {tuple(hidden.shape)} and "
            f"{tuple(attention_mask.shape)}"
        )
    first = attention_mask.to(torch.int).argmax(dim=1)  # (N,) argmax returns the first maximal index
    index = first.view(-1, 1, 1).expand(-1, 1, hidden.shape[-1])  # (N, 1, H)
    return hidden.gather(1, index).squeeze(1)


POOLINGS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "mean": mean_pool,
    "cls": cls_pool,
}
