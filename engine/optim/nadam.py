"""NAdam (Adam with Nesterov momentum) and RAdam (rectified Adam), PyTorch's definitions.

NAdam, step t starting at 1 (mu_t = beta1 * (1 - 0.5 * 0.96^(t * momentum_decay))):

    g = grad + weight_decay * p          (decoupled_weight_decay: p = p * (1 - lr * weight_decay))
    mu_product = mu_product * mu_t
    m = beta1 * m + (1 - beta1) * g;  v = beta2 * v + (1 - beta2) * g * g
    d = sqrt(v / (1 - beta2^t)) + eps
    p = p - lr * (1 - mu_t) / (1 - mu_product) * g / d
          - lr * mu_{t+1} / (1 - mu_product * mu_{t+1}) * m / d

RAdam: same m and v; rho_inf = 2 / (1 - beta2) - 1, rho_t = rho_inf - 2 t beta2^t / (1 - beta2^t);
    rho_t > 5:  p = p - lr * m / (1 - beta1^t) * r_t * sqrt(1 - beta2^t) / (sqrt(v) + eps)
    else:       p = p - lr * m / (1 - beta1^t)             (plain momentum while v is unreliable)
with r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t)).
"""
from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module
from .optimizer import MomentsOptimizer

__all__ = ["NAdam", "RAdam"]


class _AdamFamily(MomentsOptimizer):
    """Validation, state and the shared weight-decay / moment updates of NAdam and RAdam."""


    def _init_state(self, p, group):
        xp = get_array_module(p.data)
        return {"step": 0, "exp_avg": xp.zeros_like(p.data), "exp_avg_sq": xp.zeros_like(p.data)}

    def _moments(self, p, g, state, group, tmp, tmp2):
        """Weight decay, then m and v (tmp, tmp2: scratch); returns the effective gradient."""
        xp = get_array_module(p)
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        if wd != 0.0:
            if group["decoupled_weight_decay"]:
                p *= 1.0 - lr * wd
            else:
                xp.multiply(p, wd, out=tmp2)
                tmp2 += g
                g = tmp2
        m, v = state["exp_avg"], state["exp_avg_sq"]
        self._update_moments(xp, g, m, v, beta1, beta2, tmp)
        return g


class NAdam(_AdamFamily):
    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 momentum_decay=4e-3, decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      momentum_decay=momentum_decay,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _validate(self, group):
        super()._validate(group)
        if group["momentum_decay"] < 0:
            raise ValueError(f"invalid momentum_decay value: {group['momentum_decay']}")

    def _init_state(self, p, group):
        st = super()._init_state(p, group)
        st["mu_product"] = 1.0
        return st

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr, eps, psi = float(group["lr"]), float(group["eps"]), float(group["momentum_decay"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state["step"] += 1
        t = state["step"]
        mu = beta1 * (1.0 - 0.5 * 0.96 ** (t * psi))
        mu_next = beta1 * (1.0 - 0.5 * 0.96 ** ((t + 1) * psi))
        # torch keeps mu_product in a float32 0-d tensor (its default scalar dtype): round like it
        # so long runs give torch's numbers, also for float64 parameters
        mu_product = float(np.float32(state["mu_product"]) * np.float32(mu))
        state["mu_product"] = mu_product
        tmp, tmp2, denom = self._tmp(p, 3)
        g = self._moments(p, g, state, group, tmp, tmp2)
        xp.divide(state["exp_avg_sq"], 1.0 - beta2 ** t, out=denom)
        xp.sqrt(denom, out=denom)
        denom += eps
        xp.divide(g, denom, out=tmp)
        tmp *= lr * (1.0 - mu) / (1.0 - mu_product)
        p -= tmp
        xp.divide(state["exp_avg"], denom, out=tmp)
        tmp *= lr * mu_next / (1.0 - mu_product * mu_next)
        p -= tmp


class RAdam(_AdamFamily):
    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 decoupled_weight_decay=False):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      decoupled_weight_decay=decoupled_weight_decay))

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr, eps = float(group["lr"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state["step"] += 1
        t = state["step"]
        tmp, tmp2 = self._tmp(p, 2)
        self._moments(p, g, state, group, tmp, tmp2)
        bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * beta2 ** t / bc2
        m = state["exp_avg"]
        if rho_t > 5.0:
            rect = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            xp.sqrt(state["exp_avg_sq"], out=tmp)
            tmp += eps
            xp.divide(m, tmp, out=tmp)
            tmp *= lr * math.sqrt(bc2) * rect / bc1
        else:
            xp.multiply(m, lr / bc1, out=tmp)
        p -= tmp
