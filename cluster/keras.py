"""Data-parallel training for engine.keras models: Horovod's recipe for our Keras facade.

Why: a Keras user should not have to rewrite `model.fit` as an engine loop to use several
workers.  Three pieces, each the Keras-side face of something the cluster layer already has:

    import cluster
    from cluster import keras as dpk
    ctx = cluster.init()
    model = ...; model.compile(...)                   # built (input_shape given), as usual
    dpk.distribute(model, ctx.comm)                   # rank 0's weights everywhere; gradients averaged
    x_local, y_local = dpk.shard(x, y, comm=ctx.comm) # equal, interleaved shares of the data
    model.fit(x_local, y_local, batch_size=global_batch // ctx.size,
              callbacks=[dpk.MetricAverageCallback(ctx.comm)], verbose=1 if ctx.rank == 0 else 0)

`distribute` wraps the model's weights in `DistributedDataParallel`: their gradients are
averaged in buckets during every backward (the Keras optimizer then applies the same update on
every rank), and the weights start from rank 0's.  With shuffle=False and interleaved shards,
N workers at batch B/N take exactly the steps one worker takes at batch B.
"""
from __future__ import annotations

import numpy as np

from engine.keras.callbacks import Callback

from .ddp import DistributedDataParallel, average_metrics

__all__ = ["distribute", "shard", "MetricAverageCallback"]


def distribute(model, comm=None, bucket_cap_mb: float = 25):
    """Make `model` (an engine.keras model, built) train data-parallel over `comm`; returns the
    DistributedDataParallel handle (also kept on the model).  Collective: call on every rank."""
    if not getattr(model, "built", False) or not list(model.parameters()):
        raise ValueError(f'distribute: model "{getattr(model, "name", model)}" has no weights yet; give its first '
                         "layer input_shape= (or build it on a batch) before distributing it")
    if getattr(model, "_dptrain_ddp", None) is not None:
        return model._dptrain_ddp
    ddp = DistributedDataParallel(model, comm, bucket_cap_mb=bucket_cap_mb)
    model._dptrain_ddp = ddp      # the gradient hooks refer to it: keep it as long as the model
    # Weights that got no gradient in a step (a branch the loss does not use) would leave their
    # bucket unreduced and the ranks drifting apart: complete the all-reduce (with zeros for them)
    # before every update.  A no-op when backward already finished it.
    hooks = getattr(model, "_before_update", None)
    if hooks is None:
        raise TypeError(f"distribute: {type(model).__name__} is not an engine.keras model; wrap engine.nn models "
                        "in cluster.DistributedDataParallel instead")
    hooks.append(ddp.synchronize)
    _draw_for_the_global_batch(model, ddp.comm)
    return ddp


def _draw_for_the_global_batch(model, comm) -> None:
    """Random layers (Dropout, the augmentation layers) must draw under data parallelism what one
    worker would draw for the global batch: every rank starts from rank 0's random state, and each
    training step runs inside engine.random.batch_shard, so a layer draws for all rows and keeps
    this rank's (rows rank, rank + size, ..., the rows `shard` gives it)."""
    import json
    from engine import random as erandom
    if comm.size < 2:
        return
    state = comm.broadcast_obj(json.dumps(erandom.get_state()), root=0)   # 128-bit ints: not msgpack
    erandom.set_state(json.loads(state))
    step = model._train_step

    def sharded_step(*args, **kwargs):
        with erandom.batch_shard(comm.rank, comm.size):
            return step(*args, **kwargs)
    model._train_step = sharded_step


def shard(*arrays, comm=None, rank=None, size=None):
    """This rank's share of each array: rows rank, rank + size, ... of the first
    len // size * size rows, so every rank gets the same number of rows (and runs the same
    number of steps, which the per-step all-reduce requires)."""
    if comm is not None:
        rank, size = comm.rank, comm.size
    if rank is None or size is None:
        raise ValueError("shard: pass comm= (or rank= and size=)")
    if not arrays:
        raise ValueError("shard: pass at least one array")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(f"shard: the arrays have different lengths {[len(a) for a in arrays]}")
    keep = n // size * size
    if keep == 0:
        raise ValueError(f"shard: {n} rows cannot be split over {size} ranks")
    out = tuple(np.asarray(a)[rank:keep:size] for a in arrays)
    return out if len(out) > 1 else out[0]


class MetricAverageCallback(Callback):
    """Replace each epoch's logs (loss, metrics, val_*) by their mean over all ranks, so History,
    EarlyStopping and checkpoints see the global figures (collective: every rank must use it; list
    it before the callbacks that read the logs, since callbacks run in list order)."""

    def __init__(self, comm):
        super().__init__()
        self.comm = comm

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            # a multi-value metric (Precision(thresholds=[...])) is averaged value by value
            flat = {}
            for k, v in logs.items():
                if isinstance(v, (list, tuple)):
                    flat.update({f"{k}\x00{i}": float(x) for i, x in enumerate(v)})
                else:
                    flat[k] = float(v)
            mean = average_metrics(self.comm, flat)
            for k, v in list(logs.items()):
                logs[k] = [mean[f"{k}\x00{i}"] for i in range(len(v))] if isinstance(v, (list, tuple)) else mean[k]
