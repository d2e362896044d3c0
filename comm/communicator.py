"""The Communicator: the collectives of DESIGN.md §3 on top of one transport.

Each collective is turned into a job: (1) the fingerprint exchange, which checks
that every rank called the same thing and doubles as a barrier; (2) the data
movement, by the ring (`ring.py`) or by a native MPI collective; (3) copying the
result back to the caller's array when it could not be worked on in place.
Jobs run inline (sync calls) or on the progress thread (`*_async`), always in
issue order.  A timeout or a lost peer leaves the communicator unusable (later
calls fail at once with the original error); a mismatch does not, since no data
moved.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, List, Optional

import msgpack
import numpy as np

from . import arrays
from .env import Topology, env_int
from .errors import CollectiveMismatchError, CommError
from .fingerprint import Fingerprint, check_records
from .hierarchy import HostGrid, grid_pass
from .hierarchy import enabled as two_level_enabled
from .progress import Handle, ProgressEngine
from .shared import SharedBuffers, gather_shards, reduce_own_shard
from .ring import (DEFAULT_DEPTH, DEFAULT_SEGMENT_BYTES, exchange_records, ring_allgather_bytes,
                   ring_allreduce, ring_broadcast, ring_pass)
from .transport import Deadline, PeerInfo, Transport

ALGORITHMS = ("ring", "native")
DEFAULT_MAX_OBJECT_BYTES = 64 << 20
DEFAULT_SMALL_BYTES = 64 << 10  # all-reduces up to this size use all-gather + local reduction


def _agreed(exc: BaseException) -> BaseException:
    """Mark an error every rank raises identically at the same point (communicator stays usable)."""
    exc.ranks_agree = True  # type: ignore[attr-defined]
    return exc


def _mean_divider(op: str, n: int):
    """on_owned for a ring reduction: with op="mean" the owner of each chunk divides it once, before
    it is gathered (so every rank holds the same bytes); None otherwise."""
    if op != "mean":
        return None

    def divide(seg):
        seg /= n
    return divide


def _np_default(obj):
    """msgpack hook: numpy scalars become Python numbers; anything else is refused (no pickle)."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot encode {type(obj).__name__} with msgpack (allowed: None, bool, int, float, "
                    f"str, bytes, list, tuple, dict and numpy scalars)")


class _Context:
    """Names the running collective in error messages; formatted only when an error needs it."""

    __slots__ = ("fp",)

    def __init__(self, fp: Fingerprint):
        self.fp = fp

    def __str__(self) -> str:
        return self.fp.describe()

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731


class Communicator:
    """Collectives among the ranks of one job.  Get one with `comm.init()`."""

    def __init__(self, transport: Transport, topology: Topology, timeout: float, backend: str):
        self._tp = transport
        self._topo = topology
        self.timeout = float(timeout)
        self._backend = backend
        self._seq = 0
        self._engine = ProgressEngine(threads_ok=getattr(transport, "threads_ok", True) and transport.size > 1)
        transport.urgent = self._engine.urgent
        self._broken: Optional[BaseException] = None
        self._closed = False
        self._pid = os.getpid()  # a fork()ed child (e.g. a data-loader worker) must not touch our sockets
        self._local_rank = topology.local_rank if topology.size == transport.size else 0
        self._local_size = topology.local_size if topology.size == transport.size else 1
        self.segment_bytes = env_int("DPTRAIN_COMM_SEGMENT_BYTES",
                                     getattr(transport, "default_segment_bytes", DEFAULT_SEGMENT_BYTES), minimum=64)
        self.pipeline_depth = env_int("DPTRAIN_COMM_PIPELINE_DEPTH", DEFAULT_DEPTH, minimum=1)
        self.max_object_bytes = env_int("DPTRAIN_COMM_MAX_OBJECT_BYTES", DEFAULT_MAX_OBJECT_BYTES, minimum=1)
        self.small_bytes = env_int("DPTRAIN_COMM_SMALL_BYTES", DEFAULT_SMALL_BYTES)
        self._shared = SharedBuffers(transport.rank)
        self._grid: Optional[HostGrid] = None   # several hosts: two-level ring collectives
        self._inside: Optional[tuple] = None    # (seq, kind, since) of the collective running now
        self._completed = 0                     # collectives finished so far (the next seq to finish)

    # -- identity -----------------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return self._tp.rank

    @property
    def size(self) -> int:
        return self._tp.size

    @property
    def local_rank(self) -> int:
        return self._local_rank

    @property
    def local_size(self) -> int:
        return self._local_size

    @property
    def hierarchical(self) -> bool:
        """True when the ranks span several hosts with the same number (>= 2) on each: ring
        collectives then reduce inside each host first (see hierarchy.py)."""
        return self._grid is not None

    def activity(self) -> dict:
        """Where this rank is in the job's sequence of collectives: ``completed`` calls so far and,
        while one runs, its ``seq``, ``kind`` and ``since`` (epoch s).  Cheap and safe from any
        thread: heartbeats carry it so a launcher can tell the rank that never joined a collective
        from the ranks that timed out waiting inside it."""
        inside = self._inside
        out = {"completed": self._completed}
        if inside is not None:
            out.update(seq=inside[0], kind=inside[1], since=round(inside[2], 3))
        return out

    @property
    def backend(self) -> str:
        """"mpi", "zmq" or "local"."""
        return self._backend

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def peers(self) -> List[PeerInfo]:
        """Host and pid of every rank (filled during init)."""
        return list(self._tp.peers)

    def __repr__(self) -> str:
        return (f"<Communicator backend={self.backend} rank={self.rank}/{self.size} "
                f"local={self.local_rank}/{self.local_size}{' closed' if self._closed else ''}>")

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- setup -------------------------------------------------------------------------------------
    def _setup(self) -> None:
        """Learn every rank's host/pid (names in errors, liveness checks, local ranks); check the links."""
        if self.size == 1:
            return
        if not self._tp.peers:
            infos = self.allgather_obj(self._tp.me.as_dict())
            self._tp.set_peers([PeerInfo.from_dict(d) for d in infos])
        else:
            self.barrier()
        me = self._tp.peers[self.rank]
        same = [p.rank for p in self._tp.peers if p.host == me.host and p.boot_id == me.boot_id]
        self._local_rank, self._local_size = same.index(self.rank), len(same)
        if two_level_enabled():
            self._grid = HostGrid.of(self._tp, self._tp.peers)

    # -- job plumbing ------------------------------------------------------------------------------
    @staticmethod
    def _tag(seq: int, phase: int) -> int:
        """Message tag of one phase of call `seq`.  Phase 0 (the fingerprint exchange) has a
        constant tag: it must line up even when ranks disagree about the call number."""
        return ((seq & 0xFFFFF) << 3) | phase if phase else 0

    def _algorithm(self, algorithm: str) -> str:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {algorithm!r}; choose 'ring' or 'native'")
        # Only MPI has native collectives; elsewhere "native" means the backend's own: the ring.
        if algorithm == "native" and self._tp.supports_native:
            return "native"
        return "hierarchical" if self._grid is not None else "ring"

    def _ring(self, buf, bounds, deadline, context, seq: int, xp=None, dsync=None, **kw) -> None:
        """ring_pass over all ranks: flat, or in two levels when the job spans several hosts
        (hierarchy.py); the same shards and results either way."""
        if self._grid is not None:
            grid_pass(self._grid, buf, bounds, deadline=deadline, context=context,
                      tags=[self._tag(seq, p) for p in (4, 5, 6)], **kw, **self._ring_kw(xp, dsync))
        else:
            ring_pass(self._tp, buf, bounds, deadline=deadline, context=context, tag=self._tag(seq, 1), **kw,
                      **self._ring_kw(xp, dsync))

    def _launch(self, fields: dict, body: Callable[[Deadline, str, int], Any], sync: bool,
                timeout: Optional[float] = None):
        """Assign the call number, then run (sync) or queue (async) fingerprint check + body."""
        if self._closed:
            raise CommError(f"{fields['kind']}: this communicator is closed")
        if os.getpid() != self._pid:
            raise CommError(f"{fields['kind']}: this communicator belongs to process {self._pid}; a fork()ed "
                            f"child cannot use it")
        holder: dict = {}

        def job():
            fp = holder["fp"]
            context = _Context(fp)
            if self._broken is not None:
                broken = self._broken
                why = str(broken) if isinstance(broken, CommError) else f"{type(broken).__name__}: {broken}"
                raise CommError(f"rank {self.rank}: {context} refused: the communicator is unusable after an "
                                f"earlier failure: {why}")
            deadline = Deadline(self.timeout if timeout is None else timeout)
            self._inside = (fp.seq, fp.kind, time.time())
            try:
                if self.size > 1:
                    records = exchange_records(self._tp, fp.encode(), deadline=deadline, context=context,
                                               tag=self._tag(fp.seq, 0))
                    check_records(records, self.rank)
                result = body(deadline, context, fp.seq)
                self._inside, self._completed = None, fp.seq + 1
                return result
            except BaseException as exc:
                if isinstance(exc, CollectiveMismatchError) or getattr(exc, "ranks_agree", False):
                    self._inside = None
                    raise  # raised alike on every rank, nothing in flight: the communicator stays usable
                # Anything else (timeout, lost peer, protocol error, even KeyboardInterrupt mid-transfer)
                # may leave messages in flight: retire the communicator and tell the peers.
                self._broken = exc
                try:
                    self._tp.abort(str(exc))
                except Exception:  # noqa: BLE001 - best effort
                    pass
                raise

        def prepare():
            seq = self._seq
            self._seq += 1
            holder["fp"] = Fingerprint(seq=seq, **fields)
            return job

        description = f"{fields['kind']} on rank {self.rank}"
        if sync:
            return self._engine.run_sync(prepare, description)
        return self._engine.submit(prepare, description)

    def _settings(self, algo: str, small: bool = False) -> dict:
        """Settings every rank must share for the ring to line up (checked with the fingerprint)."""
        if algo not in ("ring", "hierarchical"):
            return {}
        return {"segment": self.segment_bytes, "small": self.small_bytes if small else 0}

    def _ring_kw(self, xp=None, sync=None) -> dict:
        return {"seg_bytes": self.segment_bytes, "depth": self.pipeline_depth, "xp": xp, "sync": sync}

    def _device_mode(self, x):
        """(work_xp, sync) for a cupy array: on the device with CUDA-aware MPI, else host staging."""
        if arrays.is_cupy(x) and getattr(self._tp, "cuda_aware", False):
            cp = arrays.get_cupy()
            return cp, (lambda: cp.cuda.get_current_stream().synchronize())
        return None, None

    def _stage(self, x, need_write: bool = True):
        """(work, xp, sync, finish): a contiguous writable buffer for `x` and how to hand back the result."""
        dev_xp, sync = self._device_mode(x)
        if arrays.is_cupy(x):
            cp = arrays.get_cupy()
            device = x.device
            if dev_xp is not None:
                work = x if x.flags.c_contiguous else cp.ascontiguousarray(x)

                def finish(w):
                    with device:
                        sync()
                        if w is not x:
                            x[...] = w
                    return x
                return work, cp, sync, finish
            work = arrays.stage_to_host(x)

            def finish(w):
                with device:
                    arrays.copy_back(x, w)
                return x
            return work, np, None, finish
        if arrays.is_inplace_ok(x):
            return x, np, None, (lambda w: w)
        work = np.array(x, order="C", copy=True)
        if need_write and arrays.writable(x):
            def finish(w):
                np.copyto(x, w)
                return x
            return work, np, None, finish
        return work, np, None, (lambda w: w)

    # -- allreduce ---------------------------------------------------------------------------------
    def allreduce(self, x, op: str = "sum", algorithm: str = "ring"):
        """Reduce `x` over all ranks (sum, mean, max, min; bf16_sum for bfloat16 bit patterns in a
        uint16 array, added in float32: comm.arrays.to_bf16); in place when x is writable and contiguous.

        Returns the result (x itself when reduced in place).  Bit-identical on every rank.
        """
        return self._allreduce(x, op, algorithm, True)

    def allreduce_async(self, x, op: str = "sum", algorithm: str = "ring") -> Handle:
        """Start an all-reduce; `handle.wait()` returns what `allreduce` would.  Leave x alone until then."""
        return self._allreduce(x, op, algorithm, False)

    def _allreduce(self, x, op, algorithm, sync):
        arrays.check_array(x, "allreduce")
        arrays.check_op(op, x.dtype)
        algo = self._algorithm("ring" if op == "bf16_sum" else algorithm)   # MPI has no bfloat16 sum
        work, xp, dsync, finish = self._stage(x)
        n = self.size
        views = self._shared.lookup(x) if n > 1 and algo in ("ring", "hierarchical") else None
        if views is not None:
            algo = "shared"

        def body(deadline, context, seq):
            flat = work.reshape(-1)
            if flat.size and n > 1:
                if views is not None:
                    bounds = self.shard_bounds(int(flat.size))
                    reduce_own_shard(views, self.rank, bounds, arrays.reduce_fn(np, op), n if op == "mean" else 0)
                    self._sync(deadline, context, seq, 2)
                    gather_shards(views, self.rank, bounds)
                    self._sync(deadline, context, seq, 3)
                elif algo == "native":
                    if dsync is not None:
                        dsync()
                    self._tp.native_allreduce(flat, op, deadline, context)
                    if op == "mean":
                        flat /= n
                elif algo == "hierarchical" and flat.nbytes > self.small_bytes:
                    self._ring(flat, self.shard_bounds(int(flat.size)), deadline, context, seq, xp, dsync,
                               reduce=arrays.reduce_fn(xp, op), do_rs=True, do_ag=True,
                               on_owned=_mean_divider(op, n))
                else:
                    ring_allreduce(self._tp, flat, arrays.reduce_fn(xp, op), deadline=deadline, context=context,
                                   tag=self._tag(seq, 1), mean=(op == "mean"), small_bytes=self.small_bytes,
                                   **self._ring_kw(xp, dsync))
            return finish(work)

        fields = dict(kind="allreduce", op=op, dtype=x.dtype.str, shape=tuple(x.shape), algorithm=algo,
                      **self._settings(algo, small=True))
        if views is not None:
            fields["buffer"] = self._shared.index(x)
        return self._launch(fields, body, sync)

    # -- broadcast ---------------------------------------------------------------------------------
    def broadcast(self, x, root: int = 0, algorithm: str = "ring"):
        """Copy root's `x` to every rank, in place when x is writable and contiguous; returns the result."""
        return self._broadcast(x, root, algorithm, True)

    def broadcast_async(self, x, root: int = 0, algorithm: str = "ring") -> Handle:
        return self._broadcast(x, root, algorithm, False)

    def _check_root(self, root: int) -> int:
        if not isinstance(root, (int, np.integer)) or not 0 <= int(root) < self.size:
            raise ValueError(f"root={root!r} is not a rank of this communicator (0..{self.size - 1})")
        return int(root)

    def _broadcast(self, x, root, algorithm, sync):
        arrays.check_array(x, "broadcast")
        root = self._check_root(root)
        algo = self._algorithm(algorithm)
        work, xp, dsync, finish = self._stage(x)

        def body(deadline, context, seq):
            flat = work.reshape(-1)
            if flat.size and self.size > 1:
                if algo == "native":
                    if dsync is not None:
                        dsync()
                    self._tp.native_bcast(flat, root, deadline, context)
                else:
                    ring_broadcast(self._tp, arrays.byte_view(flat), root, deadline=deadline, context=context,
                                   tag=self._tag(seq, 1), seg_bytes=self.segment_bytes,
                                   depth=self.pipeline_depth, sync=dsync)
            return finish(work)

        fields = dict(kind="broadcast", dtype=x.dtype.str, shape=tuple(x.shape), root=root,
                      algorithm=algo, **self._settings(algo))
        return self._launch(fields, body, sync)

    # -- allgather ---------------------------------------------------------------------------------
    def allgather(self, x, algorithm: str = "ring"):
        """Every rank's `x` stacked in rank order: shape (size, *x.shape)."""
        return self._allgather(x, algorithm, True)

    def allgather_async(self, x, algorithm: str = "ring") -> Handle:
        return self._allgather(x, algorithm, False)

    def _allgather(self, x, algorithm, sync):
        arrays.check_array(x, "allgather")
        algo = self._algorithm(algorithm)
        n, r = self.size, self.rank
        dev_xp, dsync = self._device_mode(x)
        on_device = arrays.is_cupy(x)
        if on_device and dev_xp is not None:
            xp = dev_xp
            out = xp.empty((n,) + tuple(x.shape), dtype=x.dtype)
            out[r] = x
        else:
            xp, dsync = np, None
            out = np.empty((n,) + tuple(x.shape), dtype=x.dtype)
            out[r] = arrays.stage_to_host(x) if on_device else x
        block = int(np.prod(x.shape, dtype=np.int64))

        def body(deadline, context, seq):
            if block and n > 1:
                if algo == "native":
                    if dsync is not None:
                        dsync()
                    self._tp.native_allgather(out, deadline, context)
                else:
                    self._ring(out.reshape(-1), [i * block for i in range(n + 1)], deadline, context, seq, xp,
                               dsync, do_ag=True)
            if on_device and xp is np:
                cp = arrays.get_cupy()
                with x.device:
                    return cp.asarray(out)
            return out

        fields = dict(kind="allgather", dtype=x.dtype.str, shape=tuple(x.shape), algorithm=algo,
                      **self._settings(algo))
        return self._launch(fields, body, sync)

    # -- reduce_scatter ----------------------------------------------------------------------------
    def reduce_scatter(self, x, op: str = "sum", algorithm: str = "ring"):
        """Reduce `x` over ranks and return this rank's block of rows.

        x is split along axis 0 into `size` blocks like numpy.array_split (the first
        `rows % size` blocks get one extra row); rank r gets block r of the reduced
        array, shape (rows_r, *x.shape[1:]).  x itself is not modified.
        """
        return self._reduce_scatter(x, op, algorithm, True)

    def reduce_scatter_async(self, x, op: str = "sum", algorithm: str = "ring") -> Handle:
        return self._reduce_scatter(x, op, algorithm, False)

    def _reduce_scatter(self, x, op, algorithm, sync):
        arrays.check_array(x, "reduce_scatter")
        arrays.check_op(op, x.dtype)
        algo = self._algorithm(algorithm)
        n, r = self.size, self.rank
        shape = tuple(x.shape) if x.ndim else (1,)
        rows, bounds = arrays.row_split(shape, n)
        dev_xp, dsync = self._device_mode(x)
        on_device = arrays.is_cupy(x)
        if on_device and dev_xp is not None:
            xp = dev_xp
            work = xp.array(x, copy=True).reshape(-1)
        else:
            xp, dsync = np, None
            work = (arrays.stage_to_host(x) if on_device else np.array(x, order="C", copy=True)).reshape(-1)
        out_shape = (rows[r],) + shape[1:]

        def body(deadline, context, seq):
            if n > 1 and work.size:
                if algo == "native":
                    if dsync is not None:
                        dsync()
                    counts = [bounds[i + 1] - bounds[i] for i in range(n)]
                    mine = xp.empty(counts[r], dtype=work.dtype)
                    self._tp.native_reduce_scatter(work, mine, counts, op, deadline, context)
                    if op == "mean":
                        mine /= n
                else:
                    self._ring(work, bounds, deadline, context, seq, xp, dsync, reduce=arrays.reduce_fn(xp, op),
                               do_rs=True, on_owned=_mean_divider(op, n))
                    mine = work[bounds[r]:bounds[r + 1]].copy()
            else:
                mine = work[bounds[r]:bounds[r + 1]].copy()
            mine = mine.reshape(out_shape)
            if on_device and xp is np:
                cp = arrays.get_cupy()
                with x.device:
                    return cp.asarray(mine)
            return mine

        fields = dict(kind="reduce_scatter", op=op, dtype=x.dtype.str, shape=tuple(x.shape),
                      algorithm=algo, **self._settings(algo))
        return self._launch(fields, body, sync)

    # -- in-place shards (ZeRO) ---------------------------------------------------------------------
    def shard_bounds(self, numel: int) -> List[int]:
        """Element offsets of the `size` shards of a flat array of `numel` elements: rank r owns
        [bounds[r], bounds[r+1]).  The same split the ring all-reduce uses internally."""
        return [numel * i // self.size for i in range(self.size + 1)]

    def reduce_scatter_inplace(self, flat, op: str = "sum"):
        """Reduce the 1-D array `flat` over ranks, in place, keeping only this rank's shard:
        afterwards flat[b[r]:b[r+1]] (b = shard_bounds(flat.size)) holds the reduced values and the
        rest of `flat` is unspecified (partial sums).  PyTorch's reduce_scatter_tensor without the extra buffer;
        half the traffic of an all-reduce.  Returns `flat`."""
        return self._shard_collective(flat, op, "reduce_scatter_inplace", True)

    def reduce_scatter_inplace_async(self, flat, op: str = "sum") -> Handle:
        return self._shard_collective(flat, op, "reduce_scatter_inplace", False)

    def allgather_inplace(self, flat):
        """Every rank contributes its shard flat[b[r]:b[r+1]] of the 1-D array `flat`; afterwards
        every rank holds all shards (PyTorch's all_gather_into_tensor, in place).  Returns `flat`."""
        return self._shard_collective(flat, None, "allgather_inplace", True)

    def allgather_inplace_async(self, flat) -> Handle:
        return self._shard_collective(flat, None, "allgather_inplace", False)

    def _shard_collective(self, flat, op, kind, sync):
        arrays.check_array(flat, kind)
        if flat.ndim != 1:
            raise ValueError(f"{kind}: needs a 1-D array, got shape {tuple(flat.shape)}")
        if op is not None:
            arrays.check_op(op, flat.dtype)
        work, xp, dsync, finish = self._stage(flat)
        n = self.size
        bounds = self.shard_bounds(int(flat.size))
        views = self._shared.lookup(flat) if n > 1 else None

        def body(deadline, context, seq):
            if n > 1 and work.size:
                if views is not None:      # same-host shared buffers: read the peers' copies directly
                    if op is not None:
                        reduce_own_shard(views, self.rank, bounds, arrays.reduce_fn(np, op),
                                         n if op == "mean" else 0)
                    else:
                        gather_shards(views, self.rank, bounds)
                    self._sync(deadline, context, seq, 2)
                elif op is not None:
                    self._ring(work, bounds, deadline, context, seq, xp, dsync, reduce=arrays.reduce_fn(xp, op),
                               do_rs=True, on_owned=_mean_divider(op, n))
                else:
                    self._ring(work, bounds, deadline, context, seq, xp, dsync, do_ag=True)
            return finish(work)

        algo = "shared" if views is not None else self._algorithm("ring")
        fields = dict(kind=kind, op=op or "", dtype=flat.dtype.str, shape=tuple(flat.shape), algorithm=algo,
                      **self._settings(algo))
        if views is not None:       # two ranks on two different shared buffers would read the wrong peers
            fields["buffer"] = self._shared.index(flat)
        return self._launch(fields, body, sync)

    # -- shared buffers ----------------------------------------------------------------------------
    def alloc(self, numel: int, dtype=np.float32) -> np.ndarray:
        """A zero-filled 1-D array meant for collectives (collective: every rank calls it in the same
        order with the same size).

        When all ranks share this host, every rank's buffer is mapped by the others (see
        shared.py), and allreduce / reduce_scatter_inplace / allgather_inplace on the *whole*
        buffer read the peers' copies directly instead of sending them: no transfers, one pass
        of arithmetic.  Otherwise (several hosts, no usable /dev/shm, DPTRAIN_COMM_SHM=0) this is
        an ordinary array and the collectives take the ring."""
        numel = int(numel)
        if numel < 0:
            raise ValueError(f"alloc: numel must be >= 0, got {numel}")
        dtype = np.dtype(dtype)
        if self.size == 1 or self._local_size != self.size or self._backend == "local":
            return np.zeros(numel, dtype=dtype)

        def body(deadline, context, seq):
            def exchange(record, phase):
                return exchange_records(self._tp, record, deadline=deadline, context=context,
                                        tag=self._tag(seq, phase))
            return self._shared.allocate(numel, dtype, exchange)

        return self._launch(dict(kind="alloc", dtype=dtype.str, shape=(numel,)), body, True)

    def is_shared(self, x) -> bool:
        """Whether `x` is a whole buffer from `alloc` that the other ranks map (collectives on it
        read their copies directly)."""
        return self._shared.lookup(x) is not None

    def _sync(self, deadline, context, seq: int, phase: int) -> None:
        """A barrier inside a collective (a one-byte record from every rank)."""
        exchange_records(self._tp, b"\x01", deadline=deadline, context=context, tag=self._tag(seq, phase))

    # -- barrier -----------------------------------------------------------------------------------
    def barrier(self, timeout: Optional[float] = None) -> None:
        """Return once every rank has entered the barrier (the fingerprint exchange is the barrier)."""
        self._launch(dict(kind="barrier"), lambda deadline, context, seq: None, True, timeout=timeout)

    def barrier_async(self, timeout: Optional[float] = None) -> Handle:
        return self._launch(dict(kind="barrier"), lambda deadline, context, seq: None, False, timeout=timeout)

    # -- objects -----------------------------------------------------------------------------------
    def _pack(self, obj):
        try:
            return msgpack.packb(obj, use_bin_type=True, default=_np_default), None
        except Exception as exc:  # noqa: BLE001 - reported on every rank below
            return None, f"{type(exc).__name__}: {exc}"

    def _unpack(self, data: bytes, src: int):
        limit = self.max_object_bytes
        try:
            return msgpack.unpackb(data, raw=False, strict_map_key=False,
                                   max_bin_len=limit, max_str_len=limit, max_array_len=limit,
                                   max_map_len=limit, max_ext_len=0)
        except Exception as exc:  # noqa: BLE001
            raise CommError(f"rank {self.rank}: could not decode the object sent by rank {src}: {exc}") from None

    def broadcast_obj(self, obj: Any = None, root: int = 0):
        """Root's msgpack-able object on every rank (tuples arrive as lists; no pickle)."""
        root = self._check_root(root)
        limit = self.max_object_bytes

        def body(deadline, context, seq):
            data, err = self._pack(obj) if self.rank == root else (None, None)
            header = np.zeros(1, dtype=np.int64)
            if self.rank == root:
                header[0] = -1 if data is None else len(data)
            ring_broadcast(self._tp, header.view(np.uint8), root, deadline=deadline, context=context,
                           tag=self._tag(seq, 1))
            length = int(header[0])
            # Both errors below are raised on every rank alike and leave the ranks in step,
            # so they are TypeError/ValueError, not a CommError that would retire the communicator.
            if length < 0:
                raise _agreed(TypeError(f"broadcast_obj: rank {root} could not encode its object with msgpack"
                                        + (f" ({err})" if err else "")))
            if length > limit:
                raise _agreed(ValueError(f"broadcast_obj: rank {root}'s object is {length} bytes, over the "
                                         f"{limit}-byte limit (DPTRAIN_COMM_MAX_OBJECT_BYTES); send arrays "
                                         f"with broadcast()"))
            buf = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == root else np.empty(length, np.uint8)
            ring_broadcast(self._tp, buf, root, deadline=deadline, context=context, tag=self._tag(seq, 2),
                           seg_bytes=self.segment_bytes, depth=self.pipeline_depth)
            return self._unpack(buf.tobytes(), root)

        return self._launch(dict(kind="broadcast_obj", root=root, **self._settings("ring")), body, True)

    def allgather_obj(self, obj: Any) -> list:
        """Every rank's msgpack-able object, as a list in rank order."""
        limit = self.max_object_bytes
        n = self.size

        def body(deadline, context, seq):
            data, err = self._pack(obj)
            mine = -1 if data is None else len(data)
            lengths = [int(np.frombuffer(rec, dtype=np.int64)[0]) for rec in exchange_records(
                self._tp, np.array([mine], dtype=np.int64).tobytes(), deadline=deadline, context=context,
                tag=self._tag(seq, 1))]
            bad = [i for i, length in enumerate(lengths) if length < 0]
            if bad:
                raise _agreed(TypeError(f"allgather_obj: rank(s) {bad} could not encode their object with "
                                        f"msgpack" + (f" ({err})" if err else "")))
            big = [i for i, length in enumerate(lengths) if length > limit]
            if big:
                raise _agreed(ValueError(f"allgather_obj: objects of rank(s) {big} exceed the {limit}-byte limit "
                                         f"(DPTRAIN_COMM_MAX_OBJECT_BYTES); send arrays with allgather()"))
            bounds = [0]
            for length in lengths:
                bounds.append(bounds[-1] + length)
            buf = np.empty(bounds[-1], dtype=np.uint8)
            buf[bounds[self.rank]:bounds[self.rank + 1]] = np.frombuffer(data, dtype=np.uint8)
            if n > 1:
                ring_allgather_bytes(self._tp, buf, bounds, deadline=deadline, context=context,
                                     tag=self._tag(seq, 2), seg_bytes=self.segment_bytes, depth=self.pipeline_depth)
            # Our own object goes through msgpack too, so every rank gets the same types (tuples -> lists).
            return [self._unpack(buf[bounds[i]:bounds[i + 1]].tobytes(), i) for i in range(n)]

        return self._launch(dict(kind="allgather_obj", **self._settings("ring")), body, True)

    # -- lifecycle ---------------------------------------------------------------------------------
    def abort(self, reason: str) -> None:
        """This rank is failing: tell the peers why and release the transport without the clean
        goodbye.  Peers blocked in a collective with us stop at once with a PeerFailureError that
        quotes `reason` (a plain close would read as "called fewer collectives"; over MPI the
        launcher stops the peers)."""
        if self._closed:
            return
        try:
            self._tp.abort(f"rank {self.rank} failed: {reason}")
        finally:
            self._closed = True
            try:
                self._engine.close(0.5)
            finally:
                self._tp.close(clean=False)

    def close(self, timeout: Optional[float] = None) -> None:
        """Finish pending async collectives (up to `timeout`), then release sockets/communicators."""
        if self._closed:
            return
        if os.getpid() != self._pid:
            self._closed = True  # inherited through fork(): the parent still owns the connections
            return
        drained = self._engine.close(self.timeout if timeout is None else timeout)
        self._closed = True
        self._tp.close(clean=drained and self._broken is None)


__all__ = ["Communicator", "Handle"]
