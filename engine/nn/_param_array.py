"""The array behind a Parameter's `.data`: an ndarray with torch's in-place methods.

Why: in PyTorch `p.data` is a Tensor that aliases the parameter outside autograd, and canonical
programs update or initialise weights through it -- the word-language-model example's manual SGD
`p.data.add_(p.grad, alpha=-lr)`, `m.weight.data.normal_(0.0, 0.02)` (DCGAN),
`self.encoder.weight.data.uniform_(-0.1, 0.1)`, `target.data.copy_(source.data)`.  Here `.data`
is the raw numpy array the whole engine computes on, so those lines were AttributeErrors.  A
Parameter's array is therefore stored as this subclass: still an ndarray for every op (same
memory, no copy), plus add_/sub_/mul_/div_/addcmul_/addcdiv_/zero_/fill_/copy_/clamp_/
uniform_/normal_ that write in place and return the array, as torch's do.

Results of arithmetic on it are plain ndarrays (`__array_wrap__`), so the subclass stays on
parameter storage and its views and never spreads into activations or optimizer state.  On a GPU
(cupy) the array is left as it is.
"""
from __future__ import annotations

import numpy as np

__all__ = ["ParamArray", "as_param_array"]


def _raw(x):
    from ..tensor import Tensor
    return x.data if isinstance(x, Tensor) else x


class ParamArray(np.ndarray):
    """numpy array + torch's in-place Tensor methods (what `p.data.<method>_` calls)."""

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        if arr is self:                     # `out=` this very array (p -= step): keep it
            return arr
        if return_scalar:
            return arr[()]
        return arr.view(np.ndarray) if type(arr) is not np.ndarray else arr

    # -- arithmetic, in place ------------------------------------------------------------
    def add_(self, other, alpha=1):
        other = _raw(other)
        np.add(self, other if alpha == 1 else np.multiply(other, alpha), out=self, casting="unsafe")
        return self

    def sub_(self, other, alpha=1):
        return self.add_(other, alpha=-alpha)

    def mul_(self, other):
        np.multiply(self, _raw(other), out=self, casting="unsafe")
        return self

    def div_(self, other):
        np.divide(self, _raw(other), out=self, casting="unsafe")
        return self

    def addcmul_(self, tensor1, tensor2, value=1):
        return self.add_(np.multiply(_raw(tensor1), _raw(tensor2)), alpha=value)

    def addcdiv_(self, tensor1, tensor2, value=1):
        return self.add_(np.divide(_raw(tensor1), _raw(tensor2)), alpha=value)

    def clamp_(self, min=None, max=None):
        np.clip(self, min, max, out=self)
        return self

    # -- assignment ------------------------------------------------------------------------
    def zero_(self):
        self[...] = 0
        return self

    def fill_(self, value):
        self[...] = _raw(value)
        return self

    def copy_(self, src, non_blocking=False):
        self[...] = np.asarray(_raw(src))
        return self

    def uniform_(self, a=0.0, b=1.0, generator=None):
        from .. import random as _random
        self[...] = _random.resolve(generator=generator).uniform(a, b, self.shape)
        return self

    def normal_(self, mean=0.0, std=1.0, generator=None):
        from .. import random as _random
        self[...] = _random.resolve(generator=generator).normal(mean, std, self.shape)
        return self


def as_param_array(arr):
    """`arr` as a ParamArray sharing its memory (numpy arrays only; cupy and others unchanged)."""
    if type(arr) is np.ndarray:
        return arr.view(ParamArray)
    return arr
