"""The torch.nn API that ported PyTorch scripts use beyond the core layers: BCE / smooth-L1 / Huber /
KL losses, SiLU / ELU / Softplus / Hardtanh, Conv1d, AdaptiveAvgPool2d, GroupNorm, RNN cells,
ParameterList / ParameterDict, MultiheadAttention and TransformerEncoderLayer, F.pad / normalize /
cosine_similarity / scaled_dot_product_attention, nn.utils (clip_grad_value_, pad_sequence,
parameters_to_vector).  Each gets a float64 finite-difference check of its backward and (when
PyTorch is installed) a float32 cross-check of outputs and every gradient against torch with the
same weights, plus torch's state_dict keys."""
import numpy as np
import pytest

import engine
import engine.nn as nn
import engine.nn.functional as F

try:
    import torch
    import torch.nn.functional as TF
except ImportError:          # the gradchecks still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")
RTOL, ATOL = 1e-4, 1e-5


def rnd(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def t64(a):
    return engine.tensor(np.asarray(a, dtype=np.float64), dtype="float64", requires_grad=True)


def gradcheck_module(module, *inputs):
    """gradcheck module(*inputs) w.r.t. its float inputs and all parameters (float64)."""
    module.double()
    params = list(module.parameters())
    n = len(inputs)

    def fn(*args):
        out = module(*args[:n])
        flat = [o for o in _flat(out) if o is not None]
        return engine.concat([o.reshape(-1) for o in flat]) if len(flat) > 1 else flat[0]
    assert engine.gradcheck(fn, list(inputs) + params)


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flat(o)]
    return [out]


def cross(tfn, efn, *arrays, tmod=None, emod=None, atol=ATOL, seed=1, nograd=()):
    """Run torch and engine on the same inputs (float arrays require grad unless their index is in
    nograd) and weights; compare the outputs, the input gradients and the parameter gradients."""
    if tmod is not None:
        emod.load_state_dict({k: v.detach().numpy().copy() for k, v in tmod.state_dict().items()})
    req = [a.dtype.kind == "f" and i not in nograd for i, a in enumerate(arrays)]
    ts = [torch.tensor(a, requires_grad=r) for a, r in zip(arrays, req)]
    es = [engine.tensor(a, requires_grad=r) for a, r in zip(arrays, req)]
    ot = [o for o in _flat(tfn(*ts)) if o is not None]
    oe = [o for o in _flat(efn(*es)) if o is not None]
    assert len(ot) == len(oe)
    rng = np.random.default_rng(seed)
    lt = le = 0
    for a, b in zip(ot, oe):
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=RTOL, atol=atol)
        g = rng.standard_normal(tuple(a.shape)).astype(np.float32)
        lt = lt + (a * torch.tensor(g)).sum()
        le = le + (b * engine.tensor(g)).sum()
    lt.backward()
    le.backward()
    for i, (a, b) in enumerate(zip(ts, es)):
        if a.requires_grad:
            assert b.grad is not None, f"input {i}"
            np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=RTOL, atol=atol, err_msg=f"input {i}")
    if tmod is not None:
        ours = dict(emod.named_parameters())
        for name, p in tmod.named_parameters():
            np.testing.assert_allclose(ours[name].grad.numpy(), p.grad.numpy(), rtol=RTOL, atol=atol, err_msg=name)


def pair(name, *args, **kwargs):
    torch.manual_seed(0)
    return getattr(torch.nn, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)


def same_keys(tmod, emod):
    st, se = tmod.state_dict(), emod.state_dict()
    assert list(st) == list(se)
    for k in st:
        assert tuple(st[k].shape) == se[k].shape, k


# ------------------------------------------------------------------------------------------ activations

ACTS = [("SiLU", (), {}), ("ELU", (0.7,), {}), ("Softplus", (), dict(beta=2.0, threshold=3.0)),
        ("Hardtanh", (-0.5, 0.8), {}), ("ReLU6", (), {})]


@pytest.mark.parametrize("name,args,kwargs", ACTS)
def test_activation_gradcheck(name, args, kwargs):
    x = rnd(3, 5, seed=2, scale=3.0)
    x = np.where(np.abs(x) < 0.05, 0.3, x)           # away from the kinks of Hardtanh/ReLU6/ELU
    x = np.where(np.abs(np.abs(x) - 0.5) < 0.05, 0.3, x)
    x = np.where(np.abs(x - 0.8) < 0.05, 0.3, x)
    x = np.where(np.abs(x * 2 - 3.0) < 0.05, 0.3, x)   # Softplus threshold
    gradcheck_module(getattr(nn, name)(*args, **kwargs), t64(x))


@needs_torch
@pytest.mark.parametrize("name,args,kwargs", ACTS)
def test_activation_matches_torch(name, args, kwargs):
    t, e = pair(name, *args, **kwargs)
    x = rnd(4, 6, seed=3, scale=4.0)
    x[0, :3] = [40.0, -40.0, 6.0]                 # large magnitudes: no overflow
    cross(t, e, x)


def test_activation_stability_float32():
    x = engine.tensor(np.array([-1e4, -100.0, 0.0, 100.0, 1e4], dtype=np.float32), requires_grad=True)
    for fn in (F.silu, F.elu, F.softplus):
        y = fn(x)
        y.sum().backward()
        assert np.isfinite(y.numpy()).all() and np.isfinite(x.grad.numpy()).all()
        x.grad = None


# ------------------------------------------------------------------------------------------ losses

def _probs(*shape, seed=0):
    return (0.05 + 0.9 * np.random.default_rng(seed).random(shape)).astype(np.float32)


def test_losses_gradcheck():
    x, t = t64(rnd(3, 4, seed=1)), t64(_probs(3, 4, seed=2))
    w, pw = np.abs(rnd(3, 4, seed=3)) + 0.1, np.abs(rnd(4, seed=4)) + 0.5
    for red in ("mean", "sum", "none"):
        for kw in ({}, dict(weight=w), dict(pos_weight=pw), dict(weight=w, pos_weight=pw)):
            assert engine.gradcheck(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction=red, **kw),
                                    [x, t])
        assert engine.gradcheck(lambda a, b: F.binary_cross_entropy(a, b, weight=w[0], reduction=red),
                                [t64(_probs(3, 4, seed=5)), t])
        assert engine.gradcheck(lambda a, b: F.smooth_l1_loss(a, b, reduction=red, beta=0.5), [x, t])
        assert engine.gradcheck(lambda a, b: F.huber_loss(a, b, reduction=red, delta=0.7), [x, t])
    logp = t64(np.log(_probs(3, 4, seed=6)))
    for red in ("mean", "sum", "none", "batchmean"):
        assert engine.gradcheck(lambda a, b: F.kl_div(a, b, reduction=red), [logp, t])
        assert engine.gradcheck(lambda a, b: F.kl_div(a, b, reduction=red, log_target=True), [logp, t])


LOSSES = [
    ("BCEWithLogitsLoss", {}), ("BCEWithLogitsLoss", dict(reduction="sum")),
    ("BCEWithLogitsLoss", dict(reduction="none", pos_weight="pw")),
    ("BCEWithLogitsLoss", dict(weight="w", pos_weight="pw")),
    ("BCELoss", {}), ("BCELoss", dict(weight="w", reduction="none")), ("BCELoss", dict(reduction="sum")),
    ("SmoothL1Loss", {}), ("SmoothL1Loss", dict(beta=0.3, reduction="sum")), ("SmoothL1Loss", dict(beta=0.0)),
    ("HuberLoss", {}), ("HuberLoss", dict(delta=0.4, reduction="none")),
    ("KLDivLoss", dict(reduction="batchmean")), ("KLDivLoss", dict(reduction="sum", log_target=True)),
    ("KLDivLoss", dict(reduction="none")), ("KLDivLoss", {}),
]


@needs_torch
@pytest.mark.filterwarnings("ignore::UserWarning")      # torch's note on KLDivLoss reduction='mean'
@pytest.mark.parametrize("name,kwargs", LOSSES)
def test_losses_match_torch(name, kwargs):
    consts = {"w": np.abs(rnd(4, 5, seed=7)) + 0.1, "pw": np.abs(rnd(5, seed=8)) + 0.5}
    tk = {k: torch.tensor(consts[v]) if v in consts else v for k, v in kwargs.items()}
    ek = {k: engine.tensor(consts[v]) if v in consts else v for k, v in kwargs.items()}
    t, e = getattr(torch.nn, name)(**tk), getattr(nn, name)(**ek)
    if name == "BCELoss":
        x, y = _probs(4, 5, seed=1), _probs(4, 5, seed=2)
    elif name == "KLDivLoss":
        x = np.log(_probs(4, 5, seed=1))
        y = np.log(_probs(4, 5, seed=2)) if kwargs.get("log_target") else _probs(4, 5, seed=2)
    else:
        x, y = rnd(4, 5, seed=1, scale=3.0), _probs(4, 5, seed=2)
    cross(t, e, x, y)


@needs_torch
def test_bce_with_logits_is_stable_for_huge_logits():
    x = np.array([[-200.0, -30.0, 0.0, 30.0, 200.0]], dtype=np.float32)
    y = np.array([[1.0, 0.0, 0.5, 1.0, 0.0]], dtype=np.float32)
    pw = np.array([2.0, 1.0, 3.0, 0.5, 1.5], dtype=np.float32)
    cross(lambda a, b: TF.binary_cross_entropy_with_logits(a, b, pos_weight=torch.tensor(pw)),
          lambda a, b: F.binary_cross_entropy_with_logits(a, b, pos_weight=pw), x, y)
    # BCE at exactly 0 and 1: the -100 log clamp gives torch's finite loss and input gradient (the
    # target gradient stays finite here, where torch's is +-inf, so it is not compared)
    p = np.array([0.0, 1.0, 0.3], dtype=np.float32)
    cross(lambda a, b: TF.binary_cross_entropy(a, b), lambda a, b: F.binary_cross_entropy(a, b),
          p, np.array([1.0, 0.0, 1.0], dtype=np.float32), nograd=(1,))


def test_loss_errors():
    with pytest.raises(ValueError, match="target size"):
        nn.BCEWithLogitsLoss()(engine.zeros(2, 3), engine.zeros(3, 2))
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.BCELoss()(engine.tensor([1.5]), engine.tensor([1.0]))
    with pytest.raises(ValueError, match="reduction"):
        nn.KLDivLoss(reduction="average")


# ------------------------------------------------------------------------------------------ layers

CONV1D = [((3, 6, 3), {}), ((4, 6, 3), dict(stride=2, padding=1, dilation=2, groups=2)),
          ((3, 4, 4), dict(padding="same", bias=False)), ((3, 5, 3), dict(padding=2, padding_mode="reflect")),
          ((3, 5, 3), dict(padding=1, padding_mode="circular")), ((3, 5, 2), dict(padding=1, padding_mode="replicate"))]


@pytest.mark.parametrize("args,kwargs", CONV1D)
def test_conv1d_gradcheck(args, kwargs):
    gradcheck_module(nn.Conv1d(*args, **kwargs), t64(rnd(2, args[0], 7)))


@needs_torch
@pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
@pytest.mark.parametrize("args,kwargs", CONV1D)
def test_conv1d_matches_torch(args, kwargs):
    t, e = pair("Conv1d", *args, **kwargs)
    same_keys(t, e)
    cross(t, e, rnd(3, args[0], 9), tmod=t, emod=e)
    cross(t, e, rnd(args[0], 9, seed=2), tmod=t, emod=e)          # unbatched (C, L)


@needs_torch
@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv2d_padding_modes_match_torch(mode):
    t, e = pair("Conv2d", 2, 3, 3, padding=(1, 2), padding_mode=mode)
    cross(t, e, rnd(2, 2, 5, 6), tmod=t, emod=e)


ADAPTIVE = [1, (1, 1), (2, 3), (3, 2), (None, 4), (5, 7), 4]


@pytest.mark.parametrize("size", ADAPTIVE)
def test_adaptive_avg_pool2d_gradcheck(size):
    gradcheck_module(nn.AdaptiveAvgPool2d(size), t64(rnd(2, 2, 6, 9)))


@needs_torch
@pytest.mark.parametrize("size", ADAPTIVE)
def test_adaptive_avg_pool2d_matches_torch(size):
    t, e = pair("AdaptiveAvgPool2d", size)
    cross(t, e, rnd(2, 3, 7, 9))
    cross(t, e, rnd(3, 6, 9))                                  # unbatched
    conv = nn.Conv2d(3, 4, 3)                                    # a conv output's channels-first layout
    x = engine.tensor(rnd(2, 3, 8, 10))
    np.testing.assert_allclose(e(conv(x)).numpy(), t(torch.tensor(conv(x).numpy())).numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kwargs", [dict(), dict(affine=False)])
def test_group_norm_gradcheck(kwargs):
    gradcheck_module(nn.GroupNorm(2, 4, **kwargs), t64(rnd(3, 4, 3, 2)))
    gradcheck_module(nn.GroupNorm(4, 4, **kwargs), t64(rnd(2, 4, 5)))


@needs_torch
@pytest.mark.parametrize("args,shape", [((2, 6), (3, 6, 4, 5)), ((3, 6), (2, 6, 7)), ((1, 4), (2, 4)),
                                        ((6, 6), (2, 6, 3, 3))])
def test_group_norm_matches_torch(args, shape):
    t, e = pair("GroupNorm", *args)
    with torch.no_grad():
        t.weight.normal_()
        t.bias.normal_()
    same_keys(t, e)
    cross(t, e, rnd(*shape, scale=2.0) + 1.0, tmod=t, emod=e)


CELLS = [("RNNCell", {}), ("RNNCell", dict(nonlinearity="relu", bias=False)), ("LSTMCell", {}), ("GRUCell", {}),
         ("GRUCell", dict(bias=False))]


def _hx(name, n, hidden, seed):
    shape = (n, hidden) if n else (hidden,)
    h = rnd(*shape, seed=seed)
    return (h, rnd(*shape, seed=seed + 1)) if name == "LSTMCell" else h


@pytest.mark.parametrize("name,kwargs", CELLS)
def test_cells_gradcheck(name, kwargs):
    cell = getattr(nn, name)(3, 4, **kwargs)
    x = t64(rnd(2, 3))
    gradcheck_module(cell, x)
    hx = _hx(name, 2, 4, 5)
    if name == "LSTMCell":
        h, c = t64(hx[0]), t64(hx[1])
        cell.double()
        assert engine.gradcheck(lambda a, b, c_, *p: engine.concat([o.reshape(-1) for o in cell(a, (b, c_))]),
                                [x, h, c] + list(cell.parameters()))
    else:
        gradcheck_module(cell, x, t64(hx))


@needs_torch
@pytest.mark.parametrize("name,kwargs", CELLS)
def test_cells_match_torch(name, kwargs):
    t, e = pair(name, 3, 5, **kwargs)
    same_keys(t, e)
    cross(t, e, rnd(4, 3), tmod=t, emod=e)
    for n in (4, 0):                                          # batched and unbatched, with a state
        hx = _hx(name, n, 5, 7)
        x = rnd(n, 3) if n else rnd(3)
        if name == "LSTMCell":
            cross(lambda a, b, c: t(a, (b, c)), lambda a, b, c: e(a, (b, c)), x, *hx, tmod=t, emod=e)
        else:
            cross(t, e, x, hx, tmod=t, emod=e)


@needs_torch
def test_cell_init_distribution_and_state_dict_roundtrip():
    t, e = pair("LSTMCell", 6, 50)
    bound = 1 / np.sqrt(50)
    w = e.weight_hh.numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.9 * bound
    e.load_state_dict({k: v.numpy() for k, v in t.state_dict().items()})


@needs_torch
def test_parameter_list_and_dict_match_torch():
    class T(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ws = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(2, 3)), torch.nn.Parameter(torch.ones(3))])
            self.d = torch.nn.ParameterDict({"scale": torch.nn.Parameter(torch.ones(4)), "shift": torch.nn.Parameter(
                torch.zeros(4))})

    class E(nn.Module):
        def __init__(self):
            super().__init__()
            self.ws = nn.ParameterList([engine.ones(2, 3), nn.Parameter(engine.ones(3))])
            self.d = nn.ParameterDict({"scale": engine.ones(4)})
            self.d["shift"] = engine.zeros(4)

    t, e = T(), E()
    same_keys(t, e)
    assert [n for n, _ in e.named_parameters()] == [n for n, _ in t.named_parameters()]
    assert isinstance(e.ws[0], nn.Parameter) and len(e.ws) == 2 and "scale" in e.d
    e.ws.append(np.zeros(5, dtype=np.float32))
    assert "ws.2" in e.state_dict() and e.ws[-1].requires_grad


# ------------------------------------------------------------------------------------------ attention

def _mha_inputs(batch_first, N=2, L=4, S=5, E=8, seed=0):
    q = rnd(N, L, E, seed=seed) if batch_first else rnd(L, N, E, seed=seed)
    kv = rnd(N, S, E, seed=seed + 1) if batch_first else rnd(S, N, E, seed=seed + 1)
    return q, kv


def test_mha_gradcheck():
    m = nn.MultiheadAttention(6, 2, batch_first=True)
    kpm = np.array([[False, False, True], [False, False, False]])
    am = np.triu(np.ones((3, 3), dtype=bool), 1)
    x = t64(rnd(2, 3, 6))
    m.double()
    params = list(m.parameters())
    assert engine.gradcheck(lambda a, *p: m(a, a, a, key_padding_mask=kpm, attn_mask=am)[0], [x] + params)
    kv = t64(rnd(2, 5, 6, seed=3))
    assert engine.gradcheck(lambda a, b, *p: engine.concat([o.reshape(-1) for o in m(a, b, b)]), [x, kv] + params)
    m2 = nn.MultiheadAttention(4, 2, kdim=3, vdim=5).double()
    q, k, v = t64(rnd(3, 2, 4)), t64(rnd(6, 2, 3, seed=1)), t64(rnd(6, 2, 5, seed=2))
    assert engine.gradcheck(lambda a, b, c, *p: m2(a, b, c)[0], [q, k, v] + list(m2.parameters()))


@needs_torch
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("case", ["self", "self_masks", "cross", "float_mask", "per_head_weights", "no_bias"])
def test_mha_matches_torch(batch_first, case):
    kwargs = dict(bias=False) if case == "no_bias" else {}
    t, e = pair("MultiheadAttention", 8, 2, batch_first=batch_first, **kwargs)
    same_keys(t, e)
    q, kv = _mha_inputs(batch_first)
    if case in ("self", "no_bias"):
        cross(lambda x: t(x, x, x), lambda x: e(x, x, x), q, tmod=t, emod=e)
    elif case == "self_masks":
        kpm = np.array([[False, False, False, True], [False, True, False, False]])
        am = np.triu(np.ones((4, 4), dtype=bool), 1)
        cross(lambda x: t(x, x, x, key_padding_mask=torch.tensor(kpm), attn_mask=torch.tensor(am)),
              lambda x: e(x, x, x, key_padding_mask=kpm, attn_mask=am), q, tmod=t, emod=e)
    elif case == "cross":
        cross(lambda a, b: t(a, b, b), lambda a, b: e(a, b, b), q, kv, tmod=t, emod=e)
    elif case == "float_mask":
        am = rnd(2 * 2, 4, 5, seed=9)
        cross(lambda a, b: t(a, b, b, attn_mask=torch.tensor(am), need_weights=False),
              lambda a, b: e(a, b, b, attn_mask=am, need_weights=False), q, kv, tmod=t, emod=e)
    else:
        cross(lambda a, b: t(a, b, b, average_attn_weights=False), lambda a, b: e(a, b, b, average_attn_weights=False),
              q, kv, tmod=t, emod=e)


@needs_torch
def test_mha_kdim_vdim_and_unbatched_match_torch():
    t, e = pair("MultiheadAttention", 8, 4, kdim=3, vdim=5)
    same_keys(t, e)
    cross(lambda a, b, c: t(a, b, c), lambda a, b, c: e(a, b, c), rnd(4, 2, 8), rnd(6, 2, 3, seed=1),
          rnd(6, 2, 5, seed=2), tmod=t, emod=e)
    t, e = pair("MultiheadAttention", 8, 2)
    cross(lambda x: t(x, x, x), lambda x: e(x, x, x), rnd(5, 8), tmod=t, emod=e)


@needs_torch
@pytest.mark.parametrize("kwargs", [dict(), dict(norm_first=True), dict(activation="gelu", batch_first=True)])
def test_transformer_encoder_layer_matches_torch(kwargs):
    t, e = pair("TransformerEncoderLayer", 8, 2, dim_feedforward=16, dropout=0.0, **kwargs)
    same_keys(t, e)
    x = rnd(2, 5, 8) if kwargs.get("batch_first") else rnd(5, 2, 8)
    cross(t, e, x, tmod=t, emod=e)
    kpm = np.array([[False] * 5, [False, False, False, True, True]])
    causal = np.triu(np.ones((5, 5), dtype=bool), 1)
    cross(lambda a: t(a, src_mask=torch.tensor(causal), src_key_padding_mask=torch.tensor(kpm)),
          lambda a: e(a, src_mask=causal, src_key_padding_mask=kpm), x, tmod=t, emod=e)


@needs_torch
@pytest.mark.filterwarnings("ignore:enable_nested_tensor:UserWarning")
def test_transformer_encoder_matches_torch():
    torch.manual_seed(0)
    t = torch.nn.TransformerEncoder(torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2,
                                    norm=torch.nn.LayerNorm(8))
    e = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0), 2, norm=nn.LayerNorm(8))
    same_keys(t, e)
    cross(t, e, rnd(5, 3, 8), tmod=t, emod=e)


def test_transformer_encoder_layer_gradcheck_and_dropout_modes():
    m = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.0, batch_first=True)
    gradcheck_module(m, t64(rnd(2, 3, 4)))
    d = nn.TransformerEncoderLayer(4, 2, dim_feedforward=6, dropout=0.5)
    x = engine.tensor(rnd(3, 2, 4))
    d.eval()
    np.testing.assert_array_equal(d(x).numpy(), d(x).numpy())
    d.train()
    assert not np.allclose(d(x).numpy(), d(x).numpy())


@needs_torch
@pytest.mark.parametrize("kwargs", [dict(), dict(is_causal=True), dict(mask="bool"), dict(mask="float"),
                                    dict(scale=0.3)])
def test_scaled_dot_product_attention_matches_torch(kwargs):
    q, k, v = rnd(2, 3, 4, 6), rnd(2, 3, 5, 6, seed=1), rnd(2, 3, 5, 7, seed=2)
    if kwargs.get("is_causal"):
        k, v = k[:, :, :4], v[:, :, :4]
    mask = kwargs.pop("mask", None)
    m = None
    if mask == "bool":
        m = np.random.default_rng(3).random((4, 5)) > 0.3
        m[:, 0] = True
    elif mask == "float":
        m = rnd(4, 5, seed=4)
    cross(lambda a, b, c: TF.scaled_dot_product_attention(a, b, c, attn_mask=None if m is None else torch.tensor(m),
                                                          **kwargs),
          lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=m, **kwargs), q, k, v)


# ------------------------------------------------------------------------------------------ functional

PADS = [((1, 2), "constant", 0.0), ((1, 2, 0, 3), "constant", -1.5), ((-1, 2, 1, -2), "constant", 0.0),
        ((2, 1), "reflect", None), ((1, 2, 2, 1), "reflect", None), ((2, 3), "replicate", None),
        ((1, 1, 2, 0), "replicate", None), ((2, 1, 1, 2), "circular", None)]


@pytest.mark.parametrize("pad,mode,value", PADS)
def test_pad_gradcheck(pad, mode, value):
    x = t64(rnd(2, 3, 4, 5))
    assert engine.gradcheck(lambda a: F.pad(a, pad, mode=mode, value=value), [x])


@needs_torch
@pytest.mark.parametrize("pad,mode,value", PADS)
def test_pad_matches_torch(pad, mode, value):
    if mode == "constant" or len(pad) == 4:         # torch pads 4-D input in the last two dims only
        cross(lambda a: TF.pad(a, pad, mode=mode, value=value), lambda a: F.pad(a, pad, mode=mode, value=value),
              rnd(2, 3, 4, 5))
    if len(pad) == 2:
        cross(lambda a: TF.pad(a, pad, mode=mode, value=value), lambda a: F.pad(a, pad, mode=mode, value=value),
              rnd(2, 3, 5))


def test_normalize_cosine_gradcheck():
    x, y = t64(rnd(3, 4, 2)), t64(rnd(3, 4, 2, seed=1))
    for p in (2.0, 1.0, 3.0):
        assert engine.gradcheck(lambda a: F.normalize(a, p=p, dim=1), [x])
    assert engine.gradcheck(lambda a, b: F.cosine_similarity(a, b, dim=1), [x, y])
    assert engine.gradcheck(lambda a, b: F.cosine_similarity(a, b[:1], dim=-1), [x, y])
    assert engine.gradcheck(lambda a, b: F.pairwise_distance(a, b), [x, y])
    z = engine.tensor(np.zeros((2, 3)), requires_grad=True)      # zero vectors: 1/eps like torch, not nan
    F.normalize(z).sum().backward()
    np.testing.assert_allclose(z.grad.numpy(), np.full((2, 3), 1e12))


@needs_torch
def test_normalize_cosine_match_torch():
    x, y = rnd(3, 5, 2), rnd(3, 5, 2, seed=1)
    for kw in (dict(), dict(dim=-1), dict(p=1.0, dim=0)):
        cross(lambda a: TF.normalize(a, **kw), lambda a: F.normalize(a, **kw), x)
    cross(lambda a, b: TF.cosine_similarity(a, b), lambda a, b: F.cosine_similarity(a, b), x, y)
    cross(lambda a, b: TF.cosine_similarity(a, b, dim=2), lambda a, b: F.cosine_similarity(a, b, dim=2), x, y[:1])
    cross(lambda a, b: TF.pairwise_distance(a, b), lambda a, b: F.pairwise_distance(a, b), x[:, :, 0], y[:, :, 0])


@needs_torch
def test_one_hot_and_adaptive_functional_match_torch():
    idx = np.array([[0, 3], [2, 1]])
    np.testing.assert_array_equal(F.one_hot(engine.tensor(idx), 5).numpy(),
                                  TF.one_hot(torch.tensor(idx), 5).numpy())
    cross(lambda a: TF.adaptive_avg_pool2d(a, (3, 4)), lambda a: F.adaptive_avg_pool2d(a, (3, 4)), rnd(2, 3, 7, 10))


# ------------------------------------------------------------------------------------------ utils

def test_pad_sequence_gradcheck_and_shapes():
    from engine.nn.utils.rnn import pad_sequence
    seqs = [t64(rnd(3, 2)), t64(rnd(1, 2, seed=1)), t64(rnd(4, 2, seed=2))]
    assert pad_sequence(seqs).shape == (4, 3, 2)
    assert engine.gradcheck(lambda *s: pad_sequence(list(s), batch_first=True, padding_value=-1.0), seqs)


@needs_torch
@pytest.mark.parametrize("kwargs", [dict(), dict(batch_first=True, padding_value=-2.0),
                                    dict(batch_first=True, padding_side="left")])
def test_pad_sequence_matches_torch(kwargs):
    from engine.nn.utils.rnn import pad_sequence
    arrays = [rnd(3, 2), rnd(1, 2, seed=1), rnd(4, 2, seed=2)]
    cross(lambda *s: torch.nn.utils.rnn.pad_sequence(list(s), **kwargs), lambda *s: pad_sequence(list(s), **kwargs),
          *arrays)
    ints = [np.array([1, 2, 3]), np.array([4])]
    np.testing.assert_array_equal(pad_sequence([engine.tensor(a) for a in ints], True).numpy(),
                                  torch.nn.utils.rnn.pad_sequence([torch.tensor(a) for a in ints], True).numpy())


@needs_torch
def test_clip_grad_value_and_parameter_vector_match_torch():
    t, e = pair("Linear", 4, 3)
    e.load_state_dict({k: v.detach().numpy() for k, v in t.state_dict().items()})
    x = rnd(5, 4, scale=5.0)
    (t(torch.tensor(x)) ** 2).sum().backward()
    (e(engine.tensor(x)) ** 2).sum().backward()
    torch.nn.utils.clip_grad_value_(t.parameters(), 0.5)
    nn.utils.clip_grad_value_(e.parameters(), 0.5)
    for (n, a), (_, b) in zip(t.named_parameters(), e.named_parameters()):
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=n)
        assert np.abs(b.grad.numpy()).max() <= 0.5
    vt = torch.nn.utils.parameters_to_vector(t.parameters())
    ve = nn.utils.parameters_to_vector(e.parameters())
    np.testing.assert_allclose(ve.numpy(), vt.detach().numpy(), rtol=RTOL)
    new = rnd(ve.shape[0], seed=5)
    nn.utils.vector_to_parameters(engine.tensor(new), e.parameters())
    torch.nn.utils.vector_to_parameters(torch.tensor(new), t.parameters())
    for (n, a), (_, b) in zip(t.named_parameters(), e.named_parameters()):
        np.testing.assert_array_equal(b.numpy(), a.detach().numpy(), err_msg=n)
    g = rnd(ve.shape[0], seed=6)
    (nn.utils.parameters_to_vector(e.parameters()) * engine.tensor(g)).sum().backward()   # differentiable
    assert e.weight.grad is not None


def test_new_modules_repr_and_errors():
    assert "kernel_size=(3,)" in repr(nn.Conv1d(2, 3, 3))
    assert "output_size=1" in repr(nn.AdaptiveAvgPool2d(1))
    with pytest.raises(ValueError, match="divisible"):
        nn.GroupNorm(3, 4)
    with pytest.raises(ValueError, match=r"Conv1d.*\(N, 2, L\)"):
        nn.Conv1d(2, 3, 3)(engine.zeros(1, 3, 8))
    with pytest.raises(ValueError, match="divisible"):
        nn.MultiheadAttention(6, 4)
    with pytest.raises(ValueError, match="reflect"):
        F.pad(engine.zeros(1, 2, 3), (3, 0), mode="reflect")
    with pytest.raises(ValueError, match=r"LSTMCell.*\(N, 3\)"):
        nn.LSTMCell(3, 4)(engine.zeros(2, 5))
