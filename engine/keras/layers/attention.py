"""Keras 3's MultiHeadAttention, composed from the engine's dense, matmul, softmax and dropout nodes.

Why its own layer rather than engine.nn.MultiheadAttention: Keras' weights and semantics differ from
torch's.  Keras keeps four EinsumDense projections with kernels (dim, num_heads, key_dim) for query
and key, (dim, num_heads, value_dim) for value and (num_heads, value_dim, out) for the output, biases
(num_heads, key_dim) ... (out,), in the order query, key, value, attention_output (get_weights /
set_weights / saved files use that order and these layouts, so weights move between the two
unchanged); key_dim is free of dim / num_heads; boolean masks mean True = attend; masked scores get
-1e9 added (Keras' Softmax layer), not -inf, and the probabilities are multiplied by the mask, so a
query step that may attend to nothing gets all-zero weights rather than NaN; the returned scores
are the probabilities before dropout.

Masks (Keras 3): the query's mask (batch, T) and the value's (and an explicit key's) mask (batch,
S), e.g. from Embedding(mask_zero=True), become an attention mask (batch, T, S) (query_mask[:, :, None]
& value_mask[:, None, :]), combined by AND with `attention_mask` and, with use_causal_mask=True, the
lower-triangular (T, S) mask; the output carries the query's mask.

Only attention over the sequence axis of (batch, timesteps, features) inputs (attention_axes=None,
Keras' default for such inputs) is implemented.

Attention (Luong, dot or "concat" scores, optional learned scale) and AdditiveAttention (Bahdanau)
are Keras' weight-free-projection layers called on a list [query, value(, key)]; unlike
MultiHeadAttention they follow keras.src.layers.attention.attention: -1e9 subtracted where the value
mask (and the causal mask) is False, no multiplication of the probabilities, the output zeroed where
the query mask is False, and the returned scores are the probabilities after dropout.
"""
from __future__ import annotations

import math

import numpy as np

from ...backend import get_array_module
from ...nn import functional as F
from ... import ops
from ...tensor import Tensor
from .. import initializers
from .base import InputShapeError, Layer, as_mask, as_tensor_input, attach_mask, resolve_training, shape_str
from .core import dense

__all__ = ["MultiHeadAttention", "Attention", "AdditiveAttention", "multi_head_attention", "project"]

#: what Keras' Softmax layer adds to masked scores in float32 (keras.src.layers.activations.softmax)
_LARGE_NEGATIVE = -1e9


def project(x: Tensor, kernel: Tensor, bias: Tensor | None) -> Tensor:
    """Keras' EinsumDense over the last axis: x (..., d) and kernel (d, *out) -> (..., *out), as one
    dense node (the kernel viewed as (d, prod(out)))."""
    d, out = kernel.shape[0], tuple(kernel.shape[1:])
    n = int(np.prod(out))
    k2 = kernel if kernel.ndim == 2 else kernel.reshape(d, n)
    b2 = None if bias is None else bias if bias.ndim == 1 else bias.reshape(n)
    y = dense(x, k2, b2)
    return y if len(out) == 1 else y.reshape(tuple(x.shape[:-1]) + out)


def masked_softmax(scores: Tensor, mask) -> Tensor:
    """Keras' Softmax(mask=...) over the last axis: (1 - mask) * -1e9 added to the scores, and the
    probabilities multiplied by the mask (a fully masked row gives zeros)."""
    if mask is None:
        return F.softmax(scores, axis=-1)
    keep = mask.astype(scores.dtype)
    adder = (1.0 - keep) * scores.dtype.type(_LARGE_NEGATIVE)
    return F.softmax(scores + Tensor._wrap(adder), axis=-1) * Tensor._wrap(keep)


def multi_head_attention(query, value, key, weights, mask=None, dropout=0.0, training=False, generator=None):
    """Keras' MultiHeadAttention on (B, T, dq) query and (B, S, dv) value / (B, S, dk) key tensors.
    weights: [query kernel, query bias, key kernel, key bias, value kernel, value bias, output kernel,
    output bias] in Keras' layouts, biases None without use_bias; mask: None or a boolean array that
    broadcasts to (B, heads, T, S), True = attend.  -> (output (B, T, *out), scores (B, heads, T, S))."""
    qk, qb, kk, kb, vk, vb, ok, ob = weights
    q = project(query, qk, qb)                                   # (B, T, H, K)
    k = project(key, kk, kb)                                     # (B, S, H, K)
    v = project(value, vk, vb)                                   # (B, S, H, V)
    # scale the query before the product, as Keras does
    q = q * q.dtype.type(1.0 / math.sqrt(float(qk.shape[-1])))
    scores = ops.matmul(q.transpose(0, 2, 1, 3), k.transpose(0, 2, 3, 1))       # (B, H, T, S)
    probs = masked_softmax(scores, mask)
    dropped = F.dropout(probs, dropout, True, generator=generator) if training and dropout > 0 else probs
    ctx = ops.matmul(dropped, v.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)   # (B, T, H, V)
    h, vd = ok.shape[0], ok.shape[1]
    out = tuple(ok.shape[2:])
    y = project(ctx.reshape(tuple(ctx.shape[:2]) + (h * vd,)), ok.reshape((h * vd,) + out), ob)
    return y, probs


def _as_axes(attention_axes):
    if attention_axes is None:
        return None
    axes = (attention_axes,) if isinstance(attention_axes, int) else attention_axes
    if not isinstance(axes, (list, tuple)) or not all(isinstance(a, (int, np.integer)) for a in axes):
        raise ValueError(f"MultiHeadAttention: attention_axes must be an int, list, or tuple, got {attention_axes!r}")
    return [int(a) for a in axes]


class _QueryValueLayer(Layer):
    """What the attention layers share: called on [query, value(, key)], built from those shapes,
    errors naming the layer."""

    def _err(self, text, cls=ValueError):
        return cls(f'layer "{self.name}" ({type(self).__name__}): {text}')

    def _build_for_many(self, shapes, return_attention_scores=False):
        """The symbolic call (functional API): build, and the output shape(s) for the graph."""
        self._ensure_built(shapes)
        self.output_shape_built = self._output_shapes([tuple(s) for s in shapes], return_attention_scores)
        return self.output_shape_built


class MultiHeadAttention(_QueryValueLayer):
    """keras.layers.MultiHeadAttention(num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True,
    output_shape=None, attention_axes=None, kernel_initializer='glorot_uniform', bias_initializer='zeros',
    seed=None), called as mha(query, value, key=None, attention_mask=None, return_attention_scores=False,
    training=None, use_causal_mask=False), eagerly or on KerasTensors; see the module docstring."""

    supports_masking = True
    # its inputs are separate arguments mha(query, value, key), not one list: the functional graph
    # replays and rebuilds the call that way
    _positional_inputs = True

    def _penalty_prefix(self, weight_name):
        """kernel_regularizer / kernel_constraint act on all four kernels, bias_* on all biases (Keras)."""
        return "kernel" if weight_name.endswith("_kernel") else "bias" if weight_name.endswith("_bias") else None

    def __init__(self, num_heads, key_dim, value_dim=None, dropout=0.0, use_bias=True, output_shape=None,
                 attention_axes=None, flash_attention=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, seed=None, **kwargs):
        kwargs.update(kernel_regularizer=kernel_regularizer, bias_regularizer=bias_regularizer,
                      activity_regularizer=activity_regularizer, kernel_constraint=kernel_constraint,
                      bias_constraint=bias_constraint)
        if flash_attention:
            raise ValueError("MultiHeadAttention: flash_attention=True is not available; the facade computes the "
                             "(batch, heads, T, S) scores explicitly")
        super().__init__(**kwargs)
        if int(num_heads) <= 0 or int(key_dim) <= 0 or (value_dim is not None and int(value_dim) <= 0):
            raise ValueError(f"MultiHeadAttention: num_heads, key_dim and value_dim must be positive, got "
                             f"num_heads={num_heads!r}, key_dim={key_dim!r}, value_dim={value_dim!r}")
        self.num_heads, self.key_dim = int(num_heads), int(key_dim)
        self.value_dim = int(value_dim) if value_dim else self.key_dim
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"MultiHeadAttention: dropout must be a fraction in [0, 1), got {dropout!r}")
        self.dropout = float(dropout)
        self.use_bias = bool(use_bias)
        if output_shape:
            output_shape = (output_shape,) if isinstance(output_shape, (int, np.integer)) else output_shape
            try:
                output_shape = tuple(int(s) for s in output_shape)
            except (TypeError, ValueError):
                raise ValueError(f"MultiHeadAttention: output_shape must be an int or a tuple of ints, got "
                                 f"{output_shape!r}") from None
        self._output_shape = output_shape or None
        self.attention_axes = _as_axes(attention_axes)
        if self.attention_axes is not None and self.attention_axes not in ([1], [-2]):
            raise ValueError(f"MultiHeadAttention: attention_axes={attention_axes!r} is not supported; only attention "
                             "over the sequence axis of (batch, timesteps, features) inputs (attention_axes=None, "
                             "or 1) is implemented")
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)
        self.seed = None if seed is None else int(seed)
        self._rng = None if seed is None else np.random.default_rng(self.seed)

    # ------------------------------------------------------------------ shapes and weights
    def _check_shapes(self, query_shape, value_shape, key_shape):
        shapes = {"query": tuple(query_shape), "value": tuple(value_shape), "key": tuple(key_shape)}
        for what, s in shapes.items():
            if len(s) != 3:
                extra = (" (attention over several axes, i.e. attention_axes, is not supported)" if len(s) > 3
                         else "")
                raise self._err(f"expected {what} of shape (batch, timesteps, features), received {what} shape "
                                f"{shape_str(s)}{extra}", InputShapeError)
            if s[-1] is None:
                raise self._err(f"the feature axis (last) of {what} must be known, received {shape_str(s)}",
                                InputShapeError)
        v, k = shapes["value"], shapes["key"]
        if v[1] is not None and k[1] is not None and v[1] != k[1]:
            raise self._err("all dimensions of value and key, except the last one, must be equal; received "
                            f"value shape {shape_str(v)} and key shape {shape_str(k)}", InputShapeError)
        batches = {s[0] for s in shapes.values() if s[0] is not None}
        if len(batches) > 1:
            raise self._err("query, value and key must have the same batch size, received "
                            + ", ".join(f"{w} {shape_str(s)}" for w, s in shapes.items()), InputShapeError)
        if self.built:
            for what, kernel in (("query", self.query_kernel), ("value", self.value_kernel), ("key", self.key_kernel)):
                if shapes[what][-1] != kernel.shape[0]:
                    raise self._err(f"was built for {what} with {kernel.shape[0]} features, expected {what} shape "
                                    f"{shape_str((None, None, kernel.shape[0]))}, received {shape_str(shapes[what])}",
                                    InputShapeError)

    def build(self, query_shape, value_shape, key_shape=None):
        """Keras' build(query_shape, value_shape, key_shape=None): the four projections' weights."""
        key_shape = value_shape if key_shape is None else key_shape
        self._check_shapes(query_shape, value_shape, key_shape)
        h, kd, vd = self.num_heads, self.key_dim, self.value_dim
        out = self._output_shape or (query_shape[-1],)
        for what, d, per_head in (("query", query_shape[-1], kd), ("key", key_shape[-1], kd),
                                  ("value", value_shape[-1], vd)):
            self.add_weight(f"{what}_kernel", (d, h, per_head), self.kernel_initializer)
            if self.use_bias:
                self.add_weight(f"{what}_bias", (h, per_head), self.bias_initializer)
        self.add_weight("attention_output_kernel", (h, vd) + tuple(out), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("attention_output_bias", tuple(out), self.bias_initializer)
        self.built = True
        self.input_shape_built = (None,) + tuple(query_shape[1:])

    def compute_output_shape(self, query_shape, value_shape=None, key_shape=None):
        query_shape = tuple(query_shape)
        return query_shape[:-1] + self._output_shape if self._output_shape else query_shape

    def _output_shapes(self, shapes, return_attention_scores):
        q, v = shapes[0], shapes[1]
        out = (None,) + self.compute_output_shape(q)[1:]
        return [out, (None, self.num_heads, q[1], v[1])] if return_attention_scores else out

    def _ensure_built(self, shapes):
        """Build for the first shapes [query, value(, key)]; afterwards check them against the weights."""
        if len(shapes) not in (2, 3):
            raise self._err(f"takes query, value and optionally key; received {len(shapes)} tensor(s)")
        q, v = tuple(shapes[0]), tuple(shapes[1])
        k = tuple(shapes[2]) if len(shapes) == 3 else v
        if not self.built:
            self.build(q, v, None if len(shapes) == 2 else k)
        else:
            self._check_shapes(q, v, k)

    def _build_for(self, input_shape):
        raise self._err("needs a query and a value: call it as mha(query, value) (self-attention: mha(x, x))")

    def _weight_list(self):
        names = ("query", "key", "value", "attention_output")
        if self.use_bias:
            return [t for n in names for t in (getattr(self, f"{n}_kernel"), getattr(self, f"{n}_bias"))]
        return [t for n in names for t in (getattr(self, f"{n}_kernel"), None)]

    # ------------------------------------------------------------------ calling
    def __call__(self, query, value=None, key=None, query_mask=None, value_mask=None, key_mask=None,
                 attention_mask=None, return_attention_scores=False, training=None, use_causal_mask=False, **kwargs):
        from ..functional import KerasTensor, call_symbolic
        if kwargs:
            raise TypeError(f'layer "{self.name}" (MultiHeadAttention): unexpected call argument(s) '
                            f"{', '.join(sorted(kwargs))}")
        if value is None:
            raise self._err("needs a query and a value: call it as mha(query, value) (self-attention: mha(x, x))")
        inputs = [query, value] + ([key] if key is not None else [])
        symbolic = [isinstance(t, KerasTensor) for t in inputs + ([attention_mask] if attention_mask is not None
                                                                  else [])]
        if any(symbolic):
            if not all(symbolic):
                raise self._err("query, value, key and attention_mask must all be symbolic (keras.Input / layer "
                                "outputs) or all be arrays / tensors")
            if any(m is not None for m in (query_mask, value_mask, key_mask)):
                raise self._err("in a functional model the masks come from the inputs (Embedding(mask_zero=True), "
                                "Masking); pass attention_mask for anything else")
            shapes = [t.shape for t in inputs]
            out_shape = self._build_for_many(shapes, bool(return_attention_scores))
            call_kwargs = {}
            if attention_mask is not None:
                self._check_attention_mask(attention_mask.shape, shapes[0], shapes[1])
                call_kwargs["attention_mask"] = attention_mask
            if use_causal_mask:
                call_kwargs["use_causal_mask"] = True
            if return_attention_scores:
                call_kwargs["return_attention_scores"] = True
            return call_symbolic(self, inputs, kwargs=call_kwargs, output_shape=out_shape)
        masks = [getattr(t, "_keras_mask", None) if m is None else m
                 for t, m in zip(inputs, [query_mask, value_mask, key_mask])]
        y, out_mask = self._call_masked(inputs, training, masks, attention_mask=attention_mask,
                                        use_causal_mask=use_causal_mask,
                                        return_attention_scores=return_attention_scores)
        if query_mask is not None:
            # Keras hands on only the mask the query tensor carries, not one passed as query_mask=
            carried = getattr(query, "_keras_mask", None)
            carried = None if carried is None else as_mask(carried, y[0] if isinstance(y, list) else y)
            out_mask = [carried, None] if isinstance(y, list) else carried
        if isinstance(y, list):
            return tuple(attach_mask(t, m) for t, m in zip(y, out_mask))
        return attach_mask(y, out_mask)

    def _call_masked(self, inputs, training, mask, attention_mask=None, use_causal_mask=False,
                     return_attention_scores=False):
        """One call on real tensors: inputs [query, value(, key)], mask their masks -> (output, its mask),
        or ([output, scores], [mask, None]) with return_attention_scores."""
        device = self._device()
        xs = [x if isinstance(x, Tensor) else as_tensor_input(x, device) for x in inputs]
        xs = [x.to(device) if x.device != device else x for x in xs]
        if len(xs) not in (2, 3):
            raise self._err(f"takes query, value and optionally key; received {len(xs)} tensor(s)")
        shapes = [tuple(x.shape) for x in xs]
        self._ensure_built(shapes)
        if self.output_shape_built is None:                 # first built eagerly: for summary()
            self.output_shape_built = self._output_shapes([(None,) + s[1:] for s in shapes],
                                                          bool(return_attention_scores))
        q, v = xs[0], xs[1]
        k = xs[2] if len(xs) == 3 else v
        masks = list(mask or []) + [None] * 3
        qm, vm, km = (as_mask(m, q) for m in masks[:3])
        if len(xs) == 2:
            km = None
        combined = self._attention_mask(q, v, qm, vm, km, attention_mask, use_causal_mask)
        training = resolve_training(self, training)
        y, scores = multi_head_attention(q, v, k, self._weight_list(), combined, self.dropout, training, self._rng)
        if return_attention_scores:
            return [y, scores], [qm, None]
        return y, qm

    # ------------------------------------------------------------------ masks
    def _check_attention_mask(self, mask_shape, query_shape, value_shape):
        """attention_mask must broadcast to (batch, T, S), or be (batch, heads, T, S); Keras adds the
        missing leading axes."""
        want = (query_shape[0], query_shape[1], value_shape[1])
        ms = tuple(mask_shape)
        full = want[3 - len(ms):] if len(ms) in (2, 3) else (want[0], self.num_heads) + want[1:] if len(ms) == 4 \
            else None
        if full is None or not all(m is None or w is None or m in (1, w) for m, w in zip(ms, full)):
            raise self._err(f"attention_mask must have shape (batch, T, S) = {shape_str(want)} (or broadcast to it; "
                            f"True = attend), received attention_mask shape {shape_str(ms)}", InputShapeError)

    def _attention_mask(self, q, v, qm, vm, km, attention_mask, use_causal_mask):
        """The boolean mask (broadcasting to (B, heads, T, S)) from the query / value / key masks, the
        causal mask and attention_mask, combined by AND as in Keras 3; None when there is none."""
        xp = get_array_module(q.data)
        b, t, s = q.shape[0], q.shape[1], v.shape[1]
        for what, m, want in (("query", qm, (b, t)), ("value", vm, (b, s)), ("key", km, (b, s))):
            if m is not None and tuple(m.shape) != want:
                raise self._err(f"the {what} mask must have shape (batch, timesteps) = {want}, received "
                                f"{tuple(m.shape)}", InputShapeError)
        auto = None
        for m in (None if qm is None else qm[:, :, None], None if vm is None else vm[:, None, :],
                  None if km is None else km[:, None, :],
                  xp.tril(xp.ones((t, s), dtype=bool))[None] if use_causal_mask else None):
            if m is not None:
                auto = m if auto is None else auto & m
        if attention_mask is not None:
            am = attention_mask.data if isinstance(attention_mask, Tensor) else attention_mask
            am = xp.asarray(am)
            self._check_attention_mask(am.shape, q.shape, v.shape)
            am = am.astype(bool) if am.dtype != bool else am          # Keras casts: nonzero = attend
            if am.ndim == 4:
                return am if auto is None else am & auto[:, None]
            am = am.reshape((1,) * (3 - am.ndim) + tuple(am.shape))
            auto = am if auto is None else am & auto
        return None if auto is None else auto[:, None]          # the heads axis

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "key_dim": self.key_dim,
                "value_dim": self.value_dim, "dropout": self.dropout, "use_bias": self.use_bias,
                "output_shape": list(self._output_shape) if self._output_shape else None,
                "attention_axes": self.attention_axes,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer), "seed": self.seed}


class GroupedQueryAttention(MultiHeadAttention):
    """keras.layers.GroupedQueryAttention(head_dim, num_query_heads, num_key_value_heads, dropout=0.0,
    use_bias=True, sliding_window=None, kernel_initializer='glorot_uniform', bias_initializer='zeros',
    seed=None): attention in which groups of num_query_heads // num_key_value_heads query heads share
    one key/value head (Ainslie et al. 2023), called like MultiHeadAttention.  Keras 3's weights:
    query kernel (dim, query heads, head_dim), key / value kernels (dim, kv heads, head_dim),
    output kernel (query heads, head_dim, dim).  Each shared key/value head is used by its group
    by repeating it (Keras' ops.repeat on the heads axis), here done on the projection weights, so
    gradients from all heads of a group add up in the shared weights."""

    def __init__(self, head_dim, num_query_heads, num_key_value_heads, dropout=0.0, use_bias=True,
                 sliding_window=None, flash_attention=None, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, activity_regularizer=None,
                 kernel_constraint=None, bias_constraint=None, use_gate=False, seed=None, **kwargs):
        for what, v in (("head_dim", head_dim), ("num_query_heads", num_query_heads),
                        ("num_key_value_heads", num_key_value_heads)):
            if not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"GroupedQueryAttention: {what} must be a positive integer, got {v!r}")
        if num_query_heads % num_key_value_heads != 0:
            raise ValueError("`num_query_heads` must be divisible by `num_key_value_heads`.")
        if sliding_window is not None and (not isinstance(sliding_window, int) or sliding_window <= 0):
            raise ValueError(f"`sliding_window` must be `None` or a positive integer. Received: "
                             f"sliding_window={sliding_window}")
        if use_gate:
            raise ValueError("GroupedQueryAttention: use_gate=True is not supported by dptrain's Keras facade; "
                             "leave it False (Keras' default)")
        super().__init__(int(num_query_heads), int(head_dim), dropout=dropout, use_bias=use_bias,
                         flash_attention=flash_attention, kernel_initializer=kernel_initializer,
                         bias_initializer=bias_initializer, kernel_regularizer=kernel_regularizer,
                         bias_regularizer=bias_regularizer, activity_regularizer=activity_regularizer,
                         kernel_constraint=kernel_constraint, bias_constraint=bias_constraint, seed=seed, **kwargs)
        self.head_dim = int(head_dim)
        self.num_query_heads = int(num_query_heads)
        self.num_key_value_heads = int(num_key_value_heads)
        self.num_repeats = self.num_query_heads // self.num_key_value_heads
        self.sliding_window = sliding_window
        self.use_gate = False

    def build(self, query_shape, value_shape, key_shape=None):
        """Keras 3's weights: query (dim, query heads, head_dim), key and value (dim, kv heads,
        head_dim), attention_output (query heads, head_dim, dim), with their biases."""
        key_shape = value_shape if key_shape is None else key_shape
        self._check_shapes(query_shape, value_shape, key_shape)
        if query_shape[-1] != value_shape[-1]:
            raise self._err(f"the last dimension of query and value must be equal, but are {query_shape[-1]}, "
                            f"{value_shape[-1]}", InputShapeError)
        u, kv, h = self.num_query_heads, self.num_key_value_heads, self.head_dim
        for what, d, heads in (("query", query_shape[-1], u), ("key", key_shape[-1], kv), ("value", value_shape[-1], kv)):
            self.add_weight(f"{what}_kernel", (d, heads, h), self.kernel_initializer)
            if self.use_bias:
                self.add_weight(f"{what}_bias", (heads, h), self.bias_initializer)
        self.add_weight("attention_output_kernel", (u, h, query_shape[-1]), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("attention_output_bias", (query_shape[-1],), self.bias_initializer)
        self.built = True
        self.input_shape_built = (None,) + tuple(query_shape[1:])

    def _weight_list(self):
        """MultiHeadAttention's weights with each key/value head repeated for its group of query heads."""
        qk, qb, kk, kb, vk, vb, ok, ob = super()._weight_list()
        group = np.repeat(np.arange(self.num_key_value_heads), self.num_repeats)
        kk, vk = kk[:, group], vk[:, group]
        if kb is not None:
            kb, vb = kb[group], vb[group]
        return [qk, qb, kk, kb, vk, vb, ok, ob]

    def _attention_mask(self, q, v, qm, vm, km, attention_mask, use_causal_mask):
        mask = super()._attention_mask(q, v, qm, vm, km, attention_mask, use_causal_mask)
        if self.sliding_window is None:
            return mask
        xp = get_array_module(q.data)
        t, s = q.shape[1], v.shape[1]
        band = (xp.abs(xp.arange(t)[:, None] - xp.arange(s)[None, :]) < self.sliding_window)[None, None]
        return band if mask is None else mask & band

    def get_config(self):
        return {**Layer.get_config(self), "head_dim": self.head_dim, "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads, "use_bias": self.use_bias, "use_gate": False,
                "sliding_window": self.sliding_window, "dropout": self.dropout,
                "kernel_initializer": initializers.serialize(self.kernel_initializer),
                "bias_initializer": initializers.serialize(self.bias_initializer), "seed": self.seed}


class Attention(_QueryValueLayer):
    """keras.layers.Attention(use_scale=False, score_mode='dot', dropout=0.0, seed=None), called as
    attention([query, value]) or attention([query, value, key], mask=[query_mask, value_mask],
    return_attention_scores=False, use_causal_mask=False): softmax(query @ key^T) @ value on
    (batch, Tq, dim) / (batch, Tv, dim) tensors, weights `scale` (a scalar, use_scale) and, for
    score_mode='concat', `concat_score_weight`."""

    supports_masking = True

    def __init__(self, use_scale=False, score_mode="dot", dropout=0.0, seed=None, **kwargs):
        super().__init__(**kwargs)
        if score_mode not in ("dot", "concat"):
            raise ValueError(f"{type(self).__name__}: score_mode must be 'dot' or 'concat', got {score_mode!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be a fraction in [0, 1), got {dropout!r}")
        self.use_scale, self.score_mode, self.dropout = bool(use_scale), score_mode, float(dropout)
        self.seed = None if seed is None else int(seed)
        self._rng = None if seed is None else np.random.default_rng(self.seed)

    def build(self, input_shape):
        if self.use_scale:
            self.add_weight("scale", (), "ones")
        if self.score_mode == "concat":
            self.add_weight("concat_score_weight", (), "ones")

    def _check_shapes(self, shapes):
        if not isinstance(shapes, (list, tuple)) or len(shapes) not in (2, 3):
            raise self._err("must be called on a list [query, value] or [query, value, key]")
        shapes = [tuple(s) for s in shapes]
        q, v = shapes[0], shapes[1]
        k = shapes[2] if len(shapes) == 3 else v
        for what, sh in (("query", q), ("value", v), ("key", k)):
            if len(sh) != 3:
                raise self._err(f"expected {what} of shape (batch, timesteps, features), received {what} shape "
                                f"{shape_str(sh)}", InputShapeError)
        if None not in (q[-1], k[-1]) and q[-1] != k[-1]:
            raise self._err(f"query and key need the same feature size, received query shape {shape_str(q)} and "
                            f"key shape {shape_str(k)}", InputShapeError)
        if None not in (v[1], k[1]) and v[1] != k[1]:
            raise self._err(f"value and key need the same number of timesteps, received value shape {shape_str(v)} "
                            f"and key shape {shape_str(k)}", InputShapeError)
        if len({sh[0] for sh in (q, v, k) if sh[0] is not None}) > 1:
            raise self._err("query, value and key must have the same batch size, received "
                            + ", ".join(shape_str(sh) for sh in (q, v, k)), InputShapeError)
        return q, v, k

    def _ensure_built(self, shapes):
        q, v, _ = self._check_shapes(shapes)
        if not self.built:
            self.build([q, v] + list(shapes[2:]))
            self.built = True
            self.input_shape_built = (None,) + q[1:]

    def _output_shapes(self, shapes, return_attention_scores):
        q, v = shapes[0], shapes[1]
        out = (None, q[1], v[-1])
        return [out, (None, q[1], v[1])] if return_attention_scores else out

    def _build_for(self, input_shape):
        raise self._err("must be called on a list [query, value] or [query, value, key]")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (input_shape[1][-1],)

    def _scores(self, q, k):
        if self.score_mode == "dot":
            scores = ops.matmul(q, k.transpose(0, 2, 1))
            return scores * self.scale if self.use_scale else scores
        b, tq, d = q.shape
        t = q.reshape(b, tq, 1, d) + k.reshape(b, 1, k.shape[1], d)
        if self.use_scale:
            t = t * self.scale
        return self.concat_score_weight * ops.tanh(t).sum(axis=-1)

    def __call__(self, inputs, mask=None, training=None, return_attention_scores=False, use_causal_mask=False,
                 **kwargs):
        from ..functional import call_symbolic, is_symbolic
        if kwargs:
            raise TypeError(f'layer "{self.name}" ({type(self).__name__}): unexpected call argument(s) '
                            f"{', '.join(sorted(kwargs))}")
        if not isinstance(inputs, (list, tuple)):
            raise self._err("must be called on a list [query, value] or [query, value, key]")
        inputs = list(inputs)
        call_kwargs = {"return_attention_scores": bool(return_attention_scores), "use_causal_mask": bool(use_causal_mask)}
        if is_symbolic(inputs):
            if mask is not None:
                raise self._err("in a functional model the masks come from the inputs (Embedding(mask_zero=True), "
                                "Masking)")
            out_shape = self._build_for_many([t.shape for t in inputs], bool(return_attention_scores))
            return call_symbolic(self, inputs, kwargs={k: v for k, v in call_kwargs.items() if v},
                                 output_shape=out_shape)
        if mask is not None and (not isinstance(mask, (list, tuple)) or len(mask) not in (2, 3)):
            raise self._err("mask must be a list [query_mask, value_mask]")
        masks = list(mask) if mask is not None else [getattr(t, "_keras_mask", None) for t in inputs]
        y, out_mask = self._call_masked(inputs, training, masks, **call_kwargs)
        if isinstance(y, list):
            return tuple(attach_mask(t, m) for t, m in zip(y, out_mask))
        return attach_mask(y, out_mask)

    def _call_masked(self, inputs, training, mask, return_attention_scores=False, use_causal_mask=False):
        device = self._device()
        xs = [x if isinstance(x, Tensor) else as_tensor_input(x, device) for x in inputs]
        xs = [x.to(device) if x.device != device else x for x in xs]
        shapes = [tuple(x.shape) for x in xs]
        self._ensure_built(shapes)
        if self.output_shape_built is None:
            self.output_shape_built = self._output_shapes([(None,) + sh[1:] for sh in shapes],
                                                          bool(return_attention_scores))
        q, v = xs[0], xs[1]
        k = xs[2] if len(xs) == 3 else v
        masks = list(mask or []) + [None, None]
        qm, vm = as_mask(masks[0], q), as_mask(masks[1], q)
        for what, m, want in (("query", qm, q.shape[:2]), ("value", vm, v.shape[:2])):
            if m is not None and tuple(m.shape) != tuple(want):
                raise self._err(f"the {what} mask must have shape (batch, timesteps) = {tuple(want)}, received "
                                f"{tuple(m.shape)}", InputShapeError)
        scores = self._scores(q, k)
        xp = get_array_module(q.data)
        keep = None if vm is None else vm[:, None, :]
        if use_causal_mask:
            causal = xp.tril(xp.ones(tuple(scores.shape[1:]), dtype=bool))[None]
            keep = causal if keep is None else keep & causal
        if keep is not None:
            scores = scores - Tensor._wrap((1.0 - keep.astype(scores.dtype)) * scores.dtype.type(1e9))
        weights = F.softmax(scores, axis=-1)
        training = resolve_training(self, training)
        if training and self.dropout > 0:
            weights = F.dropout(weights, self.dropout, True, generator=self._rng)
        y = ops.matmul(weights, v)
        if qm is not None:
            y = y * Tensor._wrap(qm[:, :, None].astype(y.dtype))
        if return_attention_scores:
            return [y, weights], [qm, None]
        return y, qm

    def get_config(self):
        return {**super().get_config(), "use_scale": self.use_scale, "score_mode": self.score_mode,
                "dropout": self.dropout, "seed": self.seed}


class AdditiveAttention(Attention):
    """keras.layers.AdditiveAttention(use_scale=True, dropout=0.0): Bahdanau scores
    sum(scale * tanh(query[:, :, None] + key[:, None]), axis=-1), `scale` a (dim,) glorot_uniform weight."""

    def __init__(self, use_scale=True, dropout=0.0, **kwargs):
        kwargs.pop("score_mode", None)
        super().__init__(use_scale=use_scale, dropout=dropout, **kwargs)

    def build(self, input_shape):
        if self.use_scale:
            self.add_weight("scale", (input_shape[0][-1],), "glorot_uniform")

    def _check_shapes(self, shapes):
        q, v, k = super()._check_shapes(shapes)
        if self.built and self.use_scale and q[-1] != self.scale.shape[0]:
            raise self._err(f"was built for query with {self.scale.shape[0]} features, received query shape "
                            f"{shape_str(q)}", InputShapeError)
        return q, v, k

    def _scores(self, q, k):
        b, tq, d = q.shape
        t = ops.tanh(q.reshape(b, tq, 1, d) + k.reshape(b, 1, k.shape[1], d))
        return (t * self.scale if self.use_scale else t).sum(axis=-1)

    def get_config(self):
        cfg = super().get_config()
        cfg.pop("score_mode")
        return cfg
