"""im2col / col2im: the data movement behind conv2d and pooling, for numpy and cupy arrays.

Layout (Chainer's): col has shape (N, C, kh, kw, out_h, out_w); img is NCHW.  conv2d is then one
tensordot of col with the (out, C, kh, kw) weight, and its input gradient is col2im of the weight-projected
output gradient.  col2im is the exact adjoint of im2col (with pval=0): <col2im(c), x> == <c, im2col(x)>.

CPU path: im2col is a strided view of the padded input (no Python loop over batch or pixels) copied once;
col2im loops only over the kh*kw kernel taps, each an np.add into a strided slice.
GPU path: conv.cu; im2col one thread per column element, col2im a deterministic gather (no atomics).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from . import _runtime as rt
from . import _source

_CU = "conv.cu"
_source.register_raw(_CU, "im2col", "col2im")


def get_conv_outsize(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    """Output length of a convolution window (PyTorch's formula, floor mode)."""
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _out_hw(h, w, kh, kw, sy, sx, ph, pw, dy, dx):
    for name, v in (("kh", kh), ("kw", kw), ("sy", sy), ("sx", sx), ("dy", dy), ("dx", dx)):
        if int(v) < 1:
            raise ValueError(f"im2col: {name} must be >= 1, got {v}")
    if ph < 0 or pw < 0:
        raise ValueError(f"im2col: padding must be >= 0, got ({ph}, {pw})")
    out_h = get_conv_outsize(h, kh, sy, ph, dy)
    out_w = get_conv_outsize(w, kw, sx, pw, dx)
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"im2col: a {kh}x{kw} window (dilation {dy},{dx}, padding {ph},{pw}) does not fit "
                         f"a {h}x{w} input; use a smaller kernel or more padding")
    return out_h, out_w


def im2col(x, kh, kw, sy, sx, ph, pw, dy=1, dx=1, pval=0.0):
    """(N, C, H, W) -> (N, C, kh, kw, out_h, out_w). `pval` fills padding (-inf for max pooling)."""
    if x.ndim != 4:
        raise ValueError(f"im2col expects an NCHW array, got shape {x.shape}")
    if rt.is_cupy(x):
        return im2col_gpu(x, kh, kw, sy, sx, ph, pw, dy, dx, pval)
    return im2col_cpu(x, kh, kw, sy, sx, ph, pw, dy, dx, pval)


def col2im(col, h, w, sy, sx, ph, pw, dy=1, dx=1):
    """(N, C, kh, kw, out_h, out_w) -> (N, C, h, w): sums every column entry back onto its input pixel."""
    if col.ndim != 6:
        raise ValueError(f"col2im expects a (N, C, kh, kw, out_h, out_w) array, got shape {col.shape}")
    if rt.is_cupy(col):
        return col2im_gpu(col, h, w, sy, sx, ph, pw, dy, dx)
    return col2im_cpu(col, h, w, sy, sx, ph, pw, dy, dx)


# ---------------------------------------------------------------------------------------------------- CPU


def im2col_cpu(x, kh, kw, sy, sx, ph, pw, dy=1, dx=1, pval=0.0):
    n, c, h, w = x.shape
    out_h, out_w = _out_hw(h, w, kh, kw, sy, sx, ph, pw, dy, dx)
    if ph or pw:
        # zeros/full + one slice copy is several times faster than np.pad on NCHW batches
        padded = np.full((n, c, h + 2 * ph, w + 2 * pw), pval, dtype=x.dtype)
        padded[:, :, ph:ph + h, pw:pw + w] = x
    else:
        padded = np.ascontiguousarray(x)
    s0, s1, s2, s3 = padded.strides
    view = as_strided(padded, shape=(n, c, kh, kw, out_h, out_w),
                      strides=(s0, s1, dy * s2, dx * s3, sy * s2, sx * s3), writeable=False)
    return np.ascontiguousarray(view)


def col2im_cpu(col, h, w, sy, sx, ph, pw, dy=1, dx=1):
    n, c, kh, kw, out_h, out_w = col.shape
    exp_h, exp_w = _out_hw(h, w, kh, kw, sy, sx, ph, pw, dy, dx)
    if (exp_h, exp_w) != (out_h, out_w):
        raise ValueError(f"col2im: column spatial size {(out_h, out_w)} does not match a {h}x{w} image with "
                         f"these kernel/stride/padding settings (expected {(exp_h, exp_w)})")
    img = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dtype=col.dtype)
    for j in range(kh):
        y0 = j * dy
        y1 = y0 + sy * (out_h - 1) + 1
        for i in range(kw):
            x0 = i * dx
            x1 = x0 + sx * (out_w - 1) + 1
            dst = img[:, :, y0:y1:sy, x0:x1:sx]
            np.add(dst, col[:, :, j, i], out=dst)
    if ph or pw:
        return np.ascontiguousarray(img[:, :, ph:ph + h, pw:pw + w])
    return img


# ---------------------------------------------------------------------------------------------------- GPU


def _xp_of(a):
    return rt.cupy() if rt.is_cupy(a) else np


def im2col_gpu(x, kh, kw, sy, sx, ph, pw, dy=1, dx=1, pval=0.0, launcher=None):
    """Kernel path. `launcher` defaults to cupy; the host emulator passes its own to run conv.cu on the CPU."""
    launcher = launcher or rt.LAUNCHER
    xp = _xp_of(x)
    n, c, h, w = x.shape
    out_h, out_w = _out_hw(h, w, kh, kw, sy, sx, ph, pw, dy, dx)
    rt.float_suffix(x.dtype)
    x = xp.ascontiguousarray(x)
    col = xp.empty((n, c, kh, kw, out_h, out_w), dtype=x.dtype)
    total = col.size
    launcher.raw(_CU, "im2col", x.dtype, total,
                 (x, col, rt.i64(total), rt.i64(h), rt.i64(w), rt.i64(out_h), rt.i64(out_w), rt.i64(kh),
                  rt.i64(kw), rt.i64(sy), rt.i64(sx), rt.i64(ph), rt.i64(pw), rt.i64(dy), rt.i64(dx),
                  rt.f64(pval)))
    return col


def col2im_gpu(col, h, w, sy, sx, ph, pw, dy=1, dx=1, launcher=None):
    launcher = launcher or rt.LAUNCHER
    xp = _xp_of(col)
    n, c, kh, kw, out_h, out_w = col.shape
    exp_h, exp_w = _out_hw(h, w, kh, kw, sy, sx, ph, pw, dy, dx)
    if (exp_h, exp_w) != (out_h, out_w):
        raise ValueError(f"col2im: column spatial size {(out_h, out_w)} does not match a {h}x{w} image with "
                         f"these kernel/stride/padding settings (expected {(exp_h, exp_w)})")
    rt.float_suffix(col.dtype)
    col = xp.ascontiguousarray(col)
    img = xp.empty((n, c, h, w), dtype=col.dtype)
    total = img.size
    launcher.raw(_CU, "col2im", col.dtype, total,
                 (col, img, rt.i64(total), rt.i64(h), rt.i64(w), rt.i64(out_h), rt.i64(out_w), rt.i64(kh),
                  rt.i64(kw), rt.i64(sy), rt.i64(sx), rt.i64(ph), rt.i64(pw), rt.i64(dy), rt.i64(dx)))
    return img
