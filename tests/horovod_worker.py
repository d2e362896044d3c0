"""cluster.horovod on N ranks (run by tests/test_horovod.py).

Every rank trains with hvd.DistributedOptimizer on its own batches and compares its parameters
with a reference computed here in one process from all ranks' batches (the mean of the ranks'
gradients, or for backward_passes_per_step=2 the mean of the ranks' summed micro-batch
gradients).  It also exercises the collectives on tensors and the optimizer's error paths, and
writes one JSON file (argv[1] + ".rank<r>.json") that the test checks.
"""
import hashlib
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
from engine import nn, optim  # noqa: E402
from engine.nn import functional as F  # noqa: E402

import cluster.horovod as hvd  # noqa: E402


def batches(rank, n=4):
    rng = np.random.default_rng(200 + rank)
    return [(rng.standard_normal((5, 6)).astype(np.float32), rng.integers(0, 3, 5)) for _ in range(n)]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 12)
        self.fc2 = nn.Linear(12, 3)
        self.unused = nn.Linear(2, 2)            # takes no part in the loss on any rank: no gradient

    def forward(self, x):
        return self.fc2(engine.tanh(self.fc1(x)))


def build(seed=3):
    engine.manual_seed(seed)
    return Net()


def digest(model):
    h = hashlib.sha256()
    for _, p in sorted(model.state_dict().items()):
        h.update(np.ascontiguousarray(p.data if hasattr(p, "data") else p).tobytes())
    return h.hexdigest()


def distance(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return max(float(np.max(np.abs(sa[k].data - sb[k].data))) for k in sa)


def grads_of(model, x, y):
    model.zero_grad()
    F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
    return {n: (p.grad.data.copy() if p.grad is not None else np.zeros(p.shape, np.float32))
            for n, p in model.named_parameters()}


def reference(size, make_opt, steps=3, passes=1, op="mean", predivide=False):
    """One process: at every step the ranks' gradients (each the sum over `passes` micro-batches)
    are averaged (or summed) and the optimizer steps."""
    model = build()
    opt = make_opt(model)
    data = [batches(r, steps * passes) for r in range(size)]
    for s in range(steps):
        total = None
        for r in range(size):
            g = None
            for k in range(passes):
                gk = grads_of(model, *data[r][s * passes + k])
                g = gk if g is None else {n: g[n] + gk[n] for n in g}
            total = g if total is None else {n: total[n] + g[n] for n in total}
        for n, p in model.named_parameters():
            v = total[n] / size if op == "mean" else total[n]
            p.grad = engine.Tensor._wrap(v.astype(np.float32))
        opt.step()
    return model


def train(rank, make_opt, steps=3, passes=1, **kw):
    model = build()
    opt = hvd.DistributedOptimizer(make_opt(model), named_parameters=model.named_parameters(),
                                   backward_passes_per_step=passes, **kw)
    data = batches(rank, steps * passes)
    for s in range(steps):
        opt.zero_grad()
        for k in range(passes):
            x, y = data[s * passes + k]
            F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
        opt.step()
    return model, opt


def sgd(model):
    return optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def adam(model):
    return optim.Adam(model.parameters(), lr=0.01)


def main():
    hvd.init()
    r, n = hvd.rank(), hvd.size()
    res = {"rank": r, "size": n, "local_rank": hvd.local_rank(), "local_size": hvd.local_size(),
           "cross_rank": hvd.cross_rank(), "cross_size": hvd.cross_size(), "homogeneous": hvd.is_homogeneous(),
           "initialized": hvd.is_initialized()}

    # -- the optimizer against the one-process reference
    for name, make, kw, ref_kw in [("sgd", sgd, {}, {}), ("adam", adam, {}, {}),
                                   ("sum", sgd, {"op": hvd.Sum}, {"op": "sum"}),
                                   ("predivide", sgd, {"gradient_predivide_factor": 2.0}, {}),
                                   ("fp16", sgd, {"compression": hvd.Compression.fp16}, {}),
                                   ("passes", adam, {"passes": 2}, {"passes": 2})]:
        model, opt = train(r, make, **kw)
        ref = reference(n, make, **ref_kw)
        res[name] = {"diff": distance(model, ref), "digest": digest(model),
                     "isinstance": isinstance(opt, type(make(build())))}

    # -- synchronize, clip, then step without a second reduction
    model = build()
    opt = hvd.DistributedOptimizer(sgd(model), named_parameters=model.named_parameters())
    x, y = batches(r, 1)[0]
    F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
    opt.synchronize()
    norm = float(nn.utils.clip_grad_norm_(model.parameters(), 0.01))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with opt.skip_synchronize():
            opt.step()
    res["clip"] = {"norm": norm, "digest": digest(model), "warned": len(caught)}
    F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
    opt.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.step()                                       # after synchronize(): Horovod warns
    res["clip"]["warned_after"] = [str(w.message)[:40] for w in caught]
    res["unused_grad"] = model.unused.weight.grad is None

    # -- misuse: zero_grad between backward and step; more passes than declared
    opt.zero_grad()
    F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
    try:
        opt.zero_grad()
        res["zero_grad_error"] = None
    except AssertionError as e:
        res["zero_grad_error"] = str(e)
    opt.step()
    opt.zero_grad()
    F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
    try:
        F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
        res["passes_error"] = None
    except AssertionError as e:
        res["passes_error"] = str(e)
    opt.synchronize()

    # -- a learning-rate scheduler drives the wrapped optimizer
    sched = optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    sched.step()
    res["lr_after_sched"] = opt.param_groups[0]["lr"]

    # -- broadcast_parameters / broadcast_optimizer_state from rank 0
    model = build(seed=10 + r)                           # every rank starts elsewhere
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    res["broadcast_parameters"] = digest(model)
    opt = optim.Adam(model.parameters(), lr=0.01, betas=(0.8, 0.9))
    if r == 0:                                           # only rank 0 has trained (e.g. loaded a checkpoint)
        for x, y in batches(0, 2):
            opt.zero_grad()
            F.cross_entropy(model(engine.tensor(x)), engine.tensor(y)).backward()
            opt.step()
    else:
        opt.param_groups[0]["lr"] = 0.5
    hvd.broadcast_parameters(model.named_parameters(), root_rank=0)
    hvd.broadcast_optimizer_state(opt, root_rank=0)
    sd = opt.state_dict()
    h = hashlib.sha256(json.dumps({"groups": sd["param_groups"]}, sort_keys=True, default=str).encode())
    for k in sorted(sd["state"]):
        for key, v in sorted(sd["state"][k].items()):
            h.update(f"{k}{key}".encode())
            h.update(np.ascontiguousarray(v).tobytes() if hasattr(v, "shape") else repr(v).encode())
    res["optimizer_state"] = {"digest": h.hexdigest(), "lr": opt.param_groups[0]["lr"],
                              "entries": len(sd["state"]), "betas": list(opt.param_groups[0]["betas"])}

    # -- collectives on tensors
    t = engine.tensor(np.full((2, 3), r + 1.0, dtype=np.float32))
    res["allreduce_avg"] = hvd.allreduce(t).data.tolist()
    res["allreduce_sum"] = hvd.allreduce(t, op=hvd.Sum).data.tolist()
    res["allreduce_average_false"] = hvd.allreduce(t, average=False).data.tolist()
    res["allreduce_max"] = hvd.allreduce(t, op=hvd.Max).data.tolist()
    res["allreduce_min"] = hvd.allreduce(t, op=hvd.Min).data.tolist()
    res["allreduce_int_avg"] = hvd.allreduce(engine.tensor(np.array([r * 3 + 1], dtype=np.int64))).data.tolist()
    res["allreduce_scaled"] = hvd.allreduce(t, op=hvd.Sum, prescale_factor=2.0, postscale_factor=0.5).data.tolist()
    res["allreduce_fp16"] = hvd.allreduce(t, compression=hvd.Compression.fp16).data.tolist()
    res["input_unchanged"] = t.data.tolist()
    u = engine.tensor(np.array([float(r)], dtype=np.float32))
    hvd.allreduce_(u, op=hvd.Sum)
    res["allreduce_inplace"] = u.data.tolist()
    h1 = hvd.allreduce_async(engine.tensor(np.array([1.0, r], dtype=np.float32)), op=hvd.Sum)
    res["poll"] = hvd.poll(h1)
    res["async"] = hvd.synchronize(h1).data.tolist()
    res["grouped"] = [g.data.tolist() for g in hvd.grouped_allreduce(
        [engine.tensor(np.array([r], dtype=np.float32)), engine.tensor(np.array([2.0 * r], dtype=np.float32))],
        op=hvd.Sum)]
    rows = engine.tensor(np.full((r + 1, 2), float(r), dtype=np.float32))      # rank r has r + 1 rows
    res["allgather"] = hvd.allgather(rows).data.tolist()
    b = engine.tensor(np.array([r + 5.0, 0.0], dtype=np.float32))
    res["broadcast"] = hvd.broadcast(b, root_rank=n - 1).data.tolist()
    res["broadcast_keeps_input"] = b.data.tolist()
    hvd.broadcast_(b, root_rank=n - 1)
    res["broadcast_inplace"] = b.data.tolist()
    rs = engine.tensor(np.arange(2 * n + 1, dtype=np.float32).reshape(2 * n + 1, 1) * (r + 1))
    res["reducescatter"] = hvd.reducescatter(rs, op=hvd.Sum).data.ravel().tolist()
    a2a_in = engine.tensor(np.array([[10 * r + k] for k in range(n + 1)], dtype=np.float32))
    splits = engine.tensor(np.array([2] + [1] * (n - 1), dtype=np.int32))      # rank 0 gets two rows
    out, recv = hvd.alltoall(a2a_in, splits=splits)
    res["alltoall"] = {"out": out.data.ravel().tolist(), "recv": recv.data.tolist()}
    res["broadcast_object"] = hvd.broadcast_object({"epoch": 3 + r, "name": f"rank{r}"}, root_rank=0)
    res["allgather_object"] = hvd.allgather_object(r * r)
    try:
        hvd.broadcast_object(object(), root_rank=0)
        res["pickle_refused"] = None
    except Exception as e:  # noqa: BLE001
        res["pickle_refused"] = type(e).__name__
    try:
        hvd.allgather(engine.tensor(np.zeros((2, 2 + r), dtype=np.float32)))
        res["allgather_mismatch"] = None
    except ValueError as e:
        res["allgather_mismatch"] = str(e)
    hvd.barrier()
    if r == n - 1:
        time.sleep(0.5)                                  # the last rank arrives last
    res["join"] = hvd.join()
    with open(f"{sys.argv[1]}.rank{r}.json", "w") as f:
        json.dump(res, f)
    hvd.shutdown()
    res_closed = hvd.is_initialized()
    assert res_closed is False


if __name__ == "__main__":
    main()
