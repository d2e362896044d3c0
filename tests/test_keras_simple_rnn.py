"""keras.layers.SimpleRNN against Keras' formula, gradients, initializers, training, save/load."""
import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers


def _keras_simple_rnn_reference(x, kernel, recurrent, bias, return_sequences=False, go_backwards=False,
                                activation=np.tanh):
    """Keras' SimpleRNNCell: h = activation(x @ kernel + bias + h_prev @ recurrent_kernel)."""
    n, t, _ = x.shape
    h = np.zeros((n, recurrent.shape[0]))
    outs = []
    for s in (range(t - 1, -1, -1) if go_backwards else range(t)):
        h = activation(x[:, s] @ kernel + bias + h @ recurrent)
        outs.append(h)
    return np.stack(outs, axis=1) if return_sequences else h


def _layer_with_random_weights(seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    layer = layers.SimpleRNN(5, input_shape=(6, 3), **kwargs)
    keras.Sequential([layer])
    rng = np.random.default_rng(seed)
    layer.set_weights([w + rng.normal(scale=0.2, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("return_sequences,go_backwards", [(False, False), (True, False), (False, True),
                                                           (True, True)])
def test_simple_rnn_matches_the_keras_formula(return_sequences, go_backwards):
    layer = _layer_with_random_weights(return_sequences=return_sequences, go_backwards=go_backwards)
    x = np.random.default_rng(1).normal(size=(4, 6, 3)).astype(np.float32)
    want = _keras_simple_rnn_reference(x.astype(np.float64), *layer.get_weights(),
                                       return_sequences=return_sequences, go_backwards=go_backwards)
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("activation,fn", [("relu", lambda v: np.maximum(v, 0)),
                                           ("sigmoid", lambda v: 1 / (1 + np.exp(-v))), (None, lambda v: v)])
def test_simple_rnn_other_activations(activation, fn):
    """relu runs the fused kernel, the others the engine-ops recurrence: both follow the formula."""
    layer = _layer_with_random_weights(activation=activation, return_sequences=True, go_backwards=True)
    x = np.random.default_rng(2).normal(size=(3, 6, 3)).astype(np.float32)
    want = _keras_simple_rnn_reference(x.astype(np.float64), *layer.get_weights(), return_sequences=True,
                                       go_backwards=True, activation=fn)
    np.testing.assert_allclose(layer(x).numpy(), want, rtol=1e-5, atol=1e-6)


def test_simple_rnn_weights_layout_and_initializers():
    keras.utils.set_random_seed(3)
    m = keras.Sequential([layers.SimpleRNN(8, input_shape=(5, 3))])
    kernel, recurrent, bias = m.layers[0].get_weights()
    assert [w.shape for w in m.layers[0].get_weights()] == [(3, 8), (8, 8), (8,)]
    assert m.count_params() == 3 * 8 + 8 * 8 + 8
    np.testing.assert_allclose(recurrent @ recurrent.T, np.eye(8), atol=1e-5)     # orthogonal
    limit = np.sqrt(6 / (3 + 8))                                                    # glorot_uniform
    assert np.abs(kernel).max() <= limit and np.abs(kernel).max() > limit / 2
    assert not bias.any()
    no_bias = keras.Sequential([layers.SimpleRNN(4, use_bias=False, input_shape=(5, 3))])
    assert [w.shape for w in no_bias.get_weights()] == [(3, 4), (4, 4)]


@pytest.mark.parametrize("activation", ["tanh", "sigmoid"])
def test_simple_rnn_gradients_reach_keras_layout_weights(activation):
    fn = np.tanh if activation == "tanh" else (lambda v: 1 / (1 + np.exp(-v)))
    layer = _layer_with_random_weights(seed=4, activation=activation, go_backwards=True)
    x = engine.tensor(np.random.default_rng(4).normal(size=(2, 6, 3)).astype(np.float32), requires_grad=True)
    out = layer(x)
    (out * out).sum().backward()
    weights = [w.astype(np.float64) for w in layer.get_weights()]

    def f(k, r, b, xx=x.numpy().astype(np.float64)):
        h = _keras_simple_rnn_reference(xx, k, r, b, go_backwards=True, activation=fn)
        return float((h * h).sum())

    eps = 1e-4
    for param, idx, which in ((layer.kernel, (1, 3), 0), (layer.recurrent_kernel, (2, 4), 1), (layer.bias, (3,), 2)):
        args = [w.copy() for w in weights]
        args[which][idx] += eps
        up = f(*args)
        args[which][idx] -= 2 * eps
        numeric = (up - f(*args)) / (2 * eps)
        assert float(param.grad.numpy()[idx]) == pytest.approx(numeric, rel=2e-3, abs=1e-5)
    xx = x.numpy().astype(np.float64)
    xx[1, 2, 0] += eps
    up = f(*weights, xx=xx)
    xx[1, 2, 0] -= 2 * eps
    assert float(x.grad.numpy()[1, 2, 0]) == pytest.approx((up - f(*weights, xx=xx)) / (2 * eps), rel=2e-3, abs=1e-5)


def test_simple_rnn_learns_and_saves(tmp_path):
    """Does the sequence's running sum end positive?  A SimpleRNN learns it; the model reloads."""
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 8, 1)).astype(np.float32)
    y = (x.sum(axis=(1, 2)) > 0).astype(np.int64)
    m = keras.Sequential([layers.SimpleRNN(16, input_shape=(8, 1)), layers.Dense(2, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    h = m.fit(x, y, epochs=12, batch_size=32, verbose=0, validation_split=0.2)
    assert h.history["val_accuracy"][-1] > 0.9
    m.save(tmp_path / "rnn.keras")
    loaded = keras.models.load_model(tmp_path / "rnn.keras")
    assert type(loaded.layers[0]) is layers.SimpleRNN and "recurrent_activation" not in loaded.layers[0].get_config()
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), m.predict(x, verbose=0))


def test_simple_rnn_bidirectional_and_unsupported_options():
    keras.utils.set_random_seed(6)
    bi = layers.Bidirectional(layers.SimpleRNN(3, return_sequences=True))
    m = keras.Sequential([keras.Input(shape=(4, 2)), bi])
    x = np.random.default_rng(6).normal(size=(2, 4, 2)).astype(np.float32)
    fwd, bwd = bi.forward_layer.get_weights(), bi.backward_layer.get_weights()
    want = np.concatenate([_keras_simple_rnn_reference(x.astype(np.float64), *fwd, return_sequences=True),
                           _keras_simple_rnn_reference(x.astype(np.float64), *bwd, return_sequences=True,
                                                       go_backwards=True)[:, ::-1]], axis=-1)
    np.testing.assert_allclose(m.predict(x, verbose=0), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r'"rnn_d" \(SimpleRNN\): dropout must be a fraction in \[0, 1\), got dropout=1.0'):
        layers.SimpleRNN(4, dropout=1.0, name="rnn_d")
