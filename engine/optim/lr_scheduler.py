"""Learning-rate schedules: StepLR, CosineAnnealingLR, LinearWarmup (PyTorch semantics).

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
`state_dict()` holds plain numbers and lists (and the wrapped scheduler's state),
so it can be stored with engine.save.
"""
from __future__ import annotations

import math

__all__ = ["LRScheduler", "StepLR", "CosineAnnealingLR", "LinearWarmup"]


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

    def step(self) -> None:
        self._step_count += 1
        self.last_epoch += 1
        self._set(self.get_lr())

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
