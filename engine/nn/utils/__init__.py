"""torch.nn.utils: gradient clipping (clip_grad_norm_, clip_grad_value_), parameters_to_vector /
vector_to_parameters, and the `rnn` submodule (pad_sequence, PackedSequence and the
pack / unpack helpers).

The norm is computed and applied on the gradients' own array module without a
host round trip: the clip coefficient min(1, max_norm / (norm + 1e-6)) stays an
array and every gradient is scaled by it in place (by 1.0 when no clipping is
needed, as PyTorch does), so on GPU nothing synchronizes unless
error_if_nonfinite=True asks for the check.
"""
from __future__ import annotations

import math

import numpy as np

from ...backend import get_array_module
from . import rnn  # noqa: F401  (torch.nn.utils.rnn)

__all__ = ["clip_grad_norm_", "clip_grad_value_", "parameters_to_vector", "vector_to_parameters", "rnn"]


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
    from ...tensor import Tensor
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


def clip_grad_value_(parameters, clip_value: float, foreach=None):
    """Clip every gradient element to [-clip_value, clip_value] in place (on the gradient's device)."""
    v = float(clip_value)
    for g in _grads(parameters):
        xp = get_array_module(g)
        xp.clip(g, -v, v, out=g)


def _param_list(parameters):
    if hasattr(parameters, "grad") and hasattr(parameters, "data"):
        return [parameters]
    return list(parameters)


def parameters_to_vector(parameters):
    """All parameters flattened and concatenated into one 1-D tensor (differentiable, as torch's)."""
    from ... import ops
    params = _param_list(parameters)
    if not params:
        raise ValueError("parameters_to_vector: no parameters given")
    return ops.concat([ops.reshape(p, (-1,)) for p in params], axis=0)


def vector_to_parameters(vec, parameters):
    """Copy consecutive slices of the 1-D `vec` into the parameters, in place (no graph recorded)."""
    from ...tensor import Tensor
    data = vec.data if isinstance(vec, Tensor) else vec
    if getattr(data, "ndim", None) != 1:
        raise TypeError(f"vector_to_parameters: expected a 1-D vector, got shape {getattr(data, 'shape', None)}")
    params = _param_list(parameters)
    total = sum(p.size for p in params)
    if data.shape[0] != total:
        raise ValueError(f"vector_to_parameters: the vector has {data.shape[0]} elements, the parameters {total}")
    ptr = 0
    for p in params:
        n = p.size
        p.data[...] = data[ptr:ptr + n].reshape(p.shape).astype(p.dtype, copy=False)
        ptr += n
