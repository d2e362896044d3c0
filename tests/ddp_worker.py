"""A data-parallel training job used by the DDP tests (run under mpiexec or with DPTRAIN_* env).

usage: ddp_worker.py OUT_PREFIX --model mlp_bn --steps 20 --global-batch 16 [--bucket-mb 0.01]

Every rank trains with SGD (momentum) on a fixed synthetic dataset; rank 0 writes the
final parameters to OUT_PREFIX.safetensors and every rank writes its DDP event log and
hook times to OUT_PREFIX.rank<r>.json.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import engine  # noqa: E402
from engine import optim  # noqa: E402
from engine.data import DataLoader, TensorDataset  # noqa: E402
from engine.nn import functional as F  # noqa: E402
from engine.random import batch_shard  # noqa: E402

import cluster  # noqa: E402
from cluster.zoo import build_model  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--model", default="mlp_bn")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--global-batch", type=int, default=16)
    ap.add_argument("--bucket-mb", type=float, default=25.0)
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--overlap", choices=["auto", "true", "false"], default="auto")
    ap.add_argument("--zero", action="store_true", help="shard SGD's state with ZeroRedundancyOptimizer")
    ap.add_argument("--compression", default=None, help="DistributedDataParallel(compression=...)")
    ap.add_argument("--hook", action="store_true", help="fp16 through register_comm_hook, as torch scripts do")
    a = ap.parse_args()

    ctx = cluster.init()
    engine.manual_seed(a.seed)
    kwargs = {"hidden": 32} if a.model.startswith("mlp") else {"channels": 4, "hidden": 16}
    model = build_model(a.model, **kwargs)
    # SyncBatchNorm at every size, so 1 and N workers use the same normalisation arithmetic.
    model = cluster.convert_sync_batchnorm(model, ctx.comm)
    # Registered before DDP's own hooks, so it records when the first layer's gradient is ready,
    # before DDP packs it into the last bucket.
    first_param = next(iter(model.parameters()))
    hook_times = []
    first_param.register_post_accumulate_grad_hook(lambda p: hook_times.append(time.perf_counter()))
    overlap = {"auto": "auto", "true": True, "false": False}[a.overlap]
    ddp = cluster.DistributedDataParallel(model, ctx.comm, bucket_cap_mb=a.bucket_mb, overlap=overlap,
                                          compression=a.compression)
    if a.hook:
        from cluster.ddp_comm_hooks import default_hooks
        ddp.register_comm_hook(state=None, hook=default_hooks.fp16_compress_hook)
    if a.zero:
        opt = cluster.ZeroRedundancyOptimizer(ddp, optim.SGD, lr=0.05, momentum=0.9)
    else:
        opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    rng = np.random.default_rng(0)
    n = a.global_batch * 10
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    ds = TensorDataset(x, y)
    sampler = cluster.DistributedSampler(ds, ctx.rank, ctx.size, shuffle=True, seed=a.seed)
    loader = DataLoader(ds, batch_size=a.global_batch // ctx.size, sampler=sampler, drop_last=True)

    step, epoch, log = 0, 0, []
    while step < a.steps:
        loader.set_epoch(epoch)
        for xb, yb in loader:
            with batch_shard(ctx.rank, ctx.size):
                out = ddp(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            end = time.perf_counter()
            opt.step()
            log.append({"events": [list(e) for e in ddp.events], "backward_end": end,
                        "first_param_hook": hook_times[-1] if hook_times else None})
            step += 1
            if step == a.steps:
                break
        epoch += 1
    if ctx.rank == 0:
        engine.save({k: v for k, v in model.state_dict().items()}, a.out + ".safetensors")
    with open(f"{a.out}.rank{ctx.rank}.json", "w") as f:
        json.dump({"size": ctx.size, "backend": getattr(ctx.comm, "backend", "?"),
                   "buckets": len(ddp.buckets), "overlap": ddp.overlap, "log": log,
                   "shared": all(ctx.comm.is_shared(b.flat) and (b.param_flat is None or ctx.comm.is_shared(b.param_flat))
                                 for b in ddp.buckets),
                   "hierarchical": getattr(ctx.comm, "hierarchical", False)}, f)
    ctx.comm.barrier()


if __name__ == "__main__":
    main()
