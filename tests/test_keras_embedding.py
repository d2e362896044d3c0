"""keras.layers.Embedding: token ids -> vectors, trained end to end with LSTM; clear errors; save/load."""
import numpy as np
import pytest

from engine import keras
from engine.keras import layers


def _tokens(n=512, t=12, vocab=50, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, size=(n, t))
    y = (np.isin(x, [3, 7]).sum(1) > 0).astype(np.int64)      # does the sequence hold token 3 or 7?
    return x, y


def _text_model(vocab=50, t=12):
    keras.utils.set_random_seed(0)
    m = keras.Sequential([layers.Embedding(vocab, 16, input_length=t), layers.LSTM(16),
                          layers.Dense(2, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def test_embedding_lstm_text_classifier_learns_and_saves(tmp_path):
    x, y = _tokens()
    m = _text_model()
    assert m.layers[0].weights[0].shape == (50, 16) and m.output_shape == (None, 2)
    init = m.layers[0].get_weights()[0]
    assert np.abs(init).max() <= 0.05                           # Keras' uniform(-0.05, 0.05)
    h = m.fit(x, y, epochs=12, batch_size=32, verbose=0, validation_split=0.2)
    assert h.history["val_accuracy"][-1] > 0.9
    path = tmp_path / "text.keras"
    m.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), m.predict(x, verbose=0))


def test_embedding_gradient_reaches_only_the_rows_used():
    keras.utils.set_random_seed(1)
    m = keras.Sequential([layers.Embedding(10, 4, input_shape=(3,)), layers.Flatten(), layers.Dense(1)])
    m.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = m.layers[0].get_weights()[0].copy()
    m.train_on_batch(np.array([[1, 2, 2], [5, 1, 1]]), np.array([1.0, -1.0], np.float32))
    changed = np.flatnonzero(np.abs(m.layers[0].get_weights()[0] - before).sum(1) > 0)
    assert changed.tolist() == [1, 2, 5]


def test_embedding_bad_ids_and_options_are_clear_errors():
    m = _text_model(vocab=50)
    with pytest.raises(ValueError, match=r'"embedding.*" \(Embedding\): token id 50 is outside \[0, 50\)'):
        m.predict(np.full((2, 12), 50), verbose=0)
    with pytest.raises(ValueError, match="needs integer token ids"):
        m.predict(np.full((2, 12), 1.5), verbose=0)
