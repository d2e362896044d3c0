"""Shared-memory files in /dev/shm, and the slots ZeroMQ links use between ranks on one host.

Over loopback TCP every byte is copied twice by the kernel, which caps a 2-rank
ring near 1 GB/s on a small machine.  For a same-host neighbour the ZeroMQ
transport instead copies each payload once into one of a few fixed slots of a
shared file in /dev/shm and sends only the msgpack header (slot number, tag,
size) over ZeroMQ; the receiver reduces straight out of the slot and returns a
credit when done.  ZeroMQ still carries every message, in order, so matching,
failure detection and abort propagation are unchanged.

The file is created 0600 with a random name by the sender, opened by the
receiver, and unlinked as soon as the receiver has mapped it (or when the sender
closes), so nothing is left behind in /dev/shm even if a process is killed later.
"""

from __future__ import annotations

import mmap
import os
import secrets
from typing import List, Optional

import numpy as np

SHM_DIR = "/dev/shm"


def create_file(prefix: str, nbytes: int):
    """(path, mmap) of a new 0600 file in /dev/shm named prefix + pid + random hex.

    The pages are reserved now: a full /dev/shm fails here with OSError (ENOSPC), not as
    SIGBUS on the first write into the mapping.  Raises OSError when impossible."""
    path = os.path.join(SHM_DIR, f"{prefix}{os.getpid()}-{secrets.token_hex(8)}")
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
    try:
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, max(nbytes, 1))
        else:  # pragma: no cover - non-Linux
            os.ftruncate(fd, max(nbytes, 1))
        return path, mmap.mmap(fd, max(nbytes, 1))
    except BaseException:
        remove_file(path)
        raise
    finally:
        os.close(fd)


def open_file(path: str, prefix: str, nbytes: int) -> mmap.mmap:
    """Map a peer's file from `create_file` (checked to be ours and big enough); raises OSError."""
    if os.path.dirname(path) != SHM_DIR or not os.path.basename(path).startswith(prefix):
        raise OSError(f"refusing shared memory path {path!r}")
    fd = os.open(path, os.O_RDWR)
    try:
        if os.fstat(fd).st_size < nbytes:
            raise OSError(f"{path} is smaller than {nbytes} bytes")
        return mmap.mmap(fd, max(nbytes, 1))
    finally:
        os.close(fd)


class ShmRegion:
    """`slots` buffers of `slot_bytes` each in one shared mapping."""

    PREFIX = "dptrain-comm-"

    def __init__(self, path: str, slots: int, slot_bytes: int, mapping: mmap.mmap, owner: bool):
        self.path = path
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.owner = owner
        self._map = mapping
        whole = np.frombuffer(self._map, dtype=np.uint8)
        self.views: List[np.ndarray] = [whole[i * slot_bytes:(i + 1) * slot_bytes] for i in range(slots)]
        self.free: List[int] = list(range(slots))[::-1]

    @staticmethod
    def create(slots: int, slot_bytes: int) -> Optional["ShmRegion"]:
        """A new region in /dev/shm, or None when shared memory is unavailable (the link falls back to TCP)."""
        if not os.path.isdir(SHM_DIR):
            return None
        try:
            path, mapping = create_file(ShmRegion.PREFIX, slots * slot_bytes)
        except OSError:
            return None
        return ShmRegion(path, slots, slot_bytes, mapping, owner=True)

    @staticmethod
    def attach(path: str, slots: int, slot_bytes: int) -> "ShmRegion":
        """Map the sender's region and remove its name (raises OSError when impossible)."""
        region = ShmRegion(path, slots, slot_bytes, open_file(path, ShmRegion.PREFIX, slots * slot_bytes),
                           owner=False)
        remove_file(path)
        return region

    def unlink(self) -> None:
        remove_file(self.path)

    def close(self) -> None:
        if self.owner:
            self.unlink()
        self.views = []
        try:
            self._map.close()
        except BufferError:
            pass  # a numpy view is still alive somewhere: the mapping goes with it


def remove_file(path: str) -> None:
    """Unlink, ignoring a name that is already gone."""
    try:
        os.unlink(path)
    except OSError:
        pass
