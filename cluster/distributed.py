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


__all__ = ["ReduceOp", "init_process_group", "is_initialized", "is_available", "get_rank",
           "get_world_size", "get_local_rank", "get_backend", "all_reduce", "broadcast", "all_gather",
           "all_gather_object", "broadcast_object_list", "barrier", "destroy_process_group"]


class ReduceOp:
    SUM = "sum"
    AVG = "mean"
    MAX = "max"
    MIN = "min"


class _Done:
    """What `async_op=True` returns: the collective has already completed (torch's Work API)."""

    def wait(self, timeout=None) -> bool:
        return True

    def is_completed(self) -> bool:
        return True


_comm = None


def is_available() -> bool:
    return True


def init_process_group(backend=None, init_method=None, timeout=None, world_size=-1, rank=-1, **_):
    """Join the job's communicator; `dptrain launch` / `run` / `mpirun` have set everything up, so
    backend and init_method are ignored, and world_size/rank only have to agree with the job."""
    global _comm
    from . import init
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
    out = _c(group).allreduce(arr, op=op)
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


def all_gather_object(object_list, obj, group=None):
    """msgpack-able objects only (numbers, strings, lists, dicts): nothing is pickled."""
    object_list[:] = _c(group).allgather_obj(obj)


def broadcast_object_list(object_list, src=0, group=None):
    object_list[:] = _c(group).broadcast_obj(list(object_list), root=src)


def barrier(group=None, async_op=False, device_ids=None):
    _c(group).barrier()
    return _finish(async_op)


def destroy_process_group(group=None):
    global _comm
    if _comm is not None:
        import comm
        comm.finalize()
        _comm = None
