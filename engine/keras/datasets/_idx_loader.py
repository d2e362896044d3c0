"""Shared load_data() for the IDX image datasets."""
from __future__ import annotations

import numpy as np


def load(cls, path=None, embedded=False, download=True):
    """((x_train, y_train), (x_test, y_test)) as uint8 arrays (N, 28, 28) / (N,), like Keras."""
    if embedded:
        from ...data.embedded import EMBEDDED_DIR
        path = EMBEDDED_DIR
    train = cls(root=path, train=True, download=download)
    test = cls(root=path, train=False, download=download)
    return ((np.asarray(train.data, dtype=np.uint8), train.targets.astype(np.uint8)),
            (np.asarray(test.data, dtype=np.uint8), test.targets.astype(np.uint8)))
