"""Model cards: the ``README.md`` every saved retriever and re-ranker folder carries, as the Hugging Face Hub and
sentence-transformers' trainer expect: what the model is, how to load it so it scores as rocketkd does, its
settings, and -- for a folder a training run exported -- what trained it (command, base model, data, steps,
config) and the metrics measured on it, each with what measured it and the commands that measure it again.

``training`` (what :func:`rocketkd.training.checkpoint.training_card` builds) is a plain dict:

* ``command``: the command line that trained it; ``base_model``; ``data`` (collection, train split, lists);
* ``mode``, ``steps``;
* ``metrics``: a list of ``{"metric", "split", "value", "measured_by"}`` (optionally ``"command"``);
* ``config``: the resolved config as a dict, printed as YAML.

A folder saved without it (an index's encoder, a model saved from Python) gets the card without those sections.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

CARD_FILE = "README.md"

_FRONT = {
    "retriever": {"library_name": "sentence-transformers", "pipeline_tag": "sentence-similarity",
                  "tags": ["rocketkd", "sentence-transformers", "dense-retrieval", "knowledge-distillation"]},
    "reranker": {"library_name": "sentence-transformers", "pipeline_tag": "text-ranking",
                 "tags": ["rocketkd", "sentence-transformers", "cross-encoder", "reranker"]},
}

_USE = {
    "retriever": """```python
from sentence_transformers import SentenceTransformer

model = SentenceTransformer("{path}")
queries = model.encode_query(["what is a boundary layer"])    # the query tower and query length
passages = model.encode_document(["The boundary layer is ..."])  # the passage tower and passage length
scores = model.similarity(queries, passages)
```

`encode_query` / `encode_document` reproduce rocketkd's own query and passage encodings (its
`rocketkd search`); a plain `model.encode` is the passage side. {layout} In rocketkd:
`rocketkd index --model {path} ...`.""",
    "reranker": """```python
from sentence_transformers import CrossEncoder

model = CrossEncoder("{path}")
scores = model.predict([("what is a boundary layer", "The boundary layer is ...")])
```

`predict` returns exactly the scores rocketkd's re-ranker gives (`config.json` sets the activation to identity):
listwise logits, trained with a softmax over each query's candidate list, so a softmax over one query's candidates
is the re-ranker's distribution over them; they rank exactly as rocketkd's `CrossEncoderRanker` does. They are not
probabilities, and a sigmoid of one alone means nothing. (A re-ranker trained with `model.reranker_prior` adds its
prior, `rocketkd_prior.json`, to these scores in `rocketkd search --rerank`.)""",
}

# how the retriever's folder gives each side its tower and length (rocketkd.models.st_layout)
_LAYOUT = {
    True: "One tower encodes both sides; sentence-transformers >= 6.2 gives each call its own length "
          "(`query_length` / `document_length` in `sentence_bert_config.json`).",
    False: "The query and passage towers are separate: the folder is a sentence-transformers `Router` (>= 5) whose "
           "`query` route is the query tower and whose `document` route is the passage tower, each with its own "
           "length.",
}


def write_model_card(folder: str | Path, *, kind: str, settings: dict[str, Any],
                     training: dict[str, Any] | None = None) -> Path:
    """Write ``folder/README.md`` for a ``kind`` ("retriever" or "reranker") folder with its ``settings`` (what
    ``rocketkd.json`` records) and, when known, how it was trained (module docstring)."""
    if kind not in _FRONT:
        raise ValueError(f"kind must be 'retriever' or 'reranker', got {kind!r}")
    folder = Path(folder)
    training = training or {}
    what = ("A dense passage retriever (bi-encoder: query and passage towers, pooled vectors, "
            f"{settings.get('similarity', 'dot')} similarity)" if kind == "retriever"
            else "A cross-encoder re-ranker (one relevance logit per (query, passage) pair)")
    lines = ["---", yaml.safe_dump(_FRONT[kind], sort_keys=False).strip(), "---", "",
             f"# rocketkd {kind}", "",
             f"{what}, written by [rocketkd](https://github.com/) (RocketQAv2-style joint training: the re-ranker "
             "learns from labels while the retriever is distilled from it).", "",
             "## Use it", "", _USE[kind].replace("{path}", "PATH/TO/THIS/FOLDER").replace(
                 "{layout}", _LAYOUT[bool(settings.get("shared", True))]), "",
             "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in settings.items() if k not in ("format", "version")]
    if training:
        lines += ["", "## Training", ""]
        for key, label in (("command", "command"), ("base_model", "base model"), ("mode", "mode"),
                           ("steps", "steps"), ("data", "data")):
            if training.get(key) not in (None, ""):
                value = training[key]
                lines.append(f"- {label}: `{value}`" if key == "command" else f"- {label}: {_cell(value)}")
    metrics = training.get("metrics") or []
    if metrics:
        lines += ["", "## Metrics", "", "| metric | split | value | measured by |", "|---|---|---|---|"]
        lines += [f"| {m['metric']} | {m.get('split', '')} | {m['value']:.4f} | {m.get('measured_by', '')} |"
                  for m in metrics]
        again = [m["command"] for m in metrics if m.get("command")]
        if again:
            lines += ["", "To measure them again:", "", "```bash", *dict.fromkeys(again), "```"]
    if training.get("config"):
        lines += ["", "## Config", "", "The resolved config of the run (`rocketkd config` explains every key):", "",
                  "```yaml", yaml.safe_dump(training["config"], sort_keys=False).strip(), "```"]
    path = folder / CARD_FILE
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")
