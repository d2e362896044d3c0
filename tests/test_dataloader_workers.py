"""DataLoader(num_workers > 0): torch's worker-process semantics (engine/data/_pool.py, _worker.py).

Datasets and collate functions live at module level so the spawn context can pickle them.  Every
test bounds itself with a timeout and checks, where it matters, that no worker process is left.
"""
import collections
import gc
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import multiprocessing as mp
import numpy as np
import pytest

import engine
from engine.data import (BatchSampler, DataLoader, Dataset, IterableDataset, RandomSampler, TensorDataset,
                         default_collate, get_worker_info, transforms as T)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
Pair = collections.namedtuple("Pair", "x y")


# ---------------------------------------------------------------- datasets (module level: spawn pickles them)
class Rows(Dataset):
    """Per-sample dataset (no get_batch): (C,H,W) float image and an int label."""

    def __init__(self, n=23):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.arange(12, dtype=np.float32).reshape(3, 2, 2) * (i + 1), i


class Dicts(Rows):
    def __getitem__(self, i):
        return {"x": np.full(2, i, np.float64), "y": i, "name": f"s{i}", "w": np.float32(i) / 3}


class Mixed(Rows):
    """batch_size=None samples: numpy scalars, named tuples, strings, None, nested containers."""

    def __getitem__(self, i):
        return {"p": Pair(np.int16(i), [i, float(i)]), "t": (np.arange(i % 3), None, b"b", "s"), 3: True}


class Slow(Rows):
    def __init__(self, n=48, delay=0.03, slow_index=None):
        super().__init__(n)
        self.delay, self.slow_index = delay, slow_index

    def __getitem__(self, i):
        time.sleep(self.delay if self.slow_index is None or i == self.slow_index else 0)
        return np.full(2, i, np.float32), os.getpid()


class Failing(Rows):
    def __getitem__(self, i):
        if i == 13:
            raise ValueError(f"bad sample {i}")
        return np.zeros(2, np.float32), i


class Unsendable(Rows):
    def __getitem__(self, i):
        return object()


class Masked(Rows):
    def __getitem__(self, i):
        return np.ma.masked_array([1.0, 2.0], mask=[False, True])


class Info(Rows):
    def __getitem__(self, i):
        info = get_worker_info()
        return {"i": i, "id": info.id, "n": info.num_workers, "seed": info.seed, "pid": os.getpid(),
                "ds": type(info.dataset).__name__, "np": int(np.random.randint(2**31)),
                "py": random.random(), "engine": int(engine.random.default_generator().integers(2**31)),
                "threads": os.environ.get("NUMEXPR_NUM_THREADS")}


class Shards(IterableDataset):
    """torch's documented pattern: split [start, end) between the workers."""

    def __init__(self, start, end):
        self.start, self.end = start, end

    def __iter__(self):
        info = get_worker_info()
        lo, hi = self.start, self.end
        if info is not None:
            per = -(-(hi - lo) // info.num_workers)
            lo = self.start + info.id * per
            hi = min(lo + per, self.end)
        for i in range(lo, hi):
            yield np.full(2, i, np.float32), i


def pair_collate(samples):
    """A custom collate_fn: lists and default_collate's Tensors."""
    xs, ys = default_collate(samples)
    return {"x": xs, "ys": [int(s[1]) for s in samples]}


def swap(sample):
    """collate_fn with batch_size=None: called on each sample, its output yielded as it is."""
    return sample[1], sample[0]


def _canon(obj):
    """A comparable form that keeps types, dtypes and bytes (Tensors, arrays, containers)."""
    if isinstance(obj, engine.Tensor):
        return ("Tensor", obj.data.dtype.str, obj.shape, obj.data.tobytes(), obj.requires_grad)
    if isinstance(obj, np.ndarray):
        return ("ndarray", obj.dtype.str, obj.shape, obj.tobytes(), obj.flags.writeable)
    if isinstance(obj, np.generic):
        return ("scalar", obj.dtype.str, obj.tobytes())
    if isinstance(obj, dict):
        return ("dict", [(k, _canon(v)) for k, v in obj.items()])
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, [_canon(v) for v in obj])
    return (type(obj).__name__, obj)


def _epoch(loader):
    return [_canon(b) for b in loader]


def _worker_children():
    return [p for p in mp.active_children() if p.name.startswith("DataLoaderWorker")]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _zombie_children():
    me, out = os.getpid(), []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] == "Z":
                out.append(int(name))
    return out


def assert_no_workers(pids=()):
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (_worker_children() or any(_alive(p) for p in pids)):
        time.sleep(0.05)
    assert not _worker_children(), "DataLoader worker processes left running"
    assert not [p for p in pids if _alive(p)], "worker pids still alive"
    assert not _zombie_children(), "unreaped (zombie) children"


# ---------------------------------------------------------------- same batches as num_workers=0
CASES = {
    "shuffle": lambda: dict(dataset=Rows(), batch_size=4, shuffle=True, seed=3),
    "sampler": lambda: dict(dataset=Rows(), batch_size=5, sampler=RandomSampler(Rows(), generator=np.random.default_rng(7))),
    "batch_sampler": lambda: dict(dataset=Rows(), batch_sampler=BatchSampler(range(23), 6, drop_last=False)),
    "drop_last": lambda: dict(dataset=Rows(), batch_size=4, shuffle=True, seed=1, drop_last=True),
    "collate_fn": lambda: dict(dataset=Rows(), batch_size=4, collate_fn=pair_collate),
    "transform": lambda: dict(dataset=Rows(), batch_size=4, transform=T.Normalize([1.0, 2.0, 3.0], [2.0, 2.0, 2.0])),
    "dicts": lambda: dict(dataset=Dicts(), batch_size=3, shuffle=True, seed=0),
    "unbatched": lambda: dict(dataset=Mixed(9), batch_size=None),
    "unbatched_collate": lambda: dict(dataset=Rows(7), batch_size=None, collate_fn=swap),
    "fast_path": lambda: dict(dataset=TensorDataset(np.arange(40, dtype=np.float32).reshape(20, 2),
                                                    np.arange(20)), batch_size=6, shuffle=True, seed=2),
    "iterable": lambda: dict(dataset=Shards(0, 0), batch_size=2),          # empty stream
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_batches_equal_num_workers_0(case, context):
    serial = _epoch(DataLoader(**CASES[case]()))
    loader = DataLoader(**CASES[case](), num_workers=2, multiprocessing_context=context)
    assert _epoch(loader) == serial
    assert_no_workers()


@pytest.mark.timeout(60)
def test_in_order_false_and_prefetch_factor_give_the_same_batches():
    serial = _epoch(DataLoader(Rows(), batch_size=2, shuffle=True, seed=5))
    assert _epoch(DataLoader(Rows(), batch_size=2, shuffle=True, seed=5, num_workers=3, prefetch_factor=1)) == serial
    unordered = _epoch(DataLoader(Rows(), batch_size=2, shuffle=True, seed=5, num_workers=2, in_order=False))
    assert sorted(map(repr, unordered)) == sorted(map(repr, serial))


@pytest.mark.timeout(60)
def test_several_epochs_follow_the_shuffle_and_persistent_workers_keep_their_pids():
    serial = DataLoader(Slow(12, delay=0), batch_size=3, shuffle=True, seed=4)
    loader = DataLoader(Slow(12, delay=0), batch_size=3, shuffle=True, seed=4, num_workers=2,
                        persistent_workers=True)
    pids = []
    for _ in range(3):
        want = [b[0].numpy().tolist() for b in serial]
        got = list(loader)
        assert [b[0].numpy().tolist() for b in got] == want
        pids.append(sorted({int(p) for b in got for p in b[1].numpy()}))
    assert len(pids[0]) == 2 and pids[0] == pids[1] == pids[2]
    fresh = DataLoader(Slow(12, delay=0), batch_size=3, num_workers=2)
    a, b = ({int(p) for x in fresh for p in x[1].numpy()} for _ in range(2))
    assert not a & b                                    # not persistent: new workers every epoch
    del loader
    gc.collect()
    assert_no_workers(pids[0])


@pytest.mark.timeout(60)
def test_persistent_workers_start_over_when_an_epoch_is_abandoned():
    serial = DataLoader(Slow(20, delay=0.01), batch_size=2, shuffle=True, seed=0)
    want = [[b[0].numpy()[:, 0].tolist() for b in serial] for _ in range(3)]
    loader = DataLoader(Slow(20, delay=0.01), batch_size=2, shuffle=True, seed=0, num_workers=2,
                        persistent_workers=True)
    old = iter(loader)
    assert next(old)[0].numpy()[:, 0].tolist() == want[0][0]
    assert [b[0].numpy()[:, 0].tolist() for b in loader] == want[1]      # stale batches discarded
    with pytest.raises(RuntimeError, match="replaced by a newer iteration"):
        next(old)
    assert [b[0].numpy()[:, 0].tolist() for b in loader] == want[2]
    del loader, old
    gc.collect()
    assert_no_workers()


# ---------------------------------------------------------------- speed
@pytest.mark.timeout(60)
def test_slow_dataset_loads_faster_with_two_workers():
    ds = Slow(48, delay=0.03)                           # sleeps: no CPU needed, 2 cores suffice
    t0 = time.perf_counter()
    serial = [b[0].numpy().tolist() for b in DataLoader(ds, batch_size=4)]
    t_serial = time.perf_counter() - t0
    t0 = time.perf_counter()
    parallel = [b[0].numpy().tolist() for b in DataLoader(ds, batch_size=4, num_workers=2)]
    t_parallel = time.perf_counter() - t0
    print(f"serial {t_serial:.3f}s, 2 workers {t_parallel:.3f}s, speed-up {t_serial / t_parallel:.2f}x")
    assert parallel == serial
    assert t_parallel < 0.75 * t_serial


# ---------------------------------------------------------------- worker info, sharding, seeding
def _info_samples(**kw):
    return list(DataLoader(Info(8), batch_size=None, num_workers=2, collate_fn=lambda s: s, **kw))


@pytest.mark.timeout(60)
def test_get_worker_info_inside_and_outside(monkeypatch):
    monkeypatch.delenv("NUMEXPR_NUM_THREADS", raising=False)
    assert get_worker_info() is None
    samples = _info_samples()
    assert {s["threads"] for s in samples} == {"1"}    # one thread per worker, as torch
    assert [s["i"] for s in samples] == list(range(8))
    assert [s["id"] for s in samples] == [0, 1] * 4     # tasks go round-robin, as in torch
    assert {s["n"] for s in samples} == {2} and {s["ds"] for s in samples} == {"Info"}
    base = {s["seed"] - s["id"] for s in samples}
    assert len(base) == 1 and 0 <= base.pop() < 2**63
    assert len({s["pid"] for s in samples} - {os.getpid()}) == 2
    assert get_worker_info() is None


@pytest.mark.timeout(60)
def test_worker_seeds_differ_across_workers_and_follow_manual_seed():
    engine.manual_seed(123)
    a = _info_samples()
    engine.manual_seed(123)
    b = _info_samples()
    engine.manual_seed(124)
    c = _info_samples()
    key = [(s["seed"], s["np"], s["py"], s["engine"]) for s in a]
    assert key == [(s["seed"], s["np"], s["py"], s["engine"]) for s in b]
    assert [s["seed"] for s in c] != [s["seed"] for s in a]
    for field in ("np", "py", "engine"):               # first draw of worker 0 vs worker 1
        assert a[0][field] != a[1][field]
    g = np.random.default_rng(9)                        # the loader's generator= draws the base seed
    s1 = [s["seed"] for s in _info_samples(generator=g)]
    s2 = [s["seed"] for s in _info_samples(generator=np.random.default_rng(9))]
    assert s1[:2] == s2[:2]


@pytest.mark.timeout(60)
def test_random_transforms_get_a_stream_per_worker():
    images = TensorDataset(np.tile(np.array([[1, 2], [3, 4]], np.float32), (16, 1, 1, 1)))

    def flips():                                        # batch 0 from worker 0, batch 1 from worker 1
        loader = DataLoader(images, batch_size=16, num_workers=2, transform=T.RandomHorizontalFlip(seed=0),
                            sampler=_Repeat(16, 2))
        return [(b[0].numpy()[:, 0, 0, 0] == 2).tolist() for b in loader]

    engine.manual_seed(0)
    f1 = flips()
    engine.manual_seed(0)
    assert flips() == f1                                # reproducible
    assert f1[0] != f1[1]                               # worker 0 and 1 did not draw the same flips


class _Repeat:
    """A sampler: range(n) `times` times."""

    def __init__(self, n, times):
        self.n, self.times = n, times

    def __iter__(self):
        return iter(list(range(self.n)) * self.times)

    def __len__(self):
        return self.n * self.times


@pytest.mark.timeout(60)
def test_iterable_dataset_shards_by_worker_and_interleaves_round_robin():
    labels = [b[1].numpy().tolist() for b in DataLoader(Shards(0, 11), batch_size=2, num_workers=2)]
    # worker 0 reads 0..5, worker 1 reads 6..10; batches alternate, the longer replica finishes alone
    assert labels == [[0, 1], [6, 7], [2, 3], [8, 9], [4, 5], [10]]
    dropped = [b[1].numpy().tolist() for b in DataLoader(Shards(0, 11), batch_size=2, num_workers=2, drop_last=True)]
    assert dropped == [[0, 1], [6, 7], [2, 3], [8, 9], [4, 5]]
    samples = [int(s[1]) for s in DataLoader(Shards(0, 7), batch_size=None, num_workers=3)]
    assert sorted(samples) == list(range(7))
    assert [b[1].numpy().tolist() for b in DataLoader(Shards(0, 6), batch_size=2)] == [[0, 1], [2, 3], [4, 5]]
    persistent = DataLoader(Shards(0, 5), batch_size=2, num_workers=2, persistent_workers=True)
    for _ in range(2):                                  # each epoch restarts every replica
        assert [b[1].numpy().tolist() for b in persistent] == [[0, 1], [3, 4], [2]]
    del persistent
    gc.collect()
    assert_no_workers()


@pytest.mark.timeout(60)
def test_worker_init_fn_runs_once_per_worker_after_seeding(tmp_path):
    def init(worker_id):
        info = get_worker_info()
        assert info.id == worker_id
        (tmp_path / f"init-{worker_id}-{os.getpid()}").write_text(str(np.random.randint(2**31)))

    loader = DataLoader(Rows(8), batch_size=2, num_workers=2, worker_init_fn=init, persistent_workers=True)
    for _ in range(3):
        assert len(list(loader)) == 4
    calls = sorted(p.name.split("-")[1] for p in tmp_path.iterdir())
    assert calls == ["0", "1"]
    draws = {p.read_text() for p in tmp_path.iterdir()}
    assert len(draws) == 2                              # numpy was seeded per worker before init ran

    def broken(worker_id):
        raise OSError("cannot open the shard")
    with pytest.raises(OSError, match=r"(?s)worker process 0 in worker_init_fn.*cannot open the shard"):
        list(DataLoader(Rows(8), batch_size=2, num_workers=2, worker_init_fn=broken))
    del loader
    gc.collect()
    assert_no_workers()


# ---------------------------------------------------------------- errors
@pytest.mark.timeout(60)
def test_error_in_a_worker_is_reraised_with_its_traceback():
    got = []
    with pytest.raises(ValueError) as info:
        for batch in DataLoader(Failing(), batch_size=4, num_workers=2):
            got.append(batch[1].numpy().tolist())
    msg = str(info.value)
    assert got == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]     # the batches before it, in order
    assert "Caught ValueError in DataLoader worker process 1" in msg
    assert "batch 3 (dataset indices [12, 13, 14, 15])" in msg
    assert "Original Traceback (most recent call last)" in msg and "__getitem__" in msg
    assert "bad sample 13" in msg
    assert_no_workers()


@pytest.mark.timeout(60)
def test_unsendable_sample_suggests_num_workers_0():
    with pytest.raises(TypeError, match=r"(?s)cannot send batch 0.*builtins.object.*num_workers=0"):
        list(DataLoader(Unsendable(4), batch_size=None, num_workers=1))
    assert_no_workers()
    # an ndarray subclass would lose its extra state on the way (a masked array its mask): refused too
    with pytest.raises(TypeError, match=r"(?s)numpy.ma.MaskedArray.*mask.*num_workers=0"):
        list(DataLoader(Masked(4), batch_size=None, num_workers=1))
    with pytest.raises(ValueError, match=r"timeout option should be a non-negative number of seconds.*'5'"):
        DataLoader(Rows(4), num_workers=1, timeout="5")
    assert_no_workers()


@pytest.mark.timeout(60)
def test_killed_worker_gives_a_clear_error_quickly():
    it = iter(DataLoader(Slow(40, delay=0.05), batch_size=2, num_workers=2))
    next(it)
    victim = _worker_children()[0].pid
    os.kill(victim, signal.SIGKILL)
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=rf"DataLoader worker \d \(pid {victim}\) was killed by signal 9 \(SIGKILL\)"):
        for _ in it:
            pass
    assert time.monotonic() - t0 < 5
    assert_no_workers([victim])


@pytest.mark.timeout(60)
def test_timeout_bounds_the_wait_for_a_batch():
    loader = DataLoader(Slow(8, delay=5, slow_index=5), batch_size=2, num_workers=2, timeout=0.5)
    t0 = time.monotonic()
    got = []
    with pytest.raises(RuntimeError, match=r"timed out after 0.5 seconds waiting for batch 2 \(dataset indices \[4, 5\]\) from worker 0"):
        for b in loader:
            got.append(b[0].numpy()[:, 0].tolist())
    assert got == [[0, 1], [2, 3]]
    assert time.monotonic() - t0 < 4                    # 0.5 s wait + at most ~2 s of shutdown
    assert_no_workers()


@pytest.mark.timeout(60)
def test_break_del_and_exhaustion_leave_no_processes():
    loader = DataLoader(Slow(40, delay=0.01), batch_size=2, num_workers=2)
    for i, _ in enumerate(loader):
        pids = [p.pid for p in _worker_children()]
        if i == 2:
            break
    assert len(pids) == 2
    assert_no_workers(pids)
    it = iter(loader)
    next(it)
    pids = [p.pid for p in _worker_children()]
    del it
    assert_no_workers(pids)
    list(loader)
    assert_no_workers()


@pytest.mark.timeout(60)
def test_workers_exit_when_the_training_process_is_killed(tmp_path):
    script = textwrap.dedent("""
        import sys, time
        import multiprocessing as mp
        sys.path.insert(0, %r)
        from test_dataloader_workers import Slow
        from engine.data import DataLoader
        loader = DataLoader(Slow(1000, delay=0.01), batch_size=2, num_workers=2, persistent_workers=True)
        it = iter(loader)
        next(it)
        print(" ".join(str(p.pid) for p in mp.active_children() if p.name.startswith("DataLoaderWorker")), flush=True)
        time.sleep(60)
    """ % os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        pids = [int(p) for p in proc.stdout.readline().split()]
        assert len(pids) == 2 and all(_alive(p) for p in pids)
        proc.kill()
        proc.wait(10)
        deadline = time.monotonic() + 10
        while any(_alive(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [p for p in pids if _alive(p)], "orphaned DataLoader workers kept running"
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.timeout(60)
def test_spawn_names_what_could_not_be_pickled():
    with pytest.raises(RuntimeError, match=r"(?s)multiprocessing_context='spawn'.*pickles the dataset.*'fork'"):
        list(DataLoader(Rows(4), batch_size=2, num_workers=2, multiprocessing_context="spawn",
                        collate_fn=lambda s: s))
    assert_no_workers()


# ---------------------------------------------------------------- arguments
@pytest.mark.timeout(30)
def test_arguments_are_checked_as_torch_does():
    ds = Rows(4)
    with pytest.raises(ValueError, match="persistent_workers option needs num_workers > 0"):
        DataLoader(ds, persistent_workers=True)
    with pytest.raises(ValueError, match="non-negative"):
        DataLoader(ds, num_workers=-1)
    with pytest.raises(ValueError, match="timeout"):
        DataLoader(ds, num_workers=1, timeout=-1)
    with pytest.raises(ValueError, match="prefetch_factor"):
        DataLoader(ds, prefetch_factor=2)
    with pytest.raises(ValueError, match="valid start method"):
        DataLoader(ds, num_workers=1, multiprocessing_context="bogus")
    with pytest.raises(TypeError, match="unexpected arguments"):
        DataLoader(ds, num_worker=2)
    loader = DataLoader(ds, num_workers=1, multiprocessing_context=mp.get_context("spawn"), pin_memory=True,
                        pin_memory_device="cuda")
    assert loader.prefetch_factor == 2 and loader.multiprocessing_context.get_start_method() == "spawn"
    assert DataLoader(ds, num_workers=1).multiprocessing_context.get_start_method() == "fork"


# ---------------------------------------------------------------- against torch
@pytest.mark.torch
@pytest.mark.timeout(120)
def test_same_order_and_worker_info_as_torch():
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader as TorchLoader, IterableDataset as TorchIterable

    class TorchInfo(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            info = torch.utils.data.get_worker_info()
            return i, info.id, info.num_workers, info.seed - info.id

    ours = [(s["i"], s["id"], s["n"]) for s in list(DataLoader(Info(10), batch_size=None, num_workers=2,
                                                                collate_fn=lambda s: s))]
    theirs = list(TorchLoader(TorchInfo(), batch_size=None, num_workers=2))
    assert ours == [(int(i), int(w), int(n)) for i, w, n, _ in theirs]
    assert len({int(b) for *_, b in theirs}) == 1       # torch too: seed = base_seed + worker id

    class TorchShards(TorchIterable):
        def __init__(self, start, end):
            self.inner = Shards(start, end)

        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            lo, hi = self.inner.start, self.inner.end
            per = -(-(hi - lo) // info.num_workers)
            lo = lo + info.id * per
            return iter(range(lo, min(lo + per, hi)))

    theirs = [b.tolist() for b in TorchLoader(TorchShards(0, 11), batch_size=2, num_workers=2)]
    ours = [b[1].numpy().tolist() for b in DataLoader(Shards(0, 11), batch_size=2, num_workers=2)]
    assert ours == theirs


class _Big(Dataset):
    """64 MB samples: a batch is written to the pipe over many reads."""

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return np.full(1 << 24, i, dtype=np.float32)


@pytest.mark.timeout(60)
def test_timeout_holds_when_a_worker_stalls_halfway_through_a_batch():
    """A worker stopped while writing a batch (SIGSTOP: alive, silent) must not hang the loop once
    part of the batch has arrived: timeout= bounds the rest of the message too."""
    it = iter(DataLoader(_Big(), batch_size=1, num_workers=1, timeout=3))
    next(it)
    time.sleep(1.0)                                   # the worker fills the pipe with the next batch
    (worker,) = [p for p in mp.active_children() if p.is_alive()]
    pid = worker.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match=r"timed out after 3 seconds"):
            next(it)
        assert time.monotonic() - t0 < 10
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        del it
        gc.collect()
