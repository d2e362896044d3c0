"""Finite-difference check of analytic gradients, in float64.

The output is projected on a fixed random direction so one scalar carries every
output element; each input element is then nudged by +-eps.  On failure the error
names the worst element so a broken backward can be found quickly.
"""
from __future__ import annotations

import numpy as np

from .tensor import Tensor, no_grad


class GradcheckError(AssertionError):
    pass


def gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, seed=0):
    if isinstance(inputs, Tensor):
        inputs = (inputs,)
    inputs = list(inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, Tensor):
            raise TypeError(f"gradcheck input {i} is not a Tensor")
        if t.requires_grad and t.dtype != np.float64:
            raise TypeError(f"gradcheck input {i} has dtype {t.dtype}: finite differences need float64 "
                            "(create inputs with dtype='float64')")
    out = fn(*inputs)
    if not isinstance(out, Tensor):
        raise TypeError("gradcheck: fn must return a Tensor")
    xp_out = out.numpy()
    proj = np.random.default_rng(seed).standard_normal(xp_out.shape)
    for t in inputs:
        t.grad = None
    (out * Tensor(proj, dtype=out.dtype, device=out.device)).sum().backward()
    analytic = [None if not t.requires_grad else
                (t.grad.numpy().copy() if t.grad is not None else np.zeros(t.shape)) for t in inputs]

    worst = (0.0, None)
    for i, t in enumerate(inputs):
        if not t.requires_grad:
            continue
        data = t.data                     # perturbed in place, restored after
        flat_idx = np.ndindex(*t.shape) if t.ndim else [()]
        for idx in flat_idx:
            orig = data[idx].item()
            with no_grad():
                data[idx] = orig + eps
                fp = float((fn(*inputs).numpy() * proj).sum())
                data[idx] = orig - eps
                fm = float((fn(*inputs).numpy() * proj).sum())
                data[idx] = orig
            num = (fp - fm) / (2 * eps)
            ana = float(analytic[i][idx])
            err = abs(ana - num)
            excess = err - (atol + rtol * abs(num))
            if worst[1] is None or excess > worst[0]:
                worst = (excess, (i, idx, ana, num, err))
    if worst[1] is not None and worst[0] > 0:
        i, idx, ana, num, err = worst[1]
        raise GradcheckError(
            f"gradcheck failed: input {i} (shape {inputs[i].shape}) element {idx}: analytic "
            f"{ana:.8g} vs numerical {num:.8g} (abs error {err:.3g}, allowed atol={atol} + rtol={rtol}*|num|)")
    return True
