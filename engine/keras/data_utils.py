"""keras.utils.PyDataset and keras.utils.timeseries_dataset_from_array, without TensorFlow.

Why: keras.io's forecasting examples build their windows with `timeseries_dataset_from_array` and
the "Training & evaluation" guide subclasses `PyDataset`; both are then passed to fit / evaluate /
predict, which take any re-iterable of batches.  The dataset object returned here stands in for
tf.data's: it iterates (x, y) batches as engine Tensors (`.numpy()` works on them), has `len()`
(batches), `take(n)` and `as_numpy_iterator()`, the tf.data methods those examples call.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor

__all__ = ["PyDataset", "timeseries_dataset_from_array"]


class PyDataset:
    """Keras 3's PyDataset: subclass it with `__len__` (number of batches) and `__getitem__(index)` (one
    batch: x, (x, y) or (x, y, sample_weight)); `on_epoch_end()` runs after each training epoch.  fit
    visits the batches in a new random order each epoch when `shuffle=True` (its default), as Keras
    does.  `workers`, `use_multiprocessing` and `max_queue_size` are accepted; batches are built in
    the training process, one at a time (the same batches, so the same results, only without the
    prefetching)."""

    def __init__(self, workers=1, use_multiprocessing=False, max_queue_size=10):
        self._workers = workers
        self._use_multiprocessing = use_multiprocessing
        self._max_queue_size = max_queue_size

    @property
    def workers(self):
        return getattr(self, "_workers", 1)

    @property
    def use_multiprocessing(self):
        return getattr(self, "_use_multiprocessing", False)

    @property
    def max_queue_size(self):
        return getattr(self, "_max_queue_size", 10)

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must define __getitem__(index) returning one batch")

    def __len__(self):
        raise NotImplementedError(f"{type(self).__name__} must define __len__() (the number of batches)")

    @property
    def num_batches(self):
        return len(self)

    def on_epoch_begin(self):
        """Called before each training epoch (override to change the data between epochs)."""

    def on_epoch_end(self):
        """Called after each training epoch (override to change the data between epochs)."""

    def iter_batches(self, order=None):
        """The batches in `order` (batch indices), default 0 .. len - 1."""
        for i in (range(len(self)) if order is None else order):
            yield self[int(i)]

    def __iter__(self):
        return self.iter_batches()


def _tensor(a):
    # np.ascontiguousarray makes a 0-d value 1-d: a scalar target (batch_size=None) must stay ()
    return Tensor(np.ascontiguousarray(a) if np.ndim(a) else np.asarray(a))


class ArrayBatches:
    """Batches of (x[, y]) arrays, in a fixed order: what timeseries_dataset_from_array returns."""

    def __init__(self, make_x, n, batch_size, make_y=None):
        self._make_x, self._make_y, self._n = make_x, make_y, int(n)
        self._batch = None if batch_size is None else int(batch_size)

    def __len__(self):
        if self._batch is None:
            return self._n
        return -(-self._n // self._batch)

    def __iter__(self):
        step = 1 if self._batch is None else self._batch
        for start in range(0, self._n, step):
            idx = slice(start, start + step)
            x = self._make_x(idx)
            if self._batch is None:
                x = x[0]
            if self._make_y is None:
                yield _tensor(x)
                continue
            y = self._make_y(idx)
            yield _tensor(x), _tensor(y[0] if self._batch is None else y)

    def take(self, count):
        """The first `count` batches (tf.data's take)."""
        for i, batch in enumerate(self):
            if i >= count:
                return
            yield batch

    def as_numpy_iterator(self):
        for batch in self:
            yield tuple(t.numpy() for t in batch) if isinstance(batch, tuple) else batch.numpy()


def timeseries_dataset_from_array(data, targets, sequence_length, sequence_stride=1, sampling_rate=1,
                                  batch_size=128, shuffle=False, seed=None, start_index=None, end_index=None):
    """Keras' sliding windows over `data` (timesteps first): window i holds the steps
    start_index + p_i + j * sampling_rate, j < sequence_length, for start positions p_i = 0,
    sequence_stride, ... while the window fits before end_index; its target is
    targets[start_index + p_i] (None: inputs only).  The start positions are shuffled once (with
    `seed`), as Keras does, and batches of `batch_size` windows (None: single windows) keep the last
    partial batch.  Returns re-iterable batches for fit / evaluate / predict."""
    data = np.asarray(data)
    n_data = len(data)
    if sampling_rate <= 0 or sampling_rate >= n_data:
        raise ValueError(f"`sampling_rate` must be higher than 0 and lower than the length of the data. "
                         f"Received: sampling_rate={sampling_rate}, for data of length {n_data}")
    if sequence_stride <= 0 or sequence_stride >= n_data:
        raise ValueError(f"`sequence_stride` must be higher than 0 and lower than the length of the data. "
                         f"Received: sequence_stride={sequence_stride}, for data of length {n_data}")
    if sequence_length <= 0:
        raise ValueError(f"`sequence_length` must be higher than 0. Received: sequence_length={sequence_length}")
    if start_index is None:
        start_index = 0
    elif start_index < 0 or start_index >= n_data:
        raise ValueError(f"`start_index` must be 0 or greater and lower than the length of the data. "
                         f"Received: start_index={start_index}, for data of length {n_data}")
    if end_index is None:
        end_index = n_data
    elif end_index <= start_index or end_index > n_data:
        raise ValueError(f"`end_index` must be higher than `start_index` and at most the length of the data. "
                         f"Received: start_index={start_index}, end_index={end_index}, for data of length {n_data}")
    if batch_size is not None and int(batch_size) <= 0:
        raise ValueError(f"`batch_size` must be positive or None. Received: batch_size={batch_size}")
    if targets is not None:
        targets = np.asarray(targets)

    num_seqs = end_index - start_index - (sequence_length - 1) * sampling_rate
    if targets is not None:
        num_seqs = min(num_seqs, len(targets))
    starts = np.arange(0, max(num_seqs, 0), sequence_stride, dtype=np.int64)
    if shuffle:
        if seed is None:
            seed = np.random.randint(1e6)
        np.random.RandomState(seed).shuffle(starts)
    offsets = np.arange(sequence_length, dtype=np.int64) * sampling_rate

    def make_x(idx):
        return data[start_index + starts[idx][:, None] + offsets]

    def make_y(idx):
        return targets[start_index + starts[idx]]
    return ArrayBatches(make_x, len(starts), batch_size, None if targets is None else make_y)
