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
