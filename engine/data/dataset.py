"""Dataset protocol and the array-backed datasets.

A Dataset is anything with `__len__` and `__getitem__(i)`.  Array-backed
datasets also implement `get_batch(indices)`, which returns the collated batch
(a tuple of arrays, one per field) for a whole index array in one fancy-indexing
operation; the DataLoader uses it instead of a per-sample Python loop, which is
what makes loading cost a few microseconds per batch instead of per sample.
"""
from __future__ import annotations

import numpy as np

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "Subset", "ConcatDataset", "ChainDataset",
           "random_split"]


class Dataset:
    """Base class: subclasses define __len__ and __getitem__ (and get_batch if they can)."""

    def __len__(self):
        raise NotImplementedError

    def __getitem__(self, index):
        raise NotImplementedError

    def __add__(self, other):
        """`a + b` concatenates, as in torch."""
        return ConcatDataset([self, other])


class IterableDataset(Dataset):
    """A stream of samples: subclasses define __iter__ (and __len__ if they know it).

    The DataLoader batches it in iteration order (no sampler, no shuffle).  With num_workers=N
    every worker process iterates its own replica, so without sharding each sample comes N times;
    shard with engine.data.get_worker_info() (id, num_workers) as in torch.  With num_workers=0
    get_worker_info() is None."""

    def __iter__(self):
        raise NotImplementedError

    def __getitem__(self, index):
        raise TypeError(f"{type(self).__name__} is an IterableDataset: iterate over it instead of indexing")

    def __add__(self, other):
        return ChainDataset([self, other])


def _raw(x):
    """Array behind an engine Tensor (or any array-like), without importing engine.tensor."""
    data = getattr(x, "data", None)
    if data is not None and hasattr(data, "shape") and hasattr(data, "dtype") and not isinstance(x, np.ndarray):
        return data
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return x
    return np.asarray(x)


class TensorDataset(Dataset):
    """Samples are rows of the given arrays / Tensors (all with the same first dimension)."""

    def __init__(self, *arrays):
        if not arrays:
            raise ValueError("TensorDataset needs at least one array")
        self.arrays = tuple(_raw(a) for a in arrays)
        n = self.arrays[0].shape[0] if self.arrays[0].ndim else None
        for i, a in enumerate(self.arrays):
            if a.ndim == 0 or a.shape[0] != n:
                raise ValueError(
                    "TensorDataset: all arrays need the same length along axis 0, got shapes "
                    + ", ".join(str(tuple(b.shape)) for b in self.arrays))
        self._n = int(n)

    def __len__(self):
        return self._n

    def __getitem__(self, index):
        return tuple(a[index] for a in self.arrays)

    def get_batch(self, indices):
        indices = _index_array(indices, self.arrays[0])
        return tuple(a[indices] for a in self.arrays)


def _index_array(indices, like):
    """Indices as an int64 array on the same device as `like` (cupy arrays need cupy indices)."""
    idx = np.asarray(indices, dtype=np.int64) if not hasattr(indices, "__cuda_array_interface__") else indices
    if type(like).__module__.startswith("cupy") and isinstance(idx, np.ndarray):
        import cupy
        idx = cupy.asarray(idx)
    return idx


class Subset(Dataset):
    """The samples of `dataset` at `indices` (keeps the vectorized get_batch path)."""

    def __init__(self, dataset, indices):
        self.dataset = dataset
        self.indices = np.asarray(indices, dtype=np.int64)
        n = len(dataset)
        if self.indices.size and (self.indices.min() < -n or self.indices.max() >= n):
            raise IndexError(f"Subset: indices out of range for a dataset of length {n}")

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, index):
        return self.dataset[int(self.indices[index])]

    def __getattr__(self, name):
        # get_batch only if the wrapped dataset has it, so the loader picks the right path
        if name == "get_batch" and hasattr(self.dataset, "get_batch"):
            return lambda idx: self.dataset.get_batch(self.indices[np.asarray(idx, dtype=np.int64)])
        raise AttributeError(name)


class ConcatDataset(Dataset):
    """The samples of several datasets one after the other (index i of the whole maps to one part).

    Keeps the vectorized get_batch path when every part has it: a batch is gathered with one
    fancy index per part and reassembled in the requested order."""

    def __init__(self, datasets):
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("ConcatDataset: datasets should not be an empty iterable")
        for d in self.datasets:
            if isinstance(d, IterableDataset):
                raise TypeError("ConcatDataset does not support IterableDataset (use ChainDataset)")
        self.cumulative_sizes = np.cumsum([len(d) for d in self.datasets]).tolist()

    def __len__(self):
        return self.cumulative_sizes[-1]

    def _locate(self, index):
        """(part numbers, indices within the parts) for an int array of global indices."""
        n = len(self)
        idx = np.asarray(index, dtype=np.int64)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"ConcatDataset: index out of range for a dataset of length {n}")
        idx = np.where(idx < 0, idx + n, idx)
        part = np.searchsorted(self.cumulative_sizes, idx, side="right")
        starts = np.concatenate([[0], self.cumulative_sizes[:-1]]).astype(np.int64)
        return part, idx - starts[part]

    def __getitem__(self, index):
        part, local = self._locate(int(index))
        return self.datasets[int(part)][int(local)]

    def __getattr__(self, name):
        # get_batch only if every part has it, so the loader picks the right path
        if name == "get_batch" and all(hasattr(d, "get_batch") for d in self.__dict__.get("datasets", ())):
            return self._get_batch
        raise AttributeError(name)

    def _get_batch(self, indices):
        part, local = self._locate(np.asarray(indices, dtype=np.int64).reshape(-1))
        out, order = None, []
        for k in np.unique(part):
            sel = np.nonzero(part == k)[0]
            fields = tuple(self.datasets[int(k)].get_batch(local[sel]))
            out = [[] for _ in fields] if out is None else out
            if len(fields) != len(out):
                raise ValueError("ConcatDataset: the datasets have different numbers of fields")
            for acc, f in zip(out, fields):
                acc.append(f)
            order.append(sel)
        if out is None:
            return self.datasets[0].get_batch(local)
        if len(order) == 1:                       # all from one part: already in order
            return tuple(acc[0] for acc in out)
        from ..backend import get_array_module
        inverse = np.argsort(np.concatenate(order), kind="stable")
        result = []
        for acc in out:
            xp = get_array_module(acc[0])
            cat = xp.concatenate(acc) if len(acc) > 1 else acc[0]
            result.append(cat[_index_array(inverse, cat)])
        return tuple(result)


class ChainDataset(IterableDataset):
    """Several IterableDatasets one after the other (torch's ChainDataset)."""

    def __init__(self, datasets):
        self.datasets = list(datasets)

    def __iter__(self):
        for d in self.datasets:
            if not isinstance(d, IterableDataset):
                raise TypeError("ChainDataset only supports IterableDataset")
            yield from d

    def __len__(self):
        return sum(len(d) for d in self.datasets)


def random_split(dataset, lengths, seed=None, generator=None):
    """Split into non-overlapping Subsets of the given lengths (or fractions summing to 1).

    The permutation comes from `seed=`, else `generator=` (a numpy Generator), else the engine's
    global generator, so `engine.manual_seed(s)` makes the split reproducible and the same on
    every rank of a data-parallel job (as torch.manual_seed does for torch's random_split)."""
    n = len(dataset)
    lengths = list(lengths)
    if all(isinstance(x, float) for x in lengths) and abs(sum(lengths) - 1.0) < 1e-6:
        counts = [int(np.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):
            counts[i % len(counts)] += 1
        lengths = counts
    if sum(lengths) != n:
        raise ValueError(f"random_split: lengths sum to {sum(lengths)}, dataset has {n} samples")
    from ..random import resolve
    perm = resolve(seed, generator).permutation(n)
    out, start = [], 0
    for k in lengths:
        out.append(Subset(dataset, perm[start:start + k]))
        start += k
    return out
