"""comm/shared.py in one process: ranks simulated by threads, so the allocation protocol, its
all-or-nothing fallback and the two in-place collectives are checked without launching anything.
(The multi-process checks of the same paths are in test_comm_collectives.py and test_comm_failures.py.)"""
import errno
import os
import threading
import warnings

import numpy as np
import pytest

from comm import shared
from comm.shared import SharedBuffers, gather_shards, reduce_own_shard


def _allocate_on_threads(n, numel, dtype=np.float32, fail_rank=None, monkeypatch=None):
    """Run SharedBuffers.allocate on n threads that exchange records like ranks would."""
    barrier = threading.Barrier(n, timeout=10)
    slots = {}

    def exchange_for(rank):
        def exchange(record, phase):
            slots[(phase, rank)] = record
            barrier.wait()
            out = [slots[(phase, r)] for r in range(n)]
            barrier.wait()
            return out
        return exchange

    if fail_rank is not None:
        real = os.posix_fallocate
        me = {}

        def fallocate(fd, off, length):
            if me.get(threading.get_ident()) == fail_rank:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(fd, off, length)
        monkeypatch.setattr(os, "posix_fallocate", fallocate)
        monkeypatch.setattr(shared, "_warned", False)
    registries = [SharedBuffers(r) for r in range(n)]
    arrays, errors = [None] * n, []

    def run(rank):
        if fail_rank is not None:
            me[threading.get_ident()] = rank
        try:
            arrays[rank] = registries[rank].allocate(numel, dtype, exchange_for(rank))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=run, args=(r,)) for r in range(n)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert not errors, errors
    return registries, arrays, caught


def _leftovers():
    return {f for f in os.listdir(shared.SHM_DIR) if f.startswith(shared.PREFIX)} if os.path.isdir(shared.SHM_DIR) \
        else set()


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_every_rank_maps_every_buffer_and_no_name_is_left_behind():
    before = _leftovers()
    regs, arrs, _ = _allocate_on_threads(3, 1000, np.float64)
    assert _leftovers() <= before
    for r in range(3):
        assert arrs[r].shape == (1000,) and arrs[r].dtype == np.float64 and not arrs[r].any()
        views = regs[r].lookup(arrs[r])
        assert views is not None and views[r] is arrs[r]
        assert regs[r].lookup(arrs[r][:10]) is None          # a slice is not the buffer
    arrs[1][5] = 42.0                                         # a write on "rank 1" ...
    assert regs[0].lookup(arrs[0])[1][5] == 42.0              # ... is seen through rank 0's mapping
    assert regs[2].lookup(arrs[2])[1][5] == 42.0
    del views
    key = shared.buffer_key(arrs[0])
    arrs[0] = None                                            # the entry goes with the array
    assert key not in regs[0]._peers


@pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="needs /dev/shm")
def test_one_rank_out_of_shared_memory_means_private_buffers_everywhere(monkeypatch):
    regs, arrs, caught = _allocate_on_threads(2, 4096, np.float32, fail_rank=1, monkeypatch=monkeypatch)
    for r in range(2):
        assert arrs[r].shape == (4096,) and not arrs[r].any()
        assert regs[r].lookup(arrs[r]) is None
    msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert len(msgs) == 1 and "No space left on device" in msgs[0] and "--shm-size" in msgs[0], msgs
    assert not {f for f in _leftovers() if str(os.getpid()) in f}


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("DPTRAIN_COMM_SHM", "0")
    regs, arrs, _ = _allocate_on_threads(2, 64)
    assert all(regs[r].lookup(arrs[r]) is None for r in range(2))


@pytest.mark.parametrize("n,numel", [(2, 10), (3, 1000), (4, 3), (3, 0)])
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
def test_reduce_own_shard_then_gather_is_an_allreduce(n, numel, op):
    rng = np.random.default_rng(n * 100 + numel)
    inputs = [rng.standard_normal(numel).astype(np.float32) for _ in range(n)]
    views = [x.copy() for x in inputs]
    bounds = [numel * i // n for i in range(n + 1)]
    fn = np.maximum if op == "max" else np.add
    for r in range(n):
        reduce_own_shard(views, r, bounds, fn, n if op == "mean" else 0)
    for r in range(n):
        gather_shards(views, r, bounds)
    stack = np.stack(inputs).astype(np.float64)
    want = stack.max(0) if op == "max" else stack.sum(0) / (n if op == "mean" else 1)
    for r in range(n):
        assert np.allclose(views[r], want, rtol=1e-5, atol=1e-5)
        assert views[r].tobytes() == views[0].tobytes()       # bit-identical on every rank
    if n == 2 and op != "max":                                # two operands: the ring's exact result
        ring = (inputs[0] + inputs[1]) / np.float32(n if op == "mean" else 1)
        assert views[0].tobytes() == ring.tobytes()
