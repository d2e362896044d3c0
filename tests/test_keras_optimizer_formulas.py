"""The Keras facade's SGD and RMSprop follow Keras 3's update rules also where they differ from
PyTorch's: the learning rate lives inside the momentum (so a changing rate - a schedule,
LearningRateScheduler, ReduceLROnPlateau - does not rescale past steps), and weight_decay is
decoupled (w -= w * wd * lr before the update).  Reference: Keras 3's update_step written out in
NumPy below; the same cases were checked against Keras 3.15.1 (torch backend): weights within
4e-7 after 8 steps."""
import numpy as np
import pytest

from engine import keras


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 5)).astype(np.float32), rng.standard_normal((64, 2)).astype(np.float32)


def _lr(base, it, schedule):
    return base * 0.5 ** (it / 2) if schedule else base


def _reference(kind, base_lr, schedule, momentum=0.0, nesterov=False, wd=0.0, rho=0.9, eps=1e-7):
    x, t = _data()
    w, b = np.ones((5, 2)), np.zeros(2)
    state = {"m": [np.zeros_like(w), np.zeros_like(b)], "v": [np.zeros_like(w), np.zeros_like(b)]}
    for it in range(8):
        xb, tb = x[it * 8:(it + 1) * 8].astype(np.float64), t[it * 8:(it + 1) * 8]
        err = xb @ w + b - tb
        grads = [xb.T @ err * 2 / err.size, err.sum(0) * 2 / err.size]
        lr = _lr(base_lr, it, schedule)
        params = [w, b]
        for i, (p, g) in enumerate(zip(params, grads)):
            p -= p * wd * lr                                   # decoupled, before the update
            if kind == "sgd":
                m = state["m"][i]
                m[...] = momentum * m - lr * g
                p += (momentum * m - lr * g) if nesterov else m
            else:
                v = state["v"][i]
                v[...] = rho * v + (1 - rho) * g * g
                inc = lr * g / np.sqrt(v + eps)
                if momentum:
                    m = state["m"][i]
                    m[...] = momentum * m + inc
                    p -= m
                else:
                    p -= inc
    return w


CASES = {
    "sgd_momentum_schedule": ("sgd", 0.1, True, dict(momentum=0.9)),
    "sgd_nesterov_schedule": ("sgd", 0.1, True, dict(momentum=0.9, nesterov=True)),
    "sgd_momentum_weight_decay": ("sgd", 0.05, False, dict(momentum=0.9, wd=0.1)),
    "rmsprop_weight_decay": ("rmsprop", 0.01, False, dict(wd=0.1)),
    "rmsprop_momentum_schedule": ("rmsprop", 0.01, True, dict(momentum=0.9)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_rules_are_keras(case):
    kind, base, schedule, kw = CASES[case]
    lr = keras.optimizers.schedules.ExponentialDecay(base, 2, 0.5) if schedule else base
    args = dict(momentum=kw.get("momentum", 0.0), weight_decay=kw.get("wd") or None)
    opt = (keras.optimizers.SGD(lr, nesterov=kw.get("nesterov", False), **args) if kind == "sgd"
           else keras.optimizers.RMSprop(lr, **args))
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, kernel_initializer="ones")])
    model.compile(optimizer=opt, loss="mse")
    x, t = _data()
    model.fit(x, t, batch_size=8, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(model.get_weights()[0], _reference(kind, base, schedule, **kw), atol=2e-6)


def test_a_rate_set_by_a_callback_keeps_keras_momentum_and_survives_save_and_load(tmp_path):
    """LearningRateScheduler halves the rate every epoch; saving and loading the model mid-run (the
    optimizer state with the rate of its last update) leaves the result unchanged."""
    x, t = _data()

    def run(split):
        model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, kernel_initializer="ones")])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        sched = keras.callbacks.LearningRateScheduler(lambda epoch: 0.1 * 0.5 ** epoch)
        model.fit(x, t, batch_size=32, epochs=2, shuffle=False, verbose=0, callbacks=[sched])
        if split:       # saved with its optimizer state and loaded again: the momentum goes on as Keras'
            model.save(tmp_path / "m.keras")
            model = keras.models.load_model(tmp_path / "m.keras")
        model.fit(x, t, batch_size=32, epochs=3, initial_epoch=2, shuffle=False, verbose=0, callbacks=[sched])
        return model.get_weights()[0]

    w, b, m = np.ones((5, 2)), np.zeros(2), [np.zeros((5, 2)), np.zeros(2)]
    for epoch in range(3):
        lr = 0.1 * 0.5 ** epoch
        for i in range(2):
            xb, tb = x[i * 32:(i + 1) * 32].astype(np.float64), t[i * 32:(i + 1) * 32]
            err = xb @ w + b - tb
            for p, g, mm in zip((w, b), (xb.T @ err * 2 / err.size, err.sum(0) * 2 / err.size), m):
                mm[...] = 0.9 * mm - lr * g
                p += mm
    np.testing.assert_allclose(run(False), w, atol=2e-6)
    np.testing.assert_allclose(run(True), w, atol=2e-6)
