"""Keras 3's RandomContrast, RandomBrightness, RandomCrop, CenterCrop and Resizing.

The random layers are checked against NumPy transcriptions of keras.src's formulas with the same
draws (the layer's seeded generator), the resize against a pixel-by-pixel NumPy version of
TensorFlow's half-pixel rule and against torch.nn.functional.interpolate (skipped without torch);
training-only behaviour, gradients (float64 gradcheck), models and save/load."""
import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers
from engine.tensor import Tensor

try:
    import torch
except ImportError:                                     # pragma: no cover - torch is optional
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def _images(shape=(3, 5, 6, 2), seed=0, scale=255.0):
    return (np.random.default_rng(seed).random(shape) * scale).astype(np.float32)


# ------------------------------------------------------------------ contrast / brightness

def test_random_contrast_matches_keras_formula():
    x = _images()
    y = layers.RandomContrast(factor=(0.3, 0.5), seed=7)(x, training=True).numpy()
    c = np.random.default_rng(7).uniform(1 - 0.3, 1 + 0.5, 3).reshape(3, 1, 1, 1)
    mean = x.mean(axis=1, keepdims=True).mean(axis=2, keepdims=True)
    np.testing.assert_allclose(y, np.clip((x - mean) * c + mean, 0, 255), rtol=1e-5, atol=1e-3)


def test_random_contrast_factor_bounds_are_keras_documented_ones():
    # Keras documents [1 - f, 1 + f] for a number f (Keras 3's code draws from [1, 1 + f]; we follow the docs)
    assert layers.RandomContrast(0.2).factor == (0.2, 0.2)     # [0.8, 1.2], as Keras documents
    assert layers.RandomContrast((0.5, 0.1)).factor == (0.1, 0.5)
    for bad in (1.5, -0.1, (2.0, 3.0), "a", (0.1,)):
        with pytest.raises(ValueError, match="factor"):
            layers.RandomContrast(bad)
    x = _images(scale=1.0)
    y = layers.RandomContrast(0.5, value_range=(0, 1), seed=1)(x, training=True).numpy()
    c = np.random.default_rng(1).uniform(0.5, 1.5, 3).reshape(3, 1, 1, 1)
    mean = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y, np.clip((x - mean) * c + mean, 0, 1), rtol=1e-5, atol=1e-6)


def test_random_brightness_matches_keras_formula():
    x = _images()
    layer = layers.RandomBrightness(0.4, value_range=(255, 0), seed=3)   # value_range is sorted
    assert layer.factor == (-0.4, 0.4) and layer.value_range == [0.0, 255.0]
    y = layer(x, training=True).numpy()
    delta = np.random.default_rng(3).uniform(-0.4, 0.4, 3).reshape(3, 1, 1, 1) * 255.0
    np.testing.assert_allclose(y, np.clip(x + delta, 0, 255), rtol=1e-5, atol=1e-3)
    single = layers.RandomBrightness((-0.2, 0.1), value_range=(0, 1), seed=4)(x[0] / 255, training=True).numpy()
    d = np.random.default_rng(4).uniform(-0.2, 0.1, 1)[0]
    np.testing.assert_allclose(single, np.clip(x[0] / 255 + d, 0, 1), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="value_range"):
        layers.RandomBrightness(0.1, value_range=(0, 1, 2))


def test_colour_layers_only_act_in_training_and_are_differentiable():
    x = _images()
    for layer in (layers.RandomContrast(0.5), layers.RandomBrightness(0.5)):
        np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
    for make in (lambda: layers.RandomContrast((0.4, 0.6), value_range=(-1e3, 1e3), seed=2),
                 lambda: layers.RandomBrightness(0.3, value_range=(-1e3, 1e3), seed=2)):
        xt = Tensor(np.random.default_rng(1).standard_normal((2, 3, 4, 2)), dtype="float64", requires_grad=True)
        assert engine.gradcheck(lambda t, make=make: make()(t, training=True), [xt]) is not False
    # clipped values pass no gradient (Keras' clip)
    xt = Tensor(np.full((1, 2, 2, 1), 300.0, np.float32), requires_grad=True)
    layers.RandomBrightness(0.1, seed=0)(xt, training=True).sum().backward()
    np.testing.assert_array_equal(xt.grad.numpy(), 0.0)


def test_colour_layers_in_a_model_augment_in_fit_only():
    x = _images((8, 4, 4, 1), scale=1.0)
    model = keras.Sequential([keras.Input((4, 4, 1)), layers.RandomContrast(0.5, value_range=(0, 1), seed=0),
                              layers.RandomBrightness(0.2, value_range=(0, 1)), layers.Flatten(), layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((8, 1)), epochs=1, verbose=0)
    ref = x.reshape(8, -1) @ model.layers[-1].get_weights()[0] + model.layers[-1].get_weights()[1]
    np.testing.assert_allclose(model.predict(x, verbose=0), ref, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ resizing

def _tf_resize(x, th, tw, interpolation):
    """TensorFlow's half-pixel resize, one output pixel at a time."""
    n, h, w, c = x.shape
    out = np.zeros((n, th, tw, c))
    for i in range(th):
        for j in range(tw):
            if interpolation == "nearest":
                out[:, i, j] = x[:, min(int(np.floor((i + 0.5) * h / th)), h - 1),
                                 min(int(np.floor((j + 0.5) * w / tw)), w - 1)]
                continue
            yi, xj = (i + 0.5) * h / th - 0.5, (j + 0.5) * w / tw - 0.5
            y0, x0 = int(np.floor(yi)), int(np.floor(xj))
            fy, fx = yi - y0, xj - x0
            ya, yb = min(max(y0, 0), h - 1), min(max(y0 + 1, 0), h - 1)
            xa, xb = min(max(x0, 0), w - 1), min(max(x0 + 1, 0), w - 1)
            out[:, i, j] = ((1 - fy) * ((1 - fx) * x[:, ya, xa] + fx * x[:, ya, xb])
                            + fy * ((1 - fx) * x[:, yb, xa] + fx * x[:, yb, xb]))
    return out


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("size", [(9, 4), (3, 11), (2, 2), (5, 6)])
def test_resizing_matches_tensorflows_half_pixel_rule(size, interpolation):
    x = _images((2, 5, 6, 3))
    y = layers.Resizing(*size, interpolation=interpolation)(x).numpy()
    np.testing.assert_allclose(y, _tf_resize(x.astype(np.float64), *size, interpolation), rtol=1e-5, atol=1e-3)


@needs_torch
@pytest.mark.parametrize("size", [(9, 4), (3, 11), (2, 2)])
def test_resizing_matches_torch_interpolate(size):
    x = _images((2, 5, 6, 3))
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    for ours, theirs in (("bilinear", dict(mode="bilinear", align_corners=False, antialias=False)),
                         ("nearest", dict(mode="nearest-exact"))):
        ref = torch.nn.functional.interpolate(xt, size=size, **theirs).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(layers.Resizing(*size, interpolation=ours)(x).numpy(), ref, rtol=1e-5, atol=1e-3)


def test_resizing_crop_to_aspect_ratio_gradient_and_refusals():
    x = _images((1, 6, 9, 1))
    y = layers.Resizing(4, 4, crop_to_aspect_ratio=True)(x).numpy()
    # Keras' window: crop_h = min(6, int(9 * 4 / 4)) = 6, crop_w = min(9, int(6 * 4 / 4)) = 6, w_start = 1
    np.testing.assert_allclose(y, _tf_resize(x[:, :, 1:7].astype(np.float64), 4, 4, "bilinear"), rtol=1e-5, atol=1e-3)
    xt = Tensor(np.random.default_rng(0).standard_normal((2, 4, 5, 2)), dtype="float64", requires_grad=True)
    engine.gradcheck(lambda t: layers.Resizing(3, 7)(t), [xt])
    with pytest.raises(NotImplementedError, match="pad_to_aspect_ratio"):
        layers.Resizing(2, 2, pad_to_aspect_ratio=True)
    with pytest.raises(NotImplementedError, match="interpolation"):
        layers.Resizing(2, 2, interpolation="bicubic")
    with pytest.raises(ValueError, match="height"):
        layers.Resizing(0, 2)


def test_center_crop():
    x = _images((2, 7, 8, 3))
    np.testing.assert_array_equal(layers.CenterCrop(4, 5)(x).numpy(), x[:, 1:5, 1:6])
    np.testing.assert_array_equal(layers.CenterCrop(4, 5)(x[0]).numpy(), x[0, 1:5, 1:6])
    # smaller than the target: Keras' smart_resize (aspect-ratio crop, then bilinear resize), in inference too
    small = layers.CenterCrop(10, 10)(x, training=False).numpy()
    np.testing.assert_allclose(small, layers.Resizing(10, 10, crop_to_aspect_ratio=True)(x).numpy())
    assert layers.CenterCrop(4, 5).compute_output_shape((None, 7, 8, 3)) == (None, 4, 5, 3)


def test_random_crop_draws_one_window_per_batch_and_resizes_at_inference():
    x = _images((3, 9, 10, 2))
    y = layers.RandomCrop(4, 6, seed=5)(x, training=True).numpy()
    rng = np.random.default_rng(5)
    hs, ws = int(rng.uniform(0, 9 - 4 + 1)), int(rng.uniform(0, 10 - 6 + 1))
    np.testing.assert_array_equal(y, x[:, hs:hs + 4, ws:ws + 6])
    inference = layers.RandomCrop(4, 6)(x, training=False).numpy()
    np.testing.assert_allclose(inference, layers.Resizing(4, 6, crop_to_aspect_ratio=True)(x).numpy())
    # not larger than the target in both dimensions: the inference path, even in training
    np.testing.assert_allclose(layers.RandomCrop(9, 6)(x, training=True).numpy(),
                               layers.Resizing(9, 6, crop_to_aspect_ratio=True)(x).numpy())
    xt = Tensor(x, requires_grad=True)
    layers.RandomCrop(4, 6, seed=5)(xt, training=True).sum().backward()
    assert xt.grad.numpy().sum() == 3 * 4 * 6 * 2


def test_size_layers_in_a_model_build_train_and_reload(tmp_path):
    x = _images((6, 10, 10, 3), scale=1.0)
    model = keras.Sequential([keras.Input((10, 10, 3)), layers.RandomCrop(8, 8, seed=1), layers.Resizing(4, 4),
                              layers.CenterCrop(2, 2), layers.RandomContrast(0.3, value_range=(0, 1)),
                              layers.Flatten(), layers.Dense(2)])
    assert model.layers[-1].get_weights()[0].shape == (12, 2)
    model.compile("adam", "mse")
    model.fit(x, np.zeros((6, 2)), epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    assert loaded.layers[0].get_config()["height"] == 8 and loaded.layers[3].get_config()["factor"] == [0.3, 0.3]
