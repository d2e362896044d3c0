"""torch.set_num_threads / get_num_threads: the BLAS thread pool's size, changed while running.

Why: ported scripts call `torch.set_num_threads(1)` so that several workers on one machine
do not oversubscribe its cores (Horovod's examples all do).  The engine's compute threads are
BLAS's, and numpy's bundled OpenBLAS can be resized at runtime through its C API; this finds
the copy numpy loaded (Linux: /proc/self/maps) and calls it.  Where that is not possible (a
BLAS without the call, or another OS) set_num_threads warns once and OMP_NUM_THREADS /
OPENBLAS_NUM_THREADS before start-up remain the way.
"""
from __future__ import annotations

import ctypes
import os
import warnings

__all__ = ["set_num_threads", "get_num_threads"]

_SETTERS = ("scipy_openblas_set_num_threads64_", "openblas_set_num_threads64_", "openblas_set_num_threads")
_GETTERS = ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads")
_api = {}


def _openblas():
    """(setter, getter) of the OpenBLAS numpy uses, or (None, None)."""
    if "fns" not in _api:
        __import__("numpy")                          # loads the BLAS first
        setter = getter = None
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
        except OSError:
            paths = []
        for path in paths:
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            setter = next((getattr(lib, n) for n in _SETTERS if hasattr(lib, n)), None)
            getter = next((getattr(lib, n) for n in _GETTERS if hasattr(lib, n)), None)
            if setter is not None:
                if getter is not None:
                    getter.restype = ctypes.c_int
                break
        _api["fns"] = (setter, getter)
    return _api["fns"]


def set_num_threads(n: int) -> None:
    """Use n threads for BLAS (matrix products, convolutions) in this process from now on."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: need a positive number of threads, got {n}")
    setter, _ = _openblas()
    if setter is None:
        if not _api.get("warned"):
            _api["warned"] = True
            warnings.warn("engine.set_num_threads: this NumPy's BLAS cannot be resized while running; set "
                          "OMP_NUM_THREADS / OPENBLAS_NUM_THREADS before starting Python instead", stacklevel=2)
        return
    setter(ctypes.c_int(n))


def get_num_threads() -> int:
    """The BLAS thread count (OMP_NUM_THREADS or the core count where it cannot be asked)."""
    _, getter = _openblas()
    if getter is not None:
        return int(getter())
    raw = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or ""
    return int(raw) if raw.isdigit() and int(raw) > 0 else (os.cpu_count() or 1)
