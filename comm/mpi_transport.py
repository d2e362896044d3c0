"""MPI transport (mpi4py, buffer API only) and the native MPI collectives.

Only the uppercase buffer methods are used (Isend/Irecv/Iallreduce/...): the
lowercase ones pickle.  Every wait is a Test loop with a deadline instead of a
blocking MPI_Wait, so a hung or dead peer becomes a CommTimeoutError (or a
PeerFailureError when the peer's pid is gone) rather than a hang.  The loop spins
with sched_yield for a short while (latency) and then sleeps with backoff, so
oversubscribed ranks (4 ranks on 2 cores) do not starve each other.

`mpi4py.MPI` is imported only when this backend is chosen, because importing it
initialises MPI.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence

import numpy as np

from .env import env_int
from .errors import CommError, CommTimeoutError
from .transport import Deadline, Request, ScratchPool, Transport, describe_timeout

_CHECK_INTERVAL_S = 0.05


def import_mpi():
    """Import mpi4py.MPI (initialising MPI) asking for MPI_THREAD_SERIALIZED when we are first.

    Collectives run on the caller's thread or on the comm progress thread, one at a
    time (a lock serialises them), which is exactly MPI_THREAD_SERIALIZED.
    """
    if "mpi4py.MPI" not in sys.modules:
        import mpi4py

        level = os.environ.get("DPTRAIN_MPI_THREAD_LEVEL", "serialized")
        if level not in ("single", "funneled", "serialized", "multiple"):
            raise CommError(f"DPTRAIN_MPI_THREAD_LEVEL={level!r}: use serialized or multiple")
        mpi4py.rc.thread_level = level
    try:
        from mpi4py import MPI
    except ImportError as exc:  # pragma: no cover - mpi4py is a dependency
        raise CommError(f"the MPI backend needs mpi4py and an MPI library ({exc}); install them "
                        f"(pip install mpi4py mpich) or use backend='zmq'") from None
    return MPI


def _truthy(raw: str) -> bool:
    return raw.strip().lower() not in ("", "0", "false", "no", "off")


def _cuda_aware(MPI) -> bool:
    """Whether device (cupy) buffers may be handed to MPI directly.

    MPI has no portable query for this, so we only say yes when told: our own
    DPTRAIN_COMM_CUDA_AWARE, Open MPI's OMPI_MCA_opal_cuda_support, or MPICH's
    MPIR_CVAR_ENABLE_GPU=1 with a CUDA build.  Otherwise cupy arrays go through host
    memory, which is always correct.
    """
    forced = os.environ.get("DPTRAIN_COMM_CUDA_AWARE")
    if forced is not None:
        return _truthy(forced)
    if "OMPI_MCA_opal_cuda_support" in os.environ:
        return _truthy(os.environ["OMPI_MCA_opal_cuda_support"])
    if _truthy(os.environ.get("MPIR_CVAR_ENABLE_GPU", "0")):
        try:
            version = MPI.Get_library_version().lower()
        except Exception:  # noqa: BLE001
            return False
        return "--with-cuda" in version or "cuda" in version.replace("--without-cuda", "")
    return False


_MPI_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}


def _abort_on_uncaught(transport: "MpiTransport") -> None:
    """An uncaught exception must not end in MPI_Finalize, which waits for the other ranks (still
    computing, or blocked waiting for this one): they would only fail at their timeout, blaming
    us for hanging.  With the abort status set, mpi4py aborts the job at exit instead (what
    `python -m mpi4py script.py` does)."""
    previous = sys.excepthook
    if getattr(previous, "_dptrain_mpi", False):
        return

    def hook(exc_type, exc, tb):
        if not issubclass(exc_type, KeyboardInterrupt):
            transport.mark_fatal()
        previous(exc_type, exc, tb)

    hook._dptrain_mpi = True
    sys.excepthook = hook



class MpiTransport(Transport):
    name = "mpi"
    supports_native = True
    strict_send_buffers = True

    def __init__(self, timeout: float):
        MPI = import_mpi()
        self.MPI = MPI
        self.thread_level = MPI.Query_thread()
        # True when MPI may be called from the progress thread (else async ops run inline).
        self.threads_ok = self.thread_level >= MPI.THREAD_SERIALIZED
        # Polling policy: pure spinning first (lowest latency), then spinning with sched_yield
        # (lets an oversubscribed peer run), then sleeping with backoff.
        self.busy_s = env_int("DPTRAIN_COMM_BUSY_US", 100) / 1e6
        self.spin_s = env_int("DPTRAIN_COMM_SPIN_US", 2000) / 1e6
        self.comm = None
        self.rank = MPI.COMM_WORLD.Get_rank()
        self.size = MPI.COMM_WORLD.Get_size()
        super().__init__()
        # Our own communicator, so user MPI traffic can never match our messages.  Idup, not Dup:
        # a rank that never calls init must give a timeout here, not a hang.
        comm, req = MPI.COMM_WORLD.Idup()
        self._wait_handles([req], Deadline(timeout),
                           "comm.init (duplicating MPI_COMM_WORLD)", native=True)
        self.comm = comm
        self.pool = ScratchPool()
        self._dev_pool: list = []
        self.cuda_aware = _cuda_aware(MPI)
        self.fatal = False
        _abort_on_uncaught(self)


    # -- point to point ---------------------------------------------------------------------------
    def isend(self, peer: int, data, tag: int) -> Request:
        req = Request(peer, int(data.nbytes), tag, True)
        try:
            req.handle = self.comm.Isend([data, self.MPI.BYTE], peer, tag)
        except self.MPI.Exception as exc:
            raise CommError(f"rank {self.rank}: MPI_Isend to rank {peer} failed: {exc}") from None
        return req

    def irecv(self, peer: int, nbytes: int, tag: int, into=None, xp=None) -> Request:
        req = Request(peer, nbytes, tag, False)
        if into is None:
            if xp is not None and xp is not np:
                buf = self._dev_get(xp, nbytes)
            else:
                buf = self.pool.get(nbytes)
            req.extra = buf
            into = buf[:nbytes]
        req.data = into
        try:
            req.handle = self.comm.Irecv([into, self.MPI.BYTE], peer, tag)
        except self.MPI.Exception as exc:
            raise CommError(f"rank {self.rank}: MPI_Irecv from rank {peer} failed: {exc}") from None
        return req

    def _dev_get(self, xp, nbytes):
        for i, buf in enumerate(self._dev_pool):
            if buf.nbytes >= nbytes:
                return self._dev_pool.pop(i)
        return xp.empty(max(nbytes, 1), dtype=xp.uint8)

    def release(self, req: Request) -> None:
        buf, req.extra = req.extra, None
        if buf is None:
            return
        if isinstance(buf, np.ndarray):
            self.pool.put(buf)
        elif len(self._dev_pool) < 8:
            self._dev_pool.append(buf)

    def wait_all(self, reqs: Sequence[Request], deadline: Deadline, context: str) -> None:
        pending = [r for r in reqs if not r.done]
        if pending:
            self._wait(pending, deadline, context)

    def _wait(self, pending, deadline: Deadline, context: str) -> None:
        start = time.perf_counter()
        busy_until = start + self.busy_s
        spin_until = start + self.spin_s
        check_at = start + _CHECK_INTERVAL_S
        nap = 0.0
        urgent = self.urgent
        was_urgent = True
        try:
            while True:
                still = []
                for r in pending:
                    if r.handle.Test():
                        r.done = True
                    else:
                        still.append(r)
                if not still:
                    return
                pending = still
                now = time.perf_counter()
                if now >= check_at:
                    check_at = now + _CHECK_INTERVAL_S
                    if deadline.expired():
                        self.mark_fatal()
                        raise self.timeout_error(pending, deadline, context)
                    if self.liveness is not None:
                        try:
                            self.liveness.check(context)
                        except CommError:
                            self.mark_fatal()
                            raise
                if urgent():
                    if not was_urgent:  # someone started waiting for us: poll hard again
                        was_urgent, nap = True, 0.0
                        busy_until, spin_until = now + self.busy_s, now + self.spin_s
                    if now < busy_until:
                        continue
                    if now < spin_until:
                        os.sched_yield()
                        continue
                else:
                    was_urgent = False
                time.sleep(nap)
                nap = min(max(nap * 2, 5e-5), 1e-3)
        except self.MPI.Exception as exc:
            self.mark_fatal()
            raise CommError(f"rank {self.rank}: MPI error in {context}: {exc}") from None

    def _wait_handles(self, handles, deadline: Deadline, context: str, native: bool = False) -> None:
        """Wait for raw MPI requests (native collectives) with the same polling policy."""
        reqs = []
        for h in handles:
            r = Request(-1, 0, 0, False)
            r.handle = h
            reqs.append(r)
        try:
            self._wait(reqs, deadline, context)
        except CommTimeoutError:
            raise describe_timeout(CommTimeoutError(
                f"rank {self.rank}: {context} did not complete within {deadline.timeout:g} s: at least one "
                f"rank did not join this MPI collective or is hung (MPI cannot say which). Raise the timeout "
                f"(comm.init(timeout=...) / DPTRAIN_COMM_TIMEOUT) if the ranks are legitimately slow."),
                context, (), deadline.timeout) from None

    def abort(self, reason: str) -> None:
        # MPI has no cheap way to wake the peers; the launcher or their own timeouts do that.
        self.mark_fatal()

    def mark_fatal(self) -> None:
        """After a lost peer or timeout MPI_Finalize could hang: make interpreter exit abort instead."""
        self.fatal = True
        setter = getattr(self.MPI, "_set_abort_status", None)
        if setter is not None:
            try:
                setter(1)
            except Exception:  # noqa: BLE001
                pass

    # -- native collectives -----------------------------------------------------------------------
    def _op(self, op: str):
        return getattr(self.MPI, _MPI_OPS[op])

    def native_allreduce(self, buf, op: str, deadline: Deadline, context: str) -> None:
        h = self.comm.Iallreduce(self.MPI.IN_PLACE, buf, self._op(op))
        self._wait_handles([h], deadline, f"{context} [MPI_Iallreduce]")

    def native_bcast(self, buf, root: int, deadline: Deadline, context: str) -> None:
        h = self.comm.Ibcast(buf, root)
        self._wait_handles([h], deadline, f"{context} [MPI_Ibcast]")

    def native_allgather(self, recv, deadline: Deadline, context: str) -> None:
        """In place: this rank's block of `recv` (shape (size, ...)) is already filled."""
        h = self.comm.Iallgather(self.MPI.IN_PLACE, recv)
        self._wait_handles([h], deadline, f"{context} [MPI_Iallgather]")

    def native_reduce_scatter(self, send, recv, counts, op: str, deadline: Deadline, context: str) -> None:
        h = self.comm.Ireduce_scatter(send, recv, list(counts), self._op(op))
        self._wait_handles([h], deadline, f"{context} [MPI_Ireduce_scatter]")

    # -- lifecycle ----------------------------------------------------------------------------------
    def close(self, clean: bool = True) -> None:
        comm, self.comm = self.comm, None
        if comm is not None and clean and not self.fatal:
            try:
                comm.Free()
            except self.MPI.Exception:
                pass
