"""keras.utils: to_categorical, set_random_seed, pad_sequences, PyDataset, timeseries_dataset_from_array,
plot_model."""
from __future__ import annotations

import random as _pyrandom

import numpy as np

from .. import random as _random

from .data_utils import PyDataset, timeseries_dataset_from_array

__all__ = ["to_categorical", "set_random_seed", "pad_sequences", "PyDataset", "Sequence",
           "timeseries_dataset_from_array", "plot_model"]

#: Keras 2's name for PyDataset (keras.utils.Sequence)
Sequence = PyDataset


def plot_model(model, to_file="model.png", show_shapes=False, **kwargs):
    """Keras draws the model with pydot and Graphviz, which this facade does not use.  Rather than stop
    a keras.io program at its (illustrative) plot_model call, this prints model.summary(), the same
    layers and shapes as text, and warns that no image was written (Keras itself raises ImportError
    when pydot is missing, outside notebooks)."""
    import warnings
    warnings.warn(f"keras.utils.plot_model: dptrain's Keras facade draws no diagrams, so {to_file!r} was not "
                  "written; printing model.summary() instead", UserWarning, stacklevel=2)
    model.summary()


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


def pad_sequences(sequences, maxlen=None, dtype="int32", padding="pre", truncating="pre", value=0.0):
    """Keras' pad_sequences: lists of ids -> (n, maxlen) array.  As in Keras, padding and
    truncating default to 'pre': short sequences get `value` in front, long ones lose their
    beginning, so a recurrent layer reading left to right ends on the real last tokens."""
    if padding not in ("pre", "post") or truncating not in ("pre", "post"):
        raise ValueError(f"pad_sequences: padding and truncating must be 'pre' or 'post', got {padding!r}, "
                         f"{truncating!r}")
    seqs = [np.asarray(s) for s in sequences]
    lengths = [len(s) for s in seqs]
    if maxlen is None:
        maxlen = max(lengths) if lengths else 0
    maxlen = int(maxlen)
    sample_shape = next((s.shape[1:] for s in seqs if len(s)), ())
    is_str = np.issubdtype(np.dtype(dtype), np.str_) or np.dtype(dtype) == object
    if isinstance(value, str) and not is_str:
        raise ValueError(f"pad_sequences: value {value!r} is a string but dtype={dtype!r}")
    out = np.full((len(seqs), maxlen) + tuple(sample_shape), value, dtype=dtype)
    for i, s in enumerate(seqs):
        if not len(s) or maxlen == 0:
            continue
        trunc = s[-maxlen:] if truncating == "pre" else s[:maxlen]
        if trunc.shape[1:] != tuple(sample_shape):
            raise ValueError(f"pad_sequences: sequence {i} has elements of shape {trunc.shape[1:]}, expected "
                             f"{tuple(sample_shape)}")
        if padding == "post":
            out[i, :len(trunc)] = trunc
        else:
            out[i, -len(trunc):] = trunc
    return out
