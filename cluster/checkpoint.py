"""Checkpoint storage: safetensors arrays + JSON metadata, written atomically, verified on read.

Why: the reliability promise is "a killed worker costs at most one checkpoint
interval, never a corrupt checkpoint".  So a checkpoint is built in a temporary
directory, every file is fsync'd, the directory is renamed into place (atomic on
POSIX), and only then is it listed in ``manifest.json`` (itself replaced
atomically) with the SHA-256 of each file.  Readers verify the checksums and
skip anything torn or bit-flipped, falling back to the previous checkpoint.
No pickle: arrays go through ``safetensors.numpy``, everything else is JSON.

Layout of a checkpoint directory::

    checkpoints/
      manifest.json                 {"version": 1, "checkpoints": [{"step", "name", "files": {...}}, ...]}
      step-00000200/
        arrays.safetensors          the named arrays (model state, optimizer state ...)
        meta.json                   user meta + step, created, format, arrays sha256

Public API: ``save_checkpoint``, ``latest_valid_checkpoint``, ``load_checkpoint``,
``list_checkpoints``, ``checkpoint_digest``, ``CheckpointError``, ``CheckpointWarning``.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import time
import warnings
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load as _st_load
from safetensors.numpy import save as _st_save

from .rundir import atomic_write_json, fsync_dir

__all__ = ["save_checkpoint", "load_checkpoint", "latest_valid_checkpoint", "list_checkpoints",
           "checkpoint_digest", "verify_checkpoint", "verify_resume_path", "CheckpointError", "CheckpointWarning", "FORMAT"]

FORMAT = "dptrain-checkpoint-1"
ARRAYS = "arrays.safetensors"
META = "meta.json"
MANIFEST = "manifest.json"
_STEP_DIR = re.compile(r"step-(\d+)")
_RESERVED = ("format", "step", "created", "arrays")


class CheckpointError(Exception):
    """A checkpoint is missing, truncated, corrupt or cannot be written."""


class CheckpointWarning(UserWarning):
    """A checkpoint was skipped while looking for the newest valid one."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_file(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _step_name(step: int) -> str:
    return f"step-{step:08d}"


# --------------------------------------------------------------------------- manifest
def _read_manifest(ckpt_dir: str) -> list[dict] | None:
    """Manifest entries, [] when there is none, None when it exists but is unreadable."""
    path = os.path.join(ckpt_dir, MANIFEST)
    if not os.path.exists(path):
        return []
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        entries = data["checkpoints"]
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("step"), int)
                                                    and isinstance(e.get("name"), str) for e in entries):
            raise ValueError("bad entries")
        return entries
    except (OSError, ValueError, KeyError, TypeError) as e:
        warnings.warn(f"checkpoint manifest {path} is unreadable ({e}); scanning the directory instead",
                      CheckpointWarning, stacklevel=3)
        return None


def list_checkpoints(ckpt_dir: str) -> list[dict]:
    """Manifest entries (oldest first); falls back to a directory scan when the manifest is unreadable."""
    entries = _read_manifest(ckpt_dir)
    if entries is None:
        entries = [{"step": int(m.group(1)), "name": n} for n in _listdir(ckpt_dir)
                   if (m := _STEP_DIR.fullmatch(n))]
    return sorted(entries, key=lambda e: e["step"])


def checkpoint_step(path: str | None) -> int | None:
    """The training step a checkpoint directory holds, from its name (None when it is not one)."""
    m = _STEP_DIR.fullmatch(os.path.basename(os.path.normpath(path))) if path else None
    return int(m.group(1)) if m else None


def _meta_created(path: str) -> float:
    """Creation time recorded in a checkpoint's meta.json (0 when unreadable)."""
    try:
        with open(os.path.join(path, META), "rb") as f:
            return float(json.loads(f.read()).get("created") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0


def _listdir(d: str) -> list[str]:
    try:
        return os.listdir(d)
    except OSError:
        return []


# --------------------------------------------------------------------------- save
def _prepare_arrays(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
    if not isinstance(arrays, Mapping):
        raise CheckpointError(f"arrays must be a dict of name -> numpy array, got {type(arrays).__name__}")
    out = {}
    for name, a in arrays.items():
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"array names must be non-empty strings, got {name!r}")
        if hasattr(a, "get") and not isinstance(a, np.ndarray) and hasattr(a, "device"):
            a = a.get()  # cupy -> numpy
        a = np.asarray(a)
        if a.dtype == object:
            raise CheckpointError(f"array {name!r} has dtype object; only numeric arrays can be stored")
        out[name] = a if a.flags.c_contiguous else a.copy(order="C")  # (ascontiguousarray would make 0-d 1-d)
    return out


def _clean_stale_tmp(ckpt_dir: str) -> None:
    """Remove temporary directories left by writers that no longer exist."""
    for n in _listdir(ckpt_dir):
        m = re.fullmatch(r"\.(?:tmp|old)-step-\d+-(\d+)-[0-9a-f]+", n)
        if not m:
            continue
        pid = int(m.group(1))
        alive = pid != os.getpid() and _pid_alive(pid)
        if not alive:
            shutil.rmtree(os.path.join(ckpt_dir, n), ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(ckpt_dir: str, step: int, arrays: Mapping[str, Any], meta: Mapping[str, Any] | None = None,
                    keep: int | None = 3) -> str:
    """Write checkpoint `step` atomically and return its directory; keep only the newest `keep`.

    `meta` must be JSON-serialisable (step, epoch, sampler position, RNG state, optimizer
    scalars, config hash ...); the keys format/step/created/arrays are set here.  A file system
    error (disk full, the directory replaced by a file, no permission) is a CheckpointError naming
    the directory; the checkpoints already there are left as they were.
    """
    try:
        return _save_checkpoint(ckpt_dir, step, arrays, meta, keep)
    except OSError as e:
        where = f" ({e.filename})" if e.filename and e.filename != os.path.abspath(ckpt_dir) else ""
        raise CheckpointError(f"cannot write checkpoint step {step} in {os.path.abspath(ckpt_dir)}: "
                              f"{e.strerror or e}{where}; free disk space there or set checkpoint.dir "
                              f"to a writable directory (the checkpoints already written are intact)") from e


def _save_checkpoint(ckpt_dir, step, arrays, meta, keep) -> str:
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"step must be a non-negative integer, got {step!r}")
    step = int(step)
    if keep is not None and keep < 1:
        raise CheckpointError(f"keep must be >= 1 or None, got {keep}")
    ckpt_dir = os.path.abspath(ckpt_dir)
    os.makedirs(ckpt_dir, exist_ok=True)
    _clean_stale_tmp(ckpt_dir)

    blob = _st_save(_prepare_arrays(arrays))
    record = {k: v for k, v in dict(meta or {}).items() if k not in _RESERVED}
    record.update(format=FORMAT, step=step, created=round(time.time(), 3),
                  arrays={"file": ARRAYS, "sha256": _sha256(blob), "bytes": len(blob), "count": len(arrays)})
    try:
        meta_bytes = (json.dumps(record, indent=1, sort_keys=True) + "\n").encode()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint meta is not JSON-serialisable: {e}; convert numpy values with "
                              ".tolist()/.item() and drop objects") from None

    name = _step_name(step)
    tag = f"step-{step:08d}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp = os.path.join(ckpt_dir, ".tmp-" + tag)
    final = os.path.join(ckpt_dir, name)
    os.makedirs(tmp)
    try:
        _write_file(os.path.join(tmp, ARRAYS), blob)
        _write_file(os.path.join(tmp, META), meta_bytes)
        fsync_dir(tmp)
        old = None
        if os.path.exists(final):  # the same step saved again (e.g. after a restart): swap it out
            old = os.path.join(ckpt_dir, ".old-" + tag)
            os.rename(final, old)
        os.rename(tmp, final)
        fsync_dir(ckpt_dir)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    entries = [e for e in list_checkpoints(ckpt_dir) if e["step"] != step and
               os.path.isdir(os.path.join(ckpt_dir, e["name"]))]
    entries.append({"step": step, "name": name, "created": record["created"], "epoch": record.get("epoch"),
                    "files": {ARRAYS: {"sha256": record["arrays"]["sha256"], "bytes": len(blob)},
                              META: {"sha256": _sha256(meta_bytes), "bytes": len(meta_bytes)}}})
    # Newest means most recently written: a run started over (resume: never) in a directory that
    # holds an older run's later steps must keep its own checkpoints, not those.
    entries.sort(key=lambda e: (float(e.get("created") or 0), e["step"]))
    dropped = entries[:-keep] if keep else []
    kept = entries[-keep:] if keep else entries
    atomic_write_json(os.path.join(ckpt_dir, MANIFEST), {"version": 1, "format": FORMAT,
                                                         "checkpoints": sorted(kept, key=lambda e: e["step"])})
    # delete only after the manifest no longer lists them; also old unlisted step dirs
    kept_names = {e["name"] for e in kept}
    oldest_kept = min(e["step"] for e in kept) if kept else step
    for e in dropped:
        shutil.rmtree(os.path.join(ckpt_dir, e["name"]), ignore_errors=True)
    for n in _listdir(ckpt_dir):
        m = _STEP_DIR.fullmatch(n)
        if m and n not in kept_names and int(m.group(1)) < oldest_kept:
            shutil.rmtree(os.path.join(ckpt_dir, n), ignore_errors=True)
    return final


# --------------------------------------------------------------------------- verify / load
def _read_verified(path: str, expected: dict | None = None) -> tuple[bytes, dict]:
    """Read and check one checkpoint directory; returns (arrays bytes, meta) or raises CheckpointError."""
    meta_path = os.path.join(path, META)
    arrays_path = os.path.join(path, ARRAYS)
    if not os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with open(meta_path, "rb") as f:
            meta_bytes = f.read()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read {META} ({e.strerror})") from None
    if expected and META in expected.get("files", {}):
        want = expected["files"][META]
        if _sha256(meta_bytes) != want.get("sha256"):
            raise CheckpointError(f"checkpoint {path}: {META} checksum mismatch (corrupt or truncated, "
                                  f"{len(meta_bytes)} bytes, manifest says {want.get('bytes')})")
    try:
        meta = json.loads(meta_bytes)
        info = meta["arrays"]
        want_sha, want_bytes = info["sha256"], int(info["bytes"])
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path}: {META} is not valid checkpoint metadata "
                              f"(corrupt or truncated)") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path}: unknown format {meta.get('format')!r}, expected {FORMAT!r}")
    try:
        with open(arrays_path, "rb") as f:
            blob = f.read()
    except OSError as e:
        raise CheckpointError(f"checkpoint {path}: cannot read {ARRAYS} ({e.strerror})") from None
    if len(blob) != want_bytes:
        raise CheckpointError(f"checkpoint {path}: {ARRAYS} is truncated or padded: {len(blob)} bytes, "
                              f"expected {want_bytes}")
    got = _sha256(blob)
    if got != want_sha:
        raise CheckpointError(f"checkpoint {path}: {ARRAYS} checksum mismatch (sha256 {got[:12]}..., "
                              f"expected {want_sha[:12]}...): the file is corrupt")
    listed = (expected or {}).get("files", {}).get(ARRAYS, {}).get("sha256", got)
    if listed != got:   # the file matches its meta.json: the manifest is what disagrees
        raise CheckpointError(f"checkpoint {path}: {MANIFEST} lists sha256 {str(listed)[:12]}... for {ARRAYS}, "
                              f"but the file and {META} agree on {got[:12]}...: the manifest was edited or "
                              f"belongs to other checkpoints")
    return blob, meta


def verify_checkpoint(path: str) -> dict:
    """Check a checkpoint's checksums; return its meta or raise CheckpointError."""
    return _read_verified(os.path.abspath(path), _manifest_entry(path))[1]


def _manifest_entry(path: str) -> dict | None:
    path = os.path.abspath(path)
    parent, name = os.path.split(path)
    entries = _read_manifest(parent) if os.path.exists(os.path.join(parent, MANIFEST)) else []
    for e in entries or []:
        if e["name"] == name:
            return e
    return None


def latest_valid_checkpoint(ckpt_dir: str, since: float | None = None) -> str | None:
    """Directory of the newest checkpoint whose checksums verify, or None; warns about skipped ones.

    since: only checkpoints created at or after this Unix time (a restart of a launch that must
    not pick up an older run's checkpoints, `checkpoint.resume: never`)."""
    ckpt_dir = os.path.abspath(ckpt_dir)
    if not os.path.isdir(ckpt_dir):
        return None
    listed = _read_manifest(ckpt_dir) or []
    by_name = {e["name"]: e for e in listed}
    names = set(by_name) | {n for n in _listdir(ckpt_dir) if _STEP_DIR.fullmatch(n)}

    def written(n):   # newest = most recently written (then highest step), as save_checkpoint keeps them
        e = by_name.get(n)
        created = e.get("created") if e else _meta_created(os.path.join(ckpt_dir, n))
        return float(created or 0), (e["step"] if e else int(_STEP_DIR.fullmatch(n)[1]))

    order = sorted(names, key=written, reverse=True)
    for name in order:
        path = os.path.join(ckpt_dir, name)
        if since is not None and written(name)[0] < since:
            continue
        try:
            _read_verified(path, by_name.get(name))
        except CheckpointError as e:
            warnings.warn(f"skipping checkpoint: {e}", CheckpointWarning, stacklevel=2)
            continue
        return path
    return None


def verify_resume_path(path: str) -> str:
    """The checkpoint `checkpoint.resume: PATH` would load, verified (checksums) without decoding it.

    PATH is one checkpoint (RUN/checkpoints/step-NNNNNNNN) or a checkpoints directory (its newest
    valid one).  Raises CheckpointError naming what is wrong, so a launch refuses before any
    worker starts."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isdir(path):
        raise CheckpointError(f"{path} is a file, not a checkpoint; give a checkpoint directory "
                              f"(RUN/checkpoints/step-NNNNNNNN) or the checkpoints directory itself")
    if os.path.exists(os.path.join(path, META)):
        _read_verified(path, _manifest_entry(path))
        return path
    if os.path.exists(os.path.join(path, MANIFEST)) or any(_STEP_DIR.fullmatch(n) for n in _listdir(path)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            latest = latest_valid_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no valid checkpoint in {path} (every one is truncated or corrupt)")
        return latest
    raise CheckpointError(f"{path} holds no checkpoint ({META} or step-NNNNNNNN directories); give a "
                          f"checkpoint directory or the checkpoints directory of a run")


def load_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
    """Load (arrays, meta) from a checkpoint directory (or the newest valid one in a checkpoints dir).

    Raises CheckpointError naming the problem when files are missing, truncated or corrupt.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path) and not os.path.exists(os.path.join(path, META)) and (
            os.path.exists(os.path.join(path, MANIFEST)) or any(_STEP_DIR.fullmatch(n) for n in _listdir(path))):
        latest = latest_valid_checkpoint(path)
        if latest is None:
            raise CheckpointError(f"no valid checkpoint in {path}")
        path = latest
    blob, meta = _read_verified(path, _manifest_entry(path))
    try:
        arrays = _st_load(blob)
    except Exception as e:  # safetensors raises its own error types on malformed headers
        raise CheckpointError(f"checkpoint {path}: {ARRAYS} cannot be decoded ({e})") from None
    return arrays, meta


def checkpoint_digest(path: str) -> str:
    """SHA-256 of the arrays file as recorded in the checkpoint's meta.json (what the coordinator records)."""
    try:
        with open(os.path.join(path, META), encoding="utf-8") as f:
            return json.load(f)["arrays"]["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CheckpointError(f"checkpoint {path}: cannot read its {META}") from None
