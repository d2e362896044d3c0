"""Stochastic gradient descent with momentum / Nesterov / L2 weight decay (PyTorch's SGD).

    g = grad + weight_decay * p
    if momentum:  b = g                              (first step)
                  b = momentum * b + (1 - dampening) * g   (later steps)
                  g = g + momentum * b  if nesterov else b
    p = p - lr * g
"""
from __future__ import annotations

from ..backend import get_array_module
from .optimizer import Optimizer, required

__all__ = ["SGD"]


class SGD(Optimizer):
    fused_name = "sgd"

    def __init__(self, params, lr=required, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, fused=None):
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                                      weight_decay=weight_decay, fused=fused))

    def _validate(self, group):
        super()._validate(group)
        if group["momentum"] < 0:
            raise ValueError(f"invalid momentum value: {group['momentum']}")
        if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _init_state(self, p, group):
        return {"momentum_buffer": None}

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr, wd = float(group["lr"]), float(group["weight_decay"])
        mom, damp = float(group["momentum"]), float(group["dampening"])
        if wd == 0.0 and mom == 0.0:
            (tmp,) = self._tmp(p)
            xp.multiply(g, lr, out=tmp)
            p -= tmp
            return
        tmp, tmp2 = self._tmp(p, 2)
        if wd != 0.0:
            xp.multiply(p, wd, out=tmp2)
            tmp2 += g
            g = tmp2                              # g_eff lives in tmp2; p.grad is untouched
        if mom != 0.0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = g.copy()
                state["momentum_buffer"] = buf
            else:
                buf *= mom
                if damp != 0.0:
                    xp.multiply(g, 1.0 - damp, out=tmp)
                    buf += tmp
                else:
                    buf += g
            if group["nesterov"]:
                xp.multiply(buf, mom, out=tmp)
                tmp += g                          # g + momentum * buf
            else:
                xp.multiply(buf, lr, out=tmp)
                p -= tmp
                return
        else:
            tmp = g                               # weight decay only: g_eff is already in scratch
        tmp *= lr
        p -= tmp

    def _fused_group(self, kernel, group, params, states):
        mom = float(group["momentum"])
        first = {}
        for p, st in zip(params, states):
            first[id(p)] = mom != 0.0 and st.get("momentum_buffer") is None
            if first[id(p)]:
                st["momentum_buffer"] = get_array_module(p.data).empty_like(p.data)   # kernel fills it
        for (_, is_first), items in self._buckets(params, states,
                                                  lambda p, st: (p.data.dtype.str, first[id(p)])):
            kernel([p.data for p, _ in items], [p.grad.data for p, _ in items],
                   [st["momentum_buffer"] for _, st in items] if mom != 0.0 else None,
                   float(group["lr"]), mom, float(group["dampening"]), float(group["weight_decay"]),
                   bool(group["nesterov"]), is_first)
