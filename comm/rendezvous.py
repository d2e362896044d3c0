"""ZeroMQ rendezvous: how ranks without MPI find each other.

Rank 0 binds a ROUTER socket on DPTRAIN_MASTER_ADDR:DPTRAIN_MASTER_PORT; every
other rank connects a DEALER (ZeroMQ retries the connection until rank 0 is up)
and sends a hello: its rank, the world size it was told, where its data socket
listens, and host/pid for error messages and liveness checks.  Once all ranks
registered, rank 0 answers each with the full table and the ranks connect to
their ring neighbours directly.  Messages are msgpack with size limits; a
malformed hello is ignored (a stray client cannot break the job), while
contradictions (two processes claiming one rank, different world sizes) fail the
job on every rank with a message that says which.
"""

from __future__ import annotations

import socket
from typing import List

import msgpack
import zmq

from .errors import CommError, CommTimeoutError
from .transport import Deadline

MAX_HELLO_BYTES = 64 << 10
PROTOCOL = "dptrain-comm/1"
_REQUIRED = ("rank", "size", "endpoint", "host", "pid")


def resolve(host: str) -> str:
    try:
        return socket.gethostbyname(host)
    except OSError as exc:
        raise CommError(f"cannot resolve DPTRAIN_MASTER_ADDR={host!r} ({exc}); set it to rank 0's host "
                        f"name or IP address") from None


def local_ip_towards(master_ip: str) -> str:
    """The address of the interface this host uses to reach rank 0 (no packet is sent)."""
    if master_ip.startswith("127."):
        return "127.0.0.1"
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect((master_ip, 9))
        return probe.getsockname()[0]
    except OSError:
        return "127.0.0.1"
    finally:
        probe.close()


def _unpack(data: bytes, limit: int):
    return msgpack.unpackb(data, raw=False, max_bin_len=limit, max_str_len=limit, max_array_len=limit,
                           max_map_len=1024, max_ext_len=0)


def _pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def rendezvous(ctx: zmq.Context, rank: int, size: int, master_addr: str, master_port: int, info: dict,
               deadline: Deadline) -> List[dict]:
    """Exchange `info` dicts between all ranks through rank 0; returns them in rank order."""
    master_ip = resolve(master_addr)
    address = f"tcp://{master_ip}:{master_port}"
    hello = dict(info, proto=PROTOCOL, rank=rank, size=size)
    if rank == 0:
        return _serve(ctx, address, size, hello, deadline)
    return _join(ctx, address, rank, hello, deadline)


def _serve(ctx: zmq.Context, address: str, size: int, hello: dict, deadline: Deadline) -> List[dict]:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_HELLO_BYTES)
    sock.setsockopt(zmq.LINGER, 2000)
    try:
        sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        raise CommError(f"rank 0 could not bind the rendezvous address {address}: {exc}. Another job may "
                        f"use this port: pick a free one (cluster.master_port in a dptrain config, else "
                        f"DPTRAIN_MASTER_PORT, or MASTER_PORT / init_method for init_process_group without a "
                        f"launcher; or check the address is one of this host's)") from None
    infos = {0: hello}
    idents = {}
    try:
        while len(infos) < size:
            remaining = deadline.remaining()
            if remaining <= 0:
                missing = [r for r in range(size) if r not in infos]
                raise CommTimeoutError(
                    f"rendezvous at {address} timed out after {deadline.timeout:g} s: rank(s) {missing} never "
                    f"registered (not started, crashed at startup, or cannot reach this address/port)")
            if not sock.poll(int(min(remaining, 0.2) * 1000) + 1):
                continue
            frames = sock.recv_multipart()
            if len(frames) != 2:
                continue
            ident, payload = frames
            try:
                msg = _unpack(payload, MAX_HELLO_BYTES)
            except Exception:  # noqa: BLE001 - stray or garbled client: ignore it
                continue
            if not isinstance(msg, dict) or msg.get("proto") != PROTOCOL or any(k not in msg for k in _REQUIRED):
                continue
            r, s = msg["rank"], msg["size"]
            if s != size:
                error = (f"rank {r} (pid {msg['pid']} on {msg['host']}) was started with DPTRAIN_WORLD_SIZE={s} "
                         f"but rank 0 with {size}: all ranks must get the same world size")
                _fail(sock, list(idents.values()) + [ident], error)
                raise CommError(error)
            if not isinstance(r, int) or not 0 < r < size:
                continue
            if r in infos and infos[r].get("pid") != msg["pid"]:
                old = infos[r]
                error = (f"two processes claim rank {r}: pid {old['pid']} on {old['host']} and pid {msg['pid']} on "
                         f"{msg['host']}; every process needs its own DPTRAIN_RANK")
                _fail(sock, list(idents.values()) + [ident], error)
                raise CommError(error)
            infos[r] = msg
            idents[r] = ident
        table = [infos[r] for r in range(size)]
        reply = _pack({"ok": True, "table": table})
        for r in range(1, size):
            sock.send_multipart([idents[r], reply])
        return table
    except CommTimeoutError as exc:
        _fail(sock, list(idents.values()), str(exc))
        raise
    finally:
        sock.close()  # LINGER lets the replies go out


def _fail(sock, idents, error: str) -> None:
    payload = _pack({"ok": False, "error": error})
    for ident in idents:
        try:
            sock.send_multipart([ident, payload], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass


def _join(ctx: zmq.Context, address: str, rank: int, hello: dict, deadline: Deadline) -> List[dict]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_HELLO_BYTES * max(hello["size"], 1) + 4096)
    try:
        sock.connect(address)  # ZeroMQ keeps retrying until rank 0 listens
        sock.send(_pack(hello))
        while True:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise CommTimeoutError(
                    f"rank {rank}: no answer from the rendezvous at {address} (rank 0) within {deadline.timeout:g} s:"
                    f" rank 0 is not running or still waits for other ranks, or DPTRAIN_MASTER_ADDR/PORT are wrong "
                    f"or unreachable")
            if sock.poll(int(min(remaining, 0.2) * 1000) + 1):
                try:
                    msg = _unpack(sock.recv(), MAX_HELLO_BYTES * max(hello["size"], 1))
                except Exception as exc:  # noqa: BLE001
                    raise CommError(f"rank {rank}: malformed rendezvous reply from {address}: {exc}") from None
                if not isinstance(msg, dict):
                    raise CommError(f"rank {rank}: malformed rendezvous reply from {address}")
                if not msg.get("ok"):
                    raise CommError(f"rank {rank}: rendezvous failed: {msg.get('error', 'unknown error')}")
                table = msg.get("table")
                if not isinstance(table, list) or len(table) != hello["size"]:
                    raise CommError(f"rank {rank}: rendezvous reply has no valid rank table")
                return table
    finally:
        sock.close(linger=0)

