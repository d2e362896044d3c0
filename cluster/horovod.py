"""Horovod's PyTorch API (`horovod.torch`) on the job's communicator, for ported scripts.

    import cluster.horovod as hvd               # was: import horovod.torch as hvd
    hvd.init()
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

Run with `dptrain launch -n N train.py` (where Horovod has `horovodrun -np N python train.py`).

Why: a Horovod script differs from a DDP one in where the reduction lives: in the optimizer
(`step()` first waits for the averaged gradients) instead of in a model wrapper.  Without this
module such a script has to be restructured around `DistributedDataParallel`; with it, only the
import changes.  `cluster.init()`, `DistributedDataParallel` and `comm` remain the native interface.

Differences from Horovod, all deliberate or documented in the README: gradients are reduced in
`synchronize()` (what `step()` calls), fused into one buffer per dtype, not overlapped with
backward on a background thread; objects travel as msgpack, never pickle; `join()` is a
barrier (ranks must reach it after the same number of steps); collectives on tensors return
results without autograd history; process sets, Adasum and elastic mode are not available.
"""
from __future__ import annotations

import contextlib
import importlib.util
import socket
import time
import warnings

import numpy as np

from engine.backend import get_array_module
from engine.tensor import Tensor

__all__ = ["init", "shutdown", "is_initialized", "size", "rank", "local_size", "local_rank", "cross_size",
           "cross_rank", "is_homogeneous", "mpi_enabled", "mpi_built", "gloo_enabled", "gloo_built",
           "nccl_built", "cuda_built", "rocm_built", "mpi_threads_supported", "Average", "Sum", "Min",
           "Max", "Product", "Adasum", "Compression", "DistributedOptimizer", "broadcast_parameters",
           "broadcast_optimizer_state", "broadcast_object", "allgather_object", "allreduce", "allreduce_",
           "allreduce_async", "allreduce_async_", "grouped_allreduce", "grouped_allreduce_", "allgather",
           "allgather_async", "broadcast", "broadcast_", "broadcast_async", "broadcast_async_",
           "reducescatter", "alltoall", "synchronize", "poll", "barrier", "join", "SyncBatchNorm"]

# Horovod's reduce ops, as the communicator's names
Average, Sum, Min, Max, Product, Adasum = "mean", "sum", "min", "max", "product", "adasum"

_state = {"comm": None, "cross_rank": 0, "cross_size": 1, "homogeneous": True}


# ------------------------------------------------------------------------------- the job
def init(comm=None, process_sets=None):
    """Join the job's communicator (the launcher chose MPI or ZeroMQ); calling it again is a no-op.
    `comm` may be a dptrain Communicator; Horovod's mpi4py communicators and process sets are not
    supported."""
    if process_sets not in (None, "dynamic") and process_sets != []:
        raise NotImplementedError("hvd.init(process_sets=...): process sets are not supported; every "
                                  "collective runs over the whole job")
    if comm is not None and not hasattr(comm, "allreduce_async"):
        raise NotImplementedError("hvd.init(comm=...) takes a dptrain Communicator (or None), not an mpi4py "
                                  "communicator or a list of ranks")
    if _state["comm"] is not None and not _state["comm"].closed and comm in (None, _state["comm"]):
        return
    if comm is None:
        from . import init as cluster_init
        comm = cluster_init().comm
    _state["comm"] = comm
    # which host each rank is on: Horovod's cross_rank is this host's index among the job's hosts
    hosts = comm.allgather_obj(socket.gethostname()) if comm.size > 1 else [socket.gethostname()]
    order = list(dict.fromkeys(hosts))
    counts = [hosts.count(h) for h in order]
    _state.update(cross_rank=order.index(hosts[comm.rank]), cross_size=len(order),
                  homogeneous=len(set(counts)) == 1)


def _c():
    c = _state["comm"]
    if c is None or c.closed:
        raise ValueError("Horovod has not been initialized; use hvd.init().")   # Horovod's message
    return c


def shutdown():
    """Close the communicator (Horovod's shutdown); hvd.init() may be called again afterwards."""
    c, _state["comm"] = _state["comm"], None
    if c is not None:
        import comm as comm_pkg
        if getattr(comm_pkg, "_default", None) is c:
            comm_pkg.finalize()
        else:
            c.close()


def is_initialized():
    return _state["comm"] is not None and not _state["comm"].closed


def size():
    return _c().size


def rank():
    return _c().rank


def local_size():
    return _c().local_size


def local_rank():
    return _c().local_rank


def cross_size():
    """Number of hosts in the job."""
    _c()
    return _state["cross_size"]


def cross_rank():
    """This host's index among the job's hosts (in rank order)."""
    _c()
    return _state["cross_rank"]


def is_homogeneous():
    """True when every host runs the same number of ranks."""
    _c()
    return _state["homogeneous"]


def mpi_enabled():
    return _c().backend == "mpi"


def mpi_built():
    return importlib.util.find_spec("mpi4py") is not None


def gloo_enabled():
    return False


def gloo_built():
    return False


def nccl_built():
    from comm.nccl import nccl_available
    return 1 if nccl_available() else 0


def cuda_built():
    return importlib.util.find_spec("cupy") is not None


def rocm_built():
    return False


def mpi_threads_supported():
    return mpi_enabled()


# ------------------------------------------------------------------------------- compression
class _NoneCompressor:
    @staticmethod
    def compress(arr):
        return arr, None

    @staticmethod
    def decompress(arr, ctx):
        return arr


class _FP16Compressor:
    """Floating arrays travel as float16 and come back in their own dtype (Horovod's fp16)."""

    @staticmethod
    def compress(arr):
        xp = get_array_module(arr)
        if arr.dtype.kind == "f" and arr.dtype != xp.float16:
            return arr.astype(xp.float16), arr.dtype
        return arr, None

    @staticmethod
    def decompress(arr, ctx):
        return arr if ctx is None else arr.astype(ctx)


class Compression:
    none = _NoneCompressor
    fp16 = _FP16Compressor


# ------------------------------------------------------------------------------- collectives on tensors
def _arr(t):
    return t.data if isinstance(t, Tensor) else t


def _like(t, arr):
    return Tensor._wrap(arr) if isinstance(t, Tensor) else arr


def _reduce_op(average, op):
    if average is not None and op is not None:
        raise ValueError("The op parameter supersedes average. Please provide only one of them.")
    if op is None:
        op = Sum if average is False else Average
    if op == Adasum:
        raise NotImplementedError("op=hvd.Adasum is not supported; use hvd.Average or hvd.Sum")
    if op == Product:
        raise NotImplementedError("op=hvd.Product is not supported; use hvd.Sum, hvd.Average, hvd.Min or hvd.Max")
    if op not in (Average, Sum, Min, Max):
        raise ValueError(f"unknown reduce op {op!r}")
    return op


def _check_process_set(process_set):
    if process_set is not None:
        raise NotImplementedError("process_set=...: process sets are not supported; collectives run over "
                                  "the whole job")


class _Handle:
    """What the *_async calls return: synchronize(handle) finishes the collective and returns its result."""

    def __init__(self, finish):
        self._finish = finish
        self._result = None
        self._done = False

    def result(self):
        if not self._done:
            self._result, self._done = self._finish(), True
        return self._result


def _allreduce_start(tensor, out_arr, op, compression, prescale_factor, postscale_factor):
    """Reduce out_arr (a private copy of tensor's array, or the array itself for the _ variants)."""
    c = _c()
    if out_arr.dtype.kind != "f" and op == Average:
        if prescale_factor != 1.0 or postscale_factor != 1.0:
            raise TypeError("prescale/postscale factors need a floating tensor")
        wire_op = "sum"          # an integer mean cannot be held in place: sum, then floor-divide
    else:
        wire_op = op
    if prescale_factor != 1.0:
        out_arr *= out_arr.dtype.type(prescale_factor)
    wire, ctx = compression.compress(out_arr)
    if wire is not out_arr and op == Average:
        # a 16-bit sum can overflow where the mean does not: divide first, then add
        wire *= wire.dtype.type(1.0 / c.size)
        wire_op = "sum"
    handle = c.allreduce_async(wire, op=wire_op)

    def finish():
        result = handle.wait()
        if result is not wire:
            wire[...] = result
        if wire is not out_arr:
            out_arr[...] = compression.decompress(wire, ctx)
        xp = get_array_module(out_arr)
        if out_arr.dtype.kind != "f" and op == Average:
            xp.floor_divide(out_arr, c.size, out=out_arr)
        if postscale_factor != 1.0:
            xp.multiply(out_arr, out_arr.dtype.type(postscale_factor), out=out_arr)
        return _like(tensor, out_arr)
    return _Handle(finish)


def allreduce_async(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                    process_set=None, compression=Compression.none):
    _check_process_set(process_set)
    arr = _arr(tensor)
    xp = get_array_module(arr)
    return _allreduce_start(tensor, xp.array(arr, copy=True, order="C"), _reduce_op(average, op), compression,
                            prescale_factor, postscale_factor)


def allreduce_async_(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                     process_set=None):
    _check_process_set(process_set)
    arr = _arr(tensor)
    if not arr.flags.c_contiguous:
        raise ValueError("allreduce_: the tensor must be contiguous to be reduced in place")
    return _allreduce_start(tensor, arr, _reduce_op(average, op), Compression.none, prescale_factor,
                            postscale_factor)


def allreduce(tensor, average=None, name=None, compression=Compression.none, op=None, prescale_factor=1.0,
              postscale_factor=1.0, process_set=None):
    """The reduction of `tensor` over all ranks, as a new tensor (Average unless op/average say otherwise)."""
    return allreduce_async(tensor, average, name, op, prescale_factor, postscale_factor, process_set,
                           compression).result()


def allreduce_(tensor, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
               process_set=None):
    """In place; returns `tensor`."""
    allreduce_async_(tensor, average, name, op, prescale_factor, postscale_factor, process_set).result()
    return tensor


def grouped_allreduce(tensors, average=None, name=None, compression=Compression.none, op=None,
                      prescale_factor=1.0, postscale_factor=1.0, process_set=None):
    handles = [allreduce_async(t, average, name, op, prescale_factor, postscale_factor, process_set, compression)
               for t in tensors]
    return [h.result() for h in handles]


def grouped_allreduce_(tensors, average=None, name=None, op=None, prescale_factor=1.0, postscale_factor=1.0,
                       process_set=None):
    handles = [allreduce_async_(t, average, name, op, prescale_factor, postscale_factor, process_set)
               for t in tensors]
    return [h.result() for h in handles]


def synchronize(handle):
    """Wait for an *_async collective and return its result."""
    if not isinstance(handle, _Handle):
        raise ValueError(f"synchronize: {handle!r} is not a handle returned by an hvd.*_async call")
    return handle.result()


def poll(handle):
    """True once the collective can be synchronized without waiting (here: always, the communicator
    finishes it on demand)."""
    if not isinstance(handle, _Handle):
        raise ValueError(f"poll: {handle!r} is not a handle returned by an hvd.*_async call")
    return True


def _rows_of_every_rank(arr, what):
    """Every rank's first-dimension length (the other dimensions must agree)."""
    c = _c()
    shapes = c.allgather_obj([int(s) for s in arr.shape] + [arr.dtype.str])
    tails = {tuple(s[1:-1]) for s in shapes}
    kinds = {s[-1] for s in shapes}
    if arr.ndim == 0 or len(tails) > 1 or len({len(s) for s in shapes}) > 1 or len(kinds) > 1:
        detail = ", ".join(f"rank {r}: {tuple(s[:-1])} {np.dtype(s[-1]).name}" for r, s in enumerate(shapes))
        raise ValueError(f"{what}: tensors must have at least one dimension and agree in every dimension but "
                         f"the first and in dtype across ranks ({detail})")
    return [s[0] for s in shapes]


def _gather_rows(arr, rows):
    """Every rank's `arr` (different first dimensions allowed), stacked padded: (size, max rows, ...)."""
    c = _c()
    xp = get_array_module(arr)
    padded = xp.zeros((max(rows),) + tuple(arr.shape[1:]), dtype=arr.dtype)
    padded[:arr.shape[0]] = arr
    return c.allgather(padded)


def allgather(tensor, name=None, process_set=None):
    """Every rank's tensor concatenated along the first dimension (which may differ between ranks)."""
    return allgather_async(tensor, name, process_set).result()


def allgather_async(tensor, name=None, process_set=None):
    _check_process_set(process_set)
    arr = _arr(tensor)
    rows = _rows_of_every_rank(arr, "allgather")
    xp = get_array_module(arr)
    stacked = _gather_rows(arr, rows)
    return _Handle(lambda: _like(tensor, xp.concatenate([stacked[r, :n] for r, n in enumerate(rows)])))


def broadcast_async_(tensor, root_rank, name=None, process_set=None):
    _check_process_set(process_set)
    arr = _arr(tensor)
    out = _c().broadcast(arr, root=root_rank)
    if out is not arr:
        arr[...] = out
    return _Handle(lambda: tensor)


def broadcast_async(tensor, root_rank, name=None, process_set=None):
    _check_process_set(process_set)
    arr = _arr(tensor)
    copy = get_array_module(arr).array(arr, copy=True, order="C")
    copy = _c().broadcast(copy, root=root_rank)
    return _Handle(lambda: _like(tensor, copy))


def broadcast(tensor, root_rank, name=None, process_set=None):
    """root_rank's tensor on every rank, as a new tensor."""
    return broadcast_async(tensor, root_rank, name, process_set).result()


def broadcast_(tensor, root_rank, name=None, process_set=None):
    """In place; returns `tensor`."""
    return broadcast_async_(tensor, root_rank, name, process_set).result()


def _even_split(n, parts):
    base, extra = divmod(n, parts)
    return [base + (1 if r < extra else 0) for r in range(parts)]


def reducescatter(tensor, name=None, compression=Compression.none, op=Average, process_set=None,
                  prescale_factor=1.0, postscale_factor=1.0):
    """This rank's block of the reduction, split along the first dimension (the first ranks get one
    row more when it does not divide).  Runs as an all-reduce, then keeps the rank's rows."""
    reduced = allreduce(tensor, name=name, compression=compression, op=op, prescale_factor=prescale_factor,
                        postscale_factor=postscale_factor, process_set=process_set)
    arr = _arr(reduced)
    if arr.ndim == 0:
        raise ValueError("reducescatter: the tensor needs at least one dimension")
    counts = _even_split(arr.shape[0], size())
    start = sum(counts[:rank()])
    return _like(tensor, arr[start:start + counts[rank()]].copy())


def alltoall(tensor, splits=None, name=None, process_set=None):
    """Rows `splits[r]` of this rank's tensor go to rank r; returns what every rank sent here, in rank
    order (with `splits`: also how many rows came from each rank, as Horovod).  Runs as an all-gather
    (every rank receives every block), so it suits small tensors."""
    _check_process_set(process_set)
    c = _c()
    arr = _arr(tensor)
    rows = _rows_of_every_rank(arr, "alltoall")
    mine = _even_split(arr.shape[0], c.size) if splits is None else [int(s) for s in np.asarray(_arr(splits))]
    if len(mine) != c.size or min(mine) < 0 or sum(mine) != arr.shape[0]:
        raise ValueError(f"alltoall: splits {mine} must have {c.size} non-negative entries summing to the first "
                         f"dimension {arr.shape[0]}")
    every_split = c.allgather(np.asarray(mine, dtype=np.int64))
    stacked = _gather_rows(arr, rows)
    xp = get_array_module(arr)
    received = [int(every_split[src, c.rank]) for src in range(c.size)]
    blocks = []
    for src in range(c.size):
        start = int(every_split[src, :c.rank].sum())
        blocks.append(stacked[src, start:start + received[src]])
    out = _like(tensor, xp.concatenate(blocks))
    if splits is None:
        return out
    recv = np.asarray(received, dtype=np.int32)
    return out, (Tensor._wrap(recv) if isinstance(tensor, Tensor) else recv)


def barrier(process_set=None):
    _check_process_set(process_set)
    _c().barrier()


def join(device=-1):
    """Wait for every rank; returns the rank that arrived last.  Unlike Horovod, ranks must call it
    after the same number of steps: a rank that joins early does not answer the others' gradient
    reductions (for uneven data use `with model.join():` around a DistributedDataParallel loop)."""
    c = _c()
    t = time.perf_counter()
    c.barrier()
    waited = c.allgather_obj(time.perf_counter() - t)
    return int(np.argmin(waited))        # whoever waited least arrived last (no clocks compared)


# ------------------------------------------------------------------------------- objects and state
def broadcast_object(obj, root_rank=0, name=None, process_set=None):
    """root_rank's object on every rank.  msgpack-able objects only (numbers, strings, bytes, lists,
    dicts): nothing is pickled.  Send arrays with broadcast()."""
    _check_process_set(process_set)
    return _c().broadcast_obj(obj, root=root_rank)


def allgather_object(obj, name=None, process_set=None):
    """Every rank's object, in rank order (msgpack-able objects only)."""
    _check_process_set(process_set)
    return _c().allgather_obj(obj)


def broadcast_parameters(params, root_rank):
    """Overwrite tensors in place with root_rank's: `model.state_dict()` (sorted by name, as Horovod)
    or `model.named_parameters()` / a list of (name, tensor) pairs or tensors."""
    c = _c()
    if isinstance(params, dict):
        items = sorted(params.items())
    else:
        try:
            items = [p if isinstance(p, tuple) else (None, p) for p in params]
        except TypeError:
            raise ValueError(f"invalid params of type: {type(params).__name__}") from None
    for name, t in items:
        arr = _arr(t)
        if not hasattr(arr, "dtype") or not hasattr(arr, "shape"):
            raise ValueError(f"broadcast_parameters: {name or 'an entry'} is a {type(t).__name__}, not a tensor")
        out = c.broadcast(arr, root=root_rank)
        if out is not arr:
            arr[...] = out


def _split_arrays(obj, arrays):
    """obj with every array replaced by a placeholder naming its index, shape and dtype (for msgpack)."""
    if isinstance(obj, dict):
        return {str(k): _split_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_split_arrays(v, arrays) for v in obj]
    if isinstance(obj, Tensor):
        obj = obj.data
    if hasattr(obj, "shape") and hasattr(obj, "dtype") and getattr(obj, "ndim", 0) > 0:
        arrays.append(obj)
        return {"__array__": len(arrays) - 1, "shape": list(obj.shape), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic) or (hasattr(obj, "item") and getattr(obj, "ndim", None) == 0):
        return obj.item()
    return obj


def _join_arrays(obj, arrays):
    if isinstance(obj, dict):
        if "__array__" in obj and set(obj) == {"__array__", "shape", "dtype"}:
            return arrays[obj["__array__"]]
        return {k: _join_arrays(v, arrays) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_join_arrays(v, arrays) for v in obj]
    return obj


def broadcast_optimizer_state(optimizer, root_rank):
    """Give every rank root_rank's optimizer state and hyper-parameters (e.g. after loading a
    checkpoint on rank 0 only).  Arrays travel with broadcast(), the rest as msgpack."""
    c = _c()
    arrays = []
    skeleton = _split_arrays(optimizer.state_dict(), arrays) if c.rank == root_rank else None
    skeleton = c.broadcast_obj(skeleton, root=root_rank)
    if c.rank != root_rank:
        arrays = []
        _collect_placeholders(skeleton, arrays)
    for a in arrays:
        c.broadcast(a, root=root_rank)
    if c.rank != root_rank:
        state = _join_arrays(skeleton, arrays)
        state["state"] = {int(k): v for k, v in state["state"].items()}
        optimizer.load_state_dict(state)


def _collect_placeholders(obj, arrays):
    """Allocate, in index order, the arrays a skeleton from _split_arrays names."""
    found = []

    def walk(o):
        if isinstance(o, dict):
            if "__array__" in o and set(o) == {"__array__", "shape", "dtype"}:
                found.append(o)
                return
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)
    walk(obj)
    for o in sorted(found, key=lambda o: o["__array__"]):
        arrays.append(np.empty(o["shape"], dtype=np.dtype(o["dtype"])))


# ------------------------------------------------------------------------------- the optimizer
class _DistributedOptimizer:
    """Placed in front of the wrapped optimizer's class (Horovod's construction), so the result is
    still an instance of that class for isinstance, schedulers and checkpoints."""

    def _hvd_setup(self, named_parameters, compression, backward_passes_per_step, op, gradient_predivide_factor):
        params = [p for g in self.param_groups for p in g["params"]]
        if named_parameters is not None:
            named = list(named_parameters)
            if any(not isinstance(x, tuple) or len(x) != 2 for x in named):
                raise ValueError("named_parameters should be a sequence of tuples (name, parameter), usually "
                                 "produced by model.named_parameters().")
            names = [k for k, _ in named]
            dups = sorted({k for k in names if names.count(k) > 1})
            if dups:
                raise ValueError(f"Parameter names in named_parameters must be unique. Found duplicates: "
                                 f"{', '.join(dups)}")
            unnamed = {id(p) for p in params} - {id(v) for _, v in named}
            if unnamed:
                raise ValueError(f"named_parameters was specified, but {len(unnamed)} of the optimizer's "
                                 f"parameters were not named (pass model.named_parameters() of the model the "
                                 f"optimizer was built from)")
        if int(backward_passes_per_step) < 1:
            raise ValueError(f"backward_passes_per_step must be >= 1, got {backward_passes_per_step}")
        self._compression = compression
        self.op = op
        self.gradient_predivide_factor = float(gradient_predivide_factor)
        self.backward_passes_per_step = int(backward_passes_per_step)
        self._hvd_params = [p for p in params if p.requires_grad]
        self._allreduce_delay = {id(p): self.backward_passes_per_step for p in self._hvd_params}
        self._hvd_touched = set()          # parameters that got a gradient since the last synchronize
        self._hvd_flat = {}                # dtype -> the fused buffer, kept across steps
        self._synchronized = False
        self._should_synchronize = True
        self._hvd_hooks = []
        if size() > 1:
            self._hvd_hooks = [p.register_post_accumulate_grad_hook(self._hvd_on_grad) for p in self._hvd_params]

    def _hvd_on_grad(self, p):
        k = id(p)
        if self._allreduce_delay[k] <= 0:
            raise AssertionError("Gradients were computed more than backward_passes_per_step times before call "
                                 "to step(). Increase backward_passes_per_step to accumulate gradients locally.")
        self._allreduce_delay[k] -= 1
        self._hvd_touched.add(k)

    def set_backward_passes_per_step(self, passes):
        self.backward_passes_per_step = int(passes)
        for k in self._allreduce_delay:
            self._allreduce_delay[k] = self.backward_passes_per_step

    def _hvd_buffer(self, dtype, numel, xp):
        key = (np.dtype(dtype).str, xp.__name__)
        buf = self._hvd_flat.get(key)
        if buf is None or buf.size != numel:
            c = _c()
            buf = c.alloc(numel, dtype) if xp is np and hasattr(c, "alloc") else xp.zeros(numel, dtype=dtype)
            self._hvd_flat[key] = buf
        return buf

    def synchronize(self):
        """Average (op) every parameter's gradient over the ranks.  A parameter without a gradient on
        this rank counts as zeros and gets the result; one without a gradient on every rank keeps None.  step() calls this unless inside skip_synchronize()."""
        c = _c()
        if c.size > 1:
            groups = {}
            for p in self._hvd_params:
                groups.setdefault((p.data.dtype.str, get_array_module(p.data).__name__), []).append(p)
            for (dtype, _), ps in groups.items():
                self._hvd_reduce(c, ps, np.dtype(dtype))
        for k in self._allreduce_delay:
            self._allreduce_delay[k] = self.backward_passes_per_step
        self._hvd_touched.clear()
        self._synchronized = True

    def _hvd_reduce(self, c, ps, dtype):
        xp = get_array_module(ps[0].data)
        total = sum(p.size for p in ps)
        # one more slot per parameter: 1 where this rank has its gradient, so a parameter that no
        # rank has a gradient for keeps .grad None (as in one process) instead of zeros
        flat = self._hvd_buffer(dtype, total + len(ps), xp)
        off = 0
        for i, p in enumerate(ps):
            n = p.size
            if p.grad is None:
                flat[off:off + n] = 0
            else:
                flat[off:off + n] = p.grad.data.reshape(-1)
            flat[total + i] = 0 if p.grad is None else 1
            off += n
        op, f, compressed = self.op, self.gradient_predivide_factor, self._compression is not Compression.none
        if op == Average and (f != 1.0 or compressed):
            # Horovod's split of the average: divide by f before the sum, multiply by f/size after
            # (compressed: all of it before, as a 16-bit sum can overflow where the mean does not)
            pre, post = (1.0 / (f * c.size), f) if compressed else (1.0 / f, f / c.size)
            flat *= dtype.type(pre)
            _sum_with(flat, self._compression)
            flat *= dtype.type(post)
        elif compressed:
            _sum_with(flat, self._compression)
        else:
            out = c.allreduce(flat, op=op)
            if out is not flat:
                flat[...] = out
        used = flat[total:] if xp is np else flat[total:].get()
        off = 0
        for i, p in enumerate(ps):
            n = p.size
            g = flat[off:off + n].reshape(p.shape)
            off += n
            if p.grad is not None:
                p.grad.data[...] = g
            elif used[i] != 0:
                p.grad = Tensor._wrap(g.copy())

    @contextlib.contextmanager
    def skip_synchronize(self):
        """`optimizer.synchronize(); clip...; with optimizer.skip_synchronize(): optimizer.step()`."""
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure=None):
        if self._should_synchronize:
            if self._synchronized:
                warnings.warn("optimizer.step() called without optimizer.skip_synchronize() context after "
                              "optimizer.synchronize(). This can cause training slowdown. You may want to "
                              "consider using optimizer.skip_synchronize() context if you use "
                              "optimizer.synchronize() in your code.", stacklevel=2)
            self.synchronize()
        self._synchronized = False
        return super().step(closure)

    def zero_grad(self, *args, **kwargs):
        if self._hvd_touched:
            raise AssertionError("optimizer.zero_grad() was called after loss.backward() but before "
                                 "optimizer.step() or optimizer.synchronize(). This is prohibited as it can "
                                 "cause a race condition.")
        return super().zero_grad(*args, **kwargs)

    def load_state_dict(self, *args, **kwargs):
        self._hvd_touched.clear()
        self._synchronized = False
        self._should_synchronize = True
        self.set_backward_passes_per_step(self.backward_passes_per_step)
        return super().load_state_dict(*args, **kwargs)


def _sum_with(flat, compression):
    """Sum `flat` over the ranks, in place, travelling in the compressor's format."""
    wire, ctx = compression.compress(flat)
    out = _c().allreduce(wire, op="sum")
    if out is not flat:
        flat[...] = compression.decompress(out, ctx)


def DistributedOptimizer(optimizer, named_parameters=None, compression=Compression.none,
                         backward_passes_per_step=1, op=Average, gradient_predivide_factor=1.0, num_groups=0,
                         groups=None, sparse_as_dense=False, process_set=None):
    """The same optimizer (same class, parameter groups and state) whose step() first averages the
    gradients over all ranks.  Gradients accumulate locally for backward_passes_per_step backward
    passes before a step (scale the loss yourself, as with Horovod)."""
    from engine.optim import Optimizer
    _c()
    _check_process_set(process_set)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"hvd.DistributedOptimizer wraps an engine.optim optimizer, got {type(optimizer).__name__}"
                        + (" (a Keras model averages its gradients with cluster.keras.distribute)"
                           if type(optimizer).__module__.startswith("engine.keras") else ""))
    if isinstance(optimizer, _DistributedOptimizer):
        raise ValueError("this optimizer is already a hvd.DistributedOptimizer")
    if op == Adasum:
        raise NotImplementedError("op=hvd.Adasum is not supported; use hvd.Average or hvd.Sum")
    if op not in (Average, Sum):
        raise ValueError(f"DistributedOptimizer: op must be hvd.Average or hvd.Sum, got {op!r}")
    if gradient_predivide_factor != 1.0 and op != Average:
        raise ValueError("gradient_predivide_factor not supported with op != Average")
    # num_groups / groups only change how Horovod batches its messages: all gradients of one dtype
    # already travel in one buffer here, so they change nothing.
    cls = type(type(optimizer).__name__, (_DistributedOptimizer, type(optimizer)),
               {"__module__": type(optimizer).__module__})
    wrapped = cls.__new__(cls)
    wrapped.__dict__.update(optimizer.__dict__)          # same param_groups and state objects
    wrapped._hvd_setup(named_parameters, compression, backward_passes_per_step, op, gradient_predivide_factor)
    return wrapped


def SyncBatchNorm(num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True):
    """Batch normalization over the global batch (Horovod's / torch's SyncBatchNorm): inputs of shape
    (N, C), (N, C, L) or (N, C, H, W)."""
    from engine import nn
    from .sync_batchnorm import SyncBatchNorm as _Sync
    bn = nn.BatchNorm2d(num_features, eps=eps, momentum=momentum, affine=affine,
                        track_running_stats=track_running_stats)
    layer = _Sync(bn, _c())
    layer._expected_ndim = (2, 3, 4)
    return layer
