"""engine.keras: the Keras seed program through the facade, plus the facade's contract.

Fast by design (well under 40 s on one core): training runs on the Fashion-MNIST
subset embedded in the package.
"""
import re

import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers, models, datasets
from engine.keras.layers import InputShapeError


def seed_cnn():
    return models.Sequential([
        layers.Conv2D(32, (3, 3), activation='relu', input_shape=(28, 28, 1)),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation='relu'),
        layers.Dense(10, activation='softmax'),
    ])


@pytest.fixture(scope="module")
def fmnist():
    (x_train, y_train), (x_test, y_test) = datasets.fashion_mnist.load_data(embedded=True)
    assert x_train.dtype == np.uint8 and x_train.shape == (6000, 28, 28) and y_train.shape == (6000,)
    return (x_train.reshape(-1, 28, 28, 1) / 255.0, y_train), (x_test.reshape(-1, 28, 28, 1) / 255.0, y_test)


@pytest.fixture(scope="module")
def trained(fmnist):
    """The seed program, one epoch on the embedded subset (float64 inputs, as Keras users pass)."""
    (x_train, y_train), (x_test, y_test) = fmnist
    keras.utils.set_random_seed(0)
    model = seed_cnn()
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    history = model.fit(x_train, y_train, epochs=1, batch_size=32, verbose=0,
                        validation_data=(x_test[:500], y_test[:500]))
    return model, history


def test_seed_cnn_learns_fashion_mnist(trained, fmnist):
    model, history = trained
    (_, _), (x_test, y_test) = fmnist
    result = model.evaluate(x_test, y_test, batch_size=32, verbose=0)
    assert isinstance(result, list) and len(result) == 2
    loss, acc = result
    assert acc >= 0.70, f"one epoch on 6000 images should reach well above chance, got {acc}"
    assert 0.0 < loss < 1.2
    # evaluate's accuracy is the fraction of argmax hits of predict()
    probs = model.predict(x_test, verbose=0)
    assert probs.shape == (1000, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    assert acc == pytest.approx(float((probs.argmax(1) == y_test).mean()))
    assert model.evaluate(x_test, y_test, verbose=0, return_dict=True).keys() == {"loss", "accuracy"}


def test_history_contents(trained):
    _, history = trained
    h = history.history
    assert set(h) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert all(len(v) == 1 for v in h.values())
    assert 0.0 < h["loss"][0] < 2.3 and 0.5 < h["accuracy"][0] <= 1.0
    assert history.epoch == [0]


def test_summary_matches_keras_param_counts():
    lines = []
    keras.backend.clear_session()
    seed_cnn().summary(print_fn=lines.append)
    text = "\n".join(lines)
    rows = {m.group(1): (m.group(2), m.group(3)) for m in
            re.finditer(r"^ (\w+) \(\w+\)\s+(\([^)]*\))\s+([\d,]+)$", text, re.M)}
    assert list(rows) == ["conv2d", "max_pooling2d", "flatten", "dense", "dense_1"]
    shapes_params = list(rows.values())
    assert shapes_params == [("(None, 26, 26, 32)", "320"), ("(None, 13, 13, 32)", "0"),
                             ("(None, 5408)", "0"), ("(None, 128)", "692,352"), ("(None, 10)", "1,290")]
    assert "Total params: 693,962" in text
    assert "Trainable params: 693,962" in text and "Non-trainable params: 0" in text


def test_layer_names_are_unique_like_keras():
    keras.backend.clear_session()
    m = seed_cnn()
    assert [l.name for l in m.layers] == ["conv2d", "max_pooling2d", "flatten", "dense", "dense_1"]
    assert m.name == "sequential"


def test_save_load_bit_identical_and_resumes(trained, fmnist, tmp_path):
    model, _ = trained
    (x_train, y_train), (x_test, _) = fmnist
    path = tmp_path / "seed.keras"
    model.save(path)
    # the file is a plain safetensors file: the weights are readable without dptrain
    from safetensors.numpy import load_file
    raw = load_file(str(path))
    dense = next(l.name for l in model.layers if type(l).__name__ == "Dense")   # "dense" in a fresh session
    assert raw[f"weights.{dense}.kernel"].shape == (5408, 128)
    loaded = keras.models.load_model(path)
    assert type(loaded) is models.Sequential
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
    np.testing.assert_array_equal(loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0))
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)
    # compiled with the same loss and the optimizer state: one more step gives identical weights
    xb, yb = x_train[:64], y_train[:64]
    l1 = model.train_on_batch(xb, yb)
    l2 = loaded.train_on_batch(xb, yb)
    assert l1 == l2
    for a, b in zip(loaded.get_weights(), model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_get_set_weights_keras_layouts():
    m = seed_cnn()
    shapes = [w.shape for w in m.get_weights()]
    assert shapes == [(3, 3, 1, 32), (32,), (5408, 128), (128,), (128, 10), (10,)]
    new = [np.full(s, 0.01 * i, dtype=np.float32) for i, s in enumerate(shapes)]
    m.set_weights(new)
    for a, b in zip(m.get_weights(), new):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r'dense.*kernel.*\(5408, 128\).*\(10, 10\)'):
        m.set_weights(new[:2] + [np.zeros((10, 10))] + new[3:])


def test_keras_default_initialisation_and_adam():
    m = seed_cnn()
    k = m.layers[3].kernel.numpy()
    limit = np.sqrt(6.0 / (5408 + 128))                      # glorot_uniform
    assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
    assert abs(k.std() - limit / np.sqrt(3)) < 0.02 * limit
    ck = m.layers[0].kernel.numpy()
    climit = np.sqrt(6.0 / (9 * 1 + 9 * 32))                  # conv fans include the receptive field
    assert np.abs(ck).max() <= climit and np.abs(ck).max() > 0.8 * climit
    assert not m.layers[0].bias.numpy().any() and not m.layers[3].bias.numpy().any()
    m.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
    m._ensure_optimizer()
    g = m.optimizer.engine.param_groups[0]
    assert g["lr"] == 0.001 and g["eps"] == 1e-7 and g["betas"] == (0.9, 0.999)


def test_wrong_input_shape_names_layer_and_shapes(fmnist):
    (x_train, y_train), _ = fmnist
    m = seed_cnn()
    m.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    flat = x_train[:8].reshape(8, 28, 28)
    with pytest.raises(InputShapeError) as e:
        m.fit(flat, y_train[:8], epochs=1, verbose=0)
    msg = str(e.value)
    assert '"conv2d' in msg and "(None, 28, 28, 1)" in msg and "(8, 28, 28)" in msg
    assert "reshape" in msg
    with pytest.raises(InputShapeError, match=r"expected shape=\(None, 28, 28, 1\), found shape=\(4, 32, 32, 1\)"):
        m.predict(np.zeros((4, 32, 32, 1)), verbose=0)
    # a layer called directly, built for 5408 features, given 100
    dense = m.layers[3]
    with pytest.raises(InputShapeError, match=r'layer "dense.*axis -1 .*5408.*\(2, 100\)'):
        dense(np.zeros((2, 100)))


def test_label_errors_are_explained(fmnist):
    (x_train, y_train), _ = fmnist
    m = seed_cnn()
    m.compile(optimizer='adam', loss='sparse_categorical_crossentropy')
    with pytest.raises(ValueError, match="one-hot"):
        m.fit(x_train[:16], keras.utils.to_categorical(y_train[:16], 10), verbose=0)
    with pytest.raises(ValueError, match=r"outputs 10 classes"):
        m.fit(x_train[:16], y_train[:16] + 5, verbose=0)
    with pytest.raises(ValueError, match="different numbers of samples"):
        m.fit(x_train[:16], y_train[:15], verbose=0)
    with pytest.raises(RuntimeError, match="compile"):
        seed_cnn().fit(x_train[:16], y_train[:16], verbose=0)


def test_fused_softmax_cross_entropy_is_stable_and_exact():
    from engine.keras.losses import sparse_softmax_cross_entropy, softmax_cross_entropy
    rng = np.random.default_rng(0)
    z = rng.normal(size=(6, 5))
    y = rng.integers(0, 5, size=6)
    zt = engine.tensor(z, dtype="float64", requires_grad=True)
    engine.gradcheck(lambda t: sparse_softmax_cross_entropy(t, y), [zt])
    engine.gradcheck(lambda t: softmax_cross_entropy(t, np.eye(5)[y]), [zt])
    ref = -np.mean((z - np.log(np.exp(z).sum(1, keepdims=True)))[np.arange(6), y])
    assert sparse_softmax_cross_entropy(zt, y).item() == pytest.approx(ref, rel=1e-12)
    # huge logits: finite loss and gradient (softmax-then-log would give inf / nan), and Keras' values:
    # its probabilities are clipped to [1e-7, 1 - 1e-7], so the term is capped at -log(1e-7) and a
    # clipped term passes no gradient (Keras 3.15.1 gives the same for these logits)
    big = engine.tensor(np.array([[1000.0, -1000.0, 0.0], [0.0, 1.0, 2.0]], dtype=np.float32), requires_grad=True)
    loss = sparse_softmax_cross_entropy(big, [1, 2])
    loss.backward()
    p = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    assert loss.item() == pytest.approx((-np.log(np.float32(1e-7)) - np.log(p[2])) / 2, rel=1e-6)
    np.testing.assert_array_equal(big.grad.numpy()[0], 0.0)
    np.testing.assert_allclose(big.grad.numpy()[1], (p - np.eye(3)[2]) / 2, rtol=1e-5)


def test_model_trains_on_logits_but_predicts_probabilities(fmnist):
    (x_train, y_train), _ = fmnist
    m = seed_cnn()
    m.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    assert m._fused
    x = x_train[:64].astype(np.float32)
    with engine.no_grad():
        logits = m._forward(engine.tensor(x, device=m._device()), training=False, logits=True).numpy()
    probs = m.predict(x, verbose=0)
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-5, atol=1e-7)
    # the loss reported by evaluate equals Keras' probability-space cross-entropy
    loss = m.evaluate(x, y_train[:64], verbose=0)[0]
    ref = -np.mean(np.log(np.clip(probs[np.arange(64), y_train[:64]], 1e-7, 1 - 1e-7)))
    assert loss == pytest.approx(ref, rel=1e-4)
    m2 = seed_cnn()
    m2.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    m2.layers[-1].activation = keras.activations.get("relu")
    assert not m2._fused                # no softmax at the end: the loss sees the outputs as they are


def test_channels_last_and_flatten_order_match_torch():
    torch = pytest.importorskip("torch")
    keras.utils.set_random_seed(1)
    m = seed_cnn()
    x = np.random.default_rng(0).random((4, 28, 28, 1)).astype(np.float32)
    ours = m.predict(x, verbose=0)
    ck, cb, dk, db, ok, ob = m.get_weights()
    conv = torch.nn.Conv2d(1, 32, 3)
    conv.weight.data = torch.from_numpy(ck.transpose(3, 2, 0, 1).copy())
    conv.bias.data = torch.from_numpy(cb)
    with torch.no_grad():
        h = torch.nn.functional.max_pool2d(torch.relu(conv(torch.from_numpy(x).permute(0, 3, 1, 2))), 2)
        h = h.permute(0, 2, 3, 1).reshape(4, -1)              # Keras flattens (H, W, C)
        h = torch.relu(h @ torch.from_numpy(dk) + torch.from_numpy(db))
        ref = torch.softmax(h @ torch.from_numpy(ok) + torch.from_numpy(ob), dim=1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-6)


def test_layers_padding_strides_pooling_shapes():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([
        keras.Input(shape=(9, 9, 3)),
        layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"),
        layers.BatchNormalization(),
        layers.AveragePooling2D(2, padding="same"),
        layers.Conv2D(5, (2, 2), padding="same"),
        layers.MaxPooling2D(2, strides=1, padding="same"),
        layers.Dropout(0.5),
        layers.GlobalAveragePooling2D(),
        layers.Dense(3, activation="softmax"),
    ])
    x = np.random.default_rng(0).random((2, 9, 9, 3))
    out = m.predict(x, verbose=0)
    assert out.shape == (2, 3) == (2,) + m.output_shape[1:]
    shapes = [l.output_shape_built for l in m.layers]
    assert shapes[:5] == [(None, 5, 5, 4), (None, 5, 5, 4), (None, 3, 3, 4), (None, 3, 3, 5),
                          (None, 3, 3, 5)]
    # the actual tensors have the computed shapes
    t = engine.tensor(x.astype(np.float32))
    for layer, shape in zip(m.layers, shapes):
        t = layer(t, training=False)
        assert t.shape[1:] == shape[1:], layer.name


def test_same_padding_matches_torch_asymmetric():
    torch = pytest.importorskip("torch")
    keras.utils.set_random_seed(2)
    conv = layers.Conv2D(3, (4, 4), strides=(2, 2), padding="same")
    x = np.random.default_rng(1).random((2, 7, 7, 2)).astype(np.float32)
    ours = conv(x).numpy()
    k, b = conv.get_weights()
    # TF 'same' for k=4, s=2, n=7: out 4, total pad 3 -> 1 before, 2 after
    xt = torch.nn.functional.pad(torch.from_numpy(x).permute(0, 3, 1, 2), (1, 2, 1, 2))
    ref = torch.nn.functional.conv2d(xt, torch.from_numpy(k.transpose(3, 2, 0, 1).copy()),
                                     torch.from_numpy(b), stride=2).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)
    pool = layers.AveragePooling2D(3, strides=2, padding="same")
    got = pool(x).numpy()
    ref = torch.nn.functional.avg_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2), 3, 2, padding=1,
                                         count_include_pad=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_lstm_layer_matches_reference_and_torch():
    keras.utils.set_random_seed(3)
    lstm = layers.LSTM(6, return_sequences=True)
    x = np.random.default_rng(2).normal(size=(3, 5, 4)).astype(np.float32)
    fused = lstm(x)
    ref = lstm._call_ops(engine.tensor(x), lstm.bias)
    np.testing.assert_allclose(fused.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    b = lstm.bias.numpy()
    assert (b[6:12] == 1).all() and not b[:6].any()          # unit_forget_bias
    # gradients of the fused node against the op-by-op recurrence, in float64
    from engine.keras.layers.recurrent import lstm_sequence
    rng = np.random.default_rng(3)
    ts = [engine.tensor(a, dtype="float64", requires_grad=True) for a in
          (rng.normal(size=(2, 4, 3)), 0.5 * rng.normal(size=(3, 8)), 0.5 * rng.normal(size=(2, 8)),
           0.1 * rng.normal(size=(8,)))]
    for seq in (True, False):
        for back in (False, True):
            engine.gradcheck(lambda x, k, r, bb: lstm_sequence(x, k, r, bb, seq, back), ts)
    torch = pytest.importorskip("torch")
    k, r, bias = lstm.get_weights()
    t = torch.nn.LSTM(4, 6, batch_first=True)
    with torch.no_grad():
        t.weight_ih_l0.copy_(torch.from_numpy(k.T.copy()))
        t.weight_hh_l0.copy_(torch.from_numpy(r.T.copy()))
        t.bias_ih_l0.copy_(torch.from_numpy(bias))
        t.bias_hh_l0.zero_()
        out, _ = t(torch.from_numpy(x))
    np.testing.assert_allclose(fused.numpy(), out.numpy(), rtol=1e-4, atol=1e-5)


def test_keras_lstm_model_learns_sequence_task():
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(256, 8, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int64)        # needs the whole sequence
    m = keras.Sequential([layers.LSTM(16, input_shape=(8, 2)), layers.Dense(2, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    h = m.fit(x, y, epochs=8, batch_size=32, verbose=0)
    assert h.history["accuracy"][-1] > 0.85


def test_other_losses_metrics_and_validation_split():
    keras.utils.set_random_seed(5)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 4))
    w = np.array([1.0, -2.0, 0.5, 3.0])
    # regression with mse / mae
    reg = keras.Sequential([layers.Dense(1, input_shape=(4,))])
    reg.compile(optimizer=keras.optimizers.SGD(learning_rate=0.05), loss="mse", metrics=["mae"])
    h = reg.fit(x, x @ w, epochs=15, batch_size=16, verbose=0, validation_split=0.25)
    assert set(h.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert len(h.history["loss"]) == 15 and h.history["val_loss"][-1] < 0.01
    np.testing.assert_allclose(reg.get_weights()[0][:, 0], w, atol=0.05)
    # one-hot targets with categorical cross-entropy, and binary with sigmoid
    y = (x @ w > 0).astype(np.int64)
    cat = keras.Sequential([layers.Dense(8, activation="relu", input_dim=4), layers.Dense(2, activation="softmax")])
    cat.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    h = cat.fit(x, keras.utils.to_categorical(y, 2), epochs=20, batch_size=32, verbose=0)
    assert cat._fused and h.history["accuracy"][-1] > 0.9
    binm = keras.Sequential([layers.Dense(1, activation="sigmoid", input_shape=(4,))])
    binm.compile(optimizer=keras.optimizers.Adam(0.05), loss="binary_crossentropy", metrics=["accuracy"])
    h = binm.fit(x, y, epochs=20, batch_size=32, verbose=0)
    assert binm._fused and h.history["accuracy"][-1] > 0.9
    acc = binm.evaluate(x, y, verbose=0)[1]
    assert acc == pytest.approx(((binm.predict(x, verbose=0)[:, 0] > 0.5) == y).mean())


def test_progress_output_modes(fmnist, capsys):
    (x_train, y_train), _ = fmnist
    m = seed_cnn()
    m.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    m.fit(x_train[:64], y_train[:64], epochs=2, batch_size=32, verbose=2)
    out = capsys.readouterr().out
    assert re.findall(r"Epoch (\d)/2 - .*loss: [\d.]+ - accuracy: [\d.]+", out) == ["1", "2"]
    m.fit(x_train[:64], y_train[:64], epochs=1, batch_size=32, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "2/2" in out and "loss=" in out
    m.fit(x_train[:64], y_train[:64], epochs=1, batch_size=32, verbose=0)
    assert capsys.readouterr().out == ""


def test_import_spellings_and_dataloader_input():
    from engine.keras.models import Sequential, load_model  # noqa: F401
    from engine.keras.layers import Dense, Conv2D  # noqa: F401
    from engine.keras import optimizers, losses, callbacks, utils  # noqa: F401
    assert keras.Sequential is Sequential and keras.layers.Dense is Dense
    assert isinstance(keras.Sequential([Dense(2, input_shape=(3,))]), engine.nn.Module)
    # an engine.data DataLoader (batches of (x, y)) is accepted by fit / evaluate / predict
    from engine.data import DataLoader, TensorDataset
    rng = np.random.default_rng(6)
    x = rng.normal(size=(128, 3)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, seed=0)
    m = keras.Sequential([Dense(2, activation="softmax")])      # built from the first batch
    m.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    h = m.fit(loader, epochs=10, verbose=0)
    assert h.history["accuracy"][-1] > 0.9
    assert m.evaluate(loader, verbose=0)[1] > 0.9
    assert m.predict(DataLoader(TensorDataset(x, y), batch_size=50), verbose=0).shape == (128, 2)


def test_early_stopping_and_engine_optimizer():
    keras.utils.set_random_seed(7)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(64, 3))
    m = keras.Sequential([layers.Dense(1, input_shape=(3,))])
    opt = engine.optim.SGD(m.parameters(), lr=0.0)            # an engine optimizer is accepted as is
    m.compile(optimizer=opt, loss="mse")
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=1)
    h = m.fit(x, x.sum(1), epochs=20, verbose=0, callbacks=[stop])
    assert len(h.history["loss"]) < 20                         # lr 0: no improvement, stops early


def test_fused_conv_relu_pool_and_dense_match_layer_by_layer():
    """Sequential runs Conv2D(relu)+MaxPooling2D(2) as the engine's fused op and Dense as one
    node; calling the layers one by one (unfused) must give the same values and gradients."""
    from engine.keras.losses import sparse_softmax_cross_entropy
    keras.utils.set_random_seed(8)
    m = seed_cnn()
    x = np.random.default_rng(8).random((16, 28, 28, 1)).astype(np.float32)
    y = np.arange(16) % 10
    grads = []
    for fused in (True, False):
        for w in m.weights:
            w.grad = None
        if fused:
            logits = m._forward(engine.tensor(x, device=m._device()), training=True, logits=True)
        else:
            t = engine.tensor(x, device=m._device())
            for layer in m.layers[:-1]:
                t = layer(t, training=True)
            t = t @ m.layers[-1].kernel + m.layers[-1].bias
            logits = t
        sparse_softmax_cross_entropy(logits, y).backward()
        grads.append([w.grad.numpy().copy() for w in m.weights])
    for gf, gu in zip(*grads):
        np.testing.assert_allclose(gf, gu, rtol=1e-4, atol=1e-6)


def _keras_steps(opt_factory, steps=4, seed=0):
    """Run engine.keras optimizer `opt_factory()` on one weight with fixed gradients."""
    rng = np.random.default_rng(seed)
    w0 = rng.standard_normal(16)
    grads = [rng.standard_normal(16) * 1e-3 for _ in range(steps)]    # small grads: eps matters
    p = engine.nn.Parameter(engine.tensor(w0.copy(), dtype=np.float64))
    opt = opt_factory()._make([p])                                   # what compile() builds
    for g in grads:
        p.grad = engine.tensor(g)
        opt.step()
    return w0, grads, p.data


@pytest.mark.parametrize("amsgrad", [False, True])
def test_keras_adam_puts_epsilon_on_sqrt_v_before_bias_correction(amsgrad):
    """Keras' Adam ("epsilon hat"): p -= lr*sqrt(1-b2^t)/(1-b1^t) * m / (sqrt(v) + eps)."""
    from engine.keras import optimizers
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-3
    w, grads, got = _keras_steps(lambda: optimizers.Adam(lr, b1, b2, eps, amsgrad=amsgrad))
    m = np.zeros_like(w); v = np.zeros_like(w); vmax = np.zeros_like(w)
    for t, g in enumerate(grads, 1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        vmax = np.maximum(vmax, v)
        alpha = lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        w = w - alpha * m / (np.sqrt(vmax if amsgrad else v) + eps)
    np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("centered", [False, True])
def test_keras_rmsprop_puts_epsilon_inside_the_square_root(centered):
    from engine.keras import optimizers
    lr, rho, eps = 0.01, 0.9, 1e-5
    w, grads, got = _keras_steps(lambda: optimizers.RMSprop(lr, rho, epsilon=eps, centered=centered))
    v = np.zeros_like(w); mg = np.zeros_like(w)
    for g in grads:
        v = rho * v + (1 - rho) * g * g
        mg = rho * mg + (1 - rho) * g
        w = w - lr * g / np.sqrt((v - mg * mg if centered else v) + eps)
    np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-14)
