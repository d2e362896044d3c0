"""Host side of multi-tensor apply: the pointer/chunk table that lets one kernel launch walk many tensors.

Layout (int64), matching DptMtTable in multi_tensor.cuh:
    [list 0 addresses | list 1 addresses | ... | sizes | chunk -> tensor | chunk -> first element]
Why a table in device memory instead of kernel arguments: the parameter list of a model has no fixed size,
and kernel-argument space is 4 KiB.  Tables are cached by (addresses, sizes): the optimizer state never
moves and cupy's memory pool usually hands gradients the same addresses every step, so the steady state
uploads nothing.  A stale entry is harmless: a key *is* the current set of addresses.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import _runtime as rt

#: elements per chunk (one block's unit of work): 64 per thread at 256 threads
CHUNK = 16384
_CACHE_SIZE = 32
_cache: OrderedDict = OrderedDict()


def check_lists(lists, names, dtype=None, writable=()):
    """Validate that every list has one array per tensor with equal sizes, one float dtype, C-contiguous.

    Returns (sizes, dtype).  `writable` names the lists written in place: those must be contiguous already
    (a copy would silently drop the update); read-only lists are made contiguous by the caller if needed.
    """
    n = len(lists[0])
    for lst, name in zip(lists, names):
        if len(lst) != n:
            raise ValueError(f"{names[0]} has {n} tensors but {name} has {len(lst)}")
    sizes = [int(a.size) for a in lists[0]]
    dtype = np.dtype(dtype or (lists[0][0].dtype if n else np.float32))
    rt.float_suffix(dtype)
    for lst, name in zip(lists, names):
        for k, a in enumerate(lst):
            if int(a.size) != sizes[k]:
                raise ValueError(f"{name}[{k}] has {a.size} elements but {names[0]}[{k}] has {sizes[k]}")
            if a.dtype != dtype:
                raise TypeError(f"{name}[{k}] is {a.dtype} but the update runs in {dtype}; "
                                "keep parameters, gradients and optimizer state in one dtype")
            if name in writable and not a.flags.c_contiguous:
                raise ValueError(f"{name}[{k}] is not C-contiguous; it is updated in place and must be")
    return sizes, dtype


def table(xp, addresses, sizes, device_key=None):
    """Device (or, for numpy, host) int64 table for `addresses` (n_lists x n_tensors ints) -> (table, n_chunks)."""
    key = (device_key, tuple(tuple(a) for a in addresses), tuple(sizes))
    hit = _cache.get(key)
    if hit is not None:
        _cache.move_to_end(key)
        return hit
    sizes_np = np.asarray(sizes, dtype=np.int64)
    counts = (sizes_np + CHUNK - 1) // CHUNK                    # empty tensors get no chunk
    n_chunks = int(counts.sum())
    chunk_tensor = np.repeat(np.arange(len(sizes), dtype=np.int64), counts)
    first_chunk = np.repeat(np.cumsum(counts) - counts, counts)
    chunk_begin = (np.arange(n_chunks, dtype=np.int64) - first_chunk) * CHUNK
    host = np.concatenate([np.asarray(addresses, dtype=np.uint64).view(np.int64).ravel(), sizes_np,
                           chunk_tensor, chunk_begin]).astype(np.int64, copy=False)
    entry = (xp.asarray(host), n_chunks)
    _cache[key] = entry
    if len(_cache) > _CACHE_SIZE:
        _cache.popitem(last=False)
    return entry


def device_key(xp, arr):
    """Separate cache entries per GPU (a table lives in one device's memory)."""
    if xp is np:
        return "host"
    return int(arr.device.id)


def launch(launcher, xp, cu_file, base, dtype, lists, sizes, extra_args, device_arr):
    """One multi-tensor launch: a block per chunk (grid-stride over chunks beyond the grid cap)."""
    addresses = [[rt.data_ptr(a) for a in lst] for lst in lists]
    tab, n_chunks = table(xp, addresses, sizes, device_key(xp, device_arr))
    if n_chunks == 0:
        return
    launcher.raw(cu_file, base, dtype, n_chunks * rt.BLOCK,
                 (tab, rt.i64(len(sizes)), rt.i64(n_chunks), rt.i64(CHUNK)) + tuple(extra_args))
