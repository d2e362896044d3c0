"""DistributedDataParallel: average gradients across workers while backward runs.

Parameters are grouped into buckets of about `bucket_cap_mb`, in reverse
registration order (the order backward produces their gradients).  A gradient
hook on each parameter copies its gradient into its bucket's flat buffer; when a
bucket is complete its all-reduce is started on the communicator's background
thread, so communication overlaps the rest of backward.  Buckets are launched
strictly in index order so every rank issues the same collectives in the same
order.  When the last bucket is launched the reduction is finished inside that
hook: by the time `loss.backward()` returns, every `.grad` holds the average.

Without a communicator of size > 1 this wrapper is a transparent pass-through.
"""
from __future__ import annotations

import contextlib
import os
import time
import warnings

import numpy as np

import comm.arrays as arrays
from engine.backend import get_array_module
from engine.tensor import Tensor


class DDPError(RuntimeError):
    pass


class _Bucket:
    """A contiguous flat buffer holding the gradients of a few parameters."""

    def __init__(self, index, params, alloc):
        self.index = index
        self.params = params
        self.offsets = []
        off = 0
        for p in params:
            self.offsets.append(off)
            off += p.size
        self.numel = off
        self.flat = alloc(off, params[0].dtype, get_array_module(params[0].data))
        self.filled = 0
        self.seen = set()
        self.handle = None
        self.scale = 1.0            # multiply by this after the wait (sums not divided inside the ring)
        self.param_flat = None      # ZeRO: the parameters' storage, same layout as `flat`
        self.bounds = None          # ZeRO: shard_bounds(numel)
        self.launched_at = None
        self.half = None            # compression: the 16-bit copy travelling this step (None: none)
        self.wire = None            # its buffer, kept across steps

    def reset(self):
        self.filled = 0
        self.seen.clear()
        self.handle = None
        self.half = None


class _Done:
    """The handle of a reduction that already ran on this thread."""

    @staticmethod
    def wait(timeout=None):
        return None


_DONE = _Done()


class DistributedDataParallel:
    """Wrap a module so that backward averages its gradients over `comm`.

    comm: a comm.Communicator (None: `comm.init()`).  bucket_cap_mb: bucket size.
    broadcast_buffers: re-send buffers (BatchNorm statistics) from rank 0 every
    forward so they stay in step even without SyncBatchNorm.
    find_unused_parameters: walk the output graph each forward and treat parameters
    that took no part as having a zero gradient (otherwise a missing gradient is an error).
    overlap: True starts each bucket's reduction from the gradient hooks while backward
    runs (on the communicator's thread); False runs them all on this thread once the last
    gradient is in; "auto" overlaps unless every CPU core is already computing (see
    _resolve_overlap).
    """

    def __init__(self, module, comm=None, bucket_cap_mb=25, broadcast_buffers=True,
                 find_unused_parameters=False, average=True, timeout=None, overlap="auto",
                 device_ids=None, output_device=None, compression=None, **torch_kw):
        # torch's DistributedDataParallel(model, device_ids=[local_rank], ...): the module already
        # lives on its device here, so device_ids/output_device only have to agree with it.
        for k in ("gradient_as_bucket_view", "static_graph"):    # performance hints: nothing to do
            torch_kw.pop(k, None)
        if torch_kw:
            raise TypeError(f"DistributedDataParallel: unexpected arguments {sorted(torch_kw)}")
        if comm is None:
            import comm as comm_pkg
            comm = comm_pkg.init()
        self.module = module
        self.comm = comm
        self.size = comm.size
        self.rank = comm.rank
        self.bucket_cap_bytes = int(bucket_cap_mb * 1024 * 1024)
        self.broadcast_buffers = broadcast_buffers
        self.find_unused_parameters = find_unused_parameters
        self.average = average
        self.timeout = timeout
        self.compression = _compression(compression)
        self._sync_enabled = True
        self._in_flight = False
        self._join = None           # join(): the context's settings while one is active (cluster/join.py)
        self._zero = None           # the ZeroRedundancyOptimizer over this model (join() drives its step)
        self._divisor = self.size   # gradients are divided by this (join: maybe the ranks still training)
        self._buffer_root = 0       # the rank whose buffers every forward broadcasts
        self.reductions = 0         # completed gradient reductions (ZeRO: are the shards fresh?)
        self.events = []            # (what, bucket index, perf_counter) for the last step: tests + profiling
        self.params = [p for p in module.parameters() if p.requires_grad]
        self._sync_module_state()
        self.overlap = self._resolve_overlap(overlap)
        self.buckets = self._build_buckets()
        self._where = {}
        for b in self.buckets:
            for i, p in enumerate(b.params):
                self._where[id(p)] = (b, i)
        self._next_launch = 0
        self._handles = []
        self._sharded = False       # ZeroRedundancyOptimizer: reduce-scatter instead of all-reduce
        self._nccl = self._gpu_allreduce()
        if self.size > 1:
            for p in self.params:
                self._handles.append(p.register_post_accumulate_grad_hook(self._on_grad_ready))

    # ------------------------------------------------------------ setup
    def _sync_module_state(self, root=0):
        """Start every rank from rank `root`'s parameters and buffers."""
        if self.size == 1:
            return
        for name, t in list(self.module.state_dict().items()):
            arr = t.data if isinstance(t, Tensor) else t
            if not isinstance(arr, np.ndarray) and not hasattr(arr, "__cuda_array_interface__"):
                continue
            if not arr.flags.c_contiguous:
                raise DDPError(f"parameter/buffer {name!r} is not contiguous; cannot broadcast it in place")
            self.comm.broadcast(arr, root=root)

    def _broadcast_buffers(self, root):
        for _, buf in self.module.named_buffers():
            if buf.data.dtype.kind in "fiu" and buf.data.size:
                self.comm.broadcast(buf.data, root=root)

    def _build_buckets(self):
        buckets, current, current_bytes = [], [], 0
        ordered = list(reversed(self.params))

        def flush():
            nonlocal current, current_bytes
            if current:
                buckets.append(_Bucket(len(buckets), current, self._alloc))
            current, current_bytes = [], 0
        for p in ordered:
            if current and (current[0].dtype != p.dtype or current[0].device != p.device):
                flush()
            current.append(p)
            current_bytes += p.size * p.data.itemsize
            # Like PyTorch, the first bucket is small (1 MB): the last layers' gradients get on
            # the wire early instead of waiting for a 25 MB bucket to fill.
            cap = min(self.bucket_cap_bytes, 1024 * 1024) if not buckets else self.bucket_cap_bytes
            # Without overlap nothing is gained by splitting: one bucket, one collective, one
            # fixed cost (fingerprint exchange and latency) instead of one per bucket.
            if self.overlap and current_bytes >= cap:
                flush()
        flush()
        return buckets

    def _alloc(self, numel, dtype, xp):
        """A flat buffer for collectives: host buffers come from the communicator, which shares
        them between the ranks of one host so reductions read the peers' copies directly."""
        if xp is np and self.size > 1 and hasattr(self.comm, "alloc"):
            return self.comm.alloc(numel, dtype)
        return xp.zeros(numel, dtype=dtype)

    def _resolve_overlap(self, overlap):
        """Whether bucket reductions start inside backward (True) or run after it on this thread.

        Overlap pays when communication has something to overlap with for free: a GPU
        computing, a network transfer, or a CPU core the worker's compute threads leave idle.
        When every core is busy with compute (e.g. 2 workers x 1 thread on 2 cores) the
        reduction's CPU work competes with backward and the background thread's polling and
        GIL hand-offs make the step slower (measured: 0.4-0.5 ms per 2-worker seed-CNN step
        of ~12 ms), so "auto" defers the reductions to the end of backward there."""
        if overlap in (True, False):
            return overlap
        if overlap != "auto":
            raise ValueError(f"overlap must be True, False or 'auto', got {overlap!r}")
        if self.size == 1:
            return False
        if any(p.data.__class__.__module__.startswith("cupy") for p in self.params):
            return True
        try:
            cores = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):  # pragma: no cover - macOS
            cores = os.cpu_count() or 1
        raw = os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS") or ""
        threads = int(raw) if raw.isdigit() and int(raw) > 0 else cores
        local = max(1, getattr(self.comm, "local_size", 1) or 1)
        return cores // local > threads

    def _gpu_allreduce(self):
        """NCCL for buckets in GPU memory when available; otherwise the communicator moves them
        (CUDA-aware MPI, else staged through host memory)."""
        if self.size == 1 or not any(b.flat.__class__.__module__.startswith("cupy") for b in self.buckets):
            return None
        from comm.nccl import NcclAllreduce, nccl_available
        if not nccl_available():
            return None
        nccl, error = None, ""
        try:   # collective: NCCL refuses e.g. two ranks on one GPU, on every rank alike
            nccl = NcclAllreduce(self.rank, self.size, lambda uid: self.comm.broadcast_obj(uid, root=0))
        except Exception as e:  # noqa: BLE001 - any NCCL failure means: use the communicator instead
            error = f"{type(e).__name__}: {e}"
        errors = [e for e in self.comm.allgather_obj(error) if e]
        if errors:          # all ranks take the same path, or the next collective would hang
            if nccl is not None:
                nccl.close()
            if self.rank == 0:
                warnings.warn(f"NCCL is not usable for this placement ({errors[0]}); gradient buckets are "
                              f"reduced through the {self.comm.backend} communicator instead (staged "
                              f"through host memory), which is slower", stacklevel=3)
            return None
        return nccl

    def _enable_sharding(self, zero=None):
        """Called by ZeroRedundancyOptimizer: from now on backward reduce-scatters every bucket,
        and each bucket gets a flat parameter buffer (same layout as its gradients) that the
        parameters become views of, so a shard update plus an all-gather rebuilds the model."""
        if self._nccl is not None:
            raise DDPError("ZeroRedundancyOptimizer does not support NCCL buckets yet; use a plain optimizer "
                           "on GPU")
        if self._in_flight:
            raise DDPError("ZeroRedundancyOptimizer must be created before the first backward")
        for b in self.buckets:
            pf = self._alloc(b.numel, b.flat.dtype, get_array_module(b.flat))
            for p, off in zip(b.params, b.offsets):
                pf[off:off + p.size] = p.data.reshape(-1)
                p.data = pf[off:off + p.size].reshape(p.shape)
            b.param_flat = pf
            b.bounds = self.comm.shard_bounds(b.numel)
        self._sharded = True
        self._zero = zero

    # ------------------------------------------------------------ module facade
    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)

    def forward(self, *args, **kwargs):
        if self._in_flight and self._sync_enabled:
            missing = [self._param_name(p) for b in self.buckets for p in b.params if id(p) not in b.seen]
            raise DDPError(
                "the previous backward did not produce gradients for every parameter, so their "
                f"all-reduce never finished (e.g. {missing[:5]}); pass find_unused_parameters=True "
                "to DistributedDataParallel if some parameters are legitimately unused")
        if self._join is not None:
            self._join_step()
        if self.size > 1 and self.broadcast_buffers:
            self._broadcast_buffers(self._buffer_root)
        out = self.module(*args, **kwargs)
        if self.size > 1 and self._sync_enabled and self.find_unused_parameters:
            self._mark_unused(out)
        return out

    def _join_step(self):
        """Inside join(): tell the ranks that ran out of batches that this one still trains, and
        learn how many do (the gradient divisor and the buffers' source follow from it)."""
        from engine.tensor import is_grad_enabled
        from .join import JoinError, early_termination_message, step_sum
        active, _, _ = step_sum(self, training=True, sync=self._sync_enabled and is_grad_enabled())
        if active.size < self.size and self._join.throw:
            raise JoinError(early_termination_message(self, active))
        self._divisor = self.size if self._join.divide_by_initial_world_size else active.size
        self._buffer_root = int(active[0])

    def join(self, divide_by_initial_world_size=True, enable=True, throw_on_early_termination=False):
        """`with model.join():` around a loop whose ranks may run out of batches at different steps
        (PyTorch's DDP.join; see cluster/join.py)."""
        from .join import Join
        return Join([self], enable=enable, throw_on_early_termination=throw_on_early_termination,
                    divide_by_initial_world_size=divide_by_initial_world_size)

    def _param_name(self, p):
        for name, q in self.module.named_parameters():
            if q is p:
                return name
        return "?"

    def _mark_unused(self, out):
        reachable = set()
        outs = out if isinstance(out, (tuple, list)) else (out,)
        stack = [t for t in outs if isinstance(t, Tensor)]
        seen = set()
        while stack:
            t = stack.pop()
            if id(t) in seen:
                continue
            seen.add(id(t))
            if t.is_leaf:
                reachable.add(id(t))
            stack.extend(t._parents)
        for p in self.params:
            if id(p) not in reachable:
                self._fill(p, None)

    def parameters(self):
        return self.module.parameters()

    def load_state_dict(self, state, strict=True):
        return self.module.load_state_dict(state, strict=strict)

    def train(self, mode=True):
        self.module.train(mode)
        return self

    def eval(self):
        self.module.eval()
        return self

    def zero_grad(self, set_to_none=True):
        self.module.zero_grad(set_to_none=set_to_none)

    def to(self, *args, **kwargs):
        self.module.to(*args, **kwargs)
        return self                 # torch: DDP(model).to(device) is still the DDP wrapper

    def named_parameters(self, *args, **kwargs):
        return self.module.named_parameters(*args, **kwargs)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def __repr__(self):
        return f"DistributedDataParallel(\n  (module): {self.module!r}\n)"

    def __getattr__(self, name):
        # Only reached for attributes not found normally: forward to the wrapped module.
        if name == "module":
            raise AttributeError(name)
        return getattr(self.module, name)

    @contextlib.contextmanager
    def no_sync(self):
        """Accumulate gradients locally; the next backward outside reduces the sum."""
        prev = self._sync_enabled
        self._sync_enabled = False
        try:
            yield
        finally:
            self._sync_enabled = prev

    # ------------------------------------------------------------ reduction
    def _on_grad_ready(self, p):
        if not self._sync_enabled:
            return
        self._fill(p, p.grad.data)

    def _fill(self, p, grad):
        b, i = self._where[id(p)]
        if id(p) in b.seen:
            return
        if not self._in_flight:
            self.events = []
            self._in_flight = True
        off, n = b.offsets[i], p.size
        if grad is None:
            b.flat[off:off + n] = 0
        else:
            b.flat[off:off + n] = grad.reshape(-1)
        b.seen.add(id(p))
        b.filled += 1
        if b.filled == len(b.params):
            self._launch_ready()

    def _launch_ready(self):
        if not self.overlap and any(b.filled < len(b.params) for b in self.buckets):
            return                  # deferred: everything is reduced once backward is done
        while self._next_launch < len(self.buckets):
            b = self.buckets[self._next_launch]
            if b.filled < len(b.params):
                return
            self.events.append(("launch", b.index, time.perf_counter()))
            # join() with divide_by_initial_world_size=False: divide by the ranks still training
            divisor = self._divisor if self.average else 1
            if self._nccl is not None and b.flat.__class__.__module__.startswith("cupy"):
                b.handle = self._nccl.allreduce_async(b.flat, op="sum")
                b.scale = 1.0 / divisor
            else:
                # "mean" divides each chunk once on its owner inside the ring, before the
                # all-gather: half a pass over the bucket instead of a full one afterwards.
                op = "mean" if self.average and divisor == self.size else "sum"
                b.scale = 1.0 if op == "mean" or divisor == 1 else 1.0 / divisor
                if self._sharded:
                    run = self.comm.reduce_scatter_inplace_async if self.overlap else self.comm.reduce_scatter_inplace
                else:
                    run = self.comm.allreduce_async if self.overlap else self.comm.allreduce
                payload = b.flat
                if self.compression is not None and b.flat.dtype == np.float32:
                    # torch's fp16/bf16_compress_hook: divide first (a float16 sum cannot overflow
                    # where the mean does not), send half the bytes, widen again in _finish
                    # (in place: the bucket is overwritten by the reduced values in _finish; the
                    # 16-bit buffer is the bucket's own, kept across steps)
                    xp = get_array_module(b.flat)
                    if divisor != 1:
                        b.flat *= xp.float32(1.0 / divisor)
                    b.scale = 1.0
                    wire_dtype = xp.float16 if self.compression == "fp16" else xp.uint16
                    if b.wire is None or b.wire.dtype != wire_dtype:
                        b.wire = xp.empty(b.numel, dtype=wire_dtype)
                    if self.compression == "fp16":
                        b.half, op = b.wire, "sum"
                        xp.copyto(b.half, b.flat, casting="same_kind")
                    else:       # bfloat16 bit patterns; the ring adds them in float32
                        b.half, op = arrays.to_bf16(b.flat, out=b.wire), "bf16_sum"
                    payload = b.half
                result = run(payload, op=op)
                b.handle = result if self.overlap else _DONE     # deferred: ran inline, already complete
            self._next_launch += 1
        self._finish()

    def _finish(self):
        for b in self.buckets:
            b.handle.wait(self.timeout)
            self.events.append(("done", b.index, time.perf_counter()))
            if b.scale != 1.0:
                b.flat *= b.flat.dtype.type(b.scale)
            if b.half is not None:  # compressed: widen the reduced values back into the bucket
                lo, hi = (b.bounds[self.rank], b.bounds[self.rank + 1]) if self._sharded else (0, b.numel)
                if b.half.dtype == np.uint16:
                    arrays.from_bf16(b.half[lo:hi], out=b.flat[lo:hi])
                else:
                    b.flat[lo:hi] = b.half[lo:hi]
            if self._sharded:       # only this rank's shard is reduced; the optimizer reads it there
                b.reset()
                continue
            for p, off in zip(b.params, b.offsets):
                g = b.flat[off:off + p.size].reshape(p.shape)
                if p.grad is None:
                    p.grad = Tensor._wrap(g)
                else:
                    p.grad.data = g
            b.reset()
        self._next_launch = 0
        self._in_flight = False
        self.reductions += 1

    def register_comm_hook(self, state, hook):
        """torch's DDP.register_comm_hook for its two stock hooks (cluster.ddp_comm_hooks.default_hooks):
        fp16_compress_hook -> compression="fp16", allreduce_hook -> none.  A hook of your own would
        need torch's GradBucket/Future API, which this DDP does not have."""
        from .ddp_comm_hooks import default_hooks
        if hook is default_hooks.fp16_compress_hook:
            self.compression = "fp16"
        elif hook is default_hooks.bf16_compress_hook:
            self.compression = "bf16"
        elif hook is default_hooks.allreduce_hook:
            self.compression = None
        else:
            raise DDPError(f"register_comm_hook: only default_hooks.allreduce_hook and "
                           f"default_hooks.fp16_compress_hook are supported, not {getattr(hook, '__name__', hook)!r}; "
                           f"DistributedDataParallel(..., compression='fp16') is the same as the latter")

    def synchronize(self):
        """Finish an outstanding reduction (e.g. after a backward with unused parameters).

        A no-op when backward already completed the reduction.
        """
        if not self._in_flight:
            return
        for b in self.buckets:
            for p in b.params:
                if id(p) not in b.seen:
                    self._fill(p, p.grad.data if p.grad is not None else None)


#: the gradient compressions DistributedDataParallel(compression=...) knows (Horovod's names)
COMPRESSIONS = (None, "none", "fp16", "bf16")


def _compression(value):
    """None, "fp16" or "bf16" from compression=None / "none" / "fp16" / "bf16" (or Horovod's
    Compression.fp16 spelling)."""
    name = getattr(value, "__name__", value)
    name = None if name in (None, "none", "NoneCompressor") else "fp16" if name in ("fp16", "FP16Compressor") else name
    if name not in COMPRESSIONS:
        raise DDPError(f"DistributedDataParallel: compression={value!r} is not one of None, 'fp16', 'bf16'")
    return name


def average_metrics(comm, metrics: dict) -> dict:
    """Mean of scalar metrics over all ranks (one small all-reduce)."""
    if comm is None or comm.size == 1:
        return dict(metrics)
    keys = sorted(metrics)
    arr = np.array([float(metrics[k]) for k in keys], dtype=np.float64)
    comm.allreduce(arr, op="sum", algorithm="native" if getattr(comm, "backend", "") == "mpi" else "ring")
    return {k: float(v) / comm.size for k, v in zip(keys, arr)}
