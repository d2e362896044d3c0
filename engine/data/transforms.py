"""Image transforms that work on one sample (C,H,W) or a whole batch (N,C,H,W).

The DataLoader's fast path hands a transform the entire batch at once, so every
transform here is vectorized over the leading batch axis (no Python loop over
samples).  A transform marks that with `batched = True`; a user callable without
it is applied sample by sample.  Random transforms draw from their own seeded
`numpy.random.Generator` so augmentation is reproducible: pass `seed=` (or a
`generator=`), e.g. a different seed per rank in data-parallel training.

Inputs may be numpy or cupy arrays (or engine Tensors, whose array is used); the
output uses the same array module.  Random numbers are drawn on the host with
numpy, so CPU and GPU runs with the same seed augment identically.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

__all__ = ["Compose", "ToFloat", "ToTensor", "Normalize", "RandomCrop", "RandomHorizontalFlip", "Lambda"]


def _array(x):
    return getattr(x, "data", x) if not isinstance(x, np.ndarray) else x


def _as_batch(x):
    """View a (C,H,W) sample as a batch of one; return (batch, was_single)."""
    if x.ndim == 3:
        return x[None], True
    if x.ndim == 4:
        return x, False
    raise ValueError(f"image transforms expect (C,H,W) or (N,C,H,W) arrays, got shape {tuple(x.shape)}")


def _make_rng(seed, generator):
    if generator is not None and seed is not None:
        raise ValueError("pass either seed= or generator=, not both")
    return generator if generator is not None else np.random.default_rng(seed)


class Compose:
    """Apply transforms in order; batched only if every member is."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    @property
    def batched(self):
        return all(getattr(t, "batched", False) for t in self.transforms)

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x

    def __repr__(self):
        return "Compose([" + ", ".join(repr(t) for t in self.transforms) + "])"


class Lambda:
    """Wrap a function; set batched=True only if it handles a leading batch axis."""

    def __init__(self, fn, batched=False):
        self.fn, self.batched = fn, batched

    def __call__(self, x):
        return self.fn(x)


class ToFloat:
    """Integer images -> float32 scaled by `scale` (default 1/255, so uint8 maps to [0, 1]).

    Float input is only cast to float32 (the datasets already return [0, 1] floats),
    which makes the transform safe to put first in any pipeline.
    """
    batched = True

    def __init__(self, scale: float = 1.0 / 255.0, dtype=np.float32):
        self.scale, self.dtype = float(scale), np.dtype(dtype)

    def __call__(self, x):
        x = _array(x)
        xp = get_array_module(x)
        if x.dtype.kind in "ui":
            out = x.astype(self.dtype)
            out *= self.dtype.type(self.scale)
            return out
        return xp.asarray(x, dtype=self.dtype)

    def __repr__(self):
        return f"ToFloat(scale={self.scale})"


class ToTensor(ToFloat):
    """torchvision's name for ToFloat(1/255); (H,W) input gets a channel axis -> (1,H,W).

    Layout is otherwise left alone: the datasets here already return NCHW.
    """

    def __call__(self, x):
        x = _array(x)
        if x.ndim == 2:
            x = x[None]
        return super().__call__(x)

    def __repr__(self):
        return "ToTensor()"


class Normalize:
    """(x - mean[c]) / std[c] over the channel axis (-3); a scalar applies to all channels."""
    batched = True

    def __init__(self, mean, std, inplace: bool = False):
        self.mean = np.atleast_1d(np.asarray(mean, dtype=np.float64))
        self.std = np.atleast_1d(np.asarray(std, dtype=np.float64))
        if np.any(self.std == 0):
            raise ValueError(f"Normalize: std must be non-zero, got {self.std.tolist()}")
        self.inplace = inplace
        self._cache = {}

    def _coeffs(self, xp, dtype, channels):
        key = (xp.__name__, dtype.str, channels)
        if key not in self._cache:
            m, s = self.mean, self.std
            if m.size not in (1, channels) or s.size not in (1, channels):
                raise ValueError(f"Normalize: {m.size} means / {s.size} stds for {channels} channels")
            scale = np.broadcast_to(1.0 / s, (channels,)).reshape(channels, 1, 1)
            shift = np.broadcast_to(-m / s, (channels,)).reshape(channels, 1, 1)
            self._cache[key] = (xp.asarray(scale.astype(dtype)), xp.asarray(shift.astype(dtype)))
        return self._cache[key]

    def __call__(self, x):
        x = _array(x)
        xp = get_array_module(x)
        if x.dtype.kind != "f":
            x = x.astype(np.float32)
        elif not self.inplace:
            x = x.copy()
        scale, shift = self._coeffs(xp, x.dtype, x.shape[-3])
        x *= scale          # x * (1/std) - mean/std == (x - mean) / std, in place, no temporaries
        x += shift
        return x

    def __repr__(self):
        return f"Normalize(mean={self.mean.tolist()}, std={self.std.tolist()})"


class RandomCrop:
    """Zero-pad by `padding` then crop a random size x size window, independently per sample."""
    batched = True

    def __init__(self, size, padding: int = 0, fill: float = 0, seed=None, generator=None):
        self.size = (size, size) if isinstance(size, int) else tuple(size)
        self.padding = int(padding)
        self.fill = fill
        self.rng = _make_rng(seed, generator)

    def __call__(self, x):
        x = _array(x)
        xp = get_array_module(x)
        batch, single = _as_batch(x)
        p = self.padding
        if p:
            batch = xp.pad(batch, ((0, 0), (0, 0), (p, p), (p, p)), constant_values=self.fill)
        n, c, h, w = batch.shape
        th, tw = self.size
        if th > h or tw > w:
            raise ValueError(f"RandomCrop: crop {self.size} larger than padded image {(h, w)}")
        oy = self.rng.integers(0, h - th + 1, size=n)
        ox = self.rng.integers(0, w - tw + 1, size=n)
        # One gather for the whole batch: windows[n, c, y, x, i, j] = batch[n, c, y+i, x+j].
        windows = xp.lib.stride_tricks.sliding_window_view(batch, (th, tw), axis=(2, 3))
        out = windows[xp.arange(n), :, xp.asarray(oy), xp.asarray(ox)]   # (n, c, th, tw)
        return out[0] if single else out

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each sample left-right with probability p."""
    batched = True

    def __init__(self, p: float = 0.5, seed=None, generator=None):
        self.p = float(p)
        self.rng = _make_rng(seed, generator)

    def __call__(self, x):
        x = _array(x)
        xp = get_array_module(x)
        batch, single = _as_batch(x)
        flip = self.rng.random(batch.shape[0]) < self.p
        if not flip.any():
            out = batch
        else:
            out = batch.copy()
            sel = xp.asarray(np.flatnonzero(flip))
            out[sel] = batch[sel][..., ::-1]
        return out[0] if single else out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"
