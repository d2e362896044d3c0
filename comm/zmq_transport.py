"""ZeroMQ transport: the same point-to-point interface as MPI, for runs without MPI.

Each rank binds one ROUTER socket (its inbox) and connects one DEALER to each ring
neighbour (its outboxes).  A message is a small msgpack header [kind, tag, nbytes,
...] followed by the raw payload frame, sent zero-copy (copy=False) and tracked so
the caller's buffer is not reused before ZeroMQ has written it out.  Received
payloads are ZeroMQ frames the ring reduces from directly, without another copy.
For a neighbour on the same host the payload goes through a shared-memory slot
instead (see shm.py) and only the header travels over ZeroMQ.  Per source,
messages arrive in order and are matched to receives in the order they were
posted; tag and size are checked, so a protocol slip raises instead of corrupting
data.

Failure handling, beyond the per-wait deadline:
  * socket monitors on the DEALERs report a neighbour's connection dropping (its
    process died) at once; ZMTP heartbeats catch a frozen or unreachable host;
  * ranks say BYE when they close, so a clean exit is told apart from a crash;
  * a rank that fails sends ABORT to its neighbours, who forward it, so every rank
    of the ring fails within moments, naming the rank where it started;
  * same-host peers are also checked by pid (LivenessMonitor).
"""

from __future__ import annotations

import os
import time
from collections import deque
from typing import Dict, Optional, Sequence

import msgpack
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from .env import Topology, env_int
from .errors import CommError, CommTimeoutError, PeerFailureError
from .rendezvous import local_ip_towards, rendezvous, resolve
from .shm import ShmRegion
from .transport import Deadline, PeerInfo, Request, Transport, why_silent

# Message kinds (first header field).
DATA, ABORT, BYE, SHM_DATA, CREDIT, SHM_OFFER, SHM_REPLY = range(7)
MAX_HEADER_BYTES = 4096
ZERO_COPY_MIN = 64 << 10  # below this pyzmq copies anyway; no tracker needed
SHM_MIN = 16 << 10  # smaller payloads are cheaper inline in the ZeroMQ message
DISCONNECT_GRACE_S = 0.5  # a closing peer's BYE may trail its disconnect on another connection


def _ident(rank: int) -> bytes:
    return b"r%d" % rank


def _flag(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    return raw.strip().lower() not in ("0", "false", "no", "off")


class ZmqTransport(Transport):
    name = "zmq"
    # Each ZeroMQ message costs ~25 us of Python + I/O-thread hand-off: fewer, larger segments
    # (measured: 4 MiB x 4 slots beats 1 MiB x 8 by ~20% from 4 MB up on 2 ranks).
    default_segment_bytes = 4 << 20

    def __init__(self, topo: Topology, timeout: float):
        if not topo.master_addr or not topo.master_port:
            raise CommError("backend 'zmq' with more than one rank needs DPTRAIN_MASTER_ADDR and "
                            "DPTRAIN_MASTER_PORT (rank 0's address and a free TCP port)")
        self.rank, self.size = topo.rank, topo.size
        super().__init__()
        deadline = Deadline(timeout)
        # The ring never sends more than one segment per message: refuse anything much larger.
        segment = env_int("DPTRAIN_COMM_SEGMENT_BYTES", self.default_segment_bytes, minimum=64)
        self.max_frame = env_int("DPTRAIN_COMM_MAX_FRAME_BYTES", max(2 * segment, 1 << 20), minimum=1 << 16)
        self.heartbeat_ms = env_int("DPTRAIN_COMM_HEARTBEAT_MS", 1000, minimum=100)
        self.heartbeat_timeout_ms = env_int("DPTRAIN_COMM_HEARTBEAT_TIMEOUT_MS", 10000, minimum=500)
        self.shm_min = env_int("DPTRAIN_COMM_SHM_MIN_BYTES", SHM_MIN)
        self.ctx = zmq.Context(io_threads=1)
        self._closed = False
        self.fatal = False
        self.shm_out: Dict[int, ShmRegion] = {}  # peer -> region we write into
        self.shm_in: Dict[int, ShmRegion] = {}   # peer -> region it writes into
        try:
            bind_ip = os.environ.get("DPTRAIN_COMM_ADDR") or local_ip_towards(resolve(topo.master_addr))
            self.router = self.ctx.socket(zmq.ROUTER)
            self.router.setsockopt(zmq.RCVHWM, 0)
            self.router.setsockopt(zmq.LINGER, 0)
            self.router.setsockopt(zmq.MAXMSGSIZE, self.max_frame + MAX_HEADER_BYTES)
            self.router.setsockopt(zmq.ROUTER_HANDOVER, 1)
            self._set_heartbeat(self.router)
            try:
                port = self.router.bind_to_random_port(f"tcp://{bind_ip}")
            except zmq.ZMQError as exc:
                raise CommError(f"rank {self.rank} could not listen on {bind_ip} ({exc}); set DPTRAIN_COMM_ADDR "
                                f"to an address of this host that the other ranks can reach") from None
            info = dict(self.me.as_dict(), endpoint=f"tcp://{bind_ip}:{port}")
            table = rendezvous(self.ctx, self.rank, self.size, topo.master_addr, topo.master_port, info, deadline)
            self.endpoints = [str(d["endpoint"]) for d in table]
            self.set_peers([PeerInfo.from_dict(dict(d, rank=i)) for i, d in enumerate(table)])
            self._ident_rank = {_ident(r): r for r in range(self.size)}
            self.inbox: Dict[int, deque] = {r: deque() for r in range(self.size)}
            self.posted: Dict[int, deque] = {r: deque() for r in range(self.size)}
            self.outq: Dict[int, deque] = {r: deque() for r in range(self.size)}  # sends waiting for a slot
            self.dealers: Dict[int, zmq.Socket] = {}
            self.monitors: Dict[zmq.Socket, int] = {}
            self.poller = zmq.Poller()
            self.poller.register(self.router, zmq.POLLIN)
            self.lost: Dict[int, float] = {}   # peer -> when its connection dropped
            self.said_bye: set = set()
            self.abort_info: Optional[tuple] = None  # (origin rank, reason, from rank)
            self._abort_sent = False
            self._shm_offers: Dict[int, tuple] = {}
            self._shm_replies: Dict[int, tuple] = {}
            for peer in {(self.rank - 1) % self.size, (self.rank + 1) % self.size} - {self.rank}:
                self._dealer(peer)
            self._setup_shm(deadline)
        except BaseException:
            self._release_shm()
            self.ctx.destroy(linger=0)
            raise

    # -- sockets ------------------------------------------------------------------------------------
    def _set_heartbeat(self, sock: zmq.Socket) -> None:
        sock.setsockopt(zmq.HEARTBEAT_IVL, self.heartbeat_ms)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self.heartbeat_timeout_ms)
        sock.setsockopt(zmq.HEARTBEAT_TTL, self.heartbeat_timeout_ms)

    def _dealer(self, peer: int) -> zmq.Socket:
        sock = self.dealers.get(peer)
        if sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.IDENTITY, _ident(self.rank))
            sock.setsockopt(zmq.SNDHWM, 0)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, 100)
            self._set_heartbeat(sock)
            mon = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
            sock.connect(self.endpoints[peer])
            self.dealers[peer] = sock
            self.monitors[mon] = peer
            self.poller.register(mon, zmq.POLLIN)
        return sock

    # -- shared memory setup ----------------------------------------------------------------------------
    def _same_host(self, peer: int) -> bool:
        a, b = self.peers[self.rank], self.peers[peer]
        return a.host == b.host and a.boot_id == b.boot_id and bool(a.boot_id)

    def _setup_shm(self, deadline: Deadline) -> None:
        """Offer a slot region to the right neighbour, answer the left one's offer (one message each way)."""
        if self.size == 1:
            return
        right, left = (self.rank + 1) % self.size, (self.rank - 1) % self.size
        enabled = _flag("DPTRAIN_COMM_SHM", True)
        slot_bytes = env_int("DPTRAIN_COMM_SEGMENT_BYTES", self.default_segment_bytes, minimum=64)
        slots = env_int("DPTRAIN_COMM_SHM_SLOTS", 4, minimum=2)
        region = ShmRegion.create(slots, slot_bytes) if enabled and self._same_host(right) else None
        offer = (SHM_OFFER, region.path, slots, slot_bytes) if region else (SHM_OFFER, "", 0, 0)
        self._dealer(right).send(msgpack.packb(offer))
        answered = False
        try:
            while not (answered and (region is None or right in self._shm_replies)):
                self._drain()
                if not answered and left in self._shm_offers:
                    path, n, nbytes = self._shm_offers.pop(left)
                    reply = (SHM_REPLY, "", 0)
                    if path:
                        try:
                            if not (enabled and self._same_host(left)):
                                raise OSError("shared memory disabled on this rank")
                            self.shm_in[left] = ShmRegion.attach(path, n, nbytes)
                            reply = (SHM_REPLY, "ok", 0)
                        except (OSError, ValueError) as exc:
                            reply = (SHM_REPLY, f"no: {exc}"[:200], 0)
                    self._dealer(left).send(msgpack.packb(reply))
                    answered = True
                    continue
                self._events()
                self._check_failures((), "comm.init (shared memory setup)")
                remaining = deadline.remaining()
                if remaining <= 0:
                    who = left if not answered else right
                    raise CommTimeoutError(f"rank {self.rank}: comm.init timed out setting up the link with "
                                           f"{self.peer_label(who)}")
                self.poller.poll(int(min(remaining, 0.05) * 1000) + 1)
        except BaseException:
            if region is not None:
                region.close()
            raise
        if region is not None:
            if self._shm_replies.pop(right, ("",))[0] == "ok":
                self.shm_out[right] = region
            else:
                region.close()

    def _release_shm(self) -> None:
        for region in list(self.shm_out.values()) + list(self.shm_in.values()):
            region.close()
        self.shm_out.clear()
        self.shm_in.clear()

    # -- point to point -------------------------------------------------------------------------------
    def isend(self, peer: int, data, tag: int) -> Request:
        nbytes = int(data.nbytes)
        if nbytes > self.max_frame:
            raise CommError(f"message of {nbytes} bytes exceeds DPTRAIN_COMM_MAX_FRAME_BYTES={self.max_frame}")
        req = Request(peer, nbytes, tag, True)
        queue = self.outq[peer]
        if queue or not self._try_send(peer, req, data):
            queue.append((req, data))  # FIFO: later sends may not overtake a waiting one
        return req

    def _try_send(self, peer: int, req: Request, data) -> bool:
        """Send now if possible (False: the shared-memory slots are all in use)."""
        sock = self._dealer(peer)
        nbytes = req.nbytes
        region = self.shm_out.get(peer)
        try:
            if region is not None and self.shm_min <= nbytes <= region.slot_bytes:
                if not region.free:
                    return False
                slot = region.free.pop()
                np.copyto(region.views[slot][:nbytes], data)
                sock.send(msgpack.packb((SHM_DATA, req.tag, nbytes, slot)), zmq.NOBLOCK)
                req.done = True
                return True
            sock.send(msgpack.packb((DATA, req.tag, nbytes)), zmq.SNDMORE | zmq.NOBLOCK)
            if nbytes >= ZERO_COPY_MIN:
                tracker = sock.send(data, zmq.NOBLOCK, copy=False, track=True)
                req.handle = tracker
                req.done = tracker.done
            else:
                sock.send(data, zmq.NOBLOCK, copy=True)
                req.done = True
            return True
        except zmq.ZMQError as exc:
            self.fatal = True
            raise CommError(f"rank {self.rank}: sending to {self.peer_label(peer)} failed: {exc}") from None

    def _flush(self, peer: int) -> None:
        queue = self.outq[peer]
        while queue:
            req, data = queue[0]
            if not self._try_send(peer, req, data):
                return
            queue.popleft()

    def irecv(self, peer: int, nbytes: int, tag: int, into=None, xp=None) -> Request:
        req = Request(peer, nbytes, tag, False)
        req.extra = into
        self.posted[peer].append(req)
        self._match(peer)
        return req

    def release(self, req: Request) -> None:
        handle, req.handle, req.data = req.handle, None, None
        if isinstance(handle, tuple):  # ("slot", n): hand the shared-memory slot back to the sender
            self._credit(req.peer, handle[1])

    def _credit(self, peer: int, slot: int) -> None:
        try:
            self._dealer(peer).send(msgpack.packb((CREDIT, slot)), zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.fatal = True
            raise CommError(f"rank {self.rank}: returning a buffer to {self.peer_label(peer)} failed: {exc}") from None

    def _match(self, peer: int) -> None:
        posted, inbox = self.posted[peer], self.inbox[peer]
        while posted and inbox:
            req = posted.popleft()
            tag, nbytes, frame, slot = inbox.popleft()
            if tag != req.tag or nbytes != req.nbytes:
                self.fatal = True
                raise CommError(f"rank {self.rank}: protocol error from {self.peer_label(peer)}: expected message "
                                f"tag {req.tag} of {req.nbytes} bytes, got tag {tag} of {nbytes} bytes")
            if slot is not None:
                payload = self.shm_in[peer].views[slot][:nbytes]
            elif nbytes:
                payload = np.frombuffer(frame.buffer, dtype=np.uint8)
            else:
                payload = np.empty(0, np.uint8)
            if req.extra is not None:
                np.copyto(req.extra, payload)
                req.data, req.extra = req.extra, None
                if slot is not None:
                    self._credit(peer, slot)
            else:
                req.data = payload
                req.handle = ("slot", slot) if slot is not None else frame
            req.done = True

    def _drain(self) -> None:
        """Handle every queued incoming message (never blocks)."""
        router = self.router
        while True:
            try:
                frames = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            src = self._ident_rank.get(frames[0].bytes)
            if src is None or len(frames) < 2 or len(frames[1]) > MAX_HEADER_BYTES:
                continue  # not one of ours: drop it
            try:
                header = msgpack.unpackb(frames[1].bytes, raw=False, max_str_len=MAX_HEADER_BYTES,
                                         max_bin_len=0, max_array_len=8, max_map_len=0, max_ext_len=0)
                kind = header[0]
                if kind == DATA and len(frames) == 3:
                    if len(frames[2]) != header[2]:
                        raise ValueError("payload size differs from header")
                    self.inbox[src].append((header[1], header[2], frames[2], None))
                    self._match(src)
                elif kind == SHM_DATA:
                    region = self.shm_in.get(src)
                    slot, nbytes = int(header[3]), int(header[2])
                    if region is None or not 0 <= slot < region.slots or not 0 <= nbytes <= region.slot_bytes:
                        raise ValueError("shared-memory message without a valid slot")
                    self.inbox[src].append((header[1], nbytes, None, slot))
                    self._match(src)
                elif kind == CREDIT:
                    region = self.shm_out.get(src)
                    slot = int(header[1])
                    if region is None or not 0 <= slot < region.slots or slot in region.free:
                        raise ValueError("unexpected buffer credit")
                    region.free.append(slot)
                    self._flush(src)
                elif kind == ABORT:
                    if self.abort_info is None:
                        self.abort_info = (int(header[1]), str(header[2]), src)
                elif kind == BYE:
                    self.said_bye.add(src)
                elif kind == SHM_OFFER:
                    self._shm_offers[src] = (str(header[1]), int(header[2]), int(header[3]))
                elif kind == SHM_REPLY:
                    self._shm_replies[src] = (str(header[1]),)
                else:
                    raise ValueError(f"unknown message kind {kind!r}")
            except CommError:
                raise
            except Exception as exc:  # noqa: BLE001
                self.fatal = True
                raise CommError(f"rank {self.rank}: malformed message from {self.peer_label(src)} ({exc}); "
                                f"protocol error") from None

    def _events(self) -> None:
        for mon, peer in self.monitors.items():
            while True:
                try:
                    event = recv_monitor_message(mon, zmq.NOBLOCK)
                except zmq.ZMQError:
                    break
                if event["event"] == zmq.EVENT_DISCONNECTED and peer not in self.lost:
                    self.lost[peer] = time.monotonic()

    def _check_failures(self, pending: Sequence[Request], context: str) -> None:
        if self.abort_info is not None:
            origin, reason, _ = self.abort_info
            # The origin may have timed out waiting for *us* while we were waiting for the real
            # culprit: say whom this rank was waiting for, so the chain can be followed.
            mine = sorted({r.peer for r in pending if not r.is_send and r.peer != origin})
            also = (f"; this rank was itself still waiting for data from "
                    f"{' and '.join(self.peer_label(p) for p in mine)}" if mine else "")
            raise PeerFailureError(f"rank {self.rank}: {context} aborted; rank {origin} reported: {reason}{also}")
        waiting_on = {r.peer for r in pending}
        now = time.monotonic()
        for peer, since in self.lost.items():
            if peer in self.said_bye:
                if peer in waiting_on:
                    raise PeerFailureError(
                        f"rank {self.rank}: {self.peer_label(peer)} closed its communicator while this rank still "
                        f"waited for it in {context}: the ranks did not call the same number of collectives")
            elif now - since > DISCONNECT_GRACE_S:
                why = why_silent(self.me, self.peers[peer] if 0 <= peer < len(self.peers) else None)
                raise PeerFailureError(
                    f"rank {self.rank}: lost the connection to {self.peer_label(peer)} during {context}: {why}")
        if self.liveness is not None:
            self.liveness.check(context)

    def wait_all(self, reqs: Sequence[Request], deadline: Deadline, context: str) -> None:
        pending = [r for r in reqs if not r.done]
        if not pending:
            return
        try:
            while True:
                self._drain()
                still = []
                for r in pending:
                    if r.done or (r.is_send and r.handle is not None and r.handle.done):
                        r.done = True
                    else:
                        still.append(r)
                if not still:
                    return
                pending = still
                self._events()
                self._check_failures(pending, context)
                remaining = deadline.remaining()
                if remaining <= 0:
                    raise self.timeout_error(pending, deadline, context)
                tracked = [r for r in pending if r.is_send and r.handle is not None]
                if len(tracked) < len(pending):
                    # Messages and credits (and connection events) wake the poller.
                    self.poller.poll(int(min(remaining, 0.05) * 1000) + 1)
                else:
                    # Only tracked sends left: ZeroMQ's I/O thread finishes them; block on the tracker.
                    try:
                        tracked[0].handle.wait(min(remaining, 0.05))
                    except zmq.NotDone:
                        pass
        except (CommError, zmq.ZMQError) as exc:
            self.fatal = True
            if isinstance(exc, zmq.ZMQError):
                raise CommError(f"rank {self.rank}: ZeroMQ error in {context}: {exc}") from None
            raise

    # -- failure propagation and shutdown --------------------------------------------------------------
    def abort(self, reason: str) -> None:
        if self._abort_sent or self._closed:
            return
        self._abort_sent = True
        if self.abort_info is not None:
            origin, reason, exclude = self.abort_info
        else:
            origin, exclude = self.rank, -1
        header = msgpack.packb((ABORT, origin, reason[:2000]))
        for peer, sock in self.dealers.items():
            if peer != exclude:
                try:
                    sock.send(header, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass

    def close(self, clean: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        clean = clean and not self.fatal
        linger = 1000 if clean else 200  # let BYE / ABORT reach the neighbours
        if clean:
            bye = msgpack.packb((BYE, 0, 0))
            for sock in self.dealers.values():
                try:
                    sock.send(bye, zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass
        for sock in self.dealers.values():
            try:
                sock.disable_monitor()
            except zmq.ZMQError:
                pass
        for mon in self.monitors:
            mon.close(linger=0)
        for sock in self.dealers.values():
            sock.close(linger=linger)
        self.router.close(linger=0)
        self.ctx.term()
        self._release_shm()
