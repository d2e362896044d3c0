"""SeparableConv2D and DepthwiseConv2D against TensorFlow's documented depthwise formula (NumPy loops),
Keras' weight shapes and parameter counts, gradients, and save/load."""
import numpy as np
import pytest

from engine import keras
from engine.keras import layers


def _tf_same_pads(n, k, s):
    total = max((-(-n // s) - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def _depthwise_ref(x, kernel, strides, padding):
    """tf.nn.depthwise_conv2d: out[b, i, j, c * dm + q] = sum_{di, dj} in[b, s*i + di, s*j + dj, c] * k[di, dj, c, q]."""
    kh, kw, cin, dm = kernel.shape
    if padding == "same":
        (t, b), (l, r) = _tf_same_pads(x.shape[1], kh, strides), _tf_same_pads(x.shape[2], kw, strides)
        x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
    n, h, w, _ = x.shape
    oh, ow = (h - kh) // strides + 1, (w - kw) // strides + 1
    out = np.zeros((n, oh, ow, cin * dm))
    for i in range(oh):
        for j in range(ow):
            patch = x[:, i * strides:i * strides + kh, j * strides:j * strides + kw, :]
            for c in range(cin):
                for q in range(dm):
                    out[:, i, j, c * dm + q] = (patch[..., c] * kernel[:, :, c, q]).sum(axis=(1, 2))
    return out


@pytest.mark.parametrize("padding,strides,dm", [("valid", 1, 1), ("same", 2, 2), ("same", 1, 3)])
def test_separable_conv2d_matches_depthwise_then_pointwise(padding, strides, dm):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 6, 3)).astype(np.float32)
    layer = layers.SeparableConv2D(4, 3, strides=strides, padding=padding, depth_multiplier=dm, activation="relu")
    layer(x)
    dk, pk, b = [w.astype(np.float64) for w in layer.get_weights()]
    assert dk.shape == (3, 3, 3, dm) and pk.shape == (1, 1, 3 * dm, 4) and b.shape == (4,)
    b = rng.standard_normal(4)
    layer.set_weights([dk, pk, b])
    ref = np.maximum(_depthwise_ref(x.astype(np.float64), dk, strides, padding) @ pk[0, 0] + b, 0)
    np.testing.assert_allclose(layer(x).numpy(), ref, atol=1e-5)
    assert layer.count_params() == 9 * 3 * dm + 3 * dm * 4 + 4


def test_depthwise_conv2d_weights_and_values():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 6, 2)).astype(np.float32)
    layer = layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=False)
    y = layer(x).numpy()
    (k,) = layer.get_weights()
    assert k.shape == (3, 3, 2, 2) and y.shape == (2, 6, 6, 4)
    np.testing.assert_allclose(y, _depthwise_ref(x.astype(np.float64), k.astype(np.float64), 1, "same"), atol=1e-5)


def test_keras_io_xception_block_trains_and_saves(tmp_path):
    """The residual block of keras.io's 'Image classification from scratch', small."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 1))
    x = layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    prev = x
    x = layers.Activation("relu")(x)
    x = layers.SeparableConv2D(16, 3, padding="same")(x)
    x = layers.BatchNormalization()(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = layers.add([x, layers.Conv2D(16, 1, strides=2, padding="same")(prev)])
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(1)(layers.Dropout(0.25)(x))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(3e-4), loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(name="acc")])
    xs = np.random.default_rng(2).standard_normal((16, 8, 8, 1)).astype(np.float32)
    ys = (xs.mean(axis=(1, 2, 3)) > 0).astype(np.float32)
    before = [w.copy() for w in model.get_weights()]
    hist = model.fit(xs, ys, epochs=2, batch_size=8, verbose=0)
    assert "acc" in hist.history
    assert any(not np.allclose(a, b) for a, b in zip(before, model.get_weights()))
    path = tmp_path / "sep.keras"
    model.save(path)
    np.testing.assert_allclose(keras.models.load_model(path).predict(xs, verbose=0), model.predict(xs, verbose=0),
                               atol=1e-6)
