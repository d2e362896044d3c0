"""Models as layers (Sequential / functional models nested in either kind), TimeDistributed, and
compile(weighted_metrics=...), with Keras 3 semantics."""
import numpy as np
import pytest

import engine
from engine import keras, serialization
from engine.keras import layers

pytestmark = pytest.mark.timeout(120)


def _x(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _right_padded(n=6, t=7, vocab=20, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.zeros((n, t), np.int64)
    for i in range(n):
        k = int(rng.integers(2, t))
        ids[i, :k] = rng.integers(1, vocab, size=k)
    return ids


# ---------------------------------------------------------------- models as layers
def test_sequential_feature_extractor_in_a_functional_model_equals_its_layers_by_hand():
    keras.utils.set_random_seed(0)
    features = keras.Sequential([keras.Input(shape=(6,)), layers.Dense(5, activation="relu"), layers.Dense(4)],
                                name="features")
    inp = keras.Input(shape=(6,))
    h = features(inp)
    assert h.shape == (None, 4)
    head = layers.Dense(3, activation="softmax", name="head")
    model = keras.Model(inp, head(h))
    assert [layer.name for layer in model.layers][1:] == ["features", "head"]
    assert model.get_layer("features") is features
    x = _x((10, 6))
    d1, d2 = features.layers
    by_hand = head(d2(d1(x))).numpy()
    np.testing.assert_allclose(model.predict(x, verbose=0), by_hand, rtol=1e-6, atol=1e-7)
    # the nested softmax is fused with the loss, not applied twice
    model.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    y = np.arange(10) % 3
    assert model.evaluate(x, y, verbose=0) == pytest.approx(float(-np.log(by_hand[np.arange(10), y]).mean()),
                                                            rel=1e-5)


def test_functional_inside_sequential_inside_functional():
    keras.utils.set_random_seed(1)
    i = keras.Input(shape=(4,), name="block_in")
    block = keras.Model(i, layers.Add()([layers.Dense(4, name="skip_dense")(i), i]), name="block")
    stack = keras.Sequential([block, layers.Dense(3, activation="tanh", name="stack_out")], name="stack")
    assert stack.input_shape == (None, 4) and stack.output_shape == (None, 3)
    inp = keras.Input(shape=(4,))
    model = keras.Model(inp, layers.Dense(2, name="top")(stack(inp)))
    x = _x((5, 4), seed=1)
    dense = block.get_layer("skip_dense")
    by_hand = model.get_layer("top")(stack.get_layer("stack_out")(dense(x).numpy() + x)).numpy()
    np.testing.assert_allclose(model.predict(x, verbose=0), by_hand, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(stack.predict(x, verbose=0), stack(x).numpy(), rtol=1e-6)
    # weights in Keras' depth-first order; set_weights on a fresh copy gives the same model
    assert [w.shape for w in model.get_weights()] == [(4, 4), (4,), (4, 3), (3,), (3, 2), (2,)]
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    np.testing.assert_array_equal(copy.predict(x, verbose=0), model.predict(x, verbose=0))


def test_siamese_branches_share_one_weight_set_and_sum_their_gradients():
    keras.utils.set_random_seed(2)

    def encoder(name):
        i = keras.Input(shape=(5,))
        return keras.Model(i, layers.Dense(3, activation="tanh")(layers.Dense(4, activation="relu")(i)), name=name)

    enc = encoder("encoder")
    a, b = keras.Input(shape=(5,), name="a"), keras.Input(shape=(5,), name="b")
    head = layers.Dense(1, name="head")
    siamese = keras.Model([a, b], head(layers.Subtract()([enc(a), enc(b)])))
    assert [layer.name for layer in siamese.layers] == ["a", "b", "encoder", "subtract", "head"]
    assert len(siamese.weights) == len(enc.weights) + 2
    assert all(any(w is v for v in siamese.weights) for w in enc.weights)
    xa, xb = _x((6, 5), 3), _x((6, 5), 4)
    # the same computation with two independent copies of the encoder
    ea, eb = encoder("copy_a"), encoder("copy_b")
    ea.set_weights(enc.get_weights())
    eb.set_weights(enc.get_weights())
    proj = _x((6, 1), 5)
    shared = (siamese([xa, xb]) * engine.tensor(proj)).sum()
    separate = (head(ea(xa) - eb(xb)) * engine.tensor(proj)).sum()
    assert float(shared.item()) == pytest.approx(float(separate.item()), rel=1e-6)
    for w in siamese.weights + ea.weights + eb.weights:
        w.grad = None
    shared.backward()
    separate.backward()
    for w, wa, wb in zip(enc.weights, ea.weights, eb.weights):
        np.testing.assert_allclose(w.grad.numpy(), wa.grad.numpy() + wb.grad.numpy(), rtol=1e-5, atol=1e-6)
    # and one training step moves the single shared set
    siamese.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = enc.get_weights()
    siamese.fit([xa, xb], np.ones((6, 1), np.float32), epochs=1, verbose=0)
    assert all(not np.array_equal(w0, w1) for w0, w1 in zip(before, enc.get_weights()))


def test_frozen_sub_model_keeps_its_weights_while_the_head_trains():
    keras.utils.set_random_seed(3)
    base = keras.Sequential([keras.Input(shape=(8,)), layers.Dense(6, activation="relu"),
                             layers.BatchNormalization(), layers.Dense(4, activation="relu")], name="base")
    base.trainable = False
    model = keras.Sequential([keras.Input(shape=(8,)), base, layers.Dense(2, activation="softmax", name="head")])
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    base_params, head_params = 8 * 6 + 6 + 4 * 6 + 6 * 4 + 4, 4 * 2 + 2
    assert any(line.split()[:2] == ["base", "(Sequential)"] and line.split()[-1] == f"{base_params:,}"
               for line in lines)
    assert f"Total params: {base_params + head_params:,}" in text
    assert f"Trainable params: {head_params:,}" in text
    assert f"Non-trainable params: {base_params:,}" in text
    assert len(model.trainable_weights) == 2 and len(model.non_trainable_weights) == len(base.weights) == 8
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    frozen, head = base.get_weights(), model.get_layer("head").get_weights()
    x = _x((64, 8), 6)
    h = model.fit(x, (x[:, 0] > 0).astype(np.int64), epochs=3, batch_size=16, verbose=0)
    assert h.history["loss"][-1] < h.history["loss"][0]
    for w0, w1 in zip(frozen, base.get_weights()):           # BatchNormalization's moving stats too
        np.testing.assert_array_equal(w0, w1)
    assert all(not np.array_equal(w0, w1) for w0, w1 in zip(head, model.get_layer("head").get_weights()))


def test_nested_models_save_and_load_bit_identically(tmp_path):
    keras.utils.set_random_seed(4)
    # two sub-models whose layers have the same names: the weights are stored under the sub-model's name
    left = keras.Sequential([keras.Input(shape=(5,)), layers.Dense(4, activation="relu", name="dense")], name="left")
    i = keras.Input(shape=(5,), name="right_in")
    right = keras.Model(i, layers.Dense(4, name="dense")(i), name="right")
    inp = keras.Input(shape=(5,))
    merged = layers.Concatenate()([left(inp), right(inp), right(inp)])
    model = keras.Model(inp, layers.Dense(2, activation="softmax", name="out")(merged))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = _x((32, 5), 7), np.arange(32) % 2
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "nested.keras"
    model.save(path)
    saved = serialization.load(str(path))
    specs = {spec["config"]["name"]: spec["class_name"] for spec in saved["config"]["layers"]}
    assert specs["left"] == "Sequential" and specs["right"] == "Functional"
    assert set(saved["weights"]) == {"left", "right", "out"}
    assert set(saved["weights"]["left"]["dense"]) == {"kernel", "bias"}
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.evaluate(x, y, verbose=0) == model.evaluate(x, y, verbose=0)
    assert isinstance(loaded.get_layer("left"), keras.Sequential)
    h0 = model.fit(x, y, epochs=1, shuffle=False, verbose=0).history["loss"]
    assert loaded.fit(x, y, epochs=1, shuffle=False, verbose=0).history["loss"] == h0    # optimizer state too
    # save_weights / load_weights into a fresh copy
    model.save_weights(tmp_path / "w.keras")
    copy = keras.models.clone_model(model)
    copy.load_weights(tmp_path / "w.keras")
    np.testing.assert_array_equal(copy.predict(x, verbose=0), model.predict(x, verbose=0))


def test_files_that_kept_nested_layers_at_the_top_level_still_load(tmp_path):
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input(shape=(3,)), keras.Sequential([layers.Dense(4, name="inner")], name="sub"),
                              layers.Dense(2, name="outer")])
    path = tmp_path / "old.keras"
    model.save(path)
    obj = serialization.load(str(path))
    obj["weights"] = {"inner": obj["weights"]["sub"]["inner"], "outer": obj["weights"]["outer"]}   # the old layout
    serialization.save(obj, str(path))
    x = _x((4, 3), 8)
    np.testing.assert_array_equal(keras.models.load_model(path).predict(x, verbose=0), model.predict(x, verbose=0))


def test_a_mask_passes_through_nested_models():
    keras.utils.set_random_seed(6)
    ids = _right_padded(seed=6)
    flat = keras.Sequential([keras.Input(shape=(7,)), layers.Embedding(20, 4, mask_zero=True),
                             layers.LSTM(3, return_sequences=True), layers.GRU(3), layers.Dense(2)])
    emb, lstm, gru, dense = flat.layers
    seq_inner = keras.Sequential([lstm], name="seq_inner")
    gi = keras.Input(shape=(7, 3))
    fun_inner = keras.Model(gi, gru(gi), name="fun_inner")
    inp = keras.Input(shape=(7,))
    nested = keras.Model(inp, dense(fun_inner(seq_inner(emb(inp)))))
    expected = flat.predict(ids, verbose=0)
    # without the mask, the recurrent layers would run over the padding and give other outputs
    unmasked = dense(gru(lstm(emb(ids).detach()))).numpy()
    assert np.abs(unmasked - expected).max() > 1e-4
    np.testing.assert_allclose(nested.predict(ids, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_nesting_misuse_gives_one_clear_error():
    i = keras.Input(shape=(5,))
    enc = keras.Model(i, layers.Dense(3)(i), name="enc")
    with pytest.raises(layers.InputShapeError, match=r'model "enc" \(Functional\) is used as a layer on inputs of '
                                                     r"shape \(None, 6\), but it was built for shape \(None, 5\).*"
                                                     r"keras.Input\(shape=\(6,\)\)"):
        enc(keras.Input(shape=(6,)))
    seq = keras.Sequential([keras.Input(shape=(5,)), layers.Dense(2)], name="seq")
    with pytest.raises(layers.InputShapeError, match=r'model "seq" \(Sequential\).*\(None, 7\).*\(None, 5\)'):
        keras.Sequential([keras.Input(shape=(7,)), seq])
    two = keras.Model(i, [layers.Dense(1, name="p")(i), layers.Dense(1, name="q")(i)], name="two")
    with pytest.raises(ValueError, match=r'model "two" has 1 input\(s\) and 2 output\(s\); every layer of a '
                                         r"Sequential model takes one tensor"):
        keras.Sequential([keras.Input(shape=(5,)), two])
    one = keras.Model(two.inputs, two.outputs[1])          # one output of it shares the weights
    out = keras.Model(i, one(i))
    assert out.count_params() == 6
    assert keras.Sequential([keras.Input(shape=(5,)), one]).count_params() == 6


# ---------------------------------------------------------------- TimeDistributed
def test_time_distributed_equals_a_loop_over_time():
    keras.utils.set_random_seed(7)
    video = _x((2, 3, 6, 6, 1), 9)
    td = layers.TimeDistributed(layers.Conv2D(4, 3, activation="relu"))
    out = td(video).numpy()
    assert out.shape == (2, 3, 4, 4, 4) and td.output_shape_built == (None, 3, 4, 4, 4)
    loop = np.stack([td.layer(video[:, t]).numpy() for t in range(3)], axis=1)
    np.testing.assert_allclose(out, loop, rtol=1e-6, atol=1e-6)
    assert td.weights == td.layer.weights and td.count_params() == 3 * 3 * 4 + 4
    seq = _x((4, 5, 3), 10)
    dense = layers.TimeDistributed(layers.Dense(2, activation="tanh"))
    np.testing.assert_allclose(dense(seq).numpy(), np.stack([dense.layer(seq[:, t]).numpy() for t in range(5)], 1),
                               rtol=1e-6, atol=1e-7)
    # a nested model as the wrapped layer
    step_model = keras.Sequential([keras.Input(shape=(3,)), layers.Dense(4, activation="relu"), layers.Dense(2)])
    per_step = layers.TimeDistributed(step_model)(seq).numpy()
    np.testing.assert_allclose(per_step, np.stack([step_model(seq[:, t]).numpy() for t in range(5)], 1),
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("inner,shape", [("conv", (2, 3, 4, 4, 2)), ("dense", (2, 3, 4))])
def test_time_distributed_gradients_in_float64(inner, shape):
    layer = layers.Conv2D(2, 2, activation="tanh") if inner == "conv" else layers.Dense(3, activation="tanh")
    td = layers.TimeDistributed(layer)
    td(np.zeros(shape, np.float32))
    rng = np.random.default_rng(11)
    x = engine.tensor(rng.normal(size=shape), dtype="float64", requires_grad=True)
    k = engine.tensor(0.5 * rng.normal(size=layer.kernel.shape), dtype="float64", requires_grad=True)
    b = engine.tensor(0.1 * rng.normal(size=layer.bias.shape), dtype="float64", requires_grad=True)

    def fn(x, k, b):
        layer._parameters["kernel"], layer._parameters["bias"] = k, b
        return td.call(x, training=True)

    engine.gradcheck(fn, [x, k, b])


def _video_data(n=48, seed=12):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, size=n)
    x = rng.normal(scale=0.3, size=(n, 3, 6, 6, 1)).astype(np.float32)
    x[y == 1, :, 1:3, 1:3] += 1.0            # a bright patch in every frame of class 1
    return x, y


def test_time_distributed_conv_model_trains_and_round_trips(tmp_path):
    keras.utils.set_random_seed(8)
    x, y = _video_data()
    model = keras.Sequential([keras.Input(shape=(3, 6, 6, 1)),
                              layers.TimeDistributed(layers.Conv2D(4, 3, activation="relu")),
                              layers.TimeDistributed(layers.MaxPooling2D(2)),
                              layers.TimeDistributed(layers.Flatten()), layers.Flatten(),
                              layers.Dense(2, activation="softmax")])
    assert model.output_shape == (None, 2) and model.layers[2].output_shape_built == (None, 3, 16)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    losses = model.fit(x, y, epochs=5, batch_size=16, verbose=0).history["loss"]
    assert losses[-1] < losses[0] and all(b < a for a, b in zip(losses, losses[1:]))
    path = tmp_path / "td.keras"
    model.save(path)
    spec = serialization.load(str(path))["config"]["layers"][0]
    assert spec["class_name"] == "TimeDistributed" and spec["config"]["layer"]["class_name"] == "Conv2D"
    loaded = keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert isinstance(loaded.layers[0], layers.TimeDistributed)


def test_time_distributed_in_a_functional_model_passes_the_mask_and_fuses_the_softmax():
    keras.utils.set_random_seed(9)
    ids = _right_padded(seed=9)
    inp = keras.Input(shape=(7,))
    emb = layers.Embedding(20, 4, mask_zero=True)(inp)
    tagged = layers.TimeDistributed(layers.Dense(3, activation="softmax"), name="tags")(emb)
    model = keras.Model(inp, tagged)
    td = model.get_layer("tags")
    out = td(model.layers[1](ids))
    np.testing.assert_array_equal(out._keras_mask, ids != 0)          # the mask passes on
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    y = np.random.default_rng(9).integers(0, 3, size=ids.shape)
    p = model.predict(ids, verbose=0)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)             # softmax applied once
    picked = np.take_along_axis(p, y[..., None], -1)[..., 0]
    logs = model.evaluate(ids, y, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(float(-np.log(picked[ids != 0]).mean()), rel=1e-5)


def test_time_distributed_misuse_gives_one_clear_error():
    with pytest.raises(layers.InputShapeError, match=r'"time_distributed_x" \(TimeDistributed\) applies "d" \(Dense\) '
                                                     r"to every time step.*\(2, 5\), which has no time axis"):
        layers.TimeDistributed(layers.Dense(3, name="d"), name="time_distributed_x")(np.ones((2, 5)))
    with pytest.raises(layers.InputShapeError, match=r"TimeDistributed.*has no time axis"):
        keras.Sequential([keras.Input(shape=(5,)), layers.TimeDistributed(layers.Dense(3))])
    with pytest.raises(layers.InputShapeError, match=r'gives "c" one time step of its input \(2, 5, 6, 6\) at a time, '
                                                     r"of shape \(None, 6, 6\)"):
        layers.TimeDistributed(layers.Conv2D(2, 3, name="c"))(np.ones((2, 5, 6, 6)))
    with pytest.raises(TypeError, match="TimeDistributed wraps a keras layer"):
        layers.TimeDistributed("dense")


# ---------------------------------------------------------------- weighted_metrics
def _regression(seed=13):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(1)])
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.normal(size=(20, 1)).astype(np.float32)
    w = rng.uniform(0.0, 3.0, size=20).astype(np.float32)
    return model, x, y, w


def test_weighted_metrics_equal_a_hand_computation_and_plain_metrics_are_unchanged():
    model, x, y, w = _regression()
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"])
    plain = model.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    model.compile(optimizer="sgd", loss="mse", metrics=["mae"], weighted_metrics=["mae", "mse"])
    logs = model.evaluate(x, y, sample_weight=w, batch_size=6, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "mae", "weighted_mae", "mse"]            # Keras 3's names
    err = model.predict(x, verbose=0) - y
    assert logs["mae"] == pytest.approx(plain["mae"], rel=1e-6)
    assert logs["mae"] == pytest.approx(float(np.abs(err).mean()), rel=1e-5)
    assert logs["weighted_mae"] == pytest.approx(float((w * np.abs(err[:, 0])).sum() / w.sum()), rel=1e-5)
    assert logs["mse"] == pytest.approx(float((w * err[:, 0] ** 2).sum() / w.sum()), rel=1e-5)
    assert logs["loss"] == pytest.approx(plain["loss"], rel=1e-6)
    # without sample weights a weighted metric is the plain one
    no_w = model.evaluate(x, y, verbose=0, return_dict=True)
    assert no_w["weighted_mae"] == pytest.approx(no_w["mae"], rel=1e-6)


def test_weighted_metrics_take_class_weight_in_fit_and_survive_save_load(tmp_path):
    keras.utils.set_random_seed(14)
    rng = np.random.default_rng(14)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=30)
    model = keras.Sequential([keras.Input(shape=(4,)), layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], weighted_metrics=["accuracy"])
    cw = {0: 1.0, 1: 4.0, 2: 0.5}
    h = model.fit(x, y, epochs=1, batch_size=8, class_weight=cw, verbose=0).history
    hit = model.predict(x, verbose=0).argmax(-1) == y
    w = np.array([cw[c] for c in y])
    assert h["accuracy"][0] == pytest.approx(float(hit.mean()), rel=1e-6)
    assert h["weighted_accuracy"][0] == pytest.approx(float((w * hit).sum() / w.sum()), rel=1e-6)
    model.save(tmp_path / "wm.keras")
    loaded = keras.models.load_model(tmp_path / "wm.keras")
    sw = rng.uniform(0, 2, size=30)
    assert loaded.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True) == \
        model.evaluate(x, y, sample_weight=sw, verbose=0, return_dict=True)


def test_weighted_metrics_on_a_masked_sequence_output():
    """Keras 3: the mask times the sample's weight weights each step; per sample the mean over the
    steps, then sum(value) / sum(weight) over the samples."""
    keras.utils.set_random_seed(15)
    ids = _right_padded(seed=15)
    model = keras.Sequential([keras.Input(shape=(7,)), layers.Embedding(20, 3, mask_zero=True), layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", weighted_metrics=["mae"])
    y = np.random.default_rng(15).normal(size=(6, 7, 1)).astype(np.float32)
    w = np.array([1.0, 2.0, 0.0, 0.5, 3.0, 1.0], np.float32)
    logs = model.evaluate(ids, y, sample_weight=w, verbose=0, return_dict=True)
    e = np.abs(model.predict(ids, verbose=0) - y)[..., 0]
    m = (ids != 0).astype(np.float64)
    per_step_w = w[:, None] * m
    expected = (e * per_step_w).mean(axis=1).sum() / per_step_w.mean(axis=1).sum()
    assert logs["mae"] == pytest.approx(float(expected), rel=1e-5)


def test_weighted_metrics_of_a_model_with_several_outputs():
    keras.utils.set_random_seed(16)
    inp = keras.Input(shape=(4,))
    model = keras.Model(inp, [layers.Dense(1, name="p")(inp), layers.Dense(1, name="q")(inp)])
    model.compile(optimizer="sgd", loss="mse", metrics={"p": ["mae"]}, weighted_metrics=["mae"])
    rng = np.random.default_rng(16)
    x = rng.normal(size=(12, 4)).astype(np.float32)
    yp, yq = rng.normal(size=(12, 1)).astype(np.float32), rng.normal(size=(12, 1)).astype(np.float32)
    w = rng.uniform(0, 2, size=12).astype(np.float32)
    logs = model.evaluate(x, [yp, yq], sample_weight=w, verbose=0, return_dict=True)
    assert list(logs) == ["loss", "p_loss", "q_loss", "p_mae", "p_weighted_mae", "q_mae"]
    pp, pq = model.predict(x, verbose=0)
    assert logs["p_mae"] == pytest.approx(float(np.abs(pp - yp).mean()), rel=1e-5)
    assert logs["p_weighted_mae"] == pytest.approx(float((w * np.abs(pp - yp)[:, 0]).sum() / w.sum()), rel=1e-5)
    assert logs["q_mae"] == pytest.approx(float((w * np.abs(pq - yq)[:, 0]).sum() / w.sum()), rel=1e-5)


class _Doubler(layers.Layer):
    """A user layer holding another layer, with Keras' get_config / from_config for it."""

    def __init__(self, inner, **kwargs):
        super().__init__(**kwargs)
        self.inner = inner

    def call(self, x):
        return self.inner(x) * 2

    def get_config(self):
        return {**super().get_config(), "inner": layers.serialize(self.inner)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(layers.deserialize(config.pop("inner")), **config)


def test_a_layer_used_directly_and_inside_a_user_layer_counts_and_trains_once(tmp_path):
    """Keras tracks weights by object: reached twice, a layer's weights are listed, counted, set and
    updated once (an optimizer given them twice would refuse or step them twice)."""
    shared = layers.Dense(4, name="shared")
    inp = keras.Input(shape=(4,))
    model = keras.Model(inp, _Doubler(shared)(shared(inp)))
    assert len(model.weights) == len(model.trainable_weights) == 2 and model.count_params() == 20
    x = np.random.default_rng(0).random((8, 4), dtype=np.float32)
    model.compile(optimizer="sgd", loss="mse")
    before = shared.get_weights()
    model.train_on_batch(x, x)
    by_hand = keras.Model(inp, _Doubler(shared)(shared(inp)))          # the same weights, after the step
    np.testing.assert_array_equal(by_hand.predict(x, verbose=0), model.predict(x, verbose=0))
    assert all(not np.array_equal(a, b) for a, b in zip(before, shared.get_weights()))
    zeros = [np.zeros_like(w) for w in model.get_weights()]
    model.set_weights(zeros)
    assert all(not w.any() for w in shared.get_weights())
    model.set_weights([w + 1 for w in zeros])
    path = str(tmp_path / "m.keras")
    model.save(path)
    # the config cannot say that the two are one layer (Keras' neither): the loaded model holds two
    # copies with the saved values, so it predicts the same but has its own weight count
    with pytest.warns(UserWarning, match="optimizer state was not restored"):
        loaded = keras.models.load_model(path, custom_objects={"_Doubler": _Doubler})
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.count_params() == 40


def test_a_user_layer_that_cannot_be_rebuilt_says_how_to_fix_it(tmp_path):
    class Holder(layers.Layer):
        def __init__(self, inner, **kwargs):
            super().__init__(**kwargs)
            self.inner = inner

        def call(self, x):
            return self.inner(x)

    inp = keras.Input(shape=(3,))
    model = keras.Model(inp, Holder(layers.Dense(2))(inp))
    path = str(tmp_path / "m.keras")
    model.save(path)
    with pytest.raises(TypeError, match=r"Holder.from_config.*get_config\(\).*keras.layers.serialize"):
        keras.models.load_model(path, custom_objects={"Holder": Holder})


def test_a_model_with_several_outputs_nests_as_a_layer_with_several_outputs(tmp_path):
    """Keras: a sub-model with two outputs called on a KerasTensor gives two tensors; each can feed
    other layers or be an output of the outer model; training, summary and save/load work through it."""
    i = keras.Input(shape=(6,))
    h = layers.Dense(8, activation="relu")(i)
    sub = keras.Model(i, [layers.Dense(3, name="a")(h), layers.Dense(2, name="b")(h)], name="sub")
    x = keras.Input(shape=(6,))
    p, q = sub(x)
    assert (p.shape, q.shape) == ((None, 3), (None, 2))
    out = layers.Dense(4, activation="softmax", name="out")(layers.Concatenate()([p, q]))
    model = keras.Model(x, [out, q])
    data = np.random.default_rng(0).random((32, 6), dtype=np.float32)
    pred_out, pred_q = model.predict(data, verbose=0)
    sub_p, sub_q = sub(data)
    np.testing.assert_allclose(pred_q, sub_q.numpy(), rtol=1e-6)
    head = model.get_layer("out")
    by_hand = head(np.concatenate([sub_p.numpy(), sub_q.numpy()], axis=1)).numpy()
    np.testing.assert_allclose(pred_out, by_hand, rtol=1e-5, atol=1e-7)
    assert model.count_params() == sub.count_params() + head.count_params() == 125
    model.compile(optimizer="adam", loss=["sparse_categorical_crossentropy", "mse"])
    targets = [np.random.default_rng(1).integers(0, 4, 32), np.random.default_rng(2).random((32, 2))]
    before = sub.get_weights()
    losses = model.fit(data, targets, epochs=3, verbose=0).history["loss"]
    assert losses[-1] < losses[0]
    assert all(not np.array_equal(a, b) for a, b in zip(before, sub.get_weights()))   # trained through it
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for got, want in zip(loaded.predict(data, verbose=0), model.predict(data, verbose=0)):
        np.testing.assert_array_equal(got, want)


def test_weighted_metrics_for_unknown_outputs_name_the_argument():
    i = keras.Input(shape=(3,))
    model = keras.Model(i, [layers.Dense(1, name="a")(i), layers.Dense(1, name="b")(i)])
    with pytest.raises(ValueError, match=r"compile\(weighted_metrics=\.\.\.\): \['c'\] are not outputs"):
        model.compile(optimizer="sgd", loss="mse", weighted_metrics={"c": ["mae"]})
