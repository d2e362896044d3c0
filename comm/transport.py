"""The point-to-point interface the ring is written against, plus shared helpers.

A transport moves bytes between ranks: `isend` / `irecv` start a transfer and
return a `Request`; `wait` / `wait_all` finish them before a deadline.  The ring
algorithms in `ring.py` use only this, so MPI and ZeroMQ plug in underneath
without the algorithm knowing.  Everything the two transports share lives here
too: deadlines, error wording, scratch buffers and the check that peers on this
host are still alive.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from .errors import CommTimeoutError, PeerFailureError


class Deadline:
    """An absolute point in time that every wait of one operation shares."""

    __slots__ = ("timeout", "end")

    def __init__(self, timeout: float):
        self.timeout = float(timeout)
        self.end = time.monotonic() + self.timeout

    def remaining(self) -> float:
        return self.end - time.monotonic()

    def expired(self) -> bool:
        return time.monotonic() >= self.end


class Request:
    """One outstanding send or receive.

    For a receive, `data` is a uint8 array holding the message once `done` (the
    `into` buffer, or transport-owned scratch that stays valid until `release`).
    """

    __slots__ = ("peer", "nbytes", "tag", "is_send", "done", "data", "handle", "extra")

    def __init__(self, peer: int, nbytes: int, tag: int, is_send: bool):
        self.peer = peer
        self.nbytes = nbytes
        self.tag = tag
        self.is_send = is_send
        self.done = False
        self.data: Optional[np.ndarray] = None
        self.handle = None  # transport specific (MPI request, zmq tracker, ...)
        self.extra = None


@dataclass(frozen=True)
class PeerInfo:
    """Enough about a rank to name it in errors and to check it is alive."""

    rank: int
    host: str
    pid: int
    boot_id: str = ""
    pidns: int = 0
    start_ticks: int = 0

    def label(self) -> str:
        return f"rank {self.rank} (pid {self.pid} on {self.host})"

    def as_dict(self) -> dict:
        return {"rank": self.rank, "host": self.host, "pid": self.pid, "boot_id": self.boot_id,
                "pidns": self.pidns, "start_ticks": self.start_ticks}

    @staticmethod
    def from_dict(d: dict) -> "PeerInfo":
        return PeerInfo(int(d["rank"]), str(d["host"]), int(d["pid"]), str(d.get("boot_id", "")),
                        int(d.get("pidns", 0)), int(d.get("start_ticks", 0)))


def _read(path: str) -> str:
    try:
        with open(path, "r", encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return ""


def _start_ticks(pid: int) -> Optional[int]:
    """Process start time in clock ticks (field 22 of /proc/PID/stat); None when unknown."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        return int(stat[stat.rindex(")") + 2:].split()[19])
    except (ValueError, IndexError):
        return None


def my_peer_info(rank: int) -> PeerInfo:
    pid = os.getpid()
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = 0
    return PeerInfo(rank, socket.gethostname(), pid, _read("/proc/sys/kernel/random/boot_id").strip(),
                    pidns, _start_ticks(pid) or 0)


def pid_alive(info: PeerInfo) -> bool:
    """True unless the process is gone, a zombie, or its pid now belongs to someone else."""
    try:
        os.kill(info.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _read(f"/proc/{info.pid}/stat")
    if stat:
        try:
            state = stat[stat.rindex(")") + 2]
        except (ValueError, IndexError):
            state = "?"
        if state in "ZX":
            return False
        ticks = _start_ticks(info.pid)
        if info.start_ticks and ticks is not None and ticks != info.start_ticks:
            return False
    return True


def why_silent(me: PeerInfo, peer: Optional[PeerInfo]) -> str:
    """What became of a peer whose connection was lost, as far as this host can tell."""
    same_host = (peer is not None and me.boot_id and peer.boot_id == me.boot_id and peer.pidns == me.pidns
                 and peer.pid > 0)
    if same_host and pid_alive(peer):
        stat = _read(f"/proc/{peer.pid}/stat")
        state = stat[stat.rindex(")") + 2] if ")" in stat else "?"
        if state in "Tt":
            return ("that process is stopped (SIGSTOP, Ctrl-Z or a debugger); `kill -CONT "
                    f"{peer.pid}` would let it go on, else restart the job (from the last checkpoint)")
        return ("that process still runs but stopped answering (hung or starved); restart the job "
                "(from the last checkpoint)")
    return "that process died, was killed, or its host became unreachable; restart the job (from the last checkpoint)"


class LivenessMonitor:
    """Checks, at most every `interval` seconds, that peers in our pid namespace still run.

    This catches a killed neighbour in well under a second on one host, for every
    transport; remote peers are covered by ZeroMQ heartbeats or by the timeout.
    """

    def __init__(self, me: PeerInfo, peers: Sequence[PeerInfo], interval: float = 0.2):
        self.interval = interval
        self.local = [p for p in peers
                      if p.rank != me.rank and me.boot_id and p.boot_id == me.boot_id
                      and p.pidns == me.pidns and p.pid > 0]
        self._next = 0.0

    def check(self, context: str) -> None:
        if not self.local:
            return
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        for peer in self.local:
            if not pid_alive(peer):
                raise PeerFailureError(
                    f"{peer.label()} is no longer running (it died or was killed) while this rank was in "
                    f"{context}; the job cannot continue: restart it (from the last checkpoint)")


class ScratchPool:
    """Reusable receive buffers: allocating per message costs page faults and cache misses."""

    def __init__(self):
        self._free: List[np.ndarray] = []

    def get(self, nbytes: int) -> np.ndarray:
        for i, buf in enumerate(self._free):
            if buf.nbytes >= nbytes:
                del self._free[i]
                return buf
        if self._free:
            self._free.pop(0)  # drop a too-small one so the pool does not grow without bound
        return np.empty(max(nbytes, 1), dtype=np.uint8)

    def put(self, buf: np.ndarray) -> None:
        if len(self._free) < 8:
            self._free.append(buf)


class Transport:
    """Base class: point-to-point byte transfers between the ranks of one job."""

    name = "base"
    rank = 0
    size = 1
    supports_native = False
    # True: a buffer that was sent from must see its send completed before it is received into.
    strict_send_buffers = False
    # Ring segment size when DPTRAIN_COMM_SEGMENT_BYTES is not set (per-message cost differs by transport).
    default_segment_bytes = 1 << 20

    def __init__(self):
        # Set by the Communicator: False while async work should poll gently (see ProgressEngine.urgent).
        self.urgent = lambda: True
        self.peers: List[PeerInfo] = []
        self.me = my_peer_info(self.rank)
        self.liveness: Optional[LivenessMonitor] = None

    # -- identity -----------------------------------------------------------------------
    def peer_label(self, rank: int) -> str:
        if 0 <= rank < len(self.peers):
            return self.peers[rank].label()
        return f"rank {rank}"

    def set_peers(self, peers: Sequence[PeerInfo]) -> None:
        self.peers = list(peers)
        # DPTRAIN_COMM_LIVENESS=0 turns the pid check off (tests use it to exercise the other detectors).
        if os.environ.get("DPTRAIN_COMM_LIVENESS", "1").strip().lower() not in ("0", "false", "no", "off"):
            self.liveness = LivenessMonitor(self.me, self.peers)

    # -- point to point (implemented by subclasses) ---------------------------------------
    def isend(self, peer: int, data: np.ndarray, tag: int) -> Request:
        raise NotImplementedError

    def irecv(self, peer: int, nbytes: int, tag: int, into: Optional[np.ndarray] = None, xp=None) -> Request:
        """Receive `nbytes` from `peer`; into=None: scratch memory of array module `xp` (numpy default)."""
        raise NotImplementedError

    def wait_all(self, reqs: Sequence[Request], deadline: Deadline, context: str) -> None:
        raise NotImplementedError

    def wait(self, req: Request, deadline: Deadline, context: str) -> None:
        if not req.done:
            self.wait_all((req,), deadline, context)

    def release(self, req: Request) -> None:
        """Give back the scratch buffer of a completed receive made without `into`."""

    def abort(self, reason: str) -> None:
        """Best effort: tell peers this rank gave up, so they fail fast too."""

    def close(self, clean: bool = True) -> None:
        """Free sockets/communicators; `clean` says no collective failed."""

    # -- error wording ----------------------------------------------------------------------
    def timeout_error(self, pending: Sequence[Request], deadline: Deadline, context: str) -> CommTimeoutError:
        recv_from = sorted({r.peer for r in pending if not r.is_send})
        send_to = sorted({r.peer for r in pending if r.is_send})
        if recv_from:
            who = " and ".join(self.peer_label(p) for p in recv_from)
            what = f"waiting for data from {who}"
        else:
            who = " and ".join(self.peer_label(p) for p in send_to)
            what = f"waiting for {who} to take data this rank sent"
        err = CommTimeoutError(
            f"rank {self.rank}: {context} timed out after {deadline.timeout:g} s {what}. That rank is hung, "
            f"much slower, stuck in a different collective, or waiting on another rank itself. If it is "
            f"legitimately slow raise the timeout (comm.init(timeout=...) or DPTRAIN_COMM_TIMEOUT).")
        return describe_timeout(err, context, recv_from or send_to, deadline.timeout)


def describe_timeout(err: CommTimeoutError, context, waiting_for: Sequence[int], timeout) -> CommTimeoutError:
    """Attach the facts of a timeout as attributes (see CommTimeoutError); `context` names the
    collective when it carries its fingerprint."""
    fp = getattr(context, "fp", None)
    if fp is not None:
        err.seq, err.collective = int(fp.seq), str(fp.kind)
    err.waiting_for = tuple(int(p) for p in waiting_for)
    err.timeout = float(timeout) if timeout is not None else None
    return err


class LocalTransport(Transport):
    """The transport of a 1-rank world: there is nobody to talk to."""

    name = "local"

    def __init__(self):
        super().__init__()
        self.set_peers([self.me])

    def isend(self, peer, data, tag):
        raise PeerFailureError(f"a 1-rank communicator has no rank {peer} to send to")

    def irecv(self, peer, nbytes, tag, into=None, xp=None):
        raise PeerFailureError(f"a 1-rank communicator has no rank {peer} to receive from")

    def wait_all(self, reqs, deadline, context):
        if any(not r.done for r in reqs):
            raise PeerFailureError("a 1-rank communicator cannot wait for other ranks")
