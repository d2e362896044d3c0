"""keras.layers.GRU against Keras' own formula (reset_after=True), gradients, training, save/load."""
import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers


def _keras_gru_reference(x, kernel, recurrent, bias, return_sequences=False, go_backwards=False):
    """Keras' GRU cell, written out from its documentation: gates z, r, h; reset after the matmul."""
    sig = lambda v: 1.0 / (1.0 + np.exp(-v))      # noqa: E731
    n, t, _ = x.shape
    u = recurrent.shape[0]
    h = np.zeros((n, u))
    steps = range(t - 1, -1, -1) if go_backwards else range(t)
    outs = []
    for s in steps:
        xw = x[:, s] @ kernel + bias[0]
        hu = h @ recurrent + bias[1]
        z = sig(xw[:, :u] + hu[:, :u])
        r = sig(xw[:, u:2 * u] + hu[:, u:2 * u])
        hh = np.tanh(xw[:, 2 * u:] + r * hu[:, 2 * u:])
        h = z * h + (1 - z) * hh
        outs.append(h)
    return np.stack(outs, axis=1) if return_sequences else h


@pytest.mark.parametrize("return_sequences,go_backwards", [(False, False), (True, False), (True, True)])
def test_gru_matches_the_keras_formula(return_sequences, go_backwards):
    keras.utils.set_random_seed(3)
    layer = layers.GRU(6, return_sequences=return_sequences, go_backwards=go_backwards, input_shape=(7, 4))
    m = keras.Sequential([layer])
    rng = np.random.default_rng(3)
    bias = rng.normal(scale=0.3, size=(2, 18)).astype(np.float32)      # non-zero: checks both bias rows
    kernel, recurrent, _ = layer.get_weights()
    layer.set_weights([kernel, recurrent, bias])
    x = rng.normal(size=(5, 7, 4)).astype(np.float32)
    want = _keras_gru_reference(x.astype(np.float64), kernel, recurrent, bias, return_sequences, go_backwards)
    np.testing.assert_allclose(m.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    assert [w.shape for w in layer.get_weights()] == [(4, 18), (6, 18), (2, 18)]


def test_gru_gradients_reach_keras_layout_weights():
    keras.utils.set_random_seed(4)
    layer = layers.GRU(3, input_shape=(4, 2))
    keras.Sequential([layer])
    rng = np.random.default_rng(4)
    layer.set_weights([w + rng.normal(scale=0.1, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    x = engine.tensor(rng.normal(size=(2, 4, 2)).astype(np.float32))
    out = layer(x)
    (out * out).sum().backward()
    kernel, recurrent, bias = (w.astype(np.float64) for w in layer.get_weights())

    def f(k, r, b):
        h = _keras_gru_reference(x.numpy().astype(np.float64), k, r, b)
        return float((h * h).sum())
    eps = 1e-4
    for param, idx, which in ((layer.kernel, (1, 4), 0), (layer.recurrent_kernel, (2, 7), 1), (layer.bias, (1, 8), 2)):
        args = [kernel.copy(), recurrent.copy(), bias.copy()]
        args[which][idx] += eps
        up = f(*args)
        args[which][idx] -= 2 * eps
        numeric = (up - f(*args)) / (2 * eps)
        assert float(param.grad.numpy()[idx]) == pytest.approx(numeric, rel=2e-3, abs=1e-5)


def test_gru_text_model_trains_and_saves(tmp_path):
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.integers(1, 30, size=(400, 10))
    y = (np.isin(x, [4]).sum(1) > 0).astype(np.int64)
    m = keras.Sequential([layers.Embedding(30, 8, input_length=10), layers.GRU(16),
                          layers.Dense(2, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x, y, epochs=10, batch_size=32, verbose=0, validation_split=0.2)
    assert h.history["val_accuracy"][-1] > 0.9
    m.save(tmp_path / "gru.keras")
    loaded = keras.models.load_model(tmp_path / "gru.keras")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), m.predict(x, verbose=0))


def test_gru_unsupported_options_are_clear():
    with pytest.raises(ValueError, match="reset_after=True"):
        layers.GRU(4, reset_after=False)
    with pytest.raises(ValueError, match="recurrent_activation='sigmoid'"):
        layers.GRU(4, activation="relu")
