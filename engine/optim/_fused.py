"""Where the fused multi-tensor update from engine.kernels plugs in (optional).

The per-parameter path in each optimizer (`_update`) is the reference and the
CPU default.  On GPU, ~10 small kernel launches per parameter per step are
latency-bound, so when the parameters are cupy arrays the optimizers hand a
whole param group to one multi-tensor kernel from `engine.kernels`
(optim_fused.py / optim_fused.cu, owned by the kernels package):

    engine.kernels.adam(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps,
                        weight_decay, decoupled)                 # decoupled=True is AdamW
    engine.kernels.sgd_momentum(params, grads, bufs_or_None, lr, momentum, dampening,
                                weight_decay, nesterov, first_step)

Both take lists of raw arrays of one dtype, update in place, and implement the
same PyTorch formulas.  `step` / `first_step` are per call, so the optimizer
calls once per distinct (dtype, step count) bucket of the group.

Per group, `fused=None` (default) uses the kernel for cupy parameters only,
`fused=True` always (also on numpy, through the kernel's CPU path - how the
hook is tested without a GPU) and errors when it cannot, `fused=False` never.
Adam with amsgrad=True and RMSprop have no fused kernel and always take the
reference path.
"""
from __future__ import annotations

_KERNELS = {"adam": "adam", "sgd": "sgd_momentum"}


def lookup(name: str):
    """engine.kernels' fused update for `name` ("adam", "sgd"), or None if it is not there."""
    try:
        from .. import kernels
    except ImportError:
        return None
    return getattr(kernels, _KERNELS.get(name, ""), None)


def is_gpu(array) -> bool:
    return type(array).__module__.split(".", 1)[0] == "cupy"
