"""Shared helpers of the benchmark scripts (``scripts/bench_*.py``): environment, machine description, interleaved
timing, a torch matmul peak, memory readings from ``/proc/self/status``, and the final JSON line.

Devices: ``--device {cpu,cuda,auto}`` (default cpu; auto = cuda when available). On cuda every timed call is
bracketed by ``torch.cuda.synchronize()`` (:func:`synchronize`), and model FLOP utilisation (MFU) is reported
against a bf16 matmul peak measured in the same run (:func:`matmul_peak_tflops`): FLOPs = 2 x non-embedding
parameters x tokens for a forward pass, 6 x ... for forward + backward (:func:`non_embedding_params`,
:class:`BackboneTokenCounter`).

Timing rule of every script: rocketkd and its peer are timed in the same process on the same inputs, alternating
repetitions (A, B, A, B, ...), and each side is summarised by the median of its repetitions, so a neighbour process
that loads the machine slows both sides alike. The 1-minute load average is recorded before every repetition and
reported with the figures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def setup_env() -> None:
    """Offline, quiet, and importable from a checkout: call before importing torch / transformers."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as scripts/*.sh run rocketkd
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("rocketkd").setLevel(logging.ERROR)
    logging.getLogger("sentence_transformers").setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()  # "Loading weights" bars
    except Exception:
        pass


def add_common_args(parser: argparse.ArgumentParser, *, reps: int, mfu: bool = True) -> None:
    """--quick --reps --threads --seed --json-out --device, and (``mfu``) --matmul-n --matmul-reps."""
    parser.add_argument(
        "--quick", action="store_true", help="seconds-long smoke run on tiny inputs (figures meaningless)"
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help=f"timed repetitions per side, alternated (default {reps}; --quick: 2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads (default: torch's, = cores); meaningful on --device cpu, on cuda it only "
        "sets the threads of the host-side work",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled inputs")
    parser.add_argument("--json-out", default=None, help="also write the final JSON object to this file")
    add_device_arg(parser)
    if not mfu:
        return
    parser.add_argument(
        "--matmul-n",
        type=int,
        default=None,
        help="MFU reference: the bf16 matmul peak is measured on the run's device as the mean time of "
        "--matmul-reps (N x N) @ (N x N) torch.matmul products after 3 warm-ups (default N = 8192 on cuda; "
        "0 on cpu = no MFU figures, the *_tflops / mfu keys of the JSON line are null)",
    )
    parser.add_argument(
        "--matmul-reps", type=int, default=10, help="timed products of the matmul peak (default 10)"
    )


DEVICE_CHOICES = ("cpu", "cuda", "auto")


def add_device_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="cpu",
        help="device of rocketkd AND its peer (both run there): cpu (default), cuda (an error when torch sees "
        "no CUDA device), auto (cuda when available, else cpu). On cuda every timed call is bracketed by "
        "torch.cuda.synchronize(), autocast dtypes are those of CUDA, and --threads only sets the torch "
        "threads of the host-side work (tokenising, collating)",
    )


def add_model_arg(parser: argparse.ArgumentParser, role: str) -> None:
    """``--model``: the start point of ``role`` (which models of the script it feeds)."""
    parser.add_argument(
        "--model",
        default=None,
        help=f"{role}: a rocketkd/sentence-transformers folder or a plain transformers folder (config.json, weights, "
        "tokenizer files; mean pooling), e.g. a random-weight copy from `python scripts/bench_common.py random-model "
        "packaged DIR` (default: packaged all-MiniLM-L6-v2)",
    )


def add_peer_autocast_arg(parser: argparse.ArgumentParser, peer_call: str) -> None:
    """``--peer-autocast``: the peer's precision, by default the one rocketkd's own setting takes on the device."""
    parser.add_argument(
        "--peer-autocast",
        choices=("auto", "no", "bf16"),
        default="auto",
        help=f"autocast of {peer_call}: auto (default) = on cuda the dtype rocketkd takes there (bf16: both sides "
        "equal), on cpu none (sentence-transformers' fp32 default); no = fp32; bf16 = torch.autocast bf16",
    )


def resolve_device(name: str | None):
    """``--device`` -> a torch.device: "auto" is cuda when torch sees a CUDA device, else cpu; "cuda" without one
    is a SystemExit naming the problem (before any model is loaded)."""
    import torch

    key = (name or "cpu").lower()
    if key not in DEVICE_CHOICES:
        raise SystemExit(f"--device {name!r}: expected one of {', '.join(DEVICE_CHOICES)}")
    if key == "auto":
        key = "cuda" if torch.cuda.is_available() else "cpu"
    if key == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: torch {torch.__version__} sees no CUDA device here; use --device cpu or --device auto"
        )
    return torch.device(key)


def synchronize(device: Any = None) -> None:
    """Wait for queued CUDA work when ``device`` is a CUDA device (so a clock read after it covers that work)."""
    if device is None:
        return
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def device_info(device: Any) -> dict[str, Any]:
    """What the run ran on: {"type": "cpu"} or the CUDA device's name, capability, memory and versions."""
    import torch

    dev = torch.device(device)
    info: dict[str, Any] = {"type": dev.type}
    if dev.type == "cuda":
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        info.update(
            {
                "name": props.name,
                "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                "count": torch.cuda.device_count(),
                "cuda": torch.version.cuda,
                "bf16_supported": bool(torch.cuda.is_bf16_supported()),
                "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
            }
        )
    return info


def autocast_context(device: Any, dtype: Any):
    """``torch.autocast`` on the device's type with ``dtype``, or a no-op context when ``dtype`` is None."""
    import contextlib

    import torch

    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype)


def dtype_name(dtype: Any) -> str:
    """None -> "fp32", torch.bfloat16 -> "bf16", torch.float16 -> "fp16"."""
    if dtype is None:
        return "fp32"
    return {"torch.bfloat16": "bf16", "torch.float16": "fp16", "torch.float32": "fp32"}.get(str(dtype), str(dtype))


def make_accelerator_on(device: Any, **kwargs: Any):
    """rocketkd's ``make_accelerator`` on ``device``: on a CUDA machine asked to run on the CPU, an accelerate
    ``Accelerator(cpu=True)`` instead (make_accelerator would place prepared models on the GPU)."""
    import torch

    if torch.device(device).type == "cpu" and torch.cuda.is_available():
        from accelerate import Accelerator

        return Accelerator(cpu=True, **kwargs)
    from rocketkd.training import make_accelerator

    return make_accelerator(**kwargs)


def to_device(features: Mapping[str, Any], device: Any) -> dict[str, Any]:
    """A dict of tensors (and other values) with its tensors moved to ``device``."""
    import torch

    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}


def work_dir(prefix: str) -> Path:
    """A fresh temporary folder, removed when the process exits (set ROCKETKD_BENCH_KEEP=1 to keep it)."""
    import atexit
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    if not os.environ.get("ROCKETKD_BENCH_KEEP"):
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(int(n))


# ----------------------------------------------------------------------------------------------------------------
# machine and load


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_info(device: Any = None) -> dict[str, Any]:
    import torch

    flags = cpu_flags()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "isa": sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_at_start": load_avg(),
    }
    if device is not None:
        info["device"] = device_info(device)
    for name in ("transformers", "sentence_transformers", "faiss", "numpy", "accelerate"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "?")
        except ImportError:
            pass
    return info


class LoadLog:
    """1/5/15-minute load averages sampled at the points a script asks (before each repetition)."""

    def __init__(self) -> None:
        self.samples: list[list[float]] = []

    def mark(self) -> None:
        self.samples.append(load_avg())

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            self.mark()
        ones = [s[0] for s in self.samples]
        return {
            "load1_min": min(ones),
            "load1_median": statistics.median(ones),
            "load1_max": max(ones),
            "samples": len(ones),
        }


# ----------------------------------------------------------------------------------------------------------------
# timing


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def interleaved(
    fns: Mapping[str, Callable[[], Any]],
    reps: int,
    *,
    warmup: int = 1,
    load: LoadLog | None = None,
    between: Callable[[int], None] | None = None,
    verbose: bool = True,
    cpu: dict[str, list[float]] | None = None,
    device: Any = None,
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every function ``warmup`` untimed times, then ``reps`` timed rounds A, B, (C,) A, B, ...

    Returns (seconds per repetition of each name, the last return value of each). ``between(round)`` runs after
    each round (e.g. a matmul peak measured under the same load). A gc.collect() precedes every timed call.
    ``cpu``, when given, receives the CPU seconds (user + system, all threads of this process) of each call.
    ``device``: a CUDA device makes every timed call start and end with ``torch.cuda.synchronize()``.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    last: dict[str, Any] = {}
    for r in range(reps):
        for name, fn in fns.items():
            if load is not None:
                load.mark()
            gc.collect()
            synchronize(device)
            c0 = cpu_seconds()
            start = time.perf_counter()
            last[name] = fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
            if cpu is not None:
                cpu.setdefault(name, []).append(cpu_seconds() - c0)
        if verbose:
            line = "  ".join(f"{n}={t[-1]:.3f}s" for n, t in times.items())
            log(f"  round {r + 1}/{reps}: {line}  load={load_avg()}")
        if between is not None:
            between(r)
    return times, last


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all threads). Other processes' load barely changes it,
    unlike wall time, but threads that spin while waiting for a descheduled sibling count."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def matmul_gflops(dtype_name: str, n: int = 2048, reps: int = 3) -> float:
    """Best-of-``reps`` GFLOP/s of an (n x n) @ (n x n) torch.mm in ``dtype_name`` ('fp32' or 'bf16')."""
    import torch

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(dtype)
    b = torch.randn(n, n, generator=gen).to(dtype)
    out = torch.empty(n, n, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up (kernel selection, page faults)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


class PeakTracker:
    """Matmul peak per dtype, measured repeatedly during a run (under the load the run itself sees)."""

    def __init__(self, dtypes: Sequence[str] = ("fp32", "bf16"), n: int = 2048) -> None:
        self.dtypes = tuple(dtypes)
        self.n = n
        self.values: dict[str, list[float]] = {d: [] for d in self.dtypes}

    def measure(self, *_: Any) -> None:
        for d in self.dtypes:
            self.values[d].append(matmul_gflops(d, self.n))

    def summary(self) -> dict[str, Any]:
        return {
            d: {
                "median_gflops": round(median(v), 1),
                "max_gflops": round(max(v), 1) if v else None,
                "samples": len(v),
            }
            for d, v in self.values.items()
        }


def matmul_peak_tflops(
    device: Any, n: int = 8192, *, warmup: int = 3, reps: int = 10, dtype: str = "bf16"
) -> dict[str, Any]:
    """Matmul peak on ``device``: ``warmup`` untimed then ``reps`` timed (n x n) @ (n x n) ``torch.matmul`` in
    ``dtype``; TFLOP/s = 2 n^3 / mean seconds per product (the clock is read after ``synchronize``)."""
    import torch

    if n < 1 or reps < 1:
        raise ValueError(f"matmul peak needs n >= 1 and reps >= 1, got n={n}, reps={reps}")
    dev = torch.device(device)
    dt = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    a = torch.randn(n, n, device=dev, dtype=dt)  # made on the device (values do not matter for the time)
    b = torch.randn(n, n, device=dev, dtype=dt)
    out = torch.empty(n, n, device=dev, dtype=dt)
    with torch.inference_mode():
        for _ in range(warmup):
            torch.matmul(a, b, out=out)
        synchronize(dev)
        start = time.perf_counter()
        for _ in range(reps):
            torch.matmul(a, b, out=out)
        synchronize(dev)
        mean_s = (time.perf_counter() - start) / reps
    del a, b, out
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return {
        "tflops": 2.0 * n**3 / mean_s / 1e12,
        "n": n,
        "dtype": dtype,
        "warmup": warmup,
        "reps": reps,
        "mean_ms": mean_s * 1e3,
    }


class MatmulPeak:
    """The bf16 matmul peak of an MFU figure, measured a few times in a run (e.g. before and after the timed work);
    the peak is the highest of the measurements (each the mean of ``reps`` products)."""

    def __init__(self, device: Any, n: int | None, reps: int = 10) -> None:
        import torch

        dev = torch.device(device)
        self.device = dev
        self.n = (8192 if dev.type == "cuda" else 0) if n is None else int(n)
        self.reps = reps
        self.samples: list[dict[str, Any]] = []

    @property
    def enabled(self) -> bool:
        return self.n > 0

    def measure(self, *_: Any) -> None:
        if self.enabled:
            self.samples.append(matmul_peak_tflops(self.device, self.n, reps=self.reps))

    @property
    def tflops(self) -> float | None:
        return max(s["tflops"] for s in self.samples) if self.samples else None

    def summary(self) -> dict[str, Any] | None:
        if not self.samples:
            return None
        return {
            "tflops": rnd(self.tflops, 2),
            "samples_tflops": [rnd(s["tflops"], 2) for s in self.samples],
            "shape": f"{self.n}x{self.n}x{self.n}",
            "dtype": "bf16",
            "timed_products_per_sample": self.reps,
            "statistic": "max over samples of the mean time per product (3 untimed warm-ups each)",
        }


def non_embedding_params(module: Any) -> int:
    """Parameters of ``module`` except those of its ``nn.Embedding`` layers (token / position / type embeddings)
    and of any submodule named ``pooler`` (BERT's tanh layer runs on one token per sequence). Shared parameters
    count once. This is the N of the usual FLOP estimates 2 N tokens (forward) and 6 N tokens (forward + backward)."""
    import torch

    skip: set[int] = set()
    for name, sub in module.named_modules():
        if isinstance(sub, torch.nn.Embedding) or "pooler" in name.split("."):
            skip.update(id(p) for p in sub.parameters())
    return int(sum(p.numel() for p in module.parameters() if id(p) not in skip))


def forward_flops(params: float, tokens: float) -> float:
    """FLOPs of a forward pass: 2 x non-embedding parameters x tokens (attention's L^2 terms not counted)."""
    return 2.0 * float(params) * float(tokens)


def train_flops(params: float, tokens: float) -> float:
    """FLOPs of forward + backward: 6 x non-embedding parameters x tokens (2 forward + 4 backward)."""
    return 6.0 * float(params) * float(tokens)


def mfu_ratio(flops: float, seconds: float, peak_tflops: float | None) -> float | None:
    """Model FLOP utilisation: achieved TFLOP/s (flops / seconds / 1e12) over the peak TFLOP/s; None without a
    peak or a positive time."""
    if not peak_tflops or peak_tflops <= 0 or not seconds or seconds <= 0:
        return None
    return float(flops) / float(seconds) / 1e12 / float(peak_tflops)


def tflops(flops: float, seconds: float) -> float | None:
    return float(flops) / float(seconds) / 1e12 if seconds and seconds > 0 else None


class BackboneTokenCounter:
    """Counts the tokens that go through each transformers model under ``roots``.

    The outermost ``PreTrainedModel`` modules are found (so a classifier's inner encoder is not counted twice; a
    module shared by two towers counts every call) and a forward pre-hook goes on each one's input embedding
    (``get_input_embeddings()``, which every forward calls with the token ids -- hooks on the model itself would
    miss callers that invoke ``model.forward`` directly, as sentence-transformers 6 does). Each forward records
    (non-embedding params of the model, padded tokens = ``input_ids.numel()``, real tokens = ids other than the
    config's ``pad_token_id``, i.e. the attention mask's ones, kept as a tensor so nothing waits for the device
    during timing). Use :meth:`mark` around a call and :meth:`totals` afterwards.
    """

    def __init__(self, *roots: Any) -> None:
        from transformers import PreTrainedModel

        self.records: list[tuple[int, int, Any]] = []
        self.handles: list[Any] = []
        seen: set[int] = set()

        def walk(module: Any) -> None:
            if id(module) in seen:
                return
            seen.add(id(module))
            if isinstance(module, PreTrainedModel):
                params = non_embedding_params(module)
                pad = getattr(module.config, "pad_token_id", None)
                emb = module.get_input_embeddings()
                self.handles.append(emb.register_forward_pre_hook(self._make_hook(params, pad)))
                return
            for child in module.children():
                walk(child)

        for root in roots:
            walk(root)
        if not self.handles:
            raise ValueError("no transformers model (PreTrainedModel) found to count tokens through")

    def _make_hook(self, params: int, pad: int | None):
        def hook(module: Any, args: tuple) -> None:
            ids = args[0]
            real = (ids != pad).sum() if pad is not None else int(ids.numel())
            self.records.append((params, int(ids.numel()), real))

        return hook

    def mark(self) -> int:
        return len(self.records)

    def totals(self, start: int = 0, end: int | None = None) -> dict[str, int]:
        """Sums over records[start:end]: tokens (real, padded) and parameter x tokens (real, padded)."""
        out = {"tokens_real": 0, "tokens_padded": 0, "param_tokens_real": 0, "param_tokens_padded": 0}
        for params, padded, real in self.records[start:end]:
            real = int(real.item()) if hasattr(real, "item") else int(real)
            out["tokens_real"] += real
            out["tokens_padded"] += padded
            out["param_tokens_real"] += params * real
            out["param_tokens_padded"] += params * padded
        return out

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []


def topk_agreement(ids_a: Sequence[Sequence[Any]], ids_b: Sequence[Sequence[Any]], k: int) -> tuple[float, float]:
    """(mean over queries of |top-k of a & top-k of b| / min(k, len a, len b), fraction of queries whose top-1 ids
    agree) for two per-query ranked id lists; (1.0, 1.0) for no queries."""
    if len(ids_a) != len(ids_b):
        raise ValueError(f"{len(ids_a)} vs {len(ids_b)} queries")
    if not len(ids_a):
        return 1.0, 1.0
    overlap, top1 = [], []
    for a, b in zip(ids_a, ids_b):
        a, b = list(a)[:k], list(b)[:k]
        overlap.append(len(set(a) & set(b)) / max(min(k, len(a), len(b)), 1))
        top1.append(bool(a and b and a[0] == b[0]))
    return float(sum(overlap) / len(overlap)), float(sum(top1) / len(top1))


def save_random_copy(src: str | os.PathLike, dst: str | os.PathLike, seed: int = 0) -> Path:
    """A randomly initialised model of ``src``'s architecture, saved as a plain transformers folder at ``dst``:
    ``config.json`` + weights (``AutoModel.from_config(...).save_pretrained``) + ``src``'s tokenizer files. Only
    the config and tokenizer of ``src`` are read (its weights need not exist). Speed does not depend on weight
    values, so the benchmarks can time it where the real weights cannot be carried; rocketkd and
    sentence-transformers both load such a folder with mean pooling (no Normalize)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.from_pretrained(str(src))
    torch.manual_seed(seed)
    model = AutoModel.from_config(config)
    out = Path(dst)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(src)).save_pretrained(str(out))
    return out


# ----------------------------------------------------------------------------------------------------------------
# memory (Linux /proc)


def proc_status_kib() -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS), RssAnon, RssFile of this process in KiB (empty off Linux)."""
    out: dict[str, int] = {}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    except OSError:
        pass
    return out


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class AnonPeakSampler:
    """Samples RssAnon (anonymous memory: heap, tensors, arrays; not the memory-mapped corpus) every ``period`` s."""

    def __init__(self, period: float = 0.005) -> None:
        self.period = period
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, proc_status_kib().get("RssAnon", 0))
            self._stop.wait(self.period)

    def __enter__(self) -> AnonPeakSampler:
        self.peak = proc_status_kib().get("RssAnon", 0)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, proc_status_kib().get("RssAnon", 0))


# ----------------------------------------------------------------------------------------------------------------
# output


def log(message: str) -> None:
    """Progress on stderr, so stdout ends with the figures and the JSON line."""
    print(message, file=sys.stderr, flush=True)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.3g}" if abs(v) < 100 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(result: Mapping[str, Any], json_out: str | None = None) -> None:
    """Print the result as one JSON line, last on stdout (and write it to ``json_out`` if given)."""
    text = json.dumps(result, separators=(",", ":"), default=_json_default)
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(text + "\n")
    sys.stdout.flush()
    print(text, flush=True)


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
    except ImportError:
        pass
    return str(obj)


def rnd(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else float(round(x, digits))


if __name__ == "__main__":  # python scripts/bench_common.py random-model SRC DST [--seed N]
    _p = argparse.ArgumentParser(description="benchmark helpers")
    _sub = _p.add_subparsers(dest="cmd", required=True)
    _r = _sub.add_parser(
        "random-model",
        help="save a randomly initialised copy of SRC's architecture (config.json + tokenizer files of SRC; "
        "its weights are not read) as a plain transformers folder DST, for --model",
    )
    _r.add_argument("src", help="folder with config.json and tokenizer files (default model: 'packaged')")
    _r.add_argument("dst")
    _r.add_argument("--seed", type=int, default=0)
    _a = _p.parse_args()
    setup_env()
    _src = _a.src
    if _src == "packaged":
        from rocketkd.models import resolve_model_path

        _src = resolve_model_path(None)
    print(save_random_copy(_src, _a.dst, seed=_a.seed))
