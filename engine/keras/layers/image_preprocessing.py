"""Keras 3's colour and size preprocessing layers: RandomContrast, RandomBrightness, RandomCrop,
CenterCrop, Resizing.

Why: keras.io's image classification examples put these next to RandomFlip / RandomRotation at the
front of the model (`layers.RandomContrast(0.2)`, `layers.Resizing(64, 64)`), so a model written
for Keras must find them.  The random ones follow augmentation.py's conventions: they act in
training only (`fit` augments, `predict` / `evaluate` pass the images through; an eager call
follows the layer's train/eval mode), draw from `seed=` or the global generator, and under data
parallelism draw the parameters of the whole global batch (one per image) so N workers augment as
one would.  Formulas are keras.src.layers.preprocessing.image_preprocessing's:

- RandomContrast: per image, one factor c ~ U[1 - lower, 1 + upper] (its factor bounds are (0, 1):
  a number f gives lower = 0, upper = f, so c ~ U[1, 1 + f], as Keras 3's source does; a pair
  (a, b) gives U[1 - a, 1 + b]); each channel becomes (x - mean_hw) * c + mean_hw, clipped to
  value_range.
- RandomBrightness: per image, delta ~ U[lower, upper] * (value_range[1] - value_range[0]) (f gives
  [-f, f]); x + delta, clipped to value_range (sorted).
- RandomCrop(height, width): in training, when the input is larger than the target in both
  dimensions, one random window for the whole batch (Keras 3 crops "all the images in the same
  batch to the same cropping location"); otherwise, and at inference, the largest central window
  with the target aspect ratio resized to the target (the documented inference behaviour).
- CenterCrop(height, width): the central window (start int((H - h) / 2)); an image smaller than
  the target in either dimension is cropped to the target aspect ratio and resized instead
  (smart_resize), always, not only in training.
- Resizing(height, width, interpolation='bilinear', crop_to_aspect_ratio=False): TensorFlow's /
  JAX's half-pixel resize without antialiasing: output pixel i samples the input at
  (i + 0.5) * in / out - 0.5 (bilinear between the two neighbours, clamped at the edges) or
  floor((i + 0.5) * in / out) ('nearest').

Every transform is differentiable with respect to the images (slices, means, clip; the resize is two
interpolation matrices applied with einsum).
"""
from __future__ import annotations

import numpy as np

from ... import ops
from ... import random as _random
from ...backend import get_array_module
from ...tensor import Tensor
from .augmentation import _RandomImageLayer
from .base import Layer

__all__ = ["RandomContrast", "RandomBrightness", "RandomCrop", "CenterCrop", "Resizing", "resize_images"]

_RESIZE_INTERPOLATIONS = ("bilinear", "nearest")


def _set_factor(factor, bounds, kind):
    """Keras 3's BaseImagePreprocessingLayer._set_factor: -> (lower, upper)."""
    msg = (f"{kind}: the `factor` argument should be a number (or a list of two numbers) in the range "
           f"[{bounds[0]}, {bounds[1]}]. Received: factor={factor}")
    if isinstance(factor, (tuple, list)):
        if len(factor) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
                                   for v in factor):
            raise ValueError(msg)
        if factor[0] > bounds[1] or factor[1] < bounds[0]:
            raise ValueError(msg)
        lower, upper = sorted(float(v) for v in factor)
        return lower, upper
    if isinstance(factor, (int, float, np.integer, np.floating)) and not isinstance(factor, bool):
        if factor < bounds[0] or factor > bounds[1]:
            raise ValueError(msg)
        f = abs(float(factor))
        return max(-f, float(bounds[0])), f
    raise ValueError(msg)


def _value_range(value_range, kind, sort):
    if not isinstance(value_range, (tuple, list)) or len(value_range) != 2:
        raise ValueError(f"{kind}: the `value_range` argument should be a list of two numbers. "
                         f"Received: value_range={value_range}")
    vr = [float(v) for v in value_range]
    return sorted(vr) if sort else vr


def _as_images(inputs):
    return inputs if isinstance(inputs, Tensor) else Tensor(np.asarray(inputs, dtype=np.float32))


class RandomContrast(_RandomImageLayer):
    """Scales each image's per-channel deviation from its mean by a random factor (training only)."""

    def __init__(self, factor, value_range=(0, 255), seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, data_format=data_format, **kwargs)
        self.factor = _set_factor(factor, (0.0, 1.0), "RandomContrast")
        if isinstance(factor, (int, float)):
            # Keras documents [1 - f, 1 + f] for a number f (tf.keras did that); Keras 3's code clips the
            # lower bound to 0 and draws from [1, 1 + f], which only ever raises the contrast: we follow
            # the documentation
            self.factor = (abs(float(factor)), abs(float(factor)))
        self.value_range = _value_range(value_range, "RandomContrast", sort=False)

    def _augment(self, x):
        n = x.shape[0]
        c = self._uniform(1.0 - self.factor[0], 1.0 + self.factor[1], n)
        xp = get_array_module(x.data)
        c = Tensor._wrap(xp.asarray(c.reshape(n, 1, 1, 1), dtype=x.dtype))
        mean = x.mean(axis=(1, 2), keepdims=True)
        return ops.clip((x - mean) * c + mean, self.value_range[0], self.value_range[1])

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "value_range": list(self.value_range)}


class RandomBrightness(_RandomImageLayer):
    """Adds a random offset, a fraction of the value range, to each image (training only)."""

    def __init__(self, factor, value_range=(0, 255), seed=None, data_format=None, **kwargs):
        super().__init__(seed=seed, data_format=data_format, **kwargs)
        self.factor = _set_factor(factor, (-1.0, 1.0), "RandomBrightness")
        self.value_range = _value_range(value_range, "RandomBrightness", sort=True)

    def _augment(self, x):
        n = x.shape[0]
        delta = self._uniform(self.factor[0], self.factor[1], n) * (self.value_range[1] - self.value_range[0])
        xp = get_array_module(x.data)
        delta = Tensor._wrap(xp.asarray(delta.reshape(n, 1, 1, 1), dtype=x.dtype))
        return ops.clip(x + delta, self.value_range[0], self.value_range[1])

    def get_config(self):
        return {**super().get_config(), "factor": list(self.factor), "value_range": list(self.value_range)}


# ------------------------------------------------------------------ resizing

def _resize_matrix(in_size, out_size, interpolation):
    """(out_size, in_size) float64 weights of the half-pixel resize along one axis."""
    scale = in_size / out_size
    m = np.zeros((out_size, in_size))
    rows = np.arange(out_size)
    if interpolation == "nearest":
        src = np.minimum(np.floor((rows + 0.5) * scale).astype(np.int64), in_size - 1)
        m[rows, src] = 1.0
        return m
    pos = (rows + 0.5) * scale - 0.5
    lo = np.floor(pos)
    frac = pos - lo
    lo = lo.astype(np.int64)
    np.add.at(m, (rows, np.clip(lo, 0, in_size - 1)), 1.0 - frac)
    np.add.at(m, (rows, np.clip(lo + 1, 0, in_size - 1)), frac)
    return m


def _aspect_crop_box(h, w, th, tw):
    """Keras' crop_to_aspect_ratio window: (h_start, w_start, crop_h, crop_w)."""
    crop_h = max(min(h, int(float(w * th) / tw)), 1)
    crop_w = max(min(w, int(float(h * tw) / th)), 1)
    return int(float(h - crop_h) / 2), int(float(w - crop_w) / 2), crop_h, crop_w


def resize_images(images: Tensor, height, width, interpolation="bilinear", crop_to_aspect_ratio=False) -> Tensor:
    """keras.ops.image.resize on (N, H, W, C) channels-last images (antialias=False)."""
    if interpolation not in _RESIZE_INTERPOLATIONS:
        raise ValueError(f"resize: interpolation must be one of {_RESIZE_INTERPOLATIONS}, got {interpolation!r}")
    _, h, w, _ = images.shape
    if crop_to_aspect_ratio:
        hs, ws, ch, cw = _aspect_crop_box(h, w, height, width)
        images = images[:, hs:hs + ch, ws:ws + cw, :]
        h, w = ch, cw
    if (h, w) == (height, width):
        return images
    xp = get_array_module(images.data)
    rh = Tensor._wrap(xp.asarray(_resize_matrix(h, height, interpolation), dtype=images.dtype))
    rw = Tensor._wrap(xp.asarray(_resize_matrix(w, width, interpolation), dtype=images.dtype))
    return ops.einsum("jb,nibc->nijc", rw, ops.einsum("ia,nabc->nibc", rh, images))


def _positive_int(v, what, kind):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
        raise ValueError(f"{kind}: `{what}` must be a positive integer, got {v!r}")
    return int(v)


class _SizeLayer(Layer):
    """(H, W, C) or (N, H, W, C) images in, (height, width) out."""

    supports_masking = False

    def __init__(self, height, width, data_format=None, **kwargs):
        kind = type(self).__name__
        if data_format not in (None, "channels_last"):
            raise ValueError(f"{kind}: only data_format='channels_last' (Keras' default) is supported; "
                             "transpose your images to (N, H, W, C)")
        super().__init__(**kwargs)
        self.height = _positive_int(height, "height", kind)
        self.width = _positive_int(width, "width", kind)

    def expected_input_shape(self):
        return None

    def call(self, inputs, training=False):
        x = _as_images(inputs)
        if x.ndim not in (3, 4):
            raise ValueError(f'layer "{self.name}" ({type(self).__name__}) takes images (H, W, C) or (N, H, W, C) '
                             f"(channels last), got shape {tuple(x.shape)}")
        unbatched = x.ndim == 3
        if unbatched:
            x = x.reshape((1,) + tuple(x.shape))
        y = self._transform(x, bool(training))
        return y.reshape(tuple(y.shape[1:])) if unbatched else y

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[-3], shape[-2] = self.height, self.width
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width, "data_format": "channels_last"}


class Resizing(_SizeLayer):
    """Resizes images to (height, width), in training and inference alike."""

    def __init__(self, height, width, interpolation="bilinear", crop_to_aspect_ratio=False,
                 pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0, antialias=False,
                 data_format=None, **kwargs):
        super().__init__(height, width, data_format=data_format, **kwargs)
        if interpolation not in _RESIZE_INTERPOLATIONS:
            raise NotImplementedError(f"Resizing: interpolation {interpolation!r} is not available in dptrain's "
                                      f"Keras facade; use one of {_RESIZE_INTERPOLATIONS}")
        if pad_to_aspect_ratio:
            raise NotImplementedError("Resizing: pad_to_aspect_ratio=True is not available in dptrain's Keras "
                                      "facade; use crop_to_aspect_ratio=True or pad the images first")
        if antialias:
            raise NotImplementedError("Resizing: antialias=True is not available in dptrain's Keras facade "
                                      "(antialias=False, Keras' default, is)")
        self.interpolation = interpolation
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)

    def _transform(self, x, training):
        return resize_images(x, self.height, self.width, self.interpolation, self.crop_to_aspect_ratio)

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation,
                "crop_to_aspect_ratio": self.crop_to_aspect_ratio}


class CenterCrop(_SizeLayer):
    """Crops the central (height, width) window, in training and inference alike."""

    def _transform(self, x, training):
        _, h, w, _ = x.shape
        if h >= self.height and w >= self.width:
            hs, ws = int((h - self.height) / 2), int((w - self.width) / 2)
            return x[:, hs:hs + self.height, ws:ws + self.width, :]
        return resize_images(x, self.height, self.width, "bilinear", crop_to_aspect_ratio=True)


class RandomCrop(_SizeLayer):
    """A random (height, width) window in training (the same for every image of the batch, as Keras 3);
    the central aspect-ratio window resized to the target otherwise."""

    def __init__(self, height, width, seed=None, data_format=None, **kwargs):
        super().__init__(height, width, data_format=data_format, **kwargs)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0):
            raise ValueError(f"RandomCrop: seed must be a non-negative integer or None, got {seed!r}")
        self.seed = None if seed is None else int(seed)
        self._seed_rng = None if seed is None else np.random.default_rng(self.seed)

    def _draw(self, high):
        """One integer in [0, high): the same on every rank (one crop for the global batch)."""
        rng = self._seed_rng if self._seed_rng is not None else _random.default_generator()
        return int(_random.draw_rows(lambda shape: rng.uniform(0.0, float(high), size=shape), ()))

    def _transform(self, x, training):
        _, h, w, _ = x.shape
        if training and h > self.height and w > self.width:
            hs = self._draw(h - self.height + 1)
            ws = self._draw(w - self.width + 1)
            return x[:, hs:hs + self.height, ws:ws + self.width, :]
        return resize_images(x, self.height, self.width, "bilinear", crop_to_aspect_ratio=True)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}
