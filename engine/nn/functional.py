"""engine.nn.functional: torch.nn.functional's names and arguments on engine Tensors.

Each heavy op is one autodiff node (`from_op`) with a hand-written numpy/cupy forward and
backward instead of a chain of elementary ops: linear is x @ W.T + b in one node, conv2d is
im2col + one sgemm (see _conv.py), cross_entropy is a log-sum-exp softmax loss whose
backward is softmax - one_hot, the recurrent layers run a whole sequence per node (_rnn.py).
That is what makes the engine faster than PyTorch on the CPU for the seed models.

Everything stays in the dtype of the parameters (float32 by default): Python scalars are
cast, and an input of another float dtype is cast to the weight's dtype.  PyTorch's dim= /
keepdim= and NumPy's axis= / keepdims= are both accepted.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .. import backend
from .. import ops as _ops
from .. import random as _random
from ..backend import get_array_module
from ..tensor import Tensor, from_op, no_grad, is_grad_enabled
from . import _conv, _rnn

__all__ = [
    "linear", "conv2d", "conv2d_relu_max_pool2d", "max_pool2d", "avg_pool2d", "relu", "leaky_relu", "gelu", "sigmoid", "tanh",
    "softmax", "log_softmax", "cross_entropy", "nll_loss", "mse_loss", "l1_loss", "dropout", "batch_norm",
    "layer_norm", "embedding", "one_hot", "flatten", "lstm_layer", "gru_layer", "rnn_layer", "ShapeError",
    "conv1d", "adaptive_avg_pool2d", "silu", "elu", "softplus", "hardtanh", "relu6", "smooth_l1_loss",
    "huber_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "kl_div", "group_norm", "pad",
    "normalize", "cosine_similarity", "pairwise_distance", "scaled_dot_product_attention", "dropout1d",
    "dropout2d", "dropout3d",
]


class ShapeError(ValueError, RuntimeError):
    """A layer got an input of the wrong shape (a ValueError, and a RuntimeError like PyTorch's)."""


# ------------------------------------------------------------------------------------------ helpers


def _raw_like(v, like):
    """The raw array of v (a Tensor, an array, a list or a number) on like's device: targets, indices
    and masks may arrive as host arrays for a model on the GPU."""
    arr = v.data if isinstance(v, Tensor) else v
    if not (hasattr(arr, "dtype") and hasattr(arr, "shape")):
        arr = np.asarray(arr)
    if get_array_module(arr) is not get_array_module(like.data):
        arr = backend.to_device(arr, like.device)
    return arr


def _t(x, like=None):
    """Tensor view of x (arrays and Python numbers become constants)."""
    if isinstance(x, Tensor):
        return x
    if like is not None:
        return Tensor._wrap(_raw_like(x, like))
    return Tensor(x)


def _pair(v, name="argument"):
    if isinstance(v, numbers.Integral):
        return (int(v), int(v))
    v = tuple(int(a) for a in v)
    if len(v) == 1:
        return (v[0], v[0])
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v}")
    return v


def _axis(dim, axis, name, default=None):
    if dim is not None and axis is not None and dim != axis:
        raise TypeError(f"{name}: give dim= or axis=, not both")
    return dim if dim is not None else (axis if axis is not None else default)


def _match_dtype(x, dtype):
    """Cast x's array to the weight dtype (float inputs of another precision are converted)."""
    d = x.data
    if d.dtype != dtype:
        return d.astype(dtype)
    return d


def _back_dtype(g, dtype):
    return g if g is None or g.dtype == dtype else g.astype(dtype)


def _reduction(size_average, reduce, reduction):
    """Map PyTorch's deprecated size_average/reduce flags to a reduction string."""
    if size_average is not None or reduce is not None:
        size_average = True if size_average is None else size_average
        reduce = True if reduce is None else reduce
        reduction = ("mean" if size_average else "sum") if reduce else "none"
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
    return reduction


def _f(dtype, v):
    """Python scalar as a 0-d value of dtype (no float64 promotion)."""
    return np.dtype(dtype).type(v)


# ------------------------------------------------------------------------------------------ linear


def linear(input, weight, bias=None):
    """y = input @ weight.T + bias with weight (out, in): one node, one sgemm each way."""
    x = _t(input)
    if x.ndim == 0 or x.shape[-1] != weight.shape[1]:
        raise ShapeError(f"linear: input of shape {x.shape} does not match weight of shape {weight.shape} "
                         f"(expected last dimension {weight.shape[1]})")
    W = weight.data
    xd = _match_dtype(x, W.dtype)
    in_f, out_f = W.shape[1], W.shape[0]
    lead = xd.shape[:-1]
    x2 = xd if xd.ndim == 2 else xd.reshape(-1, in_f)
    out = x2 @ W.T
    if bias is not None:
        out += bias.data
    xdtype = x.dtype
    need_x, need_w = x.requires_grad, weight.requires_grad
    need_b = bias is not None and bias.requires_grad

    def backward(g):
        g2 = g if g.ndim == 2 else g.reshape(-1, out_f)
        dx = dw = db = None
        if need_x:
            # Return the gradient in the input's memory order (an F-ordered input comes from a
            # free Flatten of a conv/pool output; keeping that order keeps their backward copy-free).
            if x2.flags.f_contiguous and not x2.flags.c_contiguous:
                dx = (W.T @ g2.T).T
            else:
                dx = g2 @ W
            dx = _back_dtype(dx.reshape(lead + (in_f,)), xdtype)
        if need_w:
            dw = g2.T @ x2
        if need_b:
            db = g2.sum(axis=0)
        return (dx, dw, db) if bias is not None else (dx, dw)

    out = out.reshape(lead + (out_f,))
    parents = (x, weight, bias) if bias is not None else (x, weight)
    return from_op(out, parents, backward, "linear")


# ------------------------------------------------------------------------------------------ conv / pool


def _conv_padding(padding, ksize, dilation, stride):
    """padding int/pair/'valid'/'same' -> (top, bottom, left, right) as PyTorch resolves it."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError("padding='same' is not supported for strided convolutions")
            pads = []
            for k, d in zip(ksize, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"invalid padding string {padding!r}, use 'valid' or 'same'")
    ph, pw = _pair(padding, "padding")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be non-negative, got {padding}")
    return (ph, ph, pw, pw)


def _conv_args(x, weight, stride, padding, dilation, groups, name="conv2d"):
    """Validate conv2d arguments; returns (x as 4-D, unbatched, stride, pads, dilation, groups, (oh, ow))."""
    x = _t(x)
    unbatched = x.ndim == 3
    if unbatched:
        x = _ops.unsqueeze(x, 0)
    if x.ndim != 4:
        raise ShapeError(f"{name}: expected a 4-D (N, C, H, W) or 3-D (C, H, W) input, got shape {x.shape}")
    W = weight.data
    O, Cg, kh, kw = W.shape
    stride, dilation = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"{name}: stride and dilation must be >= 1, got {stride}, {dilation}")
    groups = int(groups)
    if x.shape[1] != Cg * groups:
        raise ShapeError(f"{name}: expected input with {Cg * groups} channels (weight {W.shape}, groups={groups}), "
                         f"got input of shape {x.shape}")
    if O % groups:
        raise ValueError(f"{name}: out_channels {O} is not divisible by groups {groups}")
    pads = _conv_padding(padding, (kh, kw), dilation, stride)
    H, Wd = x.shape[2], x.shape[3]
    oh = _conv.conv_out_size(H, kh, stride[0], pads[0], pads[1], dilation[0])
    ow = _conv.conv_out_size(Wd, kw, stride[1], pads[2], pads[3], dilation[1])
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"{name}: input of spatial size {(H, Wd)} with padding {pads} is smaller than the "
                         f"kernel {(kh, kw)} (dilation {dilation})")
    return x, unbatched, stride, pads, dilation, groups, (oh, ow)


def conv2d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """2-D convolution (cross-correlation) on NCHW input with a (out, in/groups, kh, kw) weight."""
    x, unbatched, stride, pads, dilation, groups, _ = _conv_args(input, weight, stride, padding, dilation, groups)
    return _conv_node(x, weight, bias, unbatched, "conv2d",
                      lambda xd, W, b: _conv.conv2d_forward(xd, W, b, stride, pads, dilation, groups),
                      _conv.conv2d_backward)


def _single(v, name):
    if isinstance(v, numbers.Integral):
        return int(v)
    v = tuple(int(a) for a in v)
    if len(v) != 1:
        raise ValueError(f"{name} must be an int or a 1-tuple, got {v}")
    return v[0]


def conv1d(input, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
    """1-D convolution on (N, C, L) or (C, L) input with a (out, in/groups, k) weight.

    Runs as conv2d on an (N, C, 1, L) view with the weight viewed as (out, in/groups, 1, k): the
    same im2col + one sgemm path (and GPU kernels), and the reshape views hand the gradients back
    in the 1-D shapes.
    """
    x = _t(input)
    if x.ndim not in (2, 3):
        raise ShapeError(f"conv1d: expected a 3-D (N, C, L) or 2-D (C, L) input, got shape {x.shape}")
    if weight.ndim != 3:
        raise ShapeError(f"conv1d: expected a 3-D (out, in/groups, k) weight, got shape {weight.shape}")
    pad2 = padding if isinstance(padding, str) else (0, _single(padding, "padding"))
    out = conv2d(_ops.unsqueeze(x, x.ndim - 1), _ops.unsqueeze(weight, 2), bias,
                 (1, _single(stride, "stride")), pad2, (1, _single(dilation, "dilation")), groups)
    return _ops.squeeze(out, out.ndim - 2)


def _conv_node(x, weight, bias, unbatched, name, forward, backward_fn):
    """One autodiff node around a conv-like kernel pair: forward(xd, W, b) -> (out, ctx) and
    backward_fn(g, W, ctx, need_x, need_w, need_b) -> (dx, dw, db)."""
    W = weight.data
    b = bias.data if bias is not None else None
    out, ctx = forward(_match_dtype(x, W.dtype), W, b)
    xdtype = x.dtype
    need_x, need_w = x.requires_grad, weight.requires_grad
    need_b = bias is not None and bias.requires_grad

    def backward(g):
        dx, dw, db = backward_fn(g, W, ctx, need_x, need_w, need_b)
        dx = _back_dtype(dx, xdtype)
        return (dx, dw, db) if bias is not None else (dx, dw)

    parents = (x, weight, bias) if bias is not None else (x, weight)
    out = from_op(out, parents, backward, name)
    return _ops.squeeze(out, 0) if unbatched else out


def conv2d_relu_max_pool2d(input, weight, bias=None, stride=1, padding=0, dilation=1):
    """max_pool2d(relu(conv2d(input, weight, bias, stride, padding, dilation)), 2) as ONE fused op.

    Same values and gradients as the three ops (PyTorch's first-maximum tie rule included),
    but the conv output is produced, rectified and pooled block by block in cache instead of
    being written to memory in full -- the dominant cost of a small CNN step on the CPU.
    nn.Sequential uses it automatically for Conv2d -> ReLU -> MaxPool2d(2) (no hooks on them).
    """
    padding_arg = padding
    x, unbatched, stride, pads, dilation, _, (oh, ow) = _conv_args(input, weight, stride, padding, dilation, 1,
                                                                   "conv2d_relu_max_pool2d")
    W = weight.data
    if get_array_module(W) is not np or oh < 2 or ow < 2:      # GPU (or degenerate size): the three ops
        out = max_pool2d(relu(conv2d(x, weight, bias, stride, padding_arg, dilation)), 2)
        return _ops.squeeze(out, 0) if unbatched else out
    return _conv_node(x, weight, bias, unbatched, "conv2d_relu_max_pool2d",
                      lambda xd, W, b: _conv.conv2d_relu_maxpool2_forward(xd, W, b, stride, pads, dilation),
                      _conv.conv2d_relu_maxpool2_backward)


def _pool_input(x, name):
    x = _t(x)
    if x.ndim == 3:
        return _ops.unsqueeze(x, 0), True
    if x.ndim != 4:
        raise ShapeError(f"{name}: expected a 4-D (N, C, H, W) or 3-D (C, H, W) input, got shape {x.shape}")
    return x, False


def _pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, name):
    k = _pair(kernel_size, "kernel_size")
    s = _pair(stride, "stride") if stride is not None and stride != () and stride != [] else k
    p = _pair(padding, "padding")
    d = _pair(dilation, "dilation")
    if min(k) < 1 or min(s) < 1 or min(d) < 1 or min(p) < 0:
        raise ValueError(f"{name}: kernel_size, stride, dilation must be >= 1 and padding >= 0, "
                         f"got {k}, {s}, {d}, {p}")
    for pi, ki in zip(p, k):
        if pi > ki // 2:
            raise ValueError(f"{name}: padding {p} must be at most half of the kernel size {k}")
    oh = _conv.pool_out_size(x.shape[2], k[0], s[0], p[0], d[0], ceil_mode)
    ow = _conv.pool_out_size(x.shape[3], k[1], s[1], p[1], d[1], ceil_mode)
    if oh <= 0 or ow <= 0:
        raise ShapeError(f"{name}: input of spatial size {x.shape[2:]} is too small for kernel {k} "
                         f"(stride {s}, padding {p}, dilation {d})")
    return k, s, p, d


def max_pool2d(input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, return_indices=False):
    x, unbatched = _pool_input(input, "max_pool2d")
    k, s, p, d = _pool_args(x, kernel_size, stride, padding, dilation, ceil_mode, "max_pool2d")
    out, ctx, idx = _conv.max_pool2d_forward(x.data, k, s, p, d, ceil_mode, return_indices)
    out = from_op(out, (x,), lambda g: (_conv.max_pool2d_backward(g, ctx),), "max_pool2d")
    if unbatched:
        out = _ops.squeeze(out, 0)
        idx = idx[0] if idx is not None else None
    if return_indices:
        return out, Tensor._wrap(idx)
    return out


def avg_pool2d(input, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True,
               divisor_override=None):
    x, unbatched = _pool_input(input, "avg_pool2d")
    k, s, p, _ = _pool_args(x, kernel_size, stride, padding, 1, ceil_mode, "avg_pool2d")
    if divisor_override is not None and divisor_override <= 0:
        raise ValueError(f"avg_pool2d: divisor_override must be positive, got {divisor_override}")
    out, ctx = _conv.avg_pool2d_forward(x.data, k, s, p, ceil_mode, count_include_pad, divisor_override)
    out = from_op(out, (x,), lambda g: (_conv.avg_pool2d_backward(g, ctx),), "avg_pool2d")
    return _ops.squeeze(out, 0) if unbatched else out

def _adaptive_matrix(size, out, dtype):
    """(out, size) averaging matrix over PyTorch's adaptive bins
    [floor(i * size / out), ceil((i + 1) * size / out)), which may overlap when out does not divide size."""
    m = np.zeros((out, size), dtype=dtype)
    for i in range(out):
        a, b = (i * size) // out, -(-((i + 1) * size) // out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def adaptive_avg_pool2d(input, output_size):
    """Average pooling to a fixed output size (None in output_size keeps that input size).

    One node, three paths: (1, 1) -- the global-pool head of most CNNs -- is a mean over H, W;
    an output that divides the input is a reshape-mean; any other size multiplies by the (oh, H)
    and (W, ow) bin-averaging matrices, which is PyTorch's overlapping-bin definition exactly.
    """
    x, unbatched = _pool_input(input, "adaptive_avg_pool2d")
    N, C, H, W = x.shape
    if isinstance(output_size, numbers.Integral) or output_size is None:
        output_size = (output_size, output_size)
    output_size = tuple(output_size)
    if len(output_size) == 1:
        output_size = output_size * 2
    if len(output_size) != 2:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size}")
    oh, ow = (H if output_size[0] is None else int(output_size[0]),
              W if output_size[1] is None else int(output_size[1]))
    if oh <= 0 or ow <= 0:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be positive, got {(oh, ow)}")
    d = x.data
    xp = get_array_module(d)
    dt = d.dtype
    if oh == 1 and ow == 1:
        out = d.mean(axis=(2, 3), keepdims=True)

        def backward(g):
            return (xp.broadcast_to(g / _f(dt, H * W), (N, C, H, W)).copy(),)
    elif H % oh == 0 and W % ow == 0:
        kh, kw = H // oh, W // ow
        out = d.reshape(N, C, oh, kh, ow, kw).mean(axis=(3, 5))

        def backward(g):
            gb = xp.broadcast_to((g / _f(dt, kh * kw))[:, :, :, None, :, None], (N, C, oh, kh, ow, kw))
            return (gb.reshape(N, C, H, W),)
    else:
        ah = xp.asarray(_adaptive_matrix(H, oh, dt))
        aw = xp.asarray(_adaptive_matrix(W, ow, dt))
        out = ah @ d @ aw.T

        def backward(g):
            return (ah.T @ g @ aw,)
    out = from_op(out, (x,), backward, "adaptive_avg_pool2d")
    return _ops.squeeze(out, 0) if unbatched else out


# ------------------------------------------------------------------------------------------ activations


def relu(input, inplace=False):
    return _ops.relu(_t(input))


def leaky_relu(input, negative_slope=0.01, inplace=False):
    x = _t(input)
    d = x.data
    xp = get_array_module(d)
    slope = _f(d.dtype, negative_slope)
    pos = d > 0
    out = xp.where(pos, d, d * slope)
    return from_op(out, (x,), lambda g: (xp.where(pos, g, g * slope),), "leaky_relu")


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _erf(a, xp):
    if xp is np:
        from ..kernels.npmath import erf
        return erf(a)
    from cupyx.scipy.special import erf  # noqa: PLC0415 (GPU only)
    return erf(a)


def gelu(input, approximate="none"):
    """GELU: x * Phi(x) (exact, erf) or PyTorch's tanh approximation with approximate='tanh'."""
    x = _t(input)
    d = x.data
    xp = get_array_module(d)
    dt = d.dtype
    half, one = _f(dt, 0.5), _f(dt, 1.0)
    if approximate == "none":
        cdf = half * (one + _erf(d * _f(dt, _INV_SQRT_2), xp))
        out = d * cdf

        def backward(g):
            pdf = xp.exp(-half * d * d) * _f(dt, _INV_SQRT_2PI)
            return (g * (cdf + d * pdf),)
    elif approximate == "tanh":
        c, k = _f(dt, _SQRT_2_OVER_PI), _f(dt, 0.044715)
        inner = c * (d + k * d * d * d)
        th = xp.tanh(inner)
        out = half * d * (one + th)

        def backward(g):
            dinner = c * (one + _f(dt, 3.0) * k * d * d)
            return (g * (half * (one + th) + half * d * (one - th * th) * dinner),)
    else:
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return from_op(out, (x,), backward, "gelu")


def sigmoid(input):
    return _ops.sigmoid(_t(input))


def tanh(input):
    return _ops.tanh(_t(input))


def _sigmoid_array(d, xp):
    """sigmoid as 0.5 * (1 + tanh(x / 2)): never overflows, unlike 1 / (1 + exp(-x))."""
    half = _f(d.dtype, 0.5)
    return half * (xp.tanh(d * half) + _f(d.dtype, 1))


def _softplus_array(d, xp):
    """log(1 + exp(x)) as max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|."""
    return xp.maximum(d, _f(d.dtype, 0)) + xp.log1p(xp.exp(-xp.abs(d)))


def silu(input, inplace=False):
    """x * sigmoid(x) (a.k.a. swish) as one node; backward reuses the sigmoid."""
    x = _t(input)
    d = x.data
    xp = get_array_module(d)
    s = _sigmoid_array(d, xp)
    one = _f(d.dtype, 1)
    return from_op(d * s, (x,), lambda g: (g * (s * (one + d * (one - s))),), "silu")


def elu(input, alpha=1.0, inplace=False):
    """x for x > 0, alpha * (exp(x) - 1) otherwise (expm1 of min(x, 0): no overflow)."""
    x = _t(input)
    d = x.data
    xp = get_array_module(d)
    a = _f(d.dtype, alpha)
    pos = d > 0
    neg = a * xp.expm1(xp.minimum(d, _f(d.dtype, 0)))
    out = xp.where(pos, d, neg)
    return from_op(out, (x,), lambda g: (xp.where(pos, g, g * (neg + a)),), "elu")


def softplus(input, beta=1.0, threshold=20.0):
    """log(1 + exp(beta * x)) / beta, linear where beta * x > threshold (PyTorch's definition)."""
    x = _t(input)
    d = x.data
    xp = get_array_module(d)
    b = _f(d.dtype, beta)
    z = d * b
    lin = z > _f(d.dtype, threshold)
    out = xp.where(lin, d, _softplus_array(z, xp) / b)
    return from_op(out, (x,), lambda g: (xp.where(lin, g, g * _sigmoid_array(z, xp)),), "softplus")


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    """clip(x, min_val, max_val); the gradient is 1 strictly inside the range (as PyTorch)."""
    if min_val > max_val:
        raise ValueError(f"hardtanh: min_val {min_val} cannot be greater than max_val {max_val}")
    x = _t(input)
    d = x.data
    xp = get_array_module(d)
    lo, hi = _f(d.dtype, min_val), _f(d.dtype, max_val)
    inside = (d > lo) & (d < hi)
    return from_op(xp.clip(d, lo, hi), (x,), lambda g: (g * inside,), "hardtanh")


def relu6(input, inplace=False):
    return hardtanh(input, 0.0, 6.0)


def _softmax_dim(dim, ndim, name):
    if dim is None:
        # PyTorch's legacy implicit choice
        dim = 0 if ndim in (0, 1, 3) else 1
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"{name}: dim {dim} is out of range for a tensor with {ndim} dimensions")
    return dim % max(ndim, 1)


def softmax(input, dim=None, _stacklevel=3, dtype=None, axis=None):
    x = _t(input)
    if dtype is not None:
        x = x.astype(dtype)
    ax = _softmax_dim(_axis(dim, axis, "softmax"), x.ndim, "softmax")
    d = x.data
    xp = get_array_module(d)
    e = xp.exp(d - d.max(axis=ax, keepdims=True))
    e /= e.sum(axis=ax, keepdims=True)
    out = e

    def backward(g):
        gy = g * out
        return (gy - out * gy.sum(axis=ax, keepdims=True),)
    return from_op(out, (x,), backward, "softmax")


def log_softmax(input, dim=None, _stacklevel=3, dtype=None, axis=None):
    x = _t(input)
    if dtype is not None:
        x = x.astype(dtype)
    ax = _softmax_dim(_axis(dim, axis, "log_softmax"), x.ndim, "log_softmax")
    d = x.data
    xp = get_array_module(d)
    sh = d - d.max(axis=ax, keepdims=True)
    out = sh - xp.log(xp.exp(sh).sum(axis=ax, keepdims=True))

    def backward(g):
        return (g - xp.exp(out) * g.sum(axis=ax, keepdims=True),)
    return from_op(out, (x,), backward, "log_softmax")


# ------------------------------------------------------------------------------------------ losses


def _class_targets(x, target, name):
    """Validate integer class targets for (N, C, d1, ...) input; return flat int array."""
    t = _raw_like(target, x)
    if t.dtype.kind not in "iu":
        raise TypeError(f"{name}: target must hold integer class indices, got dtype {t.dtype} of shape "
                        f"{tuple(t.shape)}; cast labels with .astype('int64') (float targets are read as class "
                        f"probabilities only when they have the input's shape {x.shape})")
    expect = (x.shape[0],) + x.shape[2:] if x.ndim >= 2 else ()
    if tuple(t.shape) != expect:
        raise ShapeError(f"{name}: target of shape {tuple(t.shape)} does not match input of shape {x.shape} "
                         f"(expected target shape {expect})")
    return t


def _check_target_range(y, valid, C, ignore_index, name):
    if y.size == 0:
        return
    yv = y[valid] if valid is not None else y
    if yv.size and (int(yv.min()) < 0 or int(yv.max()) >= C):
        bad = int(yv.max()) if int(yv.max()) >= C else int(yv.min())
        raise IndexError(f"{name}: target {bad} is out of bounds for {C} classes (valid 0..{C - 1}"
                         + (f", or ignore_index={ignore_index})" if ignore_index is not None else ")"))


def _to_rows(d, xp):
    """(N, C, d1, ...) -> (N*d1*..., C) with the class axis last (copy only when there are extra dims)."""
    if d.ndim == 2:
        return d
    C = d.shape[1]
    return xp.moveaxis(d, 1, -1).reshape(-1, C)


def _from_rows(g2, shape, xp):
    if len(shape) == 2:
        return g2
    moved = (shape[0],) + tuple(shape[2:]) + (shape[1],)
    return xp.moveaxis(g2.reshape(moved), -1, 1)


def cross_entropy(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None,
                  reduction="mean", label_smoothing=0.0):
    """Softmax cross-entropy on logits (N, C) or (N, C, d1, ...) with integer targets (N, d1, ...)
    -- or float class-probability targets of the input's shape.  One fused, numerically stable
    node (log-sum-exp); backward is softmax minus the (smoothed, weighted) target."""
    reduction = _reduction(size_average, reduce, reduction)
    x = _t(input)
    if not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    if x.ndim == 1:        # unbatched (C,) with a scalar target
        x = _ops.unsqueeze(x, 0)
        tgt = target.data if isinstance(target, Tensor) else np.asarray(target)
        target = Tensor._wrap(tgt.reshape(1) if tgt.ndim == 0 else tgt.reshape(1, -1))
        out = cross_entropy(x, target, weight, None, ignore_index, None, reduction, label_smoothing)
        return _ops.reshape(out, ()) if reduction == "none" else out
    if x.ndim < 2:
        raise ShapeError(f"cross_entropy: expected input of shape (N, C) or (N, C, d1, ...), got {x.shape}")
    tdata = target.data if isinstance(target, Tensor) else target
    if hasattr(tdata, "dtype") and tdata.dtype.kind == "f" and tuple(tdata.shape) == x.shape:
        return _soft_cross_entropy(x, _t(target, like=x), weight, reduction, label_smoothing)

    d = x.data
    xp = get_array_module(d)
    dt = d.dtype if d.dtype.kind == "f" else np.dtype(np.float32)
    C = x.shape[1]
    y = _class_targets(x, target, "cross_entropy").reshape(-1)
    eps = float(label_smoothing)
    w = None
    if weight is not None:
        w = (weight.data if isinstance(weight, Tensor) else xp.asarray(weight)).astype(dt, copy=False)
        if w.shape != (C,):
            raise ShapeError(f"cross_entropy: weight must have shape ({C},), got {tuple(w.shape)}")
    if xp is not np and w is None and x.ndim == 2 and ignore_index is not None:
        return _cross_entropy_gpu(x, y, ignore_index, reduction, eps)

    z = _to_rows(d, xp).astype(dt, copy=False)
    R = z.shape[0]
    valid = y != ignore_index
    all_valid = bool(valid.all())
    _check_target_range(y, None if all_valid else valid, C, ignore_index, "cross_entropy")
    ys = y if all_valid else xp.where(valid, y, 0)
    rows = xp.arange(R)
    sh = z - z.max(axis=1, keepdims=True)
    lse = xp.log(xp.exp(sh).sum(axis=1))                    # (R,)
    logp_y = sh[rows, ys] - lse
    vf = valid.astype(dt)
    wy = vf if w is None else w[ys] * vf                     # per-row weight (0 when ignored)
    loss_rows = -(wy * logp_y)
    if eps > 0:
        wsum = _f(dt, C) if w is None else w.sum()
        smooth = (sh.sum(axis=1) if w is None else sh @ w) - lse * wsum     # sum_c w_c logp_c
        loss_rows = _f(dt, 1 - eps) * loss_rows - _f(dt, eps / C) * (smooth * vf)
    if reduction == "mean":
        denom = wy.sum()
        out = loss_rows.sum() / denom
    elif reduction == "sum":
        out = loss_rows.sum()
    else:
        out = loss_rows.reshape(y.shape).reshape(target_shape(x))
    out = xp.asarray(out, dtype=dt)
    xshape = x.shape

    def backward(g):
        if reduction == "mean":
            gr = (g / denom) * vf                  # per-row scale
        elif reduction == "sum":
            gr = g * vf
        else:
            gr = g.reshape(-1) * vf
        p = xp.exp(sh - lse[:, None])              # softmax
        a = gr * (_f(dt, 1 - eps) * (wy if w is not None else vf))
        if eps > 0:
            wsum_ = _f(dt, C) if w is None else w.sum()
            coef = a + gr * _f(dt, eps / C) * wsum_
        else:
            coef = a
        dz = p * coef[:, None]
        dz[rows, ys] -= a
        if eps > 0:
            dz -= (gr * _f(dt, eps / C))[:, None] * (w[None, :] if w is not None else _f(dt, 1))
        return (_from_rows(dz, xshape, xp).astype(x.dtype, copy=False),)

    return from_op(out, (x,), backward, "cross_entropy")


def target_shape(x):
    return (x.shape[0],) + tuple(x.shape[2:])


def _cross_entropy_gpu(x, y, ignore_index, reduction, eps):
    from ..kernels.softmax_xent import softmax_xent_forward, softmax_xent_backward
    logits = x.data
    loss, lse = softmax_xent_forward(logits, y, eps, ignore_index, reduction)

    def backward(g):
        return (softmax_xent_backward(logits, y, lse, g, eps, ignore_index, reduction),)
    return from_op(loss, (x,), backward, "cross_entropy")


def _soft_cross_entropy(x, target, weight, reduction, eps):
    """Cross-entropy against class probabilities (PyTorch's float-target form)."""
    if target.shape != x.shape:
        raise ShapeError(f"cross_entropy: probability target of shape {target.shape} must match input {x.shape}")
    d = x.data
    xp = get_array_module(d)
    dt = d.dtype
    C = x.shape[1]
    z = _to_rows(d, xp)
    t = _to_rows(target.data.astype(dt, copy=False), xp)
    if eps > 0:
        t = t * _f(dt, 1 - eps) + _f(dt, eps / C)
    w = None
    if weight is not None:
        w = (weight.data if isinstance(weight, Tensor) else xp.asarray(weight)).astype(dt, copy=False)
        tw = t * w[None, :]
    else:
        tw = t
    sh = z - z.max(axis=1, keepdims=True)
    lse = xp.log(xp.exp(sh).sum(axis=1, keepdims=True))
    logp = sh - lse
    loss_rows = -(tw * logp).sum(axis=1)
    R = z.shape[0]                 # PyTorch's mean divides by N * d1 * ... (not by the weights)
    if reduction == "mean":
        out = loss_rows.sum() / _f(dt, R)
    elif reduction == "sum":
        out = loss_rows.sum()
    else:
        out = loss_rows.reshape(target_shape(x))
    out = xp.asarray(out, dtype=dt)
    xshape = x.shape
    n_mean = R

    def backward(g):
        if reduction == "mean":
            gr = xp.broadcast_to(g / _f(dt, n_mean), (R,))
        elif reduction == "sum":
            gr = xp.broadcast_to(g, (R,))
        else:
            gr = g.reshape(-1)
        p = xp.exp(logp)
        dz = (p * tw.sum(axis=1, keepdims=True) - tw) * gr[:, None]
        dt_ = None
        if target.requires_grad:
            dtw = -(logp * gr[:, None])
            if w is not None:
                dtw = dtw * w[None, :]
            if eps > 0:
                dtw = dtw * _f(dt, 1 - eps)
            dt_ = _from_rows(dtw, xshape, xp)
        return (_from_rows(dz, xshape, xp), dt_)

    return from_op(out, (x, target), backward, "cross_entropy")


def nll_loss(input, target, weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    """Negative log-likelihood on log-probabilities (N, C) or (N, C, d1, ...) with integer targets."""
    reduction = _reduction(size_average, reduce, reduction)
    x = _t(input)
    if x.ndim == 1:
        x = _ops.unsqueeze(x, 0)
        tgt = target.data if isinstance(target, Tensor) else np.asarray(target)
        out = nll_loss(x, Tensor._wrap(tgt.reshape(1)), weight, None, ignore_index, None, reduction)
        return _ops.reshape(out, ()) if reduction == "none" else out
    d = x.data
    xp = get_array_module(d)
    dt = d.dtype
    C = x.shape[1]
    y = _class_targets(x, target, "nll_loss").reshape(-1)
    valid = y != ignore_index
    all_valid = bool(valid.all())
    _check_target_range(y, None if all_valid else valid, C, ignore_index, "nll_loss")
    ys = y if all_valid else xp.where(valid, y, 0)
    z = _to_rows(d, xp)
    rows = xp.arange(z.shape[0])
    vf = valid.astype(dt)
    if weight is not None:
        w = (weight.data if isinstance(weight, Tensor) else xp.asarray(weight)).astype(dt, copy=False)
        wy = w[ys] * vf
    else:
        wy = vf
    loss_rows = -(z[rows, ys] * wy)
    if reduction == "mean":
        denom = wy.sum()
        out = loss_rows.sum() / denom
    elif reduction == "sum":
        out = loss_rows.sum()
    else:
        out = loss_rows.reshape(target_shape(x))
    out = xp.asarray(out, dtype=dt)
    xshape = x.shape

    def backward(g):
        if reduction == "mean":
            gr = (g / denom) * wy
        elif reduction == "sum":
            gr = g * wy
        else:
            gr = g.reshape(-1) * wy
        dz = xp.zeros(z.shape, dtype=dt)
        dz[rows, ys] = -gr
        return (_from_rows(dz, xshape, xp),)
    return from_op(out, (x,), backward, "nll_loss")


def _pointwise_loss(input, target, reduction, name, fwd, grad):
    x = _t(input)
    t = _t(target, like=x)
    if t.shape != x.shape:
        raise ShapeError(f"{name}: target shape {t.shape} differs from input shape {x.shape}; "
                         "reshape one of them (broadcasting a loss target is almost always a bug)")
    xd = x.data
    td = t.data.astype(xd.dtype, copy=False)
    diff = xd - td
    per = fwd(diff)
    n = max(per.size, 1)
    xp = get_array_module(xd)
    if reduction == "mean":
        out = xp.asarray(per.mean(), dtype=xd.dtype)
    elif reduction == "sum":
        out = xp.asarray(per.sum(), dtype=xd.dtype)
    else:
        out = per

    def backward(g):
        gd = grad(diff)
        gd *= (g / _f(xd.dtype, n)) if reduction == "mean" else g
        return (gd if x.requires_grad else None, -gd if t.requires_grad else None)
    return from_op(out, (x, t), backward, name)


def mse_loss(input, target, size_average=None, reduce=None, reduction="mean", weight=None):
    reduction = _reduction(size_average, reduce, reduction)
    if weight is not None:
        raise NotImplementedError("mse_loss: weight= is not supported; multiply the per-element loss instead")

    def fwd(d):
        return d * d

    def grad(d):
        return d * _f(d.dtype, 2)
    return _pointwise_loss(input, target, reduction, "mse_loss", fwd, grad)


def l1_loss(input, target, size_average=None, reduce=None, reduction="mean"):
    reduction = _reduction(size_average, reduce, reduction)

    def fwd(d):
        return get_array_module(d).abs(d)

    def grad(d):
        return get_array_module(d).sign(d)
    return _pointwise_loss(input, target, reduction, "l1_loss", fwd, grad)


def smooth_l1_loss(input, target, size_average=None, reduce=None, reduction="mean", beta=1.0):
    """0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere (beta=0 is the L1 loss)."""
    reduction = _reduction(size_average, reduce, reduction)
    if beta < 0:
        raise ValueError(f"smooth_l1_loss: beta must be non-negative, got {beta}")
    if beta == 0:
        return l1_loss(input, target, reduction=reduction)

    def fwd(d):
        xp = get_array_module(d)
        ad = xp.abs(d)
        b = _f(d.dtype, beta)
        return xp.where(ad < b, _f(d.dtype, 0.5) * d * d / b, ad - _f(d.dtype, 0.5) * b)

    def grad(d):
        xp = get_array_module(d)
        b = _f(d.dtype, beta)
        return xp.where(xp.abs(d) < b, d / b, xp.sign(d))
    return _pointwise_loss(input, target, reduction, "smooth_l1_loss", fwd, grad)


def huber_loss(input, target, reduction="mean", delta=1.0, weight=None):
    """0.5 d^2 where |d| < delta, delta (|d| - 0.5 delta) elsewhere (= delta * smooth_l1 with beta=delta)."""
    reduction = _reduction(None, None, reduction)
    if weight is not None:
        raise NotImplementedError("huber_loss: weight= is not supported; multiply the per-element loss instead")
    if delta <= 0:
        raise ValueError(f"huber_loss: delta must be positive, got {delta}")

    def fwd(d):
        xp = get_array_module(d)
        ad = xp.abs(d)
        c = _f(d.dtype, delta)
        return xp.where(ad < c, _f(d.dtype, 0.5) * d * d, c * (ad - _f(d.dtype, 0.5) * c))

    def grad(d):
        xp = get_array_module(d)
        c = _f(d.dtype, delta)
        return xp.clip(d, -c, c)
    return _pointwise_loss(input, target, reduction, "huber_loss", fwd, grad)


def _same_shape_target(x, target, name):
    t = _t(target, like=x)
    if t.shape != x.shape:
        raise ShapeError(f"{name}: target size {t.shape} must be the same as input size {x.shape}")
    return t, t.data.astype(x.dtype, copy=False)


def _loss_constant(value, x, name, what):
    """An optional weight / pos_weight as an array in x's dtype and device, broadcastable to x.
    It is a constant of the loss: no gradient flows into it."""
    if value is None:
        return None
    arr = _t(value, like=x).data.astype(x.dtype, copy=False)
    try:
        ok = np.broadcast_shapes(arr.shape, x.shape) == x.shape
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(f"{name}: {what} of shape {tuple(arr.shape)} does not broadcast to input {x.shape}")
    return arr


def _reduce_loss(per, reduction, xp, batch=1):
    if reduction == "mean":
        return xp.asarray(per.mean(), dtype=per.dtype)
    if reduction == "sum":
        return xp.asarray(per.sum(), dtype=per.dtype)
    if reduction == "batchmean":
        return xp.asarray(per.sum() / _f(per.dtype, batch), dtype=per.dtype)
    return per


def _grad_scale(g, reduction, n):
    """d loss / d per-element loss: g / n for the averaging reductions, g otherwise."""
    return g / _f(g.dtype, max(n, 1)) if reduction in ("mean", "batchmean") else g


def _weighted_pointwise_loss(x, t, per, w, reduction, name, dx_fn, dt_fn):
    """The node of an elementwise loss: `per` (unweighted, per element) times the constant weight
    `w`, reduced; backward scales by the reduction and `w`, then asks dx_fn(gs) / dt_fn(gs) for
    the input's and the target's gradients (each only when that side requires grad)."""
    xp = get_array_module(per)
    if w is not None:
        per = per * w
    out = _reduce_loss(per, reduction, xp)
    n, tdtype = per.size, t.dtype

    def backward(g):
        gs = _grad_scale(g, reduction, n)
        if w is not None:
            gs = gs * w
        dx = dx_fn(gs) if x.requires_grad else None
        dtt = _back_dtype(dt_fn(gs), tdtype) if t.requires_grad else None
        return dx, dtt
    return from_op(out, (x, t), backward, name)


def binary_cross_entropy_with_logits(input, target, weight=None, size_average=None, reduce=None,
                                     reduction="mean", pos_weight=None):
    """Sigmoid + binary cross-entropy on logits in one stable node:
    (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x), softplus as max(.,0) + log1p(exp(-|.|)),
    so no logit overflows (sigmoid then log would give inf/nan for |x| beyond ~17 in float32).
    `weight` scales each element, `pos_weight` the positive term (broadcast over the last dim, as
    PyTorch); both are constants.  The target gets a gradient too (soft labels, distillation)."""
    reduction = _reduction(size_average, reduce, reduction)
    name = "binary_cross_entropy_with_logits"
    x = _t(input)
    t, td = _same_shape_target(x, target, name)
    xd = x.data
    xp = get_array_module(xd)
    dt = xd.dtype
    w = _loss_constant(weight, x, name, "weight")
    pw = _loss_constant(pos_weight, x, name, "pos_weight")
    one = _f(dt, 1)
    sp = _softplus_array(-xd, xp)                   # -log sigmoid(x)
    lw = None if pw is None else one + (pw - one) * td
    per = (one - td) * xd + (sp if lw is None else lw * sp)

    def dx_fn(gs):
        s = _sigmoid_array(xd, xp)
        return (s - td if lw is None else (one - td) - lw * (one - s)) * gs
    return _weighted_pointwise_loss(x, t, per, w, reduction, name, dx_fn,
                                    lambda gs: (-xd if pw is None else (pw - one) * sp - xd) * gs)


def binary_cross_entropy(input, target, weight=None, size_average=None, reduce=None, reduction="mean"):
    """-w (t log x + (1 - t) log(1 - x)) on probabilities x in [0, 1].  Each log is clamped at
    -100 as PyTorch does, so x = 0 or 1 gives a finite loss; binary_cross_entropy_with_logits on
    the logits is the stable choice."""
    reduction = _reduction(size_average, reduce, reduction)
    name = "binary_cross_entropy"
    x = _t(input)
    t, td = _same_shape_target(x, target, name)
    xd = x.data
    xp = get_array_module(xd)
    dt = xd.dtype
    if xp is np and xd.size and not (xd.min() >= 0 and xd.max() <= 1):     # checked on the CPU only (no sync)
        raise ValueError(f"{name}: all elements of input should be between 0 and 1 (probabilities; "
                         "for logits use binary_cross_entropy_with_logits / BCEWithLogitsLoss)")
    w = _loss_constant(weight, x, name, "weight")
    one, floor = _f(dt, 1), _f(dt, -100)
    with np.errstate(divide="ignore"):
        lx = xp.maximum(xp.log(xd), floor)
        l1x = xp.maximum(xp.log1p(-xd), floor)
    per = -(td * lx + (one - td) * l1x)
    return _weighted_pointwise_loss(
        x, t, per, w, reduction, name,
        lambda gs: (xd - td) / xp.maximum((one - xd) * xd, _f(dt, 1e-12)) * gs,
        lambda gs: (l1x - lx) * gs)


def kl_div(input, target, size_average=None, reduce=None, reduction="mean", log_target=False):
    """KL(target || input) pointwise with input as log-probabilities: target (log target - input),
    0 where target is 0 (xlogy); log_target=True takes the target as log-probabilities too.
    reduction='batchmean' (sum / batch size) is the mathematically correct KL; 'mean' averages
    over every element, as PyTorch does."""
    if reduction == "batchmean" and size_average is None and reduce is None:
        pass
    else:
        reduction = _reduction(size_average, reduce, reduction)
    x = _t(input)
    t, td = _same_shape_target(x, target, "kl_div")
    xd = x.data
    xp = get_array_module(xd)
    dt = xd.dtype
    one = _f(dt, 1)
    if log_target:
        et = xp.exp(td)
        per = et * (td - xd)
    else:
        logt = xp.log(xp.where(td > 0, td, one))        # xlogy: 0 * log 0 = 0
        per = td * logt - td * xd
    batch = x.shape[0] if x.ndim else 1
    out = _reduce_loss(per, reduction, xp, batch)
    n = batch if reduction == "batchmean" else per.size
    tdtype = t.dtype

    def backward(g):
        gs = _grad_scale(g, reduction, n)
        dx = dtt = None
        if x.requires_grad:
            dx = -(et if log_target else td) * gs
        if t.requires_grad:
            dtt = (et * (td - xd + one) if log_target else logt + one - xd) * gs
            dtt = _back_dtype(dtt, tdtype)
        return dx, dtt
    return from_op(out, (x, t), backward, "kl_div")


# ------------------------------------------------------------------------------------------ regularisation


def _random_like(d, xp, generator):
    """Uniform [0, 1) numbers in d's dtype and memory order (so the mask multiply stays contiguous).

    Under data parallelism (engine.random.batch_shard) the numbers are drawn for the whole
    global batch and this worker keeps its rows, so N workers drop what one worker would.
    """
    if d.ndim and _random.current_batch_shard() is not None:
        dt = d.dtype if d.dtype in (np.float32, np.float64) else np.float32
        if xp is np:
            rng = generator if generator is not None else _random.default_generator()
            return _random.draw_rows(lambda shp: rng.random(shp, dtype=dt), d.shape)
        return _random.draw_rows(lambda shp: xp.random.random(shp, dtype=dt), d.shape)
    order = np.argsort([-abs(s) for s in d.strides], kind="stable") if d.ndim else ()
    phys = tuple(d.shape[i] for i in order)
    if xp is np:
        rng = generator if generator is not None else _random.default_generator()
        dt = d.dtype if d.dtype in (np.float32, np.float64) else np.float32
        r = rng.random(phys, dtype=dt)
    else:
        r = xp.random.random(phys, dtype=d.dtype)
    inv = np.argsort(order) if d.ndim else ()
    return r.transpose(inv) if d.ndim else r


def dropout(input, p=0.5, training=True, inplace=False, generator=None):
    """Zero each element with probability p and scale the rest by 1/(1-p) (training only).

    Random numbers come from the engine's global generator (engine.manual_seed) or `generator`.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    x = _t(input)
    if not training or p == 0.0:
        return x
    d = x.data
    xp = get_array_module(d)
    if p == 1.0:
        mask = xp.zeros_like(d)
    else:
        keep = _random_like(d, xp, generator) >= _f(d.dtype, p)
        mask = xp.multiply(keep, _f(d.dtype, 1.0 / (1.0 - p)), dtype=d.dtype)
    return from_op(d * mask, (x,), lambda g: (g * mask,), "dropout")


def _channel_dropout(input, p, training, generator, batched_ndim, name, lead=None):
    """Zero whole channels (every value of one sample's channel together) with probability p and
    scale the rest by 1/(1-p): for feature maps, whose neighbouring values are correlated, so
    element-wise dropout hardly regularises (Tompson et al.; torch's dropout1d/2d/3d)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, got {p}")
    x = _t(input)
    if x.ndim not in (batched_ndim - 1, batched_ndim):
        raise ValueError(f"{name}: expected a {batched_ndim - 1}D (unbatched) or {batched_ndim}D (batched) "
                         f"input, got shape {x.shape}")
    if not training or p == 0.0:
        return x
    d = x.data
    xp = get_array_module(d)
    if lead is None:
        lead = 2 if d.ndim == batched_ndim else 1        # (N, C, ...) or (C, ...)
    shape = d.shape[:lead] + (1,) * (d.ndim - lead)
    if p == 1.0:
        mask = xp.zeros(shape, dtype=d.dtype)
    else:
        keep = _random_like(xp.empty(shape, dtype=d.dtype), xp, generator) >= _f(d.dtype, p)
        mask = xp.multiply(keep, _f(d.dtype, 1.0 / (1.0 - p)), dtype=d.dtype)
    return from_op(d * mask, (x,), lambda g: (g * mask,), name)


def dropout1d(input, p=0.5, training=True, inplace=False):
    """Channel dropout for (N, C, L) or (C, L) inputs."""
    return _channel_dropout(input, p, training, None, 3, "dropout1d")


def dropout2d(input, p=0.5, training=True, inplace=False):
    """Channel dropout for (N, C, H, W) inputs.  A 3D input is taken as (N, C, L), with torch's
    warning (torch 2.x does the same and says it will change)."""
    lead = None
    if getattr(input, "ndim", 0) == 3:
        import warnings
        warnings.warn("dropout2d: Received a 3D input to dropout2d and assuming that channel-wise 1D dropout "
                      "behavior is desired - input is interpreted as shape (N, C, L), where C is the channel dim. "
                      "To maintain the 1D channel-wise dropout behavior, please switch to using dropout1d "
                      "instead.", stacklevel=2)
        lead = 2
    return _channel_dropout(input, p, training, None, 4, "dropout2d", lead)


def dropout3d(input, p=0.5, training=True, inplace=False):
    """Channel dropout for (N, C, D, H, W) or (C, D, H, W) inputs."""
    return _channel_dropout(input, p, training, None, 5, "dropout3d")


# ------------------------------------------------------------------------------------------ normalisation


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation over every axis but the channel axis 1.

    training=True normalises with the batch statistics and, when running_mean/running_var are
    given, updates them in place (running_var with the unbiased batch variance, as PyTorch).
    momentum=None is not handled here: pass 1/num_batches_tracked (BatchNorm modules do).
    """
    x = _t(input)
    if x.ndim < 2:
        raise ShapeError(f"batch_norm: expected input with at least 2 dimensions (N, C, ...), got {x.shape}")
    d = x.data
    xp = get_array_module(d)
    dt = d.dtype
    C = x.shape[1]
    axes = (0,) + tuple(range(2, x.ndim))
    bshape = (1, C) + (1,) * (x.ndim - 2)
    n = x.size // C
    use_batch = training or running_mean is None or running_var is None
    if use_batch:
        if n <= 1:
            raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input "
                             f"of shape {x.shape}")
        mean = d.mean(axis=axes)
        xc = d - mean.reshape(bshape)
        var = (xc * xc).mean(axis=axes)
        if training and running_mean is not None and running_var is not None:
            m = _f(running_mean.dtype, momentum)
            with no_grad():
                rm, rv = running_mean.data, running_var.data
                rm *= (1 - m)
                rm += m * mean.astype(rm.dtype, copy=False)
                rv *= (1 - m)
                rv += m * (var * _f(dt, n / (n - 1))).astype(rv.dtype, copy=False)
    else:
        mean = running_mean.data.astype(dt, copy=False)
        var = running_var.data.astype(dt, copy=False)
        xc = d - mean.reshape(bshape)
    invstd = (_f(dt, 1) / xp.sqrt(var + _f(dt, eps))).astype(dt, copy=False)
    xhat = xc * invstd.reshape(bshape)
    wd = weight.data if weight is not None else None
    out = xhat * wd.reshape(bshape) if wd is not None else xhat.copy()
    if bias is not None:
        out += bias.data.reshape(bshape)

    def backward(g):
        gsum = g.sum(axis=axes)
        gx = (g * xhat).sum(axis=axes)
        scale = invstd if wd is None else invstd * wd
        dx = None
        if x.requires_grad:
            if use_batch:
                dx = (g - (gsum / _f(dt, n)).reshape(bshape) - xhat * (gx / _f(dt, n)).reshape(bshape)) \
                    * scale.reshape(bshape)
            else:
                dx = g * scale.reshape(bshape)
        dw = gx if weight is not None and weight.requires_grad else None
        db = gsum if bias is not None and bias.requires_grad else None
        grads = [dx]
        if weight is not None:
            grads.append(dw)
        if bias is not None:
            grads.append(db)
        return tuple(grads)

    parents = tuple(p for p in (x, weight, bias) if p is not None)
    return from_op(out, parents, backward, "batch_norm")


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Normalise over the trailing `normalized_shape` dimensions (biased variance, as PyTorch)."""
    x = _t(input)
    if isinstance(normalized_shape, numbers.Integral):
        normalized_shape = (int(normalized_shape),)
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if x.shape[x.ndim - k:] != normalized_shape or x.ndim < k:
        raise ShapeError(f"layer_norm: input of shape {x.shape} does not end with normalized_shape "
                         f"{normalized_shape}")
    d = x.data
    xp = get_array_module(d)
    dt = d.dtype
    axes = tuple(range(x.ndim - k, x.ndim))
    lead = tuple(range(x.ndim - k))
    mean = d.mean(axis=axes, keepdims=True)
    xc = d - mean
    var = (xc * xc).mean(axis=axes, keepdims=True)
    invstd = _f(dt, 1) / xp.sqrt(var + _f(dt, eps))
    xhat = xc * invstd
    wd = weight.data if weight is not None else None
    out = xhat * wd if wd is not None else xhat.copy()
    if bias is not None:
        out += bias.data

    def backward(g):
        gw = g * wd if wd is not None else g
        dx = None
        if x.requires_grad:
            dx = invstd * (gw - gw.mean(axis=axes, keepdims=True)
                           - xhat * (gw * xhat).mean(axis=axes, keepdims=True))
        grads = [dx]
        if weight is not None:
            grads.append((g * xhat).sum(axis=lead) if weight.requires_grad else None)
        if bias is not None:
            grads.append(g.sum(axis=lead) if bias.requires_grad else None)
        return tuple(grads)

    parents = tuple(p for p in (x, weight, bias) if p is not None)
    return from_op(out, parents, backward, "layer_norm")


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Normalise (N, C, *) input over each group of C / num_groups channels (and all spatial
    positions), then scale and shift per channel.  Composed from layer_norm on an (N, G, -1) view,
    so it uses that fused node's statistics and backward; the affine part is two broadcast ops."""
    x = _t(input)
    if x.ndim < 2:
        raise ShapeError(f"group_norm: expected input of shape (N, C, *), got {x.shape}")
    N, C = x.shape[:2]
    G = int(num_groups)
    if G <= 0 or C % G:
        raise ValueError(f"group_norm: num_channels {C} must be divisible by num_groups {G}")
    xr = _ops.reshape(x, (N, G, x.size // max(N * G, 1)))
    y = _ops.reshape(layer_norm(xr, (xr.shape[-1],), None, None, eps), x.shape)
    bshape = (1, C) + (1,) * (x.ndim - 2)
    if weight is not None:
        y = y * _ops.reshape(weight, bshape)
    if bias is not None:
        y = y + _ops.reshape(bias, bshape)
    return y


# ------------------------------------------------------------------------------------------ embedding


def _index_array(input, like, name):
    idx = _raw_like(input, like)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"{name}: indices must be integers, got dtype {idx.dtype}")
    return idx


def embedding(input, weight, padding_idx=None, max_norm=None, norm_type=2.0, scale_grad_by_freq=False,
              sparse=False):
    """Rows of weight picked by integer indices.  The gradient is dense (sparse=True is accepted and
    gives the same dense gradient); rows at padding_idx get no gradient."""
    num = weight.shape[0]
    idx = _index_array(input, weight, "embedding")
    xp = get_array_module(weight.data)
    if idx.size:
        lo, hi = int(idx.min()), int(idx.max())
        if lo < 0 or hi >= num:
            bad = hi if hi >= num else lo
            raise IndexError(f"embedding: index {bad} is out of range for an embedding table of {num} rows "
                             f"(valid 0..{num - 1})")
    if padding_idx is not None and padding_idx < 0:
        padding_idx += num
    if max_norm is not None:
        with no_grad():
            rows = xp.unique(idx.reshape(-1))
            sel = weight.data[rows]
            norms = (xp.abs(sel) ** norm_type).sum(axis=1) ** (1.0 / norm_type)
            scale = xp.where(norms > max_norm, max_norm / (norms + 1e-7), 1.0).astype(weight.dtype)
            weight.data[rows] = sel * scale[:, None]
    W = weight.data
    out = W[idx]
    flat = idx.reshape(-1)

    def backward(g):
        D = W.shape[1]
        g2 = g.reshape(-1, D)
        if scale_grad_by_freq:
            counts = xp.bincount(flat, minlength=num).astype(g.dtype)
            g2 = g2 / counts[flat][:, None]
        dW = xp.zeros(W.shape, dtype=g.dtype)
        if xp is np:
            order = np.argsort(flat, kind="stable")
            sf = flat[order]
            starts = np.flatnonzero(np.r_[True, sf[1:] != sf[:-1]]) if sf.size else np.zeros(0, np.int64)
            if sf.size:
                dW[sf[starts]] = np.add.reduceat(g2[order], starts, axis=0)
        else:
            backend.scatter_add(xp, dW, flat, g2)
        if padding_idx is not None:
            dW[padding_idx] = 0
        return (dW,)

    return from_op(out, (weight,), backward, "embedding")


def one_hot(tensor, num_classes=-1):
    idx = tensor.data if isinstance(tensor, Tensor) else np.asarray(tensor)
    xp = get_array_module(idx)
    if num_classes < 0:
        num_classes = int(idx.max()) + 1 if idx.size else 0
    out = xp.zeros(idx.shape + (num_classes,), dtype=np.int64)
    xp.put_along_axis(out, idx[..., None].astype(np.int64), 1, axis=-1)
    return Tensor._wrap(out)


def flatten(input, start_dim=0, end_dim=-1):
    return _ops.flatten(_t(input), start_dim, end_dim)


# ------------------------------------------------------------------------------------------ padding, distances


def _pad_index(n, lo, hi, mode):
    """Source index of each output position along one axis for the non-constant pad modes."""
    if mode == "replicate":
        if n == 0:
            raise ValueError("pad: mode='replicate' needs a non-empty dimension")
        return np.clip(np.arange(-lo, n + hi), 0, n - 1)
    if mode == "reflect":
        if lo >= n or hi >= n:
            raise ValueError(f"pad: mode='reflect' needs padding ({lo}, {hi}) smaller than the dimension ({n})")
        period = 2 * (n - 1)
        m = np.mod(np.arange(-lo, n + hi), period) if period else np.zeros(n + lo + hi, dtype=np.int64)
        return np.where(m < n, m, period - m)
    if mode == "circular":
        if lo > n or hi > n:
            raise ValueError(f"pad: mode='circular' needs padding ({lo}, {hi}) at most the dimension ({n})")
        return np.mod(np.arange(-lo, n + hi), n)
    raise NotImplementedError(f"pad: mode {mode!r} is not supported; use 'constant', 'reflect', 'replicate' "
                              "or 'circular'")


def pad(input, pad, mode="constant", value=None):
    """torch.nn.functional.pad: `pad` is (left, right, top, bottom, ...) -- pairs from the LAST
    dimension backwards; negative amounts crop.  'constant' is one node (the backward slices the
    gradient back out); 'reflect' / 'replicate' / 'circular' gather with one index array per padded
    dimension (getitem, whose backward accumulates repeated indices), so every mode is exact."""
    x = _t(input)
    pad = tuple(int(p) for p in pad)
    if len(pad) % 2 or len(pad) // 2 > x.ndim:
        raise ValueError(f"pad: padding length {len(pad)} must be even and at most twice the number of "
                         f"dimensions of the input ({x.shape})")
    pairs = [(pad[2 * i], pad[2 * i + 1]) for i in range(len(pad) // 2)]
    nd = x.ndim
    d = x.data
    xp = get_array_module(d)
    if mode != "constant":
        if value not in (None, 0, 0.0):
            raise ValueError(f"pad: a padding value is only meaningful for mode='constant', not {mode!r}")
        out = x
        for i, (lo, hi) in enumerate(pairs):
            if lo == 0 and hi == 0:
                continue
            ax = nd - 1 - i
            idx = xp.asarray(_pad_index(x.shape[ax], lo, hi, mode))
            out = _ops.getitem(out, (slice(None),) * ax + (idx,))
        return out
    shape, src, dst = list(d.shape), [slice(None)] * nd, [slice(None)] * nd
    for i, (lo, hi) in enumerate(pairs):
        ax = nd - 1 - i
        n = d.shape[ax]
        if n + lo + hi < 0:
            raise ValueError(f"pad: padding ({lo}, {hi}) would give dimension {ax} of size {n} a negative size")
        s0, s1 = min(max(-lo, 0), n), max(n - max(-hi, 0), 0)
        s1 = max(s1, s0)
        t0 = max(lo, 0)
        t1 = min(t0 + (s1 - s0), n + lo + hi)
        s1 = s0 + (t1 - t0)
        shape[ax] = n + lo + hi
        src[ax], dst[ax] = slice(s0, s1), slice(t0, t1)
    src, dst = tuple(src), tuple(dst)
    fill = 0 if value is None else value
    out = xp.full(tuple(shape), fill, dtype=d.dtype)
    out[dst] = d[src]
    in_shape = d.shape

    def backward(g):
        gx = xp.zeros(in_shape, dtype=g.dtype)
        gx[src] = g[dst]
        return (gx,)
    return from_op(out, (x,), backward, "pad")


def _vector_norm(x, p, axis):
    """p-norm of x along `axis` (kept as size 1) as one node.  Its backward gives a zero vector a
    zero gradient (as PyTorch's norm does) instead of the nan of sqrt'(0) * 0."""
    d = x.data
    xp = get_array_module(d)
    dt = d.dtype
    p = float(p)
    if p == 2.0:
        n = xp.sqrt((d * d).sum(axis=axis, keepdims=True))
    elif math.isinf(p) or p <= 0:
        raise NotImplementedError(f"norm: p={p} is not supported here (use p >= 1 or 0 < p finite)")
    else:
        n = (xp.abs(d) ** _f(dt, p)).sum(axis=axis, keepdims=True) ** _f(dt, 1.0 / p)

    def backward(g):
        safe = xp.where(n > 0, n, _f(dt, 1))
        if p == 2.0:
            gx = d / safe
        else:
            gx = xp.sign(d) * xp.abs(d) ** _f(dt, p - 1) / safe ** _f(dt, p - 1)
        return (xp.where(n > 0, g, _f(dt, 0)) * gx,)
    return from_op(n, (x,), backward, "norm")


def normalize(input, p=2.0, dim=1, eps=1e-12, out=None, axis=None):
    """input / max(||input||_p, eps) along dim (PyTorch's definition and default dim=1)."""
    if out is not None:
        raise NotImplementedError("normalize: out= is not supported; use the returned tensor")
    x = _t(input)
    ax = _axis(dim if axis is None else None, axis, "normalize", 1) % max(x.ndim, 1)
    return x / _ops.clip(_vector_norm(x, p, ax), _f(x.dtype, eps), None)


def cosine_similarity(x1, x2, dim=1, eps=1e-8, axis=None):
    """sum((x1 / max(||x1||, eps)) * (x2 / max(||x2||, eps))) along dim, with broadcasting;
    each input is normalised first, as PyTorch does, so large norms cannot overflow a product."""
    a = _t(x1)
    b = _t(x2, like=a)
    nd = max(a.ndim, b.ndim)
    ax = _axis(dim if axis is None else None, axis, "cosine_similarity", 1)
    ax = ax % max(nd, 1)
    a_ax, b_ax = ax - (nd - a.ndim), ax - (nd - b.ndim)
    if a_ax < 0 or b_ax < 0:
        raise ShapeError(f"cosine_similarity: dim {dim} is out of range for shapes {a.shape} and {b.shape}")
    ea = _f(a.dtype, eps)
    an = a / _ops.clip(_vector_norm(a, 2.0, a_ax), ea, None)
    bn = b / _ops.clip(_vector_norm(b, 2.0, b_ax), ea, None)
    return _ops.sum_(an * bn, axis=ax)


def pairwise_distance(x1, x2, p=2.0, eps=1e-6, keepdim=False):
    """||x1 - x2 + eps||_p over the last dimension (PyTorch's definition, eps avoids the kink at 0)."""
    a = _t(x1)
    diff = a - _t(x2, like=a) + _f(a.dtype, eps)
    n = _vector_norm(diff, p, diff.ndim - 1)
    return n if keepdim else _ops.squeeze(n, n.ndim - 1)


# ------------------------------------------------------------------------------------------ attention


def _additive_mask(mask, like, true_means_masked):
    """A bool or float attention mask as an additive float array in like's dtype (-inf where masked)."""
    m = _raw_like(mask, like)
    xp = get_array_module(like.data)
    dt = like.dtype
    if m.dtype == np.bool_:
        blocked = m if true_means_masked else ~m
        return xp.where(blocked, _f(dt, -np.inf), _f(dt, 0))
    return m.astype(dt, copy=False)


def _attention(q, k, v, mask_add=None, dropout_p=0.0, scale=None):
    """softmax(q k^T * scale + mask_add) v over (..., L, E) / (..., S, E) tensors, composed from
    matmul, softmax and dropout nodes.  Returns (output, attention weights)."""
    E = q.shape[-1]
    s = _f(q.dtype, 1.0 / math.sqrt(E) if scale is None else scale)
    scores = _ops.matmul(q * s, _swap_last(k))
    if mask_add is not None:
        scores = scores + Tensor._wrap(mask_add)
    w = softmax(scores, dim=-1)
    if dropout_p > 0:
        w = dropout(w, dropout_p, True)
    return _ops.matmul(w, v), w


def _swap_last(t):
    axes = list(range(t.ndim))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return _ops.transpose(t, tuple(axes))


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                                 enable_gqa=False):
    """torch's F.scaled_dot_product_attention: softmax(Q K^T / sqrt(E) + mask) V on (..., L, E) inputs.
    A bool attn_mask marks the positions that TAKE PART (torch's convention here, the opposite of
    MultiheadAttention's masks); a float mask is added; is_causal applies the lower-triangular mask."""
    q, k, v = _t(query), _t(key), _t(value)
    L, S = q.shape[-2], k.shape[-2]
    xp = get_array_module(q.data)
    mask_add = None
    if is_causal:
        if attn_mask is not None:
            raise ValueError("scaled_dot_product_attention: give attn_mask or is_causal=True, not both")
        mask_add = xp.where(xp.tril(xp.ones((L, S), dtype=bool)), _f(q.dtype, 0), _f(q.dtype, -np.inf))
    elif attn_mask is not None:
        mask_add = _additive_mask(attn_mask, q, true_means_masked=False)
    return _attention(q, k, v, mask_add, dropout_p, scale)[0]


# ------------------------------------------------------------------------------------------ recurrent layers


def _grad_flags(*ts):
    on = is_grad_enabled()
    return [on and t is not None and t.requires_grad for t in ts]


def _rnn_grads(dx, xdtype, dw_ih, dw_hh, optional):
    """Gradients of an RNN-layer node in parent order: x, w_ih, w_hh, then each optional
    input (h0, c0, biases) that was given. `optional` is [(tensor or None, its gradient)]."""
    return tuple([_back_dtype(dx, xdtype), dw_ih, dw_hh] + [g for t, g in optional if t is not None])


def _rnn_parents(x, w_ih, w_hh, *optional):
    return (x, w_ih, w_hh) + tuple(t for t in optional if t is not None)


def _keep_array(mask, xp):
    """A (T, N) step mask (array or Tensor; None: no mask) as booleans on the weights' device."""
    if mask is None:
        return None
    return xp.asarray(mask.data if isinstance(mask, Tensor) else mask).astype(bool, copy=False)


def lstm_layer(x, h0, c0, w_ih, w_hh, b_ih=None, b_hh=None, batch_sizes=None, mask=None):
    """One LSTM layer over a time-major sequence x (T, N, I); h0/c0 (N, H) Tensors or None (zeros).

    Returns (output (T, N, H), h_n (N, H), c_n (N, H)); the whole sequence is one autodiff node.
    batch_sizes (T ints, non-increasing): column n runs only while n < batch_sizes[t] and keeps its
    state afterwards, so h_n / c_n are each column's state at its own last step (a PackedSequence's
    batch, see engine.nn._rnn); the outputs past that step repeat h_n.
    mask (T, N) booleans, the other way to say it (Keras masking): False marks a padded step, which
    keeps the previous state, so padding on either side leaves h_n as without it.
    """
    xp = get_array_module(w_ih.data)
    dt = w_ih.dtype
    T, N, _ = x.shape
    H = w_hh.shape[1]
    xd = xp.ascontiguousarray(_match_dtype(x, dt))
    h0d = h0.data.astype(dt, copy=False) if h0 is not None else xp.zeros((N, H), dtype=dt)
    c0d = c0.data.astype(dt, copy=False) if c0 is not None else xp.zeros((N, H), dtype=dt)
    b = None
    if b_ih is not None or b_hh is not None:
        b = (b_ih.data if b_ih is not None else 0) + (b_hh.data if b_hh is not None else 0)
    packed, ctx = _rnn.lstm_forward(xd, h0d, c0d, w_ih.data, w_hh.data, b, h0_is_zero=h0 is None,
                                    batch_sizes=batch_sizes, keep=_keep_array(mask, xp))
    need_x, need_h0, need_c0, nw_ih, nw_hh, nb_ih, nb_hh = _grad_flags(x, h0, c0, w_ih, w_hh, b_ih, b_hh)
    xdtype = x.dtype

    def backward(g):
        dx, dh0, dc0, dw_ih, dw_hh, db = _rnn.lstm_backward(
            g, ctx, need_x, need_h0, need_c0, nw_ih or nw_hh or nb_ih or nb_hh)
        return _rnn_grads(dx, xdtype, dw_ih if nw_ih else None, dw_hh if nw_hh else None,
                          [(h0, dh0), (c0, dc0), (b_ih, db if nb_ih else None), (b_hh, db if nb_hh else None)])

    out = from_op(packed, _rnn_parents(x, w_ih, w_hh, h0, c0, b_ih, b_hh), backward, "lstm")
    return out[:T], out[T - 1], out[T]


def gru_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, batch_sizes=None, mask=None):
    """One GRU layer over x (T, N, I).  Returns (output (T, N, H), h_n (N, H)); batch_sizes and mask
    as in lstm_layer."""
    xp = get_array_module(w_ih.data)
    dt = w_ih.dtype
    T, N, _ = x.shape
    H = w_hh.shape[1]
    xd = xp.ascontiguousarray(_match_dtype(x, dt))
    h0d = h0.data.astype(dt, copy=False) if h0 is not None else xp.zeros((N, H), dtype=dt)
    packed, ctx = _rnn.gru_forward(xd, h0d, w_ih.data, w_hh.data,
                                   b_ih.data if b_ih is not None else None,
                                   b_hh.data if b_hh is not None else None, batch_sizes=batch_sizes,
                                   keep=_keep_array(mask, xp))
    need_x, need_h0, nw_ih, nw_hh, nb_ih, nb_hh = _grad_flags(x, h0, w_ih, w_hh, b_ih, b_hh)
    xdtype = x.dtype

    def backward(g):
        dx, dh0, dw_ih, dw_hh, db_ih, db_hh = _rnn.gru_backward(
            g, ctx, w_ih.data, w_hh.data, need_x, need_h0, nw_ih or nw_hh, nb_ih, nb_hh)
        return _rnn_grads(dx, xdtype, dw_ih if nw_ih else None, dw_hh if nw_hh else None,
                          [(h0, dh0), (b_ih, db_ih), (b_hh, db_hh)])

    out = from_op(packed, _rnn_parents(x, w_ih, w_hh, h0, b_ih, b_hh), backward, "gru")
    return out, out[T - 1]


def rnn_layer(x, h0, w_ih, w_hh, b_ih=None, b_hh=None, nonlinearity="tanh", batch_sizes=None, mask=None):
    """One Elman RNN layer (tanh or relu) over x (T, N, I).  Returns (output (T, N, H), h_n (N, H));
    batch_sizes and mask as in lstm_layer."""
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}, use 'tanh' or 'relu'")
    xp = get_array_module(w_ih.data)
    dt = w_ih.dtype
    T, N, _ = x.shape
    H = w_hh.shape[1]
    xd = xp.ascontiguousarray(_match_dtype(x, dt))
    h0d = h0.data.astype(dt, copy=False) if h0 is not None else xp.zeros((N, H), dtype=dt)
    b = None
    if b_ih is not None or b_hh is not None:
        b = (b_ih.data if b_ih is not None else 0) + (b_hh.data if b_hh is not None else 0)
    packed, ctx = _rnn.rnn_forward(xd, h0d, w_ih.data, w_hh.data, b, nonlinearity, batch_sizes=batch_sizes,
                                   keep=_keep_array(mask, xp))
    need_x, need_h0, nw_ih, nw_hh, nb_ih, nb_hh = _grad_flags(x, h0, w_ih, w_hh, b_ih, b_hh)
    xdtype = x.dtype

    def backward(g):
        dx, dh0, dw_ih, dw_hh, db = _rnn.rnn_backward(
            g, ctx, w_ih.data, w_hh.data, need_x, need_h0, nw_ih or nw_hh, nb_ih or nb_hh)
        return _rnn_grads(dx, xdtype, dw_ih if nw_ih else None, dw_hh if nw_hh else None,
                          [(h0, dh0), (b_ih, db if nb_ih else None), (b_hh, db if nb_hh else None)])

    out = from_op(packed, _rnn_parents(x, w_ih, w_hh, h0, b_ih, b_hh), backward, "rnn")
    return out, out[T - 1]
