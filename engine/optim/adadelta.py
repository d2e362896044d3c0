"""Adadelta (PyTorch's definition; the optimizer of pytorch/examples' MNIST script), step t from 1.

    g = grad + weight_decay * p
    v = rho * v + (1 - rho) * g * g                     (square_avg)
    delta = sqrt(u + eps) / sqrt(v + eps) * g
    u = rho * u + (1 - rho) * delta * delta             (acc_delta)
    p = p - lr * delta

torch's defaults: lr=1.0, rho=0.9, eps=1e-6.  `lr` scales the step that Zeiler's paper leaves
unscaled (lr=1.0 is the paper); StepLR on top of it is the example's schedule.
"""
from __future__ import annotations

from ..backend import get_array_module
from .optimizer import Optimizer

__all__ = ["Adadelta"]


class Adadelta(Optimizer):
    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, rho=rho, eps=eps, weight_decay=weight_decay))

    def _validate(self, group):
        super()._validate(group)
        self._nonnegative(group, "eps")
        if not 0.0 <= group["rho"] <= 1.0:
            raise ValueError(f"invalid rho value: {group['rho']} (must be in [0, 1])")

    def _init_state(self, p, group):
        xp = get_array_module(p.data)
        return {"step": 0, "square_avg": xp.zeros_like(p.data), "acc_delta": xp.zeros_like(p.data)}

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr, rho = float(group["lr"]), float(group["rho"])
        wd, eps = float(group["weight_decay"]), float(group["eps"])
        state["step"] += 1
        g, tmp = self._l2_grad(p, g, wd)
        v, u = state["square_avg"], state["acc_delta"]
        v *= rho
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - rho
        v += tmp                                   # v = rho v + (1 - rho) g^2
        xp.add(v, eps, out=tmp)
        xp.sqrt(tmp, out=tmp)                      # sqrt(v + eps)
        xp.divide(g, tmp, out=tmp)                 # g / sqrt(v + eps)
        tmp *= xp.sqrt(u + eps)                    # delta
        u *= rho
        u += (1.0 - rho) * (tmp * tmp)             # u = rho u + (1 - rho) delta^2
        tmp *= lr
        p -= tmp
