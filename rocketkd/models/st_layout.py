"""The sentence-transformers folder format, read (:func:`read_st_layout`) and written (:func:`write_st_model`), in one
place so that what rocketkd saves is what it loads back and what ``SentenceTransformer(path)`` reproduces.

What rocketkd writes for a retriever (beside its own ``rocketkd.json`` and ``README.md``):

* shared towers -- a plain sentence-transformers folder: transformers weights + tokenizer at the top level,
  ``modules.json`` = Transformer, Pooling [, Normalize]. ``sentence_bert_config.json`` holds ``max_seq_length`` (the
  passage length) and ``query_length`` / ``document_length``, which sentence-transformers >= 6.2 applies in
  ``encode_query`` / ``encode_document``: one module, two lengths, both of rocketkd's encodings.
* two towers -- ``modules.json`` = Router, Pooling [, Normalize]: the Router (sentence-transformers >= 5) sends
  ``encode_query`` to ``query_0_Transformer/`` and ``encode_document`` (and a plain ``encode``: its default route) to
  ``document_0_Transformer/``, each a transformers folder + tokenizer whose ``max_seq_length`` is that side's length.
  The names and ``router_config.json`` are those sentence-transformers' own ``Router.save`` writes, so a model it
  re-saves keeps the layout. (Before this, the query tower went to a second full folder ``query_encoder/`` that
  ``SentenceTransformer(path)`` never saw; :meth:`DualEncoder.from_pretrained` still reads such folders.)

Module types are written in the pre-v6 spelling (``sentence_transformers.models.X``): version 6 still resolves them
and older versions only know these.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rocketkd.errors import ModelLoadError
from rocketkd.models._hf import package_versions, read_model_json, write_json

ROUTES = ("query", "document")  # the routes encode_query / encode_document take

# sentence-transformers' legacy boolean pooling keys (1_Pooling/config.json before v6) -> mode name.
_ST_LEGACY_POOLING = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


@dataclass
class STLayout:
    """What a sentence-transformers ``modules.json`` says (all defaults for a plain transformers folder)."""

    is_sentence_transformers: bool = False
    # where the (passage / document route's) transformers weights live: "" = top level (current), "0_Transformer" in
    # old folders, "document_0_Transformer" behind a Router
    transformer_subfolder: str = ""
    # the query route's transformers folder when a Router gives queries a tower of their own, else None
    query_subfolder: str | None = None
    pooling: str | None = None  # mode from 1_Pooling/config.json, None if there is no Pooling module
    normalize: bool = False
    max_seq_length: int | None = None
    query_max_seq_length: int | None = None  # the query tower's max_seq_length, or a shared folder's query_length
    # module types rocketkd does not reproduce (Dense, LogitScore, a Router of another shape ...)
    other_modules: list[str] = field(default_factory=list)


def read_st_layout(root: str) -> STLayout:
    """Parse ``modules.json`` (and the Router / Pooling / Transformer configs it points to) of a model folder."""
    modules = read_model_json(root, "modules.json")
    if not modules:
        return STLayout()
    if not isinstance(modules, list):
        raise ModelLoadError(f"{root}: modules.json is not a list of modules")
    layout = STLayout(is_sentence_transformers=True)
    for entry in modules:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1]
        sub = str(entry.get("path", "")).strip("/")
        if kind == "Transformer":
            layout.transformer_subfolder = sub
        elif kind == "Router":
            _read_router(root, sub, layout)
        elif kind == "Pooling":
            layout.pooling = _st_pooling_mode(root, sub)
        elif kind == "Normalize":
            layout.normalize = True
        else:
            layout.other_modules.append(str(entry.get("type")))
    layout.max_seq_length, query_length = _max_lengths(root, layout.transformer_subfolder)
    if layout.query_subfolder is not None:
        layout.query_max_seq_length = _max_lengths(root, layout.query_subfolder)[0]
    else:
        layout.query_max_seq_length = query_length
    return layout


def _read_router(root: str, sub: str, layout: STLayout) -> None:
    """A Router that rocketkd reproduces: routes "query" and "document", one Transformer each, no remapping."""
    config = read_model_json(root, "router_config.json", sub) or read_model_json(root, "config.json", sub) or {}
    structure, types = config.get("structure") or {}, config.get("types") or {}
    params = config.get("parameters") or {}
    routes = {name: list(ids) for name, ids in structure.items()}
    if (sorted(routes) != sorted(ROUTES) or any(len(ids) != 1 for ids in routes.values())
            or any(str(types.get(ids[0], "")).rsplit(".", 1)[-1] != "Transformer" for ids in routes.values())
            or params.get("route_mappings") or params.get("default_route", "document") != "document"):
        shape = {name: [str(types.get(i, i)).rsplit(".", 1)[-1] for i in ids] for name, ids in routes.items()}
        layout.other_modules.append(f"Router {shape} (rocketkd reads one Transformer per query/document route)")
        return
    document, query = (str(Path(sub, routes[name][0])) for name in ("document", "query"))
    layout.transformer_subfolder = document
    layout.query_subfolder = query if query != document else None  # one module on both routes: a shared tower


def _max_lengths(root: str, sub: str) -> tuple[int | None, int | None]:
    """(max_seq_length, query_length) of a Transformer module's folder."""
    st_config = read_model_json(root, "sentence_bert_config.json", sub) or {}
    query_length = int(st_config["query_length"]) if st_config.get("query_length") else None
    if st_config.get("max_seq_length"):
        return int(st_config["max_seq_length"]), query_length
    # sentence-transformers >= 6 keeps it as the tokenizer's model_max_length instead
    limit = (read_model_json(root, "tokenizer_config.json", sub) or {}).get("model_max_length")
    # transformers writes ~1e30 for "no limit"
    if isinstance(limit, (int, float)) and 0 < limit < 1_000_000:
        return int(limit), query_length
    return None, query_length


def _st_pooling_mode(root: str, subfolder: str) -> str:
    config = read_model_json(root, "config.json", subfolder) or {}
    if "pooling_mode" in config:  # sentence-transformers >= 6
        mode = config["pooling_mode"]
        modes = [mode] if isinstance(mode, str) else list(mode)
    else:  # the boolean keys of older versions (the packaged MiniLM uses these)
        modes = [name for key, name in _ST_LEGACY_POOLING.items() if config.get(key)] or ["mean"]
    if len(modes) != 1:
        return "+".join(modes)  # a concatenation of poolings: reported as unsupported by the caller
    return str(modes[0])


def write_st_model(folder: Path, *, passage: nn.Module, query: nn.Module | None, tokenizer: Any, pooling: str,
                   similarity: str, query_length: int, passage_length: int) -> None:
    """Write the sentence-transformers files of a retriever into ``folder`` (module docstring): one Transformer when
    ``query`` is None (shared towers), else a Router over the two towers. ``similarity`` is "cosine" or "dot"."""
    folder.mkdir(parents=True, exist_ok=True)
    if query is None:
        _write_transformer(folder, passage, tokenizer, passage_length, query_length=query_length)
        first = {"path": "", "type": "sentence_transformers.models.Transformer"}
    else:
        ids = {route: f"{route}_0_Transformer" for route in ROUTES}
        _write_transformer(folder / ids["query"], query, tokenizer, query_length)
        _write_transformer(folder / ids["document"], passage, tokenizer, passage_length)
        write_json(folder / "router_config.json", {
            "types": {ids[route]: "sentence_transformers.models.Transformer" for route in ROUTES},
            "structure": {route: [ids[route]] for route in ROUTES},
            # a plain encode() is the passage side, as with one tower; no route_mappings key: 5.x does not take it
            "parameters": {"default_route": "document", "allow_empty_key": True},
        })
        first = {"path": "", "type": "sentence_transformers.models.Router"}
    modules = [first, {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if similarity == "cosine":
        modules.append({"path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (folder / "2_Normalize").mkdir()
    write_json(folder / "modules.json",
               [{"idx": i, "name": str(i), **module} for i, module in enumerate(modules)])
    # Legacy boolean keys: read by every sentence-transformers version (6.x converts them silently).
    write_json(folder / "1_Pooling" / "config.json", {
        "word_embedding_dimension": int(passage.config.hidden_size),
        "pooling_mode_cls_token": pooling == "cls",
        "pooling_mode_mean_tokens": pooling == "mean",
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    })
    write_json(folder / "config_sentence_transformers.json", {
        "__version__": package_versions(),
        "model_type": "SentenceTransformer",
        "prompts": {},
        "default_prompt_name": None,
        "similarity_fn_name": "cosine" if similarity == "cosine" else "dot",
    })


def _write_transformer(folder: Path, encoder: nn.Module, tokenizer: Any, max_length: int, *,
                       query_length: int | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    config: dict[str, Any] = {"max_seq_length": max_length, "do_lower_case": False}
    if query_length is not None:
        # sentence-transformers >= 6.2 truncates encode_query at query_length and encode_document at
        # document_length (older versions read max_seq_length alone: the passage length, for both sides)
        config.update(query_length=query_length, document_length=max_length)
    write_json(folder / "sentence_bert_config.json", config)
