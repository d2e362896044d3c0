"""Samplers with torch.utils.data's names and arguments: the order in which a DataLoader visits
a dataset.

A sampler is an iterable of indices with __len__; BatchSampler turns one into lists of indices
(pass it as DataLoader(batch_sampler=...)).  The random samplers draw, at the start of every
iteration (= every epoch), from `generator=` (a numpy Generator) or else the engine's global
generator, looked up at that moment: after `engine.manual_seed(s)` the sequence of epochs is
reproducible and the same on every rank of a data-parallel job, as with torch.manual_seed.
The draws use numpy, so the orders are not torch's numbers, only torch's semantics.
"""
from __future__ import annotations

import operator

import numpy as np

__all__ = ["Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler",
           "WeightedRandomSampler", "BatchSampler"]


def _rng(generator):
    """The generator to draw from now (the global one is replaced by engine.manual_seed)."""
    from ..random import resolve
    return resolve(None, generator)


def _count(name, value) -> int:
    """A positive int (numpy integers too; bools and floats refused, as torch does)."""
    if isinstance(value, bool):
        raise ValueError(f"{name} should be a positive integer value, but got {name}={value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} should be a positive integer value, but got {name}={value!r}") from None
    if v <= 0:
        raise ValueError(f"{name} should be a positive integer value, but got {name}={value!r}")
    return v


def _flag(name, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} should be a boolean value, but got {name}={value!r}")
    return bool(value)


class Sampler:
    """Base class: subclasses define __iter__ (indices) and usually __len__."""

    def __init__(self, data_source=None):
        pass

    def __iter__(self):
        raise NotImplementedError


class SequentialSampler(Sampler):
    """0, 1, ..., len(data_source) - 1."""

    def __init__(self, data_source):
        self.data_source = data_source

    def __iter__(self):
        return iter(range(len(self.data_source)))

    def __len__(self):
        return len(self.data_source)


class RandomSampler(Sampler):
    """A new random order each epoch.

    replacement=False: permutations of the dataset (num_samples > len draws several whole
    permutations back to back, then part of one, as torch does); replacement=True: num_samples
    independent uniform draws.  num_samples defaults to len(data_source)."""

    def __init__(self, data_source, replacement: bool = False, num_samples=None, generator=None):
        self.data_source = data_source
        self.replacement = _flag("replacement", replacement)
        self._num_samples = None if num_samples is None else _count("num_samples", num_samples)
        self.generator = generator

    @property
    def num_samples(self) -> int:
        return len(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self):
        n, k, rng = len(self.data_source), self.num_samples, _rng(self.generator)
        if self.replacement:
            return iter(rng.integers(0, n, size=k).tolist())
        parts = [rng.permutation(n) for _ in range(k // n)]
        if k % n:
            parts.append(rng.permutation(n)[:k % n])
        return iter(np.concatenate(parts).tolist() if parts else [])

    def __len__(self):
        return self.num_samples


class SubsetRandomSampler(Sampler):
    """The given indices, in a new random order each epoch (no replacement)."""

    def __init__(self, indices, generator=None):
        self.indices = indices
        self.generator = generator

    def __iter__(self):
        perm = _rng(self.generator).permutation(len(self.indices))
        return (self.indices[int(i)] for i in perm)

    def __len__(self):
        return len(self.indices)


class WeightedRandomSampler(Sampler):
    """num_samples indices in [0, len(weights)), index i with probability weights[i] / sum(weights)
    (weights need not sum to 1).  replacement=False draws distinct indices, so num_samples must
    not exceed the number of non-zero weights."""

    def __init__(self, weights, num_samples, replacement: bool = True, generator=None):
        self.num_samples = _count("num_samples", num_samples)
        self.replacement = _flag("replacement", replacement)
        w = weights.data if hasattr(weights, "grad") else weights     # engine Tensor -> its array
        w = np.asarray(w.get() if hasattr(w, "get") else w, dtype=np.float64)   # cupy -> host
        if w.ndim != 1:
            raise ValueError(f"weights should be a 1-D sequence, but got shape {w.shape}")
        if w.size == 0 or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError("weights must be finite and non-negative, with a positive sum")
        if not self.replacement and self.num_samples > np.count_nonzero(w):
            raise ValueError(f"cannot draw {self.num_samples} distinct indices without replacement: only "
                             f"{np.count_nonzero(w)} weights are non-zero")
        self.weights = w
        self.generator = generator

    def __iter__(self):
        p = self.weights / self.weights.sum()
        idx = _rng(self.generator).choice(len(p), size=self.num_samples, replace=self.replacement, p=p)
        return iter(idx.tolist())

    def __len__(self):
        return self.num_samples


class BatchSampler(Sampler):
    """Group the indices of `sampler` (any iterable) into lists of batch_size; the last, shorter
    list is dropped when drop_last."""

    def __init__(self, sampler, batch_size, drop_last: bool):
        self.sampler = sampler
        self.batch_size = _count("batch_size", batch_size)
        self.drop_last = _flag("drop_last", drop_last)

    def __iter__(self):
        batch = []
        for i in self.sampler:
            batch.append(int(i))
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch and not self.drop_last:
            yield batch

    def __len__(self):
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Forwarded to the wrapped sampler (e.g. a DistributedSampler) when it has one."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
