"""BatchNormalization and LayerNormalization with Keras semantics (not PyTorch's).

Keras differs from torch.nn.BatchNorm in three ways that change results, so this
is its own layer: momentum is the weight of the *old* moving average (0.99), the
moving variance is updated with the biased batch variance, and epsilon is 1e-3.
Weights in Keras order: gamma, beta (trainable), moving_mean, moving_variance.
With a mask (e.g. after Embedding(mask_zero=True)) training statistics cover the unmasked steps
only, Keras 3's masked moments; the mask passes on.  A frozen layer (trainable=False, e.g. inside a
frozen sub-model for transfer learning) runs in inference mode, as in Keras 3: it normalizes with
the moving statistics and leaves them unchanged.

LayerNormalization is Keras' (epsilon 1e-3, not torch's 1e-5; gamma and beta over the normalized
axes, any axis or list of axes) computed by the engine's fused layer_norm node, with the normalized
axes moved last when they are not already.
"""
from __future__ import annotations

from ... import ops
from ...nn import functional as F
from ...tensor import Tensor
from .. import initializers
from .base import CF, Layer, shape_str

__all__ = ["BatchNormalization", "LayerNormalization"]


class BatchNormalization(Layer):
    supports_masking = True

    def __init__(self, axis=-1, momentum=0.99, epsilon=0.001, center=True, scale=True,
                 beta_initializer="zeros", gamma_initializer="ones",
                 moving_mean_initializer="zeros", moving_variance_initializer="ones", **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis) if not isinstance(axis, (list, tuple)) else int(axis[0])
        self.momentum, self.epsilon = float(momentum), float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self._inits = (beta_initializer, gamma_initializer, moving_mean_initializer,
                       moving_variance_initializer)

    def build(self, input_shape):
        ax = self.axis % len(input_shape)
        n = input_shape[ax]
        if n is None:
            raise ValueError(f'layer "{self.name}" (BatchNormalization): axis {self.axis} of input shape '
                             f"{shape_str(input_shape)} must be known")
        self._ndim = len(input_shape)
        beta_i, gamma_i, mm_i, mv_i = self._inits
        if self.scale:
            self.add_weight("gamma", (n,), gamma_i)
        if self.center:
            self.add_weight("beta", (n,), beta_i)
        self.add_weight("moving_mean", (n,), mm_i, trainable=False)
        self.add_weight("moving_variance", (n,), mv_i, trainable=False)

    def expected_input_shape(self):
        s = self.input_shape_built
        if s is None:
            return None
        ax = self.axis % len(s)
        return tuple(s[i] if i == ax else None for i in range(len(s)))

    def _channel_axis(self, ndim, layout):
        ax = self.axis % ndim
        if layout == CF and ndim == 4:
            return {3: 1, 1: 2, 2: 3, 0: 0}[ax]
        return ax

    def call_internal(self, x, layout, training, final_logits=False):
        return self._normalize(x, self._channel_axis(x.ndim, layout), training), layout

    def call(self, inputs, training=False, mask=None):
        return self._normalize(inputs, self.axis % inputs.ndim, training, mask)

    def _moments(self, x, red, mask):
        """Batch mean and (biased) variance; with a mask, Keras 3's masked moments: over the unmasked
        steps only, each sum divided by (count + 1e-7)."""
        if mask is None:
            mean = x.mean(axis=red, keepdims=True)
            centered = x - mean
            return mean, (centered * centered).mean(axis=red, keepdims=True)
        if mask.ndim != x.ndim - 1 or red != tuple(range(x.ndim - 1)):
            raise ValueError(f'layer "{self.name}" (BatchNormalization): a mask needs the channel axis last and '
                             f"one dimension less than the inputs; got mask shape {tuple(mask.shape)} for inputs "
                             f"of shape {tuple(x.shape)} with axis={self.axis}")
        w = Tensor._wrap(mask[..., None].astype(x.dtype))
        count = float(mask.sum()) + 1e-7
        weighted = x * w
        mean = weighted.sum(axis=red, keepdims=True) * (1.0 / count)
        diff = weighted - mean
        return mean, (diff * diff * w).sum(axis=red, keepdims=True) * (1.0 / count)

    def _normalize(self, x, ax, training, mask=None):
        shape = [1] * x.ndim
        shape[ax] = x.shape[ax]
        red = tuple(i for i in range(x.ndim) if i != ax)
        if training and self.trainable:
            mean, var = self._moments(x, red, mask)
            centered = x - mean
            m = self.momentum
            self.moving_mean.data *= m
            self.moving_mean.data += (1 - m) * mean.data.reshape(-1)
            self.moving_variance.data *= m
            self.moving_variance.data += (1 - m) * var.data.reshape(-1)
            y = centered / ops.sqrt(var + self.epsilon)
        else:
            mean = self.moving_mean.reshape(shape)
            var = self.moving_variance.reshape(shape)
            y = (x - mean) / ops.sqrt(var + self.epsilon)
        if self.scale:
            y = y * self.gamma.reshape(shape)
        if self.center:
            y = y + self.beta.reshape(shape)
        return y

    def get_config(self):
        from .. import initializers as I
        beta_i, gamma_i, mm_i, mv_i = (I.serialize(I.get(i)) for i in self._inits)
        return {**super().get_config(), "axis": self.axis, "momentum": self.momentum,
                "epsilon": self.epsilon, "center": self.center, "scale": self.scale,
                "beta_initializer": beta_i, "gamma_initializer": gamma_i,
                "moving_mean_initializer": mm_i, "moving_variance_initializer": mv_i}


def layer_normalization(x, gamma, beta, axes, epsilon):
    """Keras' ops.layer_normalization on engine tensors: x normalized over `axes` (non-negative) with
    the biased variance, times gamma plus beta (either may be None).  The engine's layer_norm node
    normalizes trailing axes, so other axes are moved last and back; gamma / beta (Keras' shape:
    the axes' sizes in the order `axis` lists them) are reshaped onto the sorted axes, as Keras
    reshapes them onto its broadcast shape."""
    axes = sorted(axes)
    nd = x.ndim
    perm = [i for i in range(nd) if i not in axes] + axes
    moved = perm != list(range(nd))
    xt = x.transpose(*perm) if moved else x
    shape = tuple(x.shape[a] for a in axes)
    g = gamma if gamma is None or tuple(gamma.shape) == shape else gamma.reshape(shape)
    b = beta if beta is None or tuple(beta.shape) == shape else beta.reshape(shape)
    y = F.layer_norm(xt, shape, g, b, epsilon)
    if not moved:
        return y
    inv = [perm.index(i) for i in range(nd)]
    return y.transpose(*inv)


class LayerNormalization(Layer):
    """Keras' LayerNormalization: each sample normalized over `axis` (default the features, -1),
    `(x - mean) / sqrt(var + epsilon) * gamma + beta` with Keras' epsilon 1e-3.  Weights gamma then
    beta (Keras' order), of shape `[input_shape[a] for a in axis]`.  A mask passes on unchanged (the
    statistics are per sample and per step, so padded steps do not affect the others)."""

    supports_masking = True

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True, beta_initializer="zeros",
                 gamma_initializer="ones", beta_regularizer=None, gamma_regularizer=None, beta_constraint=None,
                 gamma_constraint=None, rms_scaling=False, **kwargs):
        kwargs.update(beta_regularizer=beta_regularizer, gamma_regularizer=gamma_regularizer,
                      beta_constraint=beta_constraint, gamma_constraint=gamma_constraint)
        if rms_scaling:
            raise ValueError("LayerNormalization: rms_scaling=True (deprecated in Keras 3) is not supported")
        super().__init__(**kwargs)
        if isinstance(axis, (list, tuple)):
            if not axis:
                raise ValueError("LayerNormalization: axis must name at least one axis, got []")
            self.axis = [int(a) for a in axis]
        elif isinstance(axis, int):
            self.axis = int(axis)
        else:
            raise TypeError(f"LayerNormalization: axis must be an int or a list/tuple of ints, got {axis!r}")
        self.epsilon = float(epsilon)
        self.center, self.scale = bool(center), bool(scale)
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)

    def _axes(self, ndim):
        """self.axis as a list of non-negative axes of a rank-`ndim` input, checked."""
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        bad = [a for a in axes if not -ndim <= a < ndim]
        if bad:
            raise ValueError(f'layer "{self.name}" (LayerNormalization): axis {bad[0]} is out of bounds for an input '
                             f"of rank {ndim} (axis={self.axis})")
        out = [a % ndim for a in axes]
        if 0 in out:
            raise ValueError(f'layer "{self.name}" (LayerNormalization): axis={self.axis} includes the batch axis 0; '
                             "normalize over the feature axes")
        if len(set(out)) != len(out):
            raise ValueError(f'layer "{self.name}" (LayerNormalization): axis={self.axis} repeats an axis')
        return sorted(out)      # Keras sorts them: gamma/beta of axis=[-1, -3] are (dim 1, dim 3)

    def build(self, input_shape):
        axes = self._axes(len(input_shape))
        shape = tuple(input_shape[a] for a in axes)
        if any(s is None for s in shape):
            raise ValueError(f'layer "{self.name}" (LayerNormalization): axis {self.axis} of input shape '
                             f"{shape_str(input_shape)} must be known")
        if self.scale:
            self.add_weight("gamma", shape, self.gamma_initializer)
        if self.center:
            self.add_weight("beta", shape, self.beta_initializer)

    def expected_input_shape(self):
        s = self.input_shape_built
        if s is None:
            return None
        axes = self._axes(len(s))
        return tuple(s[i] if i in axes else None for i in range(len(s)))

    def call(self, inputs, training=False):
        return layer_normalization(inputs, self.gamma if self.scale else None, self.beta if self.center else None,
                                   self._axes(inputs.ndim), self.epsilon)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis, "epsilon": self.epsilon, "center": self.center,
                "scale": self.scale, "beta_initializer": initializers.serialize(self.beta_initializer),
                "gamma_initializer": initializers.serialize(self.gamma_initializer)}
