"""Keras LSTM, GRU and SimpleRNN: one fused graph node for the whole sequence.

Weights in Keras' layout: kernel (features, 4*units), recurrent_kernel
(units, 4*units), one bias (4*units,), gates ordered i, f, c, o (the same order
as PyTorch's i, f, g, o).  Defaults as Keras: glorot_uniform kernel, orthogonal
recurrent kernel, zero bias with the forget-gate part set to 1
(unit_forget_bias).

All three run the engine's fused recurrences (engine.nn.functional.lstm_layer / gru_layer /
rnn_layer: one explicit backprop-through-time loop with two matrix products per step instead of a
graph of ~15 small ops per step, and fused kernels on a GPU) on views of the Keras weights in
PyTorch's layout.  Custom activations fall back to the same recurrence built from engine ops.

Masking is Keras 3's (keras.src.backend.*.rnn with a mask): a masked step leaves the state as it
was and outputs the previous step's output (zeros instead with zero_output_for_mask, which
Bidirectional sets to return_sequences); the states start at zero, so a left- or right-padded
sequence ends in exactly the state of the unpadded one.  With go_backwards the mask is reversed
with the sequence, and the output mask is the input mask, unreversed, as Keras passes it on.
"""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ...tensor import Tensor
from ... import ops
from .. import activations, initializers
from .base import Layer

__all__ = ["LSTM", "GRU", "SimpleRNN", "lstm_sequence"]


def lstm_sequence(x: Tensor, kernel: Tensor, recurrent: Tensor, bias: Tensor | None,
                  return_sequences: bool, go_backwards: bool = False, keep=None) -> Tensor:
    """Run an LSTM (sigmoid gates, tanh cell) over x (N, T, F); one graph node.

    Keras' gates i, f, c, o are PyTorch's i, f, g, o and its kernel (F, 4U) is PyTorch's weight_ih
    transposed, so this is the engine's fused LSTM (engine.nn.functional.lstm_layer, with its GPU
    kernels) on transposed views; the transposes are in the graph, so gradients land in Keras' layout.
    keep: None, or (T, N) booleans in processing order (already reversed for go_backwards); where
    False the step keeps the previous h and c (Keras masking)."""
    from ...nn.functional import lstm_layer
    xs = x[:, ::-1] if go_backwards else x
    seq, last, _ = lstm_layer(xs.transpose(1, 0, 2), None, None, kernel.T, recurrent.T, bias, None, mask=keep)
    # with go_backwards the sequence comes back in processing (reversed) order, as in Keras
    return seq.transpose(1, 0, 2) if return_sequences else last


class _UnitForgetBias(initializers.Initializer):
    """zeros (or the given initializer) with the forget-gate quarter set to one."""

    name = "unit_forget_bias"

    def __init__(self, base, units):
        super().__init__(None)
        self.base, self.units = base, units

    def __call__(self, shape, dtype="float32"):
        b = np.asarray(self.base((4 * self.units,), dtype), dtype=dtype)
        b[self.units:2 * self.units] = 1.0
        return b


class _Recurrent(Layer):
    """What Keras' LSTM, GRU and SimpleRNN share: arguments, output shape, the (N, T, F) input
    check, the mask (consumed by the recurrence, passed on with return_sequences), config."""

    input_ndim = 3
    supports_masking = True

    def __init__(self, units, activation, use_bias, kernel_initializer, recurrent_initializer,
                 bias_initializer, dropout, recurrent_dropout, return_sequences, return_state, go_backwards,
                 stateful, zero_output_for_mask=False, **kwargs):
        super().__init__(**kwargs)
        kind = type(self).__name__
        if dropout or recurrent_dropout:
            raise ValueError(f"{kind}: dropout / recurrent_dropout are not supported; put a Dropout layer "
                             f"before or after the {kind} instead")
        if return_state or stateful:
            raise ValueError(f"{kind}: return_state and stateful are not supported")
        if int(units) <= 0:
            raise ValueError(f"{kind}: units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.return_sequences, self.go_backwards = bool(return_sequences), bool(go_backwards)
        self.zero_output_for_mask = bool(zero_output_for_mask)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.recurrent_initializer = initializers.get(recurrent_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def _feature_axis(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}) needs a known feature axis (last)')
        return input_shape[-1]

    def expected_input_shape(self):
        s = self.input_shape_built
        return (None, None, s[-1]) if s else None

    def compute_output_shape(self, input_shape):
        if self.return_sequences:
            return (input_shape[0], input_shape[1], self.units)
        return (input_shape[0], self.units)

    def compute_mask(self, inputs, mask=None):
        """Keras: the input mask for a sequence output, none for the last output alone."""
        return mask if self.return_sequences else None

    def _step_mask(self, inputs, mask):
        """The (T, N) keep mask in processing order, or None when no step is masked (an all-True
        mask changes nothing, and the unmasked path is the fast one)."""
        if mask is None:
            return None
        xp = get_array_module(inputs.data)
        keep = xp.asarray(mask.data if isinstance(mask, Tensor) else mask).astype(bool, copy=False)
        if keep.shape != tuple(inputs.shape[:2]):
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}): the mask must have shape (batch, '
                             f"timesteps) = {tuple(inputs.shape[:2])}, got {tuple(keep.shape)}")
        if bool(keep.all()):
            return None
        keep = keep.T
        return keep[::-1] if self.go_backwards else keep

    def _zero_masked(self, y, keep):
        """zero_output_for_mask: zeros, not the previous output, at masked steps (in processing
        order, like y); Keras applies it to the last output too when that step is masked."""
        if keep is None or not self.zero_output_for_mask:
            return y
        factor = keep.T[:, :, None] if self.return_sequences else keep[-1][:, None]
        return y * Tensor._wrap(factor.astype(y.dtype))

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": activations.serialize(self.activation),
                "use_bias": self.use_bias, "return_sequences": self.return_sequences,
                "go_backwards": self.go_backwards, "zero_output_for_mask": self.zero_output_for_mask,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "recurrent_initializer": initializers.serialize(self.recurrent_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}


class _Gated(_Recurrent):
    """LSTM and GRU: a recurrent_activation for the gates on top of _Recurrent."""

    def __init__(self, units, activation, recurrent_activation, *args, **kwargs):
        super().__init__(units, activation, *args, **kwargs)
        self.recurrent_activation = activations.get(recurrent_activation)

    def get_config(self):
        return {**super().get_config(),
                "recurrent_activation": activations.serialize(self.recurrent_activation)}


class LSTM(_Gated):
    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0, recurrent_dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, seed=None, **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, dropout, recurrent_dropout, return_sequences,
                         return_state, go_backwards, stateful, **kwargs)
        self.unit_forget_bias = bool(unit_forget_bias)

    def build(self, input_shape):
        feat = self._feature_axis(input_shape)
        self.add_weight("kernel", (feat, 4 * self.units), self.kernel_initializer)
        self.add_weight("recurrent_kernel", (self.units, 4 * self.units), self.recurrent_initializer)
        if self.use_bias:
            init = _UnitForgetBias(self.bias_initializer, self.units) if self.unit_forget_bias \
                else self.bias_initializer
            self.add_weight("bias", (4 * self.units,), init)

    def _fused_ok(self):
        return self.activation is activations.tanh and self.recurrent_activation is activations.sigmoid

    def call(self, inputs, training=False, mask=None):
        bias = self.bias if self.use_bias else None
        keep = self._step_mask(inputs, mask)
        if self._fused_ok():
            y = lstm_sequence(inputs, self.kernel, self.recurrent_kernel, bias,
                              self.return_sequences, self.go_backwards, keep)
        else:
            y = self._call_ops(inputs, bias, keep)
        return self._zero_masked(y, keep)

    def _call_ops(self, x, bias, keep=None):
        """Reference recurrence from engine ops (custom activations)."""
        n, t_len, _ = x.shape
        hid = self.units
        xp = get_array_module(x.data)
        h = Tensor(xp.zeros((n, hid), dtype=np.float32))
        c = Tensor(xp.zeros((n, hid), dtype=np.float32))
        outs = []
        steps = range(t_len - 1, -1, -1) if self.go_backwards else range(t_len)
        for k, s in enumerate(steps):
            z = x[:, s, :] @ self.kernel + h @ self.recurrent_kernel
            if bias is not None:
                z = z + bias
            i = self.recurrent_activation(z[:, :hid])
            f = self.recurrent_activation(z[:, hid:2 * hid])
            g = self.activation(z[:, 2 * hid:3 * hid])
            o = self.recurrent_activation(z[:, 3 * hid:])
            c_new = f * c + i * g
            h_new = o * self.activation(c_new)
            c, h = _held(keep, k, c_new, c), _held(keep, k, h_new, h)
            outs.append(h)
        if not self.return_sequences:
            return h
        return ops.stack(outs, axis=1)

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


def _held(keep, k, new, old):
    """new where step k is kept, old (the held state) where it is masked."""
    return new if keep is None else ops.where(keep[k][:, None], new, old)


class GRU(_Gated):
    """Keras' GRU (reset_after=True, the Keras 2.x/3 default): kernel (features, 3*units) and
    recurrent_kernel (units, 3*units) with gates ordered z, r, h, and bias (2, 3*units) holding the
    input and the recurrent bias.  That is PyTorch's GRU with the gates in another order, so the
    sequence runs through the engine's fused GRU (engine.nn.functional.gru_layer) on a permuted
    view of the weights; the permutation is part of the graph, so gradients land in Keras' layout."""

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, unroll=False, reset_after=True,
                 seed=None, **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, dropout, recurrent_dropout, return_sequences,
                         return_state, go_backwards, stateful, **kwargs)
        if not reset_after:
            raise ValueError("GRU: only reset_after=True (the Keras default) is supported")
        if self.activation is not activations.tanh or self.recurrent_activation is not activations.sigmoid:
            raise ValueError("GRU: only activation='tanh' with recurrent_activation='sigmoid' is supported")
        u = self.units
        self._torch_order = np.r_[u:2 * u, 0:u, 2 * u:3 * u]       # Keras z, r, h -> PyTorch r, z, n

    def build(self, input_shape):
        feat = self._feature_axis(input_shape)
        self.add_weight("kernel", (feat, 3 * self.units), self.kernel_initializer)
        self.add_weight("recurrent_kernel", (self.units, 3 * self.units), self.recurrent_initializer)
        if self.use_bias:
            self.add_weight("bias", (2, 3 * self.units), self.bias_initializer)

    def call(self, inputs, training=False, mask=None):
        from ...nn.functional import gru_layer
        order = self._torch_order
        w_ih = self.kernel[:, order].T                  # (3U, F) in PyTorch's gate order
        w_hh = self.recurrent_kernel[:, order].T
        b_ih = b_hh = None
        if self.use_bias:
            b_ih, b_hh = self.bias[0][order], self.bias[1][order]
        keep = self._step_mask(inputs, mask)
        x = inputs[:, ::-1] if self.go_backwards else inputs
        seq, last = gru_layer(x.transpose(1, 0, 2), None, w_ih, w_hh, b_ih, b_hh, mask=keep)
        # with go_backwards the sequence comes back in processing (reversed) order, as in Keras
        return self._zero_masked(seq.transpose(1, 0, 2) if self.return_sequences else last, keep)

    def get_config(self):
        return {**super().get_config(), "reset_after": True}


class SimpleRNN(_Recurrent):
    """Keras' SimpleRNN: h_t = activation(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel), weights
    kernel (features, units), recurrent_kernel (units, units), bias (units,).  With tanh or relu the
    sequence runs through the engine's fused Elman RNN (engine.nn.functional.rnn_layer) on
    transposed views of the weights (graph ops, so gradients land in Keras' layout); any other
    activation runs the same recurrence built from engine ops."""

    _FUSED = {"tanh": activations.tanh, "relu": activations.relu}

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False, unroll=False,
                 seed=None, **kwargs):
        super().__init__(units, activation, use_bias, kernel_initializer, recurrent_initializer,
                         bias_initializer, dropout, recurrent_dropout, return_sequences, return_state,
                         go_backwards, stateful, **kwargs)

    def build(self, input_shape):
        feat = self._feature_axis(input_shape)
        self.add_weight("kernel", (feat, self.units), self.kernel_initializer)
        self.add_weight("recurrent_kernel", (self.units, self.units), self.recurrent_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)

    def call(self, inputs, training=False, mask=None):
        from ...nn.functional import rnn_layer
        bias = self.bias if self.use_bias else None
        keep = self._step_mask(inputs, mask)
        x = inputs[:, ::-1] if self.go_backwards else inputs
        if self._FUSED.get(self.activation.name) is self.activation:
            seq, last = rnn_layer(x.transpose(1, 0, 2), None, self.kernel.T, self.recurrent_kernel.T, bias,
                                  nonlinearity=self.activation.name, mask=keep)
            y = seq.transpose(1, 0, 2) if self.return_sequences else last
        else:
            y = self._call_ops(x, bias, keep)
        # with go_backwards the sequence comes back in processing (reversed) order, as in Keras
        return self._zero_masked(y, keep)

    def _call_ops(self, x, bias, keep):
        """The recurrence from engine ops, for activations the fused kernel lacks; x is already in
        processing order."""
        n, t_len, _ = x.shape
        xp = get_array_module(x.data)
        h = Tensor(xp.zeros((n, self.units), dtype=np.float32))
        outs = []
        for s in range(t_len):
            z = x[:, s, :] @ self.kernel
            if bias is not None:
                z = z + bias
            h = _held(keep, s, self.activation(z + h @ self.recurrent_kernel), h)
            outs.append(h)
        return ops.stack(outs, axis=1) if self.return_sequences else h
