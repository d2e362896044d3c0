"""The Keras facade on a GPU (opt-in: keras.backend.set_device("cuda")): a Sequential CNN trains,
evaluates, predicts, saves and loads there with the CPU's results (needs cupy and a CUDA device;
skipped cleanly without).  Passed on an H200 on 2026-11-26, where recurrent, Bidirectional and
multi-input functional models still failed (README, Known limitations)."""
import warnings

import numpy as np
import pytest

from engine import backend
from engine.keras import backend as K
from engine.keras import layers, models
from engine.keras.utils import set_random_seed

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not backend.gpu_available(), reason="needs cupy and a CUDA device")]


def _data(n=2000):
    from engine.data import datasets
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = datasets.FashionMNIST(root=None, train=True, download=False)
    x, y = train.get_batch(np.arange(n))
    return np.asarray(x, np.float32).reshape(-1, 28, 28, 1), np.asarray(y)


def _seed_cnn():
    set_random_seed(0)
    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation="relu", input_shape=(28, 28, 1)),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


@pytest.fixture
def on_gpu():
    K.set_device("cuda")
    yield
    K.set_device(None)


def test_a_sequential_cnn_on_the_gpu_matches_the_cpu(tmp_path, on_gpu):
    x, y = _data()
    gpu = _seed_cnn()
    assert K.default_device() == "cuda:0" and all(w.device == "cuda:0" for w in gpu.weights)
    K.set_device("cpu")
    try:
        cpu = _seed_cnn()
    finally:
        K.set_device("cuda")
    assert all(w.device == "cpu" for w in cpu.weights)
    cpu.set_weights(gpu.get_weights())
    p_gpu, p_cpu = gpu.predict(x[:256], verbose=0), cpu.predict(x[:256], verbose=0)
    assert isinstance(p_gpu, np.ndarray)
    np.testing.assert_allclose(p_gpu, p_cpu, rtol=1e-4, atol=1e-5)
    h_gpu = gpu.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False).history
    h_cpu = cpu.fit(x, y, epochs=1, batch_size=32, verbose=0, shuffle=False).history
    assert abs(h_gpu["loss"][0] - h_cpu["loss"][0]) < 1e-2 and h_gpu["accuracy"][0] > 0.6
    gpu.evaluate(x[:500], y[:500], verbose=0)
    gpu.save(str(tmp_path / "m.keras"))
    again = models.load_model(str(tmp_path / "m.keras"))
    assert all(w.device == "cuda:0" for w in again.weights)
    np.testing.assert_array_equal(again.predict(x[:64], verbose=0), gpu.predict(x[:64], verbose=0))
