"""Uneven inputs: ranks that run out of batches keep answering the others' collectives.

Why: every DDP step pairs each rank's gradient all-reduce with every other rank's, so a rank
with fewer batches leaves its loop while the others wait in their next all-reduce until the
timeout.  DistributedSampler avoids this by padding every rank to the same number of
batches; when the data cannot be split evenly (streams, per-rank files, bucketed sequence
lengths) `with ddp.join():` (PyTorch's Join context, Horovod's hvd.join()) lets the loop run
out at different steps:

* Every forward of a rank still training first sums a small vector over all ranks: who is
  still training, whether this step will reduce gradients, and the optimizer's learning
  rates (one small all-reduce per step, only inside the context).
* A rank that left the loop ("joined") stays in `__exit__` answering those sums.  While
  someone trains it mirrors their collectives: the buffer broadcast of the forward, every
  gradient bucket's reduction (with zeros, so the others' average is unchanged), and, under
  ZeroRedundancyOptimizer, the optimizer step, because its shard of the parameters must keep
  being updated and all-gathered.
* When the sum says nobody trains any more, every rank takes the parameters and buffers of
  a rank that trained to the end, so all leave the context with the same model.

A plain optimizer passed with the model (`Join([model, opt])`; PyTorch accepts only joinable
ones) is stepped by the joined ranks too, with the averaged gradient they receive, so its
state (momentum, Adam's moments) stays identical on every rank and training can go on after
the context; without it a rank that joined early keeps the state it had (PyTorch's behaviour).

Gradients are divided by the initial world size by default (the joined ranks count as
zero gradients, PyTorch's default); `divide_by_initial_world_size=False` divides by the
number of ranks still training.  `throw_on_early_termination=True` instead raises on every
rank at the first step where some rank has run out.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Join", "JoinError"]


class JoinError(RuntimeError):
    """Raised on every rank at the same step by Join(throw_on_early_termination=True)."""


class _JoinState:
    """What a DDP model in a join context knows about the current step."""

    def __init__(self, divide_by_initial_world_size, throw_on_early_termination, optimizer):
        self.divide_by_initial_world_size = bool(divide_by_initial_world_size)
        self.throw = bool(throw_on_early_termination)
        self.optimizer = optimizer      # stepped by joined ranks (ZeRO: must be; plain: keeps state alike)


def _ranks(ranks) -> str:
    ranks = [int(r) for r in ranks]
    return (f"rank {ranks[0]}" if len(ranks) == 1
            else "ranks " + ", ".join(map(str, ranks[:-1])) + f" and {ranks[-1]}")


class Join:
    """`with Join([ddp_model, zero_optimizer]):` (or `with ddp_model.join():`) around a training loop
    whose ranks may run out of batches at different steps.

    joinables: one cluster.DistributedDataParallel, optionally with its optimizer: the
    ZeroRedundancyOptimizer built over it (it takes part either way) or a plain engine.optim
    optimizer of its parameters (then the joined ranks keep stepping it).  enable=False makes the context do nothing.
    divide_by_initial_world_size: keep dividing gradients by the world size (True) or by the
    number of ranks still training (False).  throw_on_early_termination: raise JoinError on
    every rank as soon as one runs out, instead of carrying on.

    One forward per backward inside the context (the joined ranks mirror one gradient reduction
    per forward), and no other collectives in the loop (metric all-reduces, SyncBatchNorm): a
    joined rank cannot answer those.
    """

    def __init__(self, joinables, enable: bool = True, throw_on_early_termination: bool = False,
                 divide_by_initial_world_size: bool = True):
        from engine.optim.optimizer import Optimizer
        from .ddp import DDPError, DistributedDataParallel
        from .zero import ZeroRedundancyOptimizer
        joinables = list(joinables)
        models = [j for j in joinables if isinstance(j, DistributedDataParallel)]
        optimizers = [j for j in joinables if isinstance(j, (ZeroRedundancyOptimizer, Optimizer))]
        others = [j for j in joinables if not isinstance(j, (DistributedDataParallel, ZeroRedundancyOptimizer,
                                                             Optimizer))]
        if others:
            raise TypeError(f"Join: {type(others[0]).__name__} cannot join; pass the DistributedDataParallel "
                            f"model and, optionally, its optimizer")
        if len(models) != 1:
            raise DDPError(f"Join takes exactly one DistributedDataParallel model, got {len(models)}")
        if len(optimizers) > 1:
            raise DDPError(f"Join takes at most one optimizer, got {len(optimizers)}")
        self.ddp = ddp = models[0]
        opt = optimizers[0] if optimizers else ddp._zero
        if isinstance(opt, ZeroRedundancyOptimizer) and opt.ddp is not ddp:
            raise DDPError("Join: the ZeroRedundancyOptimizer was built over another model than the one joined")
        if isinstance(opt, Optimizer):
            mine = {id(p) for p in ddp.params}
            if ddp._zero is not None or any(id(p) not in mine for g in opt.param_groups for p in g["params"]):
                raise DDPError("Join: the optimizer does not update this model's parameters (pass the one "
                               "built over model.parameters(), or the ZeroRedundancyOptimizer)")
        self.enable = enable and ddp.size > 1
        self.state = _JoinState(divide_by_initial_world_size, throw_on_early_termination, opt)

    def __enter__(self):
        if not self.enable:
            return self
        from .sync_batchnorm import SyncBatchNorm
        ddp = self.ddp
        if any(isinstance(m, SyncBatchNorm) for m in ddp.module.modules()):
            from .ddp import DDPError
            raise DDPError("join(): the model has SyncBatchNorm layers, whose forward runs collectives a rank "
                           "that ran out of batches cannot answer; use BatchNorm (buffers are broadcast) or give "
                           "every rank the same number of batches (DistributedSampler)")
        if ddp._join is not None:
            from .ddp import DDPError
            raise DDPError("join(): this model is already inside a join context")
        ddp._join = self.state
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self.enable:
            return False
        ddp = self.ddp
        try:
            if exc_type is None:
                last = self._answer_until_all_joined()
                self._sync_final_model(last)
        finally:
            ddp._join = None
            ddp._divisor = ddp.size
            ddp._buffer_root = 0
        return False

    # ------------------------------------------------------------ the joined rank
    def _answer_until_all_joined(self) -> bool:
        """Mirror the training ranks' collectives until none is left; True when none was left at
        the first look (this rank was among the last to finish)."""
        ddp = self.ddp
        first = True
        while True:
            active, sync, rates = step_sum(ddp, training=False)
            if not active.size:
                return first
            if self.state.throw:
                raise JoinError(early_termination_message(ddp, active))
            first = False
            ddp._divisor = ddp.size if self.state.divide_by_initial_world_size else active.size
            ddp._buffer_root = int(active[0])
            if ddp.broadcast_buffers:
                ddp._broadcast_buffers(ddp._buffer_root)
            if not sync:
                continue
            for p in ddp.params:                # zeros through the same buckets, in the same order
                ddp._fill(p, None)
            ddp.synchronize()
            opt = self.state.optimizer          # ZeRO: its shard of the parameters must keep moving
            if opt is not None:
                set_rates(opt, rates)
                opt.step()

    def _sync_final_model(self, last: bool) -> None:
        """Every rank takes the parameters and buffers of the lowest rank that trained to the end
        (the others stopped applying optimizer steps when they ran out)."""
        ddp = self.ddp
        w = np.zeros(ddp.size)
        w[ddp.rank] = 1.0 if last else 0.0
        _sum(ddp.comm, w)
        ddp._sync_module_state(root=int(np.flatnonzero(w)[0]))


# ------------------------------------------------------------ the per-step sum (both sides)
def _sum(comm, v):
    comm.allreduce(v, op="sum", algorithm="native" if getattr(comm, "backend", "") == "mpi" else "ring")
    return v


def step_sum(ddp, training: bool, sync: bool = False):
    """One all-reduce per step inside a join context: (ranks still training, whether this step
    reduces gradients, the optimizer's learning rates as the training ranks have them).

    A training rank calls it from forward (training=True), a joined rank from its loop."""
    n = ddp.size
    groups = ddp._join.optimizer.param_groups if ddp._join.optimizer is not None else []
    v = np.zeros(n + 1 + len(groups))
    if training:
        v[ddp.rank] = 1.0
        v[n] = 1.0 if sync else 0.0
        for i, g in enumerate(groups):
            v[n + 1 + i] = float(g["lr"])
    _sum(ddp.comm, v)
    active = np.flatnonzero(v[:n])
    rates = v[n + 1:] / max(1, active.size)
    return active, bool(v[n]), rates


def set_rates(opt, rates) -> None:
    """A joined rank's optimizer follows the training ranks' learning-rate schedule."""
    for g, lr in zip(opt.param_groups, rates):
        g["lr"] = float(lr)


def early_termination_message(ddp, active) -> str:
    joined = sorted(set(range(ddp.size)) - {int(r) for r in active})
    return (f"{_ranks(joined)} ran out of inputs while {_ranks(active)} still had batches; "
            f"Join(throw_on_early_termination=True) stops every rank at this step")
