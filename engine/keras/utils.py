"""keras.utils: to_categorical, set_random_seed."""
from __future__ import annotations

import random as _pyrandom

import numpy as np

from .. import random as _random

__all__ = ["to_categorical", "set_random_seed"]


def to_categorical(y, num_classes=None, dtype="float32"):
    """Integer labels (N,) -> one-hot (N, num_classes)."""
    y = np.asarray(y)
    if y.ndim > 1 and y.shape[-1] == 1:
        y = y.reshape(y.shape[:-1])
    y = y.astype(np.int64)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"to_categorical: labels range over [{y.min()}, {y.max()}], outside "
                         f"0..{num_classes - 1}")
    out = np.zeros(y.shape + (num_classes,), dtype=dtype)
    np.put_along_axis(out, y[..., None], 1, axis=-1)
    return out


def set_random_seed(seed):
    """Seed the engine (weight init, shuffling, dropout), numpy's and Python's generators."""
    _random.manual_seed(int(seed))
    np.random.seed(int(seed) % (2 ** 32))
    _pyrandom.seed(int(seed))
