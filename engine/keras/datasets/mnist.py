"""keras.datasets.mnist"""
from __future__ import annotations

from ._idx_loader import load

__all__ = ["load_data"]


def load_data(path=None, download=True):
    """MNIST as ((x_train, y_train), (x_test, y_test)), uint8, images (N, 28, 28)."""
    from ...data.datasets import MNIST
    return load(MNIST, path, False, download)
