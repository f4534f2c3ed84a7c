"""Sharding inference work (encoding, search, re-ranker scoring) across processes started by torchrun/accelerate.

The one pattern every caller follows:

1. every process takes a contiguous range of rows of the work (:func:`shard_rows`: rank 0 the first rows, ...);
2. it computes its rows;
3. the main process (rank 0) gathers the pieces (:func:`gather_rows` for arrays, :func:`gather_objects` for
   Python objects). Every piece travels with its row indices, and the main process writes it to exactly those
   rows (checking that each row arrives once): the merge never depends on arrival order or on file names;
4. only the main process writes outputs; the others wait (:func:`barrier`) and return.

One process (``WORLD_SIZE`` unset or 1, or no process group initialised): nothing is set up, every helper is a
no-op (``gather_rows`` returns its input, ``barrier`` returns at once) and the callers behave as they always did.

Collectives go through a dedicated gloo group (CPU tensors and pickled objects, whatever the default backend is)
with a long timeout, because the other processes may wait a long time while the main process builds an index or
searches: ``ROCKETKD_DIST_TIMEOUT_S`` seconds, default 4 hours. Pieces are sent in blocks of about 64 MiB, so a
corpus-sized gather never pickles the whole matrix at once.
"""

from __future__ import annotations

import atexit
import datetime as _dt
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "barrier",
    "broadcast_object",
    "gather_objects",
    "gather_rows",
    "init_if_launched",
    "is_main",
    "local_device",
    "main_process_first",
    "scatter_objects",
    "shard_rows",
    "world",
]

_BLOCK_BYTES = 64 * 2**20  # bytes of array data per gathered block
_BLOCK_ITEMS = 8_192  # Python objects per gathered / scattered block
_DEFAULT_TIMEOUT_S = 4 * 3600
_group_cache: dict[str, Any] = {}


# ---------------------------------------------------------------------------------------------------- who am I


def _initialised() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)`` (one process)."""
    if _initialised():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def is_main() -> bool:
    """True on rank 0, and in a one-process run."""
    return world()[0] == 0


def _launched_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1") or 1)
    except ValueError:
        return 1


def init_if_launched() -> tuple[int, int]:
    """Join the process group when started by torchrun / ``accelerate launch`` with ``WORLD_SIZE > 1``.

    Uses accelerate's shared state (the one :func:`rocketkd.training.train.make_accelerator` builds on): gloo on a machine
    without CUDA, NCCL (and the process's own GPU) with it. With ``WORLD_SIZE`` unset or 1 nothing is initialised.
    Idempotent. Returns :func:`world`.
    """
    if not _initialised() and _launched_world_size() > 1:
        # start-up time: only a launched multi-process run needs accelerate
        from accelerate import PartialState

        PartialState(cpu=not torch.cuda.is_available())
    leave_at_exit()
    return world()


def leave_at_exit() -> None:
    """Destroy the process group when the interpreter exits (registered once; a no-op on one process).

    Left to the interpreter's teardown, a gloo group is destructed with its worker threads still joinable and the
    process can abort ("terminate called without an active exception", SIGABRT) after its work is done -- seen as
    an intermittent torchrun failure. Leaving the group explicitly first avoids it.
    """
    if _group_cache.get("atexit") or not _initialised():
        return
    def leave() -> None:
        if _initialised():
            _group_cache.clear()
            torch.distributed.destroy_process_group()

    atexit.register(leave)
    _group_cache["atexit"] = True


def local_device() -> torch.device:
    """This process's device: its GPU (``LOCAL_RANK``) when CUDA is available, else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if _initialised():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0") or 0))


def _group():
    """The gloo group the helpers talk over (created once, collectively, on first use)."""
    default = torch.distributed.group.WORLD
    if _group_cache.get("world") is not default:  # first use, or a new default group since (re-initialised)
        timeout = _dt.timedelta(seconds=float(os.environ.get("ROCKETKD_DIST_TIMEOUT_S", _DEFAULT_TIMEOUT_S)))
        _group_cache["gloo"] = torch.distributed.new_group(backend="gloo", timeout=timeout)
        _group_cache["world"] = default
    return _group_cache["gloo"]


def barrier() -> None:
    """Wait until every process gets here (no-op in one process)."""
    if world()[1] > 1:
        torch.distributed.barrier(group=_group())


def broadcast_object(obj: Any) -> Any:
    """The main process's ``obj`` on every process (a picklable object; the value given elsewhere is ignored)."""
    if world()[1] == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=0, group=_group())
    return box[0]


# ---------------------------------------------------------------------------------------------------- sharding


def shard_rows(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of rows ``0..n-1``: sizes differ by at most one, lower ranks first.

    The shards of ranks ``0..world_size-1`` are consecutive and cover every row exactly once; with fewer rows
    than processes the last ranks get empty ranges.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _row_index(rows: Sequence[int] | range, n_local: int, what: str) -> np.ndarray:
    idx = np.asarray(rows, dtype=np.int64).reshape(-1)
    if len(idx) != n_local:
        raise ValueError(f"{what}: {n_local} local rows but an id map of {len(idx)} row indices")
    return idx


def _gather_blocks(n_blocks: int, piece: Callable[[int], Any], consume: Callable[[Any], None]) -> None:
    """Every process sends ``piece(b)`` for its blocks b < n_blocks; the main process ``consume``s each piece."""
    group = _group()
    rank, size = world()
    counts: list[Any] = [None] * size
    torch.distributed.all_gather_object(counts, n_blocks, group=group)
    for b in range(max(counts)):
        obj = piece(b) if b < n_blocks else None
        received: list[Any] | None = [None] * size if rank == 0 else None
        torch.distributed.gather_object(obj, received, dst=0, group=group)
        if received is not None:
            for item in received:
                if item is not None:
                    consume(item)


def _placer(n_total: int, what: str) -> tuple[np.ndarray, Callable[[np.ndarray], None]]:
    """A row-coverage mask and a function that checks incoming row indices against it (in range, new) and marks them."""
    seen = np.zeros(n_total, dtype=bool)

    def mark(idx: np.ndarray) -> None:
        if len(idx) and (idx.min() < 0 or idx.max() >= n_total):
            raise RuntimeError(f"{what}: a shard sent rows outside 0..{n_total - 1}")
        if seen[idx].any() or len(np.unique(idx)) != len(idx):
            raise RuntimeError(f"{what}: a row arrived twice (overlapping shards)")
        seen[idx] = True

    return seen, mark


def gather_rows(
    local: np.ndarray,
    rows: Sequence[int] | range,
    n_total: int,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray | None:
    """Assemble the rows every process computed into one ``(n_total, ...)`` array, in row order, on the main process.

    ``local[i]`` is row ``rows[i]`` (the explicit id map sent with the data). The main process returns the full
    array (``out`` when given, e.g. a memmap to fill; else a new one), and raises if a row is missing or arrives
    twice; every other process returns None. In one process, ``local`` (copied into ``out`` when given).
    """
    local = np.asarray(local)
    idx = _row_index(rows, len(local), "gather_rows")
    rank, size = world()
    if size == 1:
        if not np.array_equal(idx, np.arange(n_total)):
            raise ValueError(f"gather_rows: one process must hold all {n_total} rows in order")
        if out is None:
            return local
        out[...] = local
        return out
    tail = tuple(local.shape[1:])
    row_bytes = max(1, local.dtype.itemsize * int(np.prod(tail, dtype=np.int64)))
    block = max(1, _BLOCK_BYTES // row_bytes)
    consume: Callable[[Any], None] = lambda item: None  # noqa: E731
    seen = None
    if rank == 0:
        if out is None:
            out = np.empty((n_total, *tail), dtype=local.dtype)
        elif tuple(out.shape) != (n_total, *tail):
            raise ValueError(f"gather_rows: out has shape {out.shape}, expected {(n_total, *tail)}")
        seen, mark = _placer(n_total, "gather_rows")
        target = out

        def consume(item: Any) -> None:
            r, x = item
            if tuple(x.shape[1:]) != tail or len(x) != len(r):
                raise RuntimeError(f"gather_rows: a shard of shape {x.shape} does not fit rows of shape {tail}")
            mark(r)
            target[r] = x

    _gather_blocks(
        math.ceil(len(idx) / block),
        lambda b: (idx[b * block : (b + 1) * block], np.ascontiguousarray(local[b * block : (b + 1) * block])),
        consume,
    )
    if seen is None:
        return None
    if not seen.all():
        raise RuntimeError(f"gather_rows: {int((~seen).sum())} of {n_total} rows were sent by no process")
    return out


def gather_objects(local: Sequence[Any], rows: Sequence[int] | range, n_total: int) -> list[Any] | None:
    """Like :func:`gather_rows` for a list of picklable objects: the full list in row order on main, else None."""
    local = list(local)
    idx = _row_index(rows, len(local), "gather_objects")
    rank, size = world()
    if size == 1:
        if not np.array_equal(idx, np.arange(n_total)):
            raise ValueError(f"gather_objects: one process must hold all {n_total} rows in order")
        return local
    full: list[Any] = [None] * n_total
    seen, mark = _placer(n_total, "gather_objects")

    def consume(item: Any) -> None:
        r, xs = item
        if len(xs) != len(r):
            raise RuntimeError("gather_objects: a shard's objects and row indices differ in length")
        mark(r)
        for i, x in zip(r.tolist(), xs):
            full[i] = x

    block = _BLOCK_ITEMS
    _gather_blocks(
        math.ceil(len(idx) / block),
        lambda b: (idx[b * block : (b + 1) * block], local[b * block : (b + 1) * block]),
        consume,
    )
    if rank != 0:
        return None
    if not seen.all():
        raise RuntimeError(f"gather_objects: {int((~seen).sum())} of {n_total} rows were sent by no process")
    return full


def scatter_objects(items: Sequence[Any] | None) -> tuple[list[Any], range, int]:
    """The main process's list split by :func:`shard_rows`: ``(this process's items, their row range, total)``.

    Only the main process's ``items`` is read (pass None elsewhere). Sent in blocks, never the whole list to one
    process. In one process: ``(list(items), range(len(items)), len(items))``.
    """
    rank, size = world()
    if size == 1:
        items = list(items or [])
        return items, range(len(items)), len(items)
    n = broadcast_object(len(items) if rank == 0 and items is not None else None)
    if n is None:
        raise ValueError("scatter_objects: the main process gave no items")
    shards = [shard_rows(n, r, size) for r in range(size)]
    block = _BLOCK_ITEMS
    local: list[Any] = []
    for b in range(math.ceil(max(len(s) for s in shards) / block)):
        send = None
        if rank == 0:
            assert items is not None
            send = [
                list(items[s.start + b * block : min(s.stop, s.start + (b + 1) * block)]) for s in shards
            ]
        box: list[Any] = [None]
        torch.distributed.scatter_object_list(box, send, src=0, group=_group())
        local.extend(box[0])
    mine = shards[rank]
    if len(local) != len(mine):  # pragma: no cover - a bug, not a data problem
        raise RuntimeError(f"scatter_objects: rank {rank} got {len(local)} items for {len(mine)} rows")
    return local, mine, n


class main_process_first:  # noqa: N801 - used as a context manager, like a function
    """``with main_process_first(): ...``: the main process runs the block first, then the others (e.g. so only one
    process parses a corpus into the shared Arrow cache and the others read the cache). No-op in one process.
    """

    def __enter__(self) -> None:
        if not is_main():
            barrier()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None and is_main():
            barrier()
