"""Keras optimizers: Keras names and defaults on top of engine.optim.

A Keras optimizer is created before it knows its variables
(`Adam(learning_rate=1e-3)`, or just 'adam'); `compile` hands it the model's
trainable weights and it builds the engine optimizer then.  Defaults are Keras'
(Adam eps=1e-7, SGD lr=0.01, RMSprop rho=0.9), which are not PyTorch's, and so is
where epsilon goes: Keras' Adam adds it to sqrt(v) before bias correction ("epsilon
hat" of Kingma & Ba), Keras' RMSprop inside the square root.
`clipnorm` / `clipvalue` / `global_clipnorm` work as in Keras.
An engine.optim optimizer built over `model.parameters()` may also be passed to
`compile` directly.
"""
from __future__ import annotations

import math
import sys

import numpy as np

from .. import optim as _optim
from ..backend import get_array_module
from . import constraints, schedules
from .schedules import LearningRateSchedule

# `from keras.optimizers.schedules import ExponentialDecay` works too (this module is not a package)
sys.modules.setdefault(__name__ + ".schedules", schedules)

__all__ = ["Optimizer", "Adam", "AdamW", "SGD", "RMSprop", "get", "serialize", "schedules"]


def _eps_hat(group, step: int) -> float:
    """PyTorch's Adam with eps / sqrt(1 - beta2^t) is Keras' Adam with eps:

    keras:  p -= lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)
    torch:  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps')
    """
    return float(group["eps"]) / math.sqrt(1.0 - float(group["betas"][1]) ** step)


class _KerasAdamRule:
    """Mixin: engine Adam/AdamW updates with Keras' epsilon placement."""

    def _update(self, p, g, state, group):
        super()._update(p, g, state, dict(group, eps=_eps_hat(group, state["step"] + 1)))

    def _fused_group(self, kernel, group, params, states):
        by_step: dict = {}
        for p, st in zip(params, states):       # eps_t depends on the step: one call per step count
            by_step.setdefault(st["step"], []).append((p, st))
        for step, items in by_step.items():
            super()._fused_group(kernel, dict(group, eps=_eps_hat(group, step + 1)),
                                 [p for p, _ in items], [st for _, st in items])


class _KerasAdam(_KerasAdamRule, _optim.Adam):
    pass


class _KerasAdamW(_KerasAdamRule, _optim.AdamW):
    pass


class _KerasRMSprop(_optim.RMSprop):
    _eps_inside_sqrt = True


class Optimizer:
    name = "optimizer"
    #: Keras keeps the learning rate inside its momentum (SGD: m = momentum*m - lr*g; w += m), the
    #: engine outside (b = momentum*b + g; w -= lr*b).  Both are the same while lr is constant; when
    #: it changes (a schedule, LearningRateScheduler, ReduceLROnPlateau) step() rescales the engine's
    #: momentum buffers by old/new lr, which makes the next update Keras' exactly.
    _lr_in_momentum = False
    #: Keras' weight_decay is decoupled (w -= w*wd*lr before the update) for every optimizer; Adam's
    #: engine class does it itself, the others get it from step()
    _decoupled_decay = False

    def __init__(self, learning_rate=0.001, clipnorm=None, clipvalue=None, global_clipnorm=None,
                 name=None, **kwargs):
        lr = kwargs.pop("lr", None)          # Keras 2 spelling
        if lr is not None:
            learning_rate = lr
        if kwargs:
            raise TypeError(f"{type(self).__name__}: unsupported arguments {sorted(kwargs)}")
        if isinstance(learning_rate, dict) and "class_name" in learning_rate:   # from a saved config
            learning_rate = schedules.deserialize(learning_rate)
        self._schedule = learning_rate if isinstance(learning_rate, LearningRateSchedule) else None
        self._lr = float(learning_rate(0) if self._schedule is not None else learning_rate)
        if sum(c is not None for c in (clipnorm, clipvalue, global_clipnorm)) > 1:
            raise ValueError(f"Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
                             f"clipnorm={clipnorm}, clipvalue={clipvalue}, global_clipnorm={global_clipnorm}")
        self.clipnorm, self.clipvalue, self.global_clipnorm = clipnorm, clipvalue, global_clipnorm
        self.engine = None
        self.iterations = 0
        self._last_lr = None        # the rate of the previous update (see _lr_in_momentum)
        if name:
            self.name = name

    # learning_rate is read by LR-schedule callbacks and may be set between epochs
    @property
    def learning_rate(self):
        """The rate the next update uses (a schedule's value at `iterations`)."""
        if self._schedule is not None:
            return float(self._schedule(self.iterations))
        return self._lr

    @learning_rate.setter
    def learning_rate(self, value):
        if self._schedule is not None:
            raise TypeError("This optimizer was created with a LearningRateSchedule as its learning_rate, so its "
                            "learning rate cannot be set (ReduceLROnPlateau / LearningRateScheduler need a "
                            "number: pass one, or leave the schedule alone)")
        self._lr = float(value)
        if self.engine is not None:
            for g in self.engine.param_groups:
                g["lr"] = self._lr

    lr = learning_rate

    def build(self, params):
        params = [p for p in params if p.requires_grad]
        self._params = params
        self.engine = self._make(params)

    def _make(self, params):
        raise NotImplementedError

    def _clip(self):
        ps = [p for p in self._params if p.grad is not None]
        if self.clipvalue is not None:
            for p in ps:
                xp = get_array_module(p.grad.data)
                xp.clip(p.grad.data, -self.clipvalue, self.clipvalue, out=p.grad.data)
        if self.clipnorm is not None:
            for p in ps:
                xp = get_array_module(p.grad.data)
                n = float(xp.sqrt((p.grad.data * p.grad.data).sum()))
                if n > self.clipnorm:
                    p.grad.data *= self.clipnorm / n
        if self.global_clipnorm is not None and ps:
            total = math.sqrt(sum(float((p.grad.data * p.grad.data).sum()) for p in ps))
            if total > self.global_clipnorm:
                for p in ps:
                    p.grad.data *= self.global_clipnorm / total

    def zero_grad(self):
        self.engine.zero_grad()

    def step(self):
        if self.clipnorm is not None or self.clipvalue is not None or self.global_clipnorm is not None:
            self._clip()
        if self._schedule is not None:      # Keras: the schedule's value at the updates applied so far
            self._lr = float(self._schedule(self.iterations))
            for g in self.engine.param_groups:
                g["lr"] = self._lr
        lr = self._lr
        if (self._lr_in_momentum and getattr(self, "momentum", 0.0) and self._last_lr is not None
                and lr != self._last_lr and lr != 0.0):
            for st in self.engine.state.values():
                buf = st.get("momentum_buffer") if isinstance(st, dict) else None
                if buf is not None:
                    buf *= buf.dtype.type(self._last_lr / lr)
        if self._decoupled_decay and getattr(self, "weight_decay", None):
            wd = float(self.weight_decay)
            for p in self._params:
                if p.grad is not None:
                    p.data -= p.data * p.data.dtype.type(wd) * p.data.dtype.type(lr)
        self.engine.step()
        self._last_lr = lr
        self.iterations += 1
        constraints.apply_to(self._params)         # Keras: right after the update

    def apply_gradients(self, grads_and_vars):
        """Keras' custom-training-loop step: `opt.apply_gradients(zip(grads, model.trainable_weights))`
        with grads from `loss.backward()` (each weight's .grad).  The variables' .grad is cleared
        afterwards, so the next backward() starts from zero as TensorFlow's gradients do."""
        from ..tensor import Tensor
        pairs = [(g, v) for g, v in grads_and_vars]
        if self.engine is None:
            self.build([v for _, v in pairs])
        held = {id(p) for p in self._params}
        for g, v in pairs:
            if id(v) not in held:
                raise ValueError("apply_gradients: a variable this optimizer was not built for; use one "
                                 "optimizer per model (it is built over the first variables it is given)")
            if g is None:
                v.grad = None
            else:
                v.grad = g if isinstance(g, Tensor) else Tensor(np.asarray(g, dtype=np.float32))
        self.step()
        for p in self._params:
            p.grad = None

    def apply(self, grads, trainable_variables=None):
        """Keras 3 spelling: opt.apply(grads, model.trainable_variables)."""
        self.apply_gradients(zip(grads, trainable_variables if trainable_variables is not None else self._params))

    def state_dict(self):
        return {"iterations": self.iterations, "engine": self.engine.state_dict(), "last_lr": self._last_lr}

    def load_state_dict(self, state):
        self.iterations = int(state.get("iterations", 0))
        self.engine.load_state_dict(state["engine"])
        last = state.get("last_lr")
        self._last_lr = None if last is None else float(last)

    def get_config(self):
        lr = schedules.serialize(self._schedule) if self._schedule is not None else self._lr
        return {"learning_rate": lr, "clipnorm": self.clipnorm, "clipvalue": self.clipvalue,
                "global_clipnorm": self.global_clipnorm}

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


class Adam(Optimizer):
    name = "adam"

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False,
                 weight_decay=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.amsgrad, self.weight_decay = bool(amsgrad), weight_decay

    def _make(self, params):
        # Keras' weight_decay on Adam is decoupled (applied to the variable), i.e. AdamW.
        if self.weight_decay:
            return _KerasAdamW(params, lr=self._lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                               weight_decay=float(self.weight_decay), amsgrad=self.amsgrad)
        return _KerasAdam(params, lr=self._lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                           amsgrad=self.amsgrad)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "amsgrad": self.amsgrad, "weight_decay": self.weight_decay}


class AdamW(Adam):
    name = "adamw"

    def __init__(self, learning_rate=0.001, weight_decay=0.004, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                 amsgrad=False, **kwargs):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, weight_decay, **kwargs)

    def _make(self, params):
        return _KerasAdamW(params, lr=self._lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                           weight_decay=float(self.weight_decay or 0.0), amsgrad=self.amsgrad)


class SGD(Optimizer):
    name = "sgd"

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, weight_decay=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.momentum, self.nesterov, self.weight_decay = float(momentum), bool(nesterov), weight_decay

    _lr_in_momentum = True
    _decoupled_decay = True

    def _make(self, params):
        return _optim.SGD(params, lr=self._lr, momentum=self.momentum, nesterov=self.nesterov)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}


class RMSprop(Optimizer):
    """Keras RMSprop (rho=0.9, eps=1e-7, epsilon inside the square root as in Keras)."""

    name = "rmsprop"

    def __init__(self, learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False,
                 weight_decay=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rho, self.momentum, self.epsilon = float(rho), float(momentum), float(epsilon)
        self.centered, self.weight_decay = bool(centered), weight_decay

    def _make(self, params):
        return _KerasRMSprop(params, lr=self._lr, alpha=self.rho, eps=self.epsilon,
                             momentum=self.momentum, centered=self.centered)

    _lr_in_momentum = True
    _decoupled_decay = True

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered, "weight_decay": self.weight_decay}


class _EngineOptimizer(Optimizer):
    """Adapter for an engine.optim optimizer the user built over model.parameters()."""

    name = "engine_optimizer"

    def __init__(self, engine_opt):
        super().__init__(engine_opt.param_groups[0]["lr"])
        self.engine = engine_opt

    def build(self, params):
        self._params = [p for g in self.engine.param_groups for p in g["params"]]
        mine = {id(p) for p in self._params}
        missing = [p for p in params if p.requires_grad and id(p) not in mine]
        if missing:
            raise ValueError(f"the engine optimizer passed to compile() does not hold {len(missing)} of the "
                             "model's trainable weights; build it over model.parameters() after the model "
                             "is built, or pass a Keras optimizer ('adam', keras.optimizers.Adam(...))")


_BY_NAME = {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSprop}


def get(identifier) -> Optimizer:
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, _optim.Optimizer):
        return _EngineOptimizer(identifier)
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {identifier!r}; known: {sorted(_BY_NAME)}")
        return cls()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(str(identifier.get("class_name", "")).lower())
        if cls is None:
            raise ValueError(f"unknown optimizer {identifier.get('class_name')!r}")
        return cls(**identifier.get("config", {}))
    raise TypeError(f"cannot interpret {identifier!r} as an optimizer; use 'adam', 'sgd', 'rmsprop', "
                    "'adamw' or a keras.optimizers.* object")


def serialize(opt: Optimizer) -> dict:
    if type(opt) not in _BY_NAME.values():
        raise TypeError(f"cannot save the optimizer {opt!r} with the model; save with "
                        "include_optimizer=False and compile again after loading")
    return {"class_name": opt.name, "config": opt.get_config()}
