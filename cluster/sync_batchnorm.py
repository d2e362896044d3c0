"""SyncBatchNorm: batch statistics over the global batch, not each worker's slice.

Plain BatchNorm under data parallelism normalises each worker's rows with that
worker's own mean and variance, so N workers train a different model than one
worker with the same global batch.  SyncBatchNorm all-reduces the per-channel sums
in forward (and the two gradient sums in backward), which makes N workers compute
exactly what one worker computes.  Sums travel in float64 so the statistics do not
depend on how rows are split across workers beyond rounding.
"""
from __future__ import annotations

import numpy as np

from engine import nn
from engine.backend import get_array_module
from engine.tensor import Tensor, from_op


def _allreduce(comm, arr):
    if comm is None or comm.size == 1:
        return arr
    return comm.allreduce(arr, op="sum")


def sync_batch_norm(x: Tensor, weight, bias, running_mean, running_var, num_batches_tracked,
                    training: bool, momentum: float, eps: float, comm):
    xp = get_array_module(x.data)
    d = x.data
    C = d.shape[1]
    axes = (0,) + tuple(range(2, d.ndim))
    bshape = (1, C) + (1,) * (d.ndim - 2)
    if training:
        n_local = d.size // C
        stats = xp.concatenate([d.sum(axis=axes, dtype=np.float64),
                                xp.asarray([float(n_local)], dtype=np.float64)])
        stats = _allreduce(comm, stats)
        count = float(stats[-1])
        if count <= 1:
            raise ValueError(f"SyncBatchNorm: expected more than 1 value per channel in training, "
                             f"got {int(count)} over all workers (input shape {x.shape})")
        mean64 = stats[:C] / count
        centered = d - mean64.astype(d.dtype).reshape(bshape)
        sq = _allreduce(comm, (centered.astype(np.float64) ** 2).sum(axis=axes))
        var64 = sq / count
        if running_mean is not None:
            m = momentum
            running_mean.data[...] = ((1 - m) * running_mean.data + m * mean64).astype(running_mean.dtype)
            unbiased = var64 * count / (count - 1)
            running_var.data[...] = ((1 - m) * running_var.data + m * unbiased).astype(running_var.dtype)
            if num_batches_tracked is not None:
                num_batches_tracked.data[...] += 1
        mean, var = mean64.astype(d.dtype), var64.astype(d.dtype)
    else:
        count = None
        mean, var = running_mean.data, running_var.data
        centered = d - mean.reshape(bshape)
    invstd = (1.0 / xp.sqrt(var.astype(np.float64) + eps)).astype(d.dtype)
    xhat = centered * invstd.reshape(bshape)
    out = xhat
    if weight is not None:
        out = xhat * weight.data.reshape(bshape) + bias.data.reshape(bshape)
    parents = (x,) + ((weight, bias) if weight is not None else ())

    def backward(g):
        gw = (g * xhat).sum(axis=axes) if weight is not None else None
        gb = g.sum(axis=axes) if weight is not None else None
        gx = None
        if x.requires_grad:
            scale = invstd if weight is None else invstd * weight.data
            if training:
                local_gb = gb if gb is not None else g.sum(axis=axes)
                local_gw = gw if gw is not None else (g * xhat).sum(axis=axes)
                sums = _allreduce(comm, xp.concatenate([local_gb, local_gw]).astype(np.float64))
                mg = (sums[:C] / count).astype(d.dtype).reshape(bshape)
                mgx = (sums[C:] / count).astype(d.dtype).reshape(bshape)
                gx = (g - mg - xhat * mgx) * scale.reshape(bshape)
            else:
                gx = g * scale.reshape(bshape)
        if weight is None:
            return (gx,)
        return (gx, gw, gb)
    return from_op(out, parents, backward, "sync_batch_norm")


class SyncBatchNorm(nn.Module):
    """Drop-in for BatchNorm1d/2d that shares its parameters and buffers with the original."""

    def __init__(self, bn, comm):
        super().__init__()
        self.num_features = bn.num_features
        self.eps = bn.eps
        self.momentum = bn.momentum
        self.affine = bn.affine
        self.track_running_stats = bn.track_running_stats
        self.weight = bn.weight
        self.bias = bn.bias
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            buf = getattr(bn, name, None)
            if buf is not None:
                self.register_buffer(name, buf)
            else:
                setattr(self, name, None)
        self.comm = comm
        self.training = bn.training
        self._expected_ndim = (2, 3) if isinstance(bn, nn.BatchNorm1d) else (4,)

    def forward(self, x):
        if x.ndim not in self._expected_ndim or x.shape[1] != self.num_features:
            raise ValueError(f"SyncBatchNorm({self.num_features}): expected input with "
                             f"{self._expected_ndim[0]} dims and {self.num_features} channels on axis 1, "
                             f"got shape {x.shape}")
        use_batch = self.training or not self.track_running_stats
        momentum = 0.1 if self.momentum is None else self.momentum
        return sync_batch_norm(x, self.weight, self.bias,
                               self.running_mean if self.training else self.running_mean,
                               self.running_var, self.num_batches_tracked if self.training else None,
                               use_batch, momentum, self.eps, self.comm if self.training else None)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}"


def convert_sync_batchnorm(module, comm):
    """Replace every BatchNorm1d/2d inside `module` by a SyncBatchNorm sharing its state."""
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return SyncBatchNorm(module, comm)
    for name, child in list(module.named_children()):
        new = convert_sync_batchnorm(child, comm)
        if new is not child:
            module._modules[name] = new          # in place: keeps the child order (Sequential)
    return module
