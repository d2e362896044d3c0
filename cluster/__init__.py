"""The cluster layer: data-parallel training on top of `engine` (models) and `comm` (collectives).

User scripts run by `job.script` call `cluster.init()` to get the communicator and
their place in the job, then wrap their model in `cluster.DistributedDataParallel`
(engine.nn models) or call `cluster.keras.distribute` (engine.keras models).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import importlib

__all__ = ["DistributedDataParallel", "DDPError", "DistributedSampler", "SyncBatchNorm",
           "convert_sync_batchnorm", "ZeroRedundancyOptimizer", "average_metrics", "init", "Context",
           "stop_requested", "Join", "JoinError"]


@dataclass
class Context:
    """What a worker knows about its place in the job."""
    comm: object
    rank: int
    size: int
    local_rank: int
    local_size: int
    run_dir: str | None
    device: str

    def is_main(self) -> bool:
        return self.rank == 0

    def log_metrics(self, record: dict):
        """Append one line to RUN_DIR/metrics.jsonl (rank 0 only; other ranks ignore it)."""
        if self.rank == 0 and self.run_dir:
            from .rundir import RunDir
            RunDir(self.run_dir).append_metrics(record)


# The training pieces import the engine (numpy and all); the launcher only needs
# cluster.config & co.  Loading them on first use keeps `dptrain validate/run` light
# and working even when the engine cannot be imported.
_LAZY = {"DistributedDataParallel": "ddp", "DDPError": "ddp", "average_metrics": "ddp",
         "DistributedSampler": "sampler", "SyncBatchNorm": "sync_batchnorm",
         "convert_sync_batchnorm": "sync_batchnorm", "ZeroRedundancyOptimizer": "zero",
         "stop_requested": "preempt", "Join": "join", "JoinError": "join"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'cluster' has no attribute {name!r}")


def init(backend: str | None = None, timeout: float | None = None) -> Context:
    """Join the job's communicator (a size-1 one when run alone) and describe this worker."""
    import comm
    c = comm.init(backend=backend or os.environ.get("DPTRAIN_COMM_BACKEND") or "auto", timeout=timeout)
    gpu = os.environ.get("DPTRAIN_GPU", "")
    device = f"cuda:{gpu}" if gpu.isdigit() else "cpu"
    return Context(comm=c, rank=c.rank, size=c.size, local_rank=c.local_rank, local_size=c.local_size,
                   run_dir=os.environ.get("DPTRAIN_RUN_DIR") or None, device=device)
