"""Fused optimizer updates over all parameters at once (PyTorch's SGD and Adam/AdamW formulas).

    sgd_momentum(params, grads, bufs, lr, momentum=0, dampening=0, weight_decay=0, nesterov=False,
                 first_step=False)
    adam(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
         weight_decay=0, decoupled=False)           # decoupled=True is AdamW

Arguments are lists of raw arrays (numpy or cupy, one float dtype); params and state are updated in place.
`first_step=True` initialises the momentum buffer with the (weight-decayed) gradient, as PyTorch does
when the buffer does not exist yet; `step` is the 1-based step count *after* incrementing (PyTorch's
state["step"]).  On the GPU the whole update is one multi-tensor kernel launch (optim_fused.cu) with the
hyperparameters as kernel arguments, so a learning-rate schedule never recompiles anything.
CPU path: per tensor, in place with out= and one reusable scratch buffer (no temporaries per op).
"""
from __future__ import annotations

import math

import numpy as np

from . import _multi_tensor as mt
from . import _runtime as rt
from . import _source

_CU = "optim_fused.cu"
_source.register_raw(_CU, "mt_sgd", "mt_adam")


def _check_sgd(momentum, dampening, nesterov, lr):
    if lr < 0:
        raise ValueError(f"invalid learning rate {lr}")
    if momentum < 0:
        raise ValueError(f"invalid momentum {momentum}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov momentum requires momentum > 0 and dampening == 0 (as in PyTorch)")


def sgd_momentum(params, grads, bufs, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                 first_step=False):
    """SGD step in place. `bufs` may be None when momentum == 0."""
    _check_sgd(momentum, dampening, nesterov, lr)
    if momentum != 0 and bufs is None:
        raise ValueError("sgd_momentum: momentum != 0 needs momentum buffers (bufs)")
    if not params:
        return
    if rt.is_cupy(params[0]):
        return sgd_gpu(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first_step)
    return sgd_cpu(params, grads, bufs, lr, momentum, dampening, weight_decay, nesterov, first_step)


def adam(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
         decoupled=False):
    """Adam (decoupled=False) or AdamW (decoupled=True) step in place; `step` >= 1."""
    if step < 1:
        raise ValueError(f"adam: step must be >= 1 (the count after incrementing), got {step}")
    if not 0.0 <= beta1 < 1.0 or not 0.0 <= beta2 < 1.0:
        raise ValueError(f"adam: betas must be in [0, 1), got ({beta1}, {beta2})")
    if not params:
        return
    if rt.is_cupy(params[0]):
        return adam_gpu(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay, decoupled)
    return adam_cpu(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, weight_decay, decoupled)


def _bias_corrections(step, lr, beta1, beta2):
    """PyTorch's host-side scalars: step_size = lr / (1 - beta1^t), sqrt(1 - beta2^t)."""
    return lr / (1.0 - beta1 ** step), math.sqrt(1.0 - beta2 ** step)


# ---------------------------------------------------------------------------------------------------- CPU


def _scratch(size, dtype):
    """One flat buffer reused (as views) for every tensor of the step: no per-op temporaries."""
    return np.empty(size, dtype=dtype)


def sgd_cpu(params, grads, bufs, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            first_step=False):
    lists = [params, grads] + ([bufs] if momentum != 0 else [])
    names = ["params", "grads", "bufs"][:len(lists)]
    sizes, dtype = mt.check_lists(lists, names, writable=("params", "bufs"))
    buf_a = _scratch(max(sizes), dtype)
    buf_b = _scratch(max(sizes), dtype)
    for k, (p, g) in enumerate(zip(params, grads)):
        a = buf_a[:p.size].reshape(p.shape)
        b = buf_b[:p.size].reshape(p.shape)
        d = g
        if weight_decay != 0:                                     # d = g + wd * p
            np.multiply(p, weight_decay, out=a)
            np.add(g, a, out=a)
            d = a
        if momentum != 0:
            buf = bufs[k]
            if first_step:                                        # buf = clone(d)
                np.copyto(buf, d)
            else:                                                 # buf = momentum * buf + (1 - dampening) * d
                np.multiply(buf, momentum, out=buf)
                if dampening != 0:
                    np.multiply(d, 1.0 - dampening, out=b)
                    np.add(buf, b, out=buf)
                else:
                    np.add(buf, d, out=buf)
            if nesterov:                                          # d = d + momentum * buf
                np.multiply(buf, momentum, out=b)
                np.add(d, b, out=b)
                d = b
            else:
                d = buf
        np.multiply(d, lr, out=b)                                 # p -= lr * d
        np.subtract(p, b, out=p)


def adam_cpu(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             decoupled=False):
    sizes, dtype = mt.check_lists([params, grads, exp_avgs, exp_avg_sqs],
                                  ["params", "grads", "exp_avgs", "exp_avg_sqs"],
                                  writable=("params", "exp_avgs", "exp_avg_sqs"))
    step_size, bc2_sqrt = _bias_corrections(step, lr, beta1, beta2)
    w1 = 1.0 - beta1
    buf_a = _scratch(max(sizes), dtype)
    buf_b = _scratch(max(sizes), dtype)
    for p, g, m, v in zip(params, grads, exp_avgs, exp_avg_sqs):
        a = buf_a[:p.size].reshape(p.shape)
        b = buf_b[:p.size].reshape(p.shape)
        if weight_decay != 0:
            if decoupled:
                np.multiply(p, 1.0 - lr * weight_decay, out=p)
            else:
                np.multiply(p, weight_decay, out=a)
                np.add(g, a, out=a)
                g = a                                             # g + wd * p, in scratch a
        # exp_avg.lerp_(g, 1 - beta1)
        np.subtract(g, m, out=b)
        if w1 < 0.5:
            np.multiply(b, w1, out=b)
            np.add(m, b, out=m)
        else:
            np.multiply(b, 1.0 - w1, out=b)
            np.subtract(g, b, out=m)
        # exp_avg_sq = exp_avg_sq * beta2 + (1 - beta2) * g * g
        np.multiply(v, beta2, out=v)
        np.multiply(g, g, out=b)
        np.multiply(b, 1.0 - beta2, out=b)
        np.add(v, b, out=v)
        # p -= step_size * exp_avg / (sqrt(exp_avg_sq) / bc2_sqrt + eps)
        np.sqrt(v, out=b)
        np.divide(b, bc2_sqrt, out=b)
        np.add(b, eps, out=b)
        np.divide(m, b, out=b)
        np.multiply(b, step_size, out=b)
        np.subtract(p, b, out=p)


# ---------------------------------------------------------------------------------------------------- GPU


def _xp_of(a):
    return rt.cupy() if rt.is_cupy(a) else np


def sgd_gpu(params, grads, bufs, lr, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
            first_step=False, launcher=None):
    """One launch for all tensors; `launcher` lets the host emulator run optim_fused.cu on numpy arrays."""
    launcher = launcher or rt.LAUNCHER
    xp = _xp_of(params[0])
    grads = [xp.ascontiguousarray(g) for g in grads]
    if momentum == 0 or bufs is None:
        bufs = grads                                   # never read or written when momentum == 0
    sizes, dtype = mt.check_lists([params, grads, bufs], ["params", "grads", "bufs"], writable=("params", "bufs"))
    mt.launch(launcher, xp, _CU, "mt_sgd", dtype, [params, grads, bufs], sizes,
              (rt.f64(lr), rt.f64(momentum), rt.f64(dampening), rt.f64(weight_decay), rt.i32(bool(nesterov)),
               rt.i32(bool(first_step))), params[0])


def adam_gpu(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
             decoupled=False, launcher=None):
    launcher = launcher or rt.LAUNCHER
    xp = _xp_of(params[0])
    grads = [xp.ascontiguousarray(g) for g in grads]
    sizes, dtype = mt.check_lists([params, grads, exp_avgs, exp_avg_sqs],
                                  ["params", "grads", "exp_avgs", "exp_avg_sqs"],
                                  writable=("params", "exp_avgs", "exp_avg_sqs"))
    step_size, bc2_sqrt = _bias_corrections(step, lr, beta1, beta2)
    mt.launch(launcher, xp, _CU, "mt_adam", dtype, [params, grads, exp_avgs, exp_avg_sqs], sizes,
              (rt.f64(lr), rt.f64(beta1), rt.f64(beta2), rt.f64(eps), rt.f64(weight_decay),
               rt.i32(bool(decoupled)), rt.f64(step_size), rt.f64(bc2_sqrt)), params[0])
