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
    from . import init
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
