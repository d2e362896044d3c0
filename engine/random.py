"""The engine's global random state: one seedable numpy Generator.

Factories and layer initialisers draw from it unless given `seed=` or
`generator=`; `engine.manual_seed(s)` makes a whole run reproducible.  Random
numbers are always drawn on the CPU and moved to the device, so a seed gives the
same values on CPU and GPU.
"""
from __future__ import annotations

import numpy as np

_generator = np.random.default_rng(0)


def manual_seed(seed: int) -> np.random.Generator:
    global _generator
    _generator = np.random.default_rng(seed)
    return _generator


def default_generator() -> np.random.Generator:
    return _generator


def resolve(seed=None, generator=None) -> np.random.Generator:
    if generator is not None and seed is not None:
        raise ValueError("give seed= or generator=, not both")
    if generator is not None:
        return generator
    if seed is not None:
        return np.random.default_rng(seed)
    return _generator


def get_state() -> dict:
    """JSON-able state of the global generator (for checkpoints)."""
    return _generator.bit_generator.state


def set_state(state: dict):
    _generator.bit_generator.state = state


# ---------------------------------------------------------------- batch sharding
# Under data parallelism each worker holds some rows of a global batch.  Random ops
# that draw per-row values (dropout) consult this context, draw for the whole global
# batch from the (identically seeded) generator and keep their own rows, so N
# workers see exactly the masks one worker would have drawn.
import contextlib
import threading

_shard_state = threading.local()


@contextlib.contextmanager
def batch_shard(index: int, count: int):
    """This process holds rows index, index+count, ... of the global batch."""
    prev = getattr(_shard_state, "value", None)
    _shard_state.value = (int(index), int(count)) if count > 1 else None
    try:
        yield
    finally:
        _shard_state.value = prev


def current_batch_shard():
    return getattr(_shard_state, "value", None)


def draw_rows(draw, shape):
    """Call draw(shape) -> array for this process's rows of the global batch (axis 0)."""
    shard = current_batch_shard()
    if shard is None or len(shape) == 0:
        return draw(shape)
    index, count = shard
    full = draw((shape[0] * count,) + tuple(shape[1:]))
    return full[index::count]
