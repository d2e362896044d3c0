"""Keras 3's image augmentation layers: RandomFlip, RandomRotation, RandomZoom, RandomTranslation.

The affine sampler is checked against a pixel-by-pixel NumPy reference of Keras' map_coordinates
(every fill mode, both interpolations) and against torch.nn.functional.grid_sample (skipped without
torch); the layers against Keras' transform formulas; training-only behaviour, seeds, gradients,
models and save/load."""
import numpy as np
import pytest

from engine import keras
from engine.keras import layers
from engine.keras.layers.augmentation import affine_transform
from engine.tensor import Tensor

try:
    import torch
except ImportError:                                     # pragma: no cover - torch is optional
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def _fix(i, n, mode):
    """One index under Keras' fill modes, written out case by case; None = outside (constant)."""
    if 0 <= i < n:
        return i
    if mode == "constant":
        return None
    if mode == "nearest":
        return min(max(i, 0), n - 1)
    if mode == "wrap":
        return i % n
    i = i % (2 * n)                 # reflect: d c b a | a b c d | d c b a
    return i if i < n else 2 * n - 1 - i


def _reference(img, t, interpolation, mode, fill):
    """Keras' affine_transform on one (H, W, C) image, one output pixel at a time."""
    h, w, c = img.shape
    out = np.zeros_like(img, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            k = t[6] * x + t[7] * y + 1
            xi, yi = (t[0] * x + t[1] * y + t[2]) / k, (t[3] * x + t[4] * y + t[5]) / k
            if interpolation == "nearest":
                taps = [(int(np.sign(yi) * np.floor(abs(yi) + 0.5)), int(np.sign(xi) * np.floor(abs(xi) + 0.5)), 1.0)]
            else:
                y0, x0 = int(np.floor(yi)), int(np.floor(xi))
                dy, dx = yi - y0, xi - x0
                taps = [(y0, x0, (1 - dy) * (1 - dx)), (y0, x0 + 1, (1 - dy) * dx),
                        (y0 + 1, x0, dy * (1 - dx)), (y0 + 1, x0 + 1, dy * dx)]
            for ty, tx, wt in taps:
                fy, fx = _fix(ty, h, mode), _fix(tx, w, mode)
                out[y, x] += wt * (np.full(c, fill) if fy is None or fx is None else img[fy, fx])
    return out


@pytest.mark.parametrize("mode", ["reflect", "wrap", "constant", "nearest"])
@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
def test_affine_transform_matches_a_pixel_reference(mode, interpolation):
    rng = np.random.default_rng(0)
    imgs = rng.standard_normal((2, 7, 9, 2)).astype(np.float32)
    a = 0.7
    rot = [np.cos(a), -np.sin(a), 2.3, np.sin(a), np.cos(a), -3.1, 0, 0]
    zoom_shift = [1.6, 0.0, -4.2, 0.0, 0.55, 2.7, 0.0, 0.0]
    out = affine_transform(Tensor(imgs), np.array([rot, zoom_shift]), interpolation, mode, fill_value=1.5).numpy()
    for i, t in enumerate([rot, zoom_shift]):
        np.testing.assert_allclose(out[i], _reference(imgs[i], t, interpolation, mode, 1.5), atol=1e-5)


@needs_torch
@pytest.mark.parametrize("mode,padding", [("reflect", "reflection"), ("constant", "zeros"), ("nearest", "border")])
def test_bilinear_rotation_matches_torch_grid_sample(mode, padding):
    """grid_sample(align_corners=False) samples pixel centres at (2 i + 1) / n - 1 and reflects about the
    image edge: the same sampling as Keras' per-tap index rules."""
    rng = np.random.default_rng(1)
    imgs = rng.standard_normal((3, 8, 11, 2)).astype(np.float32)
    layer = layers.RandomRotation(0.3, fill_mode=mode, seed=5)
    out = layer(imgs, training=True).numpy()
    t = layers.RandomRotation(0.3, fill_mode=mode, seed=5)._transforms(3, 8, 11)
    ys, xs = np.meshgrid(np.arange(8.0), np.arange(11.0), indexing="ij")
    x_in = t[:, 0, None, None] * xs + t[:, 1, None, None] * ys + t[:, 2, None, None]
    y_in = t[:, 3, None, None] * xs + t[:, 4, None, None] * ys + t[:, 5, None, None]
    grid = np.stack([(2 * x_in + 1) / 11 - 1, (2 * y_in + 1) / 8 - 1], axis=-1)
    ref = torch.nn.functional.grid_sample(torch.tensor(imgs).permute(0, 3, 1, 2), torch.tensor(grid, dtype=torch.float32),
                                          mode="bilinear", padding_mode=padding, align_corners=False)
    np.testing.assert_allclose(out, ref.permute(0, 2, 3, 1).numpy(), atol=1e-5)


def test_rotation_by_a_quarter_turn_is_rot90_counter_clockwise():
    img = np.random.default_rng(2).standard_normal((1, 6, 6, 1)).astype(np.float32)
    out = layers.RandomRotation((0.25, 0.25), seed=0)(img, training=True).numpy()
    np.testing.assert_allclose(out[0, :, :, 0], np.rot90(img[0, :, :, 0], 1), atol=1e-5)


def test_layer_transforms_follow_keras_formulas():
    n, h, w = 4, 10, 7
    zoom = layers.RandomZoom((-0.3, 0.2), seed=3)
    t = zoom._transforms(n, h, w)
    z = np.random.default_rng(3).uniform(0.7, 1.2, size=n)          # 1 + U[lower, upper]
    np.testing.assert_allclose(t[:, 0], z)
    np.testing.assert_allclose(t[:, 4], z)                           # width_factor=None: same zoom
    np.testing.assert_allclose(t[:, 2], (w - 1) / 2 * (1 - z))
    np.testing.assert_allclose(t[:, 5], (h - 1) / 2 * (1 - z))
    tr = layers.RandomTranslation(0.2, (-0.1, 0.3), seed=4)._transforms(n, h, w)
    g = np.random.default_rng(4)
    dy, dx = g.uniform(-0.2, 0.2, n) * h, g.uniform(-0.1, 0.3, n) * w
    np.testing.assert_allclose(tr[:, [2, 5]], np.stack([-dx, -dy], 1))
    rot = layers.RandomRotation(0.1, seed=6)._transforms(n, h, w)
    a = np.random.default_rng(6).uniform(-0.2 * np.pi, 0.2 * np.pi, n)
    np.testing.assert_allclose(rot[:, :2], np.stack([np.cos(a), -np.sin(a)], 1))
    np.testing.assert_allclose(rot[:, 2], ((w - 1) - (np.cos(a) * (w - 1) - np.sin(a) * (h - 1))) / 2)


def test_flip_modes_and_one_draw_per_image():
    x = np.random.default_rng(5).standard_normal((16, 4, 5, 3)).astype(np.float32)
    flips = np.random.default_rng(9).uniform(size=16) <= 0.5
    for mode, ref in [("horizontal", x[:, :, ::-1]), ("vertical", x[:, ::-1]),
                      ("horizontal_and_vertical", x[:, ::-1, ::-1])]:
        out = layers.RandomFlip(mode, seed=9)(x, training=True).numpy()
        np.testing.assert_array_equal(out[flips], ref[flips])
        np.testing.assert_array_equal(out[~flips], x[~flips])
    with pytest.raises(ValueError, match="mode"):
        layers.RandomFlip("diagonal")


def test_training_only_and_eager_default_augments():
    x = np.random.default_rng(0).uniform(0, 255, (4, 8, 8, 3)).astype(np.float32)
    for layer in [layers.RandomFlip(seed=1), layers.RandomRotation(0.2, seed=1), layers.RandomZoom(0.3, seed=1),
                  layers.RandomTranslation(0.2, 0.2, seed=1)]:
        np.testing.assert_array_equal(layer(x, training=False).numpy(), x)
        assert not np.allclose(layer(x).numpy(), x), type(layer).__name__     # Keras: eager call augments
        single = layer(x[0], training=True)                                    # one (H, W, C) image
        assert single.shape == (8, 8, 3)


def test_seeds_reproduce_and_global_seed_decides_otherwise():
    x = np.random.default_rng(0).standard_normal((3, 6, 6, 1)).astype(np.float32)
    a = layers.RandomRotation(0.2, seed=7)(x, training=True).numpy()
    b = layers.RandomRotation(0.2, seed=7)(x, training=True).numpy()
    np.testing.assert_array_equal(a, b)
    keras.utils.set_random_seed(11)
    c = layers.RandomZoom(0.3)(x, training=True).numpy()
    keras.utils.set_random_seed(11)
    d = layers.RandomZoom(0.3)(x, training=True).numpy()
    np.testing.assert_array_equal(c, d)


def test_factor_validation_is_keras():
    with pytest.raises(ValueError, match="factor"):
        layers.RandomRotation(1.5)
    with pytest.raises(ValueError, match="height_factor"):
        layers.RandomZoom((-0.2, 1.2))
    with pytest.raises(NotImplementedError, match="fill_mode"):
        layers.RandomTranslation(0.1, 0.1, fill_mode="mirror")
    assert layers.RandomRotation((0.3, -0.1)).factor == (-0.1, 0.3)


def test_gradient_is_the_adjoint_of_the_sampling():
    """<A x, g> = <x, A^T g>: the backward scatter is the transpose of the forward gather."""
    rng = np.random.default_rng(3)
    x = Tensor(rng.standard_normal((2, 5, 6, 2)).astype(np.float64), requires_grad=True)
    g = rng.standard_normal((2, 5, 6, 2))
    t = np.array([[0.9, -0.3, 1.2, 0.2, 1.1, -0.7, 0, 0], [1.3, 0.0, -1.0, 0.0, 0.8, 0.5, 0, 0]])
    y = affine_transform(x, t, "bilinear", "reflect")
    (y * Tensor(g)).sum().backward()
    grad = x.grad.numpy() if isinstance(x.grad, Tensor) else np.asarray(x.grad)
    lhs, rhs = float((y.numpy() * g).sum()), float((x.numpy() * grad).sum())
    assert abs(lhs - rhs) < 1e-9 * max(1.0, abs(lhs))


def test_in_a_model_fit_augments_predict_does_not_and_save_load(tmp_path):
    keras.utils.set_random_seed(0)
    aug = keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1),
                            layers.RandomZoom(0.1), layers.RandomTranslation(0.1, 0.1)])
    inputs = keras.Input(shape=(12, 12, 1))
    x = aug(inputs)
    x = layers.Rescaling(1.0 / 255)(x)
    x = layers.Conv2D(4, 3, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    xs = np.random.default_rng(1).uniform(0, 255, (32, 12, 12, 1)).astype(np.float32)
    ys = (xs.mean(axis=(1, 2, 3)) > 127).astype(np.int64)
    model.fit(xs, ys, epochs=1, batch_size=16, verbose=0)
    p1 = model.predict(xs, verbose=0)
    np.testing.assert_array_equal(p1, model.predict(xs, verbose=0))       # no augmentation in predict
    path = tmp_path / "aug.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(xs, verbose=0), p1, atol=1e-6)
    cfg = loaded.layers[1].layers[1].get_config()
    assert cfg["factor"] == [-0.1, 0.1] and cfg["fill_mode"] == "reflect"
