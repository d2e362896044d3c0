"""Background execution of collectives, in the order they were issued.

`*_async` calls put a job on a FIFO queue served by one daemon thread, so the
caller (the backward pass, in DDP) keeps computing while buckets are reduced.
Synchronous calls made while nothing is queued run directly on the caller's
thread (no thread hand-off latency); otherwise they queue behind the pending
ones, so completion order always equals issue order.  One lock serialises all
execution: the transports are not thread-safe and MPI runs at
MPI_THREAD_SERIALIZED.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Optional

from .errors import CommError, CommTimeoutError


class Handle:
    """Result of an `*_async` collective; `wait()` returns what the sync call would."""

    __slots__ = ("_event", "_result", "_exc", "description", "_engine")

    def __init__(self, description: str, engine: Optional["ProgressEngine"] = None):
        self._event = threading.Event()
        self._result: Any = None
        self._exc: Optional[BaseException] = None
        self.description = description
        self._engine = engine

    def done(self) -> bool:
        """True once the collective finished (successfully or not)."""
        return self._event.is_set()

    def wait(self, timeout: Optional[float] = None):
        """Block until done and return the result (or raise the collective's error).

        timeout=None waits as long as the collective itself may take: every
        network wait inside has the communicator's timeout, so it always ends.
        A finite timeout that expires raises CommTimeoutError; the collective keeps
        running and wait() can be called again.
        """
        if not self._event.is_set():
            engine = self._engine
            if engine is not None:
                engine.waiters += 1  # someone is blocked on results: the worker may poll hard now
            try:
                if timeout is None:
                    while not self._event.wait(0.5):
                        if engine is not None:
                            engine.check_alive(self.description)
                elif not self._event.wait(timeout):
                    raise CommTimeoutError(f"{self.description} not finished after waiting {timeout:g} s "
                                           f"(it is still running; call wait() again or raise the timeout)")
            finally:
                if engine is not None:
                    engine.waiters -= 1
        if self._exc is not None:
            raise self._exc
        return self._result

    def _finish(self, result=None, exc: Optional[BaseException] = None) -> None:
        self._result = result
        self._exc = exc
        self._event.set()


class ProgressEngine:
    """One worker thread plus the execution lock shared with inline (sync) calls."""

    def __init__(self, name: str = "dptrain-comm", threads_ok: bool = True):
        self._cond = threading.Condition()
        self._queue: deque = deque()
        self._outstanding = 0  # submitted and not yet finished (queued + running)
        self._exec = threading.Lock()
        self._threads_ok = threads_ok
        self._closed = False
        self._thread: Optional[threading.Thread] = None
        self._name = name
        self._crash: Optional[BaseException] = None
        self.waiters = 0  # threads blocked in Handle.wait (updated under the GIL)

    def urgent(self) -> bool:
        """Whether the running collective should poll as fast as it can.

        True on the caller's own thread (it is blocked anyway) and when someone waits
        for a result.  False while async work runs behind a busy caller (DDP's
        backward pass): busy-polling then would steal the CPU and, worse, the GIL
        from the computation it is meant to overlap with.
        """
        return self.waiters > 0 or threading.current_thread() is not self._thread

    def _ensure_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self._name, daemon=True)
            self._thread.start()

    def submit(self, prepare: Callable[[], Callable[[], Any]], description: str) -> Handle:
        """Queue the job that `prepare()` builds; prepare runs under the queue lock, so whatever
        it numbers (the call sequence) is numbered in queue order."""
        handle = Handle(description, self)
        with self._cond:
            if self._closed:
                raise CommError(f"{description}: the communicator is closed")
            job = prepare()
            if not self._threads_ok:
                # MPI below THREAD_SERIALIZED: only this thread may call it, so run now.
                self._outstanding += 1
                run_inline = True
            else:
                self._ensure_thread()
                self._outstanding += 1
                self._queue.append((job, handle))
                self._cond.notify()
                run_inline = False
        if run_inline:
            self._run(job, handle)
        return handle

    def run_sync(self, prepare: Callable[[], Callable[[], Any]], description: str):
        """Run now on this thread if nothing is pending, else queue and wait (keeps issue order)."""
        with self._cond:
            if self._closed:
                raise CommError(f"{description}: the communicator is closed")
            inline = self._outstanding == 0 or not self._threads_ok
            if inline:
                self._outstanding += 1
                job = prepare()
        if inline:
            try:
                with self._exec:
                    return job()
            finally:
                with self._cond:
                    self._outstanding -= 1
                    self._cond.notify_all()
        return self.submit(prepare, description).wait()

    def _run(self, job, handle: Handle) -> None:
        try:
            with self._exec:
                result = job()
        except BaseException as exc:  # noqa: BLE001 - delivered to the waiter
            handle._finish(exc=exc)
        else:
            handle._finish(result)
        finally:
            with self._cond:
                self._outstanding -= 1
                self._cond.notify_all()  # drain() may be waiting for zero

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closed:
                        self._cond.wait()
                    if not self._queue:
                        return
                    job, handle = self._queue.popleft()
                self._run(job, handle)
        except BaseException as exc:  # pragma: no cover - defensive
            self._crash = exc

    def check_alive(self, description: str) -> None:
        thread = self._thread
        if thread is not None and not thread.is_alive() and not self._closed:
            raise CommError(f"{description}: the comm progress thread died ({self._crash!r})")

    def drain(self, timeout: float) -> bool:
        """Wait until every submitted job finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._outstanding == 0, timeout)

    def close(self, timeout: float) -> bool:
        finished = self.drain(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(0.1, min(timeout, 5.0)))
        return finished
