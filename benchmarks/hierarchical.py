"""Two hosts over a rate-limited link: flat ring vs two-level ring all-reduce (comm/hierarchy.py).

Builds two network namespaces joined by a veth pair whose two directions are each
limited to --rate (tc tbf, default 1gbit: a commodity Ethernet link between two
boxes), starts --per-host ranks in each namespace under that namespace's hostname (so
the communicator sees two hosts), and times a float32 sum all-reduce per size with
the two-level ring and with DPTRAIN_COMM_HIERARCHICAL=0 (the flat ring over all
ranks).  Launches alternate between the two so drift hits both alike; the figure is
the median call time over all repetitions.  Within a namespace the ranks talk through
ZeroMQ with same-host shared-memory slots, as on a real host.

Bytes each direction of the link carries per all-reduce of S bytes, N = hosts x L ranks:
flat ring 2(N-1)/N * S, two-level 2(H-1)/H * S.  With 2 hosts x 2 ranks that is 1.5 S vs S.
A third variant times the two-level ring with DistributedDataParallel's fp16 compression
(float16 on the wire, S/2 bytes, the conversions counted).

    sudo .venv/bin/python benchmarks/hierarchical.py                 # needs root and iproute2
    .venv/bin/python benchmarks/hierarchical.py --rate 1gbit --per-host 2 --sizes 1M,4M,16M
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADDRS = ["10.232.0.1", "10.232.0.2"]


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def _size(text: str) -> int:
    text = text.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    return int(float(text.rstrip("KMG")) * mult)


def _worker(args) -> None:
    sys.path.insert(0, ROOT)
    import numpy as np
    import comm
    c = comm.init("zmq", timeout=120)
    out = {}
    for nbytes in args.sizes:
        x = np.ones(nbytes // 4, dtype=np.float32)
        c.allreduce(x)                                   # warm-up (connections, shm slots)
        if not np.all(x == c.size):
            raise SystemExit(f"wrong all-reduce result on rank {c.rank}")
        times = []
        for _ in range(args.reps):
            x[...] = 1
            c.barrier()
            t = time.perf_counter()
            if args.fp16:        # DistributedDataParallel(compression="fp16"): divide, halve, reduce, widen
                half = (x * np.float32(1.0 / c.size)).astype(np.float16)
                c.allreduce(half)
                x[...] = half
            elif args.bf16:      # compression="bf16": bfloat16 on the wire, added in float32
                from comm.arrays import from_bf16, to_bf16
                half = to_bf16(x * np.float32(1.0 / c.size))
                c.allreduce(half, op="bf16_sum")
                from_bf16(half, out=x)
            else:
                c.allreduce(x)
            times.append(time.perf_counter() - t)
        out[nbytes] = times
    if c.rank == 0:
        print("RESULT " + json.dumps({"hierarchical": c.hierarchical, "times": out}), flush=True)
    comm.finalize()


class TwoHosts:
    """Two namespaces and a veth pair, each direction shaped to `rate`; removed on exit."""

    def __init__(self, rate: str):
        tag = uuid.uuid4().hex[:6]
        self.ns = [f"dph{tag}a", f"dph{tag}b"]
        self.rate = rate
        self._veth = [f"ha{tag}", f"hb{tag}"]

    def __enter__(self):
        try:
            for n in self.ns:
                _sh("ip", "netns", "add", n)
                _sh("ip", "-n", n, "link", "set", "lo", "up")
            _sh("ip", "link", "add", self._veth[0], "type", "veth", "peer", "name", self._veth[1])
            for n, v, a in zip(self.ns, self._veth, ADDRS):
                _sh("ip", "link", "set", v, "netns", n)
                _sh("ip", "-n", n, "addr", "add", f"{a}/24", "dev", v)
                _sh("ip", "-n", n, "link", "set", v, "up")
                _sh("ip", "netns", "exec", n, "tc", "qdisc", "add", "dev", v, "root", "tbf", "rate", self.rate,
                    "burst", "256kb", "latency", "50ms")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for n in self.ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)


def _launch(hosts: TwoHosts, per_host: int, hierarchical: bool, args, codec: str = "") -> dict:
    n = 2 * per_host
    port = 29000 + os.getpid() % 1000
    procs = []
    for r in range(n):
        h = r // per_host
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DPTRAIN_", "PMI_", "OMPI_", "SLURM_"))}
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=ROOT, DPTRAIN_RANK=str(r),
                   DPTRAIN_WORLD_SIZE=str(n), DPTRAIN_MASTER_ADDR=ADDRS[0], DPTRAIN_MASTER_PORT=str(port),
                   DPTRAIN_COMM_ADDR=ADDRS[h], DPTRAIN_COMM_HIERARCHICAL="1" if hierarchical else "0")
        cmd = ["ip", "netns", "exec", hosts.ns[h], "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"',
               f"host{h}", sys.executable, os.path.abspath(__file__), "--worker",
               "--sizes", ",".join(str(s) for s in args.sizes), "--reps", str(args.reps)] + ([f"--{codec}"] if codec else [])
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = []
    for p in procs:
        try:
            so, se = p.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise RuntimeError("a rank did not finish within 600 s")
        if p.returncode != 0:
            for q in procs:
                q.kill()
            raise RuntimeError(f"a rank failed (exit {p.returncode}):\n{se[-2000:]}")
        outs.append(so)
    for line in outs[0].splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            if res["hierarchical"] != hierarchical:
                raise RuntimeError(f"expected hierarchical={hierarchical}, the communicator chose otherwise")
            return {int(k): v for k, v in res["times"].items()}
    raise RuntimeError("rank 0 printed no result")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rate", default="1gbit", help="tc rate of each direction of the link (default 1gbit)")
    ap.add_argument("--per-host", type=int, default=2, help="ranks per host (default 2)")
    ap.add_argument("--sizes", default="1M,4M,16M", help="all-reduce sizes in bytes (K/M suffixes)")
    ap.add_argument("--reps", type=int, default=5, help="timed calls per size and launch")
    ap.add_argument("--launches", type=int, default=2, help="launches per variant, alternating")
    ap.add_argument("--fp16", action="store_true", help=argparse.SUPPRESS)   # worker: the compressed paths
    ap.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.sizes = [_size(s) for s in str(args.sizes).split(",")]
    if args.worker:
        _worker(args)
        return 0
    missing = [t for t in ("ip", "tc", "unshare") if shutil.which(t) is None]
    if os.geteuid() != 0 or missing:
        print(f"benchmarks/hierarchical.py needs root and iproute2/tc/unshare (missing: {missing or 'root'})",
              file=sys.stderr)
        return 2
    variants = {"flat": (False, ""), "two": (True, ""), "fp16": (True, "fp16"), "bf16": (True, "bf16")}
    times = {v: {s: [] for s in args.sizes} for v in variants}
    with TwoHosts(args.rate) as hosts:
        for _ in range(args.launches):
            for name, (hier, codec) in variants.items():
                for s, t in _launch(hosts, args.per_host, hier, args, codec).items():
                    times[name][s] += t
    n = 2 * args.per_host
    print(f"All-reduce (float32 sum, ZeroMQ) across 2 hosts x {args.per_host} ranks over a {args.rate} link "
          f"(network namespaces + tc on {platform.node()}, {os.cpu_count()} cores, "
          f"{datetime.date.today().isoformat()}); median of {args.reps * args.launches} calls")
    print(f"{'size':>8} {'flat ring ms':>13} {'two-level ms':>13} {'speed-up':>9} {'+ fp16 ms':>10} "
          f"{'speed-up':>9} {'+ bf16 ms':>10} {'speed-up':>9}   link bytes per direction (flat / two-level / "
          f"compressed)")
    print("-" * 130)
    for s in args.sizes:
        flat, two, f16, b16 = (statistics.median(times[v][s]) for v in ("flat", "two", "fp16", "bf16"))
        mb = s / (1 << 20)
        print(f"{mb:>6.0f}MB {1e3 * flat:>13.1f} {1e3 * two:>13.1f} {flat / two:>8.2f}x {1e3 * f16:>10.1f} "
              f"{flat / f16:>8.2f}x {1e3 * b16:>10.1f} {flat / b16:>8.2f}x   "
              f"{2 * (n - 1) / n * mb:.1f} MB / {mb:.1f} MB / {mb / 2:.1f} MB")
    print("+ fp16 / + bf16: DistributedDataParallel(compression=...): the float32 buffer divided by the world "
          "size, sent as 16 bits and reduced (float16 arithmetic / bfloat16 added in float32), widened back; "
          "conversions included in the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
