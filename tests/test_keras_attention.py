"""Keras 3's LayerNormalization and MultiHeadAttention, keras.ops, and the layers of Keras' "text
classification with Transformer" tutorial (a custom TokenAndPositionEmbedding and TransformerBlock).

Checked against torch.nn.functional.layer_norm / torch.nn.MultiheadAttention (skipped without torch)
and against a NumPy reference of Keras' einsum formulation; float64 gradchecks of the computations;
the tutorial model builds with only the import changed, has Keras' parameter counts, trains, and saves
and loads bit-identically."""
import numpy as np
import pytest

import engine
from engine import keras
from engine.keras import layers, ops
from engine.keras.layers.attention import multi_head_attention
from engine.keras.layers.normalization import layer_normalization

pytestmark = pytest.mark.timeout(120)

try:
    import torch
except ImportError:                                     # pragma: no cover - torch is optional
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def _x(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).normal(size=shape)).astype(np.float32)


def _randomize(layer, seed=1, scale=0.3):
    """Non-trivial weights (biases, gamma and beta away from their 0 / 1 starts)."""
    rng = np.random.default_rng(seed)
    layer.set_weights([w + rng.normal(scale=scale, size=w.shape).astype(np.float32) for w in layer.get_weights()])
    return layer


# ---------------------------------------------------------------- NumPy references of Keras' formulas
def _ln_ref(x, gamma, beta, axes, eps):
    x = x.astype(np.float64)
    mean = x.mean(axis=tuple(axes), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=tuple(axes), keepdims=True)
    shape = [1] * x.ndim
    for a in axes:
        shape[a] = x.shape[a]
    y = (x - mean) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma.reshape(shape)
    if beta is not None:
        y = y + beta.reshape(shape)
    return y


def _softmax(s):
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _mha_ref(q, v, k, w, mask=None):
    """keras.src.layers.attention.multi_head_attention with its einsum equations, in float64; mask
    (B, T, S) True = attend, handled as Keras' Softmax layer does."""
    qk, qb, kk, kb, vk, vb, ok, ob = [None if a is None else a.astype(np.float64) for a in w]
    Q = np.einsum("abc,cde->abde", q, qk) + (0 if qb is None else qb)
    K = np.einsum("abc,cde->abde", k, kk) + (0 if kb is None else kb)
    V = np.einsum("abc,cde->abde", v, vk) + (0 if vb is None else vb)
    Q = Q / np.sqrt(qk.shape[-1])
    S = np.einsum("aecd,abcd->acbe", K, Q)
    if mask is not None:
        m = mask[:, None].astype(np.float64)
        S = S + (1.0 - m) * -1e9
    P = _softmax(S)
    if mask is not None:
        P = P * m
    C = np.einsum("acbe,aecd->abcd", P, V)
    out = np.einsum("abcd,cde->abe", C, ok.reshape(ok.shape[:2] + (-1,)))
    out = out.reshape(out.shape[:2] + ok.shape[2:]) + (0 if ob is None else ob)
    return out, P


# ---------------------------------------------------------------- LayerNormalization
@needs_torch
def test_layer_normalization_matches_torch_layer_norm_with_keras_epsilon():
    x = _x((4, 6, 8), scale=3.0)
    ln = _randomize(layers.LayerNormalization())
    ln(x[:1])
    ln = _randomize(ln)
    assert ln.epsilon == 1e-3 and [w.name if hasattr(w, "name") else n for n, w in ln._weight_paths()] \
        == ["gamma", "beta"]
    gamma, beta = ln.get_weights()
    ours = ln(x).numpy()
    ref = torch.nn.functional.layer_norm(torch.tensor(x), (8,), torch.tensor(gamma), torch.tensor(beta), eps=1e-3)
    np.testing.assert_allclose(ours, ref.numpy(), rtol=1e-4, atol=1e-5)
    # two trailing axes: gamma / beta (T, D), torch's normalized_shape
    ln2 = layers.LayerNormalization(axis=[1, 2])
    ln2(x)
    ln2 = _randomize(ln2)
    g2, b2 = ln2.get_weights()
    assert g2.shape == (6, 8) and ln2.count_params() == 96
    ref2 = torch.nn.functional.layer_norm(torch.tensor(x), (6, 8), torch.tensor(g2), torch.tensor(b2), eps=1e-3)
    np.testing.assert_allclose(ln2(x).numpy(), ref2.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("axis", [1, -2, [2, 1], [1, 3]])
def test_layer_normalization_over_any_axes_matches_keras_formula(axis):
    x = _x((3, 5, 4, 2), seed=2, scale=2.0)
    ln = layers.LayerNormalization(axis=axis, epsilon=1e-2)
    ln(x)
    ln = _randomize(ln)
    axes = sorted(a % 4 for a in (axis if isinstance(axis, list) else [axis]))
    gamma, beta = ln.get_weights()
    # Keras sorts the axes: gamma / beta span them in increasing order (checked against Keras 3.15.1)
    assert gamma.shape == tuple(x.shape[a] for a in axes)
    np.testing.assert_allclose(ln(x).numpy(), _ln_ref(x, gamma, beta, axes, 1e-2), rtol=1e-4, atol=1e-5)


def test_layer_normalization_center_scale_config_and_mask():
    x = _x((2, 3, 4))
    only_beta = layers.LayerNormalization(scale=False)
    only_beta(x)
    assert only_beta._weight_names == ["beta"]
    only_gamma = layers.LayerNormalization(center=False, gamma_initializer="zeros")
    np.testing.assert_array_equal(only_gamma(x).numpy(), np.zeros_like(x))
    cfg = layers.LayerNormalization(axis=[1, 2], epsilon=1e-6, name="ln_cfg").get_config()
    again = layers.LayerNormalization.from_config(cfg)
    assert (again.axis, again.epsilon, again.name) == ([1, 2], 1e-6, "ln_cfg")
    # a mask (Embedding(mask_zero=True)) passes through
    ids = np.array([[3, 4, 0], [5, 0, 0]])
    emb = layers.Embedding(10, 4, mask_zero=True)
    y = layers.LayerNormalization()(emb(ids))
    np.testing.assert_array_equal(y._keras_mask, ids != 0)


def test_layer_normalization_gradcheck_float64():
    rng = np.random.default_rng(3)

    def t64(*shape):
        return engine.tensor(rng.normal(size=shape), dtype="float64", requires_grad=True)
    x = t64(2, 3, 4)
    for axes, wshape in (([2], (4,)), ([1], (3,)), ([1, 2], (3, 4))):
        g, b = t64(*wshape), t64(*wshape)
        assert engine.gradcheck(lambda x, g, b, axes=axes: layer_normalization(x, g, b, axes, 1e-3), [x, g, b])


def test_layer_normalization_in_sequential_saves_and_loads(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(5, 6)), layers.Dense(6), layers.LayerNormalization(axis=[1, 2]),
                              layers.Flatten(), layers.Dense(2)])
    _randomize(model.layers[1])
    x = _x((7, 5, 6))
    model.save(tmp_path / "ln.keras")
    again = keras.models.load_model(tmp_path / "ln.keras")
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))
    assert again.layers[1].axis == [1, 2]


def test_layer_normalization_errors_name_the_layer():
    with pytest.raises(ValueError, match=r'"ln_bad" \(LayerNormalization\): axis 3 is out of bounds'):
        layers.LayerNormalization(axis=3, name="ln_bad")(_x((2, 3, 4)))
    with pytest.raises(ValueError, match="batch axis"):
        layers.LayerNormalization(axis=0)(_x((2, 3)))
    with pytest.raises(ValueError, match="rms_scaling"):
        layers.LayerNormalization(rms_scaling=True)


# ---------------------------------------------------------------- MultiHeadAttention: weights
def test_multi_head_attention_weights_in_keras_layout_order_and_count():
    mha = layers.MultiHeadAttention(num_heads=2, key_dim=32)
    x = _x((3, 5, 32))
    assert mha(x, x).shape == (3, 5, 32)
    assert mha.count_params() == 8416                        # what Keras' summary reports
    assert [w.shape for w in mha.get_weights()] == [(32, 2, 32), (2, 32), (32, 2, 32), (2, 32), (32, 2, 32), (2, 32),
                                                    (2, 32, 32), (32,)]
    assert mha._weight_names == ["query_kernel", "query_bias", "key_kernel", "key_bias", "value_kernel",
                                 "value_bias", "attention_output_kernel", "attention_output_bias"]
    other = layers.MultiHeadAttention(num_heads=3, key_dim=4, value_dim=5, use_bias=False, output_shape=(2, 7))
    q, v, k = _x((2, 6, 8)), _x((2, 4, 10), seed=1), _x((2, 4, 9), seed=2)
    assert other(q, v, k).shape == (2, 6, 2, 7)
    assert [w.shape for w in other.get_weights()] == [(8, 3, 4), (9, 3, 4), (10, 3, 5), (3, 5, 2, 7)]
    cfg = other.get_config()
    again = layers.MultiHeadAttention.from_config(cfg)
    assert (again.num_heads, again.key_dim, again.value_dim, again.use_bias, again._output_shape) == \
        (3, 4, 5, False, (2, 7))


def _mha_built(num_heads=2, key_dim=3, q_dim=4, v_dim=None, k_dim=None, seed=0, **kwargs):
    keras.utils.set_random_seed(seed)
    mha = layers.MultiHeadAttention(num_heads=num_heads, key_dim=key_dim, **kwargs)
    mha.build((None, None, q_dim), (None, None, v_dim or q_dim), None if k_dim is None else (None, None, k_dim))
    return _randomize(mha, seed=seed + 1)


@pytest.mark.parametrize("masked", [False, True])
def test_multi_head_attention_matches_keras_einsum_reference(masked):
    mha = _mha_built(num_heads=3, key_dim=5, q_dim=6, v_dim=7, k_dim=8, value_dim=4, output_shape=9)
    q, v, k = _x((2, 4, 6), 1), _x((2, 5, 7), 2), _x((2, 5, 8), 3)
    qm = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)          # padded query steps attend to nothing
    vm = np.array([[1, 1, 1, 1, 0], [1, 0, 1, 1, 1]], bool)
    am = np.random.default_rng(4).random((2, 4, 5)) > 0.3
    if masked:
        out, scores = mha(q, v, k, query_mask=qm, value_mask=vm, attention_mask=am, use_causal_mask=True,
                          return_attention_scores=True)
        full = am & qm[:, :, None] & vm[:, None, :] & np.tril(np.ones((4, 5), bool))[None]
    else:
        out, scores = mha(q, v, k, return_attention_scores=True)
        full = None
    ref_out, ref_scores = _mha_ref(q, v, k, mha.get_weights(), full)
    np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_scores, rtol=1e-4, atol=1e-6)
    assert scores.shape == (2, 3, 4, 5)
    if masked:
        # Keras 3.15.1 hands on only a mask the query tensor carries, not one given as query_mask=
        assert getattr(out, "_keras_mask", None) is None
        assert not scores.numpy()[1, :, 3].any()               # a fully masked step: zero weights, no NaN


def _to_torch_mha(mha, embed_dim):
    qk, qb, kk, kb, vk, vb, ok, ob = mha.get_weights()
    h, d = qk.shape[1], qk.shape[2]
    t = torch.nn.MultiheadAttention(embed_dim, h, batch_first=True)
    with torch.no_grad():
        t.in_proj_weight.copy_(torch.tensor(np.concatenate([w.reshape(embed_dim, h * d).T for w in (qk, kk, vk)])))
        t.in_proj_bias.copy_(torch.tensor(np.concatenate([qb.ravel(), kb.ravel(), vb.ravel()])))
        t.out_proj.weight.copy_(torch.tensor(ok.reshape(h * d, embed_dim).T))
        t.out_proj.bias.copy_(torch.tensor(ob))
    return t


@needs_torch
@pytest.mark.parametrize("case", ["self", "cross_padded", "causal"])
def test_multi_head_attention_matches_torch_outputs_scores_and_gradients(case):
    e, h = 8, 2
    mha = _mha_built(num_heads=h, key_dim=e // h, q_dim=e)
    tm = _to_torch_mha(mha, e)
    q = _x((3, 5, e), 1)
    v = q if case != "cross_padded" else _x((3, 6, e), 2)
    s = v.shape[1]
    vm = np.ones((3, s), bool)
    if case == "cross_padded":
        vm[0, 4:] = False
        vm[2, 1:3] = False
    causal = case == "causal"
    qt = engine.tensor(q, requires_grad=True)
    vt = qt if case == "self" or causal else engine.tensor(v, requires_grad=True)
    out, scores = mha(qt, vt, value_mask=vm if case == "cross_padded" else None, use_causal_mask=causal,
                      return_attention_scores=True)
    proj = _x(out.shape, 9)
    (out * engine.tensor(proj)).sum().backward()
    q_t = torch.tensor(q, requires_grad=True)
    v_t = q_t if case == "self" or causal else torch.tensor(v, requires_grad=True)
    attn_mask = torch.tensor(~np.tril(np.ones((5, s), bool))) if causal else None
    kpm = torch.tensor(~vm) if case == "cross_padded" else None
    ref, ref_w = tm(q_t, v_t, v_t, key_padding_mask=kpm, attn_mask=attn_mask, need_weights=True,
                    average_attn_weights=False)
    (ref * torch.tensor(proj)).sum().backward()
    np.testing.assert_allclose(out.numpy(), ref.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), ref_w.detach().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(qt.grad.numpy(), q_t.grad.numpy(), rtol=1e-4, atol=1e-5)
    if vt is not qt:
        np.testing.assert_allclose(vt.grad.numpy(), v_t.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mha.attention_output_kernel.grad.numpy().reshape(e, e).T,
                               tm.out_proj.weight.grad.numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(mha.query_kernel.grad.numpy().reshape(e, e).T,
                               tm.in_proj_weight.grad.numpy()[:e], rtol=1e-4, atol=1e-5)


def test_multi_head_attention_gradcheck_float64_with_masks():
    rng = np.random.default_rng(5)

    def t64(*shape, scale=0.5):
        return engine.tensor(scale * rng.normal(size=shape), dtype="float64", requires_grad=True)
    b, t, s, d, h, kd = 2, 3, 4, 4, 2, 3
    q, v, k = t64(b, t, d), t64(b, s, d), t64(b, s, 5)
    w = [t64(d, h, kd), t64(h, kd), t64(5, h, kd), t64(h, kd), t64(d, h, 2), t64(h, 2), t64(h, 2, d), t64(d)]
    pad = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)[:, None, :] & np.array([[1, 1, 1], [1, 1, 0]], bool)[:, :, None]
    causal = np.tril(np.ones((t, s), bool))[None]
    for mask in (None, pad[:, None], causal[:, None], (pad & causal)[:, None]):
        def fn(q, v, k, *w, mask=mask):
            return multi_head_attention(q, v, k, list(w), mask)[0]
        assert engine.gradcheck(fn, [q, v, k] + w)

    def scores(q, v, *w):
        return multi_head_attention(q, v, v, list(w), causal[:, None])[1]
    w_self = [t64(d, h, kd), t64(h, kd), t64(d, h, kd), t64(h, kd), t64(d, h, 2), t64(h, 2), t64(h, 2, d), t64(d)]
    assert engine.gradcheck(scores, [q, v] + w_self)


def test_multi_head_attention_dropout_only_in_training_and_scores_before_dropout():
    mha = _mha_built(dropout=0.5, seed=3)
    x = _x((4, 6, 4))
    a = mha(x, x, training=False).numpy()
    np.testing.assert_array_equal(a, mha(x, x, training=False).numpy())
    out, scores = mha(x, x, training=True, return_attention_scores=True)
    assert not np.allclose(out.numpy(), a)
    np.testing.assert_allclose(scores.numpy().sum(-1), 1.0, rtol=1e-5)   # Keras returns them before dropout
    seeded = [_mha_built(dropout=0.5, seed=3, name=f"seeded_{i}") for i in range(2)]
    for m in seeded:
        m.seed, m._rng = 7, np.random.default_rng(7)
    np.testing.assert_array_equal(seeded[0](x, x, training=True).numpy(), seeded[1](x, x, training=True).numpy())


# ---------------------------------------------------------------- Attention / AdditiveAttention
def _luong_ref(q, v, k, scores, qm=None, vm=None, causal=False):
    """keras.src.layers.attention.attention._apply_scores and call(), in float64."""
    keep = np.ones(scores.shape, bool)
    if vm is not None:
        keep &= vm[:, None, :]
    if causal:
        keep &= np.tril(np.ones(scores.shape[1:], bool))[None]
    # in float32, as Keras computes it: a step that may attend to nothing gets (about) uniform weights
    w = _softmax((scores - 1e9 * (~keep)).astype(np.float32).astype(np.float64))
    out = w @ v
    if qm is not None:
        out = out * qm[:, :, None]
    return out, w


@pytest.mark.parametrize("mode", ["dot", "dot_scaled", "concat", "concat_scaled", "additive", "additive_unscaled"])
def test_attention_and_additive_attention_match_keras_formulas(mode):
    q, v, k = _x((2, 4, 5), 1), _x((2, 6, 3), 2), _x((2, 6, 5), 3)
    qm = np.array([[1, 1, 1, 0], [1, 1, 1, 1]], bool)
    vm = np.array([[1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1]], bool)
    if mode.startswith("additive"):
        layer = layers.AdditiveAttention(use_scale=mode == "additive")
    else:
        layer = layers.Attention(use_scale=mode.endswith("scaled"), score_mode=mode.split("_")[0])
    layer([q, v, k])
    if layer.weights:
        layer = _randomize(layer, scale=0.5)
    w = {n: a.astype(np.float64) for n, a in zip(layer._weight_names, layer.get_weights())}
    q64, k64 = q.astype(np.float64), k.astype(np.float64)
    if mode.startswith("dot"):
        scores = q64 @ k64.transpose(0, 2, 1) * w.get("scale", 1.0)
    elif mode.startswith("concat"):
        scores = w["concat_score_weight"] * np.tanh(w.get("scale", 1.0) * (q64[:, :, None] + k64[:, None])).sum(-1)
    else:
        scores = (w.get("scale", 1.0) * np.tanh(q64[:, :, None] + k64[:, None])).sum(-1)
    for causal in (False, True):
        out, att = layer([q, v, k], mask=[qm, vm], use_causal_mask=causal, return_attention_scores=True)
        ref_out, ref_att = _luong_ref(q64, v.astype(np.float64), k64, scores, qm, vm, causal)
        np.testing.assert_allclose(out.numpy(), ref_out, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(att.numpy(), ref_att, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(out._keras_mask, qm)
    if mode == "additive":
        assert layer.scale.shape == (5,) and layer.get_config()["use_scale"] is True


def test_attention_layers_in_functional_models_train_save_and_load(tmp_path):
    keras.utils.set_random_seed(2)
    inp = keras.Input(shape=(6,))
    emb = layers.Embedding(12, 8, mask_zero=True)(inp)
    luong, att = layers.Attention(use_scale=True, name="luong")([emb, emb], return_attention_scores=True)
    bahdanau = layers.AdditiveAttention(name="bahdanau")([emb, luong])
    assert att.shape == (None, 6, 6) and bahdanau.shape == (None, 6, 8)
    out = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling1D()(bahdanau))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    x = rng.integers(1, 12, size=(64, 6))
    x[:32, 4:] = 0
    y = (x[:, 0] > 6).astype(int)
    model.compile("adam", "sparse_categorical_crossentropy")
    scale_before = model.get_layer("luong").get_weights()[0].copy()
    model.fit(x, y, epochs=2, batch_size=16, verbose=0)
    assert model.get_layer("luong").get_weights()[0] != scale_before
    model.save(tmp_path / "att.keras")
    again = keras.models.load_model(tmp_path / "att.keras")
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))


# ---------------------------------------------------------------- functional models
def test_self_attention_after_embedding_mask_zero_masks_automatically():
    keras.utils.set_random_seed(0)
    ids = np.array([[4, 2, 7, 0, 0], [1, 9, 3, 5, 0], [8, 0, 0, 0, 0]])
    inp = keras.Input(shape=(5,))
    emb = layers.Embedding(10, 6, mask_zero=True)
    x = emb(inp)
    mha = layers.MultiHeadAttention(num_heads=2, key_dim=3)
    y = mha(x, x)
    pooled = layers.GlobalAveragePooling1D()(y)
    model = keras.Model(inp, pooled)
    _randomize(mha)
    e = emb(ids)
    keep = ids != 0
    by_hand = mha(e.detach(), e.detach(), query_mask=None, value_mask=None,
                  attention_mask=keep[:, :, None] & keep[:, None, :]).numpy()
    np.testing.assert_allclose(mha(e, e).numpy(), by_hand, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(mha(e, e)._keras_mask, keep)
    # the pooling averages the unmasked steps only: the functional model saw the mask
    expect = (by_hand * keep[..., None]).sum(1) / keep.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(ids, verbose=0), expect, rtol=1e-5, atol=1e-6)


def test_functional_attention_scores_mask_input_causal_and_save_load(tmp_path):
    keras.utils.set_random_seed(1)
    q_in, v_in = keras.Input(shape=(4, 6), name="q"), keras.Input(shape=(5, 6), name="v")
    m_in = keras.Input(shape=(4, 5), name="m")
    mha = layers.MultiHeadAttention(num_heads=2, key_dim=3, name="mha")
    out, scores = mha(q_in, v_in, attention_mask=m_in, use_causal_mask=True, return_attention_scores=True)
    assert out.shape == (None, 4, 6) and scores.shape == (None, 2, 4, 5)
    head = layers.Dense(3, name="head")(out)
    model = keras.Model([q_in, v_in, m_in], [head, scores])
    assert model.output_names == ["head", "mha"]
    _randomize(mha)
    q, v = _x((3, 4, 6), 1), _x((3, 5, 6), 2)
    m = (np.random.default_rng(3).random((3, 4, 5)) > 0.3).astype(np.float32)
    m[:, :, 0] = 1
    h, s = model.predict([q, v, m], verbose=0)
    o_ref, s_ref = mha(q, v, attention_mask=m.astype(bool), use_causal_mask=True, return_attention_scores=True)
    np.testing.assert_allclose(s, s_ref.numpy(), rtol=1e-6)
    assert not s[:, :, 0, 1:].any()                            # causal: step 0 sees step 0 only
    lines = []
    model.summary(print_fn=lines.append)
    assert any("mha (MultiHeadAttention)" in line and " 168" in line for line in lines)   # 4 * (6*2*3 + 6)
    model.save(tmp_path / "mha.keras")
    again = keras.models.load_model(tmp_path / "mha.keras")
    h2, s2 = again.predict([q, v, m], verbose=0)
    np.testing.assert_array_equal(h, h2)
    np.testing.assert_array_equal(s, s2)
    node = again._nodes[[n.layer.name for n in again._nodes].index("mha")]
    assert node.kwargs["use_causal_mask"] is True and node.kwargs["return_attention_scores"] is True


# ---------------------------------------------------------------- the Keras tutorial
class TransformerBlock(layers.Layer):
    """keras.io/examples/nlp/text_classification_with_transformer, verbatim (Keras 3 version)."""

    def __init__(self, embed_dim, num_heads, ff_dim, rate=0.1):
        super().__init__()
        self.att = layers.MultiHeadAttention(num_heads=num_heads, key_dim=embed_dim)
        self.ffn = keras.Sequential(
            [layers.Dense(ff_dim, activation="relu"), layers.Dense(embed_dim)]
        )
        self.layernorm1 = layers.LayerNormalization(epsilon=1e-6)
        self.layernorm2 = layers.LayerNormalization(epsilon=1e-6)
        self.dropout1 = layers.Dropout(rate)
        self.dropout2 = layers.Dropout(rate)

    def call(self, inputs):
        attn_output = self.att(inputs, inputs)
        attn_output = self.dropout1(attn_output)
        out1 = self.layernorm1(inputs + attn_output)
        ffn_output = self.ffn(out1)
        ffn_output = self.dropout2(ffn_output)
        return self.layernorm2(out1 + ffn_output)


class TokenAndPositionEmbedding(layers.Layer):
    def __init__(self, maxlen, vocab_size, embed_dim):
        super().__init__()
        self.token_emb = layers.Embedding(input_dim=vocab_size, output_dim=embed_dim)
        self.pos_emb = layers.Embedding(input_dim=maxlen, output_dim=embed_dim)

    def call(self, x):
        maxlen = ops.shape(x)[-1]
        positions = ops.arange(start=0, stop=maxlen, step=1)
        positions = self.pos_emb(positions)
        x = self.token_emb(x)
        return x + positions


def _tutorial_model(vocab_size=20000, maxlen=200, embed_dim=32, num_heads=2, ff_dim=32):
    inputs = layers.Input(shape=(maxlen,))
    embedding_layer = TokenAndPositionEmbedding(maxlen, vocab_size, embed_dim)
    x = embedding_layer(inputs)
    transformer_block = TransformerBlock(embed_dim, num_heads, ff_dim)
    x = transformer_block(x)
    x = layers.GlobalAveragePooling1D()(x)
    x = layers.Dropout(0.1)(x)
    x = layers.Dense(20, activation="relu")(x)
    x = layers.Dropout(0.1)(x)
    outputs = layers.Dense(2, activation="softmax")(x)
    return keras.Model(inputs=inputs, outputs=outputs)


def test_tutorial_model_builds_with_keras_parameter_counts():
    model = _tutorial_model()
    v, t, e, h, f = 20000, 200, 32, 2, 32
    emb = v * e + t * e
    mha = 3 * (e * h * e + h * e) + (h * e * e + e)          # key_dim = embed_dim, as the tutorial sets it
    block = mha + (e * f + f) + (f * e + e) + 2 * (2 * e)
    head = (e * 20 + 20) + (20 * 2 + 2)
    assert (emb, mha, block) == (646400, 8416, 10656)
    assert model.count_params() == emb + block + head == 657758
    lines = []
    model.summary(print_fn=lines.append)
    assert "Total params: 657,758 (2.51 MB)" in lines
    rows = {line.split()[0]: line for line in lines if line.startswith(" ") and "(" in line}
    assert "10,656" in rows["transformer_block"] and "646,400" in rows["token_and_position_embedding"]
    assert model.layers[2].output_shape_built == (None, 200, 32)
    block_layer = model.layers[2]
    assert len(block_layer.trainable_weights) == 8 + 4 + 4 and block_layer.non_trainable_weights == []


def test_tutorial_model_trains_and_saves_bit_identically(tmp_path):
    keras.utils.set_random_seed(0)
    vocab, maxlen = 50, 12
    model = _tutorial_model(vocab_size=vocab, maxlen=maxlen, embed_dim=16, num_heads=2, ff_dim=16)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=256)
    # class 0 uses the lower half of the vocabulary, class 1 the upper half
    x = np.where(y[:, None] == 0, rng.integers(1, vocab // 2, size=(256, maxlen)),
                 rng.integers(vocab // 2, vocab, size=(256, maxlen)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = model.fit(x, y, batch_size=32, epochs=3, verbose=0)
    loss = hist.history["loss"]
    assert loss[0] > loss[1] > loss[2], loss
    assert hist.history["accuracy"][-1] > 0.9
    model.save(tmp_path / "tutorial.keras")
    again = keras.models.load_model(tmp_path / "tutorial.keras", custom_objects={
        "TransformerBlock": TransformerBlock, "TokenAndPositionEmbedding": TokenAndPositionEmbedding})
    np.testing.assert_array_equal(model.predict(x, verbose=0), again.predict(x, verbose=0))
    assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]
    assert again.layers[2].get_config()["embed_dim"] == 16 and again.layers[2].att.num_heads == 2
    # training continues from the saved optimizer state
    again.fit(x, y, batch_size=32, epochs=1, verbose=0)


def test_composite_layer_freezes_and_sets_the_weights_of_the_layers_it_holds():
    block = TransformerBlock(8, 2, 8)
    x = _x((2, 5, 8))
    block(x)
    assert len(block.weights) == 16 and block.count_params() == 3 * (8 * 2 * 8 + 16) + (16 * 8 + 8) + 2 * 72 + 2 * 16
    paths = [p for p, _ in block._weight_paths()]
    assert paths[:2] == ["att/query_kernel", "att/query_bias"] and "ffn/0/kernel" in paths and paths[-1] == \
        "layernorm2/beta"
    new = [np.full(w.shape, 0.01 * i, np.float32) for i, w in enumerate(block.get_weights())]
    block.set_weights(new)
    np.testing.assert_array_equal(block.ffn.layers[0].kernel.numpy(), new[8])
    block.trainable = False
    assert block.trainable_weights == [] and not block.att.trainable and not block.att.query_kernel.requires_grad


# ---------------------------------------------------------------- keras.ops
def test_keras_ops_shape_arange_and_missing_names():
    assert ops.shape(np.zeros((2, 3))) == (2, 3)
    r = ops.arange(start=0, stop=4, step=1)
    assert r.dtype == np.int32 and r.numpy().tolist() == [0, 1, 2, 3]
    assert ops.arange(3).numpy().tolist() == [0, 1, 2] and ops.arange(0.0, 1.0, 0.5).dtype == np.float32
    assert ops.cast(ops.arange(2), "float32").dtype == np.float32
    assert keras.ops is ops
    with pytest.raises(AttributeError, match="keras.ops.einsum is not available"):
        ops.einsum


# ---------------------------------------------------------------- errors
def test_multi_head_attention_errors_name_the_layer_and_both_shapes():
    mha = layers.MultiHeadAttention(num_heads=2, key_dim=4, name="att")
    x = _x((2, 5, 8))
    mha(x, x)
    with pytest.raises(ValueError, match=r'"att" \(MultiHeadAttention\): was built for query with 8 features, '
                                         r"expected query shape \(None, None, 8\), received \(2, 5, 6\)"):
        mha(_x((2, 5, 6)), x)
    with pytest.raises(ValueError, match=r"value and key, except the last one, must be equal; received value shape "
                                         r"\(2, 5, 8\) and key shape \(2, 4, 8\)"):
        mha(x, x, _x((2, 4, 8)))
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, T, S\) = \(2, 5, 5\).*received "
                                         r"attention_mask shape \(2, 4, 5\)"):
        mha(x, x, attention_mask=np.ones((2, 4, 5), bool))
    with pytest.raises(ValueError, match=r"the value mask must have shape \(batch, timesteps\) = \(2, 5\), received "
                                         r"\(2, 4\)"):
        mha(x, x, value_mask=np.ones((2, 4), bool))
    # a (T, S) mask broadcasts over the batch, as in Keras; 0/1 numbers are cast to bool
    np.testing.assert_array_equal(mha(x, x, attention_mask=np.tril(np.ones((5, 5)))).numpy(),
                                  mha(x, x, use_causal_mask=True).numpy())
    with pytest.raises(ValueError, match="same batch size"):
        mha(x, _x((3, 5, 8)))
    with pytest.raises(ValueError, match=r"expected query of shape \(batch, timesteps, features\), received query "
                                         r"shape \(2, 3, 5, 8\) \(attention over several axes"):
        layers.MultiHeadAttention(2, 4)(_x((2, 3, 5, 8)), _x((2, 3, 5, 8)))
    with pytest.raises(ValueError, match="needs a query and a value"):
        mha(x)
    with pytest.raises(ValueError, match=r"attention_axes=\(1, 2\) is not supported"):
        layers.MultiHeadAttention(2, 4, attention_axes=(1, 2))
    assert layers.MultiHeadAttention(2, 4, attention_axes=1).attention_axes == [1]
    inp = keras.Input(shape=(5, 8))
    with pytest.raises(ValueError, match="all be symbolic"):
        mha(inp, x)


def test_attention_layers_errors():
    att = layers.Attention(name="luong")
    with pytest.raises(ValueError, match=r'"luong" \(Attention\): must be called on a list \[query, value\]'):
        att(_x((2, 3, 4)))
    with pytest.raises(ValueError, match=r"query and key need the same feature size, received query shape "
                                         r"\(2, 3, 4\) and key shape \(2, 5, 6\)"):
        att([_x((2, 3, 4)), _x((2, 5, 6))])
    with pytest.raises(ValueError, match="score_mode must be 'dot' or 'concat'"):
        layers.Attention(score_mode="general")
    add = layers.AdditiveAttention(name="bahdanau")
    add([_x((2, 3, 4)), _x((2, 5, 4))])
    with pytest.raises(ValueError, match=r'"bahdanau" \(AdditiveAttention\): was built for query with 4 features'):
        add([_x((2, 3, 6)), _x((2, 5, 6))])


def test_user_layer_config_is_its_constructor_arguments_when_plain():
    class Scale(layers.Layer):
        def __init__(self, factor, axes=(1, 2)):
            super().__init__()
            self.factor = factor

        def call(self, x):
            return x * self.factor

    cfg = Scale(2.5, axes=[1]).get_config()
    assert cfg["factor"] == 2.5 and cfg["axes"] == [1] and "name" in cfg
    again = Scale.from_config(cfg)
    assert again.factor == 2.5 and again.name == cfg["name"]

    class Opaque(layers.Layer):                          # a non-JSON argument: no automatic config
        def __init__(self, fn):
            super().__init__()
            self.fn = fn
    with pytest.raises(TypeError, match="Opaque.from_config: cannot rebuild.*get_config"):
        Opaque.from_config(Opaque(len).get_config())


# ---------------------------------------------------------------- GroupQueryAttention (Keras 3)
def _gqa_reference(q, v, k, ws, heads, kv_heads, causal=False, window=None):
    """Keras 3's GroupedQueryAttention in NumPy einsums (its equations), weights in get_weights order."""
    qk, qb, kk, kb, vk, vb, ok, ob = ws
    Q = np.einsum("bqm,muh->bquh", q, qk) + qb
    K = np.repeat(np.einsum("bkm,mvh->bkvh", k, kk) + kb, heads // kv_heads, axis=2)
    V = np.repeat(np.einsum("bkm,mvh->bkvh", v, vk) + vb, heads // kv_heads, axis=2)
    scores = np.einsum("bquh,bkuh->buqk", Q / np.sqrt(qk.shape[-1]), K)
    t, s = q.shape[1], v.shape[1]
    allowed = np.ones((t, s), bool)
    if causal:
        allowed &= np.tril(np.ones((t, s), bool))
    if window is not None:
        allowed &= np.abs(np.arange(t)[:, None] - np.arange(s)[None, :]) < window
    scores = np.where(allowed, scores, -1e9)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.einsum("buqk,bkuh->bquh", p, V)
    return np.einsum("bquh,uhm->bqm", out, ok) + ob, p


@pytest.mark.parametrize("case", ["plain", "causal_window", "key"])
def test_group_query_attention_matches_keras_equations(case):
    """Also checked by hand against Keras 3.15.1 (torch backend) with the same weights: outputs within
    1.2e-6, scores 2e-7, weight gradients 6e-6, for these three cases."""
    rng = np.random.default_rng(0)
    q = rng.standard_normal((2, 5, 12)).astype(np.float32)
    v = rng.standard_normal((2, 7, 12)).astype(np.float32)
    k = rng.standard_normal((2, 7, 6)).astype(np.float32) if case == "key" else v
    layer = layers.GroupQueryAttention(head_dim=4, num_query_heads=6, num_key_value_heads=2,
                                       sliding_window=2 if case == "causal_window" else None)
    kw = {"use_causal_mask": case == "causal_window"}
    layer(q, v, key=k if case == "key" else None, **kw)
    assert [tuple(w.shape) for w in layer.weights] == [(12, 6, 4), (6, 4), (6 if case == "key" else 12, 2, 4), (2, 4),
                                                         (12, 2, 4), (2, 4), (6, 4, 12), (12,)]
    ws = [rng.standard_normal(w.shape).astype(np.float32) * 0.4 for w in layer.get_weights()]
    layer.set_weights(ws)
    y, scores = layer(q, v, key=k if case == "key" else None, return_attention_scores=True, **kw)
    ref_y, ref_p = _gqa_reference(q, v, k, ws, 6, 2, causal=case == "causal_window",
                                  window=2 if case == "causal_window" else None)
    np.testing.assert_allclose(scores.numpy(), ref_p, atol=1e-6)
    np.testing.assert_allclose(y.numpy(), ref_y, atol=1e-5)
    # the shared key/value heads collect the gradients of their whole group
    out = layer(q, v, key=k if case == "key" else None, **kw)
    out.sum().backward()
    assert layer.key_kernel.grad.shape == (k.shape[-1], 2, 4) and np.abs(layer.key_kernel.grad.numpy()).sum() > 0


def test_group_query_attention_in_a_model_saves_and_checks_its_arguments(tmp_path):
    inp = keras.Input((6, 8))
    gqa = layers.GroupedQueryAttention(head_dim=4, num_query_heads=4, num_key_value_heads=1,
                                       kernel_regularizer="l2")
    x = gqa(inp, inp, use_causal_mask=True)
    model = keras.Model(inp, layers.Dense(2)(layers.GlobalAveragePooling1D()(x)))
    model.compile("adam", "mse")
    data = np.random.default_rng(1).standard_normal((8, 6, 8)).astype(np.float32)
    model.fit(data, np.zeros((8, 2), np.float32), epochs=1, verbose=0)
    assert len(gqa.losses) == 4           # kernel_regularizer on the four kernels
    model.save(tmp_path / "gqa.keras")
    back = keras.models.load_model(tmp_path / "gqa.keras")
    np.testing.assert_allclose(back.predict(data, verbose=0), model.predict(data, verbose=0), atol=1e-6)
    cfg = gqa.get_config()
    assert (cfg["head_dim"], cfg["num_query_heads"], cfg["num_key_value_heads"]) == (4, 4, 1)
    with pytest.raises(ValueError, match="divisible by `num_key_value_heads`"):
        layers.GroupQueryAttention(4, 6, 4)
    with pytest.raises(ValueError, match="sliding_window"):
        layers.GroupQueryAttention(4, 4, 2, sliding_window=0)
    with pytest.raises(ValueError, match="use_gate=True is not supported"):
        layers.GroupQueryAttention(4, 4, 2, use_gate=True)
