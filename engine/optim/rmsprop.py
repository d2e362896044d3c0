"""RMSprop (PyTorch's definition).

    g = grad + weight_decay * p
    s = alpha * s + (1 - alpha) * g * g
    centered:  a = alpha * a + (1 - alpha) * g;  d = sqrt(s - a * a) + eps
    else:      d = sqrt(s) + eps
    momentum:  b = momentum * b + g / d;  p = p - lr * b
    else:      p = p - lr * g / d
"""
from __future__ import annotations

from ..backend import get_array_module
from .optimizer import Optimizer

__all__ = ["RMSprop"]


class RMSprop(Optimizer):
    # Where epsilon goes: PyTorch adds it to sqrt(v); Keras (engine.keras) inside the root.
    _eps_inside_sqrt = False

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                                      momentum=momentum, centered=centered))

    def _validate(self, group):
        super()._validate(group)
        self._nonnegative(group, "alpha", "eps", "momentum")

    def _init_state(self, p, group):
        xp = get_array_module(p.data)
        st = {"step": 0, "square_avg": xp.zeros_like(p.data)}
        if group["momentum"] > 0:
            st["momentum_buffer"] = xp.zeros_like(p.data)
        if group["centered"]:
            st["grad_avg"] = xp.zeros_like(p.data)
        return st

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
        alpha, mom = float(group["alpha"]), float(group["momentum"])
        state["step"] += 1
        g, tmp = self._l2_grad(p, g, wd)
        sq = state["square_avg"]
        sq *= alpha
        xp.multiply(g, g, out=tmp)
        tmp *= 1.0 - alpha
        sq += tmp
        if group["centered"]:
            ga = state.get("grad_avg")
            if ga is None:
                ga = state["grad_avg"] = xp.zeros_like(p)
            xp.subtract(g, ga, out=tmp)          # lerp: ga + (1 - alpha) * (g - ga)
            tmp *= 1.0 - alpha
            ga += tmp
            xp.multiply(ga, ga, out=tmp)
            xp.subtract(sq, tmp, out=tmp)        # tmp = v (centered)
            src = tmp
        else:
            src = sq
        if self._eps_inside_sqrt:                # Keras: sqrt(v + eps)
            xp.add(src, eps, out=tmp)
            xp.sqrt(tmp, out=tmp)
        else:                                    # PyTorch: sqrt(v) + eps
            xp.sqrt(src, out=tmp)
            tmp += eps                           # tmp = denominator
        xp.divide(g, tmp, out=tmp)
        if mom > 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = xp.zeros_like(p)
            buf *= mom
            buf += tmp
            xp.multiply(buf, lr, out=tmp)
        else:
            tmp *= lr
        p -= tmp
