"""keras.datasets.fashion_mnist"""
from __future__ import annotations

from ._idx_loader import load

__all__ = ["load_data"]


def load_data(path=None, embedded=False, download=True):
    """Fashion-MNIST as ((x_train, y_train), (x_test, y_test)), uint8, images (N, 28, 28).

    path: a directory with the IDX files (default: the engine.data search order).
    embedded=True: the 6000/1000-image subset shipped in the package (tests, quick demos).
    Without any full copy (and no network) the embedded subset is used, with a warning.
    """
    from ...data.datasets import FashionMNIST
    return load(FashionMNIST, path, embedded, download)
