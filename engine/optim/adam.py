"""Adam (L2 weight decay added to the gradient) and AdamW (decoupled weight decay).

PyTorch's definition, step t (starting at 1):

    AdamW only:  p = p * (1 - lr * weight_decay)
    Adam only:   g = grad + weight_decay * p
    m = beta1 * m + (1 - beta1) * g                 (computed as torch's lerp: m + (1-beta1)(g-m))
    v = beta2 * v + (1 - beta2) * g * g
    amsgrad:     v_max = max(v_max, v), used instead of v below
    p = p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
from __future__ import annotations

from ..backend import get_array_module
from .optimizer import MomentsOptimizer, _bias_corrections

__all__ = ["Adam", "AdamW"]


class Adam(MomentsOptimizer):
    fused_name = "adam"
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, fused=None):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                      amsgrad=amsgrad, fused=fused))


    def _init_state(self, p, group):
        xp = get_array_module(p.data)
        st = {"step": 0, "exp_avg": xp.zeros_like(p.data), "exp_avg_sq": xp.zeros_like(p.data)}
        if group["amsgrad"]:
            st["max_exp_avg_sq"] = xp.zeros_like(p.data)
        return st

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state["step"] += 1
        bc1, bc2_sqrt = _bias_corrections(beta1, beta2, state["step"])
        if wd != 0.0:
            if self._decoupled:
                p *= 1.0 - lr * wd
            else:
                tmp, tmp2 = self._tmp(p, 2)
                xp.multiply(p, wd, out=tmp2)
                tmp2 += g
                g = tmp2
        (tmp,) = self._tmp(p)
        m, v = state["exp_avg"], state["exp_avg_sq"]
        self._update_moments(xp, g, m, v, beta1, beta2, tmp)
        if group["amsgrad"]:
            vmax = state.get("max_exp_avg_sq")
            if vmax is None:                                  # amsgrad switched on after start
                vmax = state["max_exp_avg_sq"] = v.copy()
            xp.maximum(vmax, v, out=vmax)
            v = vmax
        xp.sqrt(v, out=tmp)
        tmp /= bc2_sqrt
        tmp += eps
        xp.divide(m, tmp, out=tmp)
        tmp *= lr / bc1
        p -= tmp

    def _fused_unsupported(self, group):
        return "amsgrad has no fused kernel" if group["amsgrad"] else None

    def _fused_group(self, kernel, group, params, states):
        for st in states:
            st["step"] += 1
        beta1, beta2 = (float(b) for b in group["betas"])
        for (_, step), items in self._buckets(params, states, lambda p, st: (p.data.dtype.str, st["step"])):
            kernel([p.data for p, _ in items], [p.grad.data for p, _ in items],
                   [st["exp_avg"] for _, st in items], [st["exp_avg_sq"] for _, st in items],
                   step, float(group["lr"]), beta1, beta2, float(group["eps"]),
                   float(group["weight_decay"]), self._decoupled)


class AdamW(Adam):
    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, fused=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, fused)
