"""Index, search and mine across two gloo processes (torchrun) against one process: the same files, in row order."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from rocketkd import distributed
from rocketkd.cli import main as cli_main
from rocketkd.distributed import gather_objects, gather_rows, scatter_objects, shard_rows

ROOT = Path(__file__).resolve().parents[1]
INDEX_FILES = {"index.faiss", "ids.txt", "meta.json", "encoder", ".rocketkd-output", "rocketkd.log"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(*args: str) -> None:
    """``args`` run by two gloo processes on the CPU (``-m module ...`` or ``script ...``)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), *args]
    done = subprocess.run(cmd, env=env, cwd=ROOT, timeout=240, capture_output=True, text=True)
    assert done.returncode == 0, f"torchrun failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"


def _cli_alone(*args: object) -> None:
    assert cli_main(["-q", *(str(a) for a in args)]) == 0


def _cli_two(*args: object) -> None:
    _torchrun("-m", "rocketkd.cli", "-q", *(str(a) for a in args))


def _vectors(folder: Path) -> np.ndarray:
    import faiss

    index = faiss.read_index(str(folder / "index.faiss"))
    return index.reconstruct_n(0, index.ntotal)


def _read_run(path: Path) -> dict[str, list[tuple[str, float]]]:
    run: dict[str, list[tuple[str, float]]] = {}
    for line in path.read_text().splitlines():
        qid, _, pid, rank, score, _ = line.split()
        hits = run.setdefault(qid, [])
        assert int(rank) == len(hits) + 1
        hits.append((pid, float(score)))
    return run


# ------------------------------------------------------------------------------------------------ one process


@pytest.mark.parametrize("world", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 5, 10, 60, 61])
def test_shard_rows_cover_every_row_exactly_once(n, world):
    shards = [shard_rows(n, r, world) for r in range(world)]
    rows = [i for s in shards for i in s]
    assert rows == list(range(n))  # contiguous, in rank order, each row once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)
    for s in shards:
        assert s.step == 1


def test_shard_rows_refuses_bad_arguments():
    for n, rank, world in [(3, 0, 0), (3, 2, 2), (3, -1, 2), (-1, 0, 1)]:
        with pytest.raises(ValueError):
            shard_rows(n, rank, world)


def test_one_process_needs_no_process_group(monkeypatch):
    import torch.distributed as dist

    for value in (None, "1"):
        if value is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", value)
        assert distributed.init_if_launched() == (0, 1)
        assert not dist.is_initialized()
    assert distributed.world() == (0, 1) and distributed.is_main()
    distributed.barrier()
    with distributed.main_process_first():
        pass
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert gather_rows(x, range(4), 4) is x
    out = np.zeros_like(x)
    assert gather_rows(x, range(4), 4, out=out) is out and np.array_equal(out, x)
    assert gather_objects(["a", "b"], range(2), 2) == ["a", "b"]
    assert scatter_objects(["a", "b", "c"]) == (["a", "b", "c"], range(3), 3)
    assert distributed.broadcast_object({"k": 1}) == {"k": 1}
    with pytest.raises(ValueError):
        gather_rows(x, range(3), 3)  # 4 local rows, an id map of 3
    with pytest.raises(ValueError):
        gather_rows(x, [1, 0, 2, 3], 4)  # one process holds every row, in order


# ------------------------------------------------------------------------------------------------ two processes

_HELPERS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from rocketkd import distributed as d

    rank, world = d.init_if_launched()
    assert world == 2, world
    report = {}
    for n in (0, 1, 5):  # n < world included: rank 1 then holds nothing
        share = d.shard_rows(n, rank, world)
        local = np.stack([np.full(3, i, dtype=np.float32) for i in share]) if len(share) else np.zeros((0, 3), np.float32)
        full = d.gather_rows(local, share, n)
        objs = d.gather_objects([f"row{i}" for i in share], share, n)
        if rank == 0:
            assert np.array_equal(full, np.repeat(np.arange(n, dtype=np.float32)[:, None], 3, axis=1)), full
            assert objs == [f"row{i}" for i in range(n)], objs
        else:
            assert full is None and objs is None
        items, rows, total = d.scatter_objects([f"s{i}" for i in range(n)] if rank == 0 else None)
        assert total == n and rows == share and items == [f"s{i}" for i in share], (items, rows, total)
    # an interleaved id map (rank r holds rows r, r+2, ...): the main process places every row by its index
    rows = list(range(rank, 7, world))
    full = d.gather_rows(np.asarray(rows, dtype=np.int64) * 10, rows, 7)
    if rank == 0:
        assert full.tolist() == [i * 10 for i in range(7)], full
    assert d.broadcast_object("from main" if rank == 0 else "ignored") == "from main"
    with d.main_process_first():
        pass
    # encode_corpus into a memory-mapped file: each process encodes half, the main process alone writes the file
    from pathlib import Path
    from rocketkd.data.corpus import Corpus
    from rocketkd.search.encode import encode_corpus
    from rocketkd.models import DualEncoder

    out = Path(sys.argv[1]).parent / "emb" / "passages.npy"
    model = DualEncoder.from_pretrained(sys.argv[2])
    with d.main_process_first():  # one process fills the corpus cache
        corpus = Corpus.from_beir(sys.argv[3])
    emb = encode_corpus(model, corpus, batch_size=8, autocast="no", out_path=out, show_progress=False)
    if rank == 0:
        alone = encode_corpus(model, corpus, batch_size=8, autocast="no", show_progress=False, distributed=False)
        assert np.abs(np.asarray(emb) - alone).max() < 1e-5
        assert sorted(p.name for p in out.parent.iterdir()) == ["passages.npy"]
    else:
        assert emb is None
    # bf16: the batches of a one-process run dealt out to the two processes, so the same bits as one process
    # (batch_size 3 and a 40-token budget: many batches of unequal rows and padding, an odd count of them)
    import torch.distributed as dist

    bf16 = dict(batch_size=3, max_tokens=40, chunk_size=5, autocast="bf16", show_progress=False)
    ran = []  # the padded input_ids of every batch this process runs, in order
    pad = model.pad_ids
    model.pad_ids = lambda seqs: ran.append(pad(seqs)["input_ids"].tolist()) or pad(seqs)
    emb = encode_corpus(model, corpus, **bf16)
    each = [None] * world
    dist.all_gather_object(each, ran)
    if rank == 0:
        ran.clear()
        alone = encode_corpus(model, corpus, distributed=False, **bf16)
        assert len(ran) > 5 and len({len(b[0]) for b in ran}) > 1, ran  # many batches, two padded lengths
        for r in range(world):  # batch i of one process ran on rank i % world: same rows, order and padding
            assert each[r] == ran[r::world], r
        assert emb.dtype == alone.dtype and emb.shape == alone.shape == (len(corpus), model.hidden_size)
        assert np.array_equal(emb, alone), np.abs(emb - alone).max()
        fp32 = encode_corpus(model, corpus, batch_size=3, max_tokens=40, autocast="no", show_progress=False,
                             distributed=False)
        assert np.abs(emb - fp32).max() > 0  # bf16 did run: its rounding shows
    # queries likewise: one process's batches (longest first, 3 rows, 40 padded tokens) dealt out, the same bits
    from rocketkd.search.encode import encode_queries

    qtexts = [" ".join(t.split()[: 2 + i % 11]) for i, t in enumerate(corpus.texts(np.arange(23)))]
    ran.clear()
    q = encode_queries(model, qtexts, batch_size=3, max_tokens=40, autocast="bf16")
    dist.all_gather_object(each, ran)
    if rank == 0:
        ran.clear()
        alone = encode_queries(model, qtexts, batch_size=3, max_tokens=40, autocast="bf16", distributed=False)
        assert len(ran) > 5 and len({len(b[0]) for b in ran}) > 2, ran
        for r in range(world):
            assert each[r] == ran[r::world], r
        assert q.shape == alone.shape == (23, model.hidden_size) and np.array_equal(q, alone)
    else:
        assert q is None
    d.barrier()
    if rank == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"ok": True}, f)
    """
)


@pytest.mark.slow
def test_helpers_across_two_processes(tiny_bert, tmp_path):
    script = tmp_path / "helpers.py"
    script.write_text(_HELPERS_SCRIPT)
    _torchrun(str(script), str(tmp_path / "ok.json"), str(tiny_bert), str(ROOT / "tests/resources/tiny/corpus.jsonl"))
    assert json.loads((tmp_path / "ok.json").read_text()) == {"ok": True}


@pytest.mark.slow
def test_index_and_search_with_two_processes_equal_one_process(tiny_bert, tiny_data, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    # bf16: both sides are batched as one process batches them, so index and run are the same bits (not just close)
    index_args = ("index", "--model", tiny_bert, "--corpus", tiny_data, "--batch-size", "8", "--autocast", "bf16")
    _cli_alone(*index_args, "--output", one / "index")
    _cli_two(*index_args, "--output", two / "index")

    # the same ids in the same rows, the same vectors; only the final files, no per-rank leftovers anywhere
    assert (one / "index" / "ids.txt").read_text() == (two / "index" / "ids.txt").read_text()
    a, b = _vectors(one / "index"), _vectors(two / "index")
    assert a.shape == b.shape == (60, 32)
    assert np.array_equal(a, b), np.abs(a - b).max()
    assert {p.name for p in (two / "index").iterdir()} == INDEX_FILES
    assert {p.name for p in two.iterdir()} == {"index"}
    meta1 = json.loads((one / "index" / "meta.json").read_text())
    meta2 = json.loads((two / "index" / "meta.json").read_text())
    for key in ("count", "dim", "encoder_fingerprint", "corpus_fingerprint", "autocast", "factory"):
        assert meta1[key] == meta2[key], key

    # search: 7 queries, so one process takes 4 and the other 3
    lines = (tiny_data / "queries.jsonl").read_text().splitlines()[:7]
    (tmp_path / "queries.jsonl").write_text("\n".join(lines) + "\n")
    for folder in (one, two):
        run = _cli_alone if folder is one else _cli_two
        run("search", "--index", folder / "index", "--queries", tmp_path / "queries.jsonl", "--k", "10",
            "--output", folder / "run.trec")
    r1, r2 = _read_run(one / "run.trec"), _read_run(two / "run.trec")
    assert list(r1) == list(r2) and len(r1) == 7  # the same queries in the same order
    for qid in r1:
        assert [p for p, _ in r1[qid]] == [p for p, _ in r2[qid]], qid  # the same top-10, in the same order
        assert [s for _, s in r2[qid]] == [s for _, s in r1[qid]], qid
    assert {p.name for p in two.iterdir()} == {"index", "run.trec"}
    assert {p.name for p in (two / "index").iterdir()} == INDEX_FILES


@pytest.mark.slow
def test_mine_with_two_processes_equals_one_process(tiny_bert, tiny_data, tmp_path):
    # dense retrieval with the tiny encoder, denoised by the tiny re-ranker: both stages shard across processes
    args = ("mine", "--config", ROOT / "configs" / "tiny.yaml", "--set", f"data.path={tiny_data}",
            "--set", f"model.retriever={tiny_bert}", "--set", f"model.reranker={tiny_bert}",
            "--set", "index.autocast='no'", "--set", "index.batch_size=8",
            "--retriever", tiny_bert, "--reranker", tiny_bert)
    _cli_alone(*args, "--output", tmp_path / "one" / "candidates.jsonl")
    _cli_two(*args, "--output", tmp_path / "two" / "candidates.jsonl")
    one = (tmp_path / "one" / "candidates.jsonl").read_text()
    assert one and one == (tmp_path / "two" / "candidates.jsonl").read_text()
    meta1 = json.loads((tmp_path / "one" / "candidates.jsonl.meta.json").read_text())
    meta2 = json.loads((tmp_path / "two" / "candidates.jsonl.meta.json").read_text())
    assert meta1 == meta2 and meta1["denoise"] is True and meta1["source"] == "dense"
    assert {p.name for p in (tmp_path / "two").iterdir()} == {"candidates.jsonl", "candidates.jsonl.meta.json"}
