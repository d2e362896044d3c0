"""torch.utils.data.distributed: the DistributedSampler, where ported scripts look for it.

Same contract as PyTorch's: every epoch the indices are permuted with
`seed + epoch` (identical on all ranks), padded by wrapping around so every rank
gets the same count (or trimmed with drop_last), and rank r takes positions
r, r+size, r+2*size, ...  Under a DataLoader with batch B, step k on rank r holds
rows r::size of what one worker with batch B*size would see at step k, which is
what makes N workers reproduce one worker's training exactly.

For resume, `state_dict()` records the epoch and the position in it as a count of
samples consumed by all ranks together; `load_state_dict()` skips them.  Because the
position is global, a checkpoint written by N ranks resumes on M ranks (the global
batch, hence the position, must divide evenly over the new ranks).

The engine knows nothing of the job, so without `num_replicas` and `rank` this class reads
torchrun's RANK / WORLD_SIZE (every dptrain worker has them); `cluster.DistributedSampler`
is the same sampler asking the communicator's environment instead.
"""
from __future__ import annotations

import math
import os

import numpy as np

__all__ = ["DistributedSampler"]


class DistributedSampler:
    """torch.utils.data.distributed.DistributedSampler(dataset, num_replicas=None, rank=None,
    shuffle=True, seed=0, drop_last=False)."""

    def __init__(self, dataset, num_replicas=None, rank=None, shuffle=True, seed=0, drop_last=False):
        if num_replicas is None or rank is None:
            env_rank, env_size = os.environ.get("RANK"), os.environ.get("WORLD_SIZE")
            if env_rank is None or env_size is None:
                raise ValueError("DistributedSampler: pass num_replicas= and rank= (e.g. hvd.size(), hvd.rank() "
                                 "or dist.get_world_size(), dist.get_rank()); RANK and WORLD_SIZE are not set")
            num_replicas = int(env_size) if num_replicas is None else num_replicas
            rank = int(env_rank) if rank is None else rank
        size = num_replicas
        if size < 1 or not (0 <= rank < size):
            raise ValueError(f"DistributedSampler: rank {rank} is not in [0, {size})")
        self.dataset = dataset
        self.rank, self.size = int(rank), int(size)
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.epoch = 0
        self.start = 0            # samples of this rank already consumed in this epoch (resume)
        n = len(dataset)
        if drop_last and n % self.size:
            self.num_samples = n // self.size
        else:
            self.num_samples = math.ceil(n / self.size)
        self.total_size = self.num_samples * self.size

    @property
    def num_replicas(self) -> int:
        return self.size

    def set_epoch(self, epoch: int):
        """Reshuffle for a new epoch (call on every rank with the same value)."""
        if epoch != self.epoch:
            self.start = 0
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        n = len(self.dataset)
        if self.shuffle:
            idx = np.random.default_rng(self.seed + self.epoch).permutation(n)
        else:
            idx = np.arange(n)
        if self.total_size > n:
            reps = math.ceil(self.total_size / max(n, 1))
            idx = np.tile(idx, reps)[: self.total_size]
        else:
            idx = idx[: self.total_size]
        return idx[self.rank::self.size][self.start:]

    def __iter__(self):
        return iter(self.indices().tolist())

    def __len__(self):
        return self.num_samples - self.start

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.start * self.size, "num_replicas": self.size,
                "seed": self.seed}

    def load_state_dict(self, state: dict):
        if "consumed" in state:
            consumed = int(state["consumed"])
            if consumed % self.size:
                raise ValueError(
                    f"DistributedSampler: the checkpoint is {consumed} samples into epoch {state['epoch']}, "
                    f"which does not split evenly over {self.size} ranks; resume with a number of ranks "
                    f"that divides the global batch size")
            start = consumed // self.size
        else:                     # written before positions were global: same world size assumed
            start = int(state["start"])
        self.epoch = int(state["epoch"])
        self.start = start
        self.seed = int(state.get("seed", self.seed))

    def advance(self, n: int):
        """Record that n more samples of this epoch were consumed (for checkpoints)."""
        self.start += int(n)
