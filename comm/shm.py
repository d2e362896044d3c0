"""Shared-memory slots for ZeroMQ links between ranks on the same host.

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


class ShmRegion:
    """`slots` buffers of `slot_bytes` each in one shared mapping."""

    def __init__(self, path: str, slots: int, slot_bytes: int, fd: int, owner: bool):
        self.path = path
        self.slots = slots
        self.slot_bytes = slot_bytes
        self.owner = owner
        self._map = mmap.mmap(fd, slots * slot_bytes)
        os.close(fd)
        whole = np.frombuffer(self._map, dtype=np.uint8)
        self.views: List[np.ndarray] = [whole[i * slot_bytes:(i + 1) * slot_bytes] for i in range(slots)]
        self.free: List[int] = list(range(slots))[::-1]

    @staticmethod
    def create(slots: int, slot_bytes: int) -> Optional["ShmRegion"]:
        """A new region in /dev/shm, or None when shared memory is unavailable."""
        if not os.path.isdir(SHM_DIR):
            return None
        path = os.path.join(SHM_DIR, f"dptrain-comm-{os.getpid()}-{secrets.token_hex(8)}")
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        except OSError:
            return None
        try:
            # Reserve the pages now: a full /dev/shm must fail here (and fall back to TCP),
            # not as SIGBUS on the first write into the mapping.
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(fd, 0, slots * slot_bytes)
            else:  # pragma: no cover - non-Linux
                os.ftruncate(fd, slots * slot_bytes)
            return ShmRegion(path, slots, slot_bytes, fd, owner=True)
        except OSError:
            os.close(fd)
            _unlink(path)
            return None

    @staticmethod
    def attach(path: str, slots: int, slot_bytes: int) -> "ShmRegion":
        """Map the sender's region and remove its name (raises OSError when impossible)."""
        if os.path.dirname(path) != SHM_DIR or not os.path.basename(path).startswith("dptrain-comm-"):
            raise OSError(f"refusing shared memory path {path!r}")
        fd = os.open(path, os.O_RDWR)
        try:
            if os.fstat(fd).st_size < slots * slot_bytes:
                raise OSError(f"{path} is smaller than {slots} x {slot_bytes} bytes")
            region = ShmRegion(path, slots, slot_bytes, fd, owner=False)
        except BaseException:
            os.close(fd)
            raise
        _unlink(path)
        return region

    def unlink(self) -> None:
        _unlink(self.path)

    def close(self) -> None:
        if self.owner:
            self.unlink()
        self.views = []
        try:
            self._map.close()
        except BufferError:
            pass  # a numpy view is still alive somewhere: the mapping goes with it


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
