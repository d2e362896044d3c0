"""DDP join() on N ranks with uneven numbers of batches (run by tests/test_join.py).

Rank r has 3 + 2r batches.  Every case trains inside `with ddp.join():` and compares the
parameters each rank ends with against a reference computed here in one process: at step i
the gradients of the ranks that still have a batch are summed and divided by the world
size (or by the number of those ranks), then the optimizer steps.  Each rank writes one
JSON file (argv[1] + ".rank<r>.json") with, per case, its distance to the reference and a digest of its parameters
(all ranks must end with the same model).
"""
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
from engine import nn, optim  # noqa: E402
from engine.nn import functional as F  # noqa: E402

import cluster  # noqa: E402


def batches(rank, n=None):
    rng = np.random.default_rng(100 + rank)
    count = 3 + 2 * rank if n is None else n
    return [(rng.standard_normal((4, 6)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(count)]


def build(bn=False):
    engine.manual_seed(7)
    layers = [nn.Linear(6, 16), nn.Tanh()]
    if bn:
        layers.append(nn.BatchNorm1d(16))
    layers += [nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers)


def make_opt(kind, params):
    if kind == "adam":
        return optim.Adam(params, lr=0.05)
    return optim.SGD(params, lr=0.1, momentum=0.9)


def flat(model):
    return np.concatenate([np.asarray(v.data, np.float64).ravel() for v in model.state_dict().values()])


def digest(model):
    return hashlib.sha256(b"".join(np.ascontiguousarray(v.data).tobytes()
                                   for v in model.state_dict().values())).hexdigest()[:16]


def reference(size, opt_kind, divide_by_initial, schedule, extra=0):
    """One process: the averaged step of the ranks that still have a batch (then `extra` steps
    in which every rank has one)."""
    model = build()
    opt = make_opt(opt_kind, model.parameters())
    sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if schedule else None
    data = [batches(r) for r in range(size)]
    rows = [[d[i] for d in data if i < len(d)] for i in range(max(len(d) for d in data))]
    rows += [[more(r, extra)[j] for r in range(size)] for j in range(extra)]
    for row in rows:
        opt.zero_grad()
        for x, y in row:
            F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
        divisor = size if divide_by_initial else len(row)
        for p in model.parameters():
            p.grad.data[...] = p.grad.data / divisor
        opt.step()
        if sched:
            sched.step()
    return flat(model)


def more(rank, n):
    rng = np.random.default_rng(200 + rank)
    return [(rng.standard_normal((4, 6)).astype(np.float32), rng.integers(0, 3, 4)) for _ in range(n)]


def train(ctx, opt_kind="sgd", divide_by_initial=True, zero=False, schedule=False, bn=False,
          compression=None, overlap="auto", throw=False, pass_opt=False, extra=0):
    model = build(bn)
    ddp = cluster.DistributedDataParallel(model, ctx.comm, bucket_cap_mb=0.0005, overlap=overlap,
                                          compression=compression)
    if zero:
        opt = cluster.ZeroRedundancyOptimizer(ddp, optim.Adam if opt_kind == "adam" else optim.SGD,
                                              **({"lr": 0.05} if opt_kind == "adam" else {"lr": 0.1, "momentum": 0.9}))
        sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if schedule else None
    else:
        opt = make_opt(opt_kind, model.parameters())
        sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5) if schedule else None
    steps, error = 0, None
    try:
        join = (cluster.Join([ddp, opt], divide_by_initial_world_size=divide_by_initial) if pass_opt else
                ddp.join(divide_by_initial_world_size=divide_by_initial, throw_on_early_termination=throw))
        with join:
            for x, y in batches(ctx.rank):
                step(ddp, opt, sched, x, y)
                steps += 1
    except cluster.JoinError as e:
        error = str(e)
    for x, y in more(ctx.rank, extra):      # afterwards every rank has batches again
        step(ddp, opt, sched, x, y)
    return model, steps, error


def step(ddp, opt, sched, x, y):
    loss = F.cross_entropy(ddp(engine.tensor(x)), engine.tensor(y))
    opt.zero_grad()
    loss.backward()
    opt.step()
    if sched:
        sched.step()


def accumulate(ctx):
    """no_sync inside join: rank r has 2 + r pairs of micro-batches; the first of each pair is
    accumulated locally, the second reduces the sum."""
    model = build()
    ddp = cluster.DistributedDataParallel(model, ctx.comm, bucket_cap_mb=0.0005)
    opt = make_opt("sgd", model.parameters())
    data = batches(ctx.rank, n=2 * (2 + ctx.rank))
    with ddp.join():
        for i in range(0, len(data), 2):
            opt.zero_grad()
            with ddp.no_sync():
                F.cross_entropy(ddp(engine.tensor(data[i][0])), engine.tensor(data[i][1])).backward()
            F.cross_entropy(ddp(engine.tensor(data[i + 1][0])), engine.tensor(data[i + 1][1])).backward()
            opt.step()
    ref = build()
    ropt = make_opt("sgd", ref.parameters())
    all_data = [batches(r, n=2 * (2 + r)) for r in range(ctx.size)]
    for i in range(0, max(len(d) for d in all_data), 2):
        ropt.zero_grad()
        for d in all_data:
            for x, y in d[i:i + 2]:
                F.cross_entropy(ref(engine.tensor(x)), engine.tensor(y)).backward()
        for p in ref.parameters():
            p.grad.data[...] = p.grad.data / ctx.size
        ropt.step()
    return model, ref


def main():
    ctx = cluster.init(timeout=30)
    out = {}
    cases = {
        "sgd": dict(),
        "sgd_overlap": dict(overlap=True),
        "sgd_active_divisor": dict(divide_by_initial=False),
        "adam_zero_schedule": dict(opt_kind="adam", zero=True, schedule=True),
        "sgd_zero_active_divisor": dict(zero=True, divide_by_initial=False),
        "adam_schedule": dict(opt_kind="adam", schedule=True),
        "sgd_fp16": dict(compression="fp16"),
        # the plain optimizer joins too: its state stays alike, so training goes on after the context
        "adam_joined_then_even": dict(opt_kind="adam", schedule=True, pass_opt=True, extra=2),
    }
    for name, kw in cases.items():
        model, steps, _ = train(ctx, **kw)
        ref = reference(ctx.size, kw.get("opt_kind", "sgd"), kw.get("divide_by_initial", True),
                        kw.get("schedule", False), kw.get("extra", 0))
        out[name] = {"diff": float(np.abs(flat(model) - ref).max()), "digest": digest(model), "steps": steps}
    model, steps, _ = train(ctx, bn=True)
    out["batchnorm"] = {"digest": digest(model), "steps": steps}
    model, steps, error = train(ctx, throw=True)
    out["throw"] = {"steps": steps, "error": error}
    model, ref = accumulate(ctx)
    out["no_sync"] = {"diff": float(np.abs(flat(model) - flat(ref)).max()), "digest": digest(model)}
    # after all of that the communicator is still in step: one more collective agrees
    out["after"] = float(ctx.comm.allreduce(np.ones(1), op="sum")[0])
    # one file per rank: under mpiexec the ranks share one stdout, where long lines can interleave
    with open(f"{sys.argv[1]}.rank{ctx.rank}.json", "w") as fh:
        json.dump({"rank": ctx.rank, **out}, fh)


if __name__ == "__main__":
    main()
