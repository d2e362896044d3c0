"""Runtime plumbing shared by the kernel modules: array-module dispatch, lazy CuPy, compiled-kernel cache, launches.

Why a module of its own: every public kernel function does the same three things -- decide numpy vs cupy
from its inputs, fetch a kernel compiled once per (source, dtype), launch it with a grid-stride grid -- and
doing them in one place keeps the per-kernel modules about the math.  Nothing here imports cupy at import
time: on a CPU-only machine `import engine.kernels` must stay cheap and must not fail.
"""
from __future__ import annotations

import threading

import numpy as np

from . import _source

_lock = threading.Lock()
_available = None          # cached answer of available()
_modules = {}              # cu file name -> cupy.RawModule (compiled once, holds both dtypes)
_functions = {}            # (cu file, kernel name) -> cupy.RawKernel
_elementwise = {}          # spec name -> cupy.ElementwiseKernel (cupy compiles per dtype on first use)

#: dtype -> suffix of the `extern "C"` kernel names in the .cu files (one instantiation per float type).
DTYPE_SUFFIX = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

#: threads per block of every grid-stride launch; a multiple of the warp size (softmax_xent relies on it).
BLOCK = 256
#: cap on the grid: grid-stride loops cover the rest, and a moderate grid keeps launch cost flat.
MAX_GRID = 65535 * 8


def is_cupy(x) -> bool:
    """True when `x` is a cupy array, decided without importing cupy (CPU runs never pay for it)."""
    return type(x).__module__.split(".", 1)[0] == "cupy"


def cupy():
    """Import cupy on demand; a clear message instead of a bare ImportError when it is missing."""
    try:
        import cupy as cp  # noqa: PLC0415 -- lazy on purpose
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "a cupy array reached engine.kernels but cupy cannot be imported "
            f"({exc}); install the GPU extra: pip install -e '.[gpu]' in the dptrain checkout "
            f"(cupy-cuda12x)") from exc
    return cp


def available() -> bool:
    """True when cupy imports and at least one CUDA device is visible. Cached after the first call."""
    global _available
    if _available is None:
        try:
            import cupy as cp  # noqa: PLC0415
            _available = cp.cuda.runtime.getDeviceCount() > 0
        except Exception:  # ImportError, CUDARuntimeError (no driver), ...
            _available = False
    return _available


def float_suffix(dtype) -> str:
    """Kernel-name suffix for a float dtype; other dtypes get one readable error naming the fix."""
    try:
        return DTYPE_SUFFIX[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"engine.kernels supports float32 and float64 arrays, got {np.dtype(dtype)}; "
                        "cast with .astype(numpy.float32) first") from None


def raw_kernel(cu_file: str, name: str):
    """The RawKernel `name` from `cu_file`, compiling the whole file once per process (NVRTC, cupy's disk cache)."""
    key = (cu_file, name)
    fn = _functions.get(key)
    if fn is not None:
        return fn
    cp = cupy()
    with _lock:
        mod = _modules.get(cu_file)
        if mod is None:
            mod = cp.RawModule(code=_source.load(cu_file))
            _modules[cu_file] = mod
        fn = mod.get_function(name)
        _functions[key] = fn
    return fn


def elementwise_kernel(spec_name: str):
    """The cupy.ElementwiseKernel for a registered spec; cupy compiles it once per dtype signature."""
    k = _elementwise.get(spec_name)
    if k is not None:
        return k
    cp = cupy()
    spec = _source.ELEMENTWISE[spec_name]
    with _lock:
        k = cp.ElementwiseKernel(spec.in_params, spec.out_params, spec.operation, spec.name,
                                 preamble=_source.load(spec.preamble_file) if spec.preamble_file else "")
        _elementwise[spec_name] = k
    return k


def grid_for(n: int, block: int = BLOCK) -> int:
    """Blocks for a grid-stride loop over n items: enough to fill the device, never above MAX_GRID."""
    return max(1, min((int(n) + block - 1) // block, MAX_GRID))


def launch(kernel, n: int, args, block: int = BLOCK):
    """Launch a grid-stride kernel over n items on the current stream; n == 0 launches nothing."""
    if n <= 0:
        return
    kernel((grid_for(n, block),), (block,), args)


# Explicit scalar types for kernel arguments: cupy passes numpy scalars with their exact C type, so the
# kernel signature (long long / int / double) and the Python side can never silently disagree.
def i64(v) -> np.int64:
    return np.int64(v)


def i32(v) -> np.int32:
    return np.int32(v)


def f64(v) -> np.float64:
    return np.float64(v)


def data_ptr(a) -> int:
    """Device (cupy) or host (numpy) address of an array's first element."""
    return a.data.ptr if is_cupy(a) else a.ctypes.data


class CupyLauncher:
    """Launches kernels through cupy. The GPU code paths take a launcher argument so the host emulator
    (engine.kernels._emulate.HostLauncher) can run the very same Python glue + CUDA source without a GPU."""

    xp_name = "cupy"

    def raw(self, cu_file: str, base: str, dtype, n: int, args, block: int = BLOCK):
        launch(raw_kernel(cu_file, f"{base}_{float_suffix(dtype)}"), n, args, block)

    def elementwise(self, spec_name: str, *args):
        return elementwise_kernel(spec_name)(*args)


LAUNCHER = CupyLauncher()
