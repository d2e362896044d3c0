"""Callbacks, metrics and loss functions where an audit against Keras 3.15.1 (torch backend) found the
facade different; every expected value here is what Keras 3.15.1 gave for the same calls."""
import csv
import os
import warnings

import numpy as np
import pytest

from engine import keras


class _ScriptedValLoss(keras.callbacks.Callback):
    """Puts a scripted val_loss into the epoch logs (listed before the callbacks under test)."""

    def __init__(self, values):
        super().__init__()
        self.values = list(values)

    def on_epoch_end(self, epoch, logs=None):
        logs["val_loss"] = self.values[epoch]


def _model():
    m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    m.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    return m


def _data():
    rng = np.random.default_rng(0)
    return rng.random((16, 3)).astype(np.float32), rng.random((16, 1)).astype(np.float32)


def test_a_missing_monitored_key_warns_and_training_goes_on(tmp_path):
    x, y = _data()
    cbs = [keras.callbacks.EarlyStopping(patience=0), keras.callbacks.ReduceLROnPlateau(patience=0),
           keras.callbacks.ModelCheckpoint(str(tmp_path / "ck-{epoch}.keras"), save_best_only=True)]
    with pytest.warns(UserWarning, match="val_loss"):
        h = _model().fit(x, y, epochs=3, verbose=0, callbacks=cbs)
    assert len(h.history["loss"]) == 3
    assert sorted(os.listdir(tmp_path)) == ["ck-1.keras", "ck-2.keras", "ck-3.keras"]   # Keras saves then
    # validation every 2nd epoch: the epochs without val_loss are skipped, not an error
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        h = _model().fit(x, y, epochs=4, verbose=0, validation_data=(x, y), validation_freq=2,
                         callbacks=[keras.callbacks.EarlyStopping(patience=5)])
    assert len(h.history["loss"]) == 4


def test_model_checkpoint_keeps_its_best_across_fits_and_saves_every_n_batches(tmp_path):
    x, y = _data()
    m = _model()
    cb = keras.callbacks.ModelCheckpoint(str(tmp_path / "ck-{epoch}.keras"), save_best_only=True)
    m.fit(x, y, epochs=3, verbose=0, callbacks=[_ScriptedValLoss([1.0, 0.7, 0.9]), cb])
    for f in os.listdir(tmp_path):
        os.remove(tmp_path / f)
    m.fit(x, y, epochs=3, verbose=0, callbacks=[_ScriptedValLoss([0.8, 0.6, 0.4]), cb])
    assert sorted(os.listdir(tmp_path)) == ["ck-2.keras", "ck-3.keras"]      # 0.8 did not beat 0.7
    every = tmp_path / "every"
    m.fit(x, y, epochs=2, batch_size=4, verbose=0,                          # 4 batches per epoch
          callbacks=[keras.callbacks.ModelCheckpoint(str(every / "e{epoch}-b{batch}.weights.json"),
                                                     save_weights_only=True, save_freq=3)])
    assert sorted(os.listdir(every)) == ["e1-b3.weights.json", "e2-b2.weights.json"]
    with pytest.raises(ValueError, match="Unrecognized save_freq"):
        keras.callbacks.ModelCheckpoint("x.keras", save_freq="batch")


def test_csv_logger_adds_na_validation_columns_and_terminate_on_nan_can_raise(tmp_path):
    x, y = _data()
    _model().fit(x, y, epochs=2, verbose=0, callbacks=[keras.callbacks.CSVLogger(str(tmp_path / "log.csv"))])
    rows = list(csv.reader(open(tmp_path / "log.csv")))
    assert rows[0] == ["epoch", "loss", "mae", "val_loss", "val_mae"] and rows[1][-2:] == ["NA", "NA"]
    bad = y.copy()
    bad[0] = np.nan
    with pytest.raises(RuntimeError, match="NaN or Inf loss encountered at batch 0"):
        _model().fit(x, bad, epochs=1, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN(raise_error=True)])


def test_monitor_modes_and_factor_like_keras():
    with pytest.warns(UserWarning, match="mode 'maximize' is unknown, fallback to auto mode"):
        es = keras.callbacks.EarlyStopping(mode="maximize")
    assert es.mode == "auto"
    keras.callbacks.ReduceLROnPlateau(factor=0.0)            # accepted, as in Keras
    with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
        keras.optimizers.SGD(clipnorm=1.0, clipvalue=0.5)


def test_metrics_take_sample_weight_positionally_and_mean_takes_values():
    M = keras.metrics
    y, p = np.array([0, 1, 2, 1]), np.eye(3, dtype=np.float32)[[0, 2, 2, 0]]
    w = np.array([1.0, 0.0, 3.0, 2.0], np.float32)
    m = M.SparseCategoricalAccuracy()
    m.update_state(y, p, w)
    assert float(m.result()) == pytest.approx(0.6667, abs=1e-4)
    m = M.MeanSquaredError()
    m.update_state(np.array([[1.0], [2.0], [3.0], [4.0]], np.float32), np.zeros((4, 1), np.float32), w)
    assert float(m.result()) == pytest.approx(10.0)
    m = M.BinaryAccuracy()
    m.update_state(np.array([[1.0], [0.0], [1.0], [0.0]], np.float32),
                   np.array([[0.9], [0.8], [0.2], [0.1]], np.float32), w)
    assert float(m.result()) == pytest.approx(0.5)
    mean = M.Mean(name="loss")
    mean.update_state(np.array([1.0, 2.0, 3.0], np.float32))
    mean.update_state(10.0, sample_weight=2.0)
    assert float(mean.result()) == pytest.approx(5.2)
    soft = M.BinaryAccuracy()                  # y_true must equal the thresholded prediction exactly
    soft.update_state(np.array([[0.9], [0.1], [1.0]], np.float32), np.array([[0.8], [0.3], [0.7]], np.float32))
    assert float(soft.result()) == pytest.approx(1 / 3)


def test_loss_functions_return_one_value_per_sample():
    L = keras.losses
    mse = L.mean_squared_error(np.array([[1.0, 2.0], [0.0, 0.0], [3.0, 1.0]]),
                               np.array([[1.0, 4.0], [0.0, 0.0], [0.0, 2.0]], np.float32))
    np.testing.assert_allclose(mse.numpy(), [2.0, 0.0, 5.0])
    p = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]], np.float32)
    np.testing.assert_allclose(L.sparse_categorical_crossentropy(np.array([0, 1]), p).numpy(),
                               -np.log([0.7, 0.8]), rtol=1e-6)
    np.testing.assert_allclose(L.categorical_crossentropy(np.eye(3)[[0, 1]], p).numpy(), -np.log([0.7, 0.8]),
                               rtol=1e-6)
    np.testing.assert_allclose(L.binary_crossentropy(np.array([[1.0, 0.0]]), np.array([[0.9, 0.2]], np.float32)).numpy(),
                               [-(np.log(0.9) + np.log(0.8)) / 2], rtol=1e-6)
    assert L.mean_absolute_error(np.zeros((5, 3)), np.ones((5, 3), np.float32)).shape == (5,)
