"""All-reduce benchmark: ring over MPI, native MPI_Allreduce, ring over ZeroMQ, shared buffers, torch gloo.

Methods (columns): mpi-ring = comm ring over MPI; mpi-native = comm with
algorithm="native" (MPI_Iallreduce plus our fingerprint check); MPI_Allreduce = a
bare blocking mpi4py call, the baseline; zmq-ring = comm ring over ZeroMQ (shared
memory between ranks on one host; DPTRAIN_COMM_SHM=0 for TCP frames only);
mpi-shared / zmq-shared = the same communicators on a buffer from `comm.alloc`
(same-host shared buffers: each rank reads its peers' copies, only the
synchronisation goes through the transport; what DDP's buckets use);
gloo = torch.distributed all_reduce (skipped without torch).

    .venv/bin/python benchmarks/allreduce.py            # 2 ranks, 4 KB .. 64 MB, float32 sum
    .venv/bin/python benchmarks/allreduce.py --ranks 4 --reps 5 --json out.json

The script launches its own ranks (through the venv's mpiexec, so one set of
processes runs every method; each rank also joins the ZeroMQ and gloo groups) and
interleaves the methods size by size and repetition by repetition, so load from
other programs hits all of them alike.  Per method and size it prints the median
time per call over the repetitions, algbw = bytes / time and
busbw = algbw * 2 (n-1) / n (the nccl-tests definition: the bandwidth each link
would need).  Each method is checked for the right answer before it is timed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("mpi-ring", "mpi-native", "MPI_Allreduce", "mpi-shared", "zmq-ring", "zmq-shared", "gloo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, mult in (("KB", 1 << 10), ("MB", 1 << 20), ("GB", 1 << 30), ("K", 1 << 10), ("M", 1 << 20)):
        if text.endswith(suffix):
            return int(float(text[:-len(suffix)]) * mult)
    return int(text)


def _fmt_size(n: int) -> str:
    return f"{n >> 20} MB" if n >= 1 << 20 else f"{n >> 10} KB"


# ----------------------------------------------------------------------------------------------------------
# worker side


def _worker(args) -> None:
    import numpy as np

    sys.path.insert(0, ROOT)
    import comm

    mpi = comm.init("mpi", timeout=120)
    rank, n = mpi.rank, mpi.size
    methods = [m for m in args.methods.split(",") if m]
    runners = {}
    zmq_comm = None
    if "mpi-ring" in methods:
        runners["mpi-ring"] = lambda x: mpi.allreduce(x, algorithm="ring")
    if "mpi-native" in methods:
        runners["mpi-native"] = lambda x: mpi.allreduce(x, algorithm="native")
    if "MPI_Allreduce" in methods:
        from mpi4py import MPI  # already initialised by comm.init("mpi")

        world = MPI.COMM_WORLD

        def raw(x):
            world.Allreduce(MPI.IN_PLACE, x, MPI.SUM)
            return x
        runners["MPI_Allreduce"] = raw
    if "mpi-shared" in methods:
        runners["mpi-shared"] = lambda x: mpi.allreduce(x)
    if "zmq-ring" in methods or "zmq-shared" in methods:
        zmq_comm = comm.init("zmq", timeout=120)
        if "zmq-ring" in methods:
            runners["zmq-ring"] = lambda x: zmq_comm.allreduce(x)
        if "zmq-shared" in methods:
            runners["zmq-shared"] = lambda x: zmq_comm.allreduce(x)
    owners = {"mpi-shared": mpi, "zmq-shared": zmq_comm}
    if "gloo" in methods:
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            torch = None
        if torch is not None:
            torch.set_num_threads(1)
            dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.gloo_port}", rank=rank,
                                    world_size=n)

            def gloo(x):
                dist.all_reduce(torch.from_numpy(x))
                return x
            runners["gloo"] = gloo
    order = [m for m in METHODS if m in runners]
    dtype = np.dtype(args.dtype)
    results = {m: {} for m in order}
    for nbytes in [_parse_size(s) for s in args.sizes.split(",")]:
        count = max(1, nbytes // dtype.itemsize)
        plain = np.zeros(count, dtype=dtype)
        # the *-shared methods work on a buffer from alloc (collective, so every rank allocates it)
        bufs = {m: owners[m].alloc(count, dtype) if m in owners else plain for m in order}
        iters = {}
        for m in order:  # correctness first, then calibrate the number of calls per timing
            x = bufs[m]
            if m in owners and not owners[m].is_shared(x):
                raise SystemExit(f"{m}: comm.alloc did not return a shared buffer (DPTRAIN_COMM_SHM=0?)")
            check = x
            check[...] = (np.arange(count) % 5 + rank).astype(dtype)
            out = runners[m](check)
            expect = sum((np.arange(count) % 5 + k).astype(dtype) for k in range(n))
            if not np.array_equal(out, expect):
                raise SystemExit(f"{m}: wrong all-reduce result at {nbytes} bytes")
            x[...] = 0
            runners[m](x)
            t0 = time.perf_counter()
            runners[m](x)
            dt = time.perf_counter() - t0
            iters[m] = int(mpi.broadcast_obj(max(2, min(args.max_iters, int(args.batch_s / max(dt, 1e-6))))))
        samples = {m: [] for m in order}
        for _ in range(args.reps):
            for m in order:
                mpi.barrier()
                x = bufs[m]
                t0 = time.perf_counter()
                for _ in range(iters[m]):
                    runners[m](x)
                samples[m].append((time.perf_counter() - t0) / iters[m])
        for m in order:
            # A call is as slow as its slowest rank.
            worst = mpi.allgather_obj(statistics.median(samples[m]))
            results[m][nbytes] = max(worst)
    if rank == 0:
        print("@@RESULTS@@" + json.dumps({"ranks": n, "dtype": dtype.name, "results": results}), flush=True)
    if "gloo" in runners:
        import torch.distributed as dist

        dist.destroy_process_group()
    if zmq_comm is not None:
        zmq_comm.close()
    comm.finalize()


# ----------------------------------------------------------------------------------------------------------
# launcher side


def _print_table(data: dict, args) -> None:
    n = data["ranks"]
    results = data["results"]
    methods = [m for m in METHODS if m in results]
    factor = 2 * (n - 1) / n
    head1 = f"{'size':>8} |" + "|".join(f"{m:^29}" for m in methods)
    head2 = f"{'':>8} |" + "|".join(f"{'time us':>10}{'algbw':>9}{'busbw':>9} " for _ in methods)
    print(f"all-reduce {data['dtype']} sum, {n} ranks, median of {args.reps} reps; bandwidth in GB/s "
          f"(1e9 B/s), busbw = algbw*2(n-1)/n")
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"date {datetime.date.today().isoformat()}, host {platform.node()}, {os.cpu_count()} cores, "
          f"{platform.processor() or platform.machine()}, load average after the run {load} "
          f"(other programs share the cores)")
    print(head1)
    print(head2)
    print("-" * len(head2))
    sizes = sorted({int(s) for m in methods for s in results[m]})
    for nbytes in sizes:
        cells = []
        for m in methods:
            t = results[m].get(str(nbytes), results[m].get(nbytes))
            if t is None:
                cells.append(f"{'-':>28} ")
                continue
            algbw = nbytes / t / 1e9
            cells.append(f"{t * 1e6:>10.1f}{algbw:>9.2f}{algbw * factor:>9.2f} ")
        print(f"{_fmt_size(nbytes):>8} |" + "|".join(cells))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--sizes", default="4KB,16KB,64KB,256KB,1MB,4MB,16MB,64MB")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--reps", type=int, default=5, help="timed repetitions per method and size (median)")
    p.add_argument("--batch-s", type=float, default=0.1, help="target seconds per timed repetition")
    p.add_argument("--max-iters", type=int, default=500)
    p.add_argument("--json", help="also write the results to this file")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--gloo-port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _worker(args)
        return 0

    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = shutil.which("mpiexec") or ""
    if not mpiexec:
        print("mpiexec not found next to the Python interpreter nor on PATH; install mpich (pip install mpich)",
              file=sys.stderr)
        return 2
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               DPTRAIN_WORLD_SIZE=str(args.ranks), DPTRAIN_MASTER_ADDR="127.0.0.1",
               DPTRAIN_MASTER_PORT=str(_free_port()), PYTHONPATH=ROOT)
    # Each rank needs DPTRAIN_RANK too: Hydra gives PMI_RANK, so a tiny shell maps it.
    cmd = [mpiexec, "-n", str(args.ranks), "-launcher", "fork", "sh", "-c",
           'DPTRAIN_RANK=$PMI_RANK DPTRAIN_LOCAL_RANK=$PMI_RANK DPTRAIN_LOCAL_WORLD_SIZE=$PMI_SIZE exec "$0" "$@"',
           sys.executable, os.path.abspath(__file__), "--worker", "--gloo-port", str(_free_port()),
           "--sizes", args.sizes, "--dtype", args.dtype, "--methods", args.methods, "--reps", str(args.reps),
           "--batch-s", str(args.batch_s), "--max-iters", str(args.max_iters)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank it started
        proc.communicate()
        print(f"benchmark did not finish within {args.timeout:g} s (--timeout); with more ranks than cores "
              f"try fewer --sizes/--methods or a smaller --batch-s", file=sys.stderr)
        return 1
    data = None
    for line in out.splitlines():
        if line.startswith("@@RESULTS@@"):
            data = json.loads(line[len("@@RESULTS@@"):])
    if proc.returncode != 0 or data is None:
        sys.stderr.write(out[-4000:] + err[-4000:])
        print(f"benchmark ranks failed (exit code {proc.returncode})", file=sys.stderr)
        return 1
    _print_table(data, args)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(dict(data, date=datetime.datetime.now().isoformat(timespec="seconds"),
                           host=platform.node(), cores=os.cpu_count(), loadavg=os.getloadavg()), fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
