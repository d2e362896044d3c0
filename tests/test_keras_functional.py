"""The Keras functional API: keras.Input, layer calls on KerasTensors, keras.Model(inputs, outputs)."""
import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 12, 12, 1), dtype=np.float32)
    y = (x[:, :6].mean(axis=(1, 2, 3)) > x[:, 6:].mean(axis=(1, 2, 3))).astype(np.int64)
    return x, y


def test_a_functional_chain_computes_what_the_same_sequential_model_computes():
    keras.utils.set_random_seed(0)
    seq = keras.Sequential([layers.Conv2D(4, 3, activation="relu", input_shape=(12, 12, 1)),
                            layers.MaxPooling2D(2), layers.Flatten(), layers.Dense(8, activation="relu"),
                            layers.Dense(2, activation="softmax")])
    inp = keras.Input(shape=(12, 12, 1))
    h = layers.Conv2D(4, 3, activation="relu")(inp)
    h = layers.MaxPooling2D(2)(h)
    h = layers.Dense(8, activation="relu")(layers.Flatten()(h))
    out = layers.Dense(2, activation="softmax")(h)
    fun = keras.Model(inputs=inp, outputs=out)
    assert type(fun).__name__ == "Functional" and isinstance(fun, keras.Model)
    assert fun.input_shape == (None, 12, 12, 1) and fun.output_shape == (None, 2)
    assert h.shape == (None, 8) and "KerasTensor" in repr(h)
    fun.set_weights(seq.get_weights())
    x, _ = _data(16)
    np.testing.assert_allclose(fun.predict(x, verbose=0), seq.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    assert fun.count_params() == seq.count_params()


def test_skip_connection_and_concatenate_train_and_save_load_round_trip(tmp_path):
    keras.utils.set_random_seed(1)
    inp = keras.Input(shape=(12, 12, 1), name="image")
    flat = layers.Flatten()(inp)
    a = layers.Dense(16, activation="relu")(flat)
    shared = layers.Dense(16, activation="relu", name="shared")
    b = shared(a)
    c = shared(b)                                     # the same layer twice: shared weights
    skip = layers.Add()([a, c])
    both = layers.Concatenate()([skip, b])
    assert both.shape == (None, 32)
    out = layers.Dense(2, activation="softmax")(both)
    model = keras.Model(inp, out)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    x, y = _data()
    hist = model.fit(x, y, epochs=6, batch_size=32, verbose=0)
    assert hist.history["loss"][-1] < hist.history["loss"][0] * 0.8
    assert model.evaluate(x, y, verbose=0)[1] > 0.8
    assert len([layer for layer in model.layers if layer.name == "shared"]) == 1
    path = tmp_path / "f.safetensors"
    model.save(path)
    again = keras.models.load_model(path)
    assert type(again).__name__ == "Functional"
    np.testing.assert_array_equal(again.predict(x[:20], verbose=0), model.predict(x[:20], verbose=0))
    again.fit(x, y, epochs=1, batch_size=32, verbose=0)          # optimizer state came back too


def test_sequential_still_takes_keras_input_first():
    model = keras.Sequential([keras.Input(shape=(5,)), layers.Dense(3)])
    assert model.built and model.output_shape == (None, 3)


def test_functional_errors_are_clear():
    inp = keras.Input(shape=(4,))
    a, b = layers.Dense(3)(inp), layers.Dense(5)(inp)
    with pytest.raises(ValueError, match=r'needs inputs of one shape, got \(None, 3\), \(None, 5\)'):
        layers.Add()([a, b])
    with pytest.raises(ValueError, match="takes one input"):
        layers.Dense(2)([a, b])
    with pytest.raises(ValueError, match=r"input\(s\) \['spare'\] are not used to compute the outputs"):
        keras.Model([inp, keras.Input(shape=(4,), name="spare")], a)
    with pytest.raises(ValueError, match="depends on an input that is not in `inputs`"):
        keras.Model(keras.Input(shape=(4,)), a)
    model = keras.Model(inp, layers.Dense(2)(a))
    with pytest.raises(ValueError, match=r'Input 0 of model .* expected shape=\(None, 4\), found shape=\(2, 7\)'):
        model.predict(np.zeros((2, 7), np.float32), verbose=0)
    with pytest.raises(ValueError, match=r"Concatenate\(\)\(\[a, b\]\)|merges a list"):
        layers.Concatenate()(a)


def _two_input_model():
    keras.utils.set_random_seed(11)
    image = keras.Input(shape=(8, 8, 1), name="image")
    meta = keras.Input(shape=(3,), name="meta")
    a = layers.Flatten()(layers.Conv2D(4, (3, 3), activation="relu")(image))
    b = layers.Dense(4, activation="relu")(meta)
    joint = layers.Dense(16, activation="relu")(layers.Concatenate()([a, b]))
    out = layers.Dense(2, activation="softmax")(joint)
    model = keras.Model(inputs=[image, meta], outputs=out)
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def _two_input_data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    bright = rng.integers(0, 2, n)
    img = (0.5 * rng.random((n, 8, 8, 1)) + 0.5 * bright[:, None, None, None]).astype(np.float32)
    meta = rng.normal(size=(n, 3)).astype(np.float32)
    y = (bright ^ (meta[:, 0] > 0)).astype(np.int64)           # XOR: needs both inputs
    return img, meta, y


def test_two_input_model_trains_from_a_list_or_a_dict_and_saves(tmp_path):
    img, meta, y = _two_input_data()
    model = _two_input_model()
    assert model.input_names == ["image", "meta"]
    assert model.input_shape == [(None, 8, 8, 1), (None, 3)]
    h = model.fit([img, meta], y, epochs=15, batch_size=32, verbose=0, validation_split=0.25)
    assert h.history["accuracy"][-1] > 0.85 and "val_accuracy" in h.history
    loss, acc = model.evaluate({"meta": meta, "image": img}, y, verbose=0)      # a dict by input name
    assert acc > 0.85
    p_list = model.predict([img, meta], verbose=0)
    p_dict = model.predict({"image": img, "meta": meta}, batch_size=7, verbose=0)
    if model._device() == "cpu":        # row-independent BLAS: the batch size changes no bit
        np.testing.assert_array_equal(p_list, p_dict)
    else:                               # GPU matrix products differ in the last bit between batch sizes
        np.testing.assert_allclose(p_list, p_dict, rtol=1e-5, atol=1e-6)
    assert p_list.shape == (256, 2)
    path = tmp_path / "two.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.input_names == ["image", "meta"]
    np.testing.assert_array_equal(loaded.predict([img, meta], verbose=0), p_list)
    logs = model.train_on_batch([img[:16], meta[:16]], y[:16], return_dict=True)
    assert set(logs) == {"loss", "accuracy"}


def test_two_input_model_from_a_dataloader_of_tuples():
    from engine.data import DataLoader, Dataset
    img, meta, y = _two_input_data(n=96, seed=1)

    class Pairs(Dataset):
        def __len__(self):
            return len(y)

        def __getitem__(self, i):
            return (img[i], meta[i]), y[i]

    model = _two_input_model()
    loader = DataLoader(Pairs(), batch_size=32)
    model.fit(loader, epochs=1, verbose=0)
    assert model.predict(loader, verbose=0).shape == (96, 2)


def test_two_input_model_bad_input_is_a_clear_error():
    img, meta, y = _two_input_data(n=32)
    model = _two_input_model()
    with pytest.raises(ValueError, match=r"has 2 inputs \['image', 'meta'\]; pass a list of 2 arrays"):
        model.predict(img, verbose=0)
    with pytest.raises(ValueError, match=r"has 2 inputs \['image', 'meta'\] but got 3 arrays"):
        model.predict([img, meta, meta], verbose=0)
    with pytest.raises(ValueError, match=r"missing \['meta'\], unexpected \['metadata'\]"):
        model.predict({"image": img, "metadata": meta}, verbose=0)
    with pytest.raises(ValueError, match="different numbers of samples: image has 32, meta has 31"):
        model.predict([img, meta[:31]], verbose=0)
    with pytest.raises(ValueError, match=r'Input 1 "meta" of model .* expected shape=\(None, 3\), found shape=\(32, 4\)'):
        model.fit([img, np.zeros((32, 4), np.float32)], y, verbose=0)


def _two_output_model(loss_weights=None, metrics=("accuracy",)):
    keras.utils.set_random_seed(12)
    inp = keras.Input(shape=(6,), name="features")
    h = layers.Dense(16, activation="relu")(inp)
    cls = layers.Dense(3, activation="softmax", name="kind")(h)
    reg = layers.Dense(1, name="size")(h)
    model = keras.Model(inp, [cls, reg])
    model.compile(optimizer=keras.optimizers.Adam(0.02),
                  loss={"kind": "sparse_categorical_crossentropy", "size": "mse"},
                  loss_weights=loss_weights, metrics={"kind": list(metrics), "size": ["mae"]})
    return model


def _two_output_data(n=300, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    kind = np.argmax(x[:, :3], axis=1).astype(np.int64)
    size = (x[:, 3] - 0.5 * x[:, 4]).astype(np.float32)[:, None]
    return x, kind, size


def test_two_output_model_logs_losses_and_metrics_per_output_like_keras(tmp_path):
    x, kind, size = _two_output_data()
    model = _two_output_model(loss_weights={"kind": 1.0, "size": 0.5})
    assert model.output_names == ["kind", "size"] and model.output_shape == [(None, 3), (None, 1)]
    h = model.fit(x, [kind, size], epochs=30, batch_size=32, verbose=0, validation_split=0.2)
    assert list(h.history) == ["loss", "kind_loss", "size_loss", "kind_accuracy", "size_mae",
                               "val_loss", "val_kind_loss", "val_size_loss", "val_kind_accuracy", "val_size_mae"]
    assert h.history["kind_accuracy"][-1] > 0.9 and h.history["size_mae"][-1] < 0.3
    # the total is the weighted sum of the per-output losses (running means over the same batches)
    last = {k: v[-1] for k, v in h.history.items()}
    assert last["loss"] == pytest.approx(last["kind_loss"] + 0.5 * last["size_loss"], rel=1e-4)
    names_values = model.evaluate(x, {"size": size, "kind": kind}, verbose=0, return_dict=True)
    assert list(names_values) == ["loss", "kind_loss", "size_loss", "kind_accuracy", "size_mae"]
    p_kind, p_size = model.predict(x, verbose=0)
    assert p_kind.shape == (300, 3) and p_size.shape == (300, 1)
    np.testing.assert_allclose(p_kind.sum(axis=1), 1.0, rtol=1e-5)       # softmax applied in predict
    path = tmp_path / "two_out.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    for a, b in zip(loaded.predict(x, verbose=0), (p_kind, p_size)):
        np.testing.assert_array_equal(a, b)
    again = loaded.evaluate(x, [kind, size], verbose=0, return_dict=True)     # compile settings restored
    assert again == pytest.approx(names_values)


def test_fused_softmax_loss_per_output_matches_the_plain_loss():
    """The classification output trains on its logits (fused, stable); the value equals the plain loss."""
    x, kind, size = _two_output_data(n=64)
    model = _two_output_model()
    assert model._fused == (True, False)
    from engine.keras.layers.base import as_tensor_input
    xt = as_tensor_input(x)
    with engine.no_grad():
        fused = float(model._compute_loss(model._forward(xt, False, logits=model._fused), [kind, size]).item())
        probs = model._forward(xt, False)
        plain = float((model._losses[0](kind, probs[0]) + model._losses[1](size, probs[1])).item())
    assert fused == pytest.approx(plain, rel=1e-5)


def test_two_output_model_errors_name_the_outputs():
    x, kind, size = _two_output_data(n=32)
    model = _two_output_model()
    with pytest.raises(ValueError, match=r"has 2 outputs \['kind', 'size'\]; pass a list of 2 arrays"):
        model.fit(x, kind, verbose=0)
    with pytest.raises(ValueError, match=r"missing \['size'\], unexpected \['sizes'\]"):
        model.fit(x, {"kind": kind, "sizes": size}, verbose=0)
    with pytest.raises(ValueError, match=r"labels in y range over \[5, 5\] but the model outputs 3 classes"):
        model.fit(x, [np.full(32, 5), size], verbose=0)
    with pytest.raises(ValueError, match=r"\['volume'\] are not outputs of this model"):
        model.compile(optimizer="adam", loss={"kind": "mse", "volume": "mse"})
    with pytest.raises(ValueError, match=r"no loss for output\(s\) \['size'\]"):
        model.compile(optimizer="adam", loss={"kind": "mse"})
    with pytest.raises(ValueError, match="3 entries for 2 outputs"):
        model.compile(optimizer="adam", loss="mse", loss_weights=[1, 2, 3])


def test_two_output_model_from_a_dataloader_of_target_tuples():
    from engine.data import DataLoader, Dataset
    x, kind, size = _two_output_data(n=96)

    class Rows(Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], (kind[i], size[i])

    model = _two_output_model()
    loader = DataLoader(Rows(), batch_size=32)
    h = model.fit(loader, epochs=2, verbose=0)
    assert set(h.history) == {"loss", "kind_loss", "size_loss", "kind_accuracy", "size_mae"}
    logs = model.evaluate(loader, verbose=0, return_dict=True)
    assert logs["loss"] == pytest.approx(logs["kind_loss"] + logs["size_loss"], rel=1e-4)
