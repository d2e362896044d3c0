"""torch.backends' everyday switches, so device-selection and cuDNN boilerplate ports unchanged.

PyTorch examples pick their device with `torch.backends.mps.is_available()` and set
`torch.backends.cudnn.benchmark = True` / `.deterministic = True` before training.  The engine has
no Apple-GPU backend and no cuDNN, so MPS reports unavailable (the example falls back to the CPU,
as on any non-Mac machine) and the cuDNN flags are plain attributes that change nothing.
"""
from __future__ import annotations

import types

from . import backend

__all__ = ["mps", "cudnn"]

mps = types.ModuleType("engine.backends.mps", "Apple's Metal backend: never available here.")
mps.is_available = lambda: False
mps.is_built = lambda: False

cudnn = types.ModuleType("engine.backends.cudnn",
                         "cuDNN flags, accepted and ignored (the engine's GPU path does not use cuDNN).")
cudnn.enabled = True
cudnn.benchmark = False
cudnn.deterministic = False
cudnn.allow_tf32 = True
cudnn.is_available = lambda: False
cudnn.version = lambda: None


class _Cuda:
    """torch.backends.cuda.is_built(), as torch: whether a CUDA-capable build (here: cupy) is present."""

    @staticmethod
    def is_built() -> bool:
        return backend.gpu_available()


cuda = _Cuda()
