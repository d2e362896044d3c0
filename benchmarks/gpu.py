"""GPU benchmark: engine step time on cupy beside PyTorch CUDA, and each fused kernel's bandwidth.

1. Step time (forward + backward + Adam step, batch 128, median of --steps after --warmup) of the seed
   CNN  Conv2d(1,32,3) relu, MaxPool2d(2), Flatten, Linear(5408,128) relu, Linear(128,10)
   and the seed LSTM  LSTM(28,128,batch_first) + Linear(128,10) on the last step's output,
   for dptrain on cupy and for PyTorch on CUDA when torch has CUDA.
2. Achieved bandwidth of every kernel in engine.kernels (bytes the kernel must read + write / time),
   as a fraction of the device's measured device-to-device copy bandwidth (cupy memcpy, read + write).

Without cupy or a CUDA device it prints one line saying so and exits 0.

usage: python benchmarks/gpu.py [--steps 50] [--warmup 10] [--batch 128] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

from engine import kernels as K  # noqa: E402


def gpu_timer(cp, fn, reps=20, warmup=3):
    """Median milliseconds of fn() measured with CUDA events (device time, not host time)."""
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    times = []
    for _ in range(reps):
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


# ------------------------------------------------------------------------------------------ step time


def _engine_models():
    from engine import nn  # noqa: PLC0415 -- engine.nn is written by another helper; import lazily

    class SeedLSTM(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(28, 128, batch_first=True)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1])

    cnn = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5408, 128),
                        nn.ReLU(), nn.Linear(128, 10))
    return {"seed_cnn": (cnn, (1, 28, 28)), "seed_lstm": (SeedLSTM(), (28, 28))}


def engine_step_ms(cp, model, in_shape, batch, steps, warmup):
    import engine  # noqa: PLC0415
    from engine import nn, optim  # noqa: PLC0415
    model.to("cuda:0")
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = engine.tensor(rng.standard_normal((batch,) + in_shape).astype(np.float32), device="cuda:0")
    y = engine.tensor(rng.integers(0, 10, batch), device="cuda:0")
    times = []
    for i in range(warmup + steps):
        cp.cuda.Device().synchronize()
        t0 = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        cp.cuda.Device().synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def torch_step_ms(name, batch, steps, warmup):
    try:
        import torch  # noqa: PLC0415
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    nn = torch.nn
    dev = torch.device("cuda")
    if name == "seed_cnn":
        model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(5408, 128),
                              nn.ReLU(), nn.Linear(128, 10))
        x = torch.randn(batch, 1, 28, 28, device=dev)
        fwd = model
    else:
        lstm, fc = nn.LSTM(28, 128, batch_first=True), nn.Linear(128, 10)
        model = nn.ModuleList([lstm, fc])
        x = torch.randn(batch, 28, 28, device=dev)

        def fwd(inp):
            return fc(lstm(inp)[0][:, -1])
    model.to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    y = torch.randint(0, 10, (batch,), device=dev)
    times = []
    for i in range(warmup + steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(fwd(x), y).backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


# ------------------------------------------------------------------------------------------ bandwidth


def copy_bandwidth(cp, nbytes=256 << 20):
    """Device-to-device memcpy, counted as read + write (GB/s): the roofline every kernel is measured against."""
    src = cp.empty(nbytes, dtype=cp.uint8)
    dst = cp.empty_like(src)
    ms = gpu_timer(cp, lambda: dst.data.copy_from_device(src.data, nbytes))
    return 2 * nbytes / ms / 1e6


def kernel_bandwidths(cp, batch_div=1):
    """(name, bytes, ms) per kernel on sizes large enough to be bandwidth-bound (batch_div shrinks them)."""
    rng = np.random.default_rng(0)
    nb = 128 // batch_div
    f32 = np.float32
    out = []

    def add(name, nbytes, fn):
        out.append((name, nbytes, gpu_timer(cp, fn)))

    x = cp.asarray(rng.standard_normal((nb, 32, 64, 64)).astype(f32))
    col = K.im2col(x, 3, 3, 1, 1, 1, 1)
    add(f"im2col 3x3 ({nb},32,64,64)", x.nbytes + col.nbytes, lambda: K.im2col(x, 3, 3, 1, 1, 1, 1))
    add(f"col2im 3x3 ({nb},32,64,64)", x.nbytes + col.nbytes, lambda: K.col2im(col, 64, 64, 1, 1, 1, 1))
    del col
    z = cp.asarray(rng.standard_normal((64 * nb, 4096)).astype(f32))
    y = cp.asarray(rng.integers(0, 4096, 64 * nb))
    loss, lse = K.softmax_xent_forward(z, y, 0.1, -100, "mean")
    add(f"softmax_xent fwd ({64 * nb},4096)", z.nbytes + y.nbytes + 2 * lse.nbytes,
        lambda: K.softmax_xent_forward(z, y, 0.1, -100, "mean"))
    g = cp.asarray(np.float32(1.0))
    add(f"softmax_xent bwd ({64 * nb},4096)", 2 * z.nbytes + y.nbytes + lse.nbytes,
        lambda: K.softmax_xent_backward(z, y, lse, g, 0.1, -100, "mean"))
    del z
    a = cp.asarray(rng.standard_normal((nb, 64, 56, 56)).astype(f32))
    b = cp.asarray(rng.standard_normal(64).astype(f32))
    ya = K.bias_act_forward(a, b, "gelu")
    add(f"bias+gelu fwd ({nb},64,56,56)", 2 * a.nbytes, lambda: K.bias_act_forward(a, b, "gelu"))
    add("bias+relu bwd (dz, then dbias)", 4 * a.nbytes, lambda: K.bias_act_backward(a, "relu", y=ya, bias=b, x=a))
    del ya
    shapes = [(32 * nb, 4096), (4096,), (8 * nb, 4096), (1024,), (10, 1024)] * 4
    ps = [cp.asarray(rng.standard_normal(s).astype(f32)) for s in shapes]
    gs = [cp.asarray(rng.standard_normal(s).astype(f32)) for s in shapes]
    st = [[cp.zeros_like(p) for p in ps] for _ in range(2)]
    nbytes = sum(p.nbytes for p in ps)
    add(f"sgd momentum ({len(ps)} tensors)", 5 * nbytes,
        lambda: K.sgd_momentum(ps, gs, st[0], 0.01, 0.9, 0.0, 0.0, False, False))
    add(f"adam ({len(ps)} tensors)", 7 * nbytes, lambda: K.adam(ps, gs, st[0], st[1], 3, 1e-3))
    offsets, total = K.layout(gs)
    flat = cp.empty(total, cp.float32)
    add(f"bucket pack ({len(gs)} tensors)", 2 * nbytes, lambda: K.pack(gs, flat, offsets))
    add(f"bucket unpack x1/world", 2 * nbytes, lambda: K.unpack(flat, gs, offsets, 0.5))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)

    if not K.available():
        print("benchmarks/gpu.py: no CUDA device or cupy not installed -- nothing to measure (pip install "
              "'dptrain[gpu]' on a machine with an NVIDIA GPU)")
        return 0
    import cupy as cp  # noqa: PLC0415
    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    results = {"device": name, "batch": args.batch, "step_ms": {}, "kernels": []}
    print(f"device: {name}")

    print(f"\nstep time, batch {args.batch}, Adam, median of {args.steps} steps (ms)")
    print(f"{'model':<12}{'dptrain (cupy)':>16}{'torch cuda':>14}")
    try:
        models = _engine_models()
    except Exception as exc:  # engine.nn not complete yet: still measure the kernels
        models = {}
        print(f"  (engine models unavailable: {exc})")
    for mname, (model, shape) in models.items():
        try:
            ours = engine_step_ms(cp, model, shape, args.batch, args.steps, args.warmup)
        except Exception as exc:
            ours = None
            print(f"  {mname}: engine step failed: {type(exc).__name__}: {exc}")
        ref = torch_step_ms(mname, args.batch, args.steps, args.warmup)
        results["step_ms"][mname] = {"dptrain": ours, "torch": ref}
        fmt = lambda v: f"{v:.2f}" if v is not None else "n/a"  # noqa: E731
        print(f"{mname:<12}{fmt(ours):>16}{fmt(ref):>14}")

    bw = copy_bandwidth(cp)
    results["copy_gbps"] = bw
    print(f"\nkernel bandwidth (device-to-device copy: {bw:.0f} GB/s, read + write)")
    print(f"{'kernel':<34}{'ms':>9}{'GB/s':>9}{'of copy':>9}")
    for kname, nbytes, ms in kernel_bandwidths(cp):
        gbps = nbytes / ms / 1e6
        results["kernels"].append({"kernel": kname, "ms": ms, "gbps": gbps, "fraction_of_copy": gbps / bw})
        print(f"{kname:<34}{ms:>9.3f}{gbps:>9.0f}{gbps / bw:>8.0%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
