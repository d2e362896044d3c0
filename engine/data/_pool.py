"""The loader's side of DataLoader worker processes: start them, hand out tasks, collect batches
in order, notice failures, and always shut them down.

Each worker has two one-way pipes: tasks (loader -> worker: small msgpack messages holding a
batch's indices) and results (worker -> loader: batches in _wire's msgpack + raw-bytes format).
Nothing on them is pickled.  With the spawn/forkserver contexts, multiprocessing pickles the
worker's arguments (dataset, collate_fn, transform, worker_init_fn) once to start it, exactly as
torch does; that is local IPC between this process and the children it starts, never a network
path or a file.  With fork (the default on Linux, as in torch) nothing is pickled at all.

Scheduling follows torch's _MultiProcessingDataLoaderIter: at most prefetch_factor * num_workers
tasks are in flight, handed out round-robin; batches are yielded in task order (in_order=True;
early arrivals wait in a dict) or as they arrive (in_order=False, each worker then holding at
most its share).  An IterableDataset worker answers "stop" when its replica is exhausted; its
other pending tasks are dropped and the rest of the workers carry on, which interleaves the
replicas' batches round-robin as torch does.

No wait is unbounded: the loader waits on every worker's result pipe and process sentinel
together, waking at least every _WAIT_S, so a worker that dies (SIGKILL, segfault) is reported
with its exit code or signal within about a second; timeout > 0 bounds each wait for a result
(torch's semantics).  An error raised in a worker is re-raised here, in task order, as its own
exception type where that can be rebuilt (else RuntimeError), naming the worker and the batch and
carrying the worker's traceback text.
"""
from __future__ import annotations

import contextlib
import itertools
import multiprocessing as mp
import os
import select
import signal
import sys
import time
import weakref
from multiprocessing.connection import wait as _wait

import numpy as np

from . import _wire
from ._worker import THREAD_ENV, worker_loop

__all__ = ["WorkerPool", "resolve_context"]

_WAIT_S = 1.0          # longest sleep between liveness checks while waiting for a batch
_GRACE_S = 1.0         # time a busy worker gets to notice shutdown before SIGTERM
_END = object()
_pools = weakref.WeakSet()    # live pools: a forked worker closes their loader-side pipe ends


def resolve_context(multiprocessing_context):
    """A multiprocessing context: fork on Linux when unset (torch's default there; Python 3.14 would
    otherwise pick forkserver), a start method's name, or a context object as given."""
    if multiprocessing_context is None:
        return mp.get_context("fork" if sys.platform.startswith("linux") else None)
    if isinstance(multiprocessing_context, str):
        methods = mp.get_all_start_methods()
        if multiprocessing_context not in methods:
            raise ValueError(f"multiprocessing_context option should specify a valid start method in "
                             f"{methods!r}, but got multiprocessing_context={multiprocessing_context!r}")
        return mp.get_context(multiprocessing_context)
    if isinstance(multiprocessing_context, mp.context.BaseContext):
        return multiprocessing_context
    raise TypeError("multiprocessing_context option should be a valid context object or a string "
                    f"specifying the start method, but got multiprocessing_context={multiprocessing_context!r}")


@contextlib.contextmanager
def _one_thread_env(enabled):
    """While a spawned worker starts: thread-count variables of 1, read when it imports numpy."""
    saved = {k: os.environ.get(k) for k in THREAD_ENV} if enabled else {}
    try:
        for k in saved:
            os.environ[k] = "1"
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _widen(conn):
    """Linux: a 1 MiB pipe buffer instead of 64 KiB, 16x fewer wake-ups per batch (best effort)."""
    try:
        import fcntl
        fcntl.fcntl(conn.fileno(), fcntl.F_SETPIPE_SZ, 1 << 20)
    except (ImportError, AttributeError, OSError):
        pass


class _KeyErrorMessage(str):
    """KeyError shows repr(message); keep the traceback text readable (as torch does)."""

    def __repr__(self):
        return self


class _Worker:
    def __init__(self, wid, process, tasks, results):
        self.id, self.process, self.tasks, self.results = wid, process, tasks, results
        self.outstanding, self.active = 0, True


class _Failure:
    def __init__(self, worker, error):
        self.worker, self.error = worker, error


def _describe(task, payload):
    if payload is None:
        return f"batch {task} (the next batch of its IterableDataset replica)"
    if isinstance(payload, int):
        return f"sample {task} (dataset index {payload})"
    shown = ", ".join(str(int(i)) for i in payload[:8]) + (", ..." if len(payload) > 8 else "")
    return f"batch {task} (dataset indices [{shown}])"


def _encode_payload(payload):
    if payload is None or isinstance(payload, int):
        return payload
    a = np.ascontiguousarray(payload)
    return [a.dtype.str, a.tobytes()]


class WorkerPool:
    """num_workers processes building batches with `fetcher`; one epoch at a time (run_epoch)."""

    def __init__(self, fetcher, num_workers, context, base_seed, worker_init_fn, prefetch_factor, timeout):
        self.fetcher, self.prefetch_factor, self.timeout = fetcher, int(prefetch_factor), float(timeout)
        self.workers, self.epoch, self.closed = [], 0, False
        self.method = method = context.get_start_method()
        _pools.add(self)
        try:
            for i in range(num_workers):
                task_r, task_w = context.Pipe(duplex=False)
                res_r, res_w = context.Pipe(duplex=False)
                _widen(res_r)
                inherited = ([task_w, res_r] + [c for p in list(_pools) for c in p._loader_ends()]
                             if method == "fork" else [])
                proc = context.Process(
                    target=worker_loop, name=f"DataLoaderWorker-{i}", daemon=True,
                    args=(fetcher, i, num_workers, base_seed + i, worker_init_fn, task_r, res_w, inherited))
                try:
                    with _one_thread_env(method == "spawn"):
                        proc.start()
                except BaseException:
                    task_w.close()
                    res_r.close()
                    raise
                finally:
                    task_r.close()
                    res_w.close()
                self.workers.append(_Worker(i, proc, task_w, res_r))
        except Exception as e:
            self.shutdown()
            if method == "fork":
                raise
            raise RuntimeError(
                f"DataLoader(multiprocessing_context={method!r}) could not start its workers: {type(e).__name__}: "
                f"{e}. This start method pickles the dataset, collate_fn, transform and worker_init_fn to "
                "send them to each worker (locally, to its own child processes), so they must be defined "
                "at module level; or use multiprocessing_context='fork'.") from e

    def _loader_ends(self):
        return [c for w in self.workers for c in (w.tasks, w.results)]

    def pids(self):
        return [w.process.pid for w in self.workers]

    # ------------------------------------------------------------------ one epoch
    def run_epoch(self, tasks, in_order=True):
        """Yield the worker-built value of each task, `tasks` being an iterator of payloads (index
        arrays, single indices, or None = "your next batch" for an IterableDataset, endless)."""
        if self.closed:
            raise RuntimeError("DataLoader: its worker processes were shut down")
        self.epoch += 1
        epoch = self.epoch
        workers, limit = self.workers, self.prefetch_factor * len(self.workers)
        for w in workers:
            w.outstanding, w.active = 0, True
            self._send(w, ["epoch", epoch, -1, None])
        pending = {}            # task -> (worker, payload): sent, not yet yielded or dropped
        ready = {}              # task -> value (or _Failure) received, waiting for its turn
        cycle = itertools.cycle(workers)
        state = {"sent": 0, "more": True}

        def put():
            if not state["more"] or len(pending) >= limit:
                return
            active = sum(w.active for w in workers)
            for _ in range(len(workers)):
                w = next(cycle)
                if w.active and (in_order or w.outstanding < limit // max(active, 1)):
                    break
            else:
                return
            payload = next(tasks, _END)
            if payload is _END:
                state["more"] = False
                return
            t = state["sent"]
            pending[t] = (w, payload)
            w.outstanding += 1
            state["sent"] += 1
            self._send(w, ["task", epoch, t, _encode_payload(payload)])

        for _ in range(limit):
            put()
        rcvd = 0
        while True:
            if in_order:
                while rcvd < state["sent"] and rcvd not in pending:
                    rcvd += 1           # dropped: its worker's replica was exhausted
                t = rcvd if rcvd in ready else None
            else:
                t = next(iter(ready), None)
            if t is not None:
                value = ready.pop(t)
                w, payload = pending.pop(t)
                if isinstance(value, _Failure):
                    self._reraise(value, t, payload)
                put()
                yield value
                if self.epoch != epoch:
                    raise RuntimeError("DataLoader: this iterator was replaced by a newer iteration over the "
                                       "same loader (persistent_workers=True serves one iteration at a time)")
                continue
            if not pending:
                put()
                if not pending:
                    return
                continue
            w, (kind, ep, t, body) = self._receive(pending, rcvd if in_order else None)
            if ep != epoch or t not in pending:
                continue                # from an abandoned iteration
            w.outstanding -= 1
            if kind == "batch":
                ready[t] = body
            elif kind == "error":
                ready[t] = _Failure(w, body)
            else:                       # "stop": this worker's replica is exhausted
                w.active = False
                for k in [k for k, (o, _) in pending.items() if o is w and k not in ready]:
                    del pending[k]
                put()

    # ------------------------------------------------------------------ pipes
    def _send(self, w, msg):
        try:
            w.tasks.send_bytes(_wire.pack(msg))
        except (OSError, ValueError):           # broken pipe: the worker is gone
            self._died(w)

    def _receive(self, pending, awaited):
        """(worker, message) of the next result from any worker; raises if one dies or on timeout."""
        start, limit = time.monotonic(), (self.timeout if self.timeout > 0 else None)
        while True:
            conns = {w.results: w for w in self.workers}
            sentinels = {w.process.sentinel: w for w in self.workers}
            wait_s = _WAIT_S if limit is None else max(0.0, min(_WAIT_S, start + limit - time.monotonic()))
            ready = _wait(list(conns) + list(sentinels), timeout=wait_s)
            for r in ready:
                w = conns.get(r)
                if w is not None:
                    try:
                        return w, _wire.recv(r, self._readable(w, start, limit, awaited, pending))
                    except (EOFError, OSError, ValueError):     # closed mid-message: it died
                        self._died(w)
            for r in ready:
                w = sentinels.get(r)
                if w is not None and not w.results.poll():
                    self._died(w)
            if limit is not None and time.monotonic() - start >= limit:
                self._timed_out(awaited, pending)

    def _readable(self, w, start, limit, awaited, pending):
        """For _wire.recv: wait until w's pipe has more of the message, within the same timeout,
        and notice a worker that stopped or died halfway (no hang on a half-sent batch)."""
        def wait(fd):
            while not select.select([fd], [], [], _WAIT_S)[0]:
                if not w.process.is_alive():
                    raise EOFError("worker died mid-message")
                if limit is not None and time.monotonic() - start >= limit:
                    self._timed_out(awaited, pending)
        return wait

    def _timed_out(self, awaited, pending):
        if awaited is not None and awaited in pending:
            w, payload = pending[awaited]
            what = f"{_describe(awaited, payload)} from worker {w.id} (pid {w.process.pid})"
        else:
            what = "a batch"
        self.shutdown()
        raise RuntimeError(f"DataLoader timed out after {self.timeout:g} seconds waiting for {what} "
                           "(timeout= bounds each wait for a worker's result)")

    def _died(self, w):
        w.process.join(timeout=2.0)
        code = w.process.exitcode
        if code is None:
            how = "closed its result pipe but is still running"
        elif code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = "unknown signal"
            how = f"was killed by signal {-code} ({name})"
            if -code == signal.SIGKILL:
                how += " - e.g. by the out-of-memory killer: try smaller batches, fewer workers or a lower prefetch_factor"
            elif -code in (signal.SIGSEGV, signal.SIGBUS):
                how += " - a crash in native code the dataset called; the worker's stderr shows its Python stack"
        else:
            how = f"exited unexpectedly with exit code {code} (its stderr above says why"
            how += ("; a script that starts spawn/forkserver workers needs `if __name__ == '__main__':`)"
                    if self.method != "fork" else ")")
        pid = w.process.pid
        self.shutdown()
        raise RuntimeError(f"DataLoader worker {w.id} (pid {pid}) {how}.")

    def _reraise(self, failure, task, payload):
        err = failure.error
        where = f" {err['where']}" if err.get("where") else ""
        tb = err["traceback"]
        tb = f"Original {tb}" if tb.startswith("Traceback") else f"Original error: {tb}"
        msg = (f"Caught {err['name']} in DataLoader worker process {failure.worker.id}{where} while "
               f"loading {_describe(task, payload)}.\n{tb}")
        cls = _wire._lookup_class(err["module"], err["name"])
        exc = None
        if cls is not None and issubclass(cls, Exception):
            try:
                exc = cls(_KeyErrorMessage(msg) if issubclass(cls, KeyError) else msg)
            except Exception:
                exc = None
        raise (exc if exc is not None else RuntimeError(msg)) from None

    # ------------------------------------------------------------------ shutdown
    def shutdown(self):
        """Stop every worker and reap it: close the pipes (an idle worker exits at once), give busy
        ones _GRACE_S, then SIGTERM, then SIGKILL.  Safe to call more than once."""
        if self.closed:
            return
        self.closed = True
        _pools.discard(self)
        for w in self.workers:
            for conn in (w.tasks, w.results):
                try:
                    conn.close()
                except OSError:
                    pass
        deadline = time.monotonic() + _GRACE_S
        for w in self.workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
        for w in self.workers:
            if w.process.is_alive():
                w.process.terminate()
        for w in self.workers:
            w.process.join(1.0)
            if w.process.is_alive():
                w.process.kill()
                w.process.join(1.0)
            try:
                w.process.close()
            except ValueError:
                pass
