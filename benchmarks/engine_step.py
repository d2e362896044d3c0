"""Engine speed: one training step (forward + backward + Adam) of the seed models, ours vs PyTorch.

Models (same shapes in both frameworks, synthetic data, fixed seeds):
  seed CNN   batch 128: Conv2d(1,32,3)+ReLU, MaxPool2d(2), Flatten, Linear(5408,128)+ReLU, Linear(128,10),
             CrossEntropyLoss, Adam(lr=1e-3)
  seed CNN via engine.keras: the same network through the Keras facade (NHWC input, fused loss)
  seed LSTM  batch 64, 28 steps x 28 features: LSTM(28,128) batch_first, Linear(128,10) on the last step

Each thread count runs in its own subprocess with OMP_NUM_THREADS / OPENBLAS_NUM_THREADS /
MKL_NUM_THREADS set before numpy loads (BLAS thread pools are fixed at load time; no
threadpoolctl dependency) and torch.set_num_threads.  Ours and PyTorch are measured in
alternating rounds inside the same process, so a busy neighbour on a shared machine slows
both alike; the figure is the median step time after warm-up.

    python benchmarks/engine_step.py                 # 1 and 2 threads
    python benchmarks/engine_step.py --threads 1 --steps 60 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from functools import partial

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
WORKER_TIMEOUT_S = 900


# ------------------------------------------------------------------ step builders (worker side)

def _framework(name):
    """(seed, nn, optim, tensor) of one framework: our engine.nn mirrors torch.nn, so one model
    definition below serves both and the comparison is the same program twice."""
    if name == "torch":
        import torch
        from torch import nn, optim
        return torch.manual_seed, nn, optim, torch.as_tensor
    import engine
    from engine import nn, optim
    return engine.manual_seed, nn, optim, engine.tensor


def _seed_cnn(nn):
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(5408, 128), nn.ReLU(), nn.Linear(128, 10))


def _seed_lstm(nn):
    class LSTMModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(28, 128, 1, batch_first=True)
            self.fc = nn.Linear(128, 10)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1, :])
    return LSTMModel()


def _train_step(framework, build, sample_shape, batch):
    """A closure running one forward + backward + Adam step on fixed synthetic data."""
    import numpy as np
    seed, nn, optim, tensor = _framework(framework)
    seed(0)
    model = build(nn)
    opt = optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x = tensor(rng.random((batch,) + sample_shape, dtype=np.float32))
    y = tensor(rng.integers(0, 10, batch))

    def step():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()
    return step


def _ours_keras_cnn(batch):
    import numpy as np
    from engine.keras import layers, models, utils
    utils.set_random_seed(0)
    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        layers.MaxPooling2D((2, 2)), layers.Flatten(),
        layers.Dense(128, activation="relu"), layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    rng = np.random.default_rng(0)
    x = rng.random((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        return model.train_on_batch(x, y)
    return step


CASES = [  # (row label, batch, ours builder, torch builder)
    ("seed CNN (engine.nn)", 128, partial(_train_step, "ours", _seed_cnn, (1, 28, 28)),
     partial(_train_step, "torch", _seed_cnn, (1, 28, 28))),
    ("seed CNN (engine.keras)", 128, _ours_keras_cnn, partial(_train_step, "torch", _seed_cnn, (1, 28, 28))),
    ("seed LSTM (engine.nn)", 64, partial(_train_step, "ours", _seed_lstm, (28, 28)),
     partial(_train_step, "torch", _seed_lstm, (28, 28))),
]


def _time_steps(step, n):
    out = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        out.append(time.perf_counter() - t)
    return out


def worker(threads, steps, warmup, rounds):
    import statistics
    try:
        import torch
        torch.set_num_threads(threads)
        have_torch = True
    except ImportError:
        have_torch = False
    results = []
    for label, batch, ours_b, torch_b in CASES:
        ours = ours_b(batch)
        theirs = torch_b(batch) if have_torch else None
        _time_steps(ours, warmup)
        if theirs:
            _time_steps(theirs, warmup)
        t_ours, t_torch = [], []
        per_round = max(1, steps // rounds)
        for _ in range(rounds):                    # alternate so machine noise hits both alike
            t_ours += _time_steps(ours, per_round)
            if theirs:
                t_torch += _time_steps(theirs, per_round)
        results.append({
            "model": label, "batch": batch, "threads": threads,
            "ours_ms": 1000 * statistics.median(t_ours),
            "torch_ms": 1000 * statistics.median(t_torch) if t_torch else None,
            "steps": len(t_ours),
        })
    print(json.dumps(results), flush=True)


# ------------------------------------------------------------------ driver

def run_threads(threads, args):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads),
           "--steps", str(args.steps), "--warmup", str(args.warmup), "--rounds", str(args.rounds)]
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=WORKER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"benchmark worker with {threads} thread(s) did not finish in {WORKER_TIMEOUT_S} s; "
                         "the machine is overloaded or a step hangs - rerun with fewer --steps")
    if proc.returncode != 0:
        raise SystemExit(f"benchmark worker with {threads} thread(s) failed (exit {proc.returncode}):\n"
                         + proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per model and framework")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4, help="alternations ours/torch (noise control)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(int(args.threads), args.steps, args.warmup, args.rounds)
        return
    rows = []
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for t in [int(v) for v in args.threads.split(",") if v.strip()]:
        rows += run_threads(t, args)
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    try:
        import torch
        tv = f"PyTorch {torch.__version__}"
    except ImportError:
        tv = "PyTorch (not installed)"
    head = f"{'model':<26} {'batch':>5} {'threads':>7} {'dptrain ms/step':>16} {tv + ' ms/step':>24} {'ratio':>7}"
    print(f"Training step (forward + backward + Adam), median of {args.steps} steps after {args.warmup} "
          f"warm-up, CPU ({os.cpu_count()} cores, load average {load0:.1f} -> {load1:.1f}: other work on the "
          f"machine inflates both columns); ratio = dptrain / PyTorch (< 1: dptrain faster)")
    print(head)
    print("-" * len(head))
    for r in rows:
        tm = f"{r['torch_ms']:.1f}" if r["torch_ms"] else "-"
        ratio = f"{r['ours_ms'] / r['torch_ms']:.2f}" if r["torch_ms"] else "-"
        print(f"{r['model']:<26} {r['batch']:>5} {r['threads']:>7} {r['ours_ms']:>16.1f} {tm:>24} {ratio:>7}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
