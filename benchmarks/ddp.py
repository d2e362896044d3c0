"""Data-parallel throughput: samples/s of the seed CNN at global batch 128.

Prints one table: dptrain DDP over ZeroMQ and over MPI, each also with the optimizer
sharded (cluster.ZeroRedundancyOptimizer, what the runtime uses), with 1 and 2 workers
x 1 thread, beside PyTorch DDP (gloo) in the same run when torch is installed.  On one
host DDP's buckets are same-host shared buffers (comm.alloc); the `DPTRAIN_COMM_SHM=0`
row turns them off, so its reductions go through MPI as they would between hosts.  Each
configuration runs as real worker processes; time is the median step time of
`--steps` steps after `--warmup` steps, measured on rank 0, and includes the
whole step (forward, backward with overlapped all-reduce, optimizer).  Every
configuration is launched `--repeats` times, round-robin with the others, and the
table shows the median launch, so a burst of load from elsewhere on a shared
machine hits all columns alike instead of one of them.

usage: python benchmarks/ddp.py [--steps 30] [--warmup 5] [--batch 128] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(threads=1):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DPTRAIN_", "OMPI_", "PMI_", "PMIX_", "SLURM_", "HYDRA_"))}
    env.update({"OMP_NUM_THREADS": str(threads), "OPENBLAS_NUM_THREADS": str(threads),
                "MKL_NUM_THREADS": str(threads), "PYTHONPATH": ROOT})
    return env


def _launch(kind, n, args):
    """Run this file in worker mode on n ranks; return rank 0's JSON result line."""
    me = os.path.abspath(__file__)
    argv = [sys.executable, me, "--worker", kind] + args
    no_shm = kind.endswith("-noshm")
    kind = kind.split("-")[0]                    # "mpi-zero" runs like "mpi"
    if kind == "mpi":
        env = _env()
        if no_shm:
            env["DPTRAIN_COMM_SHM"] = "0"
        env["DPTRAIN_COMM_BACKEND"] = "mpi"
        cmd = [os.path.join(os.path.dirname(sys.executable), "mpiexec"), "-n", str(n), "-launcher", "fork"] + argv
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        outs = [p.stdout]
        ok = p.returncode == 0
        err = p.stderr
    else:
        port = _port()
        procs = []
        for r in range(n):
            env = _env()
            env.update({"DPTRAIN_RANK": str(r), "DPTRAIN_WORLD_SIZE": str(n), "DPTRAIN_LOCAL_RANK": str(r),
                        "DPTRAIN_LOCAL_WORLD_SIZE": str(n), "DPTRAIN_MASTER_ADDR": "127.0.0.1",
                        "DPTRAIN_MASTER_PORT": str(port), "DPTRAIN_COMM_BACKEND": "zmq",
                        "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(r),
                        "WORLD_SIZE": str(n)})
            procs.append(subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        outs, err, ok = [], "", True
        for p in procs:
            o, e = p.communicate(timeout=600)
            outs.append(o)
            err += e
            ok &= p.returncode == 0
    if not ok:
        raise RuntimeError(f"{kind} x{n} failed:\n{err[-2000:]}")
    for o in outs:
        for line in o.splitlines():
            if line.startswith("RESULT "):
                return json.loads(line[7:])
    raise RuntimeError(f"{kind} x{n}: no result line")


def _data(n, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return (rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n).astype(np.int64))


def worker_dptrain(a):
    import numpy as np
    import cluster
    import engine
    from engine import optim
    from engine.nn import functional as F
    from cluster.zoo import build_model
    ctx = cluster.init()
    engine.manual_seed(0)
    model = build_model("seed_cnn")
    ddp = cluster.DistributedDataParallel(model, ctx.comm)
    if "-zero" in a.worker:
        opt = cluster.ZeroRedundancyOptimizer(ddp, optim.Adam, lr=1e-3)
    else:
        opt = optim.Adam(model.parameters(), lr=1e-3)
    local = a.batch // ctx.size
    x, y = _data(local * 8, seed=ctx.rank)
    times = []
    for i in range(a.warmup + a.steps):
        j = (i % 8) * local
        xb, yb = engine.tensor(x[j:j + local]), engine.tensor(y[j:j + local])
        ctx.comm.barrier()
        t = time.perf_counter()
        loss = F.cross_entropy(ddp(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    med = float(np.median(times[a.warmup:]))
    if ctx.rank == 0:
        print("RESULT " + json.dumps({"step_s": med, "samples_per_s": a.batch / med}), flush=True)


def worker_torch(a):
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch import nn
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(5408, 128), nn.ReLU(), nn.Linear(128, 10))
    if size > 1:
        model = nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    local = a.batch // size
    x, y = _data(local * 8, seed=rank)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    times = []
    for i in range(a.warmup + a.steps):
        j = (i % 8) * local
        dist.barrier()
        t = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x[j:j + local]), y[j:j + local])
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t)
    med = float(np.median(times[a.warmup:]))
    if rank == 0:
        print("RESULT " + json.dumps({"step_s": med, "samples_per_s": a.batch / med}), flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--worker", choices=["zmq", "mpi", "zmq-zero", "mpi-zero", "mpi-zero-noshm", "torch"])
    a = ap.parse_args()
    if a.worker == "torch":
        return worker_torch(a)
    if a.worker:
        return worker_dptrain(a)
    args = ["--steps", str(a.steps), "--warmup", str(a.warmup), "--batch", str(a.batch)]
    try:
        import torch  # noqa: F401
        have_torch = True
    except ImportError:
        have_torch = False
    rows = []
    kinds = [("dptrain DDP, ZeroMQ", "zmq"), ("dptrain DDP, MPI", "mpi"),
             ("dptrain DDP+ZeRO-1, ZeroMQ", "zmq-zero"), ("dptrain DDP+ZeRO-1, MPI", "mpi-zero"),
             ("same, DPTRAIN_COMM_SHM=0", "mpi-zero-noshm")]
    if have_torch:
        kinds.append(("torch 2.13 DDP, gloo", "torch"))
    import statistics
    runs = {(kind, n): [] for _, kind in kinds for n in (1, 2)}
    for _ in range(max(1, a.repeats)):
        for key in runs:
            runs[key].append(_launch(key[0], key[1], args)["samples_per_s"])
    for label, kind in kinds:
        s1, s2 = statistics.median(runs[(kind, 1)]), statistics.median(runs[(kind, 2)])
        # each 2-worker launch ran right after its 1-worker launch: the median of those ratios
        # cancels the machine's slow drift in speed, which the ratio of medians does not
        paired = statistics.median(b / a for a, b in zip(runs[(kind, 1)], runs[(kind, 2)]))
        rows.append((label, s1, s2, s2 / s1, paired))
    print(f"\nseed CNN, global batch {a.batch}, 1 thread per worker, median of {a.steps} steps, median of "
          f"{max(1, a.repeats)} launches — "
          f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores")
    print(f"| {'implementation':<28} | {'1 worker (samples/s)':>20} | {'2 workers (samples/s)':>21} | "
          f"{'scaling':>7} | {'paired':>6} |")
    print(f"|{'-' * 30}|{'-' * 22}:|{'-' * 23}:|{'-' * 8}:|{'-' * 7}:|")
    for label, s1, s2, sc, paired in rows:
        print(f"| {label:<28} | {s1:>20.0f} | {s2:>21.0f} | {sc:>6.2f}x | {paired:>5.2f}x |")
    print("scaling = median 2-worker / median 1-worker figure; paired = median of the per-launch ratios "
          "(each 2-worker launch against the 1-worker launch just before it)")
    if not have_torch:
        print("(torch is not installed: `pip install torch==2.13.0` adds the PyTorch DDP row)")


if __name__ == "__main__":
    main()
