"""Keras 3's training flag: explicit argument > the enclosing call's > a custom call()'s default >
False, as Keras 3.15.1 (torch backend) does in the same cases."""
import numpy as np
import pytest

from engine import keras
from engine.keras import layers


def test_an_eager_call_without_training_is_inference():
    x = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32) * 3 + 1
    bn = layers.BatchNormalization()
    y = bn(x).numpy()
    np.testing.assert_allclose(y, x / np.sqrt(1 + 1e-3), rtol=1e-6)     # moving stats 0 / 1
    np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)           # and left alone
    y_train = bn(x, training=True).numpy()
    np.testing.assert_allclose(y_train.mean(0), 0.0, atol=1e-5)           # batch statistics
    assert np.abs(bn.moving_mean.numpy()).max() > 0
    assert float(layers.Dropout(0.5)(np.ones((100, 10), np.float32)).numpy().mean()) == 1.0
    model = keras.Sequential([keras.Input((4,)), layers.Dense(3), layers.Dropout(0.9)])
    np.testing.assert_array_equal(model(x).numpy(), model.predict(x, verbose=0))


def test_nested_calls_inherit_and_custom_defaults_count():
    seen = []

    class Probe(layers.Layer):
        def call(self, x, training=None):
            seen.append(training)
            return x

    class Outer(layers.Layer):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.probe = Probe()

        def call(self, x):
            return self.probe(x)               # no training= here: the enclosing call's flag

    class AlwaysTrain(layers.Layer):
        def call(self, x, training=True):
            seen.append(("own", training))
            return x

    x = np.ones((2, 3), np.float32)
    model = keras.Sequential([keras.Input((3,)), Outer(), layers.Dense(1)])
    model.compile("sgd", "mse")
    model.fit(x, np.zeros((2, 1), np.float32), epochs=1, verbose=0)
    assert seen[-1] is True
    model.predict(x, verbose=0)
    assert seen[-1] is False
    model(x)
    assert seen[-1] is False
    model(x, training=True)
    assert seen[-1] is True
    AlwaysTrain()(x)
    assert seen[-1] == ("own", True)
    AlwaysTrain()(x, training=False)
    assert seen[-1] == ("own", False)


@pytest.mark.parametrize("explicit", [None, False])
def test_random_augmentation_defaults_to_training_as_in_keras(explicit):
    img = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    flip = layers.RandomFlip("horizontal", seed=1)
    outs = [flip(img, training=explicit).numpy() for _ in range(6)]
    changed = any(not np.array_equal(o, img) for o in outs)
    assert changed is (explicit is None)
