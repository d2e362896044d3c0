"""keras.regularizers and keras.constraints: Keras 3's formulas, where they act, and that fit /
evaluate / save honour them.  The end-to-end figures were produced by Keras 3.15.1 (torch backend)
on the same model, weights and data (see test_training_matches_keras_3)."""
import numpy as np
import pytest

import engine
from engine.keras import constraints, layers, models, optimizers, regularizers


def _t(a):
    return engine.tensor(np.asarray(a, np.float32), requires_grad=True)


def test_keras_docstring_examples():
    # keras.regularizers.Regularizer's doctest: kernel L1 0.25 + activity L2 (divided by batch 5) 5.0
    d = layers.Dense(5, input_dim=5, kernel_initializer="ones", kernel_regularizer=regularizers.L1(0.01),
                     activity_regularizer=regularizers.L2(0.01))
    d(np.ones((5, 5), np.float32) * 2.0)
    assert sum(float(t.item()) for t in d.losses) == pytest.approx(5.25)
    assert float(regularizers.L2(2.0)(_t(np.ones((5, 5)))).item()) == pytest.approx(50.0)

    def l1_reg(w):
        return 0.01 * w.abs().sum()
    d = layers.Dense(5, input_dim=5, kernel_initializer="ones", kernel_regularizer=l1_reg)
    d(np.ones((5, 5), np.float32))
    assert [float(t.item()) for t in d.losses] == pytest.approx([0.25])


def test_penalties_and_their_gradients():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    cases = {
        "l1": (regularizers.L1(0.3), 0.3 * np.abs(w).sum(), 0.3 * np.sign(w)),
        "l2": (regularizers.get("l2"), 0.01 * (w ** 2).sum(), 0.02 * w),
        "l1_l2": (regularizers.l1_l2(l1=0.1, l2=0.2), 0.1 * np.abs(w).sum() + 0.2 * (w ** 2).sum(),
                  0.1 * np.sign(w) + 0.4 * w),
    }
    for name, (reg, value, grad) in cases.items():
        t = _t(w)
        out = reg(t)
        out.backward()
        assert float(out.item()) == pytest.approx(value, rel=1e-6), name
        np.testing.assert_allclose(t.grad.numpy(), grad, rtol=1e-5, err_msg=name)
    # Keras 3's code: the string 'l1_l2' is L1L2() with both factors 0
    assert regularizers.get("l1_l2").get_config() == {"l1": 0.0, "l2": 0.0}
    for mode, unit, gram in (("rows", w / np.linalg.norm(w, axis=1, keepdims=True), lambda u: u @ u.T),
                             ("columns", w / np.linalg.norm(w, axis=0, keepdims=True), lambda u: u.T @ u)):
        g = gram(unit)
        n = g.shape[0]
        expected = 0.1 * 0.5 * np.abs(g * (1 - np.eye(n))).sum() / (n * (n - 1) / 2)
        out = regularizers.OrthogonalRegularizer(0.1, mode=mode)(_t(w))
        assert float(out.item()) == pytest.approx(expected, rel=1e-5), mode
    with pytest.raises(ValueError, match="must have rank 2"):
        regularizers.OrthogonalRegularizer()(_t(np.ones((2, 2, 2))))
    with pytest.raises(ValueError, match="non-negative float"):
        regularizers.L2(-1)
    with pytest.raises(ValueError, match="Dense: kernel_regularizer: Could not interpret regularizer identifier: l3"):
        layers.Dense(2, kernel_regularizer="l3")


def test_constraint_formulas():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 3, 2, 4)).astype(np.float32)
    eps = 1e-7
    norms = np.sqrt((w ** 2).sum(axis=(0, 1, 2), keepdims=True))
    cases = {
        "max_norm": (constraints.MaxNorm(0.8, axis=[0, 1, 2]), w * np.clip(norms, 0, 0.8) / (norms + eps)),
        "unit_norm": (constraints.UnitNorm(axis=[0, 1, 2]), w / (norms + eps)),
        "min_max": (constraints.MinMaxNorm(0.2, 0.6, rate=0.5, axis=[0, 1, 2]),
                    w * (0.5 * np.clip(norms, 0.2, 0.6) + 0.5 * norms) / (norms + eps)),
        "non_neg": (constraints.get("non_neg"), np.maximum(w, 0)),
    }
    for name, (con, expected) in cases.items():
        np.testing.assert_allclose(con(engine.tensor(w)).numpy(), expected, rtol=1e-5, atol=1e-7, err_msg=name)


def _model(keras_layers=layers):
    L, R, C = keras_layers, regularizers, constraints
    return models.Sequential([
        L.Input((6, 6, 2)),
        L.Conv2D(4, 3, activation="relu", kernel_regularizer=R.L1L2(l1=0.01, l2=0.02), bias_regularizer="l2",
                 kernel_constraint=C.MaxNorm(0.8, axis=[0, 1, 2])),
        L.Flatten(),
        L.Dense(8, activation="tanh", kernel_regularizer=R.OrthogonalRegularizer(0.1), activity_regularizer=R.L2(0.05),
                bias_constraint=C.NonNeg(), kernel_constraint=C.MinMaxNorm(0.2, 0.6, rate=0.5)),
        L.Dense(3, activation="softmax", kernel_regularizer="l1", kernel_constraint=C.UnitNorm(),
                activity_regularizer=R.L1(0.02)),
    ])


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((10, 6, 6, 2)).astype(np.float32), rng.integers(0, 3, 10)


def test_training_matches_keras_3(tmp_path):
    """Keras 3.15.1 (torch backend), same model, weights (rng(1) normal x 0.3 in get_weights order),
    data and SGD(0.1), 2 epochs of 2 batches without shuffling: evaluate gave 1.7793455123901367
    before and 1.1551671028137207 after; every weight ended within 6e-8 of Keras'."""
    x, y = _data()
    m = _model()
    r = np.random.default_rng(1)
    m.set_weights([r.standard_normal(w.shape).astype(np.float32) * 0.3 for w in m.get_weights()])
    m.compile(optimizer=optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    assert m.evaluate(x, y, verbose=0, batch_size=10) == pytest.approx(1.7793455123901367, abs=2e-6)
    m.fit(x, y, epochs=2, batch_size=5, shuffle=False, verbose=0)
    assert m.evaluate(x, y, verbose=0, batch_size=10) == pytest.approx(1.1551671028137207, abs=2e-6)
    conv, dense, out = m.layers[0], m.layers[2], m.layers[3]
    assert np.sqrt((conv.kernel.numpy() ** 2).sum(axis=(0, 1, 2))).max() <= 0.8 + 1e-6
    assert dense.bias.numpy().min() >= 0
    np.testing.assert_allclose(np.sqrt((out.kernel.numpy() ** 2).sum(axis=0)), 1.0, rtol=1e-5)
    # the penalties are part of the loss: without them the same weights give a smaller loss
    penalties = sum(float(t.item()) for t in m.losses)
    assert penalties > 0.01
    # saved and loaded with its regularizers and constraints
    m.save(tmp_path / "m.keras")
    back = models.load_model(tmp_path / "m.keras")
    assert back.layers[0].kernel_regularizer.get_config() == {"l1": 0.01, "l2": 0.02}
    assert back.layers[2].kernel_constraint.get_config() == {"min_value": 0.2, "max_value": 0.6, "rate": 0.5,
                                                             "axis": 0}
    assert back.evaluate(x, y, verbose=0, batch_size=10) == pytest.approx(m.evaluate(x, y, verbose=0, batch_size=10))


def test_where_the_arguments_act():
    lstm = layers.LSTM(3, recurrent_regularizer=regularizers.L2(1.0), recurrent_constraint="non_neg")
    lstm(np.ones((2, 4, 5), np.float32))
    rk = lstm.recurrent_kernel.numpy()
    assert [float(t.item()) for t in lstm.losses] == pytest.approx([float((rk ** 2).sum())], rel=1e-5)
    mha = layers.MultiHeadAttention(2, 4, kernel_regularizer=regularizers.L1(1.0))
    q = np.ones((1, 3, 6), np.float32)
    mha(q, q)
    expected = sum(np.abs(getattr(mha, n).numpy()).sum() for n in
                   ("query_kernel", "key_kernel", "value_kernel", "attention_output_kernel"))
    assert sum(float(t.item()) for t in mha.losses) == pytest.approx(expected, rel=1e-5)
    emb = layers.Embedding(10, 4, embeddings_regularizer="l2")
    emb(np.array([[1, 2]]))
    assert len(emb.losses) == 1
    # a non-trainable layer's weights are not penalised (Keras: trainable_weights only)
    d = layers.Dense(2, kernel_regularizer="l2", trainable=False)
    d(np.ones((1, 3), np.float32))
    assert d.losses == []


def test_custom_layer_add_weight_with_regularizer_and_constraint():
    class Scale(layers.Layer):
        def build(self, input_shape):
            self.w = self.add_weight(shape=(input_shape[-1],), initializer="ones",
                                     regularizer=regularizers.L2(0.5), constraint=constraints.NonNeg())

        def call(self, x):
            return x * self.w

    m = models.Sequential([layers.Input((3,)), Scale(), layers.Dense(1, kernel_initializer="ones")])
    m.compile(optimizer=optimizers.SGD(10.0), loss="mse")
    m.fit(np.ones((4, 3), np.float32), np.full((4, 1), -100.0, np.float32), epochs=1, verbose=0)
    w = m.layers[0].w.numpy()
    assert w.min() >= 0 and (w == 0).any()         # pushed negative by the big step, projected back
    assert [float(t.item()) for t in m.layers[0].losses] == pytest.approx([0.5 * float((w ** 2).sum())])


def test_apply_gradients_applies_constraints():
    d = layers.Dense(2, kernel_constraint=constraints.NonNeg(), kernel_initializer="ones")
    d(np.ones((1, 2), np.float32))
    opt = optimizers.SGD(1.0)
    loss = d(np.ones((1, 2), np.float32)).sum() * 10
    loss.backward()
    opt.apply_gradients(zip([w.grad for w in d.trainable_weights], d.trainable_weights))
    assert d.kernel.numpy().min() == 0.0
