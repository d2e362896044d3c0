"""Layer behaviour an audit against Keras 3.15.1 (torch backend) found different and that now follows
Keras: checked here against Keras' formulas (the audit compared the numbers directly)."""
import math

import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import activations, layers


def _x():
    return np.random.default_rng(0).standard_normal((2, 4, 3)).astype(np.float32)


def test_relu_arguments_softmax_axis_and_per_channel_rescaling():
    x = _x()
    np.testing.assert_array_equal(layers.ReLU(max_value=0.5)(x).numpy(), np.clip(x, 0, 0.5))
    y = layers.ReLU(max_value=1.0, negative_slope=0.3, threshold=0.1)(x).numpy()
    ref = np.where(x > 0.1, np.minimum(x, 1.0), 0.0) - 0.3 * np.maximum(0.1 - x, 0)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-7)
    s = layers.Softmax(axis=1)(x).numpy()
    np.testing.assert_allclose(s, np.exp(x) / np.exp(x).sum(axis=1, keepdims=True), rtol=1e-5)
    r = layers.Rescaling([1.0, 2.0, 3.0], offset=[0.0, 1.0, 2.0])
    np.testing.assert_allclose(r(x).numpy(), x * [1, 2, 3] + [0, 1, 2], rtol=1e-5, atol=1e-6)
    assert layers.Rescaling.from_config(r.get_config()).get_config()["scale"] == [1.0, 2.0, 3.0]
    # inside a model whose convolutions run channels-first internally, per-channel still means last axis
    img = np.random.default_rng(1).random((2, 5, 5, 3)).astype(np.float32)
    m = keras.Sequential([keras.Input((5, 5, 3)), layers.Conv2D(3, 1, kernel_initializer="ones", use_bias=False),
                          layers.Rescaling([1.0, 0.0, 2.0])])
    out = m.predict(img, verbose=0)
    np.testing.assert_allclose(out, img.sum(-1, keepdims=True) * [1.0, 0.0, 2.0], rtol=1e-5)


def test_gelu_is_exact_unless_approximate():
    x = engine.tensor(np.array([-3.0, -0.5, 0.5, 2.0], np.float32))
    exact = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (-3.0, -0.5, 0.5, 2.0)])
    np.testing.assert_allclose(activations.gelu(x).numpy(), exact, rtol=1e-5)
    assert abs(float(activations.gelu(x, approximate=True).numpy()[0]) - (-0.003637)) < 1e-5
    np.testing.assert_allclose(layers.Dense(4, activation="gelu", kernel_initializer="identity")
                               (np.diag([-3.0, -0.5, 0.5, 2.0]).astype(np.float32)).numpy().diagonal(), exact, rtol=1e-5)
    for name in ("elu", "selu", "softplus", "softsign", "swish", "silu", "exponential", "leaky_relu", "relu6",
                 "hard_sigmoid"):
        assert callable(getattr(activations, name))


def test_normalization_weights_invert_and_given_statistics():
    x = _x()
    n = layers.Normalization()
    n.adapt(x)
    assert [w.shape for w in n.get_weights()] == [(3,), (3,), ()] and n.count_params() == 7
    assert n.get_weights()[2] == 8                       # 2 x 4 values per feature
    m, v = x.reshape(-1, 3).mean(0), x.reshape(-1, 3).var(0)
    np.testing.assert_allclose(n(x).numpy(), (x - m) / np.sqrt(v), rtol=1e-4, atol=1e-5)
    fixed = layers.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 1.0, 9.0], invert=True)
    np.testing.assert_allclose(fixed(x).numpy(), [1, 2, 3] + x * [2, 1, 3], rtol=1e-6)
    assert fixed.get_weights() == [] and fixed.count_params() == 0
    back = layers.Normalization.from_config(fixed.get_config())
    np.testing.assert_allclose(back(x).numpy(), fixed(x).numpy())
    whole = layers.Normalization(axis=None)
    whole.adapt(x)
    assert [w.shape for w in whole.get_weights()] == [(), (), ()]


def test_layer_normalization_sorts_axes_and_merge_layers_build_when_called():
    x = np.random.default_rng(2).standard_normal((2, 3, 4, 5)).astype(np.float32)
    ln = layers.LayerNormalization(axis=[-1, -3])
    ln(x)
    assert [w.shape for w in ln.get_weights()] == [(3, 5), (3, 5)]
    add = layers.Add()
    add([x, x])
    assert add.built and add.count_params() == 0


def test_mha_hands_on_only_the_mask_the_query_carries():
    q = np.random.default_rng(3).standard_normal((2, 4, 6)).astype(np.float32)
    mha = layers.MultiHeadAttention(2, 3)
    out = mha(q, q, query_mask=np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool))
    assert getattr(out, "_keras_mask", None) is None
    emb = layers.Embedding(10, 6, mask_zero=True)
    t = emb(np.array([[1, 2, 3, 0], [4, 5, 0, 0]]))
    np.testing.assert_array_equal(mha(t, t)._keras_mask, [[1, 1, 1, 0], [1, 1, 0, 0]])
    with pytest.raises(ValueError):
        layers.ReLU(max_value=-1)


def test_ops_keep_the_tensor_dtype_next_to_python_numbers_and_scalar_targets_stay_scalars():
    from engine.keras import ops
    from engine.keras.utils import timeseries_dataset_from_array
    t = engine.tensor(np.array([-1.0, 2.0], np.float32))
    assert ops.maximum(t, 2).dtype == np.float32 and ops.where(t > 0, t, 0).dtype == np.float32
    assert ops.maximum(np.array([1.0], np.float32), 2).dtype == np.float32
    i = engine.tensor(np.array([1, 2], np.int32))
    assert ops.add(i, 2).dtype == np.int32 and ops.add(i, 2.5).dtype == np.float32
    x, y = next(iter(timeseries_dataset_from_array(np.arange(10.0), np.arange(10.0), 3, batch_size=None)))
    assert x.shape == (3,) and y.shape == ()


def test_clone_model_of_a_compiled_model_is_compiled_with_a_fresh_optimizer():
    m = keras.Sequential([keras.Input((3,)), layers.Dense(1)])
    m.compile(keras.optimizers.SGD(0.05, momentum=0.9), "mse", metrics=["mae"])
    clone = keras.models.clone_model(m)
    assert clone.compiled and clone.optimizer is not m.optimizer and clone.optimizer.momentum == 0.9
    h = clone.fit(np.ones((4, 3), np.float32), np.ones((4, 1), np.float32), epochs=1, verbose=0)
    assert list(h.history) == ["loss", "mae"]
    assert not keras.models.clone_model(keras.Sequential([keras.Input((3,)), layers.Dense(1)])).compiled


def test_weights_have_keras_names_and_paths():
    """Keras 3.15.1 gives exactly these (variable.name, variable.path)."""
    m = keras.Sequential([keras.Input((4,)), layers.Dense(3, name="d1"), layers.BatchNormalization(name="bn")],
                         name="seq")
    assert [(w.name, w.path) for w in m.weights] == [
        ("kernel", "seq/d1/kernel"), ("bias", "seq/d1/bias"), ("gamma", "seq/bn/gamma"), ("beta", "seq/bn/beta"),
        ("moving_mean", "seq/bn/moving_mean"), ("moving_variance", "seq/bn/moving_variance")]
    d = layers.Dense(2)
    d.build((None, 3))
    assert [w.path for w in d.weights] == [f"{d.name}/kernel", f"{d.name}/bias"]
    i = keras.Input((4,))
    fn = keras.Model(i, layers.Dense(2, name="out")(layers.Dense(3, name="h")(i)), name="fn")
    assert [w.path for w in fn.weights] == ["h/kernel", "h/bias", "out/kernel", "out/bias"]

    class Scale(layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones")

        def call(self, x):
            return x * self.w

    s = Scale(name="scale")
    s(np.ones((1, 3), np.float32))
    assert (s.w.name, s.w.path) == ("w", "scale/w")
