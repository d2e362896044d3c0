"""Gradient clipping (torch.nn.utils.clip_grad_norm_).

The norm is computed and applied on the gradients' own array module without a
host round trip: the clip coefficient min(1, max_norm / (norm + 1e-6)) stays an
array and every gradient is scaled by it in place (by 1.0 when no clipping is
needed, as PyTorch does), so on GPU nothing synchronizes unless
error_if_nonfinite=True asks for the check.
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module

__all__ = ["clip_grad_norm_"]


def _grads(parameters):
    if hasattr(parameters, "grad") and hasattr(parameters, "data"):
        parameters = [parameters]
    return [p.grad.data for p in parameters if p.grad is not None]


def _norm(xp, g, p):
    flat = g.reshape(-1)
    if p == 2.0:
        if flat.dtype.kind == "c":
            return xp.sqrt(xp.vdot(flat, flat).real)
        return xp.sqrt(xp.dot(flat, flat))           # BLAS dot: no |g|^2 temporary
    if math.isinf(p):
        return xp.abs(flat).max() if p > 0 else xp.abs(flat).min()
    if p == 1.0:
        return xp.abs(flat).sum()
    if p == 0.0:
        return xp.asarray((flat != 0).sum(), dtype=flat.dtype)
    return (xp.abs(flat) ** p).sum() ** (1.0 / p)


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0,
                    error_if_nonfinite: bool = False):
    """Scale gradients in place so their joint norm is at most max_norm; return the norm
    before clipping as a 0-d engine Tensor (like PyTorch)."""
    from ..tensor import Tensor
    norm_type = float(norm_type)
    max_norm = float(max_norm)
    grads = _grads(parameters)
    if not grads:
        return Tensor(np.asarray(0.0, dtype=np.float32))
    xp = get_array_module(grads[0])
    dtype = grads[0].dtype
    norms = xp.stack([_norm(xp, g, norm_type).astype(dtype) for g in grads])
    if math.isinf(norm_type):
        total = norms.max() if norm_type > 0 else norms.min()
    else:
        total = _norm(xp, norms, norm_type)
    if error_if_nonfinite and not bool(xp.isfinite(total)):
        raise RuntimeError(
            f"the total norm of order {norm_type} for gradients is non-finite, so it cannot be "
            "clipped; pass error_if_nonfinite=False to clip anyway")
    coef = xp.minimum(max_norm / (total + 1e-6), 1.0)
    for g in grads:
        g *= coef.astype(g.dtype)
    return Tensor(total)
