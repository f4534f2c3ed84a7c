"""A dense index: FAISS (inner product) over passage embeddings, with an explicit row -> passage id map.

On-disk format (one folder, written atomically: built beside the destination, then renamed into place)::

    index.faiss   the FAISS index (``faiss.write_index``), metric inner product
    ids.txt       passage id of FAISS row i on line i+1 (an explicit map: never inferred from file order elsewhere)
    meta.json     format_version, dim, metric ("ip"), factory, count, encoder_path, encoder_fingerprint,
                  corpus_fingerprint, corpus_path, similarity, created (UTC ISO time), rocketkd_version,
                  encoder_in_folder
    encoder/      the encoder that made the vectors (``DualEncoder.save``), so searching needs only this folder
    .rocketkd-output  the marker of a folder rocketkd wrote (kind "index"): :meth:`DenseIndex.save` replaces an
                  existing folder only when it is an index folder rocketkd wrote (or an empty one), never anything else

:meth:`DenseIndex.load` checks that the pieces agree (row counts, dimension, fingerprints of the encoder and the
corpus when given) and raises :class:`~rocketkd.errors.IndexError_` naming the folder otherwise.

Search backends, chosen per call by ``DenseIndex.backend`` (``"auto"`` by default): FAISS on the GPU when faiss
has GPU support; otherwise, for an exact (``Flat``) index on a machine with CUDA,
:func:`~rocketkd.search.topk.torch_topk_search` on the GPU (chunked matmul + top-k, the same result as FAISS Flat up
to float rounding and the order of tied scores); otherwise FAISS on the CPU.

:func:`search_run` turns a query set into a run; :func:`retrieve` is the one-call version for a split of a dataset.

Several processes (torchrun / ``accelerate launch``, a process group initialised; see :mod:`rocketkd.distributed`):
:meth:`DenseIndex.build` has every process encode its share of the corpus and returns the index on the main process
only (None elsewhere); :func:`search_run` has every process encode its share of the queries' batches and the main
process search them all, returning the run there only (None elsewhere). Shares are the batches of a one-process run,
dealt out, so vectors and run are the same bits whatever the number of processes. Both are collectives: every process must call them, or pass
``distributed=False`` to work in this process alone (e.g. inside an ``if is_main():`` block).

Why over 500 lines: one class and its on-disk format -- build, save, the checks :meth:`DenseIndex.load` makes (each
a named error), the backends' choice -- read together; the exact torch backend lives in :mod:`rocketkd.search.topk`.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch

from rocketkd import __version__
from rocketkd.distributed import local_device, world
from rocketkd.errors import DataFormatError, IndexError_
from rocketkd.io import atomic_dir, atomic_write, check_output, mark_output, read_json, write_json
from rocketkd.models import DualEncoder
from rocketkd.search.encode import encode_corpus, encode_queries
from rocketkd.search.topk import torch_topk_search

if TYPE_CHECKING:
    from rocketkd.data import Corpus, RetrievalData
    from rocketkd.types import Run

__all__ = ["FORMAT_VERSION", "DenseIndex", "SearchResult", "retrieve", "search_run"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.txt"
META_FILE = "meta.json"
ENCODER_DIR = "encoder"
BACKENDS = ("auto", "faiss", "torch")
_ADD_BLOCK = 65_536  # vectors per faiss.add call (bounded copies when the embeddings are a memmap)
_GPU_MAX_K = 2_048
_QUERY_BLOCK = 4_096  # queries per search call (bounded (Q, k) result buffers)


@dataclass
class SearchResult:
    """Per query, best first: ``ids[q]`` passage ids and ``scores[q]`` float32 inner products (same length).

    FAISS's ``-1`` placeholders (fewer than k vectors found) are dropped, so a list may be shorter than k.
    """

    ids: list[list[str]]
    scores: list[np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


# ----------------------------------------------------------------------------------------------------------------
# the index


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    return str(__version__)


def _absolute(path: str | None) -> str | None:
    return str(Path(path).resolve()) if path else None


def _encoder_source(model: Any) -> str | None:
    """Where an encoder was loaded from, as far as transformers recorded it."""
    config = getattr(getattr(model, "passage_encoder", None), "config", None)
    name = getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None)
    return str(name) if name else None


def _flat_vectors(index: faiss.Index) -> np.ndarray | None:
    """The stored vectors of an exact inner-product Flat index (a view, no copy), or None for any other index."""
    if not isinstance(index, faiss.IndexFlat) or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        return None
    if index.ntotal == 0:
        return np.zeros((0, index.d), dtype=np.float32)
    return faiss.rev_swig_ptr(index.get_xb(), index.ntotal * index.d).reshape(index.ntotal, index.d)


def _check_ids(ids: Sequence[str]) -> list[str]:
    ids = list(ids)
    for pid in ids:
        if not isinstance(pid, str) or not pid or "\n" in pid or "\r" in pid:
            raise IndexError_(
                f"passage id {pid!r} cannot be stored in {IDS_FILE} (empty, not a string, or a line break)"
            )
    return ids


class DenseIndex:
    """FAISS inner-product index + the passage id of every row + metadata (+ its encoder, loaded lazily).

    Build with :meth:`build` (encode a corpus) or :meth:`from_embeddings`; persist with :meth:`save` /
    :meth:`load`. ``backend`` chooses the search implementation (see the module docstring).
    """

    def __init__(
        self,
        index: faiss.Index,
        ids: Sequence[str],
        meta: Mapping[str, Any],
        *,
        path: str | os.PathLike | None = None,
        encoder: DualEncoder | None = None,
        backend: str = "auto",
    ) -> None:
        if index.ntotal != len(ids):
            raise IndexError_(f"the index holds {index.ntotal} vectors but {len(ids)} passage ids were given")
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self._index = index
        self._ids = list(ids)
        self._meta = dict(meta)
        self.path = Path(path) if path is not None else None
        self._encoder = encoder
        self.backend = backend
        self._gpu_index: faiss.Index | None = None
        self._torch_corpus: torch.Tensor | None = None

    # properties ---------------------------------------------------------------------------------------------

    @property
    def ids(self) -> list[str]:
        """Passage id of each FAISS row (do not modify)."""
        return self._ids

    @property
    def meta(self) -> dict[str, Any]:
        return self._meta

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        return int(self._index.d)

    @property
    def faiss_index(self) -> faiss.Index:
        """The CPU FAISS index (e.g. to set ``nprobe`` on an IVF index)."""
        return self._index

    @property
    def encoder(self) -> DualEncoder:
        """The encoder that made the vectors: the one given, else loaded from ``<folder>/encoder`` on first use."""
        if self._encoder is None:
            if self.path is None or not (self.path / ENCODER_DIR).is_dir():
                where = f"index folder {self.path}" if self.path is not None else "this in-memory index"
                raise IndexError_(
                    f"{where} has no {ENCODER_DIR}/ folder: pass the encoder (DenseIndex.load(path, encoder=...))"
                )
            encoder = DualEncoder.from_pretrained(self.path / ENCODER_DIR)
            self._check_encoder(encoder, self.path, self._meta)
            self._encoder = encoder
        return self._encoder

    def attach_encoder(self, encoder: DualEncoder) -> None:
        """Use ``encoder`` for :meth:`search_texts`; IndexError_ unless it is the encoder that built the index."""
        if encoder is not self._encoder:
            self._check_encoder(encoder, self.path, self._meta)
            self._encoder = encoder

    def __repr__(self) -> str:
        where = f" at {self.path}" if self.path is not None else ""
        return f"DenseIndex({self.ntotal} passages, dim {self.dim}, {self._meta.get('factory', '?')}{where})"

    # building -----------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        model: DualEncoder | str | os.PathLike,
        corpus: Corpus,
        *,
        factory: str = "Flat",
        batch_size: int = 128,
        autocast: str = "auto",
        train_sample: int = 100_000,
        show_progress: bool = True,
        embeddings_path: str | os.PathLike | None = None,
        distributed: bool | None = None,
        max_tokens: int | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> DenseIndex | None:
        """Encode ``corpus`` with ``model`` (a DualEncoder or a model folder) and index it.

        ``embeddings_path``: keep the passage embeddings in a memory-mapped ``.npy`` there instead of in memory
        while the index is filled (large corpora). ``max_tokens``: padded tokens per encoding batch.
        ``cache_dir``: the embedding cache (:mod:`rocketkd.search.cache`; default the folder set by
        :func:`~rocketkd.search.cache.embedding_cache` or ``$ROCKETKD_EMBEDDING_CACHE``): a frozen encoder's vectors
        of this corpus are reused from there, or stored there once computed.

        Under several processes (``distributed``, default: when a process group of several processes is
        initialised, see :func:`~rocketkd.search.encode.encode_corpus`) every process encodes its share of the corpus and
        the main process alone gathers the vectors (in row order) and builds the index. **The other processes
        return None**: build nothing, save nothing. Every process must call it.
        """
        source: str | None
        if isinstance(model, (str, os.PathLike)):
            source = str(model)
            model = DualEncoder.from_pretrained(model).to(local_device())
        else:
            source = _encoder_source(model)
        emb = encode_corpus(
            model,
            corpus,
            batch_size=batch_size,
            autocast=autocast,
            out_path=embeddings_path,
            show_progress=show_progress,
            distributed=distributed,
            max_tokens=max_tokens,
            cache_dir=cache_dir,
        )
        if emb is None:  # not the main process of a multi-process run: the main process builds the index
            return None
        metadata = {
            "encoder_path": source,
            "encoder_fingerprint": model.fingerprint(),
            "corpus_fingerprint": corpus.fingerprint(),
            "corpus_path": _absolute(getattr(corpus, "source", None)),  # search --query works from any folder
            "similarity": getattr(model, "similarity", None),
            "autocast": autocast,
        }
        index = cls.from_embeddings(
            emb, corpus.ids, factory=factory, metadata=metadata, train_sample=train_sample
        )
        index._encoder = model
        return index

    @classmethod
    def from_embeddings(
        cls,
        emb: np.ndarray,
        ids: Sequence[str],
        *,
        factory: str = "Flat",
        metadata: Mapping[str, Any] | None = None,
        train_sample: int = 100_000,
        seed: int = 0,
        encoder: DualEncoder | None = None,
    ) -> DenseIndex:
        """Index precomputed vectors ``emb`` (N, H) whose row i is passage ``ids[i]``.

        ``factory`` is a ``faiss.index_factory`` string, built with the inner-product metric. An index that needs
        training (IVF, PQ) is trained on ``train_sample`` rows drawn without replacement (seeded). Vectors are
        added in blocks, so ``emb`` may be a memmap larger than memory. On a machine where faiss sees GPUs, the
        training and adding run there and the index is brought back to the CPU.
        """
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be (N, H), got shape {emb.shape}")
        n, dim = int(emb.shape[0]), int(emb.shape[1])
        ids = _check_ids(ids)
        if len(ids) != n:
            raise IndexError_(f"{n} embeddings but {len(ids)} passage ids")
        try:
            cpu_index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise IndexError_(
                f"faiss cannot build the index factory {factory!r}: {_faiss_message(exc)}"
            ) from None

        work = cpu_index
        on_gpu = False
        if faiss.get_num_gpus() > 0:
            try:
                work = faiss.index_cpu_to_all_gpus(cpu_index)
                on_gpu = True
            except (RuntimeError, AttributeError) as exc:  # e.g. HNSW has no GPU version
                logger.info("faiss GPU unavailable for %s (%s); building on the CPU", factory, exc)
        if not work.is_trained:
            if n == 0:
                raise IndexError_(f"cannot train a {factory!r} index on an empty corpus")
            rng = np.random.default_rng(seed)
            if n > train_sample:
                rows = np.sort(rng.choice(n, size=train_sample, replace=False))
                sample = np.ascontiguousarray(emb[rows], dtype=np.float32)
            else:
                sample = np.ascontiguousarray(emb, dtype=np.float32)
            try:
                work.train(sample)
            except RuntimeError as exc:
                raise IndexError_(
                    f"faiss could not train {factory!r} on {len(sample)} vectors: {_faiss_message(exc)}"
                ) from None
        for start in range(0, n, _ADD_BLOCK):
            work.add(np.ascontiguousarray(emb[start : start + _ADD_BLOCK], dtype=np.float32))
        if on_gpu:
            cpu_index = faiss.index_gpu_to_cpu(work)
        meta = {
            "format_version": FORMAT_VERSION,
            "dim": dim,
            "metric": "ip",
            "factory": factory,
            "count": n,
            "encoder_path": None,
            "encoder_fingerprint": encoder.fingerprint() if encoder is not None else None,
            "corpus_fingerprint": None,
            "corpus_path": None,
            "similarity": getattr(encoder, "similarity", None),
            "created": _now(),
            "rocketkd_version": _version(),
        }
        meta.update(dict(metadata or {}))
        meta.update({"dim": dim, "count": n, "factory": factory, "metric": "ip"})
        return cls(cpu_index, ids, meta, encoder=encoder)

    # persistence --------------------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike, *, save_encoder: bool = True) -> Path:
        """Write the index folder atomically (see the module docstring); returns its path.

        The encoder is written into ``encoder/`` when it is loaded (or copied from the folder this index was loaded
        from); ``save_encoder=False`` leaves it out (then ``load`` needs ``encoder=`` to search texts).
        An existing ``path`` is replaced only when it is an index folder rocketkd wrote, or empty; anything else (a
        file, another folder, the current folder) raises :class:`~rocketkd.errors.OutputError` before anything is
        written (:func:`rocketkd.io.check_output`).
        """
        path = Path(path)
        check_output(path, "index", whole=True)
        with atomic_dir(path) as tmp:
            mark_output(tmp, "index")
            faiss.write_index(self._index, str(tmp / INDEX_FILE))
            with atomic_write(tmp / IDS_FILE) as f:
                for start in range(0, len(self._ids), 100_000):
                    f.write("".join(pid + "\n" for pid in self._ids[start : start + 100_000]))
            encoder_in_folder = False
            if save_encoder:
                if self._encoder is not None:
                    self._encoder.save(tmp / ENCODER_DIR)
                    encoder_in_folder = True
                elif self.path is not None and (self.path / ENCODER_DIR).is_dir():
                    shutil.copytree(self.path / ENCODER_DIR, tmp / ENCODER_DIR)
                    encoder_in_folder = True
            self._meta["encoder_in_folder"] = encoder_in_folder
            write_json(tmp / META_FILE, self._meta)
        self.path = path
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        encoder: DualEncoder | None = None,
        corpus: Corpus | None = None,
        backend: str = "auto",
    ) -> DenseIndex:
        """Open an index folder, checking that its parts agree with each other and with ``encoder``/``corpus``.

        Raises :class:`IndexError_` naming the folder when: it or one of its files is missing; ``meta.json`` is not
        valid; ``index.faiss`` is truncated or corrupt; the number of ids, of vectors and ``meta.count`` differ;
        the dimension differs from ``meta.dim`` or the encoder's; the encoder's fingerprint differs from the one
        that built the index; the corpus's fingerprint differs from the indexed corpus.
        """
        folder = Path(path)
        where = f"index folder {folder}"
        if not folder.exists():
            raise IndexError_(f"{where}: no such folder")
        if not folder.is_dir():
            raise IndexError_(f"{where}: is a file, not an index folder")
        for name in (META_FILE, INDEX_FILE, IDS_FILE):
            if not (folder / name).is_file():
                raise IndexError_(
                    f"{where}: {name} is missing (incomplete index; rebuild it with `rocketkd index`)"
                )
        try:
            meta = read_json(folder / META_FILE)
        except DataFormatError as exc:
            raise IndexError_(f"{where}: {exc}") from None
        if not isinstance(meta, dict):
            raise IndexError_(f"{where}: {META_FILE} is not a JSON object")
        for key in ("dim", "count"):
            if not isinstance(meta.get(key), int):
                raise IndexError_(f"{where}: {META_FILE} lacks an integer {key!r}")
        if meta.get("metric", "ip") != "ip":
            raise IndexError_(
                f"{where}: metric {meta.get('metric')!r}, rocketkd indexes use inner product ('ip')"
            )

        ids = _read_ids(folder / IDS_FILE, where)
        try:
            index = faiss.read_index(str(folder / INDEX_FILE))
        except (RuntimeError, MemoryError) as exc:
            raise IndexError_(
                f"{where}: {folder / INDEX_FILE} cannot be read, it is truncated or corrupt "
                f"({_faiss_message(exc)}); rebuild the index"
            ) from None
        if not (len(ids) == index.ntotal == meta["count"]):
            raise IndexError_(
                f"{where}: counts disagree: {IDS_FILE} has {len(ids)} ids, {INDEX_FILE} holds {index.ntotal} "
                f"vectors, {META_FILE} says {meta['count']}"
            )
        if index.d != meta["dim"]:
            raise IndexError_(
                f"{where}: {INDEX_FILE} has dimension {index.d} but {META_FILE} says {meta['dim']}"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexError_(f"{where}: {INDEX_FILE} does not use the inner-product metric")
        if corpus is not None:
            fp = corpus.fingerprint()
            if meta.get("corpus_fingerprint") != fp:
                raise IndexError_(
                    f"{where}: built from a different corpus (fingerprint {meta.get('corpus_fingerprint')}, "
                    f"{meta['count']} passages) than the one given ({fp}, {len(corpus)} passages); re-index"
                )
        out = cls(index, ids, meta, path=folder, backend=backend)
        if encoder is not None:
            cls._check_encoder(encoder, folder, meta)
            out._encoder = encoder
        return out

    @staticmethod
    def _check_encoder(
        encoder: DualEncoder, folder: Path | None, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Refuse an encoder whose vectors would not match the index (other weights or dimension)."""
        raise_for = f"index folder {folder}" if folder is not None else "index"
        if meta is None:
            meta = read_json(folder / META_FILE) if folder is not None else {}
        if int(encoder.hidden_size) != int(meta["dim"]):
            raise IndexError_(
                f"{raise_for}: the encoder gives {encoder.hidden_size}-dimensional vectors, the index holds {meta['dim']}"
            )
        expected = meta.get("encoder_fingerprint")
        if expected is None:
            return  # vectors of unknown origin (from_embeddings without an encoder): nothing to compare
        got = encoder.fingerprint()
        if got != expected:
            raise IndexError_(
                f"{raise_for}: built by another encoder (fingerprint {expected}, from {meta.get('encoder_path')}) "
                f"than the one given ({got}); its vectors are not comparable, re-index with this encoder"
            )

    # search -------------------------------------------------------------------------------------------------

    def _chosen_backend(self) -> str:
        if self.backend != "auto":
            return self.backend
        if faiss.get_num_gpus() > 0:
            return "faiss"
        if torch.cuda.is_available() and _flat_vectors(self._index) is not None:
            needed = self.ntotal * self.dim * 4
            free, _ = torch.cuda.mem_get_info()
            if needed < 0.8 * free:
                return "torch"
        return "faiss"

    def _faiss_searcher(self) -> faiss.Index:
        if faiss.get_num_gpus() > 0 and self._gpu_index is None:
            try:
                self._gpu_index = faiss.index_cpu_to_all_gpus(self._index)
            except (RuntimeError, AttributeError) as exc:
                logger.info("faiss GPU search unavailable (%s); searching on the CPU", exc)
                self._gpu_index = self._index
        return self._gpu_index if self._gpu_index is not None else self._index

    def _torch_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        vectors = _flat_vectors(self._index)
        if vectors is None:
            raise IndexError_(
                f"the torch backend searches exact Flat indexes only, not {self._meta.get('factory')!r}"
            )
        device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
        if device.type == "cuda":
            if self._torch_corpus is None:
                # copy once to the GPU in blocks (no second host copy); reused by every later search
                dev = torch.empty(vectors.shape, dtype=torch.float32, device=device)
                for start in range(0, len(vectors), _ADD_BLOCK):
                    dev[start : start + _ADD_BLOCK] = torch.from_numpy(
                        vectors[start : start + _ADD_BLOCK]
                    ).to(device)
                self._torch_corpus = dev
            return torch_topk_search(self._torch_corpus, q, k, device=device)
        return torch_topk_search(vectors, q, k, device=device)

    def search(self, query_emb: np.ndarray, k: int) -> SearchResult:
        """Top ``k`` passages of each query vector (rows of ``query_emb`` (Q, H)), best first."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = np.ascontiguousarray(query_emb, dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"query vectors must be (Q, {self.dim}), got shape {q.shape}")
        ids_out: list[list[str]] = []
        scores_out: list[np.ndarray] = []
        if self.ntotal == 0 or len(q) == 0:
            return SearchResult([[] for _ in range(len(q))], [np.zeros(0, np.float32) for _ in range(len(q))])
        backend = self._chosen_backend()
        searcher = self._faiss_searcher() if backend == "faiss" else None
        if searcher is not None and searcher is not self._index and k > _GPU_MAX_K:
            searcher = self._index  # faiss GPU indexes answer at most 2048 neighbours per query
        ids = self._ids
        for start in range(0, len(q), _QUERY_BLOCK):
            block = q[start : start + _QUERY_BLOCK]
            if searcher is not None:
                scores, rows = searcher.search(block, min(k, self.ntotal))  # (b, k) each; -1 rows when short
            else:
                scores, rows = self._torch_search(block, k)
            for s_row, r_row in zip(scores, rows):
                keep = r_row >= 0
                ids_out.append([ids[r] for r in r_row[keep].tolist()])
                scores_out.append(np.asarray(s_row[keep], dtype=np.float32))
        return SearchResult(ids_out, scores_out)

    def search_texts(
        self, texts: Sequence[str], k: int, *, batch_size: int = 128, autocast: str = "auto"
    ) -> SearchResult:
        """Encode ``texts`` as queries with this index's encoder, then :meth:`search`."""
        emb = encode_queries(self.encoder, texts, batch_size=batch_size, autocast=autocast)
        return self.search(emb, k)


def search_run(
    index: DenseIndex,
    queries: Mapping[str, str],
    k: int,
    *,
    batch_size: int = 128,
    autocast: str = "auto",
    distributed: bool | None = None,
) -> Run | None:
    """A run: query id -> {passage id: inner product} with each query's top ``k`` passages.

    ``distributed`` (default: when a process group of several processes is initialised): the queries are encoded
    across the processes exactly as one process batches them (:func:`~rocketkd.search.encode.encode_queries`), so
    each vector is the same bits as in one process, and the main process searches them all, as one process would,
    and returns the whole run in the mapping's order. **The other processes return None.** Every process must
    call it.
    """
    qids = list(queries)
    sharded = world()[1] > 1 and distributed is not False
    emb = encode_queries(index.encoder, [queries[q] for q in qids], batch_size=batch_size, autocast=autocast,
                         distributed=sharded)
    if emb is None:  # not the main process: its vectors are with the main process now
        return None
    result = index.search(emb, k)
    # dict(zip(...)) over each row's tolist() (Python floats already): a comprehension calling float() per pair cost
    # about a tenth of a 1,000-query search of 100k vectors (scripts/bench_search.py)
    return {qid: dict(zip(pids, row.tolist())) for qid, pids, row in zip(qids, result.ids, result.scores)}


def retrieve(
    model_dir_or_model: DualEncoder | str | os.PathLike | None,
    data: RetrievalData,
    split: str,
    *,
    k: int = 100,
    index: DenseIndex | None = None,
    batch_size: int = 128,
    autocast: str = "auto",
    show_progress: bool = False,
) -> Run:
    """Top ``k`` passages of every query of ``split`` (those judged in ``data.qrels[split]``).

    Without ``index``, the corpus is encoded into an exact (Flat) index on the fly. With ``index``, queries are
    encoded by the given model, which must be the index's encoder (fingerprint check,
    :class:`~rocketkd.errors.IndexError_` otherwise); ``model_dir_or_model=None`` uses the encoder saved with the
    index.
    """
    queries = data.split_queries(split)
    model = model_dir_or_model
    if isinstance(model, (str, os.PathLike)):
        model = DualEncoder.from_pretrained(model).to(local_device())
    if index is None:
        if model is None:
            raise ValueError("retrieve needs a model or an index")
        index = DenseIndex.build(
            model,
            data.corpus,
            factory="Flat",
            batch_size=batch_size,
            autocast=autocast,
            show_progress=show_progress,
        )
    elif model is not None:
        index.attach_encoder(model)
    return search_run(index, queries, k, batch_size=batch_size, autocast=autocast)


# ----------------------------------------------------------------------------------------------------------------
# helpers


def _faiss_message(exc: BaseException) -> str:
    """faiss errors carry a C++ location prefix; keep the informative tail on one line."""
    text = " ".join(str(exc).split())
    marker = "Error: "
    if marker in text:
        text = text.split(marker, 1)[1]
    return text[:300] or type(exc).__name__


def _read_ids(file: Path, where: str) -> list[str]:
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise IndexError_(f"{where}: cannot read {file.name}: {exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise IndexError_(f"{where}: {file.name} line {line} is not valid UTF-8") from None
    if not text:
        return []
    if not text.endswith("\n"):
        raise IndexError_(f"{where}: {file.name} does not end with a line break (truncated?)")
    ids = text[:-1].split("\n")
    for lineno, pid in enumerate(ids, 1):
        if not pid:
            raise IndexError_(f"{where}: {file.name} line {lineno} is empty")
    return ids
