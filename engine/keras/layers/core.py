"""Core Keras layers: InputLayer, Dense, Embedding, Masking, Activation, Dropout, Flatten, Reshape.

Masks (see layers.base): Embedding(mask_zero=True) and Masking make them; Dense, Activation (ReLU,
Softmax), LeakyReLU and Dropout pass them on, as in Keras 3; Flatten and Reshape drop them with
Keras' warning."""
from __future__ import annotations

import numpy as np

from ...backend import get_array_module
from ...nn import functional as F
from ...tensor import Tensor, from_op
from ... import random as _random
from .. import activations, initializers
from .base import CF, CL, Layer, shape_str, to_channels_last

__all__ = ["InputLayer", "Input", "Dense", "Embedding", "Masking", "Activation", "ReLU", "LeakyReLU", "Softmax",
           "Dropout", "Flatten", "Reshape"]


class InputLayer(Layer):
    """Declares the model's input shape (no weights, no computation).  dtype may be float32 or an
    integer type (token ids, as `keras.Input(shape=(None,), dtype="int64")` before an Embedding):
    the data then travels as float32, exact for ids below 2**24, and Embedding takes it back to
    integers.  String inputs are refused: text is vectorized before the model."""

    layout_agnostic = True

    def __init__(self, input_shape=None, batch_size=None, name=None, shape=None, batch_input_shape=None,
                 dtype=None, **kwargs):
        if shape is not None and input_shape is None:
            input_shape = shape
        if input_shape is None and batch_input_shape is None:
            raise ValueError("InputLayer needs shape=(...) (the shape of one sample, without the batch axis)")
        dtype = _input_dtype(dtype)
        super().__init__(name=name, input_shape=input_shape, batch_size=batch_size,
                         batch_input_shape=batch_input_shape, dtype=None if dtype != "float32" else dtype, **kwargs)

    def expected_input_shape(self):
        return (None,) + tuple(self._batch_input_shape[1:])

    def call(self, inputs, training=False):
        return inputs

    def call_internal(self, x, layout, training, final_logits=False):
        return x, layout


def _input_dtype(dtype):
    """The dtype an InputLayer accepts: float32 (also None) or an integer type, by name."""
    if dtype is None:
        return None
    name = getattr(dtype, "name", dtype)
    if isinstance(name, str) and name.lower() in ("string", "str", "object", "bytes"):
        raise ValueError(
            "keras.Input(dtype='string'): models in dptrain's Keras facade carry numeric tensors only, so text "
            "is vectorized before the model: vectorize_layer = layers.TextVectorization(output_sequence_length=L); "
            "vectorize_layer.adapt(texts); x = vectorize_layer(texts), and the model starts at "
            "keras.Input(shape=(L,), dtype='int64') -> Embedding")
    try:
        dt = np.dtype(name)
    except TypeError:
        raise ValueError(f"InputLayer: unknown dtype {dtype!r}; use 'float32' or an integer type") from None
    if dt == np.float32:
        return "float32"
    if dt.kind in "iu":
        return dt.name
    raise ValueError(f"InputLayer: only float32 and integer inputs are supported, got dtype={dtype!r}")


def Input(shape=None, batch_size=None, name=None, dtype=None, batch_shape=None, **kwargs):
    """keras.Input(shape=(28, 28, 1)): a symbolic tensor for the functional API
    (`keras.Model(inputs, outputs)`), also accepted as the first entry of a Sequential list."""
    from ..functional import symbolic_input
    if batch_shape is not None:
        layer = InputLayer(batch_input_shape=batch_shape, name=name, dtype=dtype, **kwargs)
    else:
        layer = InputLayer(input_shape=shape, batch_size=batch_size, name=name, dtype=dtype, **kwargs)
    return symbolic_input(layer)


class _WithActivation(Layer):
    def output_activation(self):
        return self.activation.name

    def _activate(self, y, final_logits):
        if final_logits or self.activation is activations.linear:
            return y
        return self.activation(y)


class Dense(_WithActivation):
    """y = activation(x @ kernel + bias) on the last axis; kernel is (in, out) as in Keras."""

    supports_masking = True

    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        kwargs.update(kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer)
        super().__init__(**kwargs)
        if int(units) <= 0:
            raise ValueError(f"Dense: units must be a positive integer, got {units!r}")
        self.units = int(units)
        self.activation = activations.get(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) < 2 or input_shape[-1] is None:
            raise ValueError(f'layer "{self.name}" (Dense) needs a known last input axis, '
                             f"got input shape {shape_str(input_shape)}")
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)

    def expected_input_shape(self):
        s = self.input_shape_built
        return (None,) * (len(s) - 1) + (s[-1],) if s else None

    def check_input_shape(self, shape, built=True):
        if len(shape) < 2:
            raise _shape_error(self, shape, "at least 2 axes (batch, features)")
        if built and self.built and shape[-1] != self.kernel.shape[0]:
            raise _shape_error(
                self, shape, f"axis -1 of the input to have value {self.kernel.shape[0]}",
                " (the layer was built for that input size)")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def call(self, inputs, training=False, final_logits=False):
        fuse_relu = self.activation is activations.relu and not final_logits
        y = dense(inputs, self.kernel, self.bias if self.use_bias else None, relu=fuse_relu)
        return y if fuse_relu else self._activate(y, final_logits)

    def call_internal(self, x, layout, training, final_logits=False):
        if layout == CF:
            x = to_channels_last(x)
        return self.call(x, training, final_logits), CL

    def get_config(self):
        return {**super().get_config(), "units": self.units,
                "activation": activations.serialize(self.activation), "use_bias": self.use_bias,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer)}


def dense(x: Tensor, kernel: Tensor, bias: Tensor | None, relu: bool = False) -> Tensor:
    """x @ kernel + bias (optionally ReLU'd) over the last axis as one graph node.

    One sgemm each way and no separate bias / activation nodes: the Keras kernel layout
    (in, out) is used as is, so its gradient comes out in the parameter's own layout.
    """
    xp = get_array_module(x.data)
    K = kernel.data
    xd = x.data if x.dtype == K.dtype else x.data.astype(K.dtype)
    lead, n_in, n_out = xd.shape[:-1], K.shape[0], K.shape[1]
    x2 = xd.reshape(-1, n_in)
    out = x2 @ K
    if bias is not None:
        out += bias.data
    if relu:
        xp.maximum(out, 0, out=out)
    need_x, need_k = x.requires_grad, kernel.requires_grad
    need_b = bias is not None and bias.requires_grad
    xdtype = x.dtype

    def backward(g):
        g2 = g.reshape(-1, n_out)
        if relu:
            g2 = g2 * (out > 0)
        dx = dk = db = None
        if need_x:
            if x2.flags.f_contiguous and not x2.flags.c_contiguous:
                dx = (K @ g2.T).T                      # keep the input's memory order
            else:
                dx = g2 @ K.T
            dx = dx.reshape(lead + (n_in,))
            if dx.dtype != xdtype:
                dx = dx.astype(xdtype)
        if need_k:
            dk = x2.T @ g2
        if need_b:
            db = g2.sum(axis=0)
        return (dx, dk, db) if bias is not None else (dx, dk)

    parents = (x, kernel, bias) if bias is not None else (x, kernel)
    return from_op(out.reshape(lead + (n_out,)), parents, backward, "dense")


def _shape_error(layer, shape, expectation, extra=""):
    from .base import InputShapeError
    return InputShapeError(
        f'Input 0 of layer "{layer.name}" ({type(layer).__name__}) is incompatible with the layer: '
        f"expected {expectation}, but received input with shape {shape_str(shape)}{extra}")


class Activation(_WithActivation):
    supports_masking = True

    def __init__(self, activation, **kwargs):
        super().__init__(**kwargs)
        self.activation = activations.get(activation)
        self.layout_agnostic = self.activation.elementwise

    def call(self, inputs, training=False, final_logits=False):
        return self._activate(inputs, final_logits)

    def call_internal(self, x, layout, training, final_logits=False):
        if layout == CF and not self.layout_agnostic:
            x, layout = to_channels_last(x), CL
        return self._activate(x, final_logits), layout

    def get_config(self):
        return {**super().get_config(), "activation": activations.serialize(self.activation)}


class ReLU(Activation):
    """Keras' ReLU(max_value=None, negative_slope=0.0, threshold=0.0): x above threshold, capped at
    max_value; negative_slope * (x - threshold) below it."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kwargs):
        if max_value is not None and max_value < 0:
            raise ValueError(f"max_value of a ReLU layer cannot be a negative value. Received: {max_value}")
        if negative_slope is None or negative_slope < 0:
            raise ValueError(f"negative_slope of a ReLU layer cannot be a negative value. Received: {negative_slope}")
        if threshold is None or threshold < 0:
            raise ValueError(f"threshold of a ReLU layer cannot be a negative value. Received: {threshold}")
        self.max_value = None if max_value is None else float(max_value)
        self.negative_slope, self.threshold = float(negative_slope), float(threshold)
        if self.max_value is None and not self.negative_slope and not self.threshold:
            super().__init__("relu", **kwargs)
        else:
            super().__init__(activations.KerasActivation("relu_custom", self._relu), **kwargs)

    def _relu(self, x):
        from ... import ops
        y = x * Tensor._wrap((x.data > self.threshold).astype(x.dtype)) if self.threshold else ops.relu(x)
        if self.max_value is not None:
            y = ops.clip(y, 0.0, self.max_value)
        if self.negative_slope:
            y = y - self.negative_slope * ops.relu(self.threshold - x)
        return y

    def get_config(self):
        return {**Layer.get_config(self), "max_value": self.max_value, "negative_slope": self.negative_slope,
                "threshold": self.threshold}


class Softmax(Activation):
    """Keras' Softmax layer; with a mask, masked entries get -1e9 added before the softmax (Keras 3
    adds (1 - mask) * -1e9 to the inputs, so the mask must broadcast against them)."""

    def __init__(self, axis=-1, **kwargs):
        if not isinstance(axis, (int, np.integer)):
            raise ValueError(f"Softmax layer: axis must be one integer, got {axis!r}")
        self.axis = int(axis)
        if self.axis == -1:
            super().__init__("softmax", **kwargs)      # the last axis: may fuse with the loss
        else:
            super().__init__(activations.KerasActivation(
                "softmax_axis", lambda x: activations.softmax_op(x, self.axis), elementwise=False), **kwargs)

    def call(self, inputs, training=False, final_logits=False, mask=None):
        if mask is not None:
            inputs = inputs + self._mask_adder(inputs, mask)
        return self._activate(inputs, final_logits)

    def get_config(self):
        return {**Layer.get_config(self), "axis": self.axis}

    def _mask_adder(self, x, mask):
        xp = get_array_module(x.data)
        adder = (1.0 - xp.asarray(mask).astype(x.dtype)) * x.dtype.type(-1e9)
        try:
            fits = np.broadcast_shapes(adder.shape, x.shape) == tuple(x.shape)
        except ValueError:
            fits = False
        if not fits:
            raise ValueError(f'layer "{self.name}" (Softmax) got a mask of shape {tuple(adder.shape)} for inputs of '
                             f"shape {tuple(x.shape)}; Keras adds the mask to the inputs, so it must broadcast "
                             "against them, and a (batch, timesteps) mask does not broadcast against "
                             "(batch, timesteps, classes). For a masked sequence output use "
                             "Dense(classes, activation='softmax')")
        return Tensor._wrap(adder)


def dropout(x: Tensor, rate: float) -> Tensor:
    """Inverted dropout: zero with probability `rate`, scale survivors by 1/(1-rate).  Under data
    parallelism (engine.random.batch_shard) the numbers are drawn for the global batch and this
    worker keeps its rows, so N workers drop what one worker would."""
    xp = get_array_module(x.data)
    if xp is np:
        rng = _random.default_generator()
        keep = _random.draw_rows(lambda shape: rng.random(shape, dtype=np.float32), x.shape) >= rate
    else:
        keep = _random.draw_rows(lambda shape: xp.random.random(shape, dtype=np.float32), x.shape) >= rate
    scale = x.dtype.type(1.0 / (1.0 - rate))
    mask = keep.astype(x.dtype)
    mask *= scale
    return from_op(x.data * mask, (x,), lambda g: (g * mask,), "dropout")


class Dropout(Layer):
    layout_agnostic = True
    supports_masking = True

    def __init__(self, rate, noise_shape=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(f"Dropout: rate must be in [0, 1), got {rate!r}")
        if noise_shape is not None:
            raise ValueError("Dropout: noise_shape is not supported")
        self.rate = float(rate)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        return dropout(inputs, self.rate)

    def call_internal(self, x, layout, training, final_logits=False):
        return self.call(x, training), layout

    def get_config(self):
        return {**super().get_config(), "rate": self.rate}


class Embedding(Layer):
    """Integer token ids (N, T) -> vectors (N, T, output_dim); the table is `embeddings`
    (input_dim, output_dim), initialised uniform(-0.05, 0.05) as in Keras.

    Model inputs reach layers as float32 (Keras casts them too); the ids are converted back to
    integers here, and ids outside [0, input_dim) are an error naming the layer.  With
    mask_zero=True id 0 is padding: the output's mask is ids != 0 (Keras), so the recurrent layers,
    GlobalAveragePooling1D and the loss skip the padded steps; ids 1.. are the tokens, so
    input_dim is the vocabulary size + 1."""

    def __init__(self, input_dim, output_dim, embeddings_initializer="uniform", embeddings_regularizer=None,
                 mask_zero=False, input_length=None, **kwargs):
        kwargs["embeddings_regularizer"] = embeddings_regularizer
        if input_length is not None and "input_shape" not in kwargs and "batch_input_shape" not in kwargs:
            kwargs["input_shape"] = (int(input_length),)          # Keras 2 spelling
        super().__init__(**kwargs)
        if int(input_dim) <= 0 or int(output_dim) <= 0:
            raise ValueError(f"Embedding: input_dim and output_dim must be positive, got {input_dim}, {output_dim}")
        self.input_dim, self.output_dim = int(input_dim), int(output_dim)
        self.embeddings_initializer = initializers.get(embeddings_initializer)
        self.mask_zero = bool(mask_zero)
        self.supports_masking = self.mask_zero

    def compute_mask(self, inputs, mask=None):
        if not self.mask_zero:
            return None
        return inputs.data != 0

    def build(self, input_shape):
        self.add_weight("embeddings", (self.input_dim, self.output_dim), self.embeddings_initializer)

    def expected_input_shape(self):
        s = self.input_shape_built
        return (None,) + tuple(s[1:]) if s else None

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.output_dim,)

    def call(self, inputs, training=False):
        ids = inputs.data
        xp = get_array_module(ids)
        if ids.dtype.kind == "f":
            if ids.size and not bool(xp.all(ids == xp.floor(ids))):
                raise ValueError(f'layer "{self.name}" (Embedding) needs integer token ids; got non-integer values')
            ids = ids.astype(np.int64)
        if ids.size:
            lo, hi = int(ids.min()), int(ids.max())
            if lo < 0 or hi >= self.input_dim:
                raise ValueError(f'layer "{self.name}" (Embedding): token id {hi if hi >= self.input_dim else lo} is '
                                 f"outside [0, {self.input_dim}); raise input_dim to the vocabulary size")
        return F.embedding(Tensor(ids), self.embeddings)

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim, "output_dim": self.output_dim,
                "embeddings_initializer": initializers.serialize(self.embeddings_initializer),
                "mask_zero": self.mask_zero}


def _mask_steps(x: Tensor, keep) -> Tensor:
    """x with the features of masked steps set to 0 (keep: (..., 1) in x's dtype), one graph node."""
    return from_op(x.data * keep, (x,), lambda g: (g * keep,), "masking")


class Masking(Layer):
    """Keras' Masking(mask_value=0.0): a timestep whose features all equal mask_value is masked.
    Its features become 0 (as in Keras) and the mask goes on to the layers after it."""

    supports_masking = True

    def __init__(self, mask_value=0.0, **kwargs):
        super().__init__(**kwargs)
        self.mask_value = float(mask_value)

    def compute_mask(self, inputs, mask=None):
        xp = get_array_module(inputs.data)
        return xp.any(inputs.data != inputs.dtype.type(self.mask_value), axis=-1)

    def call(self, inputs, training=False):
        keep = self.compute_mask(inputs)[..., None].astype(inputs.dtype)
        return _mask_steps(inputs, keep)

    def get_config(self):
        return {**super().get_config(), "mask_value": self.mask_value}


class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...), in Keras' channels-last order."""

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        n = None if any(s is None for s in rest) else int(np.prod(rest)) if rest else 1
        return (input_shape[0], n)

    def check_input_shape(self, shape, built=True):
        if len(shape) < 2:
            raise _shape_error(self, shape, "at least 2 axes (batch, ...)")

    def call(self, inputs, training=False):
        return inputs.reshape(inputs.shape[0], -1)

    def get_config(self):
        return {**super().get_config(), "data_format": "channels_last"}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config.pop("data_format", None)
        return super().from_config(config)


class Reshape(Layer):
    def __init__(self, target_shape, **kwargs):
        super().__init__(**kwargs)
        self.target_shape = tuple(int(s) for s in target_shape)
        if sum(1 for s in self.target_shape if s == -1) > 1:
            raise ValueError(f"Reshape: at most one -1 in target_shape, got {self.target_shape}")

    def compute_output_shape(self, input_shape):
        rest = input_shape[1:]
        if -1 in self.target_shape and all(s is not None for s in rest):
            known = int(np.prod([s for s in self.target_shape if s != -1]))
            total = int(np.prod(rest))
            if total % known:
                raise ValueError(f'layer "{self.name}" (Reshape): cannot reshape {shape_str(input_shape)} '
                                 f"into {shape_str((None,) + self.target_shape)}")
            return (input_shape[0],) + tuple(total // known if s == -1 else s for s in self.target_shape)
        if all(s is not None for s in rest) and int(np.prod(rest)) != int(np.prod(self.target_shape)):
            raise ValueError(f'layer "{self.name}" (Reshape): cannot reshape {shape_str(input_shape)} '
                             f"({int(np.prod(rest))} values per sample) into "
                             f"{shape_str((None,) + self.target_shape)}")
        return (input_shape[0],) + self.target_shape

    def call(self, inputs, training=False):
        return inputs.reshape((inputs.shape[0],) + self.target_shape)

    def get_config(self):
        return {**super().get_config(), "target_shape": list(self.target_shape)}


class LeakyReLU(Layer):
    """max(x, negative_slope * x); Keras' default slope 0.3 (`alpha=` is the Keras 2 spelling)."""

    layout_agnostic = True
    supports_masking = True

    def __init__(self, negative_slope=0.3, alpha=None, **kwargs):
        super().__init__(**kwargs)
        self.negative_slope = float(alpha if alpha is not None else negative_slope)

    def call(self, inputs, training=False):
        return F.leaky_relu(inputs, self.negative_slope)

    def call_internal(self, x, layout, training, final_logits=False):
        return self.call(x, training), layout

    def get_config(self):
        return {**super().get_config(), "negative_slope": self.negative_slope}
