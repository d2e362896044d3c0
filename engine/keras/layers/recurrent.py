"""Keras LSTM, GRU and SimpleRNN: one fused graph node for the whole sequence when it can be.

Weights in Keras' layout: kernel (features, 4*units), recurrent_kernel
(units, 4*units), one bias (4*units,), gates ordered i, f, c, o (the same order
as PyTorch's i, f, g, o).  Defaults as Keras: glorot_uniform kernel, orthogonal
recurrent kernel, zero bias with the forget-gate part set to 1
(unit_forget_bias).

All three run the engine's fused recurrences (engine.nn.functional.lstm_layer / gru_layer /
rnn_layer: one explicit backprop-through-time loop with two matrix products per step instead of a
graph of ~15 small ops per step, and fused kernels on a GPU) on views of the Keras weights in
PyTorch's layout.  Custom activations and recurrent_dropout fall back to the same recurrence built
step by step from engine ops (Keras too leaves cuDNN for recurrent_dropout).

Masking is Keras 3's (keras.src.backend.tensorflow.rnn with a mask): a masked step leaves the state
as it was and outputs the previous step's output (zeros before the first kept step, even with an
initial_state; zeros at every masked step with zero_output_for_mask, which Bidirectional sets to
return_sequences); the states start at zero (or at initial_state), so a left- or right-padded
sequence ends in exactly the state of the unpadded one.  With go_backwards the mask
is reversed with the sequence, and the output mask is the input mask, unreversed, as Keras passes it on.

Dropout is Keras 3's (keras.src.layers.rnn.dropout_rnn_cell, Keras >= 3.8): in training only, masks
of 0 and 1/(1-rate) are drawn once per call and used at every step.  With `dropout` alone one
(batch, features) mask is shared by all gates, so it multiplies the whole input sequence and the
fused path still runs.  With `recurrent_dropout` Keras switches its cells to implementation 1: every
gate gets its own input mask and its own (batch, units) mask on h_{t-1} before the recurrent matmul
(the LSTM's carry c is never dropped); SimpleRNN has one mask of each kind.

return_state=True makes the layer return [output, h, c] (LSTM) or [output, h] (GRU, SimpleRNN): the
final states, held over masked steps; initial_state=[...] starts the recurrence there, and gradients
flow into those tensors (a seq2seq encoder's states train with the decoder).
"""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ...tensor import Tensor
from ... import ops
from ... import random as _random
from .. import activations, initializers
from .base import Layer, as_tensor_input, shape_str

__all__ = ["LSTM", "GRU", "SimpleRNN", "lstm_sequence", "call_with_states"]


def lstm_sequence(x: Tensor, kernel: Tensor, recurrent: Tensor, bias: Tensor | None,
                  return_sequences: bool, go_backwards: bool = False, keep=None, initial_state=None,
                  return_state: bool = False):
    """Run an LSTM (sigmoid gates, tanh cell) over x (N, T, F); one graph node.

    Keras' gates i, f, c, o are PyTorch's i, f, g, o and its kernel (F, 4U) is PyTorch's weight_ih
    transposed, so this is the engine's fused LSTM (engine.nn.functional.lstm_layer, with its GPU
    kernels) on transposed views; the transposes are in the graph, so gradients land in Keras' layout.
    keep: None, or (T, N) booleans in processing order (already reversed for go_backwards); where
    False the step keeps the previous h and c (Keras masking).  initial_state: None or [h0, c0]
    (N, U) Tensors, which receive gradients.  return_state: return (output, h, c)."""
    xs = x[:, ::-1] if go_backwards else x
    h0, c0 = initial_state if initial_state is not None else (None, None)
    seq, h, c = _lstm_fused(xs, kernel, recurrent, bias, h0, c0, keep)
    # with go_backwards the sequence comes back in processing (reversed) order, as in Keras
    y = seq.transpose(1, 0, 2) if return_sequences else h
    return (y, h, c) if return_state else y


def _lstm_fused(xs, kernel, recurrent, bias, h0, c0, keep):
    """engine.nn.functional.lstm_layer on x (N, T, F) in processing order -> (time-major sequence, h, c)."""
    from ...nn.functional import lstm_layer
    return lstm_layer(xs.transpose(1, 0, 2), h0, c0, kernel.T, recurrent.T, bias, None, mask=keep)


# ------------------------------------------------------------------------------ the step-by-step recurrences
# Used for recurrent_dropout (and custom activations): plain engine ops, so autodiff, the GPU and
# float64 gradchecks come for free.  x is (N, T, F) in processing order; keep as in lstm_sequence;
# in_masks / rec_masks are None or one array per gate (Keras' implementation 1).  Each returns
# (outputs per step, final states).

def _blocks(w, n):
    """The n gate blocks of a weight (..., n*U) along its last axis."""
    u = w.shape[-1] // n
    return [w[..., g * u:(g + 1) * u] for g in range(n)]


def _gate_inputs(v, weight, blocks, masks, n):
    """v @ weight as n gate blocks (N, U).  With Keras' per-gate dropout masks gate g multiplies its
    own masked copy v * masks[g] by its block of the weight."""
    if masks is None:
        z = v @ weight
        return [z] if n == 1 else _blocks(z, n)
    return [(v * Tensor._wrap(m)) @ w for m, w in zip(masks, blocks)]


def _held(keep, k, new, old):
    """new where step k is kept, old (the held state) where it is masked."""
    return new if keep is None else ops.where(keep[k][:, None], new, old)


def _zeros_state(x, units):
    xp = get_array_module(x.data)
    return Tensor(xp.zeros((x.shape[0], units), dtype=x.dtype))


def _lstm_steps(x, kernel, recurrent, bias, h, c, keep, act, rec_act, in_masks=None, rec_masks=None):
    units = recurrent.shape[0]
    h = _zeros_state(x, units) if h is None else h
    c = _zeros_state(x, units) if c is None else c
    k_blocks = _blocks(kernel, 4) if in_masks is not None else None
    r_blocks = _blocks(recurrent, 4) if rec_masks is not None else None
    b_blocks = _blocks(bias, 4) if bias is not None and (in_masks or rec_masks) else None
    outs = []
    for k, x_t in enumerate(ops.unbind(x, 1)):
        if in_masks is None and rec_masks is None:       # one matmul each, the op order of the fused reference
            z = x_t @ kernel + h @ recurrent
            pre = _blocks(z + bias if bias is not None else z, 4)
        else:
            pre = [a + b for a, b in zip(_gate_inputs(x_t, kernel, k_blocks, in_masks, 4),
                                         _gate_inputs(h, recurrent, r_blocks, rec_masks, 4))]
            if b_blocks is not None:
                pre = [p + b for p, b in zip(pre, b_blocks)]
        i, f, g, o = rec_act(pre[0]), rec_act(pre[1]), act(pre[2]), rec_act(pre[3])
        c_new = f * c + i * g                            # the carry is never dropped
        h_new = o * act(c_new)
        c, h = _held(keep, k, c_new, c), _held(keep, k, h_new, h)
        outs.append(h)
    return outs, [h, c]


def _gru_steps(x, kernel, recurrent, b_in, b_rec, h, keep, act, rec_act, in_masks=None, rec_masks=None):
    """Keras' GRU cell with reset_after=True, gates z, r, h; b_in / b_rec the two bias rows or None."""
    units = recurrent.shape[0]
    h = _zeros_state(x, units) if h is None else h
    k_blocks = _blocks(kernel, 3) if in_masks is not None else None
    r_blocks = _blocks(recurrent, 3) if rec_masks is not None else None
    bi = _blocks(b_in, 3) if b_in is not None else None
    br = _blocks(b_rec, 3) if b_rec is not None else None
    outs = []
    for k, x_t in enumerate(ops.unbind(x, 1)):
        xz, xr, xh = _gate_inputs(x_t, kernel, k_blocks, in_masks, 3)
        hz, hr, hh = _gate_inputs(h, recurrent, r_blocks, rec_masks, 3)   # from the dropped h_{t-1}
        if bi is not None:
            xz, xr, xh = xz + bi[0], xr + bi[1], xh + bi[2]
        if br is not None:
            hz, hr, hh = hz + br[0], hr + br[1], hh + br[2]
        z, r = rec_act(xz + hz), rec_act(xr + hr)
        h_new = z * h + (1 - z) * act(xh + r * hh)       # mixed with the undropped h_{t-1}, as Keras
        h = _held(keep, k, h_new, h)
        outs.append(h)
    return outs, [h]


def _rnn_steps(x, kernel, recurrent, bias, h, keep, act, rec_masks=None):
    """Keras' SimpleRNN cell: act(x_t @ kernel + bias + (h * mask) @ recurrent_kernel)."""
    h = _zeros_state(x, recurrent.shape[0]) if h is None else h
    outs = []
    for k, x_t in enumerate(ops.unbind(x, 1)):
        z = x_t @ kernel
        if bias is not None:
            z = z + bias
        (hr,) = _gate_inputs(h, recurrent, [recurrent], rec_masks, 1)
        h = _held(keep, k, act(z + hr), h)
        outs.append(h)
    return outs, [h]


def _dropout_mask(shape, rate, rng, xp, dtype):
    """Keras' dropout(ones(shape)): 0 with probability `rate`, else 1/(1-rate).  Drawn on the CPU
    (one generator for CPU and GPU runs, as engine.random does) for this worker's rows of the global
    batch (engine.random.batch_shard), then moved to the data's device."""
    keep = _random.draw_rows(lambda s: rng.random(s, dtype=np.float32), shape) >= np.float32(rate)
    mask = keep.astype(dtype)
    mask *= np.asarray(1.0 / (1.0 - rate), dtype=dtype)
    return xp.asarray(mask)


def _rate(layer, what, value):
    try:
        rate = float(value)
    except (TypeError, ValueError):
        rate = None
    if rate is None or not 0.0 <= rate < 1.0:
        raise ValueError(f'layer "{layer.name}" ({type(layer).__name__}): {what} must be a fraction in [0, 1), '
                         f"got {what}={value!r}")
    return rate


def call_with_states(layer, inputs, initial_state, training, mask):
    """layer(x, initial_state=[...]) for a recurrent layer or a wrapper of one: on KerasTensors the
    call becomes a node of the functional graph whose inbound tensors are x and the states; on
    arrays it runs.  `layer._check_states(shapes, batch)` checks the states' count and shapes."""
    from ..functional import KerasTensor, call_symbolic
    states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
    symbolic = [isinstance(t, KerasTensor) for t in [inputs] + states]
    if any(symbolic):
        if not all(symbolic):
            raise ValueError(f'layer "{layer.name}" ({type(layer).__name__}): the inputs and initial_state must '
                             "all be symbolic (keras.Input / layer outputs) or all be arrays / tensors")
        layer._check_states([t.shape for t in states], None)
        return call_symbolic(layer, inputs, states=states)
    return layer._eager_call(inputs, training, mask, initial_state=states)


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
    """What Keras' LSTM, GRU and SimpleRNN share: arguments, output shape(s), the (N, T, F) input
    check, the mask (consumed by the recurrence, passed on with return_sequences), dropout masks,
    initial and returned states, config.  Subclasses say how many states and gate blocks they have
    and run the recurrence: _run_fused (the engine's fused node) or _run_steps (engine ops)."""

    input_ndim = 3
    supports_masking = True
    #: state names, in Keras' order (LSTM: h then c)
    _state_names = ("h",)
    #: masks per dropout kind under recurrent_dropout (Keras' dropout_mask_count, implementation 1)
    _gate_count = 1

    def __init__(self, units, activation, use_bias, kernel_initializer, recurrent_initializer,
                 bias_initializer, dropout, recurrent_dropout, return_sequences, return_state, go_backwards,
                 stateful, zero_output_for_mask=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        kind = type(self).__name__
        if int(units) <= 0:
            raise ValueError(f"{kind}: units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.dropout = _rate(self, "dropout", dropout)
        self.recurrent_dropout = _rate(self, "recurrent_dropout", recurrent_dropout)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"{kind}: seed must be a non-negative integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._seed_rng = None if seed is None else np.random.default_rng(self.seed)
        self.return_sequences, self.go_backwards = bool(return_sequences), bool(go_backwards)
        self.return_state = bool(return_state)
        self.stateful = bool(stateful)
        self._carry = None          # stateful: the last call's final states (raw arrays, no graph)
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
        out = (input_shape[0], input_shape[1], self.units) if self.return_sequences else (input_shape[0], self.units)
        if self.return_state:                          # Keras: [output, *states], a list of shapes
            return [out] + [(input_shape[0], self.units)] * len(self._state_names)
        return out

    def compute_mask(self, inputs, mask=None):
        """Keras: the input mask for a sequence output, none for the last output alone or a state."""
        out = mask if self.return_sequences else None
        return [out] + [None] * len(self._state_names) if self.return_state else out

    # ------------------------------------------------------------------ calling
    def __call__(self, inputs, initial_state=None, training=None, mask=None, **kwargs):
        """Keras' call signature: layer(x, initial_state=[...], training=..., mask=...)."""
        if initial_state is None:
            return super().__call__(inputs, training=training, mask=mask, **kwargs)
        return call_with_states(self, inputs, initial_state, training, mask)

    def _check_states(self, shapes, batch):
        """initial_state: one (batch, units) tensor per state; the error names the layer, the
        expected and the received."""
        n, kind = len(self._state_names), type(self).__name__
        want = [(batch, self.units)] * n
        names = ", ".join(self._state_names)
        if len(shapes) != n:
            raise ValueError(f'layer "{self.name}" ({kind}) expects initial_state with {n} tensor(s) [{names}] of '
                             f"shape {shape_str(want[0])}, got {len(shapes)}: "
                             f"{', '.join(shape_str(s) for s in shapes) or 'none'}")
        for name, s in zip(self._state_names, shapes):
            s = tuple(s)
            if len(s) != 2 or s[1] != self.units or (batch is not None and s[0] not in (None, batch)):
                raise ValueError(f'layer "{self.name}" ({kind}): initial_state {name} must have shape '
                                 f"{shape_str(want[0])}, got {shape_str(s)}")

    def _initial_states(self, inputs, initial_state):
        """initial_state as Tensors on the inputs' device (arrays are converted), shapes checked;
        None for zeros."""
        if initial_state is None:
            return None
        states = list(initial_state) if isinstance(initial_state, (list, tuple)) else [initial_state]
        states = [s if isinstance(s, Tensor) else as_tensor_input(s, inputs.device) for s in states]
        states = [s.to(inputs.device) if s.device != inputs.device else s for s in states]
        self._check_states([s.shape for s in states], inputs.shape[0])
        return states

    def _mask_rng(self):
        """The layer's own generator with seed= (Keras' SeedGenerator), else the engine's (manual_seed)."""
        return self._seed_rng if self._seed_rng is not None else _random.default_generator()

    def _dropout_masks(self, n, features, xp, dtype, training):
        """This call's dropout masks: (input masks, recurrent masks), each None or a list with one
        array per gate (recurrent_dropout set: Keras' implementation 1) or a single shared one."""
        if not training or not (self.dropout or self.recurrent_dropout):
            return None, None
        count = self._gate_count if self.recurrent_dropout else 1
        rng = self._mask_rng()
        inp = [_dropout_mask((n, features), self.dropout, rng, xp, dtype) for _ in range(count)] \
            if self.dropout else None
        rec = [_dropout_mask((n, self.units), self.recurrent_dropout, rng, xp, dtype) for _ in range(count)] \
            if self.recurrent_dropout else None
        return inp, rec

    def reset_states(self, states=None):
        """stateful=True: start the next batch from zeros (or from `states`, one (batch, units) array
        per state), e.g. between epochs or independent sequences."""
        if not self.stateful:
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}) is not stateful; reset_states() is for '
                             "layers built with stateful=True")
        if states is None:
            self._carry = None
            return
        states = list(states) if isinstance(states, (list, tuple)) else [states]
        self._check_states([np.shape(a) for a in states], None)
        self._carry = [np.array(a.numpy() if isinstance(a, Tensor) else a, dtype=np.float32) for a in states]

    reset_state = reset_states          # Keras 3's name

    def _carried_states(self, inputs):
        """stateful=True: the previous call's final states as this call's initial ones (no gradient
        flows back into an earlier batch, as in Keras); None before the first call or after a reset."""
        if self._carry is None:
            return None
        if self._carry[0].shape[0] != inputs.shape[0]:
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}, stateful=True) carries states for '
                             f"{self._carry[0].shape[0]} sequences into a batch of {inputs.shape[0]}: every batch "
                             "must have the same size (a batch size that divides the data, or drop the remainder), "
                             "or call reset_states() first")
        xp = get_array_module(inputs.data)
        return [Tensor._wrap(xp.asarray(a, dtype=inputs.dtype)) for a in self._carry]

    def call(self, inputs, training=False, mask=None, initial_state=None):
        keep = self._step_mask(inputs, mask)
        states = self._initial_states(inputs, initial_state)
        if states is None and self.stateful:
            states = self._carried_states(inputs)
        in_masks, rec_masks = self._dropout_masks(inputs.shape[0], inputs.shape[2], get_array_module(inputs.data),
                                                  inputs.dtype, training)
        x = inputs
        if in_masks is not None and len(in_masks) == 1:
            # one mask for every gate and step: it drops the same features of the whole sequence
            x = x * Tensor._wrap(in_masks[0][:, None, :])
            in_masks = None
        x = x[:, ::-1] if self.go_backwards else x
        if in_masks is None and rec_masks is None and self._fused_ok():
            seq, final = self._run_fused(x, states, keep)
            seq = seq.transpose(1, 0, 2) if self.return_sequences else None
        else:
            outs, final = self._run_steps(x, states, keep, in_masks, rec_masks)
            seq = ops.stack(outs, axis=1) if self.return_sequences else None
        # with go_backwards the sequence comes back in processing (reversed) order, as in Keras
        y = seq if self.return_sequences else final[0]
        if states is not None:
            y = self._zero_before_first_step(y, keep)
        y = self._zero_masked(y, keep)
        if self.stateful:
            self._carry = [get_array_module(f.data).asarray(f.data).copy() for f in final]
        return [y] + list(final) if self.return_state else y

    def _fused_ok(self):
        return True

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

    def _zero_before_first_step(self, y, keep):
        """Keras (keras.src.backend.tensorflow.rnn) repeats the previous *output* at a masked step,
        and that starts as zeros, not as the initial state: until a sequence's first kept step its
        output is 0 (the held states are the initial ones).  Zero initial states need no fix."""
        if keep is None:
            return y
        xp = get_array_module(keep)
        seen = xp.cumsum(keep, axis=0) > 0                    # (T, N): a step was kept at or before t
        factor = seen.T[:, :, None] if self.return_sequences else seen[-1][:, None]
        return y * Tensor._wrap(factor.astype(y.dtype))

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
                "return_state": self.return_state, "go_backwards": self.go_backwards, "stateful": self.stateful,
                "zero_output_for_mask": self.zero_output_for_mask,
                "dropout": self.dropout, "recurrent_dropout": self.recurrent_dropout, "seed": self.seed,
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
    _state_names = ("h", "c")
    _gate_count = 4

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", unit_forget_bias=True, dropout=0.0, recurrent_dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False,
                 unroll=False, seed=None, **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, dropout, recurrent_dropout, return_sequences,
                         return_state, go_backwards, stateful, seed=seed, **kwargs)
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

    def _run_fused(self, x, states, keep):
        h0, c0 = states if states is not None else (None, None)
        seq, h, c = _lstm_fused(x, self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
                                h0, c0, keep)
        return seq, [h, c]

    def _run_steps(self, x, states, keep, in_masks=None, rec_masks=None):
        h0, c0 = states if states is not None else (None, None)
        return _lstm_steps(x, self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None, h0, c0,
                           keep, self.activation, self.recurrent_activation, in_masks, rec_masks)

    def _call_ops(self, x, bias, keep=None):
        """Reference recurrence from engine ops (what custom activations run), without dropout."""
        xs = x[:, ::-1] if self.go_backwards else x
        outs, (h, _) = _lstm_steps(xs, self.kernel, self.recurrent_kernel, bias, None, None, keep,
                                   self.activation, self.recurrent_activation)
        return ops.stack(outs, axis=1) if self.return_sequences else h

    def get_config(self):
        return {**super().get_config(), "unit_forget_bias": self.unit_forget_bias}


class GRU(_Gated):
    """Keras' GRU (reset_after=True, the Keras 2.x/3 default): kernel (features, 3*units) and
    recurrent_kernel (units, 3*units) with gates ordered z, r, h, and bias (2, 3*units) holding the
    input and the recurrent bias.  That is PyTorch's GRU with the gates in another order, so the
    sequence runs through the engine's fused GRU (engine.nn.functional.gru_layer) on a permuted
    view of the weights; the permutation is part of the graph, so gradients land in Keras' layout."""

    _gate_count = 3

    def __init__(self, units, activation="tanh", recurrent_activation="sigmoid", use_bias=True,
                 kernel_initializer="glorot_uniform", recurrent_initializer="orthogonal",
                 bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0, return_sequences=False,
                 return_state=False, go_backwards=False, stateful=False, unroll=False, reset_after=True,
                 seed=None, **kwargs):
        super().__init__(units, activation, recurrent_activation, use_bias, kernel_initializer,
                         recurrent_initializer, bias_initializer, dropout, recurrent_dropout, return_sequences,
                         return_state, go_backwards, stateful, seed=seed, **kwargs)
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

    def _run_fused(self, x, states, keep):
        from ...nn.functional import gru_layer
        order = self._torch_order
        w_ih = self.kernel[:, order].T                  # (3U, F) in PyTorch's gate order
        w_hh = self.recurrent_kernel[:, order].T
        b_ih = b_hh = None
        if self.use_bias:
            b_ih, b_hh = self.bias[0][order], self.bias[1][order]
        seq, last = gru_layer(x.transpose(1, 0, 2), states[0] if states else None, w_ih, w_hh, b_ih, b_hh,
                              mask=keep)
        return seq, [last]

    def _run_steps(self, x, states, keep, in_masks=None, rec_masks=None):
        b_in, b_rec = (self.bias[0], self.bias[1]) if self.use_bias else (None, None)
        return _gru_steps(x, self.kernel, self.recurrent_kernel, b_in, b_rec, states[0] if states else None, keep,
                          self.activation, self.recurrent_activation, in_masks, rec_masks)

    def get_config(self):
        return {**super().get_config(), "reset_after": True}


class SimpleRNN(_Recurrent):
    """Keras' SimpleRNN: h_t = activation(x_t @ kernel + bias + h_{t-1} @ recurrent_kernel), weights
    kernel (features, units), recurrent_kernel (units, units), bias (units,).  With tanh or relu the
    sequence runs through the engine's fused Elman RNN (engine.nn.functional.rnn_layer) on
    transposed views of the weights (graph ops, so gradients land in Keras' layout); any other
    activation, and recurrent_dropout, run the same recurrence built from engine ops."""

    _FUSED = {"tanh": activations.tanh, "relu": activations.relu}

    def __init__(self, units, activation="tanh", use_bias=True, kernel_initializer="glorot_uniform",
                 recurrent_initializer="orthogonal", bias_initializer="zeros", dropout=0.0, recurrent_dropout=0.0,
                 return_sequences=False, return_state=False, go_backwards=False, stateful=False, unroll=False,
                 seed=None, **kwargs):
        super().__init__(units, activation, use_bias, kernel_initializer, recurrent_initializer,
                         bias_initializer, dropout, recurrent_dropout, return_sequences, return_state,
                         go_backwards, stateful, seed=seed, **kwargs)

    def build(self, input_shape):
        feat = self._feature_axis(input_shape)
        self.add_weight("kernel", (feat, self.units), self.kernel_initializer)
        self.add_weight("recurrent_kernel", (self.units, self.units), self.recurrent_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)

    def _fused_ok(self):
        return self._FUSED.get(self.activation.name) is self.activation

    def _run_fused(self, x, states, keep):
        from ...nn.functional import rnn_layer
        seq, last = rnn_layer(x.transpose(1, 0, 2), states[0] if states else None, self.kernel.T,
                              self.recurrent_kernel.T, self.bias if self.use_bias else None,
                              nonlinearity=self.activation.name, mask=keep)
        return seq, [last]

    def _run_steps(self, x, states, keep, in_masks=None, rec_masks=None):
        # in_masks is always None here: SimpleRNN's one input mask was applied to the whole sequence
        return _rnn_steps(x, self.kernel, self.recurrent_kernel, self.bias if self.use_bias else None,
                          states[0] if states else None, keep, self.activation, rec_masks)
