"""Parameter: a Tensor that a Module registers as trainable state.

It is a plain Tensor subclass so every op accepts it; what makes it special is
only that assigning one to a Module attribute registers it (see module.py) and
that it requires gradients by default.  Ops on a Parameter return plain Tensors.
"""
from __future__ import annotations

import numpy as np

from ..tensor import Tensor, DEFAULT_FLOAT
from ._param_array import as_param_array


class Parameter(Tensor):
    """Parameter(data=None, requires_grad=True): trainable tensor owned by a Module.

    Given a Tensor the array is shared (as torch.nn.Parameter does); other data is
    converted like engine.tensor (Python floats become float32).
    """

    def __init__(self, data=None, requires_grad=True):
        if data is None:
            data = np.empty((0,), dtype=DEFAULT_FLOAT)
        if isinstance(data, Tensor):
            data = data.data
        super().__init__(data, requires_grad=requires_grad)

    @property
    def data(self):
        """The parameter's array, with torch's in-place methods (`p.data.add_(p.grad, alpha=-lr)`,
        `.data.uniform_(-0.1, 0.1)`; see _param_array.py).  Assigning a Tensor stores its array,
        as torch's `p.data = t` does."""
        return self._array

    @data.setter
    def data(self, value):
        self._array = as_param_array(value.data if isinstance(value, Tensor) else value)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()
