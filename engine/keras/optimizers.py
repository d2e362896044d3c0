"""Keras optimizers: Keras names and defaults on top of engine.optim.

A Keras optimizer is created before it knows its variables
(`Adam(learning_rate=1e-3)`, or just 'adam'); `compile` hands it the model's
trainable weights and it builds the engine optimizer then.  Defaults are Keras'
(Adam eps=1e-7, SGD lr=0.01, RMSprop rho=0.9), which are not PyTorch's, and so is
where epsilon goes: Keras' Adam adds it to sqrt(v) before bias correction ("epsilon
hat" of Kingma & Ba), Keras' RMSprop and Adagrad inside the square root, Keras' Adamax
to the infinity norm u (PyTorch: to |g| inside the max).  Adadelta and Nadam use the
engine's PyTorch classes, whose formulas are Keras' (Nadam with momentum_decay=1, which
makes PyTorch's 0.96^(t*psi) momentum schedule Keras' 0.96^t); Lion is written here.
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

__all__ = ["Optimizer", "Adam", "AdamW", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adamax", "Nadam", "Lion",
           "get", "serialize", "schedules"]


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


class _KerasAdagrad(_optim.Adagrad):
    """Keras' Adagrad: acc += g^2;  p -= lr * g / sqrt(acc + eps)   (PyTorch: sqrt(acc) + eps)."""

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        state["step"] += 1
        (tmp,) = self._tmp(p)
        acc = state["sum"]
        xp.multiply(g, g, out=tmp)
        acc += tmp
        xp.add(acc, float(group["eps"]), out=tmp)
        xp.sqrt(tmp, out=tmp)
        xp.divide(g, tmp, out=tmp)
        tmp *= float(group["lr"])
        p -= tmp


class _KerasAdamax(_optim.Adamax):
    """Keras' Adamax, step t from 1 (PyTorch adds eps to |g| inside the max instead):

        m += (1 - beta1) (g - m);  u = max(beta2 u, |g|);  p -= lr m / ((1 - beta1^t) (u + eps))
    """

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr, eps = float(group["lr"]), float(group["eps"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state["step"] += 1
        (tmp,) = self._tmp(p)
        m, u = state["exp_avg"], state["exp_inf"]
        xp.subtract(g, m, out=tmp)
        tmp *= 1.0 - beta1
        m += tmp
        u *= beta2
        xp.abs(g, out=tmp)
        xp.maximum(u, tmp, out=u)
        xp.add(u, eps, out=tmp)
        tmp *= 1.0 - beta1 ** state["step"]
        xp.divide(m, tmp, out=tmp)
        tmp *= lr
        p -= tmp


class _KerasLion(_optim.Optimizer):
    """Lion (Chen et al. 2023) as Keras 3 writes it:

        p -= lr * sign(beta1 m + (1 - beta1) g);  m = beta2 m + (1 - beta2) g
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.99)):
        super().__init__(params, dict(lr=lr, betas=tuple(betas)))

    def _init_state(self, p, group):
        return {"step": 0, "exp_avg": get_array_module(p.data).zeros_like(p.data)}

    def _update(self, p, g, state, group):
        xp = get_array_module(p)
        lr = float(group["lr"])
        beta1, beta2 = (float(b) for b in group["betas"])
        state["step"] += 1
        tmp, tmp2 = self._tmp(p, 2)
        m = state["exp_avg"]
        xp.multiply(m, beta1, out=tmp)
        xp.multiply(g, 1.0 - beta1, out=tmp2)
        tmp += tmp2
        xp.sign(tmp, out=tmp)
        tmp *= lr
        p -= tmp
        m *= beta2
        xp.multiply(g, 1.0 - beta2, out=tmp)
        m += tmp


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


class Adagrad(Optimizer):
    """Keras 3 Adagrad: the accumulator starts at initial_accumulator_value (0.1) and epsilon goes
    inside the square root, p -= lr * g / sqrt(acc + eps)."""

    name = "adagrad"
    _decoupled_decay = True

    def __init__(self, learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None,
                 **kwargs):
        super().__init__(learning_rate, **kwargs)
        if initial_accumulator_value < 0:
            raise ValueError("Adagrad: `initial_accumulator_value` must be >= 0 (the accumulator goes under a "
                             f"square root). Received: initial_accumulator_value={initial_accumulator_value}")
        self.initial_accumulator_value, self.epsilon = float(initial_accumulator_value), float(epsilon)
        self.weight_decay = weight_decay

    def _make(self, params):
        return _KerasAdagrad(params, lr=self._lr, initial_accumulator_value=self.initial_accumulator_value,
                             eps=self.epsilon)

    def get_config(self):
        return {**super().get_config(), "initial_accumulator_value": self.initial_accumulator_value,
                "epsilon": self.epsilon, "weight_decay": self.weight_decay}


class Adadelta(Optimizer):
    """Keras 3 Adadelta (lr=0.001, rho=0.95, eps=1e-7); its update is PyTorch's:
    v = rho v + (1-rho) g^2;  d = sqrt(u + eps) / sqrt(v + eps) g;  u = rho u + (1-rho) d^2;  p -= lr d."""

    name = "adadelta"
    _decoupled_decay = True

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.rho, self.epsilon, self.weight_decay = float(rho), float(epsilon), weight_decay

    def _make(self, params):
        return _optim.Adadelta(params, lr=self._lr, rho=self.rho, eps=self.epsilon)

    def get_config(self):
        return {**super().get_config(), "rho": self.rho, "epsilon": self.epsilon,
                "weight_decay": self.weight_decay}


class Adamax(Optimizer):
    """Keras 3 Adamax: u = max(beta_2 u, |g|), p -= lr m / ((1 - beta_1^t) (u + eps))."""

    name = "adamax"
    _decoupled_decay = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.weight_decay = weight_decay

    def _make(self, params):
        return _KerasAdamax(params, lr=self._lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "weight_decay": self.weight_decay}


class Nadam(Optimizer):
    """Keras 3 Nadam, step t from 1, u_t = beta_1 (1 - 0.5 * 0.96^t), u_prod = u_1 ... u_t:

        m_hat = u_{t+1} m / (1 - u_prod u_{t+1}) + (1 - u_t) g / (1 - u_prod)
        p -= lr m_hat / (sqrt(v / (1 - beta_2^t)) + eps)

    which is PyTorch's NAdam with momentum_decay=1 (its mu_t is beta1 (1 - 0.5 * 0.96^(t*psi)));
    the running product is kept in float32 as Keras keeps it (a float32 variable)."""

    name = "nadam"
    _decoupled_decay = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        self.beta_1, self.beta_2, self.epsilon = float(beta_1), float(beta_2), float(epsilon)
        self.weight_decay = weight_decay

    def _make(self, params):
        return _optim.NAdam(params, lr=self._lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon,
                            momentum_decay=1.0)

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon, "weight_decay": self.weight_decay}


class Lion(Optimizer):
    """Keras 3 Lion (lr=0.001, beta_1=0.9, beta_2=0.99): p -= lr sign(beta_1 m + (1-beta_1) g),
    then m = beta_2 m + (1-beta_2) g.  Its steps are +-lr per weight: use a rate 3-10x below Adam's."""

    name = "lion"
    _decoupled_decay = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None, **kwargs):
        super().__init__(learning_rate, **kwargs)
        if beta_1 <= 0 or beta_1 > 1:
            raise ValueError("Argument `beta_1` must be in the [0, 1] range. Otherwise, the optimizer "
                             f"degenerates to SignSGD. Received: beta_1={beta_1}.")
        self.beta_1, self.beta_2, self.weight_decay = float(beta_1), float(beta_2), weight_decay

    def _make(self, params):
        return _KerasLion(params, lr=self._lr, betas=(self.beta_1, self.beta_2))

    def get_config(self):
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "weight_decay": self.weight_decay}


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


_BY_NAME = {"adam": Adam, "adamw": AdamW, "sgd": SGD, "rmsprop": RMSprop, "adagrad": Adagrad,
            "adadelta": Adadelta, "adamax": Adamax, "nadam": Nadam, "lion": Lion}


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
    raise TypeError(f"cannot interpret {identifier!r} as an optimizer; use one of {sorted(_BY_NAME)} "
                    "or a keras.optimizers.* object")


def serialize(opt: Optimizer) -> dict:
    if type(opt) not in _BY_NAME.values():
        raise TypeError(f"cannot save the optimizer {opt!r} with the model; save with "
                        "include_optimizer=False and compile again after loading")
    return {"class_name": opt.name, "config": opt.get_config()}
