"""In-process tests of the comm layer: environment detection, fingerprints, the 1-rank
communicator, and the ring algorithms / Communicator over an in-memory transport
whose "ranks" are threads (fast, so many rank counts and sizes are covered here;
the real transports are covered by test_comm_collectives.py)."""

from __future__ import annotations

import os
import threading
import time
from collections import deque

import numpy as np
import pytest

import comm
from comm import CollectiveMismatchError, CommError, CommTimeoutError
from comm.communicator import Communicator
from comm.env import Topology, choose_backend, comm_timeout, detect
from comm.fingerprint import RECORD_BYTES, Fingerprint, check_records
from comm.ring import exchange_records, ring_allreduce, ring_broadcast, ring_pass
from comm.transport import Deadline, PeerInfo, Request, Transport

# ---------------------------------------------------------------------------------------------- env


def test_detect_launchers():
    assert detect({}) == Topology()
    t = detect({"OMPI_COMM_WORLD_SIZE": "8", "OMPI_COMM_WORLD_RANK": "5", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "4"})
    assert (t.rank, t.size, t.local_rank, t.local_size, t.launcher, t.is_mpi) == (5, 8, 1, 4, "openmpi", True)
    t = detect({"PMI_RANK": "3", "PMI_SIZE": "4", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"})
    assert (t.rank, t.size, t.local_rank, t.local_size, t.launcher) == (3, 4, 1, 2, "mpich")
    t = detect({"PMIX_RANK": "2", "SLURM_NTASKS": "6", "SLURM_LOCALID": "0", "SLURM_NODEID": "1",
                "SLURM_TASKS_PER_NODE": "2(x3)"})
    assert (t.rank, t.size, t.local_rank, t.local_size, t.launcher, t.node_rank) == (2, 6, 0, 2, "pmix", 1)
    t = detect({"SLURM_PROCID": "4", "SLURM_NTASKS": "5", "SLURM_LOCALID": "1", "SLURM_NODEID": "1",
                "SLURM_STEP_TASKS_PER_NODE": "3,2"})
    assert (t.rank, t.size, t.local_rank, t.local_size, t.launcher) == (4, 5, 1, 2, "slurm")
    env = {"DPTRAIN_RANK": "1", "DPTRAIN_WORLD_SIZE": "2", "DPTRAIN_LOCAL_RANK": "1",
           "DPTRAIN_LOCAL_WORLD_SIZE": "2", "DPTRAIN_MASTER_ADDR": "10.0.0.1", "DPTRAIN_MASTER_PORT": "29500"}
    t = detect(env)
    assert (t.rank, t.size, t.launcher, t.master_addr, t.master_port, t.is_mpi) == (1, 2, "dptrain", "10.0.0.1",
                                                                                     29500, False)
    # srun started our launcher's workers: DPTRAIN_* wins over Slurm (it is not an MPI job).
    assert detect(dict(env, SLURM_PROCID="0", SLURM_NTASKS="1")).launcher == "dptrain"


def test_detect_rejects_bad_values():
    with pytest.raises(CommError, match="PMI_RANK"):
        detect({"PMI_RANK": "x", "PMI_SIZE": "2"})
    with pytest.raises(CommError, match="rank 4 is outside"):
        detect({"DPTRAIN_RANK": "4", "DPTRAIN_WORLD_SIZE": "2"})
    with pytest.raises(CommError, match="DPTRAIN_RANK"):
        detect({"DPTRAIN_WORLD_SIZE": "2"})
    with pytest.raises(CommError, match="TCP port"):
        detect({"DPTRAIN_RANK": "0", "DPTRAIN_WORLD_SIZE": "2", "DPTRAIN_MASTER_PORT": "70000"})


def test_choose_backend_and_timeout():
    assert choose_backend("auto", {}) == "local"
    assert choose_backend("auto", {"PMI_RANK": "0", "PMI_SIZE": "2"}) == "mpi"
    assert choose_backend("auto", {"OMPI_COMM_WORLD_SIZE": "2", "DPTRAIN_WORLD_SIZE": "2",
                                   "DPTRAIN_RANK": "0"}) == "mpi"
    assert choose_backend("auto", {"DPTRAIN_WORLD_SIZE": "2", "DPTRAIN_RANK": "0"}) == "zmq"
    assert choose_backend("auto", {"PMI_RANK": "0", "PMI_SIZE": "2", "DPTRAIN_COMM_BACKEND": "zmq"}) == "zmq"
    assert choose_backend("mpi", {}) == "mpi"
    with pytest.raises(ValueError, match="unknown comm backend"):
        choose_backend("nccl", {})
    with pytest.raises(CommError, match="DPTRAIN_COMM_BACKEND"):
        choose_backend("auto", {"DPTRAIN_COMM_BACKEND": "tcp"})
    assert comm_timeout(None, {}) == 60.0
    assert comm_timeout(None, {"DPTRAIN_COMM_TIMEOUT": "2.5"}) == 2.5
    assert comm_timeout(7, {"DPTRAIN_COMM_TIMEOUT": "2.5"}) == 7.0
    with pytest.raises(CommError, match="positive"):
        comm_timeout(None, {"DPTRAIN_COMM_TIMEOUT": "0"})


# --------------------------------------------------------------------------------------- fingerprint


def test_fingerprint_roundtrip_and_mismatch_message():
    fp = Fingerprint(seq=12, kind="allreduce", op="sum", dtype="float32", shape=(3, 4), algorithm="ring")
    rec = fp.encode()
    assert len(rec) == RECORD_BYTES and Fingerprint.decode(rec) == fp
    long = Fingerprint(seq=1, kind="allgather", dtype="<f8", shape=tuple(range(1000, 1040)))
    assert len(long.encode()) == RECORD_BYTES
    assert "40-d" in Fingerprint.decode(long.encode()).describe()
    assert "dtype=float64" in long.describe()
    other = Fingerprint(seq=12, kind="allreduce", op="sum", dtype="float32", shape=(3, 5), algorithm="ring")
    check_records([rec, rec, rec], 0)
    with pytest.raises(CollectiveMismatchError) as info:
        check_records([rec, other.encode(), rec], 2)
    msg = str(info.value)
    assert "ranks 0, 2 called allreduce #12" in msg and "rank 1 called allreduce #12" in msg
    assert "shape=(3, 4)" in msg and "shape=(3, 5)" in msg and "seen by rank 2" in msg
    # Same call, different ring settings: the message shows the settings.
    a = Fingerprint(seq=3, kind="allreduce", op="sum", dtype="<f4", shape=(9,), algorithm="ring", segment=4096)
    b = Fingerprint(seq=3, kind="allreduce", op="sum", dtype="<f4", shape=(9,), algorithm="ring", segment=8192)
    with pytest.raises(CollectiveMismatchError, match="DPTRAIN_COMM_SEGMENT_BYTES=8192"):
        check_records([a.encode(), b.encode()], 0)
    # Same call, different algorithm (one rank with DPTRAIN_COMM_HIERARCHICAL=0): the fix names it.
    c = Fingerprint(seq=3, kind="allreduce", op="sum", dtype="<f4", shape=(9,), algorithm="hierarchical")
    with pytest.raises(CollectiveMismatchError, match=r"algorithm=hierarchical.*different algorithms.*"
                                                      r"DPTRAIN_COMM_HIERARCHICAL"):
        check_records([c.encode(), a.encode()], 0)


def test_a_misspelt_hierarchical_switch_is_an_error(monkeypatch):
    from comm import hierarchy
    monkeypatch.setenv("DPTRAIN_COMM_HIERARCHICAL", "flase")
    with pytest.raises(comm.CommError, match=r"DPTRAIN_COMM_HIERARCHICAL='flase': expected 1 or 0"):
        hierarchy.enabled()
    monkeypatch.setenv("DPTRAIN_COMM_HIERARCHICAL", "Off")
    assert hierarchy.enabled() is False


# ------------------------------------------------------------------------------- 1-rank communicator


@pytest.fixture
def no_launcher_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith(("OMPI_", "PMI_", "PMIX_", "SLURM_", "DPTRAIN_")):
            monkeypatch.delenv(key, raising=False)
    yield
    comm.finalize()


def test_local_communicator(no_launcher_env):
    c = comm.init()
    assert (c.rank, c.size, c.local_rank, c.local_size, c.backend) == (0, 1, 0, 1, "local")
    assert comm.init() is c  # idempotent
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    assert c.allreduce(x, op="mean") is x and np.array_equal(x, np.arange(6).reshape(2, 3))
    assert np.array_equal(c.allgather(x), x[None])
    assert np.array_equal(c.reduce_scatter(x, op="max"), x)
    assert c.broadcast(x) is x
    h = c.allreduce_async(x)
    assert h.done() and h.wait() is x
    c.barrier()
    assert c.broadcast_obj({"a": (1, 2)}) == {"a": [1, 2]}
    assert c.allgather_obj("hi") == ["hi"]
    comm.finalize()
    assert c.closed
    with pytest.raises(CommError, match="closed"):
        c.allreduce(x)
    assert comm.init() is not c


# ------------------------------------------------------------------- in-memory transport (threads)


class Fabric:
    """Message queues between thread "ranks"; one condition variable wakes every waiter."""

    def __init__(self, n: int):
        self.n = n
        self.cond = threading.Condition()
        self.queues = {(s, d): deque() for s in range(n) for d in range(n)}


class ThreadTransport(Transport):
    """rendezvous=True behaves like MPI with large messages: a send completes only once the
    receiver has matched it (and send buffers must be complete before being received into)."""

    name = "thread"

    def __init__(self, fabric: Fabric, rank: int, rendezvous: bool = False):
        self.rank, self.size = rank, fabric.n
        super().__init__()
        self.fabric = fabric
        self.rendezvous = self.strict_send_buffers = rendezvous
        self.posted = {p: deque() for p in range(self.size)}
        self.set_peers([PeerInfo(r, "threads", 0) for r in range(self.size)])

    def isend(self, peer, data, tag):
        req = Request(peer, int(data.nbytes), tag, True)
        req.done = not self.rendezvous  # before publishing: the receiver may complete it at once
        with self.fabric.cond:
            self.fabric.queues[(self.rank, peer)].append((tag, np.array(data, copy=True), req))
            self.fabric.cond.notify_all()
        return req

    def irecv(self, peer, nbytes, tag, into=None, xp=None):
        req = Request(peer, nbytes, tag, False)
        req.extra = into
        self.posted[peer].append(req)
        return req

    def _match(self):
        """Pair posted receives with queued messages (caller holds the condition)."""
        matched = False
        for peer, posted in self.posted.items():
            queue = self.fabric.queues[(peer, self.rank)]
            while posted and queue:
                req = posted.popleft()
                tag, payload, send_req = queue.popleft()
                send_req.done = True
                assert tag == req.tag and payload.nbytes == req.nbytes, (tag, req.tag, payload.nbytes, req.nbytes)
                if req.extra is not None:
                    req.extra[...] = payload
                    req.data = req.extra
                else:
                    req.data = payload
                req.done = True
                matched = True
        if matched:
            self.fabric.cond.notify_all()  # a sender may be waiting for exactly this match

    def wait_all(self, reqs, deadline, context):
        with self.fabric.cond:
            while True:
                self._match()
                pending = [r for r in reqs if not r.done]
                if not pending:
                    return
                if deadline.expired():
                    raise self.timeout_error(pending, deadline, context)
                self.fabric.cond.wait(min(max(deadline.remaining(), 0.001), 0.05))


def run_ranks(n, fn, timeout=30, rendezvous=False):
    """Run fn(rank, transport) on n threads; return their results and errors."""
    fabric = Fabric(n)
    transports = [ThreadTransport(fabric, r, rendezvous) for r in range(n)]
    results, errors = [None] * n, [None] * n

    def main(r):
        try:
            results[r] = fn(r, transports[r])
        except BaseException as exc:  # noqa: BLE001
            errors[r] = exc

    threads = [threading.Thread(target=main, args=(r,), daemon=True) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a rank thread hung"
    return results, errors


def _ints(rank, size, dtype="int64"):
    return (np.arange(size) * (rank + 3) % 11 - 5).astype(dtype)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("rendezvous", [False, True], ids=["eager", "rendezvous"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 7])
def test_ring_algorithms_many_ranks(n, rendezvous):
    sizes = sorted({0, 1, max(n - 1, 0), n, n + 1, 37, 1000})

    def body(r, tp):
        out = {}
        for size in sizes:
            for seg in (8, 64, 1 << 20):
                d = Deadline(10)
                x = _ints(r, size)
                ring_allreduce(tp, x, np.add, deadline=d, context="t", tag=1, seg_bytes=seg, depth=2)
                out[("sum", size, seg)] = x
                s = _ints(r, size)
                ring_allreduce(tp, s, np.add, deadline=d, context="t", tag=1, seg_bytes=seg, small_bytes=1 << 30)
                out[("small", size, seg)] = s
                y = _ints(r, size, "float64")
                ring_allreduce(tp, y, np.maximum, deadline=d, context="t", tag=1, seg_bytes=seg, depth=3)
                out[("max", size, seg)] = y
                b = _ints(r, size).view(np.uint8).copy()
                ring_broadcast(tp, b, n // 2, deadline=d, context="t", tag=1, seg_bytes=seg)
                out[("bcast", size, seg)] = b
                g = np.zeros(n * size, dtype=np.int64)
                g[r * size:(r + 1) * size] = _ints(r, size)
                ring_pass(tp, g, [i * size for i in range(n + 1)], deadline=d, context="t", tag=1, do_ag=True,
                          seg_bytes=seg)
                out[("gather", size, seg)] = g
        out["records"] = exchange_records(tp, bytes([r]) * 64, deadline=Deadline(10), context="t", tag=0)
        return out

    results, errors = run_ranks(n, body, rendezvous=rendezvous)
    assert not any(errors), errors
    for size in sizes:
        total = sum(_ints(k, size) for k in range(n)) if size else np.zeros(0, np.int64)
        top = np.max([_ints(k, size, "float64") for k in range(n)], axis=0) if size else np.zeros(0)
        for seg in (8, 64, 1 << 20):
            for r in range(n):
                assert np.array_equal(results[r][("sum", size, seg)], total)
                assert np.array_equal(results[r][("small", size, seg)], total)
                assert np.array_equal(results[r][("max", size, seg)], top)
                assert np.array_equal(results[r][("bcast", size, seg)].view(np.int64), _ints(n // 2, size))
                assert np.array_equal(results[r][("gather", size, seg)],
                                      np.concatenate([_ints(k, size) for k in range(n)]))
    for r in range(n):
        assert results[r]["records"] == [bytes([k]) * 64 for k in range(n)]


def make_comms(n, timeout=10.0):
    fabric = Fabric(n)
    return [Communicator(ThreadTransport(fabric, r), Topology(r, n, r, n), timeout, "thread") for r in range(n)]


def run_comms(comms, fn, timeout=30):
    results, errors = [None] * len(comms), [None] * len(comms)

    def main(r):
        try:
            results[r] = fn(comms[r])
        except BaseException as exc:  # noqa: BLE001
            errors[r] = exc

    threads = [threading.Thread(target=main, args=(r,), daemon=True) for r in range(len(comms))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout)
        assert not t.is_alive(), "a rank thread hung"
    return results, errors


@pytest.mark.timeout(60)
def test_communicator_ops_over_threads():
    n = 5
    comms = make_comms(n)

    def body(c):
        r = c.rank
        x = _ints(r, 23, "float32")
        c.allreduce(x, op="mean")
        handles = [c.allreduce_async(_ints(r, 50 + i)) for i in range(4)]
        rs = c.reduce_scatter(np.stack([_ints(r, 3)] * 7), op="sum")
        return x, [h.wait() for h in handles], rs, c.allgather_obj({"r": r})

    results, errors = run_comms(comms, body)
    assert not any(errors), errors
    want = (sum(_ints(k, 23, "float32") for k in range(n)) / np.float32(n)).astype(np.float32)
    stacked = np.stack([sum(_ints(k, 3) for k in range(n))] * 7)
    for r, (x, asyncs, rs, objs) in enumerate(results):
        assert np.array_equal(x, want)
        for i, a in enumerate(asyncs):
            assert np.array_equal(a, sum(_ints(k, 50 + i) for k in range(n)))
        assert np.array_equal(rs, np.array_split(stacked, n)[r])
        assert objs == [{"r": k} for k in range(n)]


@pytest.mark.timeout(60)
def test_mismatch_is_reported_on_every_rank_and_comm_stays_usable():
    comms = make_comms(3)

    def body(c):
        try:
            c.allgather(np.zeros(4 if c.rank != 2 else 5))
        except CollectiveMismatchError as exc:
            first = str(exc)
        else:
            first = None
        y = np.full(3, c.rank, np.int32)
        c.allreduce(y)
        return first, y

    results, errors = run_comms(comms, body)
    assert not any(errors), errors
    for first, y in results:
        assert first and "ranks 0, 1 called allgather #0" in first and "rank 2 called allgather #0" in first
        assert "shape=(5,)" in first
        assert np.array_equal(y, [3, 3, 3])


@pytest.mark.timeout(60)
def test_timeout_names_the_missing_rank_and_retires_the_communicator():
    comms = make_comms(3, timeout=0.5)
    gate = threading.Event()

    def body(c):
        if c.rank == 1:
            gate.wait(5)  # never joins in time
            return None
        t0 = time.monotonic()
        try:
            c.allreduce(np.ones(10))
        except CommTimeoutError as exc:
            err = str(exc)
        elapsed = time.monotonic() - t0
        if c.rank == 2:
            gate.set()
        with pytest.raises(CommError, match="unusable after an earlier failure"):
            c.barrier()
        return err, elapsed

    results, errors = run_comms(comms, body)
    assert not any(errors), errors
    assert "waiting for data from rank 1" in results[2][0]  # rank 2's left neighbour is rank 1
    assert "timed out after 0.5 s" in results[0][0]
    assert all(0.4 < results[r][1] < 3 for r in (0, 2))


@pytest.mark.timeout(60)
def test_async_handles_complete_in_order_and_wait_timeout():
    comms = make_comms(2)
    release = threading.Event()

    def body(c):
        if c.rank == 1:
            release.wait(5)  # rank 1 is late: rank 0's handles cannot finish yet
        hs = [c.allreduce_async(np.full(1000, c.rank + i, np.float64)) for i in range(5)]
        if c.rank == 0:
            with pytest.raises(CommTimeoutError, match="still running"):
                hs[0].wait(timeout=0.05)
            release.set()
        last = hs[-1].wait()
        return [h.done() for h in hs], [h.wait()[0] for h in hs], last is not None

    results, errors = run_comms(comms, body)
    assert not any(errors), errors
    for done, firsts, _ in results:
        assert all(done)
        assert firsts == [1.0 + 2 * i for i in range(5)]


# ------------------------------------------------- device-array staging (stand-in for cupy, no GPU)


class _StandInDevice:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class _StandInArray:
    """Just enough of cupy.ndarray for the host-staging path (which is all a CPU box can run)."""

    def __init__(self, a):
        self.a = np.asarray(a)
        self.device = _StandInDevice()

    dtype = property(lambda self: self.a.dtype)
    shape = property(lambda self: self.a.shape)
    ndim = property(lambda self: self.a.ndim)
    flags = property(lambda self: self.a.flags)

    def reshape(self, *shape):
        return _StandInArray(self.a.reshape(*shape))

    def __getitem__(self, key):
        return _StandInArray(self.a[key])

    def __setitem__(self, key, value):
        self.a[key] = value.a if isinstance(value, _StandInArray) else value


class _StandInCupy:
    ndarray = _StandInArray

    @staticmethod
    def asnumpy(x):
        return np.array(x.a, copy=True)

    @staticmethod
    def asarray(x):
        return _StandInArray(np.array(x.a if isinstance(x, _StandInArray) else x, copy=True))


@pytest.mark.timeout(60)
def test_device_arrays_are_staged_through_host(monkeypatch):
    import comm.arrays as arrays_mod

    monkeypatch.setattr(arrays_mod, "is_cupy", lambda x: isinstance(x, _StandInArray))
    monkeypatch.setattr(arrays_mod, "get_cupy", lambda: _StandInCupy)
    comms = make_comms(3)

    def body(c):
        base = _StandInArray(np.full((4, 6), c.rank + 1.0))
        view = base[:, ::2]
        out = c.allreduce(view, op="sum")  # non-contiguous device view: staged, reduced, written back
        g = c.allgather(_StandInArray(np.array([c.rank, 10 + c.rank], np.int64)))
        rs = c.reduce_scatter(_StandInArray(np.ones((5, 2), np.float32)), op="mean")
        h = c.allreduce_async(_StandInArray(np.full(3, c.rank, np.int32)))
        return out is view, base.a.copy(), g, rs, h.wait()

    results, errors = run_comms(comms, body)
    assert not any(errors), errors
    for r, (same, base, g, rs, a) in enumerate(results):
        assert same
        assert np.array_equal(base[:, ::2], np.full((4, 3), 6.0)) and np.array_equal(base[:, 1::2],
                                                                                       np.full((4, 3), r + 1.0))
        assert isinstance(g, _StandInArray) and np.array_equal(g.a, [[0, 10], [1, 11], [2, 12]])
        assert isinstance(rs, _StandInArray) and np.array_equal(rs.a, np.array_split(np.ones((5, 2)), 3)[r])
        assert isinstance(a, _StandInArray) and np.array_equal(a.a, [3, 3, 3])


@pytest.mark.timeout(60)
def test_forked_child_leaves_the_parents_communicator_alone():
    comms = make_comms(2)
    pid = os.fork()
    if pid == 0:  # child: using it must fail, closing it must be a no-op
        code = 0
        try:
            comms[0].barrier()
            code = 3
        except CommError as exc:
            code = 0 if "fork" in str(exc) else 4
        comms[0].close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    results, errors = run_comms(comms, lambda c: c.allgather_obj(c.rank))  # the parent's still works
    assert not any(errors) and results == [[0, 1], [0, 1]]


@pytest.mark.parametrize("accepts", [bytes, tuple])
def test_nccl_unique_id_is_offered_in_the_form_this_cupy_takes(accepts):
    """cupy >= 13 wants bytes, older cupy a tuple of signed chars; the id crossed msgpack either way
    (found on an H200 with cupy 14, where the tuple form raised TypeError)."""
    from comm.nccl import NcclAllreduce

    class FakeNccl:
        def NcclCommunicator(self, size, uid, rank):
            if not isinstance(uid, accepts):
                raise TypeError(f"Argument 'commId' has incorrect type (expected {accepts.__name__})")
            return (size, uid, rank)

    nccl = object.__new__(NcclAllreduce)
    nccl._nccl, nccl.size, nccl.rank = FakeNccl(), 2, 1
    raw = bytes([1, 200, 3])
    for uid in (raw, [1, -56, 3], (1, -56, 3)):
        size, got, rank = nccl._communicator(uid)
        assert (size, rank) == (2, 1)
        assert got == (raw if accepts is bytes else (1, -56, 3))
