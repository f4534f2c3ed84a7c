"""Pack a BERT-style model folder small enough to carry to a machine that cannot download it, and unpack it there.

    python scripts/pack_model.py pack   --model packaged --data data/scifact data/cranfield --out .dev/minilm-packed
    python scripts/pack_model.py unpack --packed .dev/minilm-packed --out /tmp/minilm

Why: the GPU machines lent to this project take at most 64 MiB of files per call and reach no network, and the
packaged all-MiniLM-L6-v2 is 91 MB of float32 weights. Packing keeps what a run on the named datasets can touch:

* every tensor in float16 (about 3 decimal digits; GPU runs compute in bf16 autocast, which rounds far more);
* of the word-embedding matrix, only the rows of tokens that the tokenizer produces on the datasets' corpus and
  query files (plus ids below 1000: [PAD], [UNK], [CLS], [SEP], [MASK] and the reserved ids). Other rows unpack as
  zeros: they are never looked up on those datasets, so encoding and training there are unchanged by them.

``unpack`` writes an ordinary float32 folder (``model.safetensors``) that any loader reads, plus ``PACKED.json``
saying how it was made. Results from an unpacked model are labelled as such in docs/.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

EMBEDDING_KEYS = ("embeddings.word_embeddings.weight", "bert.embeddings.word_embeddings.weight")
ALWAYS_KEEP = 1000  # BERT vocabularies put special and reserved tokens first


def _model_dir(name: str) -> Path:
    if name == "packaged":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from rocketkd.models import resolve_model_path

        return Path(resolve_model_path(None))
    return Path(name)


def used_token_ids(tokenizer, data_dirs: list[Path], keep_first: int = ALWAYS_KEEP) -> np.ndarray:
    """Sorted ids the tokenizer produces on every ``*.jsonl`` (title + text) under the dataset folders, and the
    first ``keep_first`` ids of the vocabulary."""
    used: set[int] = set(range(min(keep_first, len(tokenizer))))
    for folder in data_dirs:
        files = sorted(folder.glob("*.jsonl"))
        if not files:
            raise SystemExit(f"{folder}: no *.jsonl files to read tokens from")
        for file in files:
            texts = []
            with open(file, encoding="utf-8") as fh:
                for line in fh:
                    if line.strip():
                        row = json.loads(line)
                        texts.append(f"{row.get('title') or ''} {row.get('text') or ''}")
            for start in range(0, len(texts), 512):
                for ids in tokenizer(texts[start:start + 512], add_special_tokens=True)["input_ids"]:
                    used.update(ids)
    return np.array(sorted(used), dtype=np.int64)


def pack(model: Path, data_dirs: list[Path], out: Path, *, xz: bool = False, keep_first: int = ALWAYS_KEEP) -> dict:
    from safetensors.numpy import load_file, save_file
    from transformers import AutoTokenizer

    weights = load_file(str(model / "model.safetensors"))
    key = next((k for k in EMBEDDING_KEYS if k in weights), None)
    if key is None:
        raise SystemExit(f"{model}/model.safetensors: no word-embedding tensor named {EMBEDDING_KEYS}")
    ids = used_token_ids(AutoTokenizer.from_pretrained(str(model)), data_dirs, keep_first)
    packed = {k: v.astype(np.float16) for k, v in weights.items() if k != key and v.dtype == np.float32}
    packed.update({k: v for k, v in weights.items() if k != key and v.dtype != np.float32})
    packed["packed.rows"] = ids
    packed["packed.values"] = weights[key][ids].astype(np.float16)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(model, tmp, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.h5", "*.msgpack", "*.onnx",
                                                               "onnx", "openvino", "README.md"))
    save_file(packed, str(tmp / "packed.safetensors"))
    if xz:  # float16 weights still shrink ~10 % under xz: the margin that makes a 64 MiB carry fit
        import lzma

        with open(tmp / "packed.safetensors", "rb") as src, lzma.open(tmp / "packed.safetensors.xz", "wb",
                                                                       preset=9) as dst:
            shutil.copyfileobj(src, dst)
        (tmp / "packed.safetensors").unlink()
    info = {"source": str(model), "embedding_key": key, "vocab_rows": int(weights[key].shape[0]),
            "kept_rows": int(len(ids)), "data": [str(d) for d in data_dirs], "dtype": "float16"}
    (tmp / "PACKED.json").write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def unpack(packed_dir: Path, out: Path) -> dict:
    from safetensors.numpy import load_file, save_file

    info = json.loads((packed_dir / "PACKED.json").read_text())
    if (packed_dir / "packed.safetensors.xz").exists():
        import lzma

        from safetensors.numpy import load

        with lzma.open(packed_dir / "packed.safetensors.xz", "rb") as fh:
            packed = load(fh.read())
    else:
        packed = load_file(str(packed_dir / "packed.safetensors"))
    rows, values = packed.pop("packed.rows"), packed.pop("packed.values")
    table = np.zeros((info["vocab_rows"], values.shape[1]), dtype=np.float32)
    table[rows] = values.astype(np.float32)
    weights = {k: v.astype(np.float32) if v.dtype == np.float16 else v for k, v in packed.items()}
    weights[info["embedding_key"]] = table
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(packed_dir, tmp, ignore=shutil.ignore_patterns("packed.safetensors*"))
    save_file(weights, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="float16, word-embedding rows of the datasets' tokens only")
    p.add_argument("--model", default="packaged", help="model folder, or 'packaged' (all-MiniLM-L6-v2)")
    p.add_argument("--data", nargs="+", type=Path, required=True, help="BEIR folders whose *.jsonl texts are kept")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--xz", action="store_true", help="also compress the weights (unpack reads either)")
    u = sub.add_parser("unpack", help="back to an ordinary float32 folder")
    u.add_argument("--packed", type=Path, required=True)
    u.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.cmd == "pack":
        info = pack(_model_dir(args.model), args.data, args.out, xz=args.xz)
        size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
        print(f"packed {info['kept_rows']}/{info['vocab_rows']} embedding rows, float16 -> {args.out} "
              f"({size / 2**20:.1f} MiB)")
    else:
        info = unpack(args.packed, args.out)
        print(f"unpacked {args.packed} -> {args.out} (float32; {info['kept_rows']}/{info['vocab_rows']} rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
