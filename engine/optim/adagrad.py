"""Adagrad (PyTorch's definition), step t starting at 1.

    g = grad + weight_decay * p
    clr = lr / (1 + (t - 1) * lr_decay)
    sum = sum + g * g                    (sum starts at initial_accumulator_value)
    p = p - clr * g / (sqrt(sum) + eps)
"""
from __future__ import annotations

from ..backend import get_array_module
from .optimizer import Optimizer

__all__ = ["Adagrad"]


class Adagrad(Optimizer):
    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                 eps=1e-10):
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value, eps=eps))

    def _validate(self, group):
        super()._validate(group)
        self._nonnegative(group, "lr_decay", "initial_accumulator_value", "eps")

    def _init_state(self, p, group):
        xp = get_array_module(p.data)
        return {"step": 0, "sum": xp.full_like(p.data, group["initial_accumulator_value"])}

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        wd, eps = float(group["weight_decay"]), float(group["eps"])
        state["step"] += 1
        clr = float(group["lr"]) / (1.0 + (state["step"] - 1) * float(group["lr_decay"]))
        g, tmp = self._l2_grad(p, g, wd)
        acc = state["sum"]
        xp.multiply(g, g, out=tmp)
        acc += tmp
        xp.sqrt(acc, out=tmp)
        tmp += eps
        xp.divide(g, tmp, out=tmp)
        tmp *= clr
        p -= tmp
