"""torch.distributed's everyday calls on the job's communicator, for ported scripts.

    import cluster.distributed as dist          # was: import torch.distributed as dist
    dist.init_process_group("gloo")             # the backend name is ignored: the launcher chose one
    rank, world = dist.get_rank(), dist.get_world_size()
    dist.all_reduce(t, op=dist.ReduceOp.SUM)    # in place on an engine Tensor (or a numpy array)
    dist.barrier(); dist.destroy_process_group()

Why: the collectives of a torch script (metric averaging, broadcasting a seed, gathering
predictions) are a handful of calls with torch's names and in-place semantics; without this
module every one of them has to be rewritten against `comm` and `.data`.  `cluster.init()` and
`comm` remain the native interface; this is a thin translation onto the same communicator.
Process groups other than the whole job are not supported (`group=` must be None).
"""
from __future__ import annotations

import os

__all__ = ["ReduceOp", "init_process_group", "is_initialized", "is_available", "get_rank",
           "get_world_size", "get_local_rank", "get_backend", "all_reduce", "broadcast", "all_gather",
           "all_gather_object", "broadcast_object_list", "barrier", "destroy_process_group", "reduce",
           "gather", "scatter", "all_gather_into_tensor", "reduce_scatter", "reduce_scatter_tensor",
           "gather_object", "scatter_object_list", "monitored_barrier", "is_mpi_available",
           "is_gloo_available", "is_nccl_available", "is_torchelastic_launched"]


class ReduceOp:
    SUM = "sum"
    AVG = "mean"
    MAX = "max"
    MIN = "min"
    # torch's others: named so a script fails on the call with a clear message, not on the attribute
    PRODUCT = "product"
    BAND = "band"
    BOR = "bor"
    BXOR = "bxor"


_UNSUPPORTED_OPS = {"product": "PRODUCT", "band": "BAND", "bor": "BOR", "bxor": "BXOR"}


def _op(op) -> str:
    if op in _UNSUPPORTED_OPS:
        raise NotImplementedError(f"ReduceOp.{_UNSUPPORTED_OPS[op]} is not supported; the collectives reduce with "
                                  f"SUM, AVG, MAX or MIN")
    return op


class _Done:
    """What `async_op=True` returns: the collective has already completed (torch's Work API)."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


_comm = None


def is_available() -> bool:
    return True


def is_gloo_available() -> bool:
    """Any backend name is accepted by init_process_group (the launcher picks the transport)."""
    return True


def is_mpi_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("mpi4py") is not None


def is_nccl_available() -> bool:
    from comm.nccl import nccl_available
    return nccl_available()


def is_torchelastic_launched() -> bool:
    """True when a launcher started this process (dptrain's, as torchrun's does for torch)."""
    return bool(os.environ.get("TORCHELASTIC_RUN_ID") or os.environ.get("DPTRAIN_WORLD_SIZE"))


#: environment variables of a launcher that already placed this process (dptrain, MPI, PMIx)
_LAUNCHED_BY = ("DPTRAIN_WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_RANK", "PMI_SIZE", "PMIX_RANK")


def _torch_rendezvous(init_method, world_size, rank) -> None:
    """No launcher placed this process (`python train.py` with mp.spawn, as PyTorch's DDP tutorial
    does): take rank and world size from the arguments (or RANK / WORLD_SIZE) and the rendezvous
    from init_method "tcp://host:port" or "env://" (MASTER_ADDR / MASTER_PORT), as torch does, and
    hand them to the ZeroMQ backend as the launcher would."""
    env = os.environ
    rank = int(rank) if rank not in (-1, None) else int(env["RANK"]) if env.get("RANK", "").isdigit() else None
    size = (int(world_size) if world_size not in (-1, None)
            else int(env["WORLD_SIZE"]) if env.get("WORLD_SIZE", "").isdigit() else None)
    if rank is None or size is None:
        raise ValueError("init_process_group: no launcher started this process, so give rank= and world_size= "
                         "(or set RANK and WORLD_SIZE), or start the script with `dptrain launch -n N script.py`")
    if not 0 <= rank < size:
        raise ValueError(f"init_process_group: rank {rank} is not in 0..{size - 1} (world_size={size})")
    if size == 1:
        return          # a world of one needs no rendezvous: the local communicator
    method = init_method or "env://"
    if method.startswith("tcp://"):
        host, _, port = method[len("tcp://"):].rpartition(":")
    elif method == "env://":
        host, port = env.get("MASTER_ADDR", ""), env.get("MASTER_PORT", "")
        missing = [k for k, v in (("MASTER_ADDR", host), ("MASTER_PORT", port)) if not v]
        if missing:
            raise ValueError(f"init_process_group (env://): environment variable {' and '.join(missing)} expected, "
                             f"but not set: set os.environ['MASTER_ADDR'] = 'localhost' and "
                             f"os.environ['MASTER_PORT'] = '29500' (any free port) before it, or start the script "
                             f"with `dptrain launch -n N script.py`")
    else:
        raise ValueError(f"init_process_group: init_method {init_method!r} is not supported; use 'env://' "
                         f"(MASTER_ADDR / MASTER_PORT) or 'tcp://HOST:PORT'")
    if not host or not port.isdigit():
        raise ValueError(f"init_process_group: cannot read a host and port from {method!r} ({host!r}:{port!r})")
    env.update(DPTRAIN_RANK=str(rank), DPTRAIN_WORLD_SIZE=str(size), DPTRAIN_MASTER_ADDR=host,
               DPTRAIN_MASTER_PORT=port, DPTRAIN_LOCAL_RANK=env.get("LOCAL_RANK", str(rank)),
               DPTRAIN_LOCAL_WORLD_SIZE=env.get("LOCAL_WORLD_SIZE", str(size)))


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, **_):
    """Join the job's communicator.  Under `dptrain launch` / `run` / `mpirun` everything is set up:
    backend and init_method are ignored, and world_size/rank only have to agree with the job.
    Without a launcher (processes started by engine.multiprocessing.spawn or by hand), rank,
    world_size and init_method (or RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT) form the job, as
    in torch; the backend name is still ignored (ZeroMQ)."""
    global _comm
    from .. import init
    if not any(os.environ.get(k) for k in _LAUNCHED_BY) and (
            world_size not in (-1, None) or rank not in (-1, None) or os.environ.get("WORLD_SIZE")):
        _torch_rendezvous(init_method, world_size, rank)
    seconds = timeout.total_seconds() if hasattr(timeout, "total_seconds") else timeout
    _comm = init(timeout=seconds).comm
    if world_size not in (-1, None) and world_size != _comm.size:
        raise ValueError(f"init_process_group(world_size={world_size}) but the job has {_comm.size} ranks; "
                         f"the launcher's -n / cluster.nodes decide the world size")
    if rank not in (-1, None) and rank != _comm.rank:
        raise ValueError(f"init_process_group(rank={rank}) but the launcher made this process rank {_comm.rank}")


def is_initialized() -> bool:
    return _comm is not None and not _comm.closed


def _c(group=None):
    if group is not None:
        raise NotImplementedError("process groups other than the whole job are not supported (group=None)")
    if _comm is None:
        raise RuntimeError("call cluster.distributed.init_process_group() first")
    return _comm


def get_rank(group=None) -> int:
    return _c(group).rank


def get_world_size(group=None) -> int:
    return _c(group).size


def get_local_rank() -> int:
    return _c().local_rank


def get_backend(group=None) -> str:
    return _c(group).backend


def _array(t):
    """The array behind an engine Tensor (written in place), or the array itself."""
    return t.data if hasattr(t, "backward") else t


def _finish(async_op):
    return _Done() if async_op else None


def all_reduce(tensor, op=ReduceOp.SUM, group=None, async_op=False):
    arr = _array(tensor)
    out = _c(group).allreduce(arr, op=_op(op))
    if out is not arr:              # not reducible in place (a non-contiguous view): write it back
        arr[...] = out
    return _finish(async_op)


def broadcast(tensor, src=0, group=None, async_op=False):
    arr = _array(tensor)
    out = _c(group).broadcast(arr, root=src)
    if out is not arr:
        arr[...] = out
    return _finish(async_op)


def all_gather(tensor_list, tensor, group=None, async_op=False):
    c = _c(group)
    if len(tensor_list) != c.size:
        raise ValueError(f"all_gather: tensor_list has {len(tensor_list)} entries, the job {c.size} ranks")
    for dst, row in zip(tensor_list, c.allgather(_array(tensor))):
        _array(dst)[...] = row
    return _finish(async_op)


def reduce(tensor, dst=0, op=ReduceOp.SUM, group=None, async_op=False):
    """The reduction lands on `dst` (an all-reduce: the other ranks get it too, where torch leaves
    their tensor unspecified)."""
    _check_rank(_c(group), dst, "dst")
    return all_reduce(tensor, op=op, group=group, async_op=async_op)


def gather(tensor, gather_list=None, dst=0, group=None, async_op=False):
    """Every rank's tensor into `gather_list` on `dst` (None elsewhere)."""
    c = _c(group)
    _check_rank(c, dst, "dst")
    if c.rank == dst and (gather_list is None or len(gather_list) != c.size):
        raise ValueError(f"gather: on the destination rank gather_list must hold {c.size} tensors "
                         f"(one per rank), got {None if gather_list is None else len(gather_list)}")
    rows = c.allgather(_array(tensor))
    if c.rank == dst:
        for out, row in zip(gather_list, rows):
            _array(out)[...] = row
    return _finish(async_op)


def scatter(tensor, scatter_list=None, src=0, group=None, async_op=False):
    """Rank r receives scatter_list[r] of `src` into `tensor` (every entry shaped like `tensor`)."""
    import numpy as np
    c = _c(group)
    _check_rank(c, src, "src")
    arr = _array(tensor)
    stacked = np.zeros((c.size,) + tuple(arr.shape), dtype=arr.dtype)
    if c.rank == src:
        if scatter_list is None or len(scatter_list) != c.size:
            raise ValueError(f"scatter: on the source rank scatter_list must hold {c.size} tensors, got "
                             f"{None if scatter_list is None else len(scatter_list)}")
        for i, t in enumerate(scatter_list):
            a = np.asarray(_array(t))
            if a.shape != arr.shape:
                raise ValueError(f"scatter: scatter_list[{i}] has shape {a.shape}, the output tensor {arr.shape}")
            stacked[i] = a
    c.broadcast(stacked, root=src)
    arr[...] = stacked[c.rank]
    return _finish(async_op)


def all_gather_into_tensor(output_tensor, input_tensor, group=None, async_op=False):
    """Every rank's input concatenated (or stacked) into `output_tensor`, torch's layout: shape
    (size * n, ...) or (size, n, ...)."""
    c = _c(group)
    inp, out = _array(input_tensor), _array(output_tensor)
    if out.size != c.size * inp.size:
        raise ValueError(f"all_gather_into_tensor: the output has {out.size} elements, it needs world size x "
                         f"input = {c.size} x {inp.size}")
    out[...] = c.allgather(inp).reshape(out.shape)
    return _finish(async_op)


def reduce_scatter_tensor(output, input, op=ReduceOp.SUM, group=None, async_op=False):
    """Reduce `input` (world size x output's rows) over ranks; rank r keeps block r in `output`."""
    c = _c(group)
    inp, out = _array(input), _array(output)
    if inp.size != c.size * out.size:
        raise ValueError(f"reduce_scatter_tensor: the input has {inp.size} elements, it needs world size x "
                         f"output = {c.size} x {out.size}")
    out[...] = c.reduce_scatter(inp.reshape((c.size, -1)), op=_op(op)).reshape(out.shape)
    return _finish(async_op)


def reduce_scatter(output, input_list, op=ReduceOp.SUM, group=None, async_op=False):
    """Rank r gets the reduction over ranks of input_list[r]."""
    import numpy as np
    c = _c(group)
    if len(input_list) != c.size:
        raise ValueError(f"reduce_scatter: input_list has {len(input_list)} entries, the job {c.size} ranks")
    stacked = np.stack([np.asarray(_array(t)) for t in input_list])
    out = _array(output)
    out[...] = c.reduce_scatter(stacked, op=_op(op)).reshape(out.shape)
    return _finish(async_op)


def _check_rank(c, r, what):
    if not isinstance(r, int) or not 0 <= r < c.size:
        raise ValueError(f"{what}={r!r} is not a rank of this job (0..{c.size - 1})")


def gather_object(obj, object_gather_list=None, dst=0, group=None):
    """msgpack-able objects only; the list is filled on `dst`."""
    c = _c(group)
    _check_rank(c, dst, "dst")
    if c.rank == dst and (object_gather_list is None or len(object_gather_list) != c.size):
        raise ValueError(f"gather_object: on the destination rank object_gather_list must have {c.size} entries")
    objs = c.allgather_obj(obj)
    if c.rank == dst:
        object_gather_list[:] = objs


def scatter_object_list(scatter_object_output_list, scatter_object_input_list=None, src=0, group=None):
    """scatter_object_output_list[0] becomes scatter_object_input_list[rank] of `src`."""
    c = _c(group)
    _check_rank(c, src, "src")
    if c.rank == src and (scatter_object_input_list is None or len(scatter_object_input_list) != c.size):
        raise ValueError(f"scatter_object_list: on the source rank the input list must have {c.size} entries")
    objs = c.broadcast_obj(list(scatter_object_input_list) if c.rank == src else None, root=src)
    scatter_object_output_list[0] = objs[c.rank]


def all_gather_object(object_list, obj, group=None):
    """msgpack-able objects only (numbers, strings, lists, dicts): nothing is pickled."""
    object_list[:] = _c(group).allgather_obj(obj)


def broadcast_object_list(object_list, src=0, group=None):
    object_list[:] = _c(group).broadcast_obj(list(object_list), root=src)


def barrier(group=None, async_op=False, device_ids=None):
    _c(group).barrier()
    return _finish(async_op)


def monitored_barrier(group=None, timeout=None, wait_all_ranks=False):
    """A barrier with its own timeout; on expiry the error says which rank it was still waiting for."""
    seconds = timeout.total_seconds() if hasattr(timeout, "total_seconds") else timeout
    _c(group).barrier(timeout=seconds)


def destroy_process_group(group=None):
    global _comm
    if _comm is not None:
        import comm
        comm.finalize()
        _comm = None
