"""Keras 3's image augmentation layers: RandomFlip, RandomRotation, RandomZoom, RandomTranslation.

Why they are layers: keras.io's image examples put them at the front of the model
(`x = data_augmentation(inputs)`) or map them over the data (`data_augmentation(images)`), and
rely on Keras' rule that they act only in training: `fit` augments, `predict` / `evaluate` pass
the images through unchanged, and an eager call without `training=` augments (Keras' call default
is `training=True`; here it follows the layer's train/eval mode, which starts in train mode).

Numerics follow keras.src.layers.preprocessing.image_preprocessing and the backends'
`image.affine_transform`: each image gets its own random parameters, a transform
[a0, a1, a2, b0, b1, b2, c0, c1] maps an output pixel (x, y) to the input point
((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k), k = c0 x + c1 y + 1, and the input is sampled
there with `interpolation` ('bilinear' or 'nearest', rounding half away from zero) and
`fill_mode` ('reflect' (d c b a | a b c d | d c b a), 'wrap', 'nearest', 'constant' with
`fill_value`) applied to each neighbouring pixel index, as Keras' map_coordinates does.  The
random numbers are the engine's (`seed=` gives the layer its own generator, otherwise
`keras.utils.set_random_seed` / `engine.manual_seed` decide), so a seed reproduces a run here but
not TensorFlow's draws.  Under data parallelism each rank draws the parameters of the whole global
batch and keeps its rows (engine.random.draw_rows), so N workers augment exactly as one would.
Gradients flow to the input (a sum of weighted gathers), as in Keras.
"""
from __future__ import annotations

import numpy as np

from ... import ops
from ... import random as _random
from ...backend import get_array_module
from ...tensor import Tensor, from_op
from .base import Layer

__all__ = ["RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "affine_transform"]

_FILL_MODES = ("reflect", "wrap", "constant", "nearest")
_INTERPOLATIONS = ("nearest", "bilinear")


# ------------------------------------------------------------------ sampling

def _reflect_index(index, size):
    """Keras' _reflect_index_fixer: half-sample symmetric reflection (d c b a | a b c d | d c b a)."""
    s = 2 * size            # _mirror_index_fixer(2 * index + 1, 2 * size + 1), then (m - 1) // 2
    m = np.abs((2 * index + 1 + s) % (2 * s) - s)
    return (m - 1) // 2


def _fix_index(index, size, fill_mode):
    """-> (index inside [0, size), valid) for one axis; `valid` is False only in constant mode."""
    if fill_mode == "constant":
        valid = (index >= 0) & (index < size)
        return np.clip(index, 0, size - 1), valid
    if fill_mode == "nearest":
        return np.clip(index, 0, size - 1), None
    if fill_mode == "wrap":
        return index % size, None
    return _reflect_index(index, size), None


def _corners(coord, interpolation):
    """[(integer index, weight)] of the pixels a coordinate reads (Keras' map_coordinates, order 0/1)."""
    if interpolation == "nearest":
        return [(np.sign(coord) * np.floor(np.abs(coord) + 0.5), 1.0)]
    lower = np.floor(coord)
    upper_w = coord - lower
    return [(lower, 1.0 - upper_w), (lower + 1, upper_w)]


def _sampling_plan(transforms, h, w, interpolation, fill_mode):
    """For every output pixel of every image: the flat input indices it reads, their weights, and the
    weight that falls on fill_value (constant mode).  transforms: (N, 8) float64."""
    ys, xs = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    t = transforms[:, :, None, None]
    k = t[:, 6] * xs + t[:, 7] * ys + 1.0
    x_in = (t[:, 0] * xs + t[:, 1] * ys + t[:, 2]) / k
    y_in = (t[:, 3] * xs + t[:, 4] * ys + t[:, 5]) / k
    flat, weights, fill = [], [], np.zeros(x_in.shape)
    for yi, wy in _corners(y_in, interpolation):
        yi, vy = _fix_index(yi.astype(np.int64), h, fill_mode)
        for xi, wx in _corners(x_in, interpolation):
            xi, vx = _fix_index(xi.astype(np.int64), w, fill_mode)
            wt = np.broadcast_to(np.asarray(wy * wx, dtype=np.float64), x_in.shape)
            if vy is not None:
                valid = vy & vx
                fill = fill + np.where(valid, 0.0, wt)
                wt = np.where(valid, wt, 0.0)
            flat.append(yi * w + xi)
            weights.append(wt)
    return flat, weights, fill


def _scatter_add(xp, target, index, values):
    if xp is np:
        np.add.at(target, index, values)
    else:                                   # cupy
        import cupyx
        cupyx.scatter_add(target, index, values)


def affine_transform(images: Tensor, transforms, interpolation="bilinear", fill_mode="constant",
                     fill_value=0.0) -> Tensor:
    """keras.ops.image.affine_transform on (N, H, W, C) channels-last images; transforms (N, 8) or (8,)
    map output pixels to input points.  Differentiable with respect to the images."""
    if fill_mode not in _FILL_MODES:
        raise ValueError(f"affine_transform: fill_mode must be one of {_FILL_MODES}, got {fill_mode!r}")
    if interpolation not in _INTERPOLATIONS:
        raise ValueError(f"affine_transform: interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}")
    n, h, w, c = images.shape
    tr = np.asarray(transforms, dtype=np.float64).reshape(-1, 8)
    if tr.shape[0] == 1 and n != 1:
        tr = np.repeat(tr, n, axis=0)
    if tr.shape[0] != n:
        raise ValueError(f"affine_transform: {tr.shape[0]} transforms for {n} images")
    flat, weights, fill = _sampling_plan(tr, h, w, interpolation, fill_mode)
    xp = get_array_module(images.data)
    dt = images.dtype
    src = images.data.reshape(n, h * w, c)
    rows = xp.arange(n).reshape(n, 1, 1)
    flat = [xp.asarray(f) for f in flat]
    weights = [xp.asarray(wt, dtype=dt)[..., None] for wt in weights]
    out = xp.zeros((n, h, w, c), dtype=dt)
    for f, wt in zip(flat, weights):
        out += src[rows, f] * wt
    if fill_mode == "constant" and fill_value:
        out += xp.asarray(fill * float(fill_value), dtype=dt)[..., None]

    def backward(g):
        gx = xp.zeros((n, h * w, c), dtype=dt)
        for f, wt in zip(flat, weights):
            _scatter_add(xp, gx, (rows, f), g * wt)
        return (gx.reshape(n, h, w, c),)
    return from_op(out, (images,), backward, "affine_transform")


# ------------------------------------------------------------------ layers

def _factor_pair(factor, what, bounds=(-1.0, 1.0)):
    """Keras' _set_factor: a number f -> (-|f|, |f|); a pair -> sorted; values within `bounds`."""
    msg = (f"The `{what}` argument should be a number (or a list of two numbers) in the range "
           f"[{bounds[0]}, {bounds[1]}]. Received: {what}={factor}")
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2 or any(not isinstance(v, (int, float, np.integer, np.floating)) for v in factor):
            raise ValueError(msg)
        if any(v < bounds[0] or v > bounds[1] for v in factor):
            raise ValueError(msg)
        lo, hi = sorted(float(v) for v in factor)
        return lo, hi
    if isinstance(factor, (int, float, np.integer, np.floating)) and not isinstance(factor, bool):
        if factor < bounds[0] or factor > bounds[1]:
            raise ValueError(msg)
        return -abs(float(factor)), abs(float(factor))
    raise ValueError(msg)


class _RandomImageLayer(Layer):
    """Shared parts: the seed, the per-image draws, (H, W, C) or (N, H, W, C) input, identity at inference."""

    #: Keras 3's random preprocessing layers have call(data, training=True): called on their own
    #: (keras.io's "augment in the data pipeline") they augment
    _training_default = True

    supports_masking = False

    def __init__(self, seed=None, data_format=None, **kwargs):
        kind = type(self).__name__
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{kind}: only data_format='channels_last' (Keras' default) is supported; "
                             "transpose your images to (N, H, W, C)")
        super().__init__(**kwargs)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"{kind}: seed must be a non-negative integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._seed_rng = None if seed is None else np.random.default_rng(self.seed)

    def _generator(self):
        return self._seed_rng if self._seed_rng is not None else _random.default_generator()

    def _uniform(self, low, high, n):
        """n draws from U[low, high) (one per image of the global batch under data parallelism)."""
        rng = self._generator()
        return _random.draw_rows(lambda shape: rng.uniform(low, high, size=shape), (n,))

    def expected_input_shape(self):
        return None                 # one image (H, W, C) or a batch (N, H, W, C), any size

    def _check_rank(self, x):
        if x.ndim not in (3, 4):
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}) takes images (H, W, C) or (N, H, W, C) '
                             f"(channels last), got shape {tuple(x.shape)}")

    def call(self, inputs, training=False):
        x = inputs if isinstance(inputs, Tensor) else Tensor(np.asarray(inputs, dtype=np.float32))
        self._check_rank(x)
        if not training:
            return x
        unbatched = x.ndim == 3
        if unbatched:
            x = x.reshape((1,) + tuple(x.shape))
        y = self._augment(x)
        return y.reshape(tuple(y.shape[1:])) if unbatched else y

    def _augment(self, x):
        raise NotImplementedError

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed, "data_format": "channels_last"}


class _AffineLayer(_RandomImageLayer):
    """A random affine warp per image, sampled with Keras' fill modes and interpolation."""

    def __init__(self, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0, **kwargs):
        super().__init__(seed=seed, **kwargs)
        if fill_mode not in _FILL_MODES:
            raise NotImplementedError(f"Unknown `fill_mode` {fill_mode}. Expected of one {_FILL_MODES}.")
        if interpolation not in _INTERPOLATIONS:
            raise NotImplementedError(f"Unknown `interpolation` {interpolation}. Expected of one {_INTERPOLATIONS}.")
        self.fill_mode, self.interpolation, self.fill_value = fill_mode, interpolation, float(fill_value)

    def _augment(self, x):
        n, h, w, _ = x.shape
        return affine_transform(x, self._transforms(n, h, w), self.interpolation, self.fill_mode, self.fill_value)

    def get_config(self):
        return {**super().get_config(), "fill_mode": self.fill_mode, "interpolation": self.interpolation,
                "fill_value": self.fill_value}


class RandomFlip(_RandomImageLayer):
    """Flips each image with probability 0.5: mode 'horizontal' (left-right), 'vertical' (top-bottom) or
    'horizontal_and_vertical' (Keras' default).  As in Keras 3 (random_flip.py), one draw per image,
    uniform <= 0.5, decides, so in 'horizontal_and_vertical' an image is flipped along both axes or
    neither."""

    _MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, data_format=data_format, **kwargs)
        if mode not in self._MODES:
            raise ValueError(f"RandomFlip layer {self.name} received an unknown mode argument {mode!r}; "
                             f"expected one of {self._MODES}")
        self.mode = mode

    def _augment(self, x):
        n = x.shape[0]
        flips = self._uniform(0.0, 1.0, n) <= 0.5
        xp = get_array_module(x.data)
        cond = Tensor(xp.asarray(flips.reshape(n, 1, 1, 1)))
        y = x
        if self.mode in ("horizontal", "horizontal_and_vertical"):
            y = ops.where(cond, ops.flip(y, 2), y)
        if self.mode in ("vertical", "horizontal_and_vertical"):
            y = ops.where(cond, ops.flip(y, 1), y)
        return y

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


class RandomRotation(_AffineLayer):
    """Rotates each image by a random angle, a fraction of a full turn: `factor=0.1` draws from
    [-36, 36] degrees, `factor=(-0.2, 0.3)` from [-72, 108] (positive = counter-clockwise), about the
    image centre ((W - 1) / 2, (H - 1) / 2), with Keras' rotation matrix
    [cos, -sin, x_off, sin, cos, y_off, 0, 0]."""

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None, fill_value=0.0,
                 data_format=None, **kwargs):
        super().__init__(fill_mode=fill_mode, interpolation=interpolation, seed=seed, fill_value=fill_value,
                         data_format=data_format, **kwargs)
        self.factor = _factor_pair(factor, "factor")

    def _transforms(self, n, h, w):
        angle = self._uniform(self.factor[0] * 2 * np.pi, self.factor[1] * 2 * np.pi, n)
        cos, sin = np.cos(angle), np.sin(angle)
        x_off = ((w - 1) - (cos * (w - 1) - sin * (h - 1))) / 2.0
        y_off = ((h - 1) - (sin * (w - 1) + cos * (h - 1))) / 2.0
        zero = np.zeros(n)
        return np.stack([cos, -sin, x_off, sin, cos, y_off, zero, zero], axis=1)

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor)}


class RandomZoom(_AffineLayer):
    """Zooms each image about its centre by 1 + U[lower, upper] per axis: a negative factor zooms in
    (the content grows), a positive one out.  `height_factor=0.2` draws from [-0.2, 0.2]; with
    `width_factor=None` (Keras' default) the width uses the height's draw, keeping the aspect ratio."""

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(fill_mode=fill_mode, interpolation=interpolation, seed=seed, fill_value=fill_value,
                         data_format=data_format, **kwargs)
        self.height_factor = height_factor
        self.width_factor = width_factor
        self.height_lower, self.height_upper = _factor_pair(height_factor, "height_factor")
        if width_factor is not None:
            self.width_lower, self.width_upper = _factor_pair(width_factor, "width_factor")

    def _transforms(self, n, h, w):
        zy = self._uniform(1.0 + self.height_lower, 1.0 + self.height_upper, n)
        zx = zy if self.width_factor is None else self._uniform(1.0 + self.width_lower, 1.0 + self.width_upper, n)
        x_off = (w - 1.0) / 2.0 * (1.0 - zx)
        y_off = (h - 1.0) / 2.0 * (1.0 - zy)
        zero = np.zeros(n)
        return np.stack([zx, zero, x_off, zero, zy, y_off, zero, zero], axis=1)

    def get_config(self):
        hf = list(self.height_factor) if isinstance(self.height_factor, (tuple, list)) else self.height_factor
        wf = list(self.width_factor) if isinstance(self.width_factor, (tuple, list)) else self.width_factor
        return {**super().get_config(), "height_factor": hf, "width_factor": wf}


class RandomTranslation(_AffineLayer):
    """Shifts each image by U[lower, upper] * height rows and U[lower, upper] * width columns (fractions
    in [-1, 1]; positive moves the content down / right), Keras' matrix [1, 0, -dx, 0, 1, -dy, 0, 0]."""

    def __init__(self, height_factor, width_factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, data_format=None, **kwargs):
        super().__init__(fill_mode=fill_mode, interpolation=interpolation, seed=seed, fill_value=fill_value,
                         data_format=data_format, **kwargs)
        self.height_factor, self.width_factor = height_factor, width_factor
        self.height_lower, self.height_upper = _factor_pair(height_factor, "height_factor")
        self.width_lower, self.width_upper = _factor_pair(width_factor, "width_factor")

    def _transforms(self, n, h, w):
        dy = self._uniform(self.height_lower, self.height_upper, n) * h
        dx = self._uniform(self.width_lower, self.width_upper, n) * w
        zero, one = np.zeros(n), np.ones(n)
        return np.stack([one, zero, -dx, zero, one, -dy, zero, zero], axis=1)

    def get_config(self):
        hf = list(self.height_factor) if isinstance(self.height_factor, (tuple, list)) else self.height_factor
        wf = list(self.width_factor) if isinstance(self.width_factor, (tuple, list)) else self.width_factor
        return {**super().get_config(), "height_factor": hf, "width_factor": wf}
