"""keras.optimizers.schedules: Keras 3's formulas, the step the optimizer evaluates them at, saving."""
import math

import numpy as np
import pytest

from engine import keras
from engine.keras import layers
from engine.keras.optimizers import schedules as S


def test_formulas_match_keras_documented_values():
    e = S.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert e(0) == 0.1 and math.isclose(e(10), 0.05) and math.isclose(e(5), 0.1 * 0.5 ** 0.5)
    assert math.isclose(S.ExponentialDecay(0.1, 10, 0.5, staircase=True)(19), 0.05)
    p = S.PiecewiseConstantDecay([100, 200], [1.0, 0.5, 0.1])
    assert [p(s) for s in (0, 100, 101, 200, 201)] == [1.0, 1.0, 0.5, 0.5, 0.1]
    poly = S.PolynomialDecay(0.1, 100, end_learning_rate=0.01, power=2.0)
    assert math.isclose(poly(50), 0.09 * 0.25 + 0.01) and math.isclose(poly(500), 0.01)
    cyc = S.PolynomialDecay(0.1, 100, end_learning_rate=0.0, cycle=True)
    assert math.isclose(cyc(150), 0.1 * (1 - 150 / 200)) and cyc(0) == 0.1
    inv = S.InverseTimeDecay(0.1, decay_steps=10, decay_rate=0.5)
    assert math.isclose(inv(20), 0.1 / 2.0) and math.isclose(S.InverseTimeDecay(0.1, 10, 0.5, True)(19), 0.1 / 1.5)
    cos = S.CosineDecay(0.1, decay_steps=100, alpha=0.1)
    assert math.isclose(cos(50), 0.1 * (0.9 * 0.5 + 0.1)) and math.isclose(cos(1000), 0.01)
    warm = S.CosineDecay(0.0, decay_steps=100, warmup_target=0.1, warmup_steps=10)
    assert math.isclose(warm(5), 0.05) and math.isclose(warm(10), 0.1) and math.isclose(warm(60), 0.05)
    sgdr = S.CosineDecayRestarts(0.1, first_decay_steps=10, t_mul=2.0, m_mul=0.5)
    assert math.isclose(sgdr(5), 0.05) and math.isclose(sgdr(10), 0.05)     # restart at 10, peak halved
    assert math.isclose(sgdr(20), 0.05 * 0.5 * (1 + math.cos(math.pi * 0.5)))  # halfway through a 20-step period
    assert math.isclose(S.CosineDecayRestarts(0.1, 10, t_mul=1.0)(15), 0.05)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="decay_steps must be > 0"):
        S.ExponentialDecay(0.1, 0, 0.5)
    with pytest.raises(ValueError, match="one more entry than boundaries"):
        S.PiecewiseConstantDecay([1, 2], [1.0])


def test_sgd_follows_the_schedule_one_value_per_update():
    """SGD without momentum on loss = sum(w): each update subtracts exactly the scheduled rate."""
    sched = S.PiecewiseConstantDecay([1, 3], [0.5, 0.25, 0.125])
    opt = keras.optimizers.SGD(learning_rate=sched)
    from engine import nn
    import engine
    p = nn.Parameter(engine.zeros(1))
    opt.build([p])
    seen = []
    for _ in range(5):
        seen.append(opt.learning_rate)
        p.grad = engine.ones(1)
        opt.step()
    assert seen == [0.5, 0.5, 0.25, 0.25, 0.125]           # Keras: lr(iterations) before each update
    assert math.isclose(float(p.data[0]), -sum(seen), rel_tol=1e-6)
    with pytest.raises(TypeError, match="cannot be set"):
        opt.learning_rate = 0.1


def test_fit_with_a_schedule_saves_and_resumes_it(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x.sum(1) > 0).astype("int64")
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), layers.Dense(8, activation="relu"), layers.Dense(2, activation="softmax")])
    sched = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=4, decay_rate=0.5)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=sched), loss="sparse_categorical_crossentropy")
    hist = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    assert len(hist.history["loss"]) == 2
    assert model.optimizer.iterations == 8 and math.isclose(model.optimizer.learning_rate, 1e-2 * 0.5 ** 2)
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    assert isinstance(again.optimizer._schedule, S.ExponentialDecay)
    assert again.optimizer.iterations == 8 and math.isclose(again.optimizer.learning_rate, 2.5e-3)
    assert again.optimizer.get_config()["learning_rate"]["class_name"] == "ExponentialDecay"


def test_custom_schedules_train_and_refuse_to_be_saved_with_the_fix(tmp_path):
    class Halving(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return 0.1 / (1 + step)

    model = keras.Sequential([keras.Input((2,)), layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(Halving()), loss="mse")
    model.fit(np.ones((4, 2), "float32"), np.ones((4, 1), "float32"), epochs=1, verbose=0)
    assert math.isclose(model.optimizer.learning_rate, 0.1 / 2)
    with pytest.raises(TypeError, match="include_optimizer=False"):
        model.save(str(tmp_path / "m.keras"))
