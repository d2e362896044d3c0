"""Keras 3 masking: Embedding(mask_zero=True) and Masking make a mask; LSTM / GRU / SimpleRNN,
Bidirectional, GlobalAveragePooling1D, BatchNormalization and the loss / metrics consume it; Dense,
Dropout, Activation and the merges pass it on; other layers drop it with Keras' warning."""
import warnings

import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers

RECURRENT = [layers.LSTM, layers.GRU, layers.SimpleRNN]


def _sig(v):
    return 1 / (1 + np.exp(-v))


def _lstm_step(kernel, recurrent, bias):
    u = recurrent.shape[0]

    def step(x, states):
        h, c = states
        z = x @ kernel + h @ recurrent + bias
        c = _sig(z[:, u:2 * u]) * c + _sig(z[:, :u]) * np.tanh(z[:, 2 * u:3 * u])
        h = _sig(z[:, 3 * u:]) * np.tanh(c)
        return h, [h, c]
    return step


def _gru_step(kernel, recurrent, bias):
    u = recurrent.shape[0]

    def step(x, states):
        h = states[0]
        xw, hu = x @ kernel + bias[0], h @ recurrent + bias[1]
        z, r = _sig(xw[:, :u] + hu[:, :u]), _sig(xw[:, u:2 * u] + hu[:, u:2 * u])
        h = z * h + (1 - z) * np.tanh(xw[:, 2 * u:] + r * hu[:, 2 * u:])
        return h, [h]
    return step


def _simple_rnn_step(kernel, recurrent, bias):
    def step(x, states):
        h = np.tanh(x @ kernel + bias + states[0] @ recurrent)
        return h, [h]
    return step


_STEPS = {layers.LSTM: (_lstm_step, 2), layers.GRU: (_gru_step, 1), layers.SimpleRNN: (_simple_rnn_step, 1)}


def _keras_masked_rnn(cls, weights, x, mask, return_sequences, go_backwards, zero_output=False):
    """keras.src.backend.tensorflow.rnn.rnn with a mask: a masked step keeps the states and outputs the
    previous output (zeros with zero_output_for_mask); states and the first 'previous output' are 0."""
    make, n_states = _STEPS[cls]
    step = make(*[w.astype(np.float64) for w in weights])
    n, t, _ = x.shape
    u = weights[1].shape[0]
    states = [np.zeros((n, u)) for _ in range(n_states)]
    prev = np.zeros((n, u))
    xs, ms = (x[:, ::-1], mask[:, ::-1]) if go_backwards else (x, mask)
    outs = []
    for s in range(t):
        out, new = step(xs[:, s].astype(np.float64), states)
        keep = ms[:, s][:, None]
        prev = np.where(keep, out, 0.0 if zero_output else prev)
        states = [np.where(keep, a, b) for a, b in zip(new, states)]
        outs.append(prev)
    seq = np.stack(outs, axis=1)
    return seq if return_sequences else seq[:, -1]


def _random_layer(cls, seed=0, units=5, features=3, **kwargs):
    keras.utils.set_random_seed(seed)
    layer = cls(units, **kwargs)
    layer._build_for((None, None, features))
    rng = np.random.default_rng(seed)
    layer.set_weights([w + rng.normal(scale=0.2, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


# ---------------------------------------------------------------- the recurrence under a mask
@pytest.mark.parametrize("cls", RECURRENT)
@pytest.mark.parametrize("return_sequences,go_backwards,zero_output",
                         [(False, False, False), (True, False, False), (False, True, False), (True, True, False),
                          (True, False, True), (False, True, True)])
def test_masked_recurrence_matches_keras(cls, return_sequences, go_backwards, zero_output):
    """Any mask pattern (holes in the middle too), including a fully masked sample."""
    layer = _random_layer(cls, return_sequences=return_sequences, go_backwards=go_backwards,
                          zero_output_for_mask=zero_output)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 7, 3)).astype(np.float32)
    mask = rng.random((4, 7)) > 0.4
    mask[0] = False
    want = _keras_masked_rnn(cls, layer.get_weights(), x, mask, return_sequences, go_backwards, zero_output)
    np.testing.assert_allclose(layer(x, mask=mask).numpy(), want, rtol=1e-5, atol=1e-6)


def _embedding(vocab=20, dim=4):
    """Embedding(mask_zero=True) built for any sequence length, so the same table embeds the padded
    batch and each sequence alone."""
    emb = layers.Embedding(vocab, dim, mask_zero=True)
    emb._build_for((None, None))
    return emb


def _padded(seqs, t, side):
    out = np.zeros((len(seqs), t), dtype=np.int64)
    for i, s in enumerate(seqs):
        if side == "post":
            out[i, :len(s)] = s
        else:
            out[i, t - len(s):] = s
    return out


def _ragged(seed=2, n=5, t=8, vocab=20):
    rng = np.random.default_rng(seed)
    return [rng.integers(1, vocab, size=rng.integers(1, t + 1)) for _ in range(n)]


@pytest.mark.parametrize("cls", RECURRENT)
@pytest.mark.parametrize("go_backwards", [False, True])
@pytest.mark.parametrize("side", ["pre", "post"])
def test_padding_changes_nothing(cls, go_backwards, side):
    """Left- or right-padded under Embedding(mask_zero=True): the final state and every real step's
    output are those of the sequence run alone, unpadded; so are the gradients of a loss on the
    real steps' outputs."""
    keras.utils.set_random_seed(3)
    emb = _embedding()
    rnn = _random_layer(cls, seed=3, features=4, return_sequences=True, go_backwards=go_backwards)
    seqs = _ragged()
    ids = _padded(seqs, 8, side)
    full = rnn(emb(ids))
    real_out = (ids != 0)[:, ::-1] if go_backwards else ids != 0     # outputs come in processing order
    (full * full * engine.tensor(real_out[..., None].astype(np.float32))).sum().backward()
    grads = [w.grad.numpy().copy() for w in rnn.weights]
    alone_grads = [np.zeros_like(g) for g in grads]
    for i, s in enumerate(seqs):
        for w in rnn.weights:
            w.grad = None
        alone = rnn(emb(s[None]))                           # no padding, no mask
        (alone * alone).sum().backward()
        for acc, w in zip(alone_grads, rnn.weights):
            acc += w.grad.numpy()
        steps = np.flatnonzero(real_out[i])
        np.testing.assert_allclose(full.numpy()[i, steps], alone.numpy()[0], rtol=1e-5, atol=1e-6)
        last_real = steps.max()
        assert np.all(full.numpy()[i, last_real:] == full.numpy()[i, last_real])   # held after the end
        assert not full.numpy()[i, :steps.min()].any()                             # zeros before the start
    for g, want in zip(grads, alone_grads):
        np.testing.assert_allclose(g, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", RECURRENT)
def test_masked_gradients_match_finite_differences(cls):
    layer = _random_layer(cls, seed=4)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(3, 6, 3)).astype(np.float32)
    mask = rng.random((3, 6)) > 0.3
    xt = engine.tensor(x, requires_grad=True)
    out = layer(xt, mask=mask)
    (out * out).sum().backward()
    weights = [w.astype(np.float64) for w in layer.get_weights()]

    def f(ws, xx=x):
        h = _keras_masked_rnn(cls, ws, xx, mask, False, False)
        return float((h * h).sum())
    eps = 1e-4
    for which, param in enumerate(layer.weights):
        idx = tuple(i // 2 for i in param.shape)
        up = [w.copy() for w in weights]
        up[which][idx] += eps
        down = [w.copy() for w in weights]
        down[which][idx] -= eps
        assert float(param.grad.numpy()[idx]) == pytest.approx((f(up) - f(down)) / (2 * eps), rel=2e-3, abs=1e-5)
    assert not xt.grad.numpy()[~mask].any()                 # masked steps get no gradient


# ---------------------------------------------------------------- layers that make, pass and consume masks
def test_masking_layer_zeroes_and_masks_the_padded_steps():
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 6, 2)).astype(np.float32)
    x[0, 4:] = 0.0
    x[1, :2] = 0.0
    m = layers.Masking(mask_value=0.0)
    y = m(x)
    np.testing.assert_array_equal(y._keras_mask, np.any(x != 0, axis=-1))
    np.testing.assert_array_equal(y.numpy(), x)
    x2 = x.copy()
    x2[2, 3] = -1.0
    y2 = layers.Masking(mask_value=-1.0)(x2)
    assert not y2._keras_mask[2, 3] and not y2.numpy()[2, 3].any()        # Keras zeroes masked steps
    lstm = _random_layer(layers.LSTM, seed=5, features=2)
    model = keras.Sequential([keras.Input(shape=(6, 2)), layers.Masking(), lstm])
    np.testing.assert_allclose(model.predict(x[:1], verbose=0), lstm(x[:1, :4]).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x[1:2], verbose=0), lstm(x[1:2, 2:]).numpy(), rtol=1e-5, atol=1e-6)


def test_dense_dropout_activation_pass_the_mask_on():
    keras.utils.set_random_seed(6)
    ids = _padded(_ragged(seed=6), 8, "post")
    model = keras.Sequential([keras.Input(shape=(None,)), layers.Embedding(20, 4, mask_zero=True), layers.Dense(6),
                              layers.Dropout(0.5), layers.Activation("relu"), layers.LSTM(3)])
    emb, dense, _, act, lstm = model.layers
    with warnings.catch_warnings():
        warnings.simplefilter("error")                       # nothing drops the mask
        got = model.predict(ids, verbose=0)
    for i, row in enumerate(ids):
        real = row[row != 0][None]
        np.testing.assert_allclose(got[i], lstm(act(dense(emb(real)))).numpy()[0], rtol=1e-5, atol=1e-6)


def test_eager_calls_carry_the_mask_on_the_tensor():
    keras.utils.set_random_seed(7)
    emb, gru = _embedding(), layers.GRU(3)
    ids = _padded(_ragged(seed=7, n=2), 8, "post")
    h = emb(ids)
    np.testing.assert_array_equal(h._keras_mask, ids != 0)
    out = gru(h)
    assert getattr(out, "_keras_mask", None) is None         # the last output alone has no mask
    for i in range(2):
        real = ids[i][ids[i] != 0][None]
        np.testing.assert_allclose(out.numpy()[i], gru(emb(real)).numpy()[0], rtol=1e-5, atol=1e-6)
    seq = layers.LSTM(3, return_sequences=True)(h)
    np.testing.assert_array_equal(seq._keras_mask, ids != 0)


def test_global_average_pooling_1d_is_the_mean_over_real_steps():
    keras.utils.set_random_seed(8)
    ids = _padded(_ragged(seed=8), 8, "post")
    emb = layers.Embedding(20, 4, mask_zero=True)
    pooled = layers.GlobalAveragePooling1D()(emb(ids))
    table = emb.get_weights()[0]
    want = np.stack([table[row[row != 0]].mean(axis=0) for row in ids])
    np.testing.assert_allclose(pooled.numpy(), want, rtol=1e-6)
    assert getattr(pooled, "_keras_mask", None) is None
    kept = layers.GlobalAveragePooling1D(keepdims=True)(emb(ids))
    np.testing.assert_allclose(kept.numpy()[:, 0], want, rtol=1e-6)
    # gradient: each real step gets 1 / length
    x = engine.tensor(np.ones((2, 4, 3), np.float32), requires_grad=True)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    layers.GlobalAveragePooling1D()(x, mask=mask).sum().backward()
    np.testing.assert_allclose(x.grad.numpy()[:, :, 0], [[0.5, 0.5, 0, 0], [0.25] * 4])


def test_global_max_pooling_and_flatten_drop_the_mask_with_keras_warning():
    ids = _padded(_ragged(seed=9, n=3), 8, "post")
    emb = layers.Embedding(20, 4, mask_zero=True)
    pool = layers.GlobalMaxPooling1D(name="gmp")
    with pytest.warns(UserWarning, match="Layer 'gmp' \\(of type GlobalMaxPooling1D\\) was passed an input with a "
                                         "mask attached to it"):
        out = pool(emb(ids))
    np.testing.assert_allclose(out.numpy(), emb(ids).numpy().max(axis=1))       # padding takes part
    model = keras.Sequential([keras.Input(shape=(8,)), layers.Embedding(20, 4, mask_zero=True),
                              layers.Flatten(name="flat"), layers.Dense(2)])
    with pytest.warns(UserWarning, match="'flat' .*does not support masking"):
        model.predict(ids, verbose=0)


def test_softmax_layer_refuses_a_mask_keras_cannot_broadcast():
    emb = layers.Embedding(20, 4, mask_zero=True)
    ids = _padded(_ragged(seed=10, n=2), 8, "post")
    with pytest.raises(ValueError, match="Softmax.*does not broadcast.*Dense\\(classes, activation='softmax'\\)"):
        layers.Softmax()(layers.Dense(3)(emb(ids)))
    x = np.zeros((2, 3), np.float32)
    probs = layers.Softmax()(x, mask=np.array([[1, 1, 0], [1, 0, 0]], bool)).numpy()      # Keras' -1e9 adder
    np.testing.assert_allclose(probs, [[0.5, 0.5, 0], [1, 0, 0]], atol=1e-6)


def test_batch_normalization_uses_masked_moments():
    x = np.arange(24, dtype=np.float32).reshape(2, 4, 3)
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    bn = layers.BatchNormalization(momentum=0.0)
    y = bn(x, mask=mask, training=True)
    real = x[mask]
    np.testing.assert_allclose(bn.moving_mean.numpy(), real.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(bn.moving_variance.numpy(), real.var(axis=0), rtol=1e-5)
    np.testing.assert_array_equal(y._keras_mask, mask)
    np.testing.assert_allclose(y.numpy()[mask], (real - real.mean(0)) / np.sqrt(real.var(0) + 1e-3), rtol=1e-4)


# ---------------------------------------------------------------- Bidirectional
@pytest.mark.parametrize("cls", RECURRENT)
@pytest.mark.parametrize("return_sequences", [False, True])
def test_bidirectional_with_a_mask(cls, return_sequences):
    """Each direction sees only the real steps; with return_sequences both halves are zero at the
    padded steps (Bidirectional sets zero_output_for_mask) and the mask passes on."""
    keras.utils.set_random_seed(11)
    emb = _embedding()
    bi = layers.Bidirectional(cls(3, return_sequences=return_sequences))
    seqs = _ragged(seed=11)
    ids = _padded(seqs, 8, "pre")
    out = bi(emb(ids))
    assert bi.forward_layer.zero_output_for_mask == bi.backward_layer.zero_output_for_mask == return_sequences
    for i, s in enumerate(seqs):
        alone = bi(emb(s[None])).numpy()[0]
        real = ids[i] != 0
        if return_sequences:
            np.testing.assert_allclose(out.numpy()[i][real], alone, rtol=1e-5, atol=1e-6)
            assert not out.numpy()[i][~real].any()
        else:
            np.testing.assert_allclose(out.numpy()[i], alone, rtol=1e-5, atol=1e-6)
    if return_sequences:
        np.testing.assert_array_equal(out._keras_mask, ids != 0)


# ---------------------------------------------------------------- the loss and the metrics
def _model_of(stack, functional, steps=8):
    """The same layer stack as a Sequential model or as a functional one (both carry masks)."""
    if not functional:
        return keras.Sequential([keras.Input(shape=(steps,))] + stack)
    inp = keras.Input(shape=(steps,))
    h = inp
    for layer in stack:
        h = layer(h)
    return keras.Model(inp, h)


def _tagger(loss="sparse_categorical_crossentropy", final=3, activation="softmax", functional=False):
    keras.utils.set_random_seed(12)
    model = _model_of([layers.Embedding(20, 8, mask_zero=True), layers.LSTM(8, return_sequences=True),
                       layers.Dense(final, activation=activation)], functional)
    metrics = ["accuracy"] if loss == "sparse_categorical_crossentropy" else ["mae"]
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss, metrics=metrics)
    return model


@pytest.mark.parametrize("functional", [False, True])
def test_sequence_loss_and_accuracy_skip_padded_steps(functional):
    model = _tagger(functional=functional)
    ids = _padded(_ragged(seed=13, n=6), 8, "post")
    rng = np.random.default_rng(13)
    y = rng.integers(0, 3, size=ids.shape)
    y_padding_changed = np.where(ids == 0, (y + 1) % 3, y)
    loss, acc = model.evaluate(ids, y, verbose=0)
    assert model.evaluate(ids, y_padding_changed, verbose=0) == pytest.approx([loss, acc], rel=1e-6)
    probs = model.predict(ids, verbose=0)
    real = ids != 0
    picked = np.take_along_axis(probs, y[..., None], axis=-1)[..., 0]
    assert loss == pytest.approx(float(-np.log(picked[real]).mean()), rel=1e-5)
    # Keras' Mean with the mask as sample weight: per sample, the real steps' mean, weighted by the
    # real fraction; over samples total / count = the mean over all real steps
    assert acc == pytest.approx(float((probs.argmax(-1) == y)[real].mean()), rel=1e-6)
    w = np.linspace(0.5, 2.0, len(ids)).astype(np.float32)
    weighted = model.evaluate(ids, y, sample_weight=w, verbose=0)[0]
    per_step = -np.log(picked) * w[:, None]
    assert weighted == pytest.approx(float(per_step[real].sum() / real.sum()), rel=1e-5)


def test_unfused_sequence_loss_is_masked_too():
    model = _tagger(loss="mse", final=1, activation=None)
    ids = _padded(_ragged(seed=14, n=6), 8, "pre")
    y = np.random.default_rng(14).normal(size=ids.shape + (1,)).astype(np.float32)
    loss, mae = model.evaluate(ids, y, verbose=0)
    pred = model.predict(ids, verbose=0)
    real = ids != 0
    assert loss == pytest.approx(float(((pred - y)[..., 0] ** 2)[real].mean()), rel=1e-5)
    assert mae == pytest.approx(float(np.abs(pred - y)[..., 0][real].mean()), rel=1e-5)


def test_masked_sequence_model_trains_only_on_real_steps():
    """Targets at the padded steps are noise: a masked tagger still learns the real steps."""
    model = _tagger()
    rng = np.random.default_rng(15)
    ids = _padded([rng.integers(1, 20, size=rng.integers(3, 9)) for _ in range(400)], 8, "post")
    y = np.where(ids != 0, ids % 3, rng.integers(0, 3, size=ids.shape))
    h = model.fit(ids, y, epochs=6, batch_size=32, verbose=0)
    assert h.history["accuracy"][-1] > 0.95


def test_custom_loss_function_on_a_masked_output_is_refused():
    model = _tagger()
    model.compile(optimizer="adam", loss=lambda y, p: (p * 0).mean())
    with pytest.raises(ValueError, match="masked .*custom loss .*cannot leave the masked steps out"):
        model.evaluate(_padded(_ragged(seed=16, n=2), 8, "post"), np.zeros((2, 8)), verbose=0)


# ---------------------------------------------------------------- models: functional graphs, saving, training
def test_functional_merges_combine_masks_and_each_output_masks_its_loss():
    keras.utils.set_random_seed(17)
    a, b = keras.Input(shape=(8,), name="a"), keras.Input(shape=(8,), name="b")
    emb_a, emb_b = layers.Embedding(20, 4, mask_zero=True), layers.Embedding(20, 4, mask_zero=True)
    ea, eb = emb_a(a), emb_b(b)
    pooled = layers.GlobalAveragePooling1D(name="pooled")(layers.Add()([ea, eb]))
    tags = layers.LSTM(1, return_sequences=True, name="tags")(layers.Concatenate()([ea, layers.Dense(4)(eb)]))
    model = keras.Model([a, b], [pooled, tags])
    ia, ib = _padded(_ragged(seed=17, n=3), 8, "post"), _padded(_ragged(seed=18, n=3), 8, "pre")
    union = (ia != 0) | (ib != 0)                                 # Keras' OR of the masks
    masks = model._forward_masked([engine.tensor(ia.astype(np.float32)), engine.tensor(ib.astype(np.float32))],
                                  False)[1]
    assert masks[0] is None                                      # consumed by the pooling
    np.testing.assert_array_equal(masks[1], union)
    p_pooled, p_tags = model.predict([ia, ib], verbose=0)
    summed = emb_a(ia).numpy() + emb_b(ib).numpy()
    np.testing.assert_allclose(p_pooled, np.stack([summed[i][union[i]].mean(axis=0) for i in range(3)]), rtol=1e-5)
    model.compile(optimizer="adam", loss={"pooled": "mse", "tags": "mse"})
    y_tags = np.random.default_rng(17).normal(size=(3, 8, 1)).astype(np.float32)
    logs = model.evaluate([ia, ib], [np.zeros((3, 4), np.float32), y_tags], verbose=0, return_dict=True)
    assert logs["tags_loss"] == pytest.approx(float(((p_tags - y_tags)[..., 0] ** 2)[union].mean()), rel=1e-5)
    assert logs["pooled_loss"] == pytest.approx(float((p_pooled ** 2).mean()), rel=1e-5)


def test_lambda_passes_a_mask_only_when_given_mask():
    emb = _embedding()
    ids = _padded(_ragged(seed=22, n=2), 8, "post")
    with pytest.warns(UserWarning, match="'plain' \\(of type Lambda\\)"):
        assert getattr(layers.Lambda(lambda t: t * 2, name="plain")(emb(ids)), "_keras_mask", None) is None
    keep = layers.Lambda(lambda t: t * 2, mask=lambda inputs, mask: mask)(emb(ids))
    np.testing.assert_array_equal(keep._keras_mask, ids != 0)
    fixed = layers.Lambda(lambda t: t, mask=np.ones((2, 8), bool))(emb(ids))
    assert fixed._keras_mask.all()


def test_nested_sequential_keeps_the_mask_and_the_fused_loss():
    keras.utils.set_random_seed(19)
    inner = keras.Sequential([keras.Input(shape=(8,)), layers.Embedding(20, 4, mask_zero=True),
                              layers.LSTM(4, return_sequences=True)])
    outer = keras.Sequential([keras.Input(shape=(8,)), inner, layers.Dense(3, activation="softmax")])
    outer.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ids = _padded(_ragged(seed=19, n=4), 8, "post")
    y = np.random.default_rng(19).integers(0, 3, size=ids.shape)
    probs = outer.predict(ids, verbose=0)
    picked = np.take_along_axis(probs, y[..., None], axis=-1)[..., 0]
    assert outer.evaluate(ids, y, verbose=0) == pytest.approx(float(-np.log(picked[ids != 0]).mean()), rel=1e-5)
    flat = keras.Sequential([keras.Input(shape=(3,)), keras.Sequential([layers.Dense(3, activation="softmax")])])
    flat.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, labels = np.eye(3, dtype=np.float32), np.arange(3)
    p = flat.predict(x, verbose=0)                 # a nested model's final softmax is fused, not applied twice
    assert flat.evaluate(x, labels, verbose=0) == pytest.approx(float(-np.log(p[[0, 1, 2], labels]).mean()), rel=1e-5)


@pytest.mark.parametrize("functional", [False, True])
def test_masked_model_saves_and_loads(tmp_path, functional):
    keras.utils.set_random_seed(20)
    model = _model_of([layers.Embedding(20, 4, mask_zero=True),
                       layers.Bidirectional(layers.GRU(3, return_sequences=True)), layers.SimpleRNN(3),
                       layers.Dense(2, activation="softmax")], functional)
    ids = _padded(_ragged(seed=20), 8, "post")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(tmp_path / "masked.keras")
    loaded = keras.models.load_model(tmp_path / "masked.keras")
    emb = [layer for layer in loaded.layers if isinstance(layer, layers.Embedding)][0]
    assert emb.mask_zero and emb.get_config()["mask_zero"] is True
    np.testing.assert_array_equal(loaded.predict(ids, verbose=0), model.predict(ids, verbose=0))
    y = np.zeros(len(ids), np.int64)
    assert loaded.evaluate(ids, y, verbose=0) == model.evaluate(ids, y, verbose=0)
    masking = keras.Sequential([keras.Input(shape=(5, 2)), layers.Masking(mask_value=-1.0), layers.LSTM(2)])
    masking.save(tmp_path / "masking.keras")
    assert keras.models.load_model(tmp_path / "masking.keras").layers[0].mask_value == -1.0


def test_right_padded_text_classifier_learns_with_mask_zero():
    """Is token 3 in the sequence?  Right-padded, so without the mask an LSTM would end on up to
    twelve padding steps; with Embedding(mask_zero=True) it ends on the last real token."""
    keras.utils.set_random_seed(21)
    rng = np.random.default_rng(21)
    seqs = [rng.integers(1, 30, size=rng.integers(2, 7)) for _ in range(600)]
    ids = _padded(seqs, 18, "post")
    y = np.array([int(3 in s) for s in seqs])
    model = keras.Sequential([keras.Input(shape=(18,)), layers.Embedding(30, 16, mask_zero=True), layers.LSTM(16),
                              layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    h = model.fit(ids, y, epochs=10, batch_size=32, verbose=0, validation_split=0.25)
    assert h.history["val_accuracy"][-1] > 0.9 > max(y.mean(), 1 - y.mean())
