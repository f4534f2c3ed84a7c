"""scripts/pack_model.py: a float16 carry of a model with only the datasets' embedding rows, unpacked to float32."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import pack_model  # noqa: E402


@pytest.mark.parametrize("xz", [False, True])
def test_pack_unpack_round_trip(tiny_bert, tiny_data, tmp_path, xz):
    from transformers import AutoTokenizer

    info = pack_model.pack(tiny_bert, [tiny_data], tmp_path / "packed", xz=xz, keep_first=5)
    assert (tmp_path / "packed" / ("packed.safetensors.xz" if xz else "packed.safetensors")).exists()
    pack_model.unpack(tmp_path / "packed", tmp_path / "out")
    before = load_file(str(tiny_bert / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert set(after) == set(before) and all(after[k].dtype == before[k].dtype for k in before)
    key = info["embedding_key"]
    ids = pack_model.used_token_ids(AutoTokenizer.from_pretrained(str(tiny_bert)), [tiny_data], keep_first=5)
    assert info["kept_rows"] == len(ids) < info["vocab_rows"]  # the tiny vocabulary has tokens the data never uses
    np.testing.assert_allclose(after[key][ids], before[key][ids], rtol=1e-3, atol=1e-4)
    unused = np.setdiff1d(np.arange(info["vocab_rows"]), ids)
    assert not after[key][unused].any()
    for k in before:
        if k != key and before[k].dtype == np.float32:
            np.testing.assert_allclose(after[k], before[k], rtol=1e-3, atol=1e-4)
    assert json.loads((tmp_path / "out" / "PACKED.json").read_text())["dtype"] == "float16"


def test_packed_model_encodes_the_data_like_the_original(tiny_bert, tiny_data, tmp_path):
    from rocketkd.models import DualEncoder

    pack_model.pack(tiny_bert, [tiny_data], tmp_path / "packed", keep_first=5)
    pack_model.unpack(tmp_path / "packed", tmp_path / "out")
    texts = [json.loads(line)["text"] for line in open(tiny_data / "corpus.jsonl")][:10]
    a = DualEncoder.from_pretrained(tiny_bert).encode(texts, side="passage")
    b = DualEncoder.from_pretrained(tmp_path / "out").encode(texts, side="passage")
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=2e-3)


def test_pack_needs_jsonl_files(tiny_bert, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match="no \\*.jsonl"):
        pack_model.pack(tiny_bert, [tmp_path / "empty"], tmp_path / "packed")
