"""fit(steps_per_epoch=), validation_steps=, evaluate(steps=), predict(steps=) under Keras 3's
EpochIterator rules: the iterator carries over between epochs, data running out ends the epoch with
Keras' warning, array batch size ceil(n / steps) when none is given, generators (infinite ones too)."""
import warnings

import numpy as np
import pytest

from engine import keras
from engine.keras import layers
from engine.keras.utils import PyDataset


class Record(layers.Layer):
    """Identity that records the batch sizes it sees in training."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sizes = []

    def call(self, inputs, training=False):
        if training:
            self.sizes.append(int(inputs.shape[0]))
        return inputs


class Steps(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.per_epoch = getattr(self, "per_epoch", []) + [0]

    def on_train_batch_end(self, batch, logs=None):
        self.per_epoch[-1] += 1


def _model():
    rec = Record()
    model = keras.Sequential([keras.Input((3,)), rec, layers.Dense(1)])
    model.compile("sgd", "mse")
    return model, rec


def _data(n=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 3)).astype(np.float32), rng.random((n, 1)).astype(np.float32)


def _fit(model, *args, **kwargs):
    cb = Steps()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        history = model.fit(*args, verbose=0, callbacks=[cb], **kwargs)
    return history, cb.per_epoch, [str(m.message) for m in w if "ran out of data" in str(m.message)]


def test_arrays_carry_the_iterator_over_epochs_and_warn_when_data_runs_out():
    model, rec = _model()
    x, y = _data(10)
    history, per_epoch, warned = _fit(model, x, y, batch_size=2, steps_per_epoch=3, epochs=4, shuffle=False)
    # 5 batches: epoch 1 takes 0-2, epoch 2 takes 3-4 and runs out (warning), epoch 3 starts a new pass
    assert per_epoch == [3, 2, 3, 2] and len(warned) == 2
    assert len(history.history["loss"]) == 4
    # more steps than batches: each epoch is one pass and warns
    _, per_epoch, warned = _fit(model, x, y, batch_size=4, steps_per_epoch=5, epochs=2)
    assert per_epoch == [3, 3] and len(warned) == 2


def test_arrays_batch_size_defaults_to_ceil_n_over_steps():
    model, rec = _model()
    x, y = _data(10)
    _, per_epoch, warned = _fit(model, x, y, steps_per_epoch=3, epochs=1)
    assert per_epoch == [3] and rec.sizes == [4, 4, 2] and not warned


def test_infinite_generator_needs_steps_per_epoch():
    model, _ = _model()
    x, y = _data(4)
    drawn = []

    def forever():
        while True:
            drawn.append(1)
            yield x, y
    history, per_epoch, warned = _fit(model, forever(), steps_per_epoch=5, epochs=2)
    assert per_epoch == [5, 5] and len(drawn) == 10 and not warned
    assert len(history.history["loss"]) == 2


def test_finite_generator_running_out_warns_and_later_epochs_run_no_step():
    model, _ = _model()
    x, y = _data(4)
    gen = ((x, y) for _ in range(3))
    history, per_epoch, warned = _fit(model, gen, steps_per_epoch=2, epochs=3)
    # Keras: the epoch ends where the data does; the spent generator gives the next epoch nothing
    assert per_epoch == [2, 1, 0] and len(warned) == 2
    assert len(history.history["loss"]) == 2          # an epoch without a step logs nothing


def test_generator_builds_an_unbuilt_model_without_losing_its_first_batch():
    model = keras.Sequential([layers.Dense(1)])
    model.compile("sgd", "mse")
    x, y = _data(4)
    _, per_epoch, _ = _fit(model, ((x, y) for _ in range(3)), epochs=1)
    assert per_epoch == [3] and model.built


def test_pydataset_with_more_steps_than_batches():
    x, y = _data(6)

    class Data(PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return x[2 * i:2 * i + 2], y[2 * i:2 * i + 2]
    model, _ = _model()
    _, per_epoch, warned = _fit(model, Data(), steps_per_epoch=4, epochs=2)
    assert per_epoch == [3, 3] and len(warned) == 2
    _, per_epoch, warned = _fit(model, Data(), steps_per_epoch=2, epochs=3)
    assert per_epoch == [2, 1, 2] and len(warned) == 1


def test_evaluate_and_predict_with_steps():
    model, _ = _model()
    x, y = _data(10)
    w, b = model.layers[-1].get_weights()
    pred = x @ w + b
    # arrays: the first `steps` batches (sizes 4 and 4 of batch_size 4), the mean over their samples
    got = model.evaluate(x, y, batch_size=4, steps=2, verbose=0)
    np.testing.assert_allclose(got, np.mean((pred[:8] - y[:8]) ** 2), rtol=1e-5)
    # arrays without batch_size: ceil(10 / 5) = 2 samples a batch
    assert model.predict(x, steps=5, verbose=0).shape == (10, 1)
    assert model.predict(x, batch_size=3, steps=2, verbose=0).shape == (6, 1)

    def forever():
        i = 0
        while True:
            yield x[i % 10:i % 10 + 1], y[i % 10:i % 10 + 1]
            i += 1
    np.testing.assert_allclose(model.evaluate(forever(), steps=10, verbose=0), np.mean((pred - y) ** 2), rtol=1e-5)
    np.testing.assert_allclose(model.predict((xb for xb, _ in forever()), steps=7, verbose=0), pred[:7], rtol=1e-5)


def test_validation_steps_start_from_the_beginning_each_epoch():
    model, _ = _model()
    x, y = _data(10)
    vx, vy = _data(6, seed=1)
    history, _, _ = _fit(model, x, y, batch_size=5, epochs=2, validation_data=(vx, vy), validation_steps=2,
                         validation_batch_size=2)
    assert len(history.history["val_loss"]) == 2
    w, b = model.layers[-1].get_weights()
    np.testing.assert_allclose(history.history["val_loss"][-1], np.mean((vx[:4] @ w + b - vy[:4]) ** 2), rtol=1e-5)
    pulled = []

    def val_gen():
        while True:
            pulled.append(1)
            yield vx[:2], vy[:2]
    _fit(model, x, y, batch_size=5, epochs=3, validation_data=val_gen(), validation_steps=2)
    assert len(pulled) == 6


def test_steps_must_be_positive_integers():
    model, _ = _model()
    x, y = _data(4)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="positive integer"):
            model.fit(x, y, steps_per_epoch=bad, verbose=0)
