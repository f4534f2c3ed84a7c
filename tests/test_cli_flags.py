"""Flags that mean the same on every subcommand (issue 22): --config/--set on index, --batch-size/--autocast on
search, and `rocketkd config` showing the merged config as YAML."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from rocketkd.cli import main
from rocketkd.config import load_config
from rocketkd.search.index import DenseIndex

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"


def test_config_prints_the_merged_config_as_yaml_that_loads_back(capsys, tmp_path):
    assert main(["-q", "config", "--config", str(TINY), "--set", "train.max_steps=7", "--set", "eval.k=13"]) == 0
    text = capsys.readouterr().out
    dumped = tmp_path / "merged.yaml"
    dumped.write_text(text)
    again = load_config(dumped, [])
    expected = load_config(TINY, ["train.max_steps=7", "eval.k=13"])
    assert again.to_dict() == expected.to_dict()
    assert yaml.safe_load(text)["train"]["max_steps"] == 7


def test_config_with_a_bad_key_is_one_line_and_exit_2(capsys):
    assert main(["-q", "config", "--set", "train.no_such_key=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.no_such_key" in err[0]


def test_config_without_arguments_still_lists_the_keys(capsys):
    assert main(["-q", "config"]) == 0
    out = capsys.readouterr().out
    assert "train.max_steps" in out and "index.batch_size" in out


def test_index_with_a_config_encodes_as_training_does(capsys, tiny_bert, tiny_data, tmp_path):
    """--config/--set on index: the retriever gets the config's model.* settings (here a 4-token passage length,
    which changes the vectors) and index.* gives the defaults of --batch-size/--factory/--autocast."""
    plain, configured = tmp_path / "plain", tmp_path / "configured"
    assert main(["-q", "index", "--model", str(tiny_bert), "--corpus", str(tiny_data), "--output", str(plain),
                 "--autocast", "no"]) == 0
    assert main(["-q", "index", "--model", str(tiny_bert), "--corpus", str(tiny_data), "--output", str(configured),
                 "--config", str(TINY), "--set", "model.passage_max_length=4", "--set", "index.autocast=no",
                 "--set", "index.factory=Flat"]) == 0
    a, b = DenseIndex.load(plain), DenseIndex.load(configured)
    assert b.meta.get("autocast") in ("no", None) and b.ntotal == a.ntotal
    assert b.encoder.passage_max_length == 4 and a.encoder.passage_max_length != 4
    va = a._index.reconstruct_n(0, a.ntotal)  # the raw faiss index: both are Flat
    vb = b._index.reconstruct_n(0, b.ntotal)
    assert not np.allclose(va, vb)  # 4 tokens of each passage, not the folder's length


def test_search_takes_batch_size_and_autocast(capsys, tiny_bert, tiny_data, tmp_path):
    idx = tmp_path / "idx"
    assert main(["-q", "index", "--model", str(tiny_bert), "--corpus", str(tiny_data), "--output", str(idx),
                 "--autocast", "no"]) == 0
    runs = []
    for batch in ("1", "64"):
        out = tmp_path / f"run{batch}.trec"
        assert main(["-q", "search", "--index", str(idx), "--queries", str(tiny_data), "--split", "test",
                     "--output", str(out), "--k", "5", "--batch-size", batch, "--autocast", "no"]) == 0
        runs.append(out.read_text())
    assert runs[0] == runs[1]  # batching changes nothing in fp32
    assert main(["-q", "search", "--index", str(idx), "--query", "wing", "--batch-size", "0"]) == 2
    assert "--batch-size" in capsys.readouterr().err
