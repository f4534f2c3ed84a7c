"""Shared helpers of the benchmark scripts (``scripts/bench_*.py``): environment, machine description, interleaved
timing, a torch matmul peak, memory readings from ``/proc/self/status``, and the final JSON line.

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


def add_common_args(parser: argparse.ArgumentParser, *, reps: int) -> None:
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
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's, = cores)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampled inputs")
    parser.add_argument("--json-out", default=None, help="also write the final JSON object to this file")


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


def machine_info() -> dict[str, Any]:
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
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Run every function ``warmup`` untimed times, then ``reps`` timed rounds A, B, (C,) A, B, ...

    Returns (seconds per repetition of each name, the last return value of each). ``between(round)`` runs after
    each round (e.g. a matmul peak measured under the same load). A gc.collect() precedes every timed call.
    ``cpu``, when given, receives the CPU seconds (user + system, all threads of this process) of each call.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    last: dict[str, Any] = {}
    for r in range(reps):
        for name, fn in fns.items():
            if load is not None:
                load.mark()
            gc.collect()
            c0 = cpu_seconds()
            start = time.perf_counter()
            last[name] = fn()
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


def rnd(x: float, digits: int = 3) -> float:
    return float(round(x, digits))
