"""`cluster.stop_requested()`: let a user script take part in a clean stop (SIGTERM, a time limit).

Why: the built-in training loop answers the launcher's stop request by saving a checkpoint at its
next metrics step; a `job.script` cannot be asked, so the launcher stops it at once.  A script
that calls this at a point where stopping is safe (every N batches) tells the launcher so (the
flag travels with its heartbeats), and the launcher then lets it finish cleanly too: on True,
save what is needed to resume and exit 0.  keras.callbacks.BackupAndRestore does this by itself.

With `comm`, the answer is agreed by every rank (one tiny all-reduce: every rank must call it at
the same point, e.g. the same batch index), so all of them stop after the same step.
"""
from __future__ import annotations

import numpy as np

__all__ = ["stop_requested"]


def stop_requested(comm=None) -> bool:
    """True once the launcher asked the job to save and stop; False outside a dptrain worker."""
    from .heartbeat import CoordinatorClient
    client = CoordinatorClient.from_env()
    asked = False
    if client.enabled:
        client.honours_stop = True
        asked = bool(client.stop_pending)
    if comm is not None and getattr(comm, "size", 1) > 1:
        flag = np.array([1.0 if asked else 0.0], dtype=np.float32)
        comm.allreduce(flag, op="max")
        asked = bool(flag[0] > 0)
    return asked
