"""The run directory and crash-safe file writing.

Layout of a run directory (``output.dir``)::

    config.yaml          resolved config (what every worker loads)
    metrics.jsonl        one JSON object per line, appended by rank 0 (a launch that does not
                         resume moves the old file to metrics.previous.jsonl)
    summary.json         final results, written atomically at the end (the previous launch's:
                         summary.previous.json)
    coordinator.json     live coordinator state: workers, heartbeats, checkpoints
    resources.jsonl      per-heartbeat resource reports of every rank (this launch's)
    launcher.json        launcher state: attempts, exit codes
    logs/rank{N}.log     everything rank N printed (every launch, separated by ===== lines)
    logs/rank{N}.traceback  the traceback behind rank N's one-line error, when it was ours
    status/rank{N}.json  exit code of rank N (under mpiexec, written by launcher.mpiworker)
    .lock                held by the launcher while the run is live (one launch per directory)
    checkpoints/         see cluster.checkpoint

Why atomic writes: a run may be killed at any instant (that is what fault
tolerance is about); a reader such as ``dptrain status`` or a resuming worker
must see either the old or the new file, never half of one.
"""
from __future__ import annotations

import json
import math
import os
import socket
import tempfile
import time
from typing import Any

__all__ = ["RunDir", "atomic_write_bytes", "atomic_write_json", "fsync_dir", "read_json", "read_jsonl_tail"]


def fsync_dir(path: str) -> None:
    """Make a rename/create inside `path` durable (no-op where directories cannot be opened).

    engine.serialization keeps its own copy: importing the engine here would add ~200 ms to every
    launcher command (`dptrain status`, `validate`) that only reads run directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write to a temporary file in the same directory, fsync, rename over `path`, fsync the directory."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-" + os.path.basename(path) + "-", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(d)


def _jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and non-finite floats -> plain JSON values."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "tolist") and callable(obj.tolist):  # numpy scalar / array
        return _jsonable(obj.tolist())
    return obj


def atomic_write_json(path: str, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n").encode())


def read_json(path: str) -> Any | None:
    """The JSON in `path`, or None when it is missing or unreadable."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_jsonl_tail(path: str, n: int = 10) -> list[dict]:
    """The last `n` parseable lines of a JSON-lines file (a torn last line is skipped)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            block = min(size, max(4096, n * 1024))
            while True:
                f.seek(size - block)
                lines = f.read(block).splitlines()
                if block == size or len(lines) > n + 1:
                    break
                block = min(size, block * 4)
    except OSError:
        return []
    out = []
    for raw in lines[-(n + 1):]:
        try:
            obj = json.loads(raw)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out[-n:]


class RunDirBusy(RuntimeError):
    """Another launch holds this run directory."""


class RunDir:
    """Writers for the files of one run (the runtime calls them from rank 0)."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.path.abspath(os.fspath(path))

    # paths -----------------------------------------------------------------
    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def config_path(self) -> str:
        return self.file("config.yaml")

    @property
    def metrics_path(self) -> str:
        return self.file("metrics.jsonl")

    @property
    def summary_path(self) -> str:
        return self.file("summary.json")

    @property
    def logs_dir(self) -> str:
        return self.file("logs")

    @property
    def checkpoints_dir(self) -> str:
        return self.file("checkpoints")

    def rank_log(self, rank: int) -> str:
        return os.path.join(self.logs_dir, f"rank{rank}.log")

    def create(self) -> "RunDir":
        os.makedirs(self.logs_dir, exist_ok=True)
        return self

    def lock(self) -> "RunDir":
        """Hold RUN_DIR/.lock until this process exits (workers do not inherit it).

        Why: two launches on one run directory would resume from, rotate away and overwrite
        each other's checkpoints, metrics and summary.  Raises RunDirBusy naming the holder."""
        import fcntl
        path = self.file(".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunDirBusy(f"the run directory {self.path} is in use by {holder}: wait for that run to "
                             f"end (dptrain status {self.path}), or pick another output.dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self._lock_fd = fd
        return self

    # writers ---------------------------------------------------------------
    def write_config(self, cfg) -> str:
        """Write the resolved config (a Config, a dict or YAML text) atomically; returns its path."""
        from .config import dump_config  # local import: rundir stays usable without yaml at import time
        text = cfg if isinstance(cfg, str) else dump_config(cfg)
        atomic_write_bytes(self.config_path, text.encode())
        return self.config_path

    def append_metrics(self, record: dict) -> None:
        """Append one JSON line (adds `time` if missing); one write() so concurrent readers see whole lines."""
        rec = dict(record)
        rec.setdefault("time", round(time.time(), 3))
        line = json.dumps(_jsonable(rec), separators=(",", ":")) + "\n"
        os.makedirs(self.path, exist_ok=True)
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()

    def write_summary(self, summary: dict, merge: bool = False) -> str:
        """Write summary.json atomically; with merge=True, update an existing summary instead."""
        data = {}
        if merge:
            old = read_json(self.summary_path)
            if isinstance(old, dict):
                data.update(old)
        data.update(summary)
        atomic_write_json(self.summary_path, data)
        return self.summary_path

    # readers ---------------------------------------------------------------
    def read_summary(self) -> dict | None:
        return read_json(self.summary_path)

    def read_metrics(self, tail: int = 10) -> list[dict]:
        return read_jsonl_tail(self.metrics_path, tail)
