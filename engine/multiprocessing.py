"""`torch.multiprocessing.spawn` for ported scripts: run fn(i, *args) in nprocs processes.

Why: PyTorch's DDP tutorial starts its workers itself, without a launcher:

    mp.spawn(demo_basic, args=(world_size,), nprocs=world_size, join=True)

and each worker calls `dist.init_process_group("gloo", rank=rank, world_size=world_size)`
with MASTER_ADDR / MASTER_PORT in the environment, which cluster.distributed turns into a
ZeroMQ rendezvous.  With this module such a script runs with only its imports changed
(`import engine.multiprocessing as mp`).  `dptrain launch -n N` remains the way to get
heartbeats, per-rank logs, restarts and thread limits.

The children are forked (whatever `start_method` says), so nothing is pickled: `fn` and `args`
are inherited, not sent, and a child's error travels back to the parent as its traceback text
through a pipe.  As in torch, the first child that fails makes `join` stop the others and raise
`ProcessRaisedException` (an exception) or `ProcessExitedException` (a signal or exit code).
BLAS thread counts are fixed when numpy loads: set OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before
starting Python when nprocs x threads would exceed the cores.
"""
from __future__ import annotations

import multiprocessing
import os
import select
import signal
import sys
import time
import traceback

__all__ = ["spawn", "start_processes", "ProcessContext", "ProcessException", "ProcessRaisedException",
           "ProcessExitedException", "cpu_count"]

cpu_count = multiprocessing.cpu_count

#: the most of a child's traceback sent to the parent (a pipe holds 64 KiB without a reader)
_MAX_ERROR_BYTES = 32 * 1024


class ProcessException(Exception):
    def __init__(self, msg: str, error_index: int, pid: int):
        super().__init__(msg)
        self.msg, self.error_index, self.pid = msg, error_index, pid


class ProcessRaisedException(ProcessException):
    """A child raised an exception; the message holds its traceback."""


class ProcessExitedException(ProcessException):
    """A child exited with a non-zero code or was killed by a signal."""

    def __init__(self, msg: str, error_index: int, error_pid: int, exit_code: int, signal_name: str | None = None):
        super().__init__(msg, error_index, error_pid)
        self.exit_code, self.signal_name = exit_code, signal_name


def _child(fn, index: int, args: tuple, error_fd: int) -> None:
    try:
        fn(index, *args)
    except KeyboardInterrupt:
        pass       # the parent is being interrupted too; it reports that
    except BaseException:  # noqa: BLE001 - every failure goes back to the parent
        text = traceback.format_exc().encode("utf-8", errors="replace")[-_MAX_ERROR_BYTES:]
        try:
            os.write(error_fd, text)
        finally:
            sys.stderr.flush()
            os._exit(1)


class ProcessContext:
    """The started children; `join()` waits for them (see torch.multiprocessing.ProcessContext)."""

    def __init__(self, processes, error_fds):
        self.processes = processes
        self.error_fds = error_fds
        self._errors = [b""] * len(processes)

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def _drain(self, timeout: float) -> None:
        """Read what the children wrote to their error pipes (so a long traceback cannot block one)."""
        fds = [fd for fd in self.error_fds if fd is not None]
        if not fds:
            time.sleep(timeout)
            return
        ready, _, _ = select.select(fds, [], [], timeout)
        for fd in ready:
            i = self.error_fds.index(fd)
            chunk = os.read(fd, 65536)
            if chunk:
                self._errors[i] = (self._errors[i] + chunk)[-_MAX_ERROR_BYTES:]
            else:
                os.close(fd)
                self.error_fds[i] = None

    def join(self, timeout: float | None = None) -> bool:
        """True once every child exited with 0; False if `timeout` passed first.  The first child that
        fails makes this stop the others (SIGTERM, then SIGKILL) and raise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._drain(0.05)
            failed = [(i, p) for i, p in enumerate(self.processes) if p.exitcode not in (None, 0)]
            if failed:
                i, p = failed[0]
                code = p.exitcode
                self._stop_others()
                self._drain(0.1)
                text = self._errors[i].decode("utf-8", errors="replace")
                if text:
                    raise ProcessRaisedException(f"\n\n-- Process {i} terminated with the following error:\n{text}",
                                                 i, p.pid)
                if code < 0:
                    name = signal.Signals(-code).name
                    raise ProcessExitedException(f"process {i} terminated with signal {name}", i, p.pid, code, name)
                raise ProcessExitedException(f"process {i} terminated with exit code {code}", i, p.pid, code)
            if all(p.exitcode == 0 for p in self.processes):
                self._close()
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _stop_others(self) -> None:
        live = [p for p in self.processes if p.exitcode is None]
        for p in live:
            p.terminate()
        end = time.monotonic() + 5.0
        while any(p.exitcode is None for p in live) and time.monotonic() < end:
            time.sleep(0.02)
        for p in live:
            if p.exitcode is None:
                p.kill()
            p.join(1.0)
        self._close()

    def _close(self) -> None:
        for i, fd in enumerate(self.error_fds):
            if fd is not None:
                os.close(fd)
                self.error_fds[i] = None


def start_processes(fn, args=(), nprocs=1, join=True, daemon=False, start_method="spawn"):
    """Start fn(i, *args) for i in range(nprocs) (forked: see the module docstring)."""
    if int(nprocs) < 1:
        raise ValueError(f"nprocs must be >= 1, got {nprocs}")
    ctx = multiprocessing.get_context("fork")
    processes, fds = [], []
    for i in range(int(nprocs)):
        read_fd, write_fd = os.pipe()
        p = ctx.Process(target=_child, args=(fn, i, tuple(args), write_fd), daemon=daemon)
        p.start()
        os.close(write_fd)
        processes.append(p)
        fds.append(read_fd)
    context = ProcessContext(processes, fds)
    if not join:
        return context
    try:
        while not context.join():
            pass
    except KeyboardInterrupt:
        context._stop_others()
        raise
    return None


def spawn(fn, args=(), nprocs=1, join=True, daemon=False, start_method="spawn"):
    """torch.multiprocessing.spawn: fn(i, *args) in nprocs processes; join=False returns the
    ProcessContext."""
    return start_processes(fn, args, nprocs, join, daemon, start_method)
