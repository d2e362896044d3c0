"""Adamax, Adam with the infinity norm (PyTorch's definition), step t starting at 1.

    g = grad + weight_decay * p
    m = beta1 * m + (1 - beta1) * g       (torch's lerp)
    u = max(beta2 * u, |g| + eps)
    p = p - lr / (1 - beta1^t) * m / u
"""
from __future__ import annotations

from ..backend import get_array_module
from .optimizer import MomentsOptimizer

__all__ = ["Adamax"]


class Adamax(MomentsOptimizer):
    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))


    def _init_state(self, p, group):
        xp = get_array_module(p.data)
        return {"step": 0, "exp_avg": xp.zeros_like(p.data), "exp_inf": xp.zeros_like(p.data)}

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state["step"] += 1
        g, tmp = self._l2_grad(p, g, wd)
        m, u = state["exp_avg"], state["exp_inf"]
        xp.subtract(g, m, out=tmp)
        tmp *= 1.0 - beta1
        m += tmp
        u *= beta2
        xp.abs(g, out=tmp)
        tmp += eps
        xp.maximum(u, tmp, out=u)
        xp.divide(m, u, out=tmp)
        tmp *= lr / (1.0 - beta1 ** state["step"])
        p -= tmp
