"""DataLoader: batches of engine Tensors from a Dataset.

Two paths:
* fast path - the dataset has `get_batch(indices)` (TensorDataset, Subset of one,
  MNIST/FashionMNIST): the whole batch is gathered with one fancy-index per
  field and the loader `transform` is applied to the batched inputs at once;
* generic path - `dataset[i]` per sample, then `collate_fn` (default: stack
  arrays / numbers field by field).

Order: with a `sampler` the loader takes its indices as given (any iterable of
ints with __len__, e.g. cluster.DistributedSampler or engine.data.RandomSampler; its
set_epoch is forwarded).  With a `batch_sampler` (e.g. BatchSampler(sampler, 32,
drop_last=False)) each list it yields is one batch, and batch_size / shuffle /
sampler / drop_last must stay unset, as in torch.  Otherwise `shuffle=True` draws a permutation from
`numpy.random.default_rng([seed, epoch])`: reproducible for a fixed seed, new in
every epoch.  The epoch advances by one each time iteration starts; call
`set_epoch(e)` to pin it (e.g. when resuming from a checkpoint).

An IterableDataset is batched in its own iteration order (no sampler or shuffle).
batch_size=None turns batching off, as in torch: every sample is yielded on its own
(numpy arrays converted to Tensors as by default_convert, or passed to collate_fn).
collate_fn=default_collate is the same as leaving it unset (Tensors, fast path kept).
"""
from __future__ import annotations

import itertools

import numpy as np

__all__ = ["DataLoader", "default_collate", "default_convert", "get_worker_info"]


def _to_tensor(x, device):
    from ..tensor import Tensor
    if isinstance(x, Tensor):
        return x if device is None else x.to(device)
    return Tensor(x, device=device)


def _stack(items):
    first = items[0]
    data = getattr(first, "data", None)
    if data is not None and hasattr(data, "shape") and not isinstance(first, (np.ndarray, np.generic)):
        items = [getattr(t, "data", t) for t in items]      # engine Tensors (numpy scalars have .data too)
        first = items[0]
    if isinstance(first, (bool, np.bool_)):
        return np.asarray(items, dtype=np.bool_)
    if isinstance(first, (int, np.integer)):
        return np.asarray(items, dtype=np.int64)
    if isinstance(first, (float, np.floating)):
        arr = np.asarray(items)
        return arr.astype(np.float32) if arr.dtype == np.float64 and isinstance(first, float) else arr
    if hasattr(first, "shape"):
        from ..backend import get_array_module
        return get_array_module(first).stack(items)
    return np.asarray(items)


def _collate_arrays(samples):
    """Stack a list of samples field by field: tuples/lists/dicts recurse, leaves become arrays
    (the loader's own collate: transforms run on these arrays before they become Tensors)."""
    first = samples[0]
    if isinstance(first, dict):
        return {k: _collate_arrays([s[k] for s in samples]) for k in first}
    if isinstance(first, (tuple, list)):
        n = len(first)
        if any(len(s) != n for s in samples):
            raise ValueError("default_collate: samples have different numbers of fields")
        return tuple(_collate_arrays([s[i] for s in samples]) for i in range(n))
    return _stack(samples)


def default_collate(samples):
    """torch's default_collate: stack a list of samples field by field into Tensors (tuples/lists/
    dicts recurse), so a custom collate_fn that calls it gets Tensors back as in torch."""
    return _tensorize(_collate_arrays(samples), None)


def _convert(sample, device):
    """torch's default_convert: numpy arrays and scalars become Tensors, containers recurse,
    everything else (Python numbers, strings) is left as it is."""
    from ..tensor import Tensor
    if isinstance(sample, Tensor):
        return sample if device is None else sample.to(device)
    mod = type(sample).__module__.split(".", 1)[0]
    if mod in ("numpy", "cupy") and not isinstance(sample, (np.str_, np.bytes_)):
        if getattr(sample, "dtype", None) is not None and sample.dtype.kind in "OSU":
            return sample
        return _to_tensor(sample, device)
    if isinstance(sample, dict):
        return {k: _convert(v, device) for k, v in sample.items()}
    if isinstance(sample, (tuple, list)):
        return type(sample)(_convert(v, device) for v in sample) if not hasattr(sample, "_fields") \
            else type(sample)(*(_convert(v, device) for v in sample))
    return sample


def default_convert(sample):
    """torch's collate for batch_size=None (no batching): see _convert."""
    return _convert(sample, None)


def get_worker_info():
    """None: batches are always made in the calling process (torch returns None there too), so
    an IterableDataset that shards by worker id reads everything."""
    return None


def _tensorize(batch, device):
    if isinstance(batch, dict):
        return {k: _tensorize(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return tuple(_tensorize(v, device) for v in batch)
    if isinstance(batch, str):
        return batch
    return _to_tensor(batch, device)


def _apply_transform(transform, x):
    if getattr(transform, "batched", False):
        return transform(x)
    from ..backend import get_array_module
    return get_array_module(x).stack([transform(s) for s in x])


class DataLoader:
    """Iterate over a dataset in batches of engine Tensors.

    transform: applied to the first field (the inputs) of every batch, vectorized
    when the transform is `batched` (all of engine.data.transforms are).
    device: put the batch Tensors on this device ("cpu", "cuda:0"); default cpu.
    """

    # torch.utils.data.DataLoader arguments that only concern worker processes / pinned memory:
    # accepted so torch code runs unchanged; batches are gathered in this process either way.
    _IGNORED = ("num_workers", "pin_memory", "persistent_workers", "prefetch_factor",
                "worker_init_fn", "timeout", "multiprocessing_context", "pin_memory_device", "in_order")

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None,
                 sampler=None, collate_fn=None, transform=None, device=None, generator=None,
                 batch_sampler=None, **kw):
        unknown = sorted(k for k in kw if k not in self._IGNORED)
        if unknown:
            raise TypeError(f"DataLoader: unexpected arguments {unknown}")
        from .dataset import IterableDataset
        self._iterable = isinstance(dataset, IterableDataset)
        if self._iterable and (shuffle or sampler is not None or batch_sampler is not None):
            raise ValueError("DataLoader with an IterableDataset: shuffle, sampler and batch_sampler must "
                             "stay unset (the dataset decides the order)")
        if batch_sampler is not None:
            if batch_size != 1 or shuffle or sampler is not None or drop_last:
                raise ValueError("DataLoader: batch_sampler is mutually exclusive with batch_size, shuffle, "
                                 "sampler and drop_last (the batch sampler decides them)")
            if not hasattr(batch_sampler, "__len__"):
                raise TypeError("DataLoader: the batch_sampler must define __len__ (batches per epoch)")
            batch_size = None
        elif batch_size is None:
            if drop_last:
                raise ValueError("DataLoader: batch_size=None (no batching) and drop_last=True are exclusive")
            if transform is not None:
                raise ValueError("DataLoader: transform works on batches; it needs a batch_size")
        elif isinstance(batch_size, bool) or int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer or None, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler and shuffle=True are exclusive; "
                             "let the sampler shuffle (e.g. DistributedSampler(shuffle=True))")
        if sampler is not None and not hasattr(sampler, "__len__"):
            raise TypeError("DataLoader: the sampler must define __len__ (number of indices per epoch)")
        self.dataset = dataset
        self.batch_size = None if batch_size is None else int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.sampler = sampler
        self.batch_sampler = batch_sampler
        self.collate_fn = collate_fn
        self.transform = transform
        self.device = device
        if seed is None and shuffle:
            # drawn from `generator` or the engine's global generator: engine.manual_seed(s)
            # makes the order reproducible, as torch.manual_seed does for torch's DataLoader
            from ..random import resolve
            seed = int(resolve(None, generator).integers(2**63))
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use `epoch` for the next iteration (and forward it to the sampler / batch sampler)."""
        self.epoch = int(epoch)
        for s in (self.sampler, self.batch_sampler):
            if s is not None and hasattr(s, "set_epoch"):
                s.set_epoch(self.epoch)

    def _num_samples(self):
        if self.sampler is not None:
            return len(self.sampler)
        if self.batch_sampler is not None:
            return len(getattr(self.batch_sampler, "sampler", self.dataset))
        return len(self.dataset)

    def __len__(self):
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        if self._iterable and not hasattr(self.dataset, "__len__"):
            raise TypeError(f"DataLoader: {type(self.dataset).__name__} has no length")
        n = self._num_samples()
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The sample order for an epoch (without iterating; a random sampler draws a new one)."""
        epoch = self.epoch if epoch is None else epoch
        if self._iterable:
            raise TypeError("DataLoader.epoch_indices: an IterableDataset has no indices")
        if self.batch_sampler is not None:
            batches = [np.asarray(b, dtype=np.int64).reshape(-1) for b in self.batch_sampler]
            return np.concatenate(batches) if batches else np.zeros(0, dtype=np.int64)
        if self.sampler is not None:
            return np.fromiter(iter(self.sampler), dtype=np.int64, count=len(self.sampler))
        n = len(self.dataset)
        if self.shuffle:
            return np.random.default_rng([int(self.seed), int(epoch)]).permutation(n)
        return np.arange(n, dtype=np.int64)

    def _index_batches(self, epoch):
        """Epoch `epoch`'s batches of dataset indices."""
        if self.batch_sampler is not None:
            return (np.asarray(b, dtype=np.int64).reshape(-1) for b in self.batch_sampler)
        order = self.epoch_indices(epoch)
        bs = self.batch_size
        return (order[b * bs:(b + 1) * bs] for b in range(len(self)))

    def _sample_batches(self):
        """This epoch's batches as lists of samples (IterableDataset: in the dataset's order)."""
        it = iter(self.dataset)
        while True:
            samples = list(itertools.islice(it, self.batch_size))
            if not samples or (self.drop_last and len(samples) < self.batch_size):
                return
            yield samples

    def __iter__(self):
        if self.batch_size is None and self.batch_sampler is None:
            yield from self._unbatched()
            return
        batches = self._sample_batches() if self._iterable else self._index_batches(self.epoch)
        self.epoch += 1
        custom = self.collate_fn is not None and self.collate_fn is not default_collate
        fast = not self._iterable and not custom and hasattr(self.dataset, "get_batch")
        for item in batches:
            if fast:
                batch = tuple(self.dataset.get_batch(item))
            else:
                samples = item if self._iterable else [self.dataset[int(i)] for i in item]
                if custom:
                    yield self.collate_fn(samples)
                    continue
                batch = _collate_arrays(samples)
            if self.transform is not None:
                if isinstance(batch, tuple):
                    batch = (_apply_transform(self.transform, batch[0]),) + tuple(batch[1:])
                else:
                    batch = _apply_transform(self.transform, batch)
            yield _tensorize(batch, self.device)

    def _unbatched(self):
        """batch_size=None: one sample at a time, no batch dimension added (torch's behaviour)."""
        if self._iterable:
            samples = iter(self.dataset)
        else:
            order = self.epoch_indices(self.epoch)
            samples = (self.dataset[int(i)] for i in order)
        self.epoch += 1
        for sample in samples:
            yield self.collate_fn(sample) if self.collate_fn is not None else _convert(sample, self.device)

    def __repr__(self):
        n = self._num_samples() if hasattr(self.dataset, "__len__") else "?"
        return (f"DataLoader(n={n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed})")
