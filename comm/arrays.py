"""Array handling shared by all collectives: numpy or cupy, dtypes, layout, reduce ops.

The ring works on one flat, contiguous, writable buffer.  This module turns
whatever the caller passed (non-contiguous, read-only, 0-d, cupy on the GPU) into
such a buffer and back, so the algorithms never see those cases.  cupy is
imported lazily and only when a cupy array shows up: it is an optional extra.
"""

from __future__ import annotations

import threading

import numpy as np

SUPPORTED_DTYPES = tuple(np.dtype(d) for d in (
    "float16", "float32", "float64", "int8", "int16", "int32", "int64",
    "uint8", "uint16", "uint32", "uint64"))
REDUCE_OPS = ("sum", "mean", "max", "min", "bf16_sum")


def is_cupy(x) -> bool:
    """True for a cupy ndarray, detected without importing cupy."""
    return type(x).__module__.split(".", 1)[0] == "cupy"


def get_cupy():
    """Import cupy (only called once a cupy array was seen)."""
    import cupy  # noqa: PLC0415 - optional dependency

    return cupy


def check_array(x, what: str) -> None:
    """Reject things the collectives cannot move, with a message saying what is allowed."""
    if not (isinstance(x, np.ndarray) or is_cupy(x)):
        raise TypeError(f"{what} needs a numpy or cupy array, got {type(x).__name__}; "
                        f"wrap Python data with numpy.asarray(...) or use broadcast_obj/allgather_obj")
    if np.dtype(x.dtype) not in SUPPORTED_DTYPES:
        names = ", ".join(d.name for d in SUPPORTED_DTYPES)
        raise TypeError(f"{what} does not support dtype {np.dtype(x.dtype).name}; supported: {names}")


def check_op(op: str, dtype) -> str:
    if op not in REDUCE_OPS:
        raise ValueError(f"unknown reduce op {op!r}; choose one of {', '.join(REDUCE_OPS)}")
    if op == "bf16_sum" and np.dtype(dtype) != np.uint16:
        raise TypeError(f"op='bf16_sum' reduces bfloat16 bit patterns held in uint16 (comm.arrays.to_bf16), "
                        f"got {np.dtype(dtype).name}")
    if op == "mean" and np.dtype(dtype).kind != "f":
        raise TypeError(f"op='mean' needs a floating dtype, got {np.dtype(dtype).name}: an integer "
                        f"mean cannot be stored in place; use op='sum' and divide by size")
    return op


def reduce_fn(xp, op: str):
    """The in-place binary ufunc for `op` (called as fn(a, b, out=a))."""
    if op == "bf16_sum":
        return _bf16_add
    return {"sum": xp.add, "mean": xp.add, "max": xp.maximum, "min": xp.minimum}[op]


# -- bfloat16 on the wire -------------------------------------------------------------------------
# Why bfloat16 and not float16 for compressed gradients: it is float32 with the low 16 bits cut
# off, so both directions are a few integer passes (float16 conversion and arithmetic run at ~7 ns
# per element in NumPy, 20-30x slower than float32), its range is float32's (no overflow), and the
# reduction itself runs in float32.  Rounding is to nearest (ties away from zero: adding 0x8000 to
# the bit pattern); NaN stays NaN, +-inf stay.

def _xp(a):
    return get_cupy() if is_cupy(a) else np


_scratch_local = threading.local()


def _scratch(xp, n: int, dtype, slot: int):
    """A reused work array (per thread): fresh 16 MB arrays cost more in page faults than the
    arithmetic on them."""
    cache = getattr(_scratch_local, "cache", None)
    if cache is None:
        cache = _scratch_local.cache = {}
    key = (xp.__name__, slot, np.dtype(dtype).str)
    buf = cache.get(key)
    if buf is None or buf.size < n:
        buf = cache[key] = xp.empty(max(n, 1), dtype=dtype)
    return buf[:n]


def to_bf16(x, out=None):
    """float32 array -> its bfloat16 bit patterns (uint16, same shape), rounded to nearest."""
    xp = _xp(x)
    x = xp.ascontiguousarray(x, dtype=xp.float32)
    flat = x.reshape(-1)
    v = _scratch(xp, flat.size, xp.uint32, 0)
    xp.add(flat.view(xp.uint32), xp.uint32(0x8000), out=v)
    xp.right_shift(v, 16, out=v)
    res = out if out is not None else xp.empty(x.shape, dtype=xp.uint16)
    res.reshape(-1)[...] = v                 # the low 16 bits: the rounded high half of x
    with np.errstate(invalid="ignore", over="ignore"):
        suspect = bool(xp.isnan(flat.sum()))
    if suspect:                              # NaN (or inf - inf): a carry must not turn NaN into -0 or 0
        res.reshape(-1)[xp.isnan(flat)] = 0x7FC0
    return res


def from_bf16(b, out=None):
    """bfloat16 bit patterns (uint16) -> float32 (exact), into `out` (contiguous float32) when given."""
    xp = _xp(b)
    if out is None:
        out = xp.empty(b.shape, dtype=xp.float32)
    xp.left_shift(b, 16, out=out.view(xp.uint32), dtype=xp.uint32)
    return out


def _bf16_add(a, b, out=None):
    """Sum of two bfloat16 arrays (uint16 bit patterns), added in float32 and rounded back."""
    xp = _xp(a)
    n = a.size
    wa = from_bf16(a.reshape(-1), out=_scratch(xp, n, xp.float32, 1))
    wb = from_bf16(b.reshape(-1), out=_scratch(xp, n, xp.float32, 2))
    wa += wb
    if out is None:
        out = xp.empty(a.shape, dtype=xp.uint16)
    return to_bf16(wa, out=out.reshape(-1)).reshape(a.shape) if out.ndim != 1 else to_bf16(wa, out=out)


def is_inplace_ok(x) -> bool:
    """A writable C-contiguous array is reduced in place without any copy."""
    if is_cupy(x):
        return bool(x.flags.c_contiguous)
    return bool(x.flags.c_contiguous and x.flags.writeable)


def writable(x) -> bool:
    return True if is_cupy(x) else bool(x.flags.writeable)


def byte_view(flat):
    """The same memory as uint8, for the transports (which move bytes)."""
    return flat.view(np.uint8) if flat.dtype != np.uint8 else flat


def stage_to_host(x) -> np.ndarray:
    """A contiguous host copy of a cupy array (synchronises with the producing stream)."""
    return np.ascontiguousarray(get_cupy().asnumpy(x))


def copy_back(dst, src) -> None:
    """Write `src` (numpy or cupy, any layout) into `dst` in place."""
    if is_cupy(dst):
        cp = get_cupy()
        dst[...] = cp.asarray(src).reshape(dst.shape)
    else:
        np.copyto(dst, np.asarray(src).reshape(dst.shape))


def row_split(shape, size: int):
    """(rows per rank, element offsets) of `size` blocks along axis 0, numpy.array_split style.

    The first `rows % size` blocks get one extra row; offsets count elements of the
    flattened array, so block i is flat[offsets[i]:offsets[i+1]].
    """
    nrows = shape[0] if len(shape) else 1
    inner = 1
    for d in shape[1:]:
        inner *= int(d)
    base, extra = divmod(int(nrows), size)
    rows = [base + (1 if i < extra else 0) for i in range(size)]
    offsets = [0]
    for count in rows:
        offsets.append(offsets[-1] + count * inner)
    return rows, offsets
