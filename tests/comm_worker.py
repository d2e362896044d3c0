"""Rank program for the comm tests: run a scenario, print one JSON result line.

Started by tests/test_comm_*.py either under `mpiexec -n N` (MPI backend) or as N
plain processes with DPTRAIN_* variables (ZeroMQ backend).  Many checks are
batched into one launch because starting ranks is the slow part on 2 cores.
Every rank prints exactly one line `@@RESULT@@ {json}` (flushed) before exiting;
the test gathers the lines of all ranks and compares them.

Scenarios (argv[1]):
  suite     every collective, op, dtype, awkward size and layout against numpy,
            plus async ordering and mismatch detection
  kill      rank --victim SIGKILLs itself; the others must fail fast
  timeout   rank --victim never joins; the others must time out naming it
  init      only comm.init (rendezvous error cases)
  early_close  rank --victim closes its communicator while the others still call one
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import time
import traceback
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import comm  # noqa: E402
from comm import CollectiveMismatchError, CommError, CommTimeoutError  # noqa: E402

DTYPES = ["float16", "float32", "float64", "int32", "int64"]
OPS = ["sum", "mean", "max", "min"]


def emit(result: dict) -> None:
    """Write the result where the launcher looks (a file per process: mpiexec may interleave stdout)."""
    text = json.dumps(result, sort_keys=True)
    out_dir = os.environ.get("COMM_TEST_RESULT_DIR")
    if out_dir:
        path = os.path.join(out_dir, f"result-{os.getpid()}.json")
        with open(path + ".tmp", "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(path + ".tmp", path)
    else:
        print("@@RESULT@@ " + text, flush=True)


def data(rank: int, shape, dtype: str, exact: bool = True) -> np.ndarray:
    """Deterministic input of `rank`, computable by every rank (so each can build the expectation).

    exact=True: small integers, so any summation order gives numpy's exact answer.
    """
    seed = zlib.crc32(repr((rank, tuple(shape), dtype, exact)).encode())
    rng = np.random.default_rng(seed)
    if exact:
        out = rng.integers(-8, 9, size=shape)
    elif np.dtype(dtype).kind == "f":
        out = rng.standard_normal(size=shape)
    else:
        out = rng.integers(-1000, 1000, size=shape)
    return np.array(out, dtype=dtype)


def expected(op: str, n: int, shape, dtype: str, exact: bool = True) -> np.ndarray:
    stack = np.stack([data(k, shape, dtype, exact) for k in range(n)])
    if op in ("sum", "mean"):
        total = np.sum(stack, axis=0, dtype=dtype).astype(dtype)
        return (total / np.dtype(dtype).type(n)).astype(dtype) if op == "mean" else total
    return (np.max if op == "max" else np.min)(stack, axis=0).astype(dtype)


class Checker:
    def __init__(self, rank: int):
        self.rank = rank
        self.count = 0
        self.failures = []
        self.hashes = {}

    def eq(self, name: str, got, want) -> None:
        self.count += 1
        got = np.asarray(got)
        want = np.asarray(want)
        if got.shape != want.shape or got.dtype != want.dtype or not np.array_equal(got, want):
            self.failures.append(f"{name}: got {got.dtype}{got.shape} {got.ravel()[:6]}, want "
                                 f"{want.dtype}{want.shape} {want.ravel()[:6]}")

    def true(self, name: str, cond: bool, detail: str = "") -> None:
        self.count += 1
        if not cond:
            self.failures.append(f"{name}: {detail or 'condition false'}")

    def digest(self, name: str, arr) -> None:
        """Record the exact bytes: the test compares these across ranks (bit-identical results)."""
        self.hashes[name] = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]


def sizes_for(n: int):
    return sorted({0, 1, max(n - 1, 0), n, n + 1, 7, 1000, 12347})


def suite(c, ck: Checker, algorithms) -> None:
    n, r = c.size, c.rank
    # allreduce: every op x dtype x size x algorithm, in place
    for algo in algorithms:
        for dtype in DTYPES:
            for op in OPS:
                if op == "mean" and np.dtype(dtype).kind != "f":
                    continue
                for size in sizes_for(n):
                    x = data(r, (size,), dtype)
                    out = c.allreduce(x, op=op, algorithm=algo)
                    ck.true(f"allreduce in place {algo} {dtype} {op} {size}", out is x)
                    ck.eq(f"allreduce {algo} {dtype} {op} {size}", x, expected(op, n, (size,), dtype))
        # inexact floats: results must still be bit-identical on every rank
        for dtype in ("float16", "float32", "float64"):
            for op in ("sum", "mean"):
                x = data(r, (20001,), dtype, exact=False)
                c.allreduce(x, op=op, algorithm=algo)
                ck.digest(f"random {algo} {dtype} {op}", x)
                want = expected(op, n, (20001,), dtype, exact=False).astype(np.float64)
                tol = 2e-2 if dtype == "float16" else 1e-4
                ck.true(f"random close {algo} {dtype} {op}", np.allclose(x.astype(np.float64), want, rtol=tol,
                                                                         atol=tol * n))
        # layouts: strided view (written back), transposed 2-D, read-only (returns a new array), 0-d
        base = data(r, (2 * 101,), "float32")
        base_before = base.copy()
        view = base[::2]
        out = c.allreduce(view, algorithm=algo)
        ck.true(f"strided returns view {algo}", out is view)
        ck.eq(f"strided result {algo}", view, expected("sum", n, (2 * 101,), "float32")[::2])
        ck.eq(f"strided untouched {algo}", base[1::2], base_before[1::2])
        m = data(r, (13, 5), "float64").T
        out = c.allreduce(m, op="max", algorithm=algo)
        ck.eq(f"transposed {algo}", m, expected("max", n, (13, 5), "float64").T)
        ro = data(r, (33,), "int64")
        ro.flags.writeable = False
        out = c.allreduce(ro, algorithm=algo)
        ck.eq(f"read-only input unchanged {algo}", ro, data(r, (33,), "int64"))
        ck.eq(f"read-only result {algo}", out, expected("sum", n, (33,), "int64"))
        z = np.array(float(r + 1))
        c.allreduce(z, algorithm=algo)
        ck.eq(f"0-d {algo}", z, np.array(float(n * (n + 1) // 2)))
        big = data(r, (200003,), "float32")
        c.allreduce(big, algorithm=algo)
        ck.eq(f"large {algo}", big, expected("sum", n, (200003,), "float32"))
        ck.digest(f"large {algo}", big)

        # broadcast from every root, several dtypes and sizes
        for root in range(n):
            for dtype, size in (("float64", 1000), ("int32", 0), ("float16", 12347), ("int64", 3)):
                x = data(r, (size,), dtype)
                out = c.broadcast(x, root=root, algorithm=algo)
                ck.true(f"broadcast in place {algo} {root} {dtype}", out is x)
                ck.eq(f"broadcast {algo} root {root} {dtype} {size}", x, data(root, (size,), dtype))
        strided = data(r, (40,), "float32")[::4]
        c.broadcast(strided, root=n - 1, algorithm=algo)
        ck.eq(f"broadcast strided {algo}", strided, data(n - 1, (40,), "float32")[::4])

        # allgather
        for dtype, shape in (("float32", (5, 3)), ("int64", (0,)), ("float16", (12347,)), ("int32", ())):
            g = c.allgather(data(r, shape, dtype), algorithm=algo)
            ck.eq(f"allgather {algo} {dtype} {shape}", g, np.stack([data(k, shape, dtype) for k in range(n)]))
            ck.digest(f"allgather {algo} {dtype} {shape}", g)

        # reduce_scatter: rows split like numpy.array_split (fewer rows than ranks included)
        for dtype, shape, op in (("float32", (10, 3), "sum"), ("int64", (max(n - 1, 1), 2), "max"),
                                 ("float64", (12347,), "mean"), ("int32", (n + 2,), "min"), ("float32", (0, 4), "sum")):
            mine = c.reduce_scatter(data(r, shape, dtype), op=op, algorithm=algo)
            full = expected(op, n, shape, dtype)
            ck.eq(f"reduce_scatter {algo} {dtype} {shape} {op}", mine, np.array_split(full, n, axis=0)[r])

    # in-place shards (ZeRO): own shard reduced, whole array gathered back; fewer elements than ranks too
    for dtype, numel, op in (("float32", 12347, "mean"), ("float64", 10, "sum"), ("int32", max(n - 1, 1), "max"),
                             ("float32", 0, "sum")):
        b = c.shard_bounds(numel)
        ck.true(f"shard_bounds {numel}", b[0] == 0 and b[-1] == numel and len(b) == n + 1, repr(b))
        flat = data(r, (numel,), dtype)
        out = c.reduce_scatter_inplace(flat, op=op)
        full = expected(op, n, (numel,), dtype)
        ck.true(f"reduce_scatter_inplace returns its input {numel}", out is flat)
        ck.eq(f"reduce_scatter_inplace {dtype} {numel} {op}", flat[b[r]:b[r + 1]], full[b[r]:b[r + 1]])
        g = np.zeros(numel, dtype)
        g[b[r]:b[r + 1]] = full[b[r]:b[r + 1]]
        c.allgather_inplace_async(g).wait(30)
        ck.eq(f"allgather_inplace {dtype} {numel}", g, full)
        ck.digest(f"allgather_inplace {dtype} {numel}", g)
    try:
        c.allgather_inplace(np.zeros((2, 2), np.float32))
        ck.true("allgather_inplace 2-D raises", False)
    except ValueError as exc:
        ck.true("allgather_inplace 2-D message", "needs a 1-D array" in str(exc), str(exc))

    # shared buffers (Communicator.alloc): the same answers as the ring, bit-identical on every rank
    shared = []
    for dtype, numel, op in (("float32", 12347, "mean"), ("float64", 10, "sum"), ("int32", max(n - 1, 1), "max"),
                             ("float16", 1001, "min"), ("float32", 0, "sum")):
        buf = c.alloc(numel, dtype)
        shared.append(c.is_shared(buf))
        ck.true(f"alloc {dtype} {numel}", buf.shape == (numel,) and buf.dtype == np.dtype(dtype) and not buf.any(),
                f"{buf.dtype}{buf.shape} any={buf.any()}")
        b, full = c.shard_bounds(numel), expected(op, n, (numel,), dtype)
        buf[...] = data(r, (numel,), dtype)
        ck.true(f"alloc allreduce returns its input {numel}", c.allreduce(buf, op=op) is buf)
        ck.eq(f"alloc allreduce {dtype} {numel} {op}", buf, full)
        ck.digest(f"alloc allreduce {dtype} {numel} {op}", buf)
        buf[...] = data(r, (numel,), dtype)
        c.reduce_scatter_inplace_async(buf, op=op).wait(30)
        ck.eq(f"alloc reduce_scatter_inplace {dtype} {numel} {op}", buf[b[r]:b[r + 1]], full[b[r]:b[r + 1]])
        buf[...] = 0
        buf[b[r]:b[r + 1]] = full[b[r]:b[r + 1]]
        c.allgather_inplace(buf)
        ck.eq(f"alloc allgather_inplace {dtype} {numel}", buf, full)
        part = buf[:numel // 2]            # a slice is not the whole buffer: it takes the ring
        ck.true(f"alloc slice not shared {numel}", not c.is_shared(part) or numel == 0)
    ck.shared_buffers = shared
    if n > 1 and all(shared):
        # one rank with a shared buffer, the others with private arrays: caught, nothing moved
        mine = c.alloc(16, "float32")
        try:
            c.allreduce(mine if r == 0 else np.zeros(16, np.float32))
            ck.true("shared vs private raises", False, "no error")
        except CollectiveMismatchError as exc:
            ck.true("shared vs private message", "algorithm=shared" in str(exc) and "algorithm=ring" in str(exc),
                    str(exc))
        # two shared buffers of one shape: rank 0 on the first, the others on the second (the ring
        # could not tell these apart; here each rank would read the wrong buffer of its peers)
        other = c.alloc(16, "float32")
        try:
            c.reduce_scatter_inplace(mine if r == 0 else other)
            ck.true("two shared buffers raises", False, "no error")
        except CollectiveMismatchError as exc:
            ck.true("two shared buffers message", "alloc buffer #" in str(exc), str(exc))
        c.allreduce(other)                  # still usable

    # barrier and objects
    c.barrier()
    c.barrier(timeout=30)
    got = c.broadcast_obj({"step": 7, "name": "run", "vals": [1.5, None, True], "raw": b"\x00\x01"}
                          if r == n - 1 else None, root=n - 1)
    ck.true("broadcast_obj", got == {"step": 7, "name": "run", "vals": [1.5, None, True], "raw": b"\x00\x01"},
            repr(got))
    objs = c.allgather_obj({"rank": r, "t": (r, "x" * r), "f": np.float32(0.5)})
    ck.true("allgather_obj", objs == [{"rank": k, "t": [k, "x" * k], "f": 0.5} for k in range(n)], repr(objs))
    try:
        c.broadcast_obj(object(), root=0)
        ck.true("broadcast_obj unencodable raises", False)
    except TypeError as exc:
        ck.true("broadcast_obj unencodable message", "rank 0 could not encode" in str(exc), str(exc))
    try:
        c.allgather_obj({"x": set()} if r == n - 1 else 1)
        ck.true("allgather_obj unencodable raises", False)
    except TypeError as exc:
        ck.true("allgather_obj unencodable message", f"rank(s) [{n - 1}]" in str(exc), str(exc))

    # async: several outstanding, complete in issue order, mixed with sync calls
    arrays = [data(r, (3000 + 10 * i,), "float32") for i in range(6)]
    handles = [c.allreduce_async(a, op="sum") for a in arrays[:3]]
    handles.append(c.broadcast_async(arrays[3], root=0))
    handles.append(c.allgather_async(arrays[4]))
    handles.append(c.reduce_scatter_async(arrays[5], op="max"))
    mid = data(r, (64,), "int32")
    c.allreduce(mid)  # sync call queued behind the async ones
    ck.true("async all done before a later sync call returns", all(h.done() for h in handles))
    last = c.allreduce_async(data(r, (10,), "float64"))
    res = [h.wait(timeout=60) for h in handles]
    last.wait()
    for i in range(3):
        ck.eq(f"async allreduce {i}", res[i], expected("sum", n, (3000 + 10 * i,), "float32"))
        ck.true(f"async returns array {i}", res[i] is arrays[i])
    ck.eq("async broadcast", res[3], data(0, (3030,), "float32"))
    ck.eq("async allgather", res[4], np.stack([data(k, (3040,), "float32") for k in range(n)]))
    ck.eq("async reduce_scatter", res[5], np.array_split(expected("max", n, (3050,), "float32"), n)[r])
    ck.eq("sync between async", mid, expected("sum", n, (64,), "int32"))
    hs = [c.allreduce_async(np.full(100 + i, r, np.float64)) for i in range(8)]
    hs[-1].wait()
    order = [h.done() for h in hs]
    ck.true("async completion follows issue order", all(order), repr(order))

    # argument errors are local and immediate
    for bad, exc_type in ((lambda: c.allreduce(np.zeros(3, np.int32), op="mean"), TypeError),
                          (lambda: c.allreduce(np.zeros(3), op="prod"), ValueError),
                          (lambda: c.broadcast(np.zeros(3), root=n), ValueError),
                          (lambda: c.allreduce([1, 2, 3]), TypeError),
                          (lambda: c.allreduce(np.zeros(3, np.complex64)), TypeError)):
        try:
            bad()
            ck.true(f"raises {exc_type.__name__}", False)
        except exc_type:
            ck.count += 1

    if n > 1:
        mismatch_checks(c, ck)


def mismatch_checks(c, ck: Checker) -> None:
    n, r = c.size, c.rank
    cases = [
        ("shape", lambda: c.allreduce(np.zeros(10 + (r == n - 1), np.float32)),
         ["shape=(10,)", "shape=(11,)", f"rank {n - 1} called allreduce"]),
        ("dtype", lambda: c.allreduce(np.zeros(4, np.float64 if r == 0 else np.float32)),
         ["rank 0 called allreduce", "dtype=float64", "dtype=float32"]),
        ("op", lambda: c.allreduce(np.zeros(4), op="max" if r == 1 else "sum"),
         ["rank 1 called allreduce", "op=max", "op=sum"]),
        ("kind", lambda: (c.broadcast(np.zeros(4), root=0) if r == 0 else c.allreduce(np.zeros(4))),
         ["rank 0 called broadcast", "called allreduce"]),
    ]
    for name, call, musts in cases:
        try:
            call()
            ck.true(f"mismatch {name} raises", False, "no error")
        except CollectiveMismatchError as exc:
            msg = str(exc)
            ck.true(f"mismatch {name} message", all(m in msg for m in musts), msg)
            # Every rank must print the same diagnosis (only "seen by rank N" differs).
            ck.hashes[f"mismatch {name}"] = hashlib.sha256(msg.split(":", 1)[1].encode()).hexdigest()[:16]
    # Ranks in different collectives (one in barrier, the others in allreduce).
    try:
        if r == 0:
            c.barrier()
        else:
            c.allreduce(np.ones(3))
        ck.true("barrier vs allreduce raises", False)
    except CollectiveMismatchError as exc:
        ck.true("barrier vs allreduce message", "called barrier #" in str(exc) and "called allreduce #" in str(exc),
                str(exc))
    x = data(r, (50,), "float64")
    c.allreduce(x)
    ck.eq("usable after mismatches", x, expected("sum", n, (50,), "float64"))


def run_suite(args) -> dict:
    c = comm.init(args.backend, timeout=args.timeout)
    ck = Checker(c.rank)
    env_topo = comm.env.detect()
    algorithms = ["ring", "native"] if c.backend == "mpi" else ["ring"]
    t0 = time.perf_counter()
    try:
        suite(c, ck, algorithms)
    except Exception:  # noqa: BLE001 - reported to the test
        ck.failures.append(traceback.format_exc())
    result = dict(rank=c.rank, size=c.size, backend=c.backend, local_rank=c.local_rank, local_size=c.local_size,
                  env_rank=env_topo.rank, env_size=env_topo.size, checks=ck.count, failures=ck.failures,
                  hashes=ck.hashes, elapsed=time.perf_counter() - t0,
                  mpi_imported="mpi4py.MPI" in sys.modules, shared_buffers=getattr(ck, "shared_buffers", []),
                  hierarchical=c.hierarchical)
    comm.finalize()
    return result


def run_kill(args) -> dict:
    c = comm.init(args.backend, timeout=args.timeout)
    r = c.rank
    if args.shared:        # the victim dies while the others read its shared buffer / wait for it
        x = c.alloc(1 << 18, np.float32)
        x[...] = 1
    else:
        x = np.ones(1 << 18, np.float32)
    c.allreduce(x)
    c.barrier()
    if r == args.victim:
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)
    t0 = time.monotonic()
    try:
        for _ in range(1000):
            c.allreduce(x)
        outcome = {"error": None}
    except CommError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["elapsed"] = time.monotonic() - t0
    # Later calls fail at once with the original error.
    t1 = time.monotonic()
    try:
        c.barrier()
        outcome["after"] = None
    except CommError as exc:
        outcome["after"] = str(exc)
    outcome["after_elapsed"] = time.monotonic() - t1
    outcome.update(rank=r, size=c.size, backend=c.backend, shared=c.is_shared(x))
    return outcome


def run_timeout(args) -> dict:
    timeout = args.rank0_timeout if args.rank0_timeout and comm.env.detect().rank == 0 else args.timeout
    c = comm.init(args.backend, timeout=timeout)
    r = c.rank
    c.barrier()
    if r == args.victim:
        emit({"rank": r, "victim": True})
        time.sleep(args.timeout + 1.5)
        os._exit(0)
    t0 = time.monotonic()
    try:
        c.allreduce(np.ones(1000, np.float32))
        outcome = {"error": None}
    except CommError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc),
                   "is_timeout": isinstance(exc, CommTimeoutError)}
    outcome.update(rank=r, elapsed=time.monotonic() - t0)
    return outcome


def run_early_close(args) -> dict:
    """Rank --victim closes its communicator and idles; the others call one more all-reduce."""
    c = comm.init(args.backend, timeout=args.timeout)
    r = c.rank
    c.barrier()
    if r == args.victim:
        comm.finalize()
        time.sleep(3.0)  # the process stays alive; its BYE tells the others it closed on purpose
        return {"rank": r, "victim": True}
    t0 = time.monotonic()
    try:
        c.allreduce(np.ones(1000, np.float32))
        outcome = {"error": None}
    except CommError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome.update(rank=r, elapsed=time.monotonic() - t0)
    return outcome


def run_init(args) -> dict:
    t0 = time.monotonic()
    try:
        c = comm.init(args.backend, timeout=args.timeout)
        outcome = {"error": None, "rank": c.rank, "size": c.size}
        comm.finalize()
    except CommError as exc:
        outcome = {"error": type(exc).__name__, "message": str(exc)}
    outcome["elapsed"] = time.monotonic() - t0
    return outcome


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("scenario", choices=["suite", "kill", "timeout", "init", "early_close"])
    p.add_argument("--backend", default="auto")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--victim", type=int, default=1)
    p.add_argument("--shared", action="store_true", help="kill: all-reduce a Communicator.alloc buffer")
    p.add_argument("--rank0-timeout", type=float, default=0.0, help="timeout: rank 0 gives up after this instead")
    args = p.parse_args()
    fn = {"suite": run_suite, "kill": run_kill, "timeout": run_timeout, "init": run_init,
          "early_close": run_early_close}[args.scenario]
    try:
        result = fn(args)
    except Exception:  # noqa: BLE001
        result = {"fatal": traceback.format_exc()}
    emit(result)
    sys.stdout.flush()
    if args.scenario in ("kill", "timeout", "early_close"):
        # Close (ZeroMQ: lets our ABORT reach the neighbours), then leave without MPI_Finalize,
        # which could wait for the dead peer.
        comm.finalize(timeout=2)
        os._exit(0)


if __name__ == "__main__":
    main()
