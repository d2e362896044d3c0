"""cluster.DistributedSampler: engine.data.distributed's sampler (PyTorch's contract, resumable
on any number of ranks; see there), with dptrain's argument order (dataset, rank, size) and the
rank and size taken from the job when not given."""
from __future__ import annotations

from engine.data.distributed import DistributedSampler as _Sampler


class DistributedSampler(_Sampler):
    def __init__(self, dataset, rank=None, size=None, shuffle=True, seed=0, drop_last=False,
                 num_replicas=None):
        if size is None:
            size = num_replicas
        if size is None or rank is None:
            from comm.env import detect
            env = detect()
            size = env.size if size is None else size
            rank = env.rank if rank is None else rank
        super().__init__(dataset, num_replicas=size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
