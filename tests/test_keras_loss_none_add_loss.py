"""compile(loss=[None, ...]) / {"aux": None, ...} (Keras 3's CompileLoss: such outputs are not trained
on and log no loss; their metrics still run) and Layer.add_loss() (terms of the forward pass summed
into the training and evaluation loss; model.losses lists them)."""
import numpy as np
import pytest

from engine import keras
from engine.keras import layers, ops


def _two_outputs(names=("aux", "main")):
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    h = layers.Dense(5, activation="relu", name="hidden")(inp)
    aux = layers.Dense(3, activation="softmax", name=names[0])(h)
    main = layers.Dense(1, name=names[1])(h)
    return keras.Model(inp, [aux, main])


def _data(n=16):
    rng = np.random.default_rng(0)
    return rng.random((n, 4)).astype(np.float32), rng.integers(0, 3, n), rng.random((n, 1)).astype(np.float32)


def test_output_with_none_loss_is_not_trained_and_logs_no_loss():
    model = _two_outputs()
    x, ya, ym = _data()
    model.compile("sgd", loss=[None, "mse"], metrics=[["accuracy"], []])
    aux_before = model.get_layer("aux").get_weights()
    history = model.fit(x, [ya, ym], batch_size=8, epochs=2, verbose=0)
    # one loss left: Keras logs neither aux_loss nor main_loss, only the total; the aux metric still runs
    assert sorted(history.history) == ["aux_accuracy", "loss"]
    for a, b in zip(aux_before, model.get_layer("aux").get_weights()):
        np.testing.assert_array_equal(a, b)
    logs = model.evaluate(x, [ya, ym], verbose=0, return_dict=True)
    probs, pred = model.predict(x, verbose=0)
    np.testing.assert_allclose(logs["loss"], np.mean((pred - ym) ** 2), rtol=1e-5)
    np.testing.assert_allclose(logs["aux_accuracy"], np.mean(probs.argmax(1) == ya), rtol=1e-6)


def test_dict_with_none_keeps_the_other_loss_entries_and_weights():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    a = layers.Dense(1, name="a")(inp)
    b = layers.Dense(1, name="b")(inp)
    c = layers.Dense(1, name="c")(inp)
    model = keras.Model(inp, [a, b, c])
    model.compile("sgd", loss={"a": "mse", "b": None, "c": "mae"}, loss_weights={"a": 2.0, "c": 1.0})
    x, _, y = _data()
    logs = model.evaluate(x, [y, y, y], verbose=0, return_dict=True)
    assert sorted(logs) == ["a_loss", "c_loss", "loss"]
    pa, _, pc = model.predict(x, verbose=0)
    np.testing.assert_allclose(logs["a_loss"], np.mean((pa - y) ** 2), rtol=1e-5)
    np.testing.assert_allclose(logs["c_loss"], np.mean(np.abs(pc - y)), rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], 2 * logs["a_loss"] + logs["c_loss"], rtol=1e-5)


def test_targets_only_for_the_outputs_with_a_loss_and_save_load(tmp_path):
    model = _two_outputs()
    x, _, ym = _data()
    model.compile("sgd", loss={"aux": None, "main": "mse"})
    for y in ([ym], {"main": ym}):
        assert sorted(model.fit(x, y, epochs=1, verbose=0).history) == ["loss"]
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded._losses[0] is None
    np.testing.assert_allclose(loaded.evaluate(x, [ym], verbose=0), model.evaluate(x, [ym], verbose=0), rtol=1e-6)
    model.compile("sgd", loss=[None, "mse"], metrics={"aux": ["accuracy"]})
    with pytest.raises(ValueError, match="no targets"):
        model.fit(x, [ym], epochs=1, verbose=0)


class ActivityRegularization(layers.Layer):
    def __init__(self, rate=0.1, **kwargs):
        super().__init__(**kwargs)
        self.rate = rate

    def call(self, inputs):
        self.add_loss(self.rate * ops.sum(ops.square(inputs)))
        return inputs


def test_add_loss_is_summed_into_the_training_and_evaluation_loss():
    keras.utils.set_random_seed(1)
    inp = keras.Input((3,))
    h = layers.Dense(4, name="h")(inp)
    out = layers.Dense(1, name="out")(ActivityRegularization(0.05)(h))
    model = keras.Model(inp, out)
    model.compile("sgd", "mse")
    assert model.losses == []                              # building the model leaves no term behind
    x = np.random.default_rng(0).random((8, 3)).astype(np.float32)
    y = np.zeros((8, 1), np.float32)
    w, b = model.get_layer("h").get_weights()
    hidden = x @ w + b
    pred = model.predict(x, verbose=0)
    expected = np.mean((pred - y) ** 2) + 0.05 * np.sum(hidden ** 2)
    np.testing.assert_allclose(model.evaluate(x, y, batch_size=8, verbose=0), expected, rtol=1e-5)
    logs = model.train_on_batch(x, y, return_dict=True)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    assert len(model.losses) == 1


def test_add_loss_gradient_and_loss_none():
    # compile() without a loss: the model trains on its add_loss() terms (Keras' endpoint pattern)
    model = keras.Sequential([keras.Input((3,)), layers.Dense(2, use_bias=False), ActivityRegularization(0.5)])
    model.compile(keras.optimizers.SGD(learning_rate=0.1))
    x = np.random.default_rng(2).random((5, 3)).astype(np.float32)
    (w,) = model.get_weights()
    model.train_on_batch(x)
    grad = 0.5 * 2 * x.T @ (x @ w)                         # d/dw of 0.5 * sum((x w)^2)
    np.testing.assert_allclose(model.get_weights()[0], w - 0.1 * grad, rtol=1e-5)
    assert len(model.fit(x, epochs=2, verbose=0).history["loss"]) == 2
    plain = keras.Sequential([keras.Input((3,)), layers.Dense(2)])
    plain.compile("sgd")
    with pytest.raises(ValueError, match="No loss to compute"):
        plain.fit(x, np.zeros((5, 2)), verbose=0)


def test_losses_hold_the_last_forward_pass_only():
    class Twice(keras.Model):
        def __init__(self):
            super().__init__()
            self.reg = ActivityRegularization(1.0)

        def call(self, x):
            return self.reg(self.reg(x))                   # a layer used twice adds twice
    model = Twice()
    reg = model.reg
    x = np.ones((2, 3), np.float32)
    model(x)
    assert len(model.losses) == 2
    np.testing.assert_allclose([t.item() for t in model.losses], [6.0, 6.0])
    model(x)
    assert len(model.losses) == 2                          # cleared at the next outer call, not accumulated
    reg(x)
    assert len(reg.losses) == 1
    with pytest.raises(ValueError, match="tensor"):
        reg.add_loss(0.5)
