"""ZeroRedundancyOptimizer checks on N ranks (run by tests/test_zero.py under mpiexec or ZeroMQ).

Trains the seed CNN twice from the same start, once with DDP + Adam and once with DDP +
ZeroRedundancyOptimizer(Adam), with gradient clipping; then checks that parameters and
the consolidated optimizer state are identical, and that a state dict moves both ways
(plain -> sharded, sharded -> plain) and training continues identically.  Rank 0
prints one JSON line with the differences.
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
from engine import optim  # noqa: E402
from engine.nn import functional as F  # noqa: E402
from engine.nn.utils import clip_grad_norm_  # noqa: E402

import cluster  # noqa: E402
from cluster.zoo import build_model  # noqa: E402


def make(ctx, zero):
    engine.manual_seed(1)
    model = build_model("seed_cnn", channels=4, hidden=16)
    ddp = cluster.DistributedDataParallel(model, ctx.comm, bucket_cap_mb=0.002)
    if zero:
        opt = cluster.ZeroRedundancyOptimizer(ddp, optim.Adam, lr=1e-2, weight_decay=1e-3)
    else:
        opt = optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-3)
    return model, ddp, opt


def train(ctx, model, ddp, opt, steps, start=0):
    rng = np.random.default_rng(0)
    x = rng.random((64, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, 64)
    per = 16 // ctx.size
    norms = []
    for s in range(start, start + steps):
        j = (s % 4) * 16 + ctx.rank * per
        loss = F.cross_entropy(ddp(engine.tensor(x[j:j + per])), engine.tensor(y[j:j + per]))
        opt.zero_grad()
        loss.backward()
        if isinstance(opt, cluster.ZeroRedundancyOptimizer):
            norms.append(opt.clip_grad_norm_(0.5))
        else:
            norms.append(float(clip_grad_norm_(model.parameters(), 0.5)))
        opt.step()
    return norms


def accumulate(ctx, zero):
    """Gradient accumulation: two micro-batches under no_sync(), then a synchronised one."""
    model, ddp, opt = make(ctx, zero)
    rng = np.random.default_rng(ctx.rank)
    for _ in range(3):
        opt.zero_grad()
        for micro in range(3):
            x = engine.tensor(rng.random((4, 1, 28, 28), dtype=np.float32))
            y = engine.tensor(rng.integers(0, 10, 4))
            if micro < 2:
                with ddp.no_sync():
                    F.cross_entropy(ddp(x), y).backward()
            else:
                F.cross_entropy(ddp(x), y).backward()
        opt.step()
    return params(model)


def params(model):
    return np.concatenate([np.asarray(v.data, np.float64).ravel() for v in model.state_dict().values()])


def state(sd):
    return np.concatenate([np.asarray(sd["state"][k][name], np.float64).ravel()
                           for k in sorted(sd["state"]) for name in ("exp_avg", "exp_avg_sq")])


def main():
    ctx = cluster.init()
    plain = make(ctx, False)
    zero = make(ctx, True)
    n_plain = train(ctx, *plain, steps=6)
    n_zero = train(ctx, *zero, steps=6)
    sd_plain, sd_zero = plain[2].state_dict(), zero[2].state_dict()
    out = {"param_diff": float(np.abs(params(plain[0]) - params(zero[0])).max()),
           "norm_diff": float(np.abs(np.array(n_plain) - np.array(n_zero)).max()),
           "state_diff": float(np.abs(state(sd_plain) - state(sd_zero)).max()),
           "same_keys": sorted(sd_plain["state"]) == sorted(sd_zero["state"]),
           "steps": [sd_zero["state"][k]["step"] for k in sorted(sd_zero["state"])][:2],
           "clipped": bool(max(n_plain) > 0.5)}
    # plain -> sharded and sharded -> plain, then 3 more steps each
    a = make(ctx, True)
    a[2].load_state_dict(sd_plain)
    a[0].load_state_dict(plain[0].state_dict())
    b = make(ctx, False)
    b[2].load_state_dict(sd_zero)
    b[0].load_state_dict(zero[0].state_dict())
    train(ctx, *plain, steps=3, start=6)
    train(ctx, *a, steps=3, start=6)
    train(ctx, *b, steps=3, start=6)
    # step() without a new backward since zero_grad updates nothing (as with .grad None)
    before = params(a[0])
    a[2].zero_grad()
    a[2].step()
    out["stale_step_diff"] = float(np.abs(params(a[0]) - before).max())
    # a parameter whose array is replaced is no longer updated by the shards: a clear error
    p0 = next(iter(a[0].parameters()))
    p0.data = p0.data.copy()
    try:
        a[2].step()
        out["guard"] = "no error"
    except RuntimeError as exc:
        out["guard"] = str(exc)
    out["resume_into_zero_diff"] = float(np.abs(params(plain[0]) - params(a[0])).max())
    out["resume_from_zero_diff"] = float(np.abs(params(plain[0]) - params(b[0])).max())
    out["no_sync_diff"] = float(np.abs(accumulate(ctx, False) - accumulate(ctx, True)).max())
    if ctx.rank == 0:
        print("RESULT " + json.dumps(out), flush=True)
    ctx.comm.barrier()


if __name__ == "__main__":
    main()
