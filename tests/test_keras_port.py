"""Keras programs ported by changing only the imports: semantics that must match Keras
(what 'accuracy' means, model.layers of a functional model, EarlyStopping's restore), the
Keras 3 custom-layer API, and the commonly used layers/utilities added for text and regression
programs (pad_sequences, Conv1D, 1-D pooling, Bidirectional, Lambda, Normalization, ...)."""
import numpy as np
import pytest

from engine import keras
from engine.keras import layers, metrics


@pytest.fixture(autouse=True)
def _seed():
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)


def _fit_metric(model, x, y, loss):
    model.compile(optimizer="adam", loss=loss, metrics=["accuracy"])
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return model._metrics[0]


# ---------------------------------------------------------------- 'accuracy' as Keras picks it
def test_accuracy_is_chosen_from_shapes_like_keras():
    rng = np.random.default_rng(0)
    x = rng.random((32, 4)).astype("float32")
    # multi-label sigmoid + binary_crossentropy: Keras reports categorical_accuracy (last dim > 1)
    m = keras.Sequential([layers.Dense(3, activation="sigmoid", input_shape=(4,))])
    acc = _fit_metric(m, x, (rng.random((32, 3)) > 0.5).astype("float32"), "binary_crossentropy")
    assert isinstance(acc, metrics.CategoricalAccuracy)
    # softmax + mse on one-hot targets: categorical; on integer labels it would be sparse
    m = keras.Sequential([layers.Dense(3, activation="softmax", input_shape=(4,))])
    acc = _fit_metric(m, x, keras.utils.to_categorical(rng.integers(0, 3, 32), 3), "mse")
    assert isinstance(acc, metrics.CategoricalAccuracy)
    # one output unit: binary accuracy whatever the loss
    m = keras.Sequential([layers.Dense(1, input_shape=(4,))])
    acc = _fit_metric(m, x, (rng.random(32) > 0.5).astype("float32"), "mse")
    assert isinstance(acc, metrics.BinaryAccuracy)
    # integer labels of shape (n, 1): sparse
    m = keras.Sequential([layers.Dense(3, activation="softmax", input_shape=(4,))])
    acc = _fit_metric(m, x, rng.integers(0, 3, (32, 1)), "sparse_categorical_crossentropy")
    assert isinstance(acc, metrics.SparseCategoricalAccuracy)
    assert m.history.history.keys() == {"loss", "accuracy"}


def test_metrics_get_falls_back_to_the_loss_without_targets():
    assert isinstance(metrics.get("accuracy", "sparse_categorical_crossentropy", (None, 10)),
                      metrics.SparseCategoricalAccuracy)
    assert isinstance(metrics.get("acc", "categorical_crossentropy", (None, 10), (5, 10)),
                      metrics.CategoricalAccuracy)


# ---------------------------------------------------------------- functional model.layers
def test_functional_model_layers_start_with_the_input_layer():
    inp = keras.Input(shape=(6, 6, 1), name="img")
    h = layers.Conv2D(4, 3, padding="same", activation="relu")(inp)
    out = layers.Dense(2, activation="softmax")(layers.Flatten()(h))
    model = keras.Model(inp, out)
    assert isinstance(model.layers[0], keras.InputLayer)
    assert isinstance(model.layers[1], layers.Conv2D)       # Keras: layers[1] is the first real layer
    assert model.layers[1].get_weights()[0].shape == (3, 3, 1, 4)
    assert model.get_layer("img") is model.layers[0]
    lines = []
    model.summary(print_fn=lines.append)
    assert any("img (InputLayer)" in ln and "(None, 6, 6, 1)" in ln for ln in lines)
    assert model.count_params() == 4 * 9 + 4 + 144 * 2 + 2


def test_functional_model_with_input_layer_still_saves(tmp_path):
    inp = keras.Input(shape=(5,))
    model = keras.Model(inp, layers.Dense(2)(inp))
    model.compile("adam", "mse")
    x = np.random.default_rng(0).random((8, 5)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))
    assert [type(l).__name__ for l in again.layers] == ["InputLayer", "Dense"]


# ---------------------------------------------------------------- EarlyStopping (Keras 3)
class _ScriptedValLoss(keras.callbacks.Callback):
    """Replaces val_loss by a scripted sequence and records the weights after every epoch."""

    def __init__(self, values):
        super().__init__()
        self.values, self.weights = values, []

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]
        self.weights.append(self.model.get_weights())


def _small_model():
    model = keras.Sequential([layers.Dense(3, input_shape=(4,)), layers.Dense(1)])
    model.compile("sgd", "mse")
    return model


def test_early_stopping_restores_best_weights_at_the_end_even_without_stopping():
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 4)), rng.random((32, 1))
    model = _small_model()
    script = _ScriptedValLoss([1.0, 0.5, 0.7, 0.8])
    es = keras.callbacks.EarlyStopping(monitor="val_loss", patience=5, restore_best_weights=True)
    model.fit(x, y, epochs=4, callbacks=[script, es], verbose=0)
    assert es.stopped_epoch == 0 and es.best_epoch == 1
    for a, b in zip(model.get_weights(), script.weights[1]):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_baseline_and_start_from_epoch():
    rng = np.random.default_rng(0)
    x, y = rng.random((32, 4)), rng.random((32, 1))
    # Keras 3.15.1: an improving epoch never stops training, even if it does not beat the baseline
    model = _small_model()
    es = keras.callbacks.EarlyStopping(patience=2, baseline=0.1)
    h = model.fit(x, y, epochs=6, callbacks=[_ScriptedValLoss([1.0, 0.9, 0.8, 0.7, 0.6, 0.5]), es], verbose=0)
    assert len(h.history["loss"]) == 6
    # ... but without improvement the epochs that did not beat the baseline count towards patience
    model = _small_model()
    es = keras.callbacks.EarlyStopping(patience=2, baseline=0.1)
    h = model.fit(x, y, epochs=6, callbacks=[_ScriptedValLoss([1.0] * 6), es], verbose=0)
    assert len(h.history["loss"]) == 2
    # the first epochs are not counted
    model = _small_model()
    es = keras.callbacks.EarlyStopping(patience=1, start_from_epoch=3)
    h = model.fit(x, y, epochs=5, callbacks=[_ScriptedValLoss([1.0, 2.0, 3.0, 4.0, 5.0]), es], verbose=0)
    assert len(h.history["loss"]) == 5


# ---------------------------------------------------------------- custom layers / models
class _Linear(layers.Layer):
    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):                     # Keras 3 style: no names, shape= keyword
        self.w = self.add_weight(shape=(input_shape[-1], self.units), initializer="random_normal",
                                 trainable=True)
        self.b = self.add_weight(shape=(self.units,), initializer="zeros", trainable=True)
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False)

    def call(self, inputs):                           # no `training` argument
        return inputs @ self.w + self.b


def test_custom_layer_with_keras3_add_weight_and_no_training_argument():
    inp = keras.Input(shape=(6,))
    h = _Linear(4)(inp)
    assert h.shape == (None, 4)                      # inferred by calling call(), as Keras traces it
    out = layers.Dense(1)(h)
    model = keras.Model(inp, out)
    lin = model.layers[1]
    assert lin._weight_names == ["w", "b", "seen"]
    assert [w.shape for w in lin.trainable_weights] == [(6, 4), (4,)]
    assert len(lin.non_trainable_weights) == 1
    assert sorted(n for n, _ in lin.named_parameters()) == ["b", "w"]
    model.compile("adam", "mse")
    rng = np.random.default_rng(0)
    x, y = rng.random((64, 6)), rng.random((64, 1))
    before = lin.get_weights()[0].copy()
    model.fit(x, y, epochs=1, verbose=0)
    assert not np.allclose(before, lin.get_weights()[0])
    # Keras 2 spelling still works
    lay = layers.Layer()
    lay.add_weight("k", (2, 3))
    assert lay.k.shape == (2, 3)
    # positional Keras 3 shape
    lay.add_weight((3,), "ones")
    np.testing.assert_array_equal(lay.variable.numpy(), np.ones(3))


def test_subclassed_model_whose_call_has_no_training_argument():
    class Net(keras.Model):
        def __init__(self):
            super().__init__()
            self.d = layers.Dense(1)

        def call(self, inputs):
            return self.d(inputs)

    net = Net()
    net.compile("sgd", "mse")
    rng = np.random.default_rng(0)
    h = net.fit(rng.random((16, 3)), rng.random((16, 1)), epochs=1, verbose=0)
    assert len(h.history["loss"]) == 1
    assert net.predict(rng.random((4, 3)), verbose=0).shape == (4, 1)
    assert len(net.trainable_variables) == 2


def test_apply_gradients_custom_training_loop():
    rng = np.random.default_rng(0)
    x = rng.random((64, 3)).astype("float32")
    y = (x @ np.array([[1.0], [-2.0], [0.5]], dtype="float32"))
    model = keras.Sequential([layers.Dense(1, input_shape=(3,))])
    opt = keras.optimizers.SGD(learning_rate=0.1)
    loss_fn = keras.losses.MeanSquaredError()
    losses = []
    for _ in range(30):
        loss = loss_fn(y, model(x, training=True))
        loss.backward()
        opt.apply_gradients(zip([w.grad for w in model.trainable_weights], model.trainable_weights))
        assert all(w.grad is None for w in model.trainable_weights)      # cleared like TF's tapes
        losses.append(float(loss.item()))
    assert losses[-1] < 0.3 * losses[0]
    assert opt.iterations == 30


# ---------------------------------------------------------------- text: pad_sequences, 1-D layers
def test_pad_sequences_keras_defaults():
    seqs = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]]
    out = keras.utils.pad_sequences(seqs, maxlen=4)
    np.testing.assert_array_equal(out, [[0, 1, 2, 3], [0, 0, 4, 5], [7, 8, 9, 10]])   # 'pre' both ways
    assert out.dtype == np.int32
    out = keras.utils.pad_sequences(seqs, maxlen=4, padding="post", truncating="post", value=-1)
    np.testing.assert_array_equal(out, [[1, 2, 3, -1], [4, 5, -1, -1], [6, 7, 8, 9]])
    assert keras.utils.pad_sequences(seqs).shape == (3, 5)
    with pytest.raises(ValueError, match="padding"):
        keras.utils.pad_sequences(seqs, padding="left")


def _conv1d_ref(x, k, b, stride, pad_left, pad_right, dilation=1):
    x = np.pad(x, ((0, 0), (pad_left, pad_right), (0, 0)))
    n, t, _ = x.shape
    ks = k.shape[0]
    span = (ks - 1) * dilation + 1
    steps = (t - span) // stride + 1
    out = np.zeros((n, steps, k.shape[2]))
    for s in range(steps):
        win = x[:, s * stride: s * stride + span: dilation, :]          # (n, ks, cin)
        out[:, s] = np.einsum("nkc,kco->no", win, k) + b
    return out


@pytest.mark.parametrize("padding,stride,dilation", [("valid", 1, 1), ("same", 2, 1), ("causal", 1, 2),
                                                     ("same", 1, 1)])
def test_conv1d_matches_keras_formula(padding, stride, dilation):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 9, 3)).astype("float32")
    layer = layers.Conv1D(4, 3, strides=stride, padding=padding, dilation_rate=dilation)
    y = layer(x).numpy()
    k, b = layer.get_weights()
    assert k.shape == (3, 3, 4)
    span = (3 - 1) * dilation + 1
    if padding == "valid":
        pads = (0, 0)
    elif padding == "causal":
        pads = (span - 1, 0)
    else:
        total = max((-(-9 // stride) - 1) * stride + span - 9, 0)
        pads = (total // 2, total - total // 2)
    np.testing.assert_allclose(y, _conv1d_ref(x, k, b, stride, *pads, dilation=dilation), rtol=1e-5, atol=1e-5)
    assert y.shape[1:] == layer.compute_output_shape((None, 9, 3))[1:]


def test_pooling_1d_layers():
    x = np.arange(2 * 5 * 3, dtype="float32").reshape(2, 5, 3)
    np.testing.assert_array_equal(layers.MaxPooling1D(2)(x).numpy(), np.maximum(x[:, 0:4:2], x[:, 1:5:2]))
    same = layers.AveragePooling1D(2, padding="same")(x).numpy()
    assert same.shape == (2, 3, 3)
    np.testing.assert_allclose(same[:, 2], x[:, 4])            # the lone last step averages over itself
    np.testing.assert_array_equal(layers.GlobalMaxPooling1D()(x).numpy(), x.max(axis=1))
    np.testing.assert_allclose(layers.GlobalAveragePooling1D()(x).numpy(), x.mean(axis=1))
    assert layers.GlobalAveragePooling1D(keepdims=True)(x).shape == (2, 1, 3)


@pytest.mark.parametrize("rnn", ["LSTM", "GRU"])
def test_bidirectional_is_forward_plus_reversed_backward(rnn):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 6, 4)).astype("float32")
    bi = layers.Bidirectional(getattr(layers, rnn)(5, return_sequences=True))
    y = bi(x).numpy()
    assert y.shape == (3, 6, 10)
    fw_w = bi.forward_layer.get_weights()
    bw_w = bi.backward_layer.get_weights()
    fwd = getattr(layers, rnn)(5, return_sequences=True)
    fwd(x)
    fwd.set_weights(fw_w)
    bwd = getattr(layers, rnn)(5, return_sequences=True)
    bwd(x)
    bwd.set_weights(bw_w)
    np.testing.assert_allclose(y[..., :5], fwd(x).numpy(), rtol=1e-5, atol=1e-6)
    # the backward half at step t has read x[T-1] .. x[t]
    np.testing.assert_allclose(y[..., 5:], bwd(x[:, ::-1].copy()).numpy()[:, ::-1], rtol=1e-5, atol=1e-6)
    assert len(bi.get_weights()) == 2 * len(fw_w)
    last = layers.Bidirectional(getattr(layers, rnn)(5), merge_mode="sum")
    assert last(x).shape == (3, 5)


def test_bidirectional_text_classifier_trains_saves_and_reloads(tmp_path):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(1, 50, size=int(rng.integers(2, 12))).tolist() for _ in range(64)]
    y = np.array([int(7 in s) for s in seqs])
    x = keras.utils.pad_sequences(seqs, maxlen=12)
    model = keras.Sequential([keras.Input(shape=(12,)), layers.Embedding(50, 8),
                              layers.Bidirectional(layers.LSTM(4)), layers.Dense(1, activation="sigmoid")])
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    assert model.count_params() == 50 * 8 + 2 * 4 * 4 * (8 + 4 + 1) + 9
    h = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert isinstance(model._metrics[0], metrics.BinaryAccuracy)
    assert set(h.history) == {"loss", "accuracy"}
    model.save(tmp_path / "bi.keras")
    again = keras.models.load_model(tmp_path / "bi.keras")
    np.testing.assert_array_equal(again.predict(x, verbose=0), model.predict(x, verbose=0))


# ---------------------------------------------------------------- Lambda, merge functions, misc layers
def test_lambda_and_functional_merge_helpers(tmp_path):
    a = keras.Input(shape=(3,))
    b = keras.Input(shape=(3,))
    s = layers.add([a, b])
    c = layers.concatenate([s, layers.Lambda(lambda t: t * 2.0)(b)])
    assert c.shape == (None, 6)
    model = keras.Model([a, b], c)
    xa, xb = np.ones((2, 3), "float32"), np.full((2, 3), 3.0, "float32")
    np.testing.assert_allclose(model.predict([xa, xb], verbose=0), np.concatenate([xa + xb, 2 * xb], axis=1))
    assert layers.Lambda(lambda t: t.mean(axis=1))(keras.Input(shape=(4, 5))).shape == (None, 5)
    with pytest.raises(TypeError, match="save_weights"):
        model.save(tmp_path / "lam.keras")


def test_normalization_adapt_like_keras():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(200, 3)) * [1.0, 10.0, 100.0] + [0.0, 5.0, -50.0]
    norm = layers.Normalization(axis=-1)
    norm.adapt(data)
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(norm.variance.numpy(), data.var(axis=0), rtol=1e-5)
    out = norm(data).numpy()
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), 1, atol=1e-4)
    assert norm.trainable_weights == [] and len(norm.non_trainable_weights) == 3     # Keras: mean, variance, count
    assert float(norm.count.numpy()) == 200
    model = keras.Sequential([norm, layers.Dense(1)])
    model.compile("adam", "mse", metrics=["mae"])
    h = model.fit(data, data[:, :1], epochs=1, verbose=0)
    assert set(h.history) == {"loss", "mae"}
    np.testing.assert_allclose(norm.mean.numpy(), data.mean(axis=0), rtol=1e-5)   # not trained
    given = layers.Normalization(mean=[1.0, 2.0], variance=[4.0, 9.0])
    np.testing.assert_allclose(given(np.array([[3.0, 8.0]])).numpy(), [[1.0, 2.0]])


def test_rescaling_and_leaky_relu():
    x = np.array([[-2.0, 0.0, 255.0]], "float32")
    np.testing.assert_allclose(layers.Rescaling(1 / 255.0)(x).numpy(), x / 255.0, rtol=1e-6)
    np.testing.assert_allclose(layers.Rescaling(2.0, offset=-1.0)(x).numpy(), 2 * x - 1)
    np.testing.assert_allclose(layers.LeakyReLU()(x).numpy(), [[-0.6, 0.0, 255.0]], rtol=1e-6)   # Keras: 0.3
    np.testing.assert_allclose(layers.LeakyReLU(negative_slope=0.1)(x).numpy(), [[-0.2, 0.0, 255.0]], rtol=1e-6)


# ---------------------------------------------------------------- refused with a clear error
def test_missing_keras_layers_name_what_is_there():
    with pytest.raises(AttributeError, match=r"has no attribute 'Conv3D' \(dptrain's Keras facade implements: .*Dense"):
        layers.Conv3D


def test_constraints_and_regularizers_are_accepted_by_name_and_their_defaults_too():
    from engine.keras import constraints, layers, regularizers
    assert isinstance(layers.Conv2D(3, 3, kernel_constraint="max_norm").kernel_constraint, constraints.MaxNorm)
    assert isinstance(layers.LSTM(3, recurrent_regularizer="l2").recurrent_regularizer, regularizers.L2)
    layers.Dense(3, kernel_constraint=None, bias_constraint=None, activity_regularizer=None)   # Keras' defaults
