"""ZeroRedundancyOptimizer: ZeRO stage 1 over DistributedDataParallel's gradient buckets.

Why: with plain data parallelism every rank runs the same optimizer update on the same
averaged gradient, so N ranks hold N copies of the optimizer state and do the same
work N times.  For the seed CNN on a CPU, Adam is a tenth of a step that no number of
workers makes shorter.  ZeRO stage 1 (Rajbhandari et al. 2020; PyTorch's
ZeroRedundancyOptimizer) shards it: every gradient bucket is split into `size`
contiguous shards; backward reduce-scatters each bucket (the first half of an
all-reduce), so rank r ends up with the averaged gradient of its shard only; the
optimizer updates that shard (1/N of the work and of the state); an all-gather of
the updated parameters (the second half of an all-reduce) hands every rank the whole
model again.  Same traffic as DDP alone, 1/N of the optimizer.

Parameters become views into one flat buffer per bucket, laid out like the bucket's
gradients, so neither the shard update nor the all-gather copies anything.  The
update is elementwise, so the parameters equal those of unsharded DDP (bit for bit on two
ranks; only sums taken in another order, such as the clipping norm, move the last bits).

After backward, a parameter's `.grad` holds this rank's *local* gradient (the
averaged one exists only shard by shard); use `clip_grad_norm_` of this class, which
computes the global norm from the shards.  `state_dict()` is collective and returns
the inner optimizer's usual per-parameter format, so checkpoints do not depend on
the number of ranks and load with or without sharding.
"""
from __future__ import annotations

import math

import numpy as np

from engine.tensor import Tensor

from .ddp import DistributedDataParallel

__all__ = ["ZeroRedundancyOptimizer"]


class ZeroRedundancyOptimizer:
    """optimizer_class(params, **defaults) applied to this rank's shard of `ddp`'s parameters.

    ddp: the DistributedDataParallel-wrapped model (its buckets define the shards).
    optimizer_class: an elementwise engine.optim optimizer (SGD, Adam, AdamW, RMSprop).
    """

    def __init__(self, ddp, optimizer_class, **defaults):
        if not isinstance(ddp, DistributedDataParallel):
            raise TypeError("ZeroRedundancyOptimizer shards the optimizer over the gradient buckets of a "
                            f"cluster.DistributedDataParallel; pass the wrapped model, not {type(ddp).__name__}")
        self.ddp = ddp
        self.comm = ddp.comm
        self.params = list(ddp.params)
        self._sharded = ddp.size > 1
        if not self._sharded:                      # one rank: nothing to shard
            self.optim = optimizer_class(self.params, **defaults)
            return
        ddp._enable_sharding(self)
        self._consumed = ddp.reductions            # reductions already used by a step
        self._shards = []
        for b in ddp.buckets:
            lo, hi = b.bounds[ddp.rank], b.bounds[ddp.rank + 1]
            t = Tensor(b.param_flat[lo:hi], requires_grad=True)   # a view: updates land in the parameters
            t.grad = Tensor._wrap(b.flat[lo:hi])                  # the reduced gradient shard
            self._shards.append(t)
        self.optim = optimizer_class(self._shards, **defaults)

    # ------------------------------------------------------------ the optimizer facade
    @property
    def param_groups(self):
        return self.optim.param_groups

    @property
    def state(self):
        return self.optim.state

    def zero_grad(self, set_to_none: bool = True):
        if self._sharded:
            self._consumed = self.ddp.reductions    # the shards hold nothing new until the next backward
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.data[...] = 0

    def step(self, closure=None):
        """Update this rank's shards, then all-gather the parameters; returns closure() if given."""
        if not self._sharded:
            return self.optim.step(closure)
        loss = None
        if closure is not None:
            from engine.tensor import enable_grad
            with enable_grad():
                loss = closure()
        self._check_storage()
        self.ddp.synchronize()
        if self.ddp.reductions == self._consumed:
            # no backward since zero_grad (or the last step): like an optimizer whose .grad are None,
            # update nothing instead of applying the previous gradient again
            return loss
        self._consumed = self.ddp.reductions
        self.optim.step()
        if not self.ddp.overlap:         # one bucket, nothing to overlap: no hand-off to the comm thread
            for b in self.ddp.buckets:
                self.comm.allgather_inplace(b.param_flat)
            return loss
        handles = [self.comm.allgather_inplace_async(b.param_flat) for b in self.ddp.buckets]
        for h in handles:
            h.wait(self.ddp.timeout)
        return loss

    def _check_storage(self):
        """The shard update only reaches parameters that still live in the bucket buffers."""
        for b in self.ddp.buckets:
            for p in b.params:
                base = p.data.base      # the array itself may be a view of the bucket's view
                while base is not None and base is not b.param_flat:
                    base = getattr(base, "base", None)
                if base is None:
                    raise RuntimeError(
                        "ZeroRedundancyOptimizer: a parameter's array was replaced after the optimizer was "
                        "created (e.g. load_state_dict(..., assign=True) or .to(device)), so sharded updates "
                        "would no longer reach it; load weights in place (the default) or create the "
                        "optimizer after moving the model")

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> float:
        """Scale the reduced gradient shards so their global norm is at most max_norm; returns the
        norm before clipping (collective: every rank must call it)."""
        if not self._sharded:
            from engine.nn.utils import clip_grad_norm_
            return float(clip_grad_norm_(self.params, max_norm, norm_type))
        self.ddp.synchronize()
        grads = [t.grad.data for t in self._shards]
        if norm_type == math.inf:
            local = np.array([max((float(abs(g).max()) for g in grads if g.size), default=0.0)])
            total = float(self.comm.allreduce(local, op="max")[0])
        else:
            local = np.array([sum(float((abs(g.astype(np.float64)) ** norm_type).sum()) for g in grads)])
            total = float(self.comm.allreduce(local, op="sum")[0]) ** (1.0 / norm_type)
        coef = max_norm / (total + 1e-6)
        if coef < 1.0:
            for g in grads:
                g *= g.dtype.type(coef)
        return total

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """The inner optimizer's state_dict over all of the model's parameters (collective).

        Shard states are all-gathered into full per-parameter arrays, so the result is what
        an unsharded optimizer_class(model.parameters()) would return."""
        if not self._sharded:
            return self.optim.state_dict()
        inner = self.optim.state_dict()
        full_state, buckets = {}, self.ddp.buckets
        index = {id(p): i for i, p in enumerate(self.params)}
        for bi, b in enumerate(buckets):
            st = inner["state"].get(bi)
            # every rank must take part in the same gathers, in the same order
            keys = self.comm.broadcast_obj(sorted(st) if st is not None else None, root=0)
            if keys is None:
                continue
            per_param = {index[id(p)]: {} for p in b.params}
            for key in keys:
                value = st[key]
                if isinstance(value, np.ndarray) and value.shape == (b.bounds[self.ddp.rank + 1]
                                                                     - b.bounds[self.ddp.rank],):
                    full = np.zeros(b.numel, dtype=value.dtype)
                    full[b.bounds[self.ddp.rank]:b.bounds[self.ddp.rank + 1]] = value
                    self.comm.allgather_inplace(full)
                    for p, off in zip(b.params, b.offsets):
                        per_param[index[id(p)]][key] = full[off:off + p.size].reshape(p.shape).copy()
                else:                               # step counts and other scalars: equal on every rank
                    for p in b.params:
                        per_param[index[id(p)]][key] = value
            full_state.update(per_param)
        group = dict(inner["param_groups"][0])
        group["params"] = list(range(len(self.params)))
        return {"state": dict(sorted(full_state.items())), "param_groups": [group]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Load a state_dict of optimizer_class over all parameters (sharded or not when saved)."""
        if not self._sharded:
            return self.optim.load_state_dict(state_dict)
        groups = state_dict["param_groups"]
        if len(groups) != 1 or len(groups[0]["params"]) != len(self.params):
            raise ValueError(f"ZeroRedundancyOptimizer: the state dict is for {sum(len(g['params']) for g in groups)} "
                             f"parameters in {len(groups)} group(s); this model has {len(self.params)} in one group")
        saved = {int(k): v for k, v in state_dict["state"].items()}
        index = {id(p): i for i, p in enumerate(self.params)}
        shard_state = {}
        for bi, b in enumerate(self.ddp.buckets):
            states = [saved.get(index[id(p)]) for p in b.params]
            if all(s is None for s in states):
                continue
            if any(s is None for s in states):
                raise ValueError("ZeroRedundancyOptimizer: the state dict has state for some parameters of a "
                                 "bucket but not for others; it was not saved from this model")
            lo, hi = b.bounds[self.ddp.rank], b.bounds[self.ddp.rank + 1]
            out = {}
            for key, first in states[0].items():
                if isinstance(first, np.ndarray):
                    flat = np.concatenate([np.asarray(s[key], dtype=first.dtype).reshape(-1) for s in states])
                    out[key] = flat[lo:hi].copy()
                else:
                    out[key] = first
            shard_state[bi] = out
        group = dict(groups[0])
        group["params"] = list(range(len(self._shards)))
        self.optim.load_state_dict({"state": shard_state, "param_groups": [group]})
