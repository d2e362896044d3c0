"""Keras 3's EpochIterator rules for fit(steps_per_epoch=), validation_steps=, evaluate/predict(steps=).

Why a module of its own: what happens when the data and the step count disagree is Keras'
behaviour, not an accident of the loop, and users rely on it (an infinite generator with
steps_per_epoch; a data set that runs out before N steps).  Following
keras.src.trainers.epoch_iterator:

- Without a step count an epoch is one pass over the data (arrays: ceil(n / batch_size) batches; a
  sized loader / PyDataset: len(x); a generator or unsized iterable: until it is exhausted, so an
  infinite generator runs forever unless steps_per_epoch is given, as in Keras).
- With `steps_per_epoch=N` the same iterator is kept from one epoch to the next: epoch 2 continues
  where epoch 1 stopped.  When the data runs out before N steps (a known number of batches reached,
  or StopIteration), Keras warns "Your input ran out of data; interrupting training. ..." and ends
  that epoch early; the next epoch starts a fresh pass (arrays reshuffled, a DataLoader / PyDataset
  iterated again; a spent generator object yields nothing, so its later epochs run no step and warn
  again).  Training itself goes on, as in Keras.
- evaluate / predict with `steps=N`, and the validation of each epoch, start from the beginning of
  the data every time (a generator object continues where it is).
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["EpochIterator", "RAN_OUT", "check_steps"]

RAN_OUT = ("Your input ran out of data; interrupting training. Make sure that your dataset or generator can "
           "generate at least `steps_per_epoch * epochs` batches. You may need to use the `.repeat()` function "
           "when building your dataset.")


def check_steps(steps):
    """steps_per_epoch / validation_steps / steps: None or a positive integer (0 is refused rather than
    read as None, as Keras' `steps or ...` would)."""
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps <= 0:
        raise ValueError(f"steps must be a positive integer or None, got {steps!r}")
    return int(steps)


class EpochIterator:
    """make_iterator() -> an iterator over one pass of the data; num_batches: the length of a pass when
    known (None for a generator / unsized iterable); steps_per_epoch: Keras' argument (None or > 0)."""

    def __init__(self, make_iterator, num_batches=None, steps_per_epoch=None):
        steps_per_epoch = check_steps(steps_per_epoch)
        self._make = make_iterator
        self.steps_per_epoch = steps_per_epoch
        self._num_batches = num_batches
        self._current = None
        self._seen = 0

    @property
    def num_batches(self):
        """Steps in an epoch for the progress bar: steps_per_epoch, else the pass length (None: unknown
        until the first pass ends)."""
        return self.steps_per_epoch or self._num_batches

    def reset(self):
        self._current = None
        self._seen = 0

    def epoch(self):
        """Yield the batches of one epoch."""
        steps = self.steps_per_epoch or self._num_batches
        if not steps:                                   # unknown length, no step count: until exhausted
            n = 0
            for n, batch in enumerate(self._make(), 1):
                yield batch
            self._num_batches = self._num_batches or n or None
            return
        if self._current is None or self.steps_per_epoch is None:
            self._current, self._seen = iter(self._make()), 0
        for _ in range(steps):
            if self._num_batches and self._seen >= self._num_batches:
                if self.steps_per_epoch:
                    warnings.warn(RAN_OUT, UserWarning, stacklevel=3)
                break
            try:
                batch = next(self._current)
            except StopIteration:
                if self._num_batches is None:           # how an unknown pass length is found
                    self._num_batches = self._seen or None
                if self.steps_per_epoch:
                    warnings.warn(RAN_OUT, UserWarning, stacklevel=3)
                self._current = None
                return
            self._seen += 1
            yield batch
        if self._num_batches and self._seen >= self._num_batches:
            self._current, self._seen = None, 0         # the next epoch starts a new pass
