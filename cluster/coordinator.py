"""The job coordinator: one ZeroMQ ROUTER socket that every worker talks to.

Why: the launcher sees its own child processes die, but not a rank on another node
that hangs or loses its network, and nobody else knows when to checkpoint.  The
coordinator is the one place that knows the whole job:

* registration of each rank (host, pid, GPU) for the current attempt;
* heartbeats with resource reports (CPU %, RSS, GPU memory), appended to
  ``RUN_DIR/resources.jsonl`` and shown by ``dptrain status``;
* failure detection: a registered rank silent for ``heartbeat_timeout`` seconds, or
  ranks that never register within ``startup_timeout``, become events the launcher
  reads with ``get_event()`` (it then stops and maybe restarts the group);
* checkpoint orchestration: ranks ask ``checkpoint_query(step)``; the answer is yes
  every ``checkpoint_interval`` steps, at the end, and once after ``request_checkpoint()``;
  completed checkpoints are recorded (``checkpoint_done``) in ``RUN_DIR/coordinator.json``.

Every message is authenticated (HMAC of the job secret), size-limited and schema
checked by ``cluster.protocol``; refused messages are counted, never crash the loop.

It runs as a thread of the launcher (``Coordinator(...).start()``) or as its own
process (``python -m cluster.coordinator``, used by the generated launch scripts).
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass, field

import zmq

from . import protocol
from .protocol import MAX_MESSAGE_BYTES, ProtocolError
from .rundir import atomic_write_json

__all__ = ["Coordinator", "Event", "WorkerInfo", "main"]


@dataclass
class Event:
    """Something the launcher must act on: kind is dead | failed | timeout | startup_timeout | done |
    registered | warning."""
    kind: str
    rank: int | None
    detail: str
    attempt: int
    time: float = field(default_factory=time.time)


def _peer_address(frame) -> str | None:
    """The TCP peer address ZeroMQ recorded for a received frame (None over other transports)."""
    try:
        return frame.get("Peer-Address") or None
    except (zmq.ZMQError, AttributeError, KeyError, ValueError):
        return None


@dataclass
class WorkerInfo:
    rank: int
    host: str
    pid: int
    registered: float
    last_seen: float
    local_rank: int | None = None
    node_rank: int | None = None
    gpu: int | None = None
    step: int | None = None
    epoch: int | None = None
    resources: dict = field(default_factory=dict)
    state: str = "running"        # running | done | dead | failed
    last_seq: int = -1
    identity: bytes = b""
    address: str | None = None    # IP the worker connected from (hostnames can repeat: containers)
    comm: dict | None = None      # its communicator's activity() at the last heartbeat
    comm_at: float = 0.0          # when that heartbeat arrived
    where: list = field(default_factory=list)   # its main thread's innermost frames then
    timed_out: dict | None = None  # what it reported when a collective timed out on it
    honours_stop: bool = False     # its script polls cluster.stop_requested() (stops cleanly when asked)



class CoordinatorStartError(RuntimeError):
    """The coordinator could not listen on its address (nothing was started)."""

    @classmethod
    def cannot_bind(cls, bind: str, why) -> "CoordinatorStartError":
        return cls(f"the coordinator cannot listen on {bind}: {why}; another run or program probably holds "
                   f"that port: set cluster.coordinator.port to a free port (0 picks one)")

class Coordinator:
    def __init__(self, secret: str | bytes, world_size: int, *, run_dir: str | None = None,
                 bind: str = "tcp://127.0.0.1:0", advertise_host: str | None = None,
                 heartbeat_timeout: float = 30.0, startup_timeout: float = 120.0,
                 checkpoint_interval: int = 0, max_message_bytes: int = MAX_MESSAGE_BYTES,
                 poll_interval: float = 0.05, require_registration: bool = True):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.secret = secret
        self.world_size = int(world_size)
        self.run_dir = run_dir
        self.bind_addr = bind
        self.advertise_host = advertise_host
        self.heartbeat_timeout = float(heartbeat_timeout)
        self.startup_timeout = float(startup_timeout)
        self.checkpoint_interval = int(checkpoint_interval)
        self.max_message_bytes = int(max_message_bytes)
        self.poll_interval = poll_interval
        # False for user scripts that may never talk to us: then only a partial registration
        # (some ranks registered, others not) counts as a startup failure
        self.require_registration = require_registration
        self._lock = threading.RLock()
        self._events: "queue.Queue[Event]" = queue.Queue()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx: zmq.Context | None = None
        self._error: BaseException | None = None
        self.address: str | None = None       # what workers connect to
        self.port: int | None = None
        self.attempt = 0
        self.attempt_started = time.time()
        self.workers: dict[int, WorkerInfo] = {}
        self.checkpoints: list[dict] = []
        self.rejected: dict[str, int] = {}
        self.messages = 0
        self._peer: str | None = None   # address of the message being handled
        self.low_memory_fraction = 0.05      # warn below this share of free host memory
        self._memory_warned: dict[str, float] = {}
        self._checkpoint_request: int | None = None   # checkpoint at the first step >= this
        self._stop_request = False    # checkpoint, then stop (the launcher got SIGTERM)
        self._startup_reported = False
        self._dirty = True
        self._last_state_write = 0.0
        self._last_reject_log = 0.0

    # ------------------------------------------------------------------ lifecycle
    def start(self, timeout: float = 10.0) -> "Coordinator":
        """Start serving on a thread; raises CoordinatorStartError when the address cannot be bound."""
        self._thread = threading.Thread(target=self._run, name="dptrain-coordinator", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"coordinator did not start within {timeout} s")
        if self._error:
            raise CoordinatorStartError.cannot_bind(self.bind_addr, self._error) from None
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._write_state(force=True)

    def __enter__(self) -> "Coordinator":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def begin_attempt(self, attempt: int, world_size: int | None = None) -> None:
        """Forget the previous group's workers; messages of older attempts are refused from now on.

        world_size: the new group's size after an elastic restart (default: unchanged)."""
        with self._lock:
            self.attempt = int(attempt)
            if world_size is not None:
                self.world_size = int(world_size)
            self.attempt_started = time.time()
            self.workers.clear()
            self._startup_reported = False
            self._checkpoint_request = None
            self._stop_request = False
            self._dirty = True
        self._drain_events()

    def request_checkpoint(self, at_step: int | None = None) -> None:
        """Make the next checkpoint query at a step >= `at_step` (default: the next one) answer yes."""
        with self._lock:
            self._checkpoint_request = at_step if at_step is not None else 0

    def request_stop(self) -> None:
        """Ask the workers to save a checkpoint and stop (heartbeat replies carry `stop_pending`; the
        built-in training loop acts on it at its next metrics step)."""
        with self._lock:
            self._stop_request = True

    def get_event(self, timeout: float | None = 0.0) -> Event | None:
        try:
            return self._events.get(timeout=timeout) if timeout else self._events.get_nowait()
        except queue.Empty:
            return None

    def _drain_events(self) -> None:
        while self.get_event() is not None:
            pass

    def all_done(self) -> bool:
        with self._lock:
            return len(self.workers) == self.world_size and all(w.state == "done" for w in self.workers.values())

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        ctx = self._ctx = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # transport-level guard: a peer sending more than this is disconnected by libzmq itself
        sock.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_message_bytes)
        sock.setsockopt(zmq.RCVHWM, 10000)
        try:
            if self.bind_addr.endswith(":0"):
                port = sock.bind_to_random_port(self.bind_addr[:-2])
            else:
                sock.bind(self.bind_addr)
                port = int(sock.getsockopt(zmq.LAST_ENDPOINT).decode().rsplit(":", 1)[1])
        except zmq.ZMQError as e:
            self._error = e
            sock.close(0)
            ctx.term()
            self._ready.set()
            return
        self.port = port
        host = self.advertise_host or _connect_host(self.bind_addr)
        self.address = f"tcp://{host}:{port}"
        self._ready.set()
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                events = dict(poller.poll(int(self.poll_interval * 1000)))
                if sock in events:
                    for _ in range(1000):   # drain what is queued, then look at the clocks
                        try:
                            raw = sock.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._peer = _peer_address(raw[-1])
                        self._handle(sock, [f.bytes for f in raw])
                self._check_liveness()
                self._write_state()
        finally:
            sock.close(0)
            ctx.term()

    def _handle(self, sock, frames: list[bytes]) -> None:
        identity, body = frames[0], frames[1:]
        self.messages += 1
        try:
            msg = protocol.decode(self.secret, body, self.max_message_bytes)
        except ProtocolError as e:
            self._reject(sock, identity, e.reason, str(e), re_seq=-1)
            return
        rank, kind, seq = msg["rank"], msg["type"], msg["seq"]
        with self._lock:
            if msg["attempt"] != self.attempt:
                self._reject(sock, identity, "stale_attempt",
                             f"message of attempt {msg['attempt']}, the job is at attempt {self.attempt}", seq)
                return
            if rank >= self.world_size:
                self._reject(sock, identity, "bad_rank", f"rank {rank} >= world size {self.world_size}", seq)
                return
            w = self.workers.get(rank)
            if kind != "register":
                if w is None:
                    self._reject(sock, identity, "not_registered", f"rank {rank} must register first", seq)
                    return
                if seq <= w.last_seq:
                    self._reject(sock, identity, "replay", f"sequence number {seq} <= {w.last_seq}", seq)
                    return
            try:
                reply = getattr(self, "_on_" + kind)(msg, identity)
            except _Refused as e:
                self._reject(sock, identity, e.reason, str(e), seq)
                return
            w = self.workers.get(rank)
            if w is not None:
                w.last_seq = seq
                w.last_seen = time.time()
            self._dirty = True
        self._send(sock, identity, protocol.make_reply(seq, True, None, reply))

    def _send(self, sock, identity: bytes, reply: dict) -> None:
        try:
            sock.send_multipart([identity] + protocol.encode(self.secret, reply, self.max_message_bytes),
                                zmq.NOBLOCK)
        except (zmq.ZMQError, ProtocolError):
            pass  # the peer is gone or its queue is full; it will time out and retry

    def _reject(self, sock, identity: bytes, reason: str, detail: str, re_seq: int) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1
        self._dirty = True
        now = time.time()
        if now - self._last_reject_log > 5.0:
            self._last_reject_log = now
            print(f"[coordinator] refused a message: {detail}", file=sys.stderr, flush=True)
        self._send(sock, identity, protocol.make_reply(re_seq, False, f"{reason}: {detail}"))

    # ------------------------------------------------------------------ handlers
    def _on_register(self, msg: dict, identity: bytes) -> dict:
        b, rank = msg["body"], msg["rank"]
        if b["world_size"] != self.world_size:
            raise _Refused("bad_world_size", f"rank {rank} thinks the world size is {b['world_size']}, "
                                             f"the coordinator has {self.world_size}")
        old = self.workers.get(rank)
        if old is not None and old.state == "running" and old.pid != b["pid"]:
            raise _Refused("duplicate_rank", f"rank {rank} is already registered by pid {old.pid} on {old.host}")
        now = time.time()
        self.workers[rank] = WorkerInfo(rank=rank, host=b["host"], pid=b["pid"], registered=now, last_seen=now,
                                        local_rank=b.get("local_rank"), node_rank=b.get("node_rank"),
                                        gpu=b.get("gpu"), identity=identity, address=self._peer,
                                        last_seq=old.last_seq if old is not None and old.pid == b["pid"] else -1)
        self._events.put(Event("registered", rank, f"{b['host']} pid {b['pid']}", self.attempt))
        return {"attempt": self.attempt, "world_size": self.world_size,
                "checkpoint_interval": self.checkpoint_interval, "heartbeat_timeout": self.heartbeat_timeout}

    def _on_heartbeat(self, msg: dict, identity: bytes) -> dict:
        w = self.workers[msg["rank"]]
        b = msg["body"]
        if b.get("step") is not None:
            w.step = b["step"]
        if b.get("epoch") is not None:
            w.epoch = b["epoch"]
        res = b.get("resources") or {}
        w.resources = {k: v for k, v in res.items() if isinstance(v, (int, float, str, bool)) or v is None}
        self._watch_memory(w)
        if b.get("honours_stop"):
            w.honours_stop = True
        if isinstance(b.get("comm"), dict):
            w.comm = {k: v for k, v in b["comm"].items()
                      if k in ("completed", "seq", "kind", "since") and isinstance(v, (int, float, str))}
            w.comm_at = time.time()
            w.where = [str(x)[:300] for x in (b.get("where") or [])[:32] if isinstance(x, str)]
        if self.run_dir:
            rec = {"time": round(time.time(), 3), "rank": w.rank, "attempt": self.attempt, "step": w.step,
                   "epoch": w.epoch, **w.resources}
            try:
                with open(os.path.join(self.run_dir, "resources.jsonl"), "a", encoding="utf-8") as f:
                    f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            except OSError:
                pass
        return {"checkpoint_pending": self._checkpoint_request is not None, "stop_pending": self._stop_request}

    def _watch_memory(self, w: WorkerInfo) -> None:
        """Warn (once a minute per host) when a host runs out of memory, naming its hungriest rank:
        the kernel's OOM killer would otherwise end the run with nothing but a SIGKILL."""
        r = w.resources
        avail, total = r.get("host_mem_available_bytes"), r.get("host_mem_total_bytes")
        if not isinstance(avail, int) or not isinstance(total, int) or total <= 0:
            return
        if avail / total >= self.low_memory_fraction:
            return
        now = time.time()
        host = w.address or w.host
        if now - self._memory_warned.get(host, 0.0) < 60.0:
            return
        self._memory_warned[host] = now
        same = [v for v in self.workers.values() if (v.address or v.host) == host]
        top = max(same, key=lambda v: v.resources.get("rss_bytes") or 0)
        mb = 1 << 20
        self._events.put(Event(
            "warning", top.rank,
            f"host {w.host} has {avail // mb} MB of {total // mb} MB memory left; rank {top.rank} uses the most "
            f"({(top.resources.get('rss_bytes') or 0) // mb} MB). Lower job.global_batch_size or the workers per "
            f"node before the kernel kills one", self.attempt))

    def checkpoint_due(self, step: int, final: bool = False) -> bool:
        """The checkpoint rule: every `checkpoint_interval` steps, at the end, or once on request."""
        with self._lock:
            if final:
                return True
            if self._checkpoint_request is not None and step >= self._checkpoint_request:
                self._checkpoint_request = None
                return True
            return self.checkpoint_interval > 0 and step > 0 and step % self.checkpoint_interval == 0

    def _on_checkpoint_query(self, msg: dict, identity: bytes) -> dict:
        b = msg["body"]
        return {"checkpoint": self.checkpoint_due(b["step"], bool(b.get("final", False)))}

    def _on_checkpoint_done(self, msg: dict, identity: bytes) -> dict:
        b = msg["body"]
        rec = {"step": b["step"], "epoch": b.get("epoch"), "path": b["path"], "sha256": b["sha256"],
               "rank": msg["rank"], "attempt": self.attempt, "time": round(time.time(), 3)}
        if self._checkpoint_request is not None and b["step"] >= self._checkpoint_request:
            self._checkpoint_request = None     # a requested checkpoint is taken once
        self.checkpoints = [c for c in self.checkpoints if c["path"] != b["path"]] + [rec]
        self.checkpoints = self.checkpoints[-50:]
        self._write_state(force=True)
        return {"recorded": True}

    def _on_done(self, msg: dict, identity: bytes) -> dict:
        w = self.workers[msg["rank"]]
        w.state = "done"
        self._events.put(Event("done", w.rank, msg["body"].get("status", "ok"), self.attempt))
        return {}

    def _on_error(self, msg: dict, identity: bytes) -> dict:
        w = self.workers[msg["rank"]]
        w.state = "failed"
        self._events.put(Event("failed", w.rank, msg["body"]["message"][-2000:], self.attempt))
        return {}

    def _on_timeout(self, msg: dict, identity: bytes) -> dict:
        w = self.workers[msg["rank"]]
        b = msg["body"]
        w.state = "failed"
        w.timed_out = {"seq": b["seq"], "collective": b["collective"], "timeout_s": float(b["timeout_s"]),
                       "waiting_for": [r for r in b.get("waiting_for", []) if isinstance(r, int)][:64],
                       "time": time.time()}
        self._events.put(Event("timeout", w.rank, b["message"][-2000:], self.attempt))
        return {}

    def all_honour_stop(self) -> bool:
        """Every rank of this attempt has registered and said it answers stop requests."""
        with self._lock:
            return len(self.workers) == self.world_size and all(w.honours_stop for w in self.workers.values())

    def collective_view(self) -> dict[int, dict]:
        """Per registered rank: state, the communicator activity and stack of its last heartbeat
        (with when it arrived) and its timeout report, if any.  The launcher reads this when a
        collective times out to find the rank that never joined it."""
        with self._lock:
            return {r: {"state": w.state, "host": w.host, "pid": w.pid, "comm": dict(w.comm) if w.comm else None,
                        "comm_at": w.comm_at, "where": list(w.where),
                        "timed_out": dict(w.timed_out) if w.timed_out else None}
                    for r, w in self.workers.items()}

    # ------------------------------------------------------------------ liveness
    def _check_liveness(self) -> None:
        now = time.time()
        with self._lock:
            for w in self.workers.values():
                if w.state == "running" and now - w.last_seen > self.heartbeat_timeout:
                    w.state = "dead"
                    self._dirty = True
                    self._events.put(Event("dead", w.rank,
                                           f"no heartbeat from rank {w.rank} (pid {w.pid} on {w.host}) for "
                                           f"{now - w.last_seen:.1f} s (timeout {self.heartbeat_timeout:g} s)",
                                           self.attempt))
            missing = [r for r in range(self.world_size) if r not in self.workers]
            if missing and not self._startup_reported and now - self.attempt_started > self.startup_timeout \
                    and (self.require_registration or self.workers):
                self._startup_reported = True
                self._events.put(Event("startup_timeout", missing[0],
                                       f"ranks {missing} did not register within {self.startup_timeout:g} s",
                                       self.attempt))

    # ------------------------------------------------------------------ state
    def silent_ranks(self, older_than: float) -> list[tuple[int, float]]:
        """(rank, seconds since its last message) of running ranks silent for longer than `older_than`."""
        now = time.time()
        with self._lock:
            return sorted(((w.rank, now - w.last_seen) for w in self.workers.values()
                           if w.state == "running" and now - w.last_seen > older_than), key=lambda t: -t[1])

    def missing_ranks(self) -> list[int]:
        """Ranks of this attempt that have not registered (yet)."""
        with self._lock:
            return [r for r in range(self.world_size) if r not in self.workers]

    def state(self) -> dict:
        with self._lock:
            return {
                "address": self.address, "world_size": self.world_size, "attempt": self.attempt,
                "heartbeat_timeout": self.heartbeat_timeout, "checkpoint_interval": self.checkpoint_interval,
                "updated": round(time.time(), 3), "messages": self.messages, "rejected": dict(self.rejected),
                "workers": {str(r): {"host": w.host, "address": w.address, "pid": w.pid, "state": w.state,
                                     "step": w.step,
                                     "epoch": w.epoch, "gpu": w.gpu, "local_rank": w.local_rank,
                                     "node_rank": w.node_rank, "last_seen": round(w.last_seen, 3),
                                     "resources": w.resources, "comm": w.comm,
                                     "where": w.where[-2:]}
                            for r, w in sorted(self.workers.items())},
                "checkpoints": list(self.checkpoints),
                "all_honour_stop": len(self.workers) == self.world_size
                and all(w.honours_stop for w in self.workers.values()),
            }

    def _write_state(self, force: bool = False) -> None:
        if not self.run_dir:
            return
        now = time.time()
        if not force and (not self._dirty or now - self._last_state_write < 1.0):
            return
        self._dirty = False
        self._last_state_write = now
        try:
            atomic_write_json(os.path.join(self.run_dir, "coordinator.json"), self.state())
        except OSError:
            pass


class _Refused(Exception):
    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


def _connect_host(bind: str) -> str:
    host = bind.split("://", 1)[-1].rsplit(":", 1)[0]
    if host in ("*", "0.0.0.0", ""):
        return socket.getfqdn()
    return host


# ---------------------------------------------------------------------- standalone process
def main(argv: list[str] | None = None) -> int:
    """Run a coordinator as its own process (used by launch scripts written by `dptrain script`).

    The secret comes from $DPTRAIN_JOB_SECRET (never the command line, which `ps` shows).
    On a failure event it sends SIGTERM to the pid in --kill-pidfile (the mpiexec), so a
    hung or lost rank stops the job instead of blocking it.  SIGUSR1 asks the workers for a
    checkpoint, SIGUSR2 for a checkpoint and a clean stop (the script's SIGTERM / time limit).
    """
    p = argparse.ArgumentParser(prog="python -m cluster.coordinator", description=main.__doc__)
    p.add_argument("--world-size", type=int, required=True)
    p.add_argument("--bind", default="tcp://127.0.0.1:0")
    p.add_argument("--advertise-host", default=None)
    p.add_argument("--run-dir", default=None)
    p.add_argument("--heartbeat-timeout", type=float, default=30.0)
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--checkpoint-interval", type=int, default=0)
    p.add_argument("--attempt", type=int, default=0)
    p.add_argument("--addr-file", default=None, help="write the connect address here once listening")
    p.add_argument("--kill-pidfile", default=None, help="SIGTERM this pid when a worker is declared dead")
    p.add_argument("--optional-registration", action="store_true",
                   help="workers may never register (user scripts): no startup timeout unless some did")
    args = p.parse_args(argv)
    secret = os.environ.get("DPTRAIN_JOB_SECRET")
    if not secret:
        print("coordinator: DPTRAIN_JOB_SECRET is not set; export a random secret first", file=sys.stderr)
        return 2
    coord = Coordinator(secret, args.world_size, run_dir=args.run_dir, bind=args.bind,
                        advertise_host=args.advertise_host, heartbeat_timeout=args.heartbeat_timeout,
                        startup_timeout=args.startup_timeout, checkpoint_interval=args.checkpoint_interval,
                        require_registration=not args.optional_registration)
    coord.begin_attempt(args.attempt)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # the launch script passes its own signals on: USR1 = checkpoint now, USR2 = checkpoint and stop
    signal.signal(signal.SIGUSR1, lambda *_: coord.request_checkpoint())
    signal.signal(signal.SIGUSR2, lambda *_: coord.request_stop())
    try:
        coord.start()
    except RuntimeError as e:
        print(f"coordinator: {e}", file=sys.stderr)
        return 1
    if args.addr_file:
        tmp = args.addr_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(coord.address + "\n")
        os.replace(tmp, args.addr_file)
    print(f"[coordinator] listening on {coord.address} for {args.world_size} ranks", file=sys.stderr, flush=True)
    diagnosed = False
    while not stop.is_set():
        ev = coord.get_event(timeout=0.2)
        if ev is None:
            continue
        if ev.kind in ("dead", "failed", "startup_timeout"):
            print(f"[coordinator] {ev.kind}: {ev.detail}", file=sys.stderr, flush=True)
            if args.kill_pidfile and ev.kind != "failed":
                _kill_from_pidfile(args.kill_pidfile)
        elif ev.kind == "timeout" and not diagnosed:
            diagnosed = True
            print(f"[coordinator] timeout: {ev.detail}", file=sys.stderr, flush=True)
            stop.wait(2.5)          # the other ranks' reports and heartbeats after it
            _print_laggards(coord, ev.rank)
        elif ev.kind == "done" and coord.all_done():
            print("[coordinator] all ranks finished", file=sys.stderr, flush=True)
    coord.stop()
    return 0


def _print_laggards(coord: Coordinator, rank: int | None) -> None:
    """The launch script's view of a collective timeout: the rank that never joined it (stall.py)."""
    from .stall import find_laggards
    view = coord.collective_view()
    report = (view.get(rank) or {}).get("timed_out") if rank is not None else None
    lag = find_laggards(view, report) if report else None
    if lag is None:
        return
    print(f"[coordinator] rank {lag.ranks[0]}: {lag.reason()}", file=sys.stderr, flush=True)
    if lag.state != "done":
        print(f"[coordinator] {lag.where_header()}", file=sys.stderr, flush=True)
        for line in lag.where:
            print(f"    {line}", file=sys.stderr, flush=True)
        print(f"[coordinator] {lag.advice()}", file=sys.stderr, flush=True)


def _kill_from_pidfile(path: str) -> None:
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
