"""What runs inside a DataLoader worker process (num_workers > 0), and get_worker_info().

A worker receives tasks from its loader on a pipe of its own - "build the batch of these indices"
(map-style dataset) or "build your next batch" (IterableDataset, which every worker iterates in
its own replica) - builds each batch with the loader's _Fetcher (the same code num_workers=0 runs:
dataset access, collate_fn, transform) and writes it back with _wire (msgpack, no pickle).

Seeding follows torch: worker i gets seed = base_seed + i (base_seed is drawn by the loader each
epoch) and seeds Python's `random`, NumPy's legacy global RNG and engine.random with it before
worker_init_fn(i) runs.  Random transforms of engine.data.transforms own a numpy Generator,
which every worker would otherwise inherit in the same state (all workers repeating one
augmentation stream); each worker re-derives it from that state and its seed.

Threads: torch limits each worker to one intra-op thread.  Here the worker sets OMP_NUM_THREADS,
OPENBLAS_NUM_THREADS, MKL_NUM_THREADS, VECLIB_MAXIMUM_THREADS and NUMEXPR_NUM_THREADS to 1 for
whatever it loads or starts later; a forked worker cannot shrink the BLAS thread pool numpy
already created in the parent (the spawn context gets the variables before it imports numpy).

Ending: the worker exits when its task pipe closes (the loader shut it down), when its result
pipe breaks, or when its parent process is gone (the parent pid changes; checked every
_POLL_S while idle), so a killed training process leaves no workers behind.  SIGINT is ignored:
Ctrl-C is the main process's to handle, and it then shuts the workers down.
"""
from __future__ import annotations

import faulthandler
import os
import queue
import random
import signal
import threading
import traceback

import numpy as np

from . import _wire

__all__ = ["WorkerInfo", "get_worker_info", "worker_loop", "THREAD_ENV"]

THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
              "NUMEXPR_NUM_THREADS")
_POLL_S = 0.5

_worker_info = None


class WorkerInfo:
    """torch.utils.data.WorkerInfo: id, num_workers, seed and dataset (this worker's replica)."""

    __initialized = False

    def __init__(self, **kwargs):
        for k, v in kwargs.items():
            setattr(self, k, v)
        self.__keys = tuple(kwargs)
        self.__initialized = True

    def __setattr__(self, key, val):
        if self.__initialized:
            raise RuntimeError(f"Cannot assign attributes to {type(self).__name__} objects")
        return super().__setattr__(key, val)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={getattr(self, k)}' for k in self.__keys)})"


def get_worker_info():
    """In a DataLoader worker process: its WorkerInfo (id, num_workers, seed, dataset), so an
    IterableDataset can shard itself, e.g. `itertools.islice(stream, info.id, None, info.num_workers)`.
    In the main process (and with num_workers=0): None, as in torch."""
    return _worker_info


def _seed_everything(seed):
    random.seed(seed)
    np.random.seed(np.random.SeedSequence(seed).generate_state(4))   # legacy MT19937 takes < 2**32 words
    from ..random import manual_seed
    manual_seed(seed)


def _reseed_transforms(transform, seed):
    """Give each random transform (an `rng` numpy Generator) a stream of this worker's own."""
    members = getattr(transform, "transforms", None)
    for t in (members if isinstance(members, (list, tuple)) else [transform]):
        rng = getattr(t, "rng", None)
        if isinstance(rng, np.random.Generator):
            t.rng = np.random.default_rng([int(rng.integers(2**63)), int(seed)])


class _Tasks:
    """The task pipe, read by a thread into a queue: the loader's writes never wait for this
    worker to finish a batch (a full pipe in both directions would deadlock), and `epoch` tells
    the worker which queued tasks belong to an iteration the loader has already abandoned."""

    def __init__(self, conn):
        self.conn, self.queue, self.epoch = conn, queue.SimpleQueue(), None
        threading.Thread(target=self._read, name="DataLoaderWorkerTasks", daemon=True).start()

    def _read(self):
        while True:
            try:
                msg = _wire.unpack(self.conn.recv_bytes())
            except (EOFError, OSError):
                self.queue.put(None)
                return
            if msg[0] == "epoch":
                self.epoch = msg[1]
            self.queue.put(msg)

    def get(self):
        """The next message, None when the loader closed the pipe, False after _POLL_S of nothing."""
        try:
            return self.queue.get(timeout=_POLL_S)
        except queue.Empty:
            return False


def _error(exc, where):
    return {"module": type(exc).__module__, "name": type(exc).__qualname__, "message": str(exc),
            "where": where, "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


def worker_loop(fetcher, worker_id, num_workers, seed, worker_init_fn, task_conn, result_conn, inherited):
    """The worker process's main function (see the module docstring)."""
    global _worker_info
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for conn in inherited:              # fork: the loader's ends of every worker's pipes, ours included;
        try:                            # holding them would hide the loader's closing them (no EOF/EPIPE)
            conn.close()
        except OSError:
            pass
    for name in THREAD_ENV:
        os.environ[name] = "1"
    try:
        faulthandler.enable()           # a segfault prints the worker's Python stack before it dies
    except (AttributeError, ValueError, OSError):
        pass
    parent = os.getppid()
    _worker_info = WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed, dataset=fetcher.dataset)
    _seed_everything(seed)
    _reseed_transforms(fetcher.transform, seed)
    init_error = None
    if worker_init_fn is not None:
        try:
            worker_init_fn(worker_id)
        except Exception as e:          # reported with the first batch this worker is asked for
            init_error = _error(e, "in worker_init_fn")
    tasks = _Tasks(task_conn)
    exhausted = False
    while True:
        msg = tasks.get()
        if os.getppid() != parent or msg is None:
            return
        if msg is False:
            continue
        kind, epoch, task, payload = msg
        if kind == "epoch":
            fetcher.start_epoch()
            exhausted = False
            continue
        if epoch != tasks.epoch or exhausted:
            continue                    # abandoned iteration / this replica has no more batches
        if isinstance(payload, list):   # a batch's indices: [dtype, bytes]
            payload = np.frombuffer(payload[1], dtype=np.dtype(payload[0])).copy()
        try:
            if init_error is not None:
                reply = ["error", epoch, task, init_error]
            else:
                reply = ["batch", epoch, task, fetcher.fetch(payload)]
        except StopIteration as e:
            if not fetcher.iterable:    # a map-style dataset raising StopIteration is just an error
                reply = ["error", epoch, task, _error(e, "")]
            else:
                exhausted = True
                reply = ["stop", epoch, task, None]
        except Exception as e:
            reply = ["error", epoch, task, _error(e, "")]
        try:
            try:
                _wire.send(result_conn, reply)
            except _wire.UnsendableError as e:
                hint = (f"DataLoader worker {worker_id} cannot send batch {task} to the main process: it "
                        f"holds {e}. Workers send numpy arrays, engine Tensors (CPU), numbers, strings, "
                        "bytes, None, and tuples/lists/dicts of them; convert the sample in the dataset "
                        "or collate_fn, or use num_workers=0 to build batches in the main process.")
                _wire.send(result_conn, ["error", epoch, task, _error(_wire.UnsendableError(hint), "")])
        except (OSError, EOFError):     # the loader closed its end: shut down
            return
