"""Keras 3's Adagrad, Adadelta, Adamax, Nadam and Lion in the Keras facade: defaults, update rules,
compile by name, saving with the model, argument errors.

The reference is Keras 3's update_step written out in NumPy (float64) below, with weight_decay
decoupled (w -= w * wd * lr before the update) and a schedule evaluated at the number of updates
applied so far, as Keras does.  Where it differs from PyTorch: Adagrad's epsilon is inside the square
root and its accumulator starts at 0.1, Adamax adds epsilon to u after the max, Nadam's momentum
schedule is beta_1 (1 - 0.5 * 0.96^t).  The same cases were checked against Keras 3.15.1 (torch
backend) on a two-layer Dense model: weights within 1.1e-6 after 8 steps (Nadam; 5e-7 the others).
"""
import numpy as np
import pytest

from engine import keras

KERAS_DEFAULTS = {
    "Adagrad": dict(learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7, weight_decay=None),
    "Adadelta": dict(learning_rate=0.001, rho=0.95, epsilon=1e-7, weight_decay=None),
    "Adamax": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None),
    "Nadam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, weight_decay=None),
    "Lion": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.99, weight_decay=None),
}


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((64, 5)).astype(np.float32), rng.standard_normal((64, 2)).astype(np.float32)


def _model():
    return keras.Sequential([keras.Input((5,)), keras.layers.Dense(2, kernel_initializer="ones")])


# ----------------------------------------------------------------------------- NumPy reference
def _keras_rule(kind, hp):
    """init(shape) -> per-variable state; update(p, g, st, lr, t) applies Keras' update_step (t from 1)."""
    if kind == "Adagrad":
        def init(p):
            return {"acc": np.full_like(p, hp["initial_accumulator_value"])}

        def update(p, g, st, lr, t):
            st["acc"] += g * g
            p -= lr * g / np.sqrt(st["acc"] + hp["epsilon"])
    elif kind == "Adadelta":
        def init(p):
            return {"ag": np.zeros_like(p), "ad": np.zeros_like(p)}

        def update(p, g, st, lr, t):
            rho, eps = hp["rho"], hp["epsilon"]
            st["ag"][...] = rho * st["ag"] + (1 - rho) * g * g
            delta = -np.sqrt(st["ad"] + eps) * g / np.sqrt(st["ag"] + eps)
            st["ad"][...] = rho * st["ad"] + (1 - rho) * delta * delta
            p += lr * delta
    elif kind == "Adamax":
        def init(p):
            return {"m": np.zeros_like(p), "u": np.zeros_like(p)}

        def update(p, g, st, lr, t):
            b1, b2 = hp["beta_1"], hp["beta_2"]
            st["m"] += (g - st["m"]) * (1 - b1)
            st["u"][...] = np.maximum(b2 * st["u"], np.abs(g))
            p -= lr * st["m"] / ((1 - b1 ** t) * (st["u"] + hp["epsilon"]))
    elif kind == "Nadam":
        def init(p):
            return {"m": np.zeros_like(p), "v": np.zeros_like(p), "u_product": 1.0}

        def update(p, g, st, lr, t):
            b1, b2 = hp["beta_1"], hp["beta_2"]
            u_t, u_t1 = b1 * (1 - 0.5 * 0.96 ** t), b1 * (1 - 0.5 * 0.96 ** (t + 1))
            st["u_product"] *= u_t                       # Keras: one product per optimizer, u_1 ... u_t
            up_t, up_t1 = st["u_product"], st["u_product"] * u_t1
            st["m"] += (g - st["m"]) * (1 - b1)
            st["v"] += (g * g - st["v"]) * (1 - b2)
            m_hat = u_t1 * st["m"] / (1 - up_t1) + (1 - u_t) * g / (1 - up_t)
            v_hat = st["v"] / (1 - b2 ** t)
            p -= m_hat * lr / (np.sqrt(v_hat) + hp["epsilon"])
    elif kind == "Lion":
        def init(p):
            return {"m": np.zeros_like(p)}

        def update(p, g, st, lr, t):
            b1, b2 = hp["beta_1"], hp["beta_2"]
            p -= lr * np.sign(st["m"] * b1 + g * (1 - b1))
            st["m"][...] = st["m"] * b2 + g * (1 - b2)
    else:
        raise AssertionError(kind)
    return init, update


def _reference(kind, base_lr, schedule, epochs=1, **overrides):
    hp = {**KERAS_DEFAULTS[kind], "learning_rate": base_lr, **overrides}
    init, update = _keras_rule(kind, hp)
    x, t = _data()
    w, b = np.ones((5, 2)), np.zeros(2)
    states = [init(w), init(b)]
    wd = hp["weight_decay"] or 0.0
    it = 0
    for _ in range(epochs):
        for k in range(8):
            xb, tb = x[k * 8:(k + 1) * 8].astype(np.float64), t[k * 8:(k + 1) * 8]
            err = xb @ w + b - tb
            grads = [xb.T @ err * 2 / err.size, err.sum(0) * 2 / err.size]
            lr = base_lr * 0.5 ** (it / 2) if schedule else base_lr      # ExponentialDecay(base, 2, 0.5)
            for p, g, st in zip((w, b), grads, states):
                p -= p * wd * lr
                update(p, g, st, lr, it + 1)
            it += 1
    return w, b


CASES = {
    # name: (class, learning_rate, schedule?, other arguments)
    "adagrad": ("Adagrad", 0.1, False, {}),
    "adagrad_schedule": ("Adagrad", 0.1, True, {}),
    "adagrad_weight_decay": ("Adagrad", 0.1, False, dict(weight_decay=0.1)),
    "adagrad_args": ("Adagrad", 0.1, False, dict(initial_accumulator_value=0.0, epsilon=1e-3)),
    "adadelta": ("Adadelta", 1.0, False, {}),
    "adadelta_schedule": ("Adadelta", 1.0, True, {}),
    "adadelta_weight_decay": ("Adadelta", 1.0, False, dict(weight_decay=0.1)),
    "adadelta_args": ("Adadelta", 1.0, False, dict(rho=0.8, epsilon=1e-4)),
    "adamax": ("Adamax", 0.05, False, {}),
    "adamax_schedule": ("Adamax", 0.05, True, {}),
    "adamax_weight_decay": ("Adamax", 0.05, False, dict(weight_decay=0.1)),
    "adamax_args": ("Adamax", 0.05, False, dict(beta_1=0.5, beta_2=0.9, epsilon=1e-2)),
    "nadam": ("Nadam", 0.05, False, {}),
    "nadam_schedule": ("Nadam", 0.05, True, {}),
    "nadam_weight_decay": ("Nadam", 0.05, False, dict(weight_decay=0.1)),
    "nadam_args": ("Nadam", 0.05, False, dict(beta_1=0.5, beta_2=0.9, epsilon=1e-2)),
    "lion": ("Lion", 0.01, False, {}),
    "lion_schedule": ("Lion", 0.01, True, {}),
    "lion_weight_decay": ("Lion", 0.01, False, dict(weight_decay=0.1)),
    "lion_args": ("Lion", 0.01, False, dict(beta_1=0.5, beta_2=0.9)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_update_rules_are_keras(case):
    kind, base, schedule, kw = CASES[case]
    lr = keras.optimizers.schedules.ExponentialDecay(base, 2, 0.5) if schedule else base
    model = _model()
    model.compile(optimizer=getattr(keras.optimizers, kind)(lr, **kw), loss="mse")
    x, t = _data()
    model.fit(x, t, batch_size=8, epochs=1, shuffle=False, verbose=0)
    w, b = _reference(kind, base, schedule, **kw)
    assert np.abs(model.get_weights()[0] - 1.0).max() > 1e-3      # the weights did move (tolerance: 2e-6)
    np.testing.assert_allclose(model.get_weights()[0], w, atol=2e-6)
    np.testing.assert_allclose(model.get_weights()[1], b, atol=2e-6)


@pytest.mark.parametrize("kind", sorted(KERAS_DEFAULTS))
def test_defaults_are_keras_and_compile_by_name(kind):
    opt = getattr(keras.optimizers, kind)()
    cfg = opt.get_config()
    for k, v in KERAS_DEFAULTS[kind].items():
        assert cfg[k] == v, (kind, k, cfg[k], v)
    model = _model()
    model.compile(optimizer=kind.lower(), loss="mse")
    assert type(model.optimizer) is type(opt)
    assert type(keras.optimizers.get(kind)) is type(opt)                    # class name spelling too
    x, t = _data()
    model.fit(x, t, batch_size=8, epochs=1, shuffle=False, verbose=0)
    w, b = _reference(kind, KERAS_DEFAULTS[kind]["learning_rate"], False)
    np.testing.assert_allclose(model.get_weights()[0], w, atol=1e-6)
    assert model.optimizer.iterations == 8
    # config round trip (what model.save stores)
    again = keras.optimizers.get(keras.optimizers.serialize(opt))
    assert type(again) is type(opt) and again.get_config() == cfg


@pytest.mark.parametrize("kind,lr,schedule,kw", [
    ("Adagrad", 0.1, False, dict(weight_decay=0.01)),
    ("Adadelta", 1.0, True, {}),
    ("Adamax", 0.05, False, {}),
    ("Nadam", 0.05, True, {}),
    ("Nadam", 0.05, False, dict(weight_decay=0.01, clipnorm=0.5)),
    ("Lion", 0.01, False, dict(beta_2=0.95)),
])
def test_save_and_load_continue_identically(tmp_path, kind, lr, schedule, kw):
    """model.save after 2 epochs, load_model, 1 more epoch == 3 epochs without the break (the
    optimizer's slots, step counts, Nadam's momentum product and the schedule's step are saved)."""
    x, t = _data()

    def make():
        rate = keras.optimizers.schedules.ExponentialDecay(lr, 2, 0.5) if schedule else lr
        model = _model()
        model.compile(optimizer=getattr(keras.optimizers, kind)(rate, **kw), loss="mse")
        return model

    straight = make()
    straight.fit(x, t, batch_size=8, epochs=3, shuffle=False, verbose=0)

    model = make()
    model.fit(x, t, batch_size=8, epochs=2, shuffle=False, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert type(loaded.optimizer) is type(model.optimizer)
    assert loaded.optimizer.get_config() == model.optimizer.get_config()
    assert loaded.optimizer.iterations == 16
    loaded.fit(x, t, batch_size=8, epochs=3, initial_epoch=2, shuffle=False, verbose=0)
    for a, b in zip(loaded.get_weights(), straight.get_weights()):
        np.testing.assert_array_equal(a, b)
    if not kw.get("clipnorm"):       # and both are Keras' rule run for 3 epochs
        w, _ = _reference(kind, lr, schedule, epochs=3, **{k: v for k, v in kw.items()})
        np.testing.assert_allclose(loaded.get_weights()[0], w, atol=3e-6)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(TypeError, match=r"Nadam: unsupported arguments \['beta1'\]"):
        keras.optimizers.Nadam(beta1=0.9)
    with pytest.raises(TypeError, match="Adagrad: unsupported arguments"):
        keras.optimizers.Adagrad(rho=0.9)
    with pytest.raises(ValueError, match="beta_1.*Received: beta_1=0"):
        keras.optimizers.Lion(beta_1=0.0)
    with pytest.raises(ValueError, match="Only one of `clipnorm`, `clipvalue` and `global_clipnorm`"):
        keras.optimizers.Adamax(clipnorm=1.0, clipvalue=1.0)
    with pytest.raises(ValueError, match="unknown optimizer 'nadamx'.*'nadam'"):
        _model().compile(optimizer="nadamx", loss="mse")
    with pytest.raises(ValueError, match="initial_accumulator_value"):       # sqrt of a negative sum
        keras.optimizers.Adagrad(initial_accumulator_value=-1.0)


def test_clipping_and_apply_gradients():
    """clipvalue and the custom-loop apply_gradients path work with the new optimizers too."""
    x, t = _data()
    model = _model()
    model.compile(optimizer=keras.optimizers.Adagrad(0.1, clipvalue=1e-3), loss="mse")
    model.fit(x[:8], t[:8], batch_size=8, epochs=1, shuffle=False, verbose=0)
    # one Adagrad step with every gradient entry clipped to +-c: each weight moves lr c / sqrt(0.1 + c^2 + eps)
    moved = np.abs(model.get_weights()[0] - 1.0)
    np.testing.assert_allclose(moved, 0.1 * 1e-3 / np.sqrt(0.1 + 1e-6 + 1e-7), rtol=1e-4)

    model = _model()
    opt = keras.optimizers.Lion(0.01)
    grads = [np.full((5, 2), 0.5, np.float32), np.full(2, -0.5, np.float32)]
    opt.apply_gradients(zip(grads, model.trainable_weights))
    np.testing.assert_allclose(model.get_weights()[0], 1.0 - 0.01, atol=1e-7)
    np.testing.assert_allclose(model.get_weights()[1], 0.01, atol=1e-7)
    assert opt.iterations == 1
