"""keras.callbacks.BackupAndRestore: an interrupted fit continues from its last backup, exactly."""
import json

import numpy as np
import pytest

from engine import keras
from engine.keras import layers


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 6)).astype("float32")
    return x, (x[:, 0] + x[:, 1] > 0).astype("int64")


def _model():
    keras.utils.set_random_seed(1)
    m = keras.Sequential([keras.Input((6,)), layers.Dense(16, activation="relu"), layers.Dropout(0.2),
                          layers.Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


class Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("the machine went away")


def test_a_crashed_fit_resumes_at_the_next_epoch_with_the_uninterrupted_weights(tmp_path, capsys):
    x, y = _data()
    whole = _model()
    whole.fit(x, y, batch_size=16, epochs=4, verbose=0)
    backup = tmp_path / "backup"
    first = _model()
    with pytest.raises(RuntimeError, match="went away"):
        first.fit(x, y, batch_size=16, epochs=4, verbose=0,
                  callbacks=[keras.callbacks.BackupAndRestore(backup), Crash(at_epoch=1)])
    # the backup of epoch 2 (index 1) was written before the crash in that epoch's end
    assert json.loads((backup / "training_metadata.json").read_text()) == {"epoch": 2, "batch": 0}
    assert (backup / "_latest.weights").exists()          # the previous backup (epoch 1) is kept
    again = _model()                                       # a new process would build the model again
    hist = again.fit(x, y, batch_size=16, epochs=4, verbose=0, callbacks=[keras.callbacks.BackupAndRestore(backup)])
    assert len(hist.history["loss"]) == 2                 # epochs 3 and 4 only
    assert "BackupAndRestore: resuming at epoch 3" in capsys.readouterr().out   # 1-based, as Keras prints
    for a, b in zip(whole.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert not backup.exists()                            # delete_checkpoint=True after a completed fit


def test_batch_backups_restart_the_epoch_and_a_corrupt_backup_falls_back_to_the_previous(tmp_path, capsys):
    x, y = _data()
    backup = tmp_path / "b"
    m = _model()
    with pytest.raises(RuntimeError):
        m.fit(x, y, batch_size=16, epochs=3, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=4, delete_checkpoint=False),
                         Crash(at_epoch=1)])
    # 6 batches per epoch, a backup every 4: after batches 4 and 8 (epoch 2, its 2nd batch) and 12 (its 6th)
    assert json.loads((backup / "training_metadata.json").read_text()) == {"epoch": 1, "batch": 6}
    data = bytearray((backup / "latest.weights").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (backup / "latest.weights").write_bytes(bytes(data))
    again = _model()
    hist = again.fit(x, y, batch_size=16, epochs=3, verbose=0,
                     callbacks=[keras.callbacks.BackupAndRestore(backup, save_freq=4)])
    captured = capsys.readouterr()
    assert "cannot restore from" in captured.err and "trying the previous backup" in captured.err
    assert "resuming at epoch 2" in captured.out and len(hist.history["loss"]) == 2   # epoch 2 again, then 3
    with pytest.raises(ValueError, match="save_freq must be 'epoch' or a positive number"):
        keras.callbacks.BackupAndRestore(backup, save_freq=0)
