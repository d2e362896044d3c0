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

num_workers > 0 moves the batch building (_Fetcher: dataset, collate_fn, transform) into worker
processes and leaves the order (sampler, shuffle) and the conversion to Tensors here, so the
batches equal num_workers=0's; see DataLoader's docstring, _pool.py and _worker.py.
"""
from __future__ import annotations

import itertools
import weakref

import numpy as np

from ._worker import get_worker_info

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


class _Fetcher:
    """Builds what one step of an epoch yields, up to (not including) the conversion to Tensors.

    The same code runs in the loop itself (num_workers=0) and in each worker process
    (num_workers>0, where it is pickled to start a spawned worker), so both give the same arrays:
    dataset access, collate_fn and transform happen here; finish() - Tensors and the device -
    happens in the loader's process."""

    def __init__(self, dataset, iterable, batched, batch_size, drop_last, collate_fn, transform):
        self.dataset, self.iterable, self.batched = dataset, iterable, batched
        self.batch_size, self.drop_last = batch_size, drop_last
        self.collate_fn, self.transform = collate_fn, transform
        self.custom = collate_fn is not None and collate_fn is not default_collate
        self.fast = not iterable and not self.custom and hasattr(dataset, "get_batch")
        self._it = None

    def batch(self, item):
        """One batch from indices (map-style) or from a list of samples (IterableDataset)."""
        if self.fast:
            batch = tuple(self.dataset.get_batch(item))
        else:
            samples = item if self.iterable else [self.dataset[int(i)] for i in item]
            if self.custom:
                return self.collate_fn(samples)
            batch = _collate_arrays(samples)
        if self.transform is not None:
            if isinstance(batch, tuple):
                batch = (_apply_transform(self.transform, batch[0]),) + tuple(batch[1:])
            else:
                batch = _apply_transform(self.transform, batch)
        return batch

    def sample(self, sample):
        """batch_size=None: one sample, through collate_fn when there is one."""
        return self.collate_fn(sample) if self.collate_fn is not None else sample

    def finish(self, value, device):
        """What the loader yields for a batch() / sample() value."""
        if self.batched:
            return value if self.custom else _tensorize(value, device)
        return value if self.collate_fn is not None else _convert(value, device)

    # worker side: a task is an index array, one index, or None ("your next batch" of an iterable)
    def start_epoch(self):
        self._it = None

    def fetch(self, payload):
        """A worker's task; raises StopIteration when its IterableDataset replica is exhausted."""
        if not self.iterable:
            return self.batch(payload) if self.batched else self.sample(self.dataset[int(payload)])
        if self._it is None:
            self._it = iter(self.dataset)
        if not self.batched:
            return self.sample(next(self._it))
        samples = list(itertools.islice(self._it, self.batch_size))
        if not samples or (self.drop_last and len(samples) < self.batch_size):
            raise StopIteration
        return self.batch(samples)


class DataLoader:
    """Iterate over a dataset in batches of engine Tensors.

    transform: applied to the first field (the inputs) of every batch, vectorized
    when the transform is `batched` (all of engine.data.transforms are).
    device: put the batch Tensors on this device ("cpu", "cuda:0"); default cpu.

    Worker processes (torch's arguments and semantics, see engine/data/_pool.py):
    num_workers=0 builds every batch in the loop itself.  num_workers=N>0 starts N processes
    (multiprocessing_context: 'fork' by default on Linux, 'spawn', 'forkserver' or a context
    object) that build whole batches - dataset access, collate_fn, transform - while the model
    trains; indices are still drawn here, so the batches are exactly those of num_workers=0, and
    they come back in order (in_order=False: as they are ready).  prefetch_factor (default 2)
    batches per worker are in flight.  Every epoch draws a base seed from `generator` (else the
    engine's global generator); worker i seeds Python's random, NumPy's global RNG and
    engine.random with base_seed + i, then calls worker_init_fn(i); get_worker_info() tells it
    its id, num_workers, seed and dataset.  persistent_workers=True keeps the workers across
    epochs; otherwise they are shut down when the epoch ends, the loop breaks or the iterator is
    deleted.  timeout > 0 bounds each wait for a worker's batch.  pin_memory and
    pin_memory_device are accepted and do nothing: batches are built in host memory and moved to
    `device` in this process.
    """

    def __init__(self, dataset, batch_size=1, shuffle=False, drop_last=False, seed=None,
                 sampler=None, collate_fn=None, transform=None, device=None, generator=None,
                 batch_sampler=None, *, num_workers=0, prefetch_factor=None, persistent_workers=False,
                 worker_init_fn=None, timeout=0, multiprocessing_context=None, in_order=True,
                 pin_memory=False, pin_memory_device="", **kw):
        if kw:
            raise TypeError(f"DataLoader: unexpected arguments {sorted(kw)}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, (int, np.integer)) or num_workers < 0:
            raise ValueError("num_workers option should be non-negative; use num_workers=0 to disable "
                             f"multiprocessing, got num_workers={num_workers!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.integer, np.floating)) or timeout < 0:
            raise ValueError(f"timeout option should be a non-negative number of seconds (0: wait as long as the "
                             f"workers live), got timeout={timeout!r}")
        if num_workers == 0:
            if prefetch_factor is not None:
                raise ValueError("prefetch_factor option could only be specified in multiprocessing: let "
                                 "num_workers > 0 to enable multiprocessing, otherwise set prefetch_factor to None.")
            if persistent_workers:
                raise ValueError("persistent_workers option needs num_workers > 0")
            if multiprocessing_context is not None:
                raise ValueError("multiprocessing_context can only be used with multi-process loading "
                                 "(num_workers > 0), but got num_workers=0")
        else:
            prefetch_factor = 2 if prefetch_factor is None else prefetch_factor
            if isinstance(prefetch_factor, bool) or int(prefetch_factor) != prefetch_factor or prefetch_factor < 1:
                raise ValueError(f"prefetch_factor option should be a positive integer, got {prefetch_factor!r}")
            from ._pool import resolve_context
            multiprocessing_context = resolve_context(multiprocessing_context)
        self.num_workers = int(num_workers)
        self.prefetch_factor = None if prefetch_factor is None else int(prefetch_factor)
        self.persistent_workers = bool(persistent_workers)
        self.worker_init_fn = worker_init_fn
        self.timeout = float(timeout)
        self.multiprocessing_context = multiprocessing_context
        self.in_order = bool(in_order)
        self.pin_memory, self.pin_memory_device = bool(pin_memory), pin_memory_device   # no-ops (see above)
        self.generator = generator
        self._pool = None
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

    def _batched(self):
        return not (self.batch_size is None and self.batch_sampler is None)

    def _fetcher(self):
        return _Fetcher(self.dataset, self._iterable, self._batched(), self.batch_size, self.drop_last,
                        self.collate_fn, self.transform)

    def __iter__(self):
        if self.num_workers > 0:
            yield from self._worker_batches()
            return
        fetcher = self._fetcher()
        if not self._batched():
            yield from self._unbatched(fetcher)
            return
        batches = self._sample_batches() if self._iterable else self._index_batches(self.epoch)
        self.epoch += 1
        for item in batches:
            yield fetcher.finish(fetcher.batch(item), self.device)

    def _unbatched(self, fetcher):
        """batch_size=None: one sample at a time, no batch dimension added (torch's behaviour)."""
        if self._iterable:
            samples = iter(self.dataset)
        else:
            order = self.epoch_indices(self.epoch)
            samples = (self.dataset[int(i)] for i in order)
        self.epoch += 1
        for sample in samples:
            yield fetcher.finish(fetcher.sample(sample), self.device)

    def _worker_batches(self):
        """num_workers > 0: the same epoch, built by worker processes (engine/data/_pool.py)."""
        from ..random import resolve
        from ._pool import WorkerPool
        base_seed = int(resolve(None, self.generator).integers(2**63))     # every epoch, as torch
        if self._iterable:
            tasks = itertools.repeat(None)          # "your next batch": each worker reads its replica
        elif self._batched():
            tasks = self._index_batches(self.epoch)
        else:
            tasks = (int(i) for i in self.epoch_indices(self.epoch))
        self.epoch += 1
        pool = self._pool
        if pool is None or pool.closed:
            pool = WorkerPool(self._fetcher(), self.num_workers, self.multiprocessing_context, base_seed,
                              self.worker_init_fn, self.prefetch_factor, self.timeout)
            if self.persistent_workers:
                self._pool = pool
                weakref.finalize(self, pool.shutdown)
        try:
            for value in pool.run_epoch(tasks, self.in_order):
                yield pool.fetcher.finish(value, self.device)
        finally:
            if not self.persistent_workers:
                pool.shutdown()

    def __repr__(self):
        n = self._num_samples() if hasattr(self.dataset, "__len__") else "?"
        return (f"DataLoader(n={n}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
                f"drop_last={self.drop_last}, seed={self.seed})")
