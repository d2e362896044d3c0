"""The Keras callbacks beyond History/EarlyStopping: checkpoints, learning-rate control, CSV, NaN stop."""
import csv
import math

import numpy as np
import pytest

from engine import keras
from engine.keras import layers


def _regression(seed=0, n=128):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], np.float32) + 0.1
    return x, y


def _model(lr=0.01, seed=0):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([layers.Dense(8, activation="relu", input_shape=(4,), name="hidden"),
                          layers.Dense(1, name="out")])
    m.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    return m


def test_model_checkpoint_every_epoch_with_formatted_names(tmp_path):
    x, y = _regression()
    m = _model()
    pattern = str(tmp_path / "ckpt" / "m-{epoch:02d}-{loss:.4f}.keras")
    h = m.fit(x, y, epochs=3, batch_size=32, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(pattern, monitor="loss")])
    files = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert files == [f"m-{e + 1:02d}-{h.history['loss'][e]:.4f}.keras" for e in range(3)]
    assert not [f for f in files if f.startswith(".")]          # no temporary files left behind
    last = keras.models.load_model(tmp_path / "ckpt" / files[-1])
    np.testing.assert_array_equal(last.predict(x, verbose=0), m.predict(x, verbose=0))


def test_model_checkpoint_save_best_only_keeps_the_best_weights(tmp_path):
    x, y = _regression()
    xv, yv = _regression(seed=1, n=64)
    m = _model(lr=0.05)
    path = tmp_path / "best.weights"
    best = {}

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if logs["val_loss"] < best.get("val_loss", math.inf):
                best.update(val_loss=logs["val_loss"], weights=self.model.get_weights())
    m.fit(x, y, epochs=6, batch_size=16, verbose=0, validation_data=(xv, yv),
          callbacks=[Record(), keras.callbacks.ModelCheckpoint(path, save_best_only=True, save_weights_only=True)])
    fresh = _model(seed=5)
    fresh.load_weights(path)
    for a, b in zip(fresh.get_weights(), best["weights"]):
        np.testing.assert_array_equal(a, b)


def test_model_checkpoint_unknown_field_names_the_logs(tmp_path):
    x, y = _regression()
    m = _model()
    with pytest.raises(KeyError, match="val_accuracy.*not in the epoch logs"):
        m.fit(x, y, epochs=1, verbose=0,
              callbacks=[keras.callbacks.ModelCheckpoint(str(tmp_path / "{val_accuracy}.keras"))])


def test_reduce_lr_on_plateau_follows_patience_cooldown_and_min_lr():
    class Flat(keras.callbacks.Callback):       # a monitored value that never improves after epoch 0
        def on_epoch_end(self, epoch, logs=None):
            logs["score"] = 1.0
    x, y = _regression()
    m = _model(lr=0.08)
    # a key of no compiled metric: Keras cannot tell its direction, so mode= is needed
    with pytest.raises(ValueError, match="isn't able to automatically determine"):
        m.fit(x, y, epochs=1, batch_size=128, verbose=0,
              callbacks=[Flat(), keras.callbacks.ReduceLROnPlateau(monitor="score")])
    m = _model(lr=0.08)
    cb = keras.callbacks.ReduceLROnPlateau(monitor="score", mode="min", factor=0.5, patience=2, cooldown=1,
                                           min_lr=0.015)
    h = m.fit(x, y, epochs=8, batch_size=128, verbose=0, callbacks=[Flat(), cb])
    # logged before the epoch's decision, as Keras does; reductions at epochs 2, 4 and 6 (the last
    # one stopped by min_lr), each followed by one epoch of cooldown
    assert h.history["learning_rate"] == pytest.approx([0.08, 0.08, 0.08, 0.04, 0.04, 0.02, 0.02, 0.015])
    assert m.optimizer.learning_rate == pytest.approx(0.015)
    assert m.optimizer.engine.param_groups[0]["lr"] == pytest.approx(0.015)   # reaches the engine optimizer
    with pytest.raises(ValueError, match="does not support a factor >= 1.0"):
        keras.callbacks.ReduceLROnPlateau(factor=1.5)


def test_learning_rate_scheduler_one_argument_form_and_bad_values():
    x, y = _regression()
    m = _model()
    h = m.fit(x, y, epochs=3, verbose=0,
              callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch: 0.01 / (epoch + 1))])
    assert h.history["learning_rate"] == pytest.approx([0.01, 0.005, 0.01 / 3])
    with pytest.raises(ValueError, match="returned nan"):
        m.fit(x, y, epochs=1, verbose=0,
              callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch: float("nan"))])


def test_csv_logger_writes_one_row_per_epoch_and_appends(tmp_path):
    x, y = _regression()
    xv, yv = _regression(seed=1, n=32)
    m = _model()
    path = tmp_path / "log.csv"
    m.fit(x, y, epochs=2, verbose=0, validation_data=(xv, yv), callbacks=[keras.callbacks.CSVLogger(path)])
    m.fit(x, y, epochs=1, verbose=0, validation_data=(xv, yv),
          callbacks=[keras.callbacks.CSVLogger(path, append=True)])
    rows = list(csv.reader(open(path, encoding="utf-8")))
    assert rows[0] == ["epoch", "loss", "val_loss"]
    assert [r[0] for r in rows[1:]] == ["0", "1", "0"] and len(rows) == 4
    assert all(float(r[1]) > 0 for r in rows[1:])


def test_terminate_on_nan_stops_in_the_first_bad_epoch():
    x, y = _regression()
    y = y.copy()
    y[5] = np.nan
    m = _model()
    h = m.fit(x, y, epochs=5, batch_size=16, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN()])
    assert len(h.history["loss"]) == 1
