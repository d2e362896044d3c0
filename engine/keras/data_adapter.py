"""Turning what users pass to fit/evaluate/predict into batches of arrays.

Keras users pass whole numpy arrays (uint8 images, or x / 255.0 as float64) and
integer or one-hot labels; engine users may pass an engine.data.DataLoader (or
any re-iterable of (x, y) batches).  Arrays stay in the caller's dtype and are
converted to float32 one batch at a time, which avoids a second full-size copy
of the data set (60000 x 784 float64 -> float32 would be another 190 MB).
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor

__all__ = ["PeekedIterator", "is_batch_iterable", "as_array", "check_xy", "split_validation", "batch_x", "num_samples",
           "standardize_inputs", "take_rows"]


def is_batch_iterable(x) -> bool:
    """A DataLoader-like object: iterable, sized, not an array/Tensor/list of numbers."""
    if x is None or isinstance(x, (np.ndarray, Tensor, list, tuple, dict)):
        return False
    if hasattr(x, "__array__") or hasattr(x, "__cuda_array_interface__"):
        return False
    return hasattr(x, "__iter__")


class PeekedIterator:
    """A one-shot iterator (a Python generator) whose first batch can be read ahead, to build the model
    on it, and is still the first batch the loop gets."""

    EMPTY = object()

    def __init__(self, iterator):
        self._it = iterator
        self._head = []

    def peek(self):
        """The next batch without consuming it (EMPTY when the iterator is exhausted)."""
        if not self._head:
            try:
                self._head.append(next(self._it))
            except StopIteration:
                return self.EMPTY
        return self._head[0]

    def __iter__(self):
        return self

    def __next__(self):
        if self._head:
            return self._head.pop()
        return next(self._it)


def as_array(a, what):
    if a is None:
        return None
    if isinstance(a, Tensor):
        return a.data
    if isinstance(a, dict) or (isinstance(a, (list, tuple)) and a and hasattr(a[0], "shape")
                               and len(a) > 1 and getattr(a[0], "ndim", 0) >= 1
                               and len({getattr(v, "shape", None) for v in a}) > 1):
        raise TypeError(f"{what}: this model has one input, so pass one array (a list or dict of arrays is for "
                        f"a functional model built with several keras.Input)")
    if hasattr(a, "__cuda_array_interface__"):
        return a
    arr = np.asarray(a)
    if arr.dtype.kind in "US" or (arr.dtype == object and arr.size and isinstance(arr.flat[0], (str, bytes))):
        raise TypeError(f"{what}: the data holds strings, and models take numbers: vectorize the texts first, "
                        "e.g. vectorize_layer = keras.layers.TextVectorization(output_sequence_length=L); "
                        "vectorize_layer.adapt(texts); x = vectorize_layer(texts) (StringLookup for categories)")
    if arr.dtype == object:
        raise TypeError(f"{what}: could not make a numeric array out of {type(a).__name__} "
                        "(ragged lists?)")
    return arr


def num_samples(x) -> int:
    """Rows of x: one array, or the list of arrays of a multi-input model."""
    return len(x[0]) if isinstance(x, list) else len(x)


def take_rows(a, idx):
    """Rows idx of an array, or of each array of a list (several inputs / outputs)."""
    if a is None:
        return None
    return [None if v is None else v[idx] for v in a] if isinstance(a, list) else a[idx]


def standardize_inputs(x, names, what, kind="inputs"):
    """The arrays of a model with several inputs (or outputs), in order, from a list/tuple or a dict by name."""
    if isinstance(x, dict):
        missing = [n for n in names if n not in x]
        extra = [k for k in x if k not in names]
        if missing or extra:
            raise ValueError(f"{what}: the dict must have one array per model {kind[:-1]} {names}; missing "
                             f"{missing}, unexpected {extra}")
        x = [x[n] for n in names]
    if not isinstance(x, (list, tuple)):
        raise ValueError(f"{what}: the model has {len(names)} {kind} {names}; pass a list of {len(names)} arrays "
                         f"in that order or a dict by {kind[:-1]} name, not one {type(x).__name__}")
    if len(x) != len(names):
        raise ValueError(f"{what}: the model has {len(names)} {kind} {names} but got {len(x)} arrays")
    arrays = [as_array(a, f"{what}[{i}]") for i, a in enumerate(x)]
    for i, a in enumerate(arrays):
        if a.ndim == 0:
            raise ValueError(f"{what}[{i}] ({names[i]}) must be an array with a batch axis first, got a scalar")
    lengths = {len(a) for a in arrays}
    if len(lengths) > 1:
        raise ValueError(f"{what}: the {kind[:-1]} arrays have different numbers of samples: "
                         + ", ".join(f"{n} has {len(a)}" for n, a in zip(names, arrays)))
    return arrays


def check_xy(x, y, loss_name, n_outputs):
    """Raise a readable error for mismatched lengths or labels that do not fit the loss."""
    if x.ndim == 0:
        raise ValueError("x must be an array with a batch axis first, got a scalar")
    if y is None:
        return None
    if len(y) != len(x):
        raise ValueError(f"x and y have different numbers of samples: x has {len(x)} (shape "
                         f"{tuple(x.shape)}), y has {len(y)} (shape {tuple(y.shape)})")
    if loss_name == "sparse_categorical_crossentropy":
        if y.ndim == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        if y.ndim == 2 and n_outputs and y.shape[1] == n_outputs and n_outputs > 1:
            raise ValueError(f"y has shape {tuple(y.shape)}, which looks one-hot, but the loss is "
                             "'sparse_categorical_crossentropy' (integer labels); use "
                             "loss='categorical_crossentropy' or pass y.argmax(axis=1)")
        if y.dtype.kind == "f":
            if not np.all(np.asarray(y) == np.floor(np.asarray(y))):
                raise ValueError("sparse_categorical_crossentropy needs integer class labels; y has "
                                 "non-integer values")
        ylo, yhi = int(np.asarray(y).min()), int(np.asarray(y).max())
        if n_outputs and (ylo < 0 or yhi >= n_outputs):
            raise ValueError(f"labels in y range over [{ylo}, {yhi}] but the model outputs {n_outputs} "
                             f"classes (valid labels 0..{n_outputs - 1}); give the last layer "
                             f"{yhi + 1} units or fix the labels")
    elif loss_name == "categorical_crossentropy":
        if y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1 and n_outputs and n_outputs > 1):
            raise ValueError(f"y has shape {tuple(y.shape)} (integer labels?) but the loss is "
                             "'categorical_crossentropy', which needs one-hot targets of shape "
                             f"(n, {n_outputs}); use loss='sparse_categorical_crossentropy' or "
                             "keras.utils.to_categorical(y)")
    return y


def split_validation(x, y, validation_split):
    """Keras semantics: the *last* fraction of the samples, taken before shuffling."""
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
    n = num_samples(x)
    split = int(n * (1.0 - validation_split))
    if split == 0 or split == n:
        raise ValueError(f"validation_split={validation_split} leaves no samples for training or "
                         f"validation with {n} samples")
    head, tail = slice(None, split), slice(split, None)
    return (take_rows(x, head), take_rows(y, head)), (take_rows(x, tail), take_rows(y, tail))


def batch_x(x, idx):
    """Rows idx of x as float32 (one small copy); a list for a multi-input model."""
    if isinstance(x, list):
        return [batch_x(a, idx) for a in x]
    b = x[idx]
    if b.dtype != np.float32:
        b = b.astype(np.float32)
    return b
