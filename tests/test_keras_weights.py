"""sample_weight / class_weight in the Keras facade: Keras' weighted reduction, fused == unfused,
class_weight == the equivalent sample_weight, the DataLoader form, validation weights, errors."""
import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers, losses


def _data(n=96, seed=0, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    y = rng.integers(0, classes, n).astype(np.int64)
    return x, y


def _model(seed=0, out=3, activation="softmax", loss="sparse_categorical_crossentropy", opt=None):
    keras.utils.set_random_seed(seed)
    m = keras.Sequential([layers.Dense(8, activation="relu", input_shape=(5,), name="h"),
                          layers.Dense(out, activation=activation, name="o")])
    m.compile(optimizer=opt or keras.optimizers.SGD(0.1), loss=loss, metrics=["accuracy"])
    return m


@pytest.mark.parametrize("name", ["sparse_categorical_crossentropy", "categorical_crossentropy",
                                  "binary_crossentropy"])
def test_fused_and_unfused_weighted_losses_agree_in_value_and_gradient(name):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 3)).astype(np.float32)
    w = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 3.0], np.float32)
    if name == "sparse_categorical_crossentropy":
        y = rng.integers(0, 3, 6)
    elif name == "categorical_crossentropy":
        y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 6)]
    else:
        y = (rng.random((6, 3)) > 0.5).astype(np.float32)
    loss = losses.get(name)
    grads = []
    values = []
    for fused in (True, False):
        z = engine.tensor(logits, requires_grad=True)
        if fused:
            v = loss.call_on_logits(y, z, w)
        else:
            p = engine.nn.functional.sigmoid(z) if name.startswith("binary") else engine.nn.functional.softmax(z, dim=-1)
            v = loss(y, p, sample_weight=w)
        v.backward()
        values.append(float(v.item()))
        grads.append(z.grad.data.copy())
    assert values[0] == pytest.approx(values[1], rel=1e-5)
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    # Keras' reduction: sum(w * per-sample loss) / batch size
    unweighted = losses.get(name)
    per = [float(unweighted.call_on_logits(y[i:i + 1], engine.tensor(logits[i:i + 1])).item()) for i in range(6)]
    assert values[0] == pytest.approx(float(np.dot(w, per)) / 6, rel=1e-5)


@pytest.mark.parametrize("name", ["mse", "mae"])
def test_weighted_regression_losses(name):
    rng = np.random.default_rng(2)
    pred, target = rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    w = np.array([1, 0, 2, 1, 0.5], np.float32)
    err = (pred - target) ** 2 if name == "mse" else np.abs(pred - target)
    want = float((err.mean(axis=1) * w).sum() / 5)
    assert float(losses.get(name)(target, engine.tensor(pred), sample_weight=w).item()) == pytest.approx(want, rel=1e-5)
    ones = float(losses.get(name)(target, engine.tensor(pred), sample_weight=np.ones(5)).item())
    assert ones == pytest.approx(float(losses.get(name)(target, engine.tensor(pred)).item()), rel=1e-6)


def test_class_weight_equals_the_equivalent_sample_weight_and_reweights_the_loss():
    x, y = _data()
    cw = {0: 1.0, 1: 3.0, 2: 0.5}
    a = _model()          # each model seeds the generator, so both see the same shuffles
    a.fit(x, y, epochs=2, batch_size=16, verbose=0, class_weight=cw)
    b = _model()
    b.fit(x, y, epochs=2, batch_size=16, verbose=0, sample_weight=np.array([cw[c] for c in y]))
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    # evaluate with weights: only class-0 rows count, divided by the whole batch (Keras' reduction)
    m = _model()
    mask = (y == 0).astype(np.float32)
    weighted = m.evaluate(x, y, batch_size=len(x), sample_weight=mask, verbose=0)[0]
    probs = m.predict(x, verbose=0)
    per = -np.log(probs[np.arange(len(y)), y])
    assert weighted == pytest.approx(float((per * mask).sum() / len(y)), rel=1e-4)


def test_dataloader_batches_with_weights_match_the_array_form():
    from engine.data import DataLoader, TensorDataset
    x, y = _data(n=64)
    w = np.linspace(0.0, 2.0, 64).astype(np.float32)
    a, b = _model(), _model()
    a.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0, sample_weight=w)
    b.fit(DataLoader(TensorDataset(x, y, w), batch_size=16), epochs=1, verbose=0)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wa, wb, rtol=1e-6, atol=1e-7)


def test_validation_rows_keep_their_weights():
    x, y = _data(n=100)
    w = np.where(np.arange(100) % 2 == 0, 1.0, 0.0).astype(np.float32)
    m = _model()
    h = m.fit(x, y, epochs=1, batch_size=20, verbose=0, sample_weight=w, validation_split=0.2)
    expect = m.evaluate(x[80:], y[80:], sample_weight=w[80:], batch_size=20, verbose=0)[0]
    assert h.history["val_loss"][0] == pytest.approx(expect, rel=1e-6)
    h = m.fit(x[:80], y[:80], epochs=1, verbose=0, validation_data=(x[80:], y[80:], w[80:]))
    assert h.history["val_loss"][0] == pytest.approx(m.evaluate(x[80:], y[80:], sample_weight=w[80:],
                                                                verbose=0)[0], rel=1e-6)


def test_weight_errors_are_clear():
    x, y = _data(n=20)
    m = _model()
    with pytest.raises(ValueError, match=r"one weight per sample, shape \(20,\); got shape \(19,\)"):
        m.fit(x, y, verbose=0, sample_weight=np.ones(19))
    with pytest.raises(ValueError, match="finite and >= 0"):
        m.fit(x, y, verbose=0, sample_weight=-np.ones(20))
    # Keras: a class left out of class_weight keeps weight 1.0
    w = m._sample_weights(x, y, None, {0: 1.0, 1: 2.0}, "fit")
    assert w.tolist() == [{0: 1.0, 1: 2.0}.get(int(c), 1.0) for c in np.asarray(y).reshape(-1)]
    assert 2 in np.asarray(y)
    m.fit(x, y, verbose=0, class_weight={0: 1.0, 1: 2.0})
    from engine.data import DataLoader, TensorDataset
    with pytest.raises(ValueError, match=r"put the sample weights in the batches as \(x, y, w\)"):
        m.fit(DataLoader(TensorDataset(x, y), batch_size=5), verbose=0, sample_weight=np.ones(20))
    custom = keras.Sequential([layers.Dense(1, input_shape=(5,))])
    custom.compile(optimizer="sgd", loss=lambda t, p: ((p - t) * (p - t)).mean())
    with pytest.raises(ValueError, match="returns one number for the batch, so its samples cannot be weighted"):
        custom.fit(x, y.astype(np.float32), verbose=0, sample_weight=np.ones(20))
