"""Fused softmax cross-entropy: forward (per-sample loss via log-sum-exp) and backward (softmax - target).

Semantics follow torch.nn.functional.cross_entropy for (N, C) logits and (N,) integer class labels:
label_smoothing eps mixes the one-hot target with the uniform distribution, rows whose label equals
ignore_index contribute 0 loss and 0 gradient, and reduction="mean" divides by the number of rows not
ignored (NaN when every row is ignored, as PyTorch does).  Fusing matters because the composition
log_softmax -> gather -> mean materialises the (N, C) log-probabilities and walks them three times; here
the forward reads the logits once and keeps only lse (N,) for the backward.

    loss, lse = softmax_xent_forward(logits, labels, label_smoothing, ignore_index, reduction)
    dlogits   = softmax_xent_backward(logits, labels, lse, grad_out, label_smoothing, ignore_index, reduction)

`loss` is a 0-d array for "mean"/"sum" and (N,) for "none"; `grad_out` has the same shape as `loss`.
Labels outside [0, C) that are not ignore_index raise IndexError on the CPU; on the GPU (no cheap way to
raise from a kernel) their loss is NaN, which the training loop's loss check surfaces.
"""
from __future__ import annotations

import numpy as np

from . import _runtime as rt
from . import _source

_CU = "softmax_xent.cu"
_source.register_raw(_CU, "xent_forward", "xent_backward")
_WARP = 32          # lanes per row in xent_forward (DPT_WARP in the CUDA source)
_REDUCTIONS = ("mean", "sum", "none")


def _check(logits, labels, label_smoothing, reduction):
    if logits.ndim != 2:
        raise ValueError(f"softmax_xent expects (N, C) logits, got shape {logits.shape}; "
                         "move the class axis last and flatten the rest first")
    if labels.shape != (logits.shape[0],):
        raise ValueError(f"softmax_xent: labels shape {labels.shape} does not match logits {logits.shape}; "
                         "expected (N,) integer class indices")
    if labels.dtype.kind not in "iu":
        raise TypeError(f"softmax_xent: labels must be integer class indices, got dtype {labels.dtype}")
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def softmax_xent_forward(logits, labels, label_smoothing=0.0, ignore_index=-100, reduction="mean"):
    """Return (loss, lse). lse (N,) is the per-row log-sum-exp, kept for the backward."""
    _check(logits, labels, label_smoothing, reduction)
    if rt.is_cupy(logits):
        return forward_gpu(logits, labels, label_smoothing, ignore_index, reduction)
    return forward_cpu(logits, labels, label_smoothing, ignore_index, reduction)


def softmax_xent_backward(logits, labels, lse, grad_out, label_smoothing=0.0, ignore_index=-100,
                          reduction="mean"):
    """Gradient of the loss w.r.t. the logits, shape (N, C)."""
    _check(logits, labels, label_smoothing, reduction)
    if rt.is_cupy(logits):
        return backward_gpu(logits, labels, lse, grad_out, label_smoothing, ignore_index, reduction)
    return backward_cpu(logits, labels, lse, grad_out, label_smoothing, ignore_index, reduction)


def _reduce_cpu(per_row, valid, reduction, dtype):
    """Apply the reduction on the host; 0-d arrays (not numpy scalars) so both paths return the same kind."""
    if reduction == "none":
        return per_row
    total = per_row.sum(dtype=np.float64) if dtype == np.float32 else per_row.sum()
    if reduction == "sum":
        return np.asarray(total, dtype=dtype)
    count = int(valid.sum())
    return np.asarray(total / count if count else np.nan, dtype=dtype)


# ---------------------------------------------------------------------------------------------------- CPU


def forward_cpu(logits, labels, label_smoothing=0.0, ignore_index=-100, reduction="mean"):
    z = logits
    n, c = z.shape
    valid = labels != ignore_index
    bad = valid & ((labels < 0) | (labels >= c))
    if bad.any():
        r = int(np.argmax(bad))
        raise IndexError(f"cross_entropy: label {int(labels[r])} at row {r} is outside [0, {c}) and is not "
                         f"ignore_index={ignore_index}")
    m = z.max(axis=1, keepdims=True)
    shifted = z - m
    np.exp(shifted, out=shifted)
    lse = np.log(shifted.sum(axis=1)) + m[:, 0]
    safe = np.where(valid, labels, 0)
    z_y = z[np.arange(n), safe]
    eps = float(label_smoothing)
    per_row = lse - (1.0 - eps) * z_y
    if eps:
        per_row = per_row - eps * z.mean(axis=1)
    per_row = np.where(valid, per_row, 0).astype(z.dtype, copy=False)
    return _reduce_cpu(per_row, valid, reduction, z.dtype), lse.astype(z.dtype, copy=False)


def backward_cpu(logits, labels, lse, grad_out, label_smoothing=0.0, ignore_index=-100, reduction="mean"):
    z = logits
    n, c = z.shape
    dtype = z.dtype
    valid = labels != ignore_index
    with np.errstate(divide="ignore", invalid="ignore"):
        g = _row_grad(np, grad_out, valid, reduction, dtype, n)       # (N,) or (1,)
    dz = z - lse[:, None]
    np.exp(dz, out=dz)                                                 # softmax
    eps = float(label_smoothing)
    if eps:
        dz -= dtype.type(eps / c)
    rows = np.nonzero(valid)[0]
    dz[rows, labels[rows]] -= dtype.type(1.0 - eps)
    dz *= (g if g.shape == (1,) else g[:, None]).astype(dtype, copy=False)
    dz[~valid] = 0
    return dz


def _row_grad(xp, grad_out, valid, reduction, dtype, n):
    """Upstream gradient per row: (N,) for 'none', else one element already divided by the mean count."""
    g = xp.asarray(grad_out, dtype=dtype)
    if reduction == "none":
        if g.shape != (n,):
            raise ValueError(f"softmax_xent_backward: grad_out shape {g.shape} must be ({n},) for reduction='none'")
        return g
    if g.size != 1:
        raise ValueError(f"softmax_xent_backward: grad_out must be a scalar for reduction={reduction!r}, "
                         f"got shape {g.shape}")
    g = g.reshape(1)
    if reduction == "mean":
        g = (g / valid.sum().astype(dtype)).astype(dtype)   # count 0 -> inf/nan, like PyTorch's 0/0
    return g


# ---------------------------------------------------------------------------------------------------- GPU


def _xp_of(a):
    return rt.cupy() if rt.is_cupy(a) else np


def forward_gpu(logits, labels, label_smoothing=0.0, ignore_index=-100, reduction="mean", launcher=None):
    """Kernel path; `launcher` lets the host emulator run softmax_xent.cu on numpy arrays."""
    launcher = launcher or rt.LAUNCHER
    xp = _xp_of(logits)
    rt.float_suffix(logits.dtype)
    z = xp.ascontiguousarray(logits)
    y = xp.ascontiguousarray(xp.asarray(labels, dtype=xp.int64))    # host labels are moved over
    n, c = z.shape
    per_row = xp.empty((n,), dtype=z.dtype)
    lse = xp.empty((n,), dtype=z.dtype)
    launcher.raw(_CU, "xent_forward", z.dtype, n * _WARP,
                 (z, y, per_row, lse, rt.i64(n), rt.i64(c), rt.f64(label_smoothing), rt.i64(ignore_index)))
    valid = y != ignore_index
    if reduction == "none":
        return per_row, lse
    total = per_row.sum()
    if reduction == "sum":
        return total, lse
    return (total / valid.sum().astype(z.dtype)).astype(z.dtype), lse


def backward_gpu(logits, labels, lse, grad_out, label_smoothing=0.0, ignore_index=-100, reduction="mean",
                 launcher=None):
    launcher = launcher or rt.LAUNCHER
    xp = _xp_of(logits)
    rt.float_suffix(logits.dtype)
    z = xp.ascontiguousarray(logits)
    y = xp.ascontiguousarray(xp.asarray(labels, dtype=xp.int64))    # host labels are moved over
    n, c = z.shape
    lse = xp.ascontiguousarray(lse, dtype=z.dtype)
    g = xp.ascontiguousarray(_row_grad(xp, grad_out, y != ignore_index, reduction, z.dtype, n))
    dz = xp.empty_like(z)
    launcher.raw(_CU, "xent_backward", z.dtype, n * c,
                 (z, y, lse, g, rt.i64(1 if reduction == "none" else 0), dz, rt.i64(n), rt.i64(c),
                  rt.f64(label_smoothing), rt.i64(ignore_index)))
    return dz
