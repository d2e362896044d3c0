"""keras.backend: the few helpers Keras programs call."""
from __future__ import annotations

from .layers.base import clear_session

__all__ = ["clear_session", "backend", "floatx", "epsilon"]


def backend():
    return "dptrain"


def floatx():
    return "float32"


def epsilon():
    return 1e-7
