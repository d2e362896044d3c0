"""Keras losses beyond the cross-entropies (Huber, KLDivergence, LogCosh, Poisson, Hinge, SquaredHinge,
CategoricalHinge, CosineSimilarity, MeanSquaredLogarithmicError, MeanAbsolutePercentageError) and
label_smoothing in CategoricalCrossentropy / BinaryCrossentropy (probability, fused and from_logits
paths).  The references below are NumPy transcriptions of Keras 3's formulas (keras/src/losses/losses.py);
the facade was also compared with Keras 3.15.1 itself (values and gradients equal to float32 noise)."""
import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers, losses

EPS = 1e-7
#: Keras clips float32 probabilities: its bounds are float32(1e-7) and float32(1 - 1e-7)
LO, HI = float(np.float32(EPS)), float(np.float32(1 - EPS))


# ------------------------------------------------------------------ NumPy references (Keras' formulas)

def np_huber(t, p, delta=1.0):
    e = p - t
    a = np.abs(e)
    return np.where(a <= delta, 0.5 * e * e, delta * a - 0.5 * delta * delta).mean(-1)


def np_log_cosh(t, p):
    x = p - t
    return (x + np.logaddexp(0.0, -2.0 * x) - np.log(2.0)).mean(-1)     # = log(cosh(x))


def np_kld(t, p):
    t, p = np.clip(t, EPS, 1), np.clip(p, EPS, 1)
    return (t * np.log(t / p)).sum(-1)


def np_poisson(t, p):
    return (p - t * np.log(p + EPS)).mean(-1)


def _hinge_t(t):
    return 2 * t - 1 if np.all((t == 0) | (t == 1)) else t


def np_hinge(t, p):
    return np.maximum(1 - _hinge_t(t) * p, 0).mean(-1)


def np_squared_hinge(t, p):
    return (np.maximum(1 - _hinge_t(t) * p, 0) ** 2).mean(-1)


def np_categorical_hinge(t, p):
    pos = (t * p).sum(-1)
    neg = ((1 - t) * p).max(-1)
    return np.maximum(neg - pos + 1, 0)


def np_cosine(t, p, axis=-1):
    def norm(x):
        return x * np.minimum(1 / np.sqrt((x * x).sum(axis, keepdims=True)), 1 / EPS)
    with np.errstate(divide="ignore"):
        return -(norm(t) * norm(p)).sum(axis)


def np_msle(t, p):
    return ((np.log(np.maximum(p, EPS) + 1) - np.log(np.maximum(t, EPS) + 1)) ** 2).mean(-1)


def np_mape(t, p):
    return 100 * (np.abs(t - p) / np.maximum(np.abs(t), EPS)).mean(-1)


def np_cce(t, p, ls=0.0):
    t = t * (1 - ls) + ls / t.shape[-1]
    p = np.clip(p / p.sum(-1, keepdims=True), LO, HI)
    return -(t * np.log(p)).sum(-1)


def np_bce(t, p, ls=0.0):
    t = t * (1 - ls) + 0.5 * ls
    p = np.clip(p, LO, HI)
    return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(-1)


def np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def reduce(values, w=None):
    """Keras' 'sum_over_batch_size': sum(w * value) / number of values."""
    return (values * (1 if w is None else w)).sum() / values.size


def _data(seed=0):
    rng = np.random.default_rng(seed)
    d = {"yr": rng.normal(0, 2, (12, 4)), "w": rng.uniform(0, 2, 12)}
    d["zr"] = d["yr"] + rng.normal(0, 1.5, (12, 4))
    d["ypos"] = rng.uniform(0, 3, (12, 4))
    d["zpos"] = rng.uniform(0.01, 3, (12, 4))
    d["ypm"] = np.where(rng.random((12, 4)) > 0.5, 1.0, -1.0)
    d["y01"] = (rng.random((12, 4)) > 0.5).astype(float)
    d["yprob"] = rng.dirichlet(np.ones(4), 12)
    d["pprob"] = rng.dirichlet(np.ones(4), 12)
    d["yoh"] = np.eye(4)[rng.integers(0, 4, 12)]
    return {k: v.astype(np.float32) for k, v in d.items()}


CASES = [  # class, kwargs, string name, per-sample function, NumPy reference, y key, prediction key
    (losses.Huber, {}, "huber", losses.huber, np_huber, "yr", "zr"),
    (losses.Huber, {"delta": 0.4}, None, lambda t, p: losses.huber(t, p, delta=0.4),
     lambda t, p: np_huber(t, p, 0.4), "yr", "zr"),
    (losses.LogCosh, {}, "log_cosh", losses.log_cosh, np_log_cosh, "yr", "zr"),
    (losses.KLDivergence, {}, "kld", losses.kl_divergence, np_kld, "yprob", "pprob"),
    (losses.Poisson, {}, "poisson", losses.poisson, np_poisson, "ypos", "zpos"),
    (losses.Hinge, {}, "hinge", losses.hinge, np_hinge, "ypm", "zr"),
    (losses.Hinge, {}, None, losses.hinge, np_hinge, "y01", "zr"),
    (losses.SquaredHinge, {}, "squared_hinge", losses.squared_hinge, np_squared_hinge, "y01", "zr"),
    (losses.CategoricalHinge, {}, "categorical_hinge", losses.categorical_hinge, np_categorical_hinge, "yoh", "zr"),
    (losses.CosineSimilarity, {}, "cosine_similarity", losses.cosine_similarity, np_cosine, "yr", "zr"),
    (losses.MeanSquaredLogarithmicError, {}, "msle", losses.mean_squared_logarithmic_error, np_msle, "ypos", "zr"),
    (losses.MeanAbsolutePercentageError, {}, "mape", losses.mean_absolute_percentage_error, np_mape, "yr", "zr"),
]


@pytest.mark.parametrize("cls,kw,name,fn,ref,yk,pk", CASES)
def test_loss_matches_keras_formula_with_and_without_sample_weight(cls, kw, name, fn, ref, yk, pk):
    d = _data()
    y, p, w = d[yk], d[pk], d["w"]
    per = ref(y.astype(np.float64), p.astype(np.float64))
    np.testing.assert_allclose(fn(y, p).numpy(), per, rtol=2e-5, atol=1e-6)     # Keras' per-sample function
    loss = cls(**kw)
    assert loss(y, p).item() == pytest.approx(reduce(per), rel=2e-5, abs=1e-6)
    assert loss(y, p, sample_weight=w).item() == pytest.approx(reduce(per, w), rel=2e-5, abs=1e-6)
    if name:
        assert type(losses.get(name)) is cls
    assert type(losses.get(cls.__name__)) is cls


@pytest.mark.parametrize("cls,kw,name,fn,ref,yk,pk", CASES)
def test_loss_gradients_match_finite_differences(cls, kw, name, fn, ref, yk, pk):
    d = _data(3)
    y = d[yk].astype(np.float64)
    p = d[pk].astype(np.float64)
    if cls is losses.Huber:         # keep clear of the kink at |error| = delta
        p = np.where(np.abs(np.abs(p - y) - kw.get("delta", 1.0)) < 1e-3, p + 0.01, p)
    if cls in (losses.Hinge, losses.SquaredHinge):
        p = np.where(np.abs(1 - _hinge_t(y) * p) < 1e-3, p + 0.01, p)
    pt = engine.tensor(p, dtype="float64", requires_grad=True)
    engine.gradcheck(lambda t: fn(y, t), [pt])


def test_huber_quadratic_and_linear_sides():
    loss = losses.Huber(delta=1.0)
    y = np.zeros((1, 3), np.float32)
    p = np.array([[0.5, -2.0, 3.0]], np.float32)
    assert loss(y, p).item() == pytest.approx((0.125 + 1.5 + 2.5) / 3)
    assert losses.Huber().name == "huber_loss" and losses.get("huber").delta == 1.0


def test_cosine_similarity_axis_and_zero_vectors():
    d = _data()
    y, p = d["yr"], d["zr"].copy()
    p[2] = 0                                    # a zero vector: similarity 0, as Keras
    per = losses.cosine_similarity(y, p).numpy()
    assert per[2] == 0
    np.testing.assert_allclose(per, np_cosine(y.astype(float), p.astype(float)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(losses.cosine_similarity(y, p, axis=0).numpy(),
                               np_cosine(y.astype(float), p.astype(float), axis=0), rtol=1e-5)
    assert losses.CosineSimilarity(axis=0)(y, p).item() == pytest.approx(np_cosine(y, p, 0).mean(), rel=1e-5)


def test_hinge_converts_only_all_binary_labels():
    p = np.array([[0.3, -0.2]], np.float32)
    # 0/1 labels become -1/1
    assert losses.hinge(np.array([[0.0, 1.0]]), p).numpy()[0] == pytest.approx((1.3 + 1.2) / 2)
    # labels already in {-1, 1} (or anything not all 0/1) stay as they are
    assert losses.hinge(np.array([[-1.0, 1.0]]), p).numpy()[0] == pytest.approx((1.3 + 1.2) / 2)
    assert losses.hinge(np.array([[0.0, 2.0]]), p).numpy()[0] == pytest.approx((1.0 + 1.4) / 2)


# ------------------------------------------------------------------ label smoothing

@pytest.mark.parametrize("ls", [0.0, 0.1, 0.35])
def test_categorical_label_smoothing_probability_fused_and_logits_paths(ls):
    rng = np.random.default_rng(2)
    z = rng.normal(0, 3, (10, 4)).astype(np.float32)
    z[0] = [25.0, 0.0, -3.0, 1.0]       # saturated: Keras' clip caps the smoothed non-target terms
    y = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 10)]
    w = rng.uniform(0, 2, 10).astype(np.float32)
    p = np_softmax(z.astype(np.float64))
    loss = losses.CategoricalCrossentropy(label_smoothing=ls)
    for sw in (None, w):
        ref = reduce(np_cce(y, p, ls), sw)
        # on the probabilities, as a model without the fused path computes it
        assert loss(y, p.astype(np.float32), sample_weight=sw).item() == pytest.approx(ref, rel=1e-5)
        # the fused softmax path (a model ending in softmax trains on its logits)
        zt = engine.tensor(z, requires_grad=True)
        fused = loss.call_on_logits(y, zt) if sw is None else loss.call_on_logits(y, zt, sw)
        assert fused.item() == pytest.approx(ref, rel=1e-5)
        fused.backward()
        # gradient: softmax * sum(t') - t' over the terms inside Keras' clip range, / N
        ts = y * (1 - ls) + ls / 4
        inside = (p >= LO) & (p <= HI)
        t_in = ts * inside
        g = (p * t_in.sum(-1, keepdims=True) - t_in) / 10 * (1 if sw is None else sw[:, None])
        np.testing.assert_allclose(zt.grad.numpy(), g, rtol=1e-4, atol=1e-7)
    # from_logits=True: log_softmax of the logits with the smoothed targets (away from the clip bounds)
    zm = z[1:]
    ref = reduce(-((y[1:] * (1 - ls) + ls / 4) * np.log(np_softmax(zm.astype(np.float64)))).sum(-1))
    got = losses.CategoricalCrossentropy(from_logits=True, label_smoothing=ls)(y[1:], zm).item()
    assert got == pytest.approx(ref, rel=1e-5)
    np.testing.assert_allclose(
        losses.categorical_crossentropy(y[1:], zm, from_logits=True, label_smoothing=ls).numpy(),
        -((y[1:] * (1 - ls) + ls / 4) * np.log(np_softmax(zm.astype(np.float64)))).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(losses.categorical_crossentropy(y, p.astype(np.float32), label_smoothing=ls).numpy(),
                               np_cce(y, p, ls), rtol=1e-5)


@pytest.mark.parametrize("ls", [0.0, 0.1, 0.35])
def test_binary_label_smoothing_probability_fused_and_logits_paths(ls):
    rng = np.random.default_rng(3)
    z = rng.normal(0, 4, (10, 3)).astype(np.float32)
    z[0] = [20.0, -20.0, 12.0]          # clipped, clipped, saturated but inside the clip range
    y = (rng.random((10, 3)) > 0.5).astype(np.float32)
    w = rng.uniform(0, 2, 10).astype(np.float32)
    # Keras' model output: the float32 sigmoid
    p32 = (np.float32(1) / (np.float32(1) + np.exp(-z))).astype(np.float32)
    loss = losses.BinaryCrossentropy(label_smoothing=ls)
    for sw in (None, w):
        ref = reduce(np_bce(y, p32.astype(np.float64), ls), sw)
        assert loss(y, p32, sample_weight=sw).item() == pytest.approx(ref, rel=1e-5)
        zt = engine.tensor(z, requires_grad=True)
        fused = loss.call_on_logits(y, zt) if sw is None else loss.call_on_logits(y, zt, sw)
        assert fused.item() == pytest.approx(ref, rel=1e-5)
        fused.backward()
        ts = y * (1 - ls) + 0.5 * ls
        inside = (p32 >= np.float32(EPS)) & (p32 <= np.float32(1 - EPS))
        g = (p32 - ts) * inside / z.size * (1 if sw is None else sw[:, None])
        np.testing.assert_allclose(zt.grad.numpy(), g, rtol=1e-4, atol=1e-8)
    zm = z[1:]
    ts = y[1:] * (1 - ls) + 0.5 * ls
    exact = np.maximum(zm, 0) - zm * ts + np.log1p(np.exp(-np.abs(zm.astype(np.float64))))
    got = losses.BinaryCrossentropy(from_logits=True, label_smoothing=ls)(y[1:], zm).item()
    assert got == pytest.approx(exact.mean(), rel=1e-5)
    np.testing.assert_allclose(losses.binary_crossentropy(y[1:], zm, from_logits=True, label_smoothing=ls).numpy(),
                               exact.mean(-1), rtol=1e-5)


def test_label_smoothing_arguments_as_keras():
    with pytest.raises(TypeError):      # Keras' SparseCategoricalCrossentropy has no label_smoothing
        losses.SparseCategoricalCrossentropy(label_smoothing=0.1)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.CategoricalCrossentropy(label_smoothing=1.5)
    cfg = losses.serialize(losses.CategoricalCrossentropy(label_smoothing=0.2, name="cce_s"))
    back = losses.get(cfg)
    assert type(back) is losses.CategoricalCrossentropy and back.label_smoothing == 0.2 and back.name == "cce_s"
    back = losses.get(losses.serialize(losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.1)))
    assert back.from_logits and back.label_smoothing == 0.1
    for loss in (losses.Huber(delta=0.25), losses.CosineSimilarity(axis=0), losses.KLDivergence(name="kl")):
        again = losses.get(losses.serialize(loss))
        assert type(again) is type(loss) and again.get_config() == loss.get_config()


# ------------------------------------------------------------------ in compile / fit / save

def _regression_model(seed=0, out=3, activation=None):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([layers.Dense(8, activation="tanh", input_shape=(5,)),
                             layers.Dense(out, activation=activation)])


@pytest.mark.parametrize("loss,activation,target", [
    ("huber", None, "yr"), ("log_cosh", None, "yr"), ("kld", "softmax", "yprob"), ("poisson", "softplus", "ypos"),
    ("hinge", "tanh", "ypm"), ("squared_hinge", "tanh", "y01"), ("categorical_hinge", None, "yoh"),
    ("cosine_similarity", None, "yr"), ("msle", "softplus", "ypos"), ("mape", None, "yr")])
def test_compiled_string_losses_train_and_evaluate_to_the_formula(loss, activation, target):
    rng = np.random.default_rng(4)
    x = rng.normal(size=(32, 5)).astype(np.float32)
    d = _data(5)
    y = np.concatenate([d[target], d[target], d[target]])[:32, :3]
    if target == "yprob":
        y = y / y.sum(-1, keepdims=True)
    if target == "yoh":
        y = np.eye(3, dtype=np.float32)[np.arange(32) % 3]
    if loss == "mape":                  # targets away from 0, where the percentage error is tame
        y = y + 5.0
    m = _regression_model(activation=activation)
    m.compile(optimizer=keras.optimizers.SGD(0.01), loss=loss)
    first = m.evaluate(x, y, batch_size=32, verbose=0)
    ref = {"huber": np_huber, "log_cosh": np_log_cosh, "kld": np_kld, "poisson": np_poisson, "hinge": np_hinge,
           "squared_hinge": np_squared_hinge, "categorical_hinge": np_categorical_hinge,
           "cosine_similarity": np_cosine, "msle": np_msle, "mape": np_mape}[loss]
    pred = m.predict(x, verbose=0).astype(np.float64)
    assert first == pytest.approx(ref(y.astype(np.float64), pred).mean(), rel=1e-4, abs=1e-6)
    h = m.fit(x, y, batch_size=8, epochs=3, shuffle=False, verbose=0)
    assert h.history["loss"][-1] < first


def test_fused_models_evaluate_to_the_smoothed_keras_loss():
    rng = np.random.default_rng(6)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    yoh = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 40)]
    m = _regression_model(out=3, activation="softmax")
    m.compile(optimizer="adam", loss=losses.CategoricalCrossentropy(label_smoothing=0.2))
    assert m._fused
    got = m.evaluate(x, yoh, batch_size=40, verbose=0)
    assert got == pytest.approx(np_cce(yoh, m.predict(x, verbose=0).astype(np.float64), 0.2).mean(), rel=1e-5)
    yb = (rng.random((40, 1)) > 0.5).astype(np.float32)
    m = _regression_model(out=1, activation="sigmoid")
    m.compile(optimizer="adam", loss=losses.BinaryCrossentropy(label_smoothing=0.1))
    assert m._fused
    got = m.evaluate(x, yb, batch_size=40, verbose=0)
    assert got == pytest.approx(np_bce(yb, m.predict(x, verbose=0).astype(np.float64), 0.1).mean(), rel=1e-5)


def test_save_and_load_keeps_the_loss_and_its_settings(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(24, 5)).astype(np.float32)
    y = rng.normal(size=(24, 3)).astype(np.float32)
    m = _regression_model()
    m.compile(optimizer="adam", loss=losses.Huber(delta=0.3), metrics=["mae"])
    m.fit(x, y, epochs=1, batch_size=8, verbose=0)
    path = str(tmp_path / "huber.keras")
    m.save(path)
    back = keras.models.load_model(path)
    assert type(back.loss) is losses.Huber and back.loss.delta == 0.3
    np.testing.assert_allclose(back.evaluate(x, y, verbose=0), m.evaluate(x, y, verbose=0), rtol=1e-6)
    yoh = np.eye(6, dtype=np.float32)[np.arange(24) % 6]
    m = _regression_model(out=6, activation="softmax")
    m.compile(optimizer="adam", loss=losses.CategoricalCrossentropy(label_smoothing=0.15),
              metrics=["top_k_categorical_accuracy"])
    m.fit(x, yoh, epochs=1, batch_size=8, verbose=0)
    m.save(path)
    back = keras.models.load_model(path)
    assert back.loss.label_smoothing == 0.15 and back._fused
    np.testing.assert_allclose(back.evaluate(x, yoh, verbose=0), m.evaluate(x, yoh, verbose=0), rtol=1e-6)


def test_from_logits_losses_are_not_clipped_as_in_keras():
    """Keras clips probabilities, not logits: with from_logits=True an overconfident wrong row costs its
    full log-softmax (30 here, not the clipped 16.1) and passes its gradient."""
    import engine
    z = engine.tensor(np.array([[30.0, 0.0, 0.0]], np.float32), requires_grad=True)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(np.array([1]), z)
    loss.backward()
    assert float(loss.item()) == pytest.approx(30.0, rel=1e-5)
    assert abs(float(z.grad.numpy()[0, 0]) - 1.0) < 1e-5
    b = keras.losses.BinaryCrossentropy(from_logits=True)(np.array([[0.0]], np.float32),
                                                          engine.tensor(np.array([[25.0]], np.float32)))
    assert float(b.item()) == pytest.approx(25.0, rel=1e-5)
