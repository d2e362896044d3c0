"""keras.backend: the few helpers Keras programs call, and where Keras models keep their weights."""
from __future__ import annotations

import os

from .layers.base import clear_session

__all__ = ["clear_session", "backend", "floatx", "epsilon", "default_device", "set_device"]

_device_override: str | None = None


def default_device() -> str:
    """Where new Keras weights (and so training) go: the CPU unless `set_device` says otherwise.

    Keras itself trains on the first GPU whenever there is one.  Here that is opt-in
    (`keras.backend.set_device("cuda")`) until the whole facade has passed on a GPU: on an H200,
    Sequential CNNs and recurrent text models trained there with the CPU's results, while a
    two-input functional model and DataLoader inputs still failed (README, Keras facade).
    `DPTRAIN_KERAS_DEVICE=cuda` opts in without changing the program."""
    if _device_override is not None:
        return _device_override
    env = os.environ.get("DPTRAIN_KERAS_DEVICE", "").strip()
    if env:
        from .. import backend as engine_backend
        return str(engine_backend.parse_device(env))
    return "cpu"


def set_device(device: str | None) -> None:
    """Put the weights of Keras layers created from now on on `device` ("cpu", "cuda", "cuda:1");
    None returns to the default (the CPU).  Existing models move with `model.to(device)`."""
    global _device_override
    if device is not None:
        from .. import backend as engine_backend
        device = str(engine_backend.parse_device(device))
    _device_override = device


def backend():
    return "dptrain"


def floatx():
    return "float32"


def epsilon():
    return 1e-7
