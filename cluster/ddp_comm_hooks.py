"""`torch.distributed.algorithms.ddp_comm_hooks` for ported scripts: the two stock hooks.

    from cluster.ddp_comm_hooks import default_hooks as default      # was: from torch...ddp_comm_hooks
    ddp_model.register_comm_hook(state=None, hook=default.fp16_compress_hook)

Why only these: they are what most scripts register (fp16 compression for slow links), and our
DistributedDataParallel does the same work itself (`compression="fp16"`); the hooks are markers
that register_comm_hook recognises, not functions it calls.
"""
from __future__ import annotations

from types import SimpleNamespace

__all__ = ["default_hooks"]


def allreduce_hook(state, bucket):
    """Plain averaging all-reduce (the default)."""
    raise RuntimeError("pass this to DistributedDataParallel.register_comm_hook; it is not called directly")


def fp16_compress_hook(state, bucket):
    """Divide by the world size, all-reduce as float16, widen back to float32."""
    raise RuntimeError("pass this to DistributedDataParallel.register_comm_hook; it is not called directly")


def bf16_compress_hook(state, bucket):
    """Divide by the world size, all-reduce as bfloat16 (added in float32), widen back to float32."""
    raise RuntimeError("pass this to DistributedDataParallel.register_comm_hook; it is not called directly")


default_hooks = SimpleNamespace(allreduce_hook=allreduce_hook, fp16_compress_hook=fp16_compress_hook,
                                bf16_compress_hook=bf16_compress_hook)
