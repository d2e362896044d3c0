"""dptrain's autodiff engine: Tensor + reverse-mode autodiff over numpy or cupy."""
from . import backend
from .tensor import (Tensor, from_op, tensor, no_grad, enable_grad, is_grad_enabled,
                     set_grad_enabled, inference_mode, is_tensor)
from .backend import Device as device
from . import ops
from . import tensor_methods
from .ops import concat, stack, where, maximum, minimum, argmax, argmin
from .ops import exp, log, sqrt, tanh, sigmoid, relu, matmul
from .ops import sum_ as sum, mean, max_ as max, min_ as min, reshape, transpose, flatten
from .ops import abs_ as abs, clip, var, std, unsqueeze, squeeze
from .ops import (sin, cos, square, rsqrt, erf, floor_divide, remainder, cumsum, prod, logsumexp,
                  norm, einsum, bmm, gather, index_select, split, chunk, unbind, flip, tril, triu,
                  tile, sort, argsort, topk, isnan, isinf, isfinite, allclose, equal)
from .factories import (zeros, ones, empty, full, zeros_like, ones_like, arange, randn, rand,
                        randint, from_numpy, empty_like, full_like, rand_like, randn_like, eye,
                        linspace, randperm)
from . import cuda
from .random import manual_seed
from .gradcheck import gradcheck, GradcheckError
from .threads import set_num_threads, get_num_threads

tensor_methods.install()


def _accept_arrays(fn):
    """torch.max(outputs.data, 1): in torch `.data` is a Tensor, here it is the raw array, so the
    top-level functions take an array as their first argument too (wrapped, not copied)."""
    import functools
    import numpy as _np

    @functools.wraps(fn)
    def wrapper(a, *args, **kw):
        if not isinstance(a, Tensor) and (isinstance(a, _np.ndarray) or backend.is_cupy_array(a)):
            a = Tensor(a)
        return fn(a, *args, **kw)
    return wrapper


(max, min, sum, mean, exp, log, sqrt, tanh, sigmoid, relu, abs, clip, var, std, unsqueeze, squeeze,
 reshape, transpose, flatten, sin, cos, square, rsqrt, erf, cumsum, prod, logsumexp, norm, gather,
 index_select, split, chunk, unbind, flip, tril, triu, tile, sort, argsort, topk, isnan, isinf,
 isfinite) = (_accept_arrays(f) for f in (
    max, min, sum, mean, exp, log, sqrt, tanh, sigmoid, relu, abs, clip, var, std, unsqueeze, squeeze,
    reshape, transpose, flatten, sin, cos, square, rsqrt, erf, cumsum, prod, logsumexp, norm, gather,
    index_select, split, chunk, unbind, flip, tril, triu, tile, sort, argsort, topk, isnan, isinf,
    isfinite))

cat = concat
narrow = Tensor.narrow          # torch.narrow(x, dim, start, length)
clamp = clip
float32 = "float32"
float64 = "float64"
float16 = "float16"
int64 = "int64"
int32 = "int32"

__all__ = [
    "Tensor", "tensor", "from_op", "no_grad", "enable_grad", "is_grad_enabled", "backend",
    "concat", "cat", "stack", "where", "maximum", "minimum", "argmax", "argmin", "exp", "log",
    "sqrt", "tanh", "sigmoid", "relu", "matmul", "sum", "mean", "max", "min", "reshape",
    "transpose", "flatten", "abs", "clip", "clamp", "var", "std", "unsqueeze", "squeeze", "zeros", "ones",
    "empty", "full", "zeros_like", "ones_like", "arange", "randn", "rand", "randint", "from_numpy",
    "manual_seed", "gradcheck", "GradcheckError",
    "set_grad_enabled", "inference_mode", "is_tensor", "device", "cuda",
    "sin", "cos", "square", "rsqrt", "erf", "floor_divide", "remainder", "cumsum", "prod",
    "logsumexp", "norm", "einsum", "bmm", "gather", "index_select", "split", "chunk", "unbind",
    "flip", "tril", "triu", "tile", "sort", "argsort", "topk", "isnan", "isinf", "isfinite",
    "allclose", "equal", "empty_like", "full_like", "rand_like", "randn_like", "eye", "linspace",
    "randperm", "narrow", "backends", "accelerator", "utils", "set_num_threads", "get_num_threads",
]


def _optional_submodules():
    """Attach the higher-level packages when present (they are built on the core above)."""
    import importlib
    g = globals()
    for name in ("nn", "optim", "data"):
        try:
            g[name] = importlib.import_module(f"engine.{name}")
        except ImportError as e:          # pragma: no cover - only while a package is missing
            if f"engine.{name}" not in str(e):
                raise
    try:
        from .serialization import save, load   # noqa: F401
        g["save"], g["load"] = save, load
    except ImportError as e:              # pragma: no cover
        if "engine.serialization" not in str(e):
            raise


_optional_submodules()

from . import backends, accelerator, utils  # noqa: E402  (torch.backends / .accelerator / .utils.data)


# torch's other dtype names (engine.long, engine.float, ... as torch.long, torch.float), as numpy
# dtype strings.  Last in the file: inside this module they shadow the builtins of the same name.
int8, int16, uint8, half, double, long = "int8", "int16", "uint8", "float16", "float64", "int64"
float, int, bool = "float32", "int32", "bool"  # noqa: A001
