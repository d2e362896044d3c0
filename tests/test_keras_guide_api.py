"""What keras.io's guides and examples call beyond the layers: keras.ops, timeseries_dataset_from_array,
PyDataset, plot_model, custom losses (one value per sample, Keras' reduction), Keras 3 custom metrics,
MeanAbsolutePercentageError, and callbacks that take `logs` positionally / define on_batch_end."""
import warnings

import numpy as np
import pytest

from engine import keras
from engine.keras import layers, ops
from engine.tensor import Tensor


def _model(out=3, act="softmax"):
    inputs = keras.Input(shape=(4,))
    return keras.Model(inputs, layers.Dense(out, activation=act)(layers.Dense(8, activation="relu")(inputs)))


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 4)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.float32) + (x[:, 1] > 1)


def test_ops_follow_numpy():
    x = np.arange(12, dtype=np.float32).reshape(3, 4) - 5
    np.testing.assert_allclose(ops.mean(ops.square(x - 1), axis=-1).numpy(), ((x - 1) ** 2).mean(-1))
    np.testing.assert_allclose(ops.std(x, axis=0).numpy(), x.std(0), rtol=1e-6)
    np.testing.assert_allclose(ops.sigmoid(x).numpy(), 1 / (1 + np.exp(-x)), rtol=1e-6)
    np.testing.assert_allclose(ops.softmax(x).numpy(), np.exp(x) / np.exp(x).sum(-1, keepdims=True), rtol=1e-6)
    assert ops.expand_dims(x[0], 0).shape == (1, 4) and ops.squeeze(x[None], 0).shape == (3, 4)
    np.testing.assert_array_equal(ops.argmax(x, axis=1).numpy(), [3, 3, 3])
    assert ops.argmax(x, axis=1).numpy().dtype == np.int32
    np.testing.assert_array_equal(ops.one_hot(np.array([0, 2, 7]), 3).numpy(), [[1, 0, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(ops.equal(ops.cast(x, "int32"), -5).numpy(), x == -5)
    np.testing.assert_allclose(ops.clip(x, -1, 1).numpy(), np.clip(x, -1, 1))
    with pytest.raises(AttributeError, match="keras.ops.fft is not available"):
        ops.fft


def test_ops_like_constructors_cover_full_like():
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    f = ops.full_like(x, 7).numpy()
    assert f.shape == (2, 3) and f.dtype == np.int32 and (f == 7).all()
    g = ops.full_like(x, 0.5, dtype="float32").numpy()
    assert g.dtype == np.float32 and (g == 0.5).all()
    assert ops.zeros_like(x).numpy().dtype == np.int32 and (ops.ones_like(x).numpy() == 1).all()


def test_ops_keep_gradients():
    w = Tensor(np.array([0.5, -1.0, 2.0]), requires_grad=True)
    ops.sum(ops.square(ops.multiply(w, 3.0))).backward()
    g = w.grad.numpy() if isinstance(w.grad, Tensor) else np.asarray(w.grad)
    np.testing.assert_allclose(g, 18 * np.array([0.5, -1.0, 2.0]))


def test_timeseries_dataset_from_array_windows():
    data = np.arange(20).reshape(10, 2)
    targets = np.arange(100, 110)
    ds = keras.utils.timeseries_dataset_from_array(data, targets, sequence_length=3, sequence_stride=2,
                                                   sampling_rate=2, batch_size=2, start_index=1)
    batches = list(ds.as_numpy_iterator())
    # 10 - 1 - (3 - 1) * 2 = 5 start positions fit, every 2nd: 0, 2, 4 -> steps 1 + p + {0, 2, 4}
    assert len(ds) == len(batches) == 2
    x = np.concatenate([b[0] for b in batches])
    y = np.concatenate([b[1] for b in batches])
    np.testing.assert_array_equal(x, data[[[1, 3, 5], [3, 5, 7], [5, 7, 9]]])
    np.testing.assert_array_equal(y, [101, 103, 105])
    assert keras.preprocessing.timeseries_dataset_from_array is keras.utils.timeseries_dataset_from_array
    single = list(keras.utils.timeseries_dataset_from_array(data, None, 4, batch_size=None))
    assert len(single) == 7 and single[0].shape == (4, 2)
    shuffled = keras.utils.timeseries_dataset_from_array(data, targets, 2, shuffle=True, seed=3, batch_size=4)
    ys = np.concatenate([b[1].numpy() for b in shuffled])
    assert sorted(ys) == list(range(100, 109)) and list(ys) != sorted(ys)
    np.testing.assert_array_equal(ys, np.concatenate([b[1].numpy() for b in shuffled]))     # fixed order
    with pytest.raises(ValueError, match="sampling_rate"):
        keras.utils.timeseries_dataset_from_array(data, None, 3, sampling_rate=0)


def test_timeseries_dataset_trains_an_lstm():
    t = np.arange(300, dtype=np.float32)
    series = np.stack([np.sin(t / 10), np.cos(t / 7)], 1)
    ds = keras.utils.timeseries_dataset_from_array(series[:-5], series[5:, :1], sequence_length=10, batch_size=32)
    inputs = keras.Input(shape=(10, 2))
    model = keras.Model(inputs, layers.Dense(1)(layers.LSTM(8)(inputs)))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss="mse")
    hist = model.fit(ds, epochs=3, validation_data=ds, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0]
    for x, _ in ds.take(1):
        assert model.predict(x, verbose=0).shape == (32, 1)


class _Batches(keras.utils.PyDataset):
    def __init__(self, x, y, batch_size, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.batch_size = x, y, batch_size
        self.seen, self.epochs = [], 0

    def __len__(self):
        return int(np.ceil(len(self.x) / self.batch_size))

    def __getitem__(self, idx):
        self.seen.append(idx)
        sl = slice(idx * self.batch_size, (idx + 1) * self.batch_size)
        return self.x[sl], self.y[sl]

    def on_epoch_end(self):
        self.epochs += 1


def test_pydataset_shuffles_batches_and_calls_on_epoch_end():
    x, y = _data()
    ds = _Batches(x, y, 8, workers=2, use_multiprocessing=False)
    model = _model()
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"])
    keras.utils.set_random_seed(0)
    model.fit(ds, batch_size=64, epochs=2, validation_data=_Batches(x, y, 8), verbose=0)
    assert ds.epochs == 2 and sorted(ds.seen) == sorted(list(range(5)) * 2) and ds.seen[:5] != [0, 1, 2, 3, 4]
    ds.seen.clear()
    model.evaluate(ds, verbose=0)
    assert ds.seen == [0, 1, 2, 3, 4]
    assert keras.utils.Sequence is keras.utils.PyDataset


def test_plot_model_warns_and_prints_the_summary(capsys):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        keras.utils.plot_model(_model(), show_shapes=True)
    assert "draws no diagrams" in str(w[0].message)
    assert "Total params" in capsys.readouterr().out


def test_custom_loss_function_is_reduced_and_weighted_like_keras():
    x, y = _data()
    y1 = ops.one_hot(y, num_classes=3).numpy()
    model = _model()

    def per_sample(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred), axis=-1)
    model.compile(optimizer="adam", loss=per_sample)
    p = model.predict(x, verbose=0)
    w = np.linspace(0.5, 2.0, len(x))
    expected = (((y1 - p) ** 2).mean(-1) * w).sum() / len(x)     # Keras: sum(w * loss) / batch size
    np.testing.assert_allclose(model.evaluate(x, y1, sample_weight=w, batch_size=len(x), verbose=0), expected, rtol=1e-5)
    model.fit(x, y1, sample_weight=w, epochs=1, verbose=0)

    class CustomMSE(keras.losses.Loss):
        def __init__(self, regularization_factor=0.1, name="custom_mse"):
            super().__init__(name=name)
            self.regularization_factor = regularization_factor

        def call(self, y_true, y_pred):
            mse = ops.mean(ops.square(y_true - y_pred), axis=-1)
            reg = ops.mean(ops.square(0.5 - y_pred), axis=-1)
            return mse + reg * self.regularization_factor
    model.compile(optimizer="adam", loss=CustomMSE())
    p = model.predict(x, verbose=0)
    ref = (((y1 - p) ** 2).mean(-1) + 0.1 * ((0.5 - p) ** 2).mean(-1)).mean()
    np.testing.assert_allclose(model.evaluate(x, y1, batch_size=len(x), verbose=0), ref, rtol=1e-5)

    def scalar_loss(y_true, y_pred):
        return ops.mean(ops.square(y_true - y_pred))
    model.compile(optimizer="adam", loss=scalar_loss)
    model.fit(x, y1, epochs=1, verbose=0)                          # a mean already: used as is
    with pytest.raises(ValueError, match="one value per sample"):
        model.fit(x, y1, sample_weight=w, epochs=1, verbose=0)


class CategoricalTruePositives(keras.metrics.Metric):
    """keras.io's example metric, Keras 3 spelling."""

    def __init__(self, name="categorical_true_positives", **kwargs):
        super().__init__(name=name, **kwargs)
        self.true_positives = self.add_variable(shape=(), name="ctp", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.argmax(y_pred, axis=1)
        values = ops.cast(ops.cast(y_true, "int32") == y_pred, "float32")
        if sample_weight is not None:
            values = ops.multiply(values, ops.cast(sample_weight, "float32"))
        self.true_positives.assign_add(ops.sum(values))

    def result(self):
        return self.true_positives

    def reset_state(self):
        self.true_positives.assign(0.0)


def test_keras3_custom_metric_sees_probabilities_and_resets_per_epoch():
    x, y = _data()
    model = _model()
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy",
                  metrics=[CategoricalTruePositives()])
    hist = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert len(hist.history["categorical_true_positives"]) == 2
    p = model.predict(x, verbose=0)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["categorical_true_positives"] == float((p.argmax(1) == y).sum())     # counts over all batches
    reg = _model(1, None)
    reg.compile(optimizer="adam", loss="mse", metrics=[keras.metrics.MeanAbsolutePercentageError(), "mape"])
    t = (x[:, :1] * 2 + 0.5).astype(np.float32)
    t[0] = 0.0                                                   # |y_true| below epsilon: divided by 1e-7
    q = reg.predict(x, verbose=0)
    mape = (100 * np.abs(t - q) / np.maximum(np.abs(t), 1e-7)).mean()
    logs_r = reg.evaluate(x, t, verbose=0, return_dict=True)
    np.testing.assert_allclose([logs_r["mean_absolute_percentage_error"], logs_r["mape"]], [mape, mape], rtol=1e-5)

    class SeesProbabilities(keras.metrics.Metric):
        def __init__(self):
            super().__init__(name="row_sum")
            self.total = self.add_weight(name="s", initializer="zeros")
            self.n = self.add_weight(name="n", initializer="zeros")

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.total.assign_add(ops.sum(y_pred))
            self.n.assign_add(ops.shape(y_pred)[0])

        def result(self):
            return float(self.total) / float(self.n)
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=[SeesProbabilities()])
    assert abs(model.evaluate(x, y, verbose=0, return_dict=True)["row_sum"] - 1.0) < 1e-5     # softmax outputs


def test_metric_variables_take_part_in_arithmetic_as_keras_variables_do():
    """`return self.total / self.count` in result(), as Keras 3 custom metrics commonly write it."""
    x, y = _data()
    model = _model()

    class MeanRowSum(keras.metrics.Metric):
        def __init__(self):
            super().__init__(name="mean_row_sum")
            self.total = self.add_variable(shape=(), initializer="zeros", name="total")
            self.count = self.add_variable(shape=(), initializer="zeros", name="count")

        def update_state(self, y_true, y_pred, sample_weight=None):
            self.total.assign_add(ops.sum(y_pred))
            self.count.assign_add(ops.shape(y_pred)[0])

        def result(self):
            return self.total / self.count

    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=[MeanRowSum()])
    assert abs(model.evaluate(x, y, verbose=0, return_dict=True)["mean_row_sum"] - 1.0) < 1e-5
    v = keras.metrics.Metric(name="m").add_variable(shape=(), initializer="ones", name="v")
    v.assign(4.0)
    assert float(v + 1) == 5.0 and float(1 - v) == -3.0 and float(v * v) == 16.0
    assert float(2 / v) == 0.5 and float(v ** 2) == 16.0 and float(-v) == -4.0 and float(abs(-v)) == 4.0


def test_callbacks_get_logs_positionally_and_on_batch_end():
    x, y = _data()
    calls = []

    class LossHistory(keras.callbacks.Callback):
        def on_train_begin(self, logs):
            calls.append(("train_begin", logs))
            self.per_batch_losses = []

        def on_epoch_begin(self, epoch, logs):
            calls.append(("epoch_begin", logs))

        def on_batch_end(self, batch, logs):
            self.per_batch_losses.append(logs.get("loss"))

        def on_train_end(self, logs):
            calls.append(("train_end", logs))
    model = _model()
    model.compile(optimizer="rmsprop", loss="sparse_categorical_crossentropy")
    cb = LossHistory()
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[cb], verbose=0)
    assert len(cb.per_batch_losses) == 10 and all(isinstance(v, float) for v in cb.per_batch_losses)
    assert [c[0] for c in calls] == ["train_begin", "epoch_begin", "epoch_begin", "train_end"]
    assert all(isinstance(c[1], dict) for c in calls)


