"""Worker-side client of the coordinator: register, heartbeat, checkpoint questions and reports.

Why: the worker runtime (and user scripts) should need one object and no
conditionals.  ``CoordinatorClient.from_env()`` reads what the launcher put in the
environment; when there is no coordinator (a plain ``python train.py``), every
method is a cheap no-op that answers like a coordinator would (e.g.
``should_checkpoint`` applies the interval rule locally), so single-process runs
need nothing.

Every request waits at most ``timeout`` seconds.  A heartbeat that times out is
retried at the next interval (after a warning); a ``register`` that times out
raises ``CoordinatorError`` with the address it tried.  The coordinator lives in
the launcher, so a launcher that was killed (``kill -9``, the OOM killer, a closed
login session) would leave its workers training on as orphans: ``start_heartbeat``
takes ``lost_after`` / ``on_lost`` and calls ``on_lost(reason)`` once the
coordinator has been silent that long, or sooner when the launcher's pid
(``DPTRAIN_LAUNCHER_PID`` on ``DPTRAIN_LAUNCHER_HOST``) is gone from this host.

Usage in a worker::

    client = CoordinatorClient.from_env()
    client.register()
    client.start_heartbeat()            # background thread, interval from the launcher
    ...
    client.update(step=step, epoch=epoch)
    if client.should_checkpoint(step, interval=cfg.checkpoint.interval):
        path = save_checkpoint(...)
        client.report_checkpoint(step, path, checkpoint_digest(path))
    client.report_done()
    client.close()
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time

import zmq

from . import protocol
from .protocol import MAX_MESSAGE_BYTES, ProtocolError

__all__ = ["CoordinatorClient", "CoordinatorError"]


def launcher_gone() -> str:
    """Why the launcher that started us is known to be dead ("" when alive or unknown: it is on
    another host, or the variables are not set)."""
    raw = os.environ.get("DPTRAIN_LAUNCHER_PID", "")
    if not raw.isdigit() or os.environ.get("DPTRAIN_LAUNCHER_HOST") != socket.gethostname():
        return ""
    pid = int(raw)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return f"the launcher (pid {pid}) has exited"
    except PermissionError:
        return ""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""
    return f"the launcher (pid {pid}) has exited" if state in ("Z", "X") else ""


#: frames of the worker's own entry point and of runpy say nothing about where a rank is
_ENTRY_FILES = (os.path.join(os.path.dirname(os.path.abspath(__file__)), "worker.py"), "runpy.py", "<frozen runpy>")


def main_thread_stack(limit: int = 8, width: int = 240) -> list[str]:
    """The innermost `limit` frames of the main thread, as traceback lines (two per frame).

    Sent with each heartbeat, so that when a rank hangs or lags, the launcher can say where
    (by the time anyone asks, the rank may already have been stopped)."""
    import traceback
    frame = sys._current_frames().get(threading.main_thread().ident)
    if frame is None:
        return []
    frames = [fs for fs in traceback.extract_stack(frame)
              if not fs.filename.endswith(_ENTRY_FILES)][-limit:]
    lines: list[str] = []
    for fs in frames:
        lines.append(f'File "{fs.filename}", line {fs.lineno}, in {fs.name}'[:width])
        if fs.line:
            lines.append("  " + fs.line.strip()[:width])
    return lines


class CoordinatorError(RuntimeError):
    """The coordinator refused a request or did not answer in time."""


def _env_int(name: str, default: int | None = None) -> int | None:
    v = os.environ.get(name, "")
    return int(v) if v.strip().lstrip("-").isdigit() else default


_process_client: "CoordinatorClient | None" = None


class CoordinatorClient:
    def __init__(self, addr: str | None = None, secret: str | bytes | None = None, rank: int | None = None, *,
                 attempt: int | None = None, world_size: int | None = None, timeout: float = 5.0,
                 max_message_bytes: int = MAX_MESSAGE_BYTES):
        self.addr = addr
        self.secret = secret
        self.rank = int(rank) if rank is not None else 0
        self.attempt = int(attempt) if attempt is not None else 0
        self.world_size = world_size
        self.timeout = float(timeout)
        self.max_message_bytes = max_message_bytes
        self.enabled = bool(addr) and bool(secret)
        self.registered = False
        self._registration: dict = {}
        self._done = False
        self.step: int | None = None
        self.epoch: int | None = None
        self.checkpoint_pending = False
        self.stop_pending = False       # the launcher asks for a checkpoint, then a clean stop
        self.honours_stop = False       # the script polls cluster.stop_requested(): it can stop cleanly
        self._seq = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ctx = None
        self._sock = None
        self._sampler = None
        self._warned_at = 0.0
        self._activity = None
        self.failures = 0

    @classmethod
    def from_env(cls, rank: int | None = None, world_size: int | None = None,
                 timeout: float = 5.0) -> "CoordinatorClient":
        """A client configured from DPTRAIN_COORD_ADDR / DPTRAIN_JOB_SECRET / DPTRAIN_RANK ...; no-op without them.

        `rank` / `world_size` override the environment (e.g. the communicator's values).
        Inside a dptrain worker running a job.script this is the worker's own client (one
        registration, one heartbeat thread per rank), so a script may use it as it likes.
        """
        shared = _process_client
        if shared is not None and shared.enabled and rank in (None, shared.rank):
            return shared
        return cls(os.environ.get("DPTRAIN_COORD_ADDR") or None, os.environ.get("DPTRAIN_JOB_SECRET") or None,
                   _env_int("DPTRAIN_RANK", 0) if rank is None else rank,
                   attempt=_env_int("DPTRAIN_RESTART", 0),
                   world_size=_env_int("DPTRAIN_WORLD_SIZE") if world_size is None else world_size,
                   timeout=timeout)

    # ------------------------------------------------------------------ transport
    def _socket(self):
        if self._sock is None:
            self._ctx = zmq.Context()
            s = self._ctx.socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.MAXMSGSIZE, 4 * self.max_message_bytes)
            s.connect(self.addr)
            self._sock = s
        return self._sock

    def request(self, kind: str, body: dict | None = None, timeout: float | None = None) -> dict:
        """Send one message and wait for its reply (matched by sequence number); returns the reply body."""
        if not self.enabled:
            return {}
        timeout = self.timeout if timeout is None else timeout
        with self._lock:
            self._seq += 1
            seq = self._seq
            frames = protocol.encode(self.secret, protocol.make_request(kind, self.rank, self.attempt, seq, body),
                                     self.max_message_bytes)
            sock = self._socket()
            try:
                sock.send_multipart(frames, zmq.NOBLOCK)
            except zmq.Again:
                raise CoordinatorError(f"cannot send to the coordinator at {self.addr}: send queue full") from None
            deadline = time.monotonic() + timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not sock.poll(int(left * 1000), zmq.POLLIN):
                    raise CoordinatorError(f"the coordinator at {self.addr} did not answer {kind!r} within "
                                           f"{timeout:g} s (is the launcher still running? check "
                                           f"DPTRAIN_COORD_ADDR)")
                reply_frames = sock.recv_multipart()
                try:
                    reply = protocol.decode(self.secret, reply_frames, self.max_message_bytes, reply=True)
                except ProtocolError as e:
                    raise CoordinatorError(f"reply from {self.addr} failed verification: {e}") from None
                if reply["re"] not in (seq, -1):
                    continue  # a late answer to an earlier request that timed out
                if not reply["ok"]:
                    raise CoordinatorError(f"the coordinator refused {kind!r} from rank {self.rank}: "
                                           f"{reply['error']}")
                return reply["body"]

    # ------------------------------------------------------------------ API
    def register(self, **info) -> dict:
        """Announce this rank (host, pid, local rank, GPU); returns the coordinator's settings."""
        if not self.enabled:
            return {}
        body = {"host": socket.gethostname(), "pid": os.getpid(),
                "world_size": int(self.world_size if self.world_size is not None else info.pop("world_size", 1))}
        for key in ("local_rank", "node_rank", "gpu"):
            v = info.get(key, _env_int("DPTRAIN_" + key.upper()))
            if v is not None:
                body[key] = int(v)
        if info.get("backend") or os.environ.get("DPTRAIN_COMM_BACKEND"):
            body["backend"] = str(info.get("backend") or os.environ["DPTRAIN_COMM_BACKEND"])
        if self.registered:
            return self._registration
        reply = self.request("register", body)
        self.registered = True
        self._registration = reply
        return reply

    def share(self) -> "CoordinatorClient":
        """Make this the client `from_env()` returns in this process (the worker's, for its script)."""
        global _process_client
        _process_client = self
        return self

    def update(self, step: int | None = None, epoch: int | None = None) -> None:
        """Progress reported with the next heartbeat (cheap; call every step)."""
        if step is not None:
            self.step = int(step)
        if epoch is not None:
            self.epoch = int(epoch)

    def watch(self, communicator) -> None:
        """Send `communicator.activity()` and the main thread's stack with every heartbeat: the
        launcher uses them to name the rank that never joined a collective the others timed out
        in, and the line it was at."""
        self._activity = getattr(communicator, "activity", None)

    def report_timeout(self, err) -> None:
        """Best effort, before exiting: this rank timed out inside a collective (a CommTimeoutError
        with its facts); the launcher gathers these to find the rank everybody waited for."""
        if not self.enabled or getattr(err, "seq", None) is None:
            return
        body = {"message": str(err)[-2000:], "seq": int(err.seq), "collective": str(err.collective or ""),
                "timeout_s": float(err.timeout or 0.0), "waiting_for": [int(r) for r in err.waiting_for][:64]}
        try:
            self.request("timeout", body, timeout=min(self.timeout, 2.0))
        except (CoordinatorError, ProtocolError, zmq.ZMQError):
            pass

    def heartbeat(self) -> dict:
        if not self.enabled:
            return {}
        if self._sampler is None:
            from .resources import ResourceSampler
            self._sampler = ResourceSampler()
        body = {"step": self.step, "epoch": self.epoch, "resources": self._sampler.sample()}
        if self.honours_stop:
            body["honours_stop"] = True
        if self._activity is not None:
            try:
                body["comm"] = self._activity()
                body["where"] = main_thread_stack()
            except Exception:  # noqa: BLE001 - a diagnostic must never stop the heartbeat
                pass
        reply = self.request("heartbeat", body)
        self.checkpoint_pending = bool(reply.get("checkpoint_pending"))
        self.stop_pending = bool(reply.get("stop_pending"))
        return reply

    def start_heartbeat(self, interval: float | None = None, lost_after: float | None = None,
                        on_lost=None) -> None:
        """Send heartbeats from a daemon thread every `interval` s (default: $DPTRAIN_HEARTBEAT_INTERVAL or 2).

        on_lost(reason) is called (once, on that thread) when no heartbeat got an answer for
        `lost_after` seconds, or when a heartbeat failed and the launcher process is gone."""
        if not self.enabled or self._thread is not None:
            return
        if interval is None:
            try:
                interval = float(os.environ.get("DPTRAIN_HEARTBEAT_INTERVAL", "2"))
            except ValueError:
                interval = 2.0
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, args=(max(0.05, interval), lost_after, on_lost),
                                        name="dptrain-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self, interval: float, lost_after: float | None = None, on_lost=None) -> None:
        last_ok = time.monotonic()
        while not self._stop.is_set():
            try:
                self.heartbeat()
                self.failures = 0
                last_ok = time.monotonic()
            except (CoordinatorError, ProtocolError, zmq.ZMQError) as e:
                self.failures += 1
                now = time.time()
                if now - self._warned_at > 30:
                    self._warned_at = now
                    print(f"[dptrain rank {self.rank}] warning: heartbeat failed: {e}", file=sys.stderr, flush=True)
                if on_lost is not None and not self._stop.is_set():
                    silent = time.monotonic() - last_ok
                    gone = launcher_gone()
                    if gone or (lost_after and silent > lost_after):
                        on_lost(gone or f"the coordinator at {self.addr} has not answered for {silent:.0f} s "
                                        f"(fault_tolerance.heartbeat_timeout {lost_after:g} s)")
                        return
            self._stop.wait(interval)

    def stop_heartbeat(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def should_checkpoint(self, step: int, final: bool = False, interval: int | None = None) -> bool:
        """Ask the coordinator whether to checkpoint after `step`.

        Only one rank should ask (rank 0) and broadcast the answer: a one-shot checkpoint
        request is granted to the first asker.  Without a coordinator the local rule is
        used: at the end, or every `interval` steps.
        """
        if not self.enabled:
            return bool(final or (interval and step > 0 and step % interval == 0))
        return bool(self.request("checkpoint_query", {"step": int(step), "final": bool(final)}).get("checkpoint"))

    def report_checkpoint(self, step: int, path: str, sha256: str | None = None, epoch: int | None = None) -> None:
        """Tell the coordinator a checkpoint is complete (it records it in coordinator.json).

        `sha256` defaults to the arrays checksum recorded in the checkpoint's meta.json.
        """
        if not self.enabled:
            return
        if sha256 is None:
            from .checkpoint import CheckpointError, checkpoint_digest
            try:
                sha256 = checkpoint_digest(str(path))
            except CheckpointError:
                sha256 = ""
        body = {"step": int(step), "path": str(path), "sha256": str(sha256)}
        if epoch is not None:
            body["epoch"] = int(epoch)
        self.request("checkpoint_done", body)

    def report_done(self, status: str = "ok", summary: dict | None = None) -> None:
        """This rank finished normally (so its silence afterwards is not a failure)."""
        if self._done:
            return
        if self.enabled:       # a last resource sample: short runs end before the second heartbeat
            try:
                self.heartbeat()
            except CoordinatorError:
                pass
        body: dict = {"status": status}
        if summary:
            body["summary"] = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
        self.stop_heartbeat()
        self.request("done", body)
        self._done = True

    def report_error(self, message: str, traceback: str | None = None) -> None:
        """Best effort: tell the coordinator why this rank is about to fail (never raises)."""
        body = {"message": str(message)[-4000:]}
        if traceback:
            body["traceback"] = traceback[-16000:]
        try:
            self.request("error", body, timeout=min(self.timeout, 2.0))
        except (CoordinatorError, ProtocolError, zmq.ZMQError):
            pass

    def close(self) -> None:
        self.stop_heartbeat()
        with self._lock:
            if self._sock is not None:
                self._sock.close(0)
                self._sock = None
            if self._ctx is not None:
                self._ctx.term()
                self._ctx = None

    def __enter__(self) -> "CoordinatorClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
