"""DataLoader: batches of engine Tensors from a Dataset.

Two paths:
* fast path - the dataset has `get_batch(indices)` (TensorDataset, Subset of one,
  MNIST/FashionMNIST): the whole batch is gathered with one fancy-index per
  field and the loader `transform` is applied to the batched inputs at once;
* generic path - `dataset[i]` per sample, then `collate_fn` (default: stack
  arrays / numbers field by field).

Order: with a `sampler` the loader takes its indices as given (any iterable of
ints with __len__, e.g. cluster.DistributedSampler; its set_epoch is forwarded).
Otherwise `shuffle=True` draws a permutation from
`numpy.random.default_rng([seed, epoch])`: reproducible for a fixed seed, new in
every epoch.  The epoch advances by one each time iteration starts; call
`set_epoch(e)` to pin it (e.g. when resuming from a checkpoint).
"""
from __future__ import annotations

import numpy as np

__all__ = ["DataLoader", "default_collate"]


def _to_tensor(x, device):
    from ..tensor import Tensor
    if isinstance(x, Tensor):
        return x if device is None else x.to(device)
    return Tensor(x, device=device)


def _stack(items):
    first = items[0]
    data = getattr(first, "data", None)
    if data is not None and hasattr(data, "shape") and not isinstance(first, np.ndarray):
        items = [t.data for t in items]       # engine Tensors
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


def default_collate(samples):
    """Stack a list of samples field by field: tuples/lists/dicts recurse, leaves become arrays."""
    first = samples[0]
    if isinstance(first, dict):
        return {k: default_collate([s[k] for s in samples]) for k in first}
    if isinstance(first, (tuple, list)):
        n = len(first)
        if any(len(s) != n for s in samples):
            raise ValueError("default_collate: samples have different numbers of fields")
        return tuple(default_collate([s[i] for s in samples]) for i in range(n))
    return _stack(samples)


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
                "worker_init_fn", "timeout", "multiprocessing_context", "pin_memory_device")

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None,
                 sampler=None, collate_fn=None, transform=None, device=None, generator=None, **kw):
        unknown = sorted(k for k in kw if k not in self._IGNORED)
        if unknown:
            raise TypeError(f"DataLoader: unexpected arguments {unknown}")
        if batch_size is None or int(batch_size) < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        if sampler is not None and shuffle:
            raise ValueError("DataLoader: sampler and shuffle=True are exclusive; "
                             "let the sampler shuffle (e.g. DistributedSampler(shuffle=True))")
        if sampler is not None and not hasattr(sampler, "__len__"):
            raise TypeError("DataLoader: the sampler must define __len__ (number of indices per epoch)")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.sampler = sampler
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
        """Use `epoch` for the next iteration (and forward it to the sampler)."""
        self.epoch = int(epoch)
        if self.sampler is not None and hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def _num_samples(self):
        return len(self.sampler) if self.sampler is not None else len(self.dataset)

    def __len__(self):
        n = self._num_samples()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The sample order for an epoch (without iterating)."""
        epoch = self.epoch if epoch is None else epoch
        if self.sampler is not None:
            return np.fromiter(iter(self.sampler), dtype=np.int64, count=len(self.sampler))
        n = len(self.dataset)
        if self.shuffle:
            return np.random.default_rng([int(self.seed), int(epoch)]).permutation(n)
        return np.arange(n, dtype=np.int64)

    def __iter__(self):
        order = self.epoch_indices(self.epoch)
        self.epoch += 1
        nb = len(self)
        bs = self.batch_size
        fast = self.collate_fn is None and hasattr(self.dataset, "get_batch")
        for b in range(nb):
            idx = order[b * bs:(b + 1) * bs]
            if fast:
                batch = tuple(self.dataset.get_batch(idx))
            else:
                samples = [self.dataset[int(i)] for i in idx]
                batch = (self.collate_fn or default_collate)(samples)
                if self.collate_fn is not None:
                    yield batch
                    continue
            if self.transform is not None:
                if isinstance(batch, tuple):
                    batch = (_apply_transform(self.transform, batch[0]),) + tuple(batch[1:])
                else:
                    batch = _apply_transform(self.transform, batch)
            yield _tensorize(batch, self.device)

    def __repr__(self):
        return (f"DataLoader(n={self._num_samples()}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed})")
