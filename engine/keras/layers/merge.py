"""Merge layers for the functional API: Add, Subtract, Multiply, Average, Concatenate.

They take a list of channels-last tensors (real or symbolic) and check that the
shapes agree, naming the layer and every shape when they do not.  Masks combine as in Keras 3:
the elementwise merges OR the input masks when every input has one (no mask otherwise), and
Concatenate ORs them over the joined axis, an unmasked input counting as all valid.
"""
from __future__ import annotations

import functools
import operator

from ...backend import get_array_module
from ...tensor import Tensor
from ... import ops
from .base import InputShapeError, Layer, as_mask, as_tensor_input, attach_mask, mask_of, shape_str

__all__ = ["Add", "Subtract", "Multiply", "Average", "Concatenate"]


class _Merge(Layer):
    min_inputs = 2
    max_inputs: int | None = None
    supports_masking = True

    def compute_mask(self, inputs, mask=None):
        """Keras' Merge.compute_mask: the OR of the masks if every input has one, else none."""
        if mask is None or any(m is None for m in mask):
            return None
        return functools.reduce(operator.or_, mask)

    def _check_count(self, n):
        if n < self.min_inputs or (self.max_inputs is not None and n > self.max_inputs):
            want = (f"exactly {self.max_inputs}" if self.max_inputs == self.min_inputs
                    else f"at least {self.min_inputs}")
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}) needs {want} inputs, got {n}')

    def _out_shape(self, shapes):
        first = tuple(shapes[0])
        if any(len(s) != len(first) or any(a is not None and b is not None and a != b
                                            for a, b in zip(s[1:], first[1:])) for s in shapes[1:]):
            raise InputShapeError(f'layer "{self.name}" ({type(self).__name__}) needs inputs of one shape, got '
                                  + ", ".join(shape_str(s) for s in shapes))
        return (None,) + first[1:]

    def _build_for_many(self, shapes):
        self._check_count(len(shapes))
        out = self._out_shape([tuple(s) for s in shapes])
        self.built = True
        self.input_shape_built = tuple(shapes[0])
        self.output_shape_built = out
        return out

    def _build_for(self, input_shape):
        raise ValueError(f'layer "{self.name}" ({type(self).__name__}) merges a list of tensors; call it on a '
                         f"list like {type(self).__name__}()([a, b])")

    def __call__(self, inputs, training=None, mask=None, **kwargs):
        from ..functional import call_symbolic, is_symbolic
        if not isinstance(inputs, (list, tuple)):
            return self._build_for(None)
        if is_symbolic(inputs):
            return call_symbolic(self, list(inputs))
        y, out_mask = self._call_masked(inputs, training, mask_of(inputs) if mask is None else mask)
        return attach_mask(y, out_mask)

    def _call_masked(self, inputs, training, mask):
        xs = [x if isinstance(x, Tensor) else as_tensor_input(x, self._device()) for x in inputs]
        self._check_count(len(xs))
        if not self.built:                    # an eager first call builds it, as in Keras
            self._build_for_many([tuple(x.shape) for x in xs])
        self._out_shape([tuple(x.shape) for x in xs])
        masks = [as_mask(m, x) for m, x in zip(mask or [None] * len(xs), xs)]
        out_mask = None
        if any(m is not None for m in masks):
            out_mask = as_mask(self.compute_mask(xs, masks), xs[0])
        return self.merge(xs), out_mask

    def merge(self, xs):
        raise NotImplementedError


class Add(_Merge):
    def merge(self, xs):
        return functools.reduce(operator.add, xs)


class Subtract(_Merge):
    min_inputs = max_inputs = 2

    def merge(self, xs):
        return xs[0] - xs[1]


class Multiply(_Merge):
    def merge(self, xs):
        return functools.reduce(operator.mul, xs)


class Average(Add):
    def merge(self, xs):
        return super().merge(xs) * (1.0 / len(xs))


class Concatenate(_Merge):
    """Concatenate along `axis` (default the last, channels-last features)."""

    def __init__(self, axis=-1, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)

    def _out_shape(self, shapes):
        first = tuple(shapes[0])
        ax = self.axis % len(first)
        if ax == 0:
            raise ValueError(f'layer "{self.name}" (Concatenate) cannot join along the batch axis')
        for s in shapes[1:]:
            if len(s) != len(first) or any(a is not None and b is not None and a != b
                                            for i, (a, b) in enumerate(zip(s, first)) if i not in (0, ax)):
                raise InputShapeError(f'layer "{self.name}" (Concatenate) needs inputs that agree on every axis '
                                      f"but {self.axis}, got " + ", ".join(shape_str(s) for s in shapes))
        total = None if any(s[ax] is None for s in shapes) else sum(s[ax] for s in shapes)
        return (None,) + tuple(total if i == ax else d for i, d in enumerate(first))[1:]

    def merge(self, xs):
        return ops.concat(xs, axis=self.axis)

    def compute_mask(self, inputs, mask=None):
        """Keras' Concatenate.compute_mask: each mask widened to its input's shape (all True for an
        unmasked input), joined along the axis, then any() over the last axis."""
        if mask is None or all(m is None for m in mask):
            return None
        xp = get_array_module(inputs[0].data)
        full = []
        for x, m in zip(inputs, mask):
            if m is None:
                m = xp.ones(x.shape, dtype=bool)
            elif m.ndim < x.ndim:
                m = xp.broadcast_to(m[..., None], x.shape)
            full.append(m)
        return xp.concatenate(full, axis=self.axis).any(axis=-1)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}
