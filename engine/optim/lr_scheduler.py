"""Learning-rate schedules with torch.optim.lr_scheduler's names, arguments and sequences.

StepLR, MultiStepLR, ExponentialLR, ConstantLR, LinearLR, PolynomialLR,
CosineAnnealingLR, CosineAnnealingWarmRestarts, LambdaLR, MultiplicativeLR,
OneCycleLR, SequentialLR, ChainedScheduler, ReduceLROnPlateau, plus LinearWarmup
(this project's shorthand for LinearLR / SequentialLR([LinearLR, after])).

Usage is PyTorch's: build the scheduler after the optimizer, call
`optimizer.step()` then `scheduler.step()` once per epoch (or per iteration,
your choice of unit).  Construction already sets the epoch-0 learning rate.

Each scheduler updates `group["lr"]` with PyTorch's *recursive* (chainable)
formula, i.e. relative to the current learning rate, so two schedulers on one
optimizer compose multiplicatively exactly like `torch.optim.lr_scheduler.
ChainedScheduler` when both are stepped every time:

    warm = LinearWarmup(opt, warmup_steps=5, start_factor=0.1)
    decay = StepLR(opt, step_size=30, gamma=0.1)
    for epoch in ...: train(); warm.step(); decay.step()     # lr = warmup factor * decay

LinearWarmup can instead *wrap* a scheduler, which then starts only after the
warmup (PyTorch's SequentialLR([LinearLR, inner], milestones=[warmup_steps])):

    sched = LinearWarmup(opt, warmup_steps=5, start_factor=0.1,
                         after=CosineAnnealingLR(opt, T_max=95))
    for epoch in ...: train(); sched.step()                  # only step the wrapper

Build `after` first (with the same optimizer) and step only the wrapper.
`state_dict()` holds plain numbers, strings, lists and dicts (and the wrapped
schedulers' states), so it can be stored with engine.save (safetensors + JSON, no
pickle).  Functions are never stored: LambdaLR / MultiplicativeLR keep, like torch,
only the `__dict__` of callable *objects* and None for plain functions and lambdas,
so the same lambdas must be passed again when resuming.
"""
from __future__ import annotations

import math
import operator
import types
from bisect import bisect_right
from collections import Counter

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "ConstantLR", "LinearLR",
           "PolynomialLR", "CosineAnnealingLR", "CosineAnnealingWarmRestarts", "LambdaLR",
           "MultiplicativeLR", "OneCycleLR", "SequentialLR", "ChainedScheduler",
           "ReduceLROnPlateau", "LinearWarmup"]


class LRScheduler:
    def __init__(self, optimizer, last_epoch: int = -1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(optimizer).__name__} is not an optimizer (no param_groups)")
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise KeyError(f"param_groups[{i}] has no 'initial_lr': to resume a scheduler with "
                                   "last_epoch >= 0, load the optimizer's state_dict first")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = int(last_epoch)
        self._initial_step()

    def _initial_step(self):
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    def _lrs(self):
        return [g["lr"] for g in self.optimizer.param_groups]

    def get_lr(self) -> list:
        """New learning rates for the current last_epoch (recursive form)."""
        raise NotImplementedError

    def _closed_form_lr(self) -> list:
        """Learning rates at last_epoch computed from base_lrs alone."""
        raise NotImplementedError

    def _set(self, values):
        for g, lr in zip(self.optimizer.param_groups, values):
            g["lr"] = lr
        self._last_lr = self._lrs()

    def step(self, epoch=None) -> None:
        """Advance one epoch.  step(epoch) (deprecated in torch, kept so old scripts run) jumps
        straight to `epoch` with the closed form, as torch does."""
        self._step_count += 1
        if epoch is not None:
            self._jump(epoch)
            return
        self.last_epoch += 1
        self._set(self.get_lr())

    def _jump(self, epoch) -> None:
        """Set last_epoch and its closed-form rates without counting a step (torch's _update_lr(e),
        which SequentialLR uses to restart a scheduler at epoch 0 on its milestone)."""
        self.last_epoch = int(epoch)
        try:
            values = self._closed_form_lr()
        except NotImplementedError:
            values = self.get_lr()
        self._set(values)

    def get_last_lr(self) -> list:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self.__dict__.items()
                if k != "optimizer"}

    def load_state_dict(self, state_dict: dict) -> None:
        for k, v in state_dict.items():
            setattr(self, k, list(v) if isinstance(v, tuple) else v)


class StepLR(LRScheduler):
    """lr = initial_lr * gamma ** (epoch // step_size)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if int(step_size) < 1:
            raise ValueError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]

    def _closed_form_lr(self):
        return [b * self.gamma ** (self.last_epoch // self.step_size) for b in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr - eta_min) * (1 + cos(pi * epoch / T_max)) / 2 (periodic after T_max)."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if int(T_max) < 1:
            raise ValueError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        e, T, lo = self.last_epoch, self.T_max, self.eta_min
        if self._is_initial:
            return self._lrs()
        if self._step_count == 1 and e > 0:          # resumed with last_epoch >= 0
            return self._closed_form_lr()
        if (e - 1 - T) % (2 * T) == 0:
            return [lr + (b - lo) * (1 - math.cos(math.pi / T)) / 2
                    for lr, b in zip(self._lrs(), self.base_lrs)]
        return [(1 + math.cos(math.pi * e / T)) / (1 + math.cos(math.pi * (e - 1) / T)) * (lr - lo) + lo
                for lr in self._lrs()]

    def _closed_form_lr(self):
        return [self.eta_min + (b - self.eta_min) * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for b in self.base_lrs]


class LinearWarmup(LRScheduler):
    """Ramp lr linearly from start_factor * lr to lr over warmup_steps steps.

    Standalone or chained (both stepped): PyTorch's LinearLR(start_factor, end_factor=1,
    total_iters=warmup_steps).  With after=scheduler: warmup first, then `after` runs from
    its epoch 0 (PyTorch's SequentialLR with one milestone at warmup_steps).
    """

    def __init__(self, optimizer, warmup_steps: int, start_factor: float = 0.1, after=None,
                 last_epoch: int = -1):
        if int(warmup_steps) < 1:
            raise ValueError(f"LinearWarmup: warmup_steps must be >= 1, got {warmup_steps}")
        if not 0.0 < float(start_factor) <= 1.0:
            raise ValueError(f"LinearWarmup: start_factor must be in (0, 1], got {start_factor}")
        if after is not None:
            if getattr(after, "optimizer", None) is not optimizer:
                raise ValueError("LinearWarmup(after=...): the wrapped scheduler must use the same optimizer")
            if last_epoch == -1:
                # `after` already applied its epoch-0 rate at construction; warmup starts from the initial lr
                for g in optimizer.param_groups:
                    g["lr"] = g["initial_lr"]
        self.warmup_steps, self.start_factor = int(warmup_steps), float(start_factor)
        self.after = after
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        e, W, s = self.last_epoch, self.warmup_steps, self.start_factor
        if self.after is not None and e >= W:
            if e == W:
                self.after.last_epoch = 0
                values = self.after._closed_form_lr()
                self.after._last_lr = list(values)
                return values
            self.after.step()
            return self.after.get_last_lr()
        if e == 0:
            return [lr * s for lr in self._lrs()]
        if self._is_initial or e > W:
            return self._lrs()
        return [lr * (1.0 + (1.0 - s) / (W * s + (e - 1) * (1.0 - s))) for lr in self._lrs()]

    def _closed_form_lr(self):
        e, W, s = self.last_epoch, self.warmup_steps, self.start_factor
        if self.after is not None and e >= W:
            saved = self.after.last_epoch
            self.after.last_epoch = e - W
            try:
                return self.after._closed_form_lr()
            finally:
                self.after.last_epoch = saved
        return [b * (s + (1.0 - s) * min(e, W) / W) for b in self.base_lrs]

    def state_dict(self):
        sd = {k: v for k, v in super().state_dict().items() if k != "after"}
        sd["after"] = self.after.state_dict() if self.after is not None else None
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        inner = state_dict.pop("after", None)
        super().load_state_dict(state_dict)
        if inner is not None:
            if self.after is None:
                raise ValueError("LinearWarmup.load_state_dict: the saved state wraps a scheduler "
                                 "(after=...) but this one does not")
            self.after.load_state_dict(inner)


# ---------------------------------------------------------------------------- torch's other schedules
def _per_group(name, optimizer, value) -> list:
    """One value per param group: a list/tuple must have one entry per group, a scalar is repeated."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"expected {n} values for {name} (one per param group), got {len(value)}")
        return list(value)
    return [value] * n


def _positive_int(name, value) -> int:
    """value as an int >= 1 (numpy integers accepted); torch rejects floats here too."""
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"expected a positive integer {name}, got {value!r}") from None
    if v < 1:
        raise ValueError(f"expected a positive integer {name}, got {value!r}")
    return v


def _lambda_state(fns) -> list:
    """torch's rule for lr_lambdas in a state dict: None for functions (not storable), the
    attribute dict of a callable object (so a stateful schedule object resumes)."""
    return [None if isinstance(fn, (types.FunctionType, types.MethodType)) or not hasattr(fn, "__dict__")
            else dict(fn.__dict__) for fn in fns]


class _LambdaBase(LRScheduler):
    """Shared by LambdaLR and MultiplicativeLR: one callable per group, never stored in the state."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"expected {n} lr_lambdas (one per param group), got {len(lr_lambda)}")
            fns = list(lr_lambda)
        else:
            fns = [lr_lambda] * n
        for fn in fns:
            if not callable(fn):
                raise TypeError(f"lr_lambda should be a function, got {type(fn).__name__}")
        self.lr_lambdas = fns
        super().__init__(optimizer, last_epoch)

    def state_dict(self):
        sd = {k: v for k, v in super().state_dict().items() if k != "lr_lambdas"}
        sd["lr_lambdas"] = _lambda_state(self.lr_lambdas)
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        saved = state_dict.pop("lr_lambdas", None) or []
        super().load_state_dict(state_dict)
        for fn, attrs in zip(self.lr_lambdas, saved):
            if attrs is not None:
                fn.__dict__.update(attrs)


class LambdaLR(_LambdaBase):
    """lr = initial_lr * lr_lambda(epoch); lr_lambda may be a list with one function per group."""

    def get_lr(self):
        return [b * fn(self.last_epoch) for fn, b in zip(self.lr_lambdas, self.base_lrs)]

    def _closed_form_lr(self):
        return self.get_lr()


class MultiplicativeLR(_LambdaBase):
    """lr = lr * lr_lambda(epoch) at every step after the first (no closed form)."""

    def get_lr(self):
        if self._is_initial:
            return self._lrs()
        return [lr * fn(self.last_epoch) for fn, lr in zip(self.lr_lambdas, self._lrs())]


class MultiStepLR(LRScheduler):
    """lr = initial_lr * gamma ** (number of milestones <= epoch); a repeated milestone counts twice."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        self.milestones = Counter(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch not in self.milestones:
            return self._lrs()
        return [lr * self.gamma ** self.milestones[self.last_epoch] for lr in self._lrs()]

    def _closed_form_lr(self):
        ms = sorted(self.milestones.elements())
        return [b * self.gamma ** bisect_right(ms, self.last_epoch) for b in self.base_lrs]

    def state_dict(self):
        sd = super().state_dict()
        sd["milestones"] = sorted(self.milestones.elements())    # a list: JSON has no int keys
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        ms = state_dict.pop("milestones", None)
        super().load_state_dict(state_dict)
        if ms is not None:                        # our list, or a torch Counter {milestone: count}
            self.milestones = Counter({int(k): int(v) for k, v in ms.items()}) if isinstance(ms, dict) \
                else Counter(int(m) for m in ms)


class ExponentialLR(LRScheduler):
    """lr = initial_lr * gamma ** epoch."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self._is_initial:
            return self._lrs()
        return [lr * self.gamma for lr in self._lrs()]

    def _closed_form_lr(self):
        return [b * self.gamma ** self.last_epoch for b in self.base_lrs]


class ConstantLR(LRScheduler):
    """lr = initial_lr * factor for the first total_iters epochs, then initial_lr."""

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1):
        if not 0.0 <= float(factor) <= 1.0:
            raise ValueError(f"ConstantLR: factor must be in [0, 1], got {factor}")
        self.factor, self.total_iters = float(factor), int(total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        e = self.last_epoch
        if e == 0:
            return [lr * self.factor for lr in self._lrs()]
        if e != self.total_iters:
            return self._lrs()
        return [lr * (1.0 / self.factor) for lr in self._lrs()]

    def _closed_form_lr(self):
        f = self.factor + (self.last_epoch >= self.total_iters) * (1.0 - self.factor)
        return [b * f for b in self.base_lrs]


class LinearLR(LRScheduler):
    """lr factor goes linearly from start_factor to end_factor over total_iters epochs, then stays."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        if not 0.0 < float(start_factor) <= 1.0:
            raise ValueError(f"LinearLR: start_factor must be in (0, 1], got {start_factor}")
        if not 0.0 <= float(end_factor) <= 1.0:
            raise ValueError(f"LinearLR: end_factor must be in [0, 1], got {end_factor}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        e, s, d, T = self.last_epoch, self.start_factor, self.end_factor - self.start_factor, self.total_iters
        if e == 0:
            return [lr * s for lr in self._lrs()]
        if self._is_initial or e > T:
            return self._lrs()
        return [lr * (1.0 + d / (T * s + (e - 1) * d)) for lr in self._lrs()]

    def _closed_form_lr(self):
        f = self.start_factor + (self.end_factor - self.start_factor) * min(self.total_iters, self.last_epoch) \
            / self.total_iters
        return [b * f for b in self.base_lrs]


class PolynomialLR(LRScheduler):
    """lr = initial_lr * (1 - min(epoch, total_iters) / total_iters) ** power."""

    def __init__(self, optimizer, total_iters: int = 5, power: float = 1.0, last_epoch: int = -1):
        self.total_iters, self.power = int(total_iters), float(power)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        e, T = self.last_epoch, self.total_iters
        if self._is_initial or e > T:
            return self._lrs()
        f = ((1.0 - e / T) / (1.0 - (e - 1) / T)) ** self.power
        return [lr * f for lr in self._lrs()]

    def _closed_form_lr(self):
        f = (1.0 - min(self.total_iters, self.last_epoch) / self.total_iters) ** self.power
        return [b * f for b in self.base_lrs]


class CosineAnnealingWarmRestarts(LRScheduler):
    """SGDR: cosine from initial_lr to eta_min over T_i epochs, then restart with T_i *= T_mult.

    step(epoch) takes a fractional epoch (e.g. epoch + i / iters_per_epoch), as in torch."""

    def __init__(self, optimizer, T_0: int, T_mult: int = 1, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_0 = _positive_int("T_0", T_0)
        self.T_mult = _positive_int("T_mult", T_mult)
        if not isinstance(eta_min, (int, float)):
            raise ValueError(f"expected a float eta_min, got {eta_min!r}")
        self.T_i, self.eta_min, self.T_cur = self.T_0, float(eta_min), last_epoch
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [self.eta_min + (b - self.eta_min) * (1 + math.cos(math.pi * self.T_cur / self.T_i)) / 2
                for b in self.base_lrs]

    def _closed_form_lr(self):
        return self.get_lr()

    def step(self, epoch=None):
        if epoch is None and self.last_epoch < 0:
            epoch = 0
        if epoch is None:
            epoch = self.last_epoch + 1
            self.T_cur += 1
            if self.T_cur >= self.T_i:
                self.T_cur %= self.T_i
                self.T_i *= self.T_mult
        elif epoch < 0:
            raise ValueError(f"expected a non-negative epoch, got {epoch}")
        elif epoch >= self.T_0:
            if self.T_mult == 1:
                self.T_cur = epoch % self.T_0
            else:
                n = int(math.log(epoch / self.T_0 * (self.T_mult - 1) + 1, self.T_mult))
                self.T_cur = epoch - self.T_0 * (self.T_mult ** n - 1) / (self.T_mult - 1)
                self.T_i = self.T_0 * self.T_mult ** n
        else:
            self.T_i, self.T_cur = self.T_0, epoch
        self._step_count += 1
        self.last_epoch = math.floor(epoch)
        self._set(self.get_lr())


class OneCycleLR(LRScheduler):
    """The 1cycle policy, stepped once per *batch*: lr rises from max_lr/div_factor to max_lr over
    pct_start of total_steps, then anneals to max_lr/(div_factor*final_div_factor) (three_phase:
    back down to the initial lr first).  With cycle_momentum the momentum (SGD) or beta1 (Adam
    family) moves the opposite way between max_momentum and base_momentum.

    total_steps, or epochs * steps_per_epoch; stepping past total_steps raises, as in torch."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum=0.85, max_momentum=0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False, last_epoch: int = -1):
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(optimizer).__name__} is not an optimizer (no param_groups)")
        if total_steps is not None:
            self.total_steps = _positive_int("total_steps", total_steps)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = _positive_int("epochs", epochs) * _positive_int("steps_per_epoch", steps_per_epoch)
        else:
            raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
        if not isinstance(pct_start, (int, float)) or not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"OneCycleLR: pct_start must be a float in [0, 1], got {pct_start!r}")
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        self._anneal_func_type = anneal_strategy
        self._schedule_phases = self._phases(float(pct_start), bool(three_phase))
        max_lrs = _per_group("max_lr", optimizer, max_lr)
        if last_epoch == -1:
            for m, g in zip(max_lrs, optimizer.param_groups):
                g["initial_lr"] = m / div_factor
                g["max_lr"] = m
                g["min_lr"] = g["initial_lr"] / final_div_factor
        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            defaults = getattr(optimizer, "defaults", {})
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError("OneCycleLR(cycle_momentum=True) needs an optimizer with momentum or betas; "
                                 "pass cycle_momentum=False")
            self.use_beta1 = "betas" in defaults
            if last_epoch == -1:
                for hi, lo, g in zip(_per_group("max_momentum", optimizer, max_momentum),
                                     _per_group("base_momentum", optimizer, base_momentum),
                                     optimizer.param_groups):
                    self._set_momentum(g, hi)
                    g["max_momentum"], g["base_momentum"] = hi, lo
        super().__init__(optimizer, last_epoch)

    def _phases(self, pct, three_phase):
        """torch's phase table: each phase names the group keys it anneals between."""
        T = self.total_steps
        up = {"end_step": pct * T - 1, "start_lr": "initial_lr", "end_lr": "max_lr",
              "start_momentum": "max_momentum", "end_momentum": "base_momentum"}
        if three_phase:
            return [up,
                    {"end_step": 2 * pct * T - 2, "start_lr": "max_lr", "end_lr": "initial_lr",
                     "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                    {"end_step": float(T - 1), "start_lr": "initial_lr", "end_lr": "min_lr",
                     "start_momentum": "max_momentum", "end_momentum": "max_momentum"}]
        return [up, {"end_step": float(T - 1), "start_lr": "max_lr", "end_lr": "min_lr",
                     "start_momentum": "base_momentum", "end_momentum": "max_momentum"}]

    def _anneal(self, start, end, pct):
        if self._anneal_func_type == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def _set_momentum(self, group, value):
        if self.use_beta1:
            group["betas"] = (value, *tuple(group["betas"])[1:])
        else:
            group["momentum"] = value

    def get_lr(self):
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times, but total_steps is {self.total_steps}")
        lrs = []
        for g in self.optimizer.param_groups:
            start = 0.0
            for i, ph in enumerate(self._schedule_phases):
                if step <= ph["end_step"] or i == len(self._schedule_phases) - 1:
                    pct = (step - start) / (ph["end_step"] - start)
                    lrs.append(self._anneal(g[ph["start_lr"]], g[ph["end_lr"]], pct))
                    if self.cycle_momentum:
                        self._set_momentum(g, self._anneal(g[ph["start_momentum"]], g[ph["end_momentum"]], pct))
                    break
                start = ph["end_step"]
        return lrs


def _check_children(owner, optimizer, schedulers):
    if len(schedulers) < 1:
        raise ValueError(f"{owner} expects at least one scheduler")
    for i, s in enumerate(schedulers):
        if not hasattr(s, "optimizer"):
            raise TypeError(f"{owner}: scheduler at index {i} has no optimizer")
        if isinstance(s, ReduceLROnPlateau):
            raise ValueError(f"{owner} does not support ReduceLROnPlateau (its step needs a metric); "
                             f"got one at index {i}")
        if s.optimizer is not optimizer:
            raise ValueError(f"{owner} expects all schedulers to use the same optimizer; "
                             f"the one at index {i} does not")


class _Composite(LRScheduler):
    """State handling for schedulers that hold other schedulers (their states nest in ours)."""

    def state_dict(self):
        sd = {k: v for k, v in super().state_dict().items() if k != "_schedulers"}
        sd["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return sd

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        inner = state_dict.pop("_schedulers")
        if len(inner) != len(self._schedulers):
            raise ValueError(f"{type(self).__name__}.load_state_dict: the saved state has {len(inner)} "
                             f"schedulers, this one has {len(self._schedulers)}")
        super().load_state_dict(state_dict)
        for s, sd in zip(self._schedulers, inner):
            s.load_state_dict(sd)


class SequentialLR(_Composite):
    """Run schedulers[0] until milestones[0], then schedulers[1] from its epoch 0, and so on.

    Build the inner schedulers first (same optimizer) and step only this one."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        _check_children("SequentialLR", optimizer, schedulers)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(f"SequentialLR expects one milestone fewer than schedulers, got "
                             f"{len(schedulers)} schedulers and {len(milestones)} milestones")
        self._schedulers = list(schedulers)
        self._milestones = [int(m) for m in milestones]
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer
        # the inner schedulers each applied their epoch-0 rate when built: start again from the
        # initial rates and let only the first scheduler take its epoch 0 (as torch does)
        for g in optimizer.param_groups:
            g["lr"] = g["initial_lr"]
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self._undo(self)
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = self._schedulers[idx].get_last_lr()
        self._step_count = 1

    @staticmethod
    def _undo(sched):
        """Take back the construction step of every (nested) inner scheduler."""
        if hasattr(sched, "_schedulers"):
            for s in sched._schedulers:
                SequentialLR._undo(s)
        elif hasattr(sched, "last_epoch"):
            sched.last_epoch -= 1

    def step(self, epoch=None):
        if epoch is not None:
            raise TypeError("SequentialLR.step() takes no epoch")
        self._step_count += 1
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        s = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            s._jump(0)
        else:
            s.step()
        self._last_lr = s.get_last_lr()


class ChainedScheduler(_Composite):
    """Step all schedulers together each time (their factors multiply)."""

    def __init__(self, schedulers, optimizer=None):
        optimizer = optimizer if optimizer is not None else (schedulers[0].optimizer if schedulers else None)
        _check_children("ChainedScheduler", optimizer, schedulers)
        self._schedulers = list(schedulers)
        self.optimizer = optimizer
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def step(self, epoch=None):
        if epoch is not None:
            raise TypeError("ChainedScheduler.step() takes no epoch")
        for s in self._schedulers:
            s.step()
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]


class ReduceLROnPlateau(LRScheduler):
    """Multiply lr by `factor` when `metric` (passed to step) stopped improving for `patience` epochs.

    Improvement: mode="min" and threshold_mode="rel" means metric < best * (1 - threshold)
    ("abs": metric < best - threshold; "max" mirrors it).  After a reduction, `cooldown` epochs
    are not counted as bad; lr never goes below min_lr (one per group or a scalar), and changes
    smaller than eps are skipped."""

    def __init__(self, optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr=0, eps: float = 1e-8):
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1.0, got {factor}")
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"{type(optimizer).__name__} is not an optimizer (no param_groups)")
        self.factor = float(factor)
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            self.default_min_lr = None
            self.min_lrs = _per_group("min_lr", optimizer, min_lr)
        else:
            self.default_min_lr = min_lr
            self.min_lrs = [min_lr] * len(optimizer.param_groups)
        self.patience, self.cooldown, self.eps = int(patience), int(cooldown), float(eps)
        self.last_epoch = 0
        self._last_lr = self._lrs()
        self._init_is_better(mode, threshold, threshold_mode)
        self._reset()

    def _reset(self):
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def _init_is_better(self, mode, threshold, threshold_mode):
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode {mode!r} is unknown (use 'min' or 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau: threshold_mode {threshold_mode!r} is unknown (use 'rel' or 'abs')")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode, self.threshold, self.threshold_mode = mode, float(threshold), threshold_mode

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def is_better(self, a, best):
        if self.mode == "min":
            return a < (best * (1.0 - self.threshold) if self.threshold_mode == "rel" else best - self.threshold)
        return a > (best * (1.0 + self.threshold) if self.threshold_mode == "rel" else best + self.threshold)

    _is_better = is_better

    def step(self, metrics, epoch=None):
        """One epoch with validation metric `metrics` (a number, 0-d array or one-element Tensor)."""
        current = float(metrics.item() if hasattr(metrics, "item") else metrics)
        epoch = self.last_epoch + 1 if epoch is None else epoch
        self.last_epoch = epoch
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0                    # bad epochs during cooldown do not count
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._lrs()

    def _reduce_lr(self):
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(f"ReduceLROnPlateau: the optimizer now has {len(groups)} param groups, "
                                   f"min_lr lists {len(self.min_lrs)}; set scheduler.min_lrs to match")
            self.min_lrs = [self.default_min_lr] * len(groups)
        for g, lo in zip(groups, self.min_lrs):
            old = float(g["lr"])
            new = max(old * self.factor, lo)
            if old - new > self.eps:
                g["lr"] = new

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self._init_is_better(self.mode, self.threshold, self.threshold_mode)
