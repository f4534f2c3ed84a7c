"""Safe outputs: every file or folder rocketkd writes appears whole or not at all, and only where it may write.

Atomic writes: a writer fills a temporary sibling (same folder, so the final rename stays on one filesystem and is
atomic), flushes it to disk, then renames it over the destination. An exception (or Ctrl-C) inside the ``with``
block removes the temporary and leaves whatever was at the destination before untouched.

Output folders (:func:`claim_output`, docs/reliability.md): the ``--output`` of ``index``, ``train`` and ``pipeline``
must be new (or an empty folder), or a folder rocketkd wrote itself, recognised by the marker file
``.rocketkd-output`` it writes there (a JSON object naming the kind of output: index, train, pipeline) -- of the
same kind. Anything else (someone's folder, a regular file, the current folder) is refused with
:class:`~rocketkd.errors.OutputError` before any work starts, so nothing of the user's is ever replaced. Folders
written before the marker existed are recognised by their files (:data:`_LEGACY`) and get the marker.

Stages whose output is one file (``mine``, ``search``, ``benchmark``) take the same ``--output`` (:func:`output_file`):
a folder, claimed as above, into which the file goes under a fixed name; or, when the path ends in the file's own
suffix, that file -- new, or one of the kind the stage writes (a TREC run, a candidate list with its provenance).

A writer holds a lock (:class:`OutputLock`, ``.rocketkd-lock`` in the folder; beside it for an index folder, which is
replaced whole): a second writer is refused with the holder's pid. A lock whose process has died is taken over.

Why about 500 lines: the two halves -- how a write lands (atomic file, atomic folder swap) and where it may land
(marker, lock) -- are one guarantee, read together (docs/reliability.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime as _dt
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from rocketkd.errors import DataFormatError, OutputError

try:  # POSIX; elsewhere the lock relies on the recorded pid alone
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

__all__ = [
    "LOCK_FILE",
    "OUTPUT_MARKER",
    "OutputLock",
    "RUN_LOG",
    "atomic_dir",
    "atomic_write",
    "check_output",
    "claim_output",
    "file_fingerprint",
    "fsync_tree",
    "mark_output",
    "ONE_FILE_OUTPUTS",
    "names_a_file",
    "output_file",
    "output_kind",
    "read_json",
    "write_json",
]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def _temp_sibling(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable; best effort (some filesystems refuse to open or sync a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"
) -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; on success fsync it and ``os.replace`` it into place.

    ``mode`` is ``"w"`` (text, ``encoding``) or ``"wb"`` (binary; ``encoding`` ignored). The parent folder is created
    if missing. The file gets the usual permissions (0o666 less the umask), not the 0o600 of ``mkstemp``.
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write supports modes 'w' and 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_sibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        if "b" in mode:
            handle: IO[Any] = os.fdopen(fd, "wb")
        else:
            handle = os.fdopen(fd, "w", encoding=encoding, newline="")
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    try:
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """Flush every file under ``root`` (and the folders' entries) to disk: call before writing a completion marker."""
    for folder, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def _drop_dead_siblings(path: Path) -> None:
    """Remove the temporary folders of ``path`` left by writers that were killed (their pid no longer runs)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(?:tmp|old)-(\d+)-[0-9a-f]{{8}}$")
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return
    for entry in entries:
        found = pattern.match(entry.name)
        if found and int(found.group(1)) != os.getpid() and not _pid_alive(int(found.group(1))):
            if entry.is_dir(follow_symlinks=False):
                logger.info("removing %s, left by a writer that no longer runs", entry.path)
                shutil.rmtree(entry.path, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``path`` to fill; on success it becomes ``path``.

    If ``path`` already exists, the two are swapped in one atomic step where the OS allows it (Linux), otherwise
    the old folder is renamed aside (``.{name}.old-*``) just before the new one is renamed in; either way a crash
    leaves the complete old folder or the complete new one, never a mixture. The old folder is then deleted.
    On an exception the temporary folder is removed and ``path`` is left as it was; the temporary folders of
    writers killed before they could do so (their pid no longer runs) are removed when ``path`` is next written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_dead_siblings(path)
    tmp = _temp_sibling(path, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if fsync:
            fsync_tree(tmp)
        if path.exists() or path.is_symlink():
            if _exchange(tmp, path):
                old = tmp  # after the swap the temporary name holds the old folder
            else:
                old = _temp_sibling(path, "old")
                os.rename(path, old)
                os.rename(tmp, path)
            _fsync_dir(path.parent)
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        else:
            os.rename(tmp, path)
            _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _json_default(obj: Any) -> Any:
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy arrays
        return obj.tolist()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON (keys in their given order), atomically. Paths and numpy values are converted."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False, ensure_ascii=False, default=_json_default)
        f.write("\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; a missing file or invalid JSON raises :class:`DataFormatError` naming the file (and line)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise DataFormatError(path, "is a folder, not a JSON file") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataFormatError(path, f"not valid UTF-8 ({e.reason})", line=line) from None
    if not text.strip():
        raise DataFormatError(path, "empty file, expected JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataFormatError(path, f"invalid JSON: {e.msg} (column {e.colno})", line=e.lineno) from None


def file_fingerprint(path: str | os.PathLike, *, max_bytes: int | None = None) -> str:
    """Short (16 hex digits) sha256 of a file's contents, read in chunks; only the first ``max_bytes`` if given."""
    path = Path(path)
    digest = hashlib.sha256()
    remaining = max_bytes
    try:
        with open(path, "rb") as f:
            while remaining is None or remaining > 0:
                chunk = f.read(_CHUNK if remaining is None else min(_CHUNK, remaining))
                if not chunk:
                    break
                digest.update(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------------------
# output folders: whose they are (marker) and who writes them now (lock)

OUTPUT_MARKER = ".rocketkd-output"
LOCK_FILE = ".rocketkd-lock"
RUN_LOG = "rocketkd.log"  # the CLI's log of the runs that wrote the folder: bookkeeping, not an output
# Folders written before the marker existed, recognised by what rocketkd leaves there: per kind, alternatives of
# names that must all be present (checked in this order).
_LEGACY: dict[str, tuple[tuple[str, ...], ...]] = {
    "pipeline": (("stages.json",), ("config.yaml", "runs")),
    "index": (("meta.json", "ids.txt", "index.faiss"),),
    "train": tuple(("config.yaml", name) for name in (
        "checkpoints", "retriever", "train_state.json", "train_log.jsonl", "dev_start.json", "teacher_check.json")),
}


def _own_entry(name: str) -> bool:
    """rocketkd's bookkeeping in an output folder: the marker, the lock, their temporary siblings and the run log."""
    return name == RUN_LOG or any(name == own or name.startswith(f".{own}.") for own in (OUTPUT_MARKER, LOCK_FILE))


def _named(path: Path) -> str:
    """``path`` as the user wrote it, with the absolute path where that alone names nothing (``.``)."""
    return str(path) if path.name not in ("", ".", "..") else f"{path} ({path.resolve()})"


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of output (index, train, pipeline) rocketkd wrote in folder ``path``: its marker, else the files an
    older rocketkd left there; None for any other folder (or an unreadable marker)."""
    folder = Path(path)
    marker = folder / OUTPUT_MARKER
    if marker.is_file():
        try:
            kind = json.loads(marker.read_text(encoding="utf-8")).get("kind")
        except (OSError, ValueError, AttributeError):
            return None
        return kind if isinstance(kind, str) else None
    for kind, signatures in _LEGACY.items():
        if any(all((folder / name).exists() for name in names) for names in signatures):
            if kind == "index" and not _rocketkd_index_meta(folder / "meta.json"):
                continue
            return kind
    return None


def _rocketkd_index_meta(path: Path) -> bool:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and "rocketkd_version" in meta


def _is_cwd_or_above(path: Path) -> bool:
    try:
        here = Path.cwd().resolve()
    except OSError:
        return False
    target = path.resolve()
    return target == here or target in here.parents


def check_output(path: str | os.PathLike, kind: str, *, whole: bool = False) -> None:
    """Refuse, with :class:`~rocketkd.errors.OutputError` naming ``path``, an output rocketkd may not write a ``kind``
    output to: anything but a new path, an empty folder, or a folder rocketkd wrote as a ``kind`` output.

    ``whole``: the output replaces the folder whole (an index folder); then the current folder (or one above it) is
    refused too, empty or not.
    """
    path = Path(path)
    if whole and (path.name in ("", ".", "..") or _is_cwd_or_above(path)):
        raise OutputError(f"{_named(path)}: is the current folder (or above it), which a new {kind} folder would "
                          "replace whole; give a new folder")
    if not path.exists():
        if path.is_symlink():
            raise OutputError(f"{path}: is a broken symbolic link; give a new folder")
        return
    if not path.is_dir():
        raise OutputError(f"{_named(path)}: is a file, not a folder; rocketkd writes a {kind} folder there and "
                          "replaces nothing it did not write: give a new folder")
    if all(_own_entry(entry.name) for entry in os.scandir(path)):
        return
    found = output_kind(path)
    if found is None:
        raise OutputError(f"{_named(path)}: is a folder rocketkd did not write (no {OUTPUT_MARKER} marker) and not "
                          f"empty; rocketkd {kind} writes only to a new folder or one it wrote: give a new folder")
    if found != kind:
        raise OutputError(f"{_named(path)}: holds a rocketkd {found} output, not a {kind} output; give another folder")


def mark_output(folder: str | os.PathLike, kind: str) -> None:
    """Write the marker that makes ``folder`` recognisably a ``kind`` output of rocketkd (kept if already there)."""
    folder = Path(folder)
    marker = folder / OUTPUT_MARKER
    if marker.is_file() and output_kind(folder) == kind:
        return
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_json(marker, {"kind": kind, "written_by": "rocketkd", "created": now})


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists, as another user's process
        return True
    return True


def _launch() -> str | None:
    """The multi-process launch (torchrun / ``accelerate launch``) this process belongs to, or None for one process.
    Processes of one launch share the rendezvous address, which no two live launches share."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1") or 1) <= 1:
            return None
    except ValueError:
        return None
    return ":".join(os.environ.get(k, "") for k in ("MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID"))


class OutputLock:
    """A lock file naming its holder (pid, host, launch) and ``flock``-ed while held: a second writer of the same
    output is refused with the holder's pid. A lock whose process no longer runs (on this host) is taken over; one
    from another host is respected (its process cannot be checked from here)."""

    def __init__(self, lock_path: str | os.PathLike, output: str | os.PathLike) -> None:
        self.path = Path(lock_path)
        self.output = Path(output)
        self._fd: int | None = None

    def _holder(self, fd: int | None = None) -> dict | None:
        try:
            if fd is None:
                raw = self.path.read_bytes()
            else:
                raw = os.pread(fd, 4096, 0)
        except OSError:
            return None
        text = raw.decode("utf-8", "replace").strip()
        if text.isdigit():  # a bare pid
            return {"pid": int(text), "host": socket.gethostname()}
        try:
            holder = json.loads(text)
        except ValueError:
            return None
        return holder if isinstance(holder, dict) and isinstance(holder.get("pid"), int) else None

    def _held_by_other(self, holder: dict | None) -> bool:
        if holder is None:
            return False
        if holder.get("host") != socket.gethostname():
            return True  # cannot tell whether it still runs: assume it does
        return holder["pid"] != os.getpid() and _pid_alive(holder["pid"])

    def _refuse(self, holder: dict | None) -> None:
        who = (f"pid {holder['pid']} on {holder.get('host')}" if holder else "a process that is starting")
        raise OutputError(f"{_named(self.output)}: in use by another rocketkd run ({who}; lock {self.path}); wait "
                          "for it to finish, or delete the lock file if that process is gone")

    def check(self) -> None:
        """Refuse if another run holds the lock; the processes of this launch (same rendezvous) excepted."""
        holder = self._holder()
        launch = _launch()
        if holder is not None and launch is not None and holder.get("launch") == launch:
            return
        if self._held_by_other(holder):
            self._refuse(holder)

    def acquire(self) -> OutputLock:
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise OutputError(f"{_named(self.output)}: cannot write there ({e.strerror}: {self.path})") from None
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    self._refuse(self._holder())
            try:
                current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                current = False
            if not current:  # the holder released (removed) it between our open and flock: take the new file
                os.close(fd)
                continue
            holder = self._holder(fd)
            if self._held_by_other(holder):
                os.close(fd)
                self._refuse(holder)
            if holder is not None and holder["pid"] != os.getpid():
                logger.warning("%s: taking over the lock of pid %d, which no longer runs", self.path, holder["pid"])
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "launch": _launch()}).encode()
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, record + b"\n", 0)
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                raise OutputError(f"{_named(self.output)}: cannot write there ({e.strerror}: {self.path})") from None
            self._fd = fd
            return self
        raise OutputError(f"{_named(self.output)}: could not take the lock {self.path}")

    def release(self) -> None:
        if self._fd is None:
            return
        try:  # removed while still locked: a process that opened it meanwhile sees it gone and starts over
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


@contextlib.contextmanager
def claim_output(path: str | os.PathLike, kind: str, *, whole: bool = False, main: bool = True) -> Iterator[Path]:
    """Hold ``path`` as the output of a ``kind`` run for the ``with`` block: :func:`check_output`, then create the
    folder, mark it (:func:`mark_output`) and lock it (:class:`OutputLock`). Every refusal is an
    :class:`~rocketkd.errors.OutputError` raised before anything is written.

    ``whole``: the output is a folder replaced whole (an index): the lock lies beside it (``.NAME.rocketkd-lock``) and
    the folder is neither created nor marked here (its writer marks the new folder it swaps in).
    ``main=False`` (the other processes of a multi-process launch): check only, create and lock nothing.
    A folder created here that holds nothing but the marker when the block fails is removed again.
    """
    path = Path(path)
    check_output(path, kind, whole=whole)
    lock = OutputLock(path.with_name(f".{path.name}.rocketkd-lock") if whole else path / LOCK_FILE, path)
    if not main:
        lock.check()
        yield path
        return
    created = not whole and not path.exists()
    try:
        (path.parent if whole else path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{_named(path)}: cannot create the folder ({e.strerror})") from None
    try:
        with lock:
            if not whole:
                check_output(path, kind)  # again, now that no other writer can fill it
                try:
                    mark_output(path, kind)
                except OSError as e:
                    raise OutputError(f"{_named(path)}: cannot write there ({e.strerror})") from None
            yield path
    except BaseException:
        if created and all(_own_entry(entry.name) for entry in os.scandir(path)):
            shutil.rmtree(path, ignore_errors=True)
        raise


# Stages whose output is one file: its name in an --output folder, and the suffixes that make --output the file itself.
ONE_FILE_OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "mine": ("candidates.jsonl", (".jsonl",)),
    "search": ("run.trec", (".trec", ".run", ".txt")),
    "benchmark": ("benchmark.md", (".md", ".tsv", ".json")),
}


def names_a_file(path: str | os.PathLike, kind: str) -> bool:
    """Whether a ``kind`` stage's ``--output path`` is the file itself (its suffix, through a ``.gz``), not a folder."""
    path = Path(path)
    plain = path.with_suffix("") if path.suffix.lower() == ".gz" else path
    return plain.suffix.lower() in ONE_FILE_OUTPUTS[kind][1]


def output_file(path: str | os.PathLike, kind: str, *, ours: Callable[[Path], bool]) -> tuple[Path, Path | None]:
    """Where a stage whose output is one file writes it: (the file, the folder to :func:`claim_output` or None).

    ``--output`` means a folder on every stage; a ``kind`` stage of :data:`ONE_FILE_OUTPUTS` puts its file there
    under a fixed name (``run.trec``, ``candidates.jsonl``). A path ending in the file's suffix names the file
    itself, as before folders were the rule: it must be new, or a file ``ours`` recognises as what this stage writes
    (a rerun replaces its own run file); anything else of the user's is refused with
    :class:`~rocketkd.errors.OutputError`, before any work.
    """
    path = Path(path)
    name, suffixes = ONE_FILE_OUTPUTS[kind]
    if not names_a_file(path, kind):
        if path.is_file():
            raise OutputError(f"{_named(path)}: is a file; --output is a folder (rocketkd {kind} writes {name} into "
                              f"it) or a file ending in {' / '.join(suffixes)}")
        check_output(path, kind)  # refused before any work, as claim_output will refuse it
        return path / name, path
    if path.is_dir():
        raise OutputError(f"{_named(path)}: is a folder, though named like a file; give a new file, or a folder name "
                          "without a file suffix")
    if path.exists() and not ours(path):
        raise OutputError(f"{_named(path)}: exists and is not a file rocketkd {kind} writes; rocketkd replaces nothing "
                          "it did not write: give a new file or a folder")
    return path, None
