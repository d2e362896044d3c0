"""GPU-resident all-reduce through NCCL (cupy.cuda.nccl), for DDP buckets that live in GPU memory.

Why: with cupy gradients, a host-staged all-reduce costs a device->host and a host->device copy of every
bucket plus the CPU reduction; NCCL reduces in GPU memory over NVLink/PCIe/InfiniBand and runs on a CUDA
stream, so it overlaps with the backward kernels like any other GPU work.  Preference order for GPU
buffers (wired in by the Communicator, not here): NCCL, then CUDA-aware MPI (mpi4py accepts cupy arrays
through __cuda_array_interface__ when MPI was built with CUDA support), then host staging.

Self-contained on purpose: it only needs a way to hand rank 0's NCCL unique id to the other ranks,
passed in as `unique_id_bcast_fn(uid_or_None) -> uid` (e.g. `lambda u: comm.broadcast_obj(u, root=0)`),
so it depends on no transport.  The id is a tuple of ints, msgpack-friendly.

    nccl = NcclAllreduce(comm.rank, comm.size, lambda uid: comm.broadcast_obj(uid, root=0))
    nccl.allreduce(flat_bucket, op="avg")                 # in place, enqueued on the current stream
    h = nccl.allreduce_async(flat_bucket); ...; h.wait(timeout=60)
"""
from __future__ import annotations

import time


def _nccl():
    try:
        import cupy  # noqa: PLC0415 -- only GPU runs pay for the import
        from cupy.cuda import nccl  # noqa: PLC0415
    except Exception as exc:  # ImportError, or cupy present without its NCCL bindings/libraries
        raise RuntimeError(f"NCCL is not usable here ({exc}); install cupy with NCCL "
                           "(pip install -e '.[gpu]' in the dptrain checkout, and the nvidia-nccl-cu12 wheel) or use the "
                           "host-staged all-reduce") from exc
    if not getattr(nccl, "available", True):
        raise RuntimeError("cupy was built without NCCL support; use the host-staged all-reduce")
    return cupy, nccl


def nccl_available() -> bool:
    """True when cupy imports, has NCCL, and sees a CUDA device."""
    try:
        cupy, _ = _nccl()
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


class NcclHandle:
    """Completion of an enqueued NCCL all-reduce: wait(timeout) polls a CUDA event, never blocks forever."""

    def __init__(self, owner, event, array):
        self._owner = owner
        self._event = event
        self.array = array

    def done(self) -> bool:
        return self._event.done

    def wait(self, timeout: float = 300.0):
        deadline = time.monotonic() + timeout
        delay = 1e-5
        while not self._event.done:
            if time.monotonic() > deadline:
                self._owner.abort()
                raise TimeoutError(f"NCCL all-reduce on rank {self._owner.rank} did not complete within "
                                   f"{timeout:.0f} s: another rank is dead or stuck; the communicator was "
                                   "aborted, restart the worker group")
            time.sleep(delay)
            delay = min(delay * 2, 1e-3)
        self._owner.check()
        return self.array


class NcclAllreduce:
    """One NCCL communicator for this process's current CUDA device.

    Construction is collective: every rank must build it (ncclCommInitRank blocks until all ranks have
    joined; the unique-id broadcast, which carries the transport's timeout, is where a missing rank shows).
    """

    _DTYPES = {"float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64",
               "int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "uint32": "NCCL_UINT32",
               "int64": "NCCL_INT64", "uint64": "NCCL_UINT64"}
    _OPS = {"sum": "NCCL_SUM", "prod": "NCCL_PROD", "max": "NCCL_MAX", "min": "NCCL_MIN", "avg": "NCCL_AVG"}

    def __init__(self, comm_rank: int, comm_size: int, unique_id_bcast_fn):
        if not 0 <= comm_rank < comm_size:
            raise ValueError(f"NCCL: rank {comm_rank} is outside a world of size {comm_size}")
        self._cupy, self._nccl = _nccl()
        self.rank, self.size = int(comm_rank), int(comm_size)
        uid = self._nccl.get_unique_id() if self.rank == 0 else None
        uid = unique_id_bcast_fn(uid)
        if uid is None:
            raise RuntimeError("NCCL: unique_id_bcast_fn returned None; it must return rank 0's unique id on "
                               "every rank (e.g. lambda u: comm.broadcast_obj(u, root=0))")
        self.device = self._cupy.cuda.Device()
        self._comm = self._communicator(uid)
        self._closed = False

    def _communicator(self, uid):
        """cupy >= 13 takes the unique id as bytes, older versions as a tuple of (signed) chars; the id
        may arrive in either form (it crossed msgpack), so offer the other on a TypeError."""
        as_bytes = uid if isinstance(uid, bytes) else bytes(int(v) & 0xFF for v in uid)
        as_tuple = tuple(v - 256 if v > 127 else v for v in as_bytes)
        for form in (as_bytes, as_tuple):
            try:
                return self._nccl.NcclCommunicator(self.size, form, self.rank)
            except TypeError:
                continue
        raise TypeError(f"NCCL: this cupy's NcclCommunicator accepts neither form of the unique id "
                        f"({type(uid).__name__} of {len(as_bytes)} bytes)")

    def _codes(self, array, op):
        name = array.dtype.name
        if name not in self._DTYPES:
            raise TypeError(f"NCCL all-reduce does not support dtype {name}; supported: {sorted(self._DTYPES)}")
        if op not in self._OPS:
            raise ValueError(f"NCCL all-reduce op must be one of {sorted(self._OPS)}, got {op!r}")
        op_code = getattr(self._nccl, self._OPS[op], None)
        return getattr(self._nccl, self._DTYPES[name]), op_code

    def allreduce_async(self, array, op: str = "sum", out=None, stream=None) -> NcclHandle:
        """Enqueue the all-reduce of a contiguous cupy array on `stream` (default: current); in place unless
        `out` is given. Returns a handle; GPU work queued after it on the same stream sees the result."""
        if self._closed:
            raise RuntimeError("NCCL communicator is closed")
        if type(array).__module__.split(".", 1)[0] != "cupy":
            raise TypeError(f"NcclAllreduce works on cupy arrays, got {type(array).__name__}; use the host "
                            "all-reduce for numpy arrays")
        if not array.flags.c_contiguous:
            raise ValueError("NCCL all-reduce needs a C-contiguous array (pack the bucket first)")
        out = array if out is None else out
        if out.shape != array.shape or out.dtype != array.dtype or not out.flags.c_contiguous:
            raise ValueError("NCCL all-reduce: out must be a C-contiguous array of the input's shape and dtype")
        dtype_code, op_code = self._codes(array, op)
        emulate_avg = op == "avg" and op_code is None          # NCCL < 2.10: sum, then scale on the GPU
        if emulate_avg:
            op_code = self._nccl.NCCL_SUM
        stream = stream or self._cupy.cuda.get_current_stream()
        self._comm.allReduce(array.data.ptr, out.data.ptr, array.size, dtype_code, op_code, stream.ptr)
        if emulate_avg:
            with stream:
                out /= self.size
        event = self._cupy.cuda.Event(disable_timing=True)
        event.record(stream)
        return NcclHandle(self, event, out)

    def allreduce(self, array, op: str = "sum", out=None, stream=None, timeout: float = 300.0):
        """Blocking all-reduce (waits for completion, with a timeout). Returns the result array."""
        return self.allreduce_async(array, op, out, stream).wait(timeout)

    def check(self):
        """Raise if NCCL reported an asynchronous error (a peer failed, a network error)."""
        self._comm.check_async_error()

    def abort(self):
        if not self._closed:
            self._closed = True
            self._comm.abort()

    def close(self):
        if not self._closed:
            self._closed = True
            self._comm.destroy()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
