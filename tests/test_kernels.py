"""CPU reference paths of engine.kernels against naive loops, numpy compositions, finite differences and
(when importable) PyTorch.  These numpy paths are also the oracle for the emulated and the GPU kernels."""
import math

import numpy as np
import pytest

from engine import kernels as K

RNG = np.random.default_rng(1234)

CONV_CASES = [
    # (N, C, H, W, kh, kw, sy, sx, ph, pw, dy, dx)
    (2, 3, 7, 6, 3, 3, 1, 1, 0, 0, 1, 1),
    (2, 2, 8, 9, 3, 2, 2, 1, 1, 1, 1, 1),
    (1, 3, 9, 9, 3, 3, 2, 3, 2, 1, 2, 2),
    (3, 1, 5, 5, 1, 1, 1, 1, 0, 0, 1, 1),
    (1, 2, 6, 5, 2, 2, 2, 2, 0, 0, 1, 1),
    (2, 1, 10, 7, 4, 3, 3, 2, 3, 2, 1, 3),
]


def naive_im2col(x, kh, kw, sy, sx, ph, pw, dy, dx, pval=0.0):
    n, c, h, w = x.shape
    oh = (h + 2 * ph - dy * (kh - 1) - 1) // sy + 1
    ow = (w + 2 * pw - dx * (kw - 1) - 1) // sx + 1
    col = np.full((n, c, kh, kw, oh, ow), pval, dtype=x.dtype)
    for b in range(n):
        for ch in range(c):
            for ky in range(kh):
                for kx in range(kw):
                    for oy in range(oh):
                        for ox in range(ow):
                            iy, ix = oy * sy + ky * dy - ph, ox * sx + kx * dx - pw
                            if 0 <= iy < h and 0 <= ix < w:
                                col[b, ch, ky, kx, oy, ox] = x[b, ch, iy, ix]
    return col


def naive_col2im(col, h, w, sy, sx, ph, pw, dy, dx):
    n, c, kh, kw, oh, ow = col.shape
    img = np.zeros((n, c, h, w), dtype=col.dtype)
    for ky in range(kh):
        for kx in range(kw):
            for oy in range(oh):
                for ox in range(ow):
                    iy, ix = oy * sy + ky * dy - ph, ox * sx + kx * dx - pw
                    if 0 <= iy < h and 0 <= ix < w:
                        img[:, :, iy, ix] += col[:, :, ky, kx, oy, ox]
    return img


# ------------------------------------------------------------------------------------------------ conv


@pytest.mark.parametrize("case", CONV_CASES)
def test_im2col_matches_naive_loops(case):
    n, c, h, w, kh, kw, sy, sx, ph, pw, dy, dx = case
    x = RNG.standard_normal((n, c, h, w)).astype(np.float32)
    col = K.im2col(x, kh, kw, sy, sx, ph, pw, dy, dx)
    assert col.flags.c_contiguous and col.dtype == np.float32
    np.testing.assert_array_equal(col, naive_im2col(x, kh, kw, sy, sx, ph, pw, dy, dx))
    colm = K.im2col(x, kh, kw, sy, sx, ph, pw, dy, dx, pval=-np.inf)
    np.testing.assert_array_equal(colm, naive_im2col(x, kh, kw, sy, sx, ph, pw, dy, dx, pval=-np.inf))


@pytest.mark.parametrize("case", CONV_CASES)
def test_col2im_matches_naive_and_is_adjoint(case):
    n, c, h, w, kh, kw, sy, sx, ph, pw, dy, dx = case
    x = RNG.standard_normal((n, c, h, w))
    colshape = K.im2col(x, kh, kw, sy, sx, ph, pw, dy, dx).shape
    cvec = RNG.standard_normal(colshape)
    img = K.col2im(cvec, h, w, sy, sx, ph, pw, dy, dx)
    assert img.shape == (n, c, h, w)
    np.testing.assert_allclose(img, naive_col2im(cvec, h, w, sy, sx, ph, pw, dy, dx), rtol=1e-12, atol=1e-12)
    lhs = float(np.vdot(img, x))
    rhs = float(np.vdot(cvec, K.im2col(x, kh, kw, sy, sx, ph, pw, dy, dx)))
    assert lhs == pytest.approx(rhs, rel=1e-12, abs=1e-12)


def test_conv_outsize_and_errors():
    assert K.get_conv_outsize(28, 3, 1, 0) == 26
    assert K.get_conv_outsize(28, 3, 2, 1) == 14
    assert K.get_conv_outsize(10, 3, 1, 0, d=2) == 6
    with pytest.raises(ValueError, match="does not fit"):
        K.im2col(np.zeros((1, 1, 2, 2), np.float32), 3, 3, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="NCHW"):
        K.im2col(np.zeros((2, 2, 2), np.float32), 1, 1, 1, 1, 0, 0)
    with pytest.raises(ValueError, match="does not match"):
        K.col2im(np.zeros((1, 1, 3, 3, 5, 5)), 8, 8, 1, 1, 0, 0)


@pytest.mark.parametrize("case", CONV_CASES[:4])
def test_conv2d_via_im2col_matches_torch(case):
    torch = pytest.importorskip("torch")
    n, c, h, w, kh, kw, sy, sx, ph, pw, dy, dx = case
    x = RNG.standard_normal((n, c, h, w))
    wt = RNG.standard_normal((4, c, kh, kw))
    col = K.im2col(x, kh, kw, sy, sx, ph, pw, dy, dx)
    y = np.einsum("nckloq,fckl->nfoq", col, wt)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.conv2d(xt, torch.tensor(wt), stride=(sy, sx), padding=(ph, pw), dilation=(dy, dx))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-10, atol=1e-10)
    gy = RNG.standard_normal(y.shape)
    yt.backward(torch.tensor(gy))
    gcol = np.einsum("nfoq,fckl->nckloq", gy, wt)
    gx = K.col2im(gcol, h, w, sy, sx, ph, pw, dy, dx)
    np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------ softmax xent


def xent_composition(z, y, eps, ignore, reduction):
    """log_softmax -> (1-eps) NLL + eps * uniform, written the long way."""
    n, c = z.shape
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    valid = y != ignore
    per = np.zeros(n, dtype=z.dtype)
    for i in range(n):
        if valid[i]:
            per[i] = -(1 - eps) * logp[i, y[i]] - eps * logp[i].mean()
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / valid.sum() if valid.any() else np.nan


XENT_CASES = [(0.0, "mean"), (0.0, "sum"), (0.0, "none"), (0.1, "mean"), (0.25, "sum"), (0.3, "none")]


@pytest.mark.parametrize("eps,reduction", XENT_CASES)
def test_xent_forward_matches_composition(eps, reduction):
    z = RNG.standard_normal((9, 7)) * 4
    y = RNG.integers(0, 7, 9)
    y[[2, 5]] = -100
    loss, lse = K.softmax_xent_forward(z, y, eps, -100, reduction)
    np.testing.assert_allclose(loss, xent_composition(z, y, eps, -100, reduction), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse, np.log(np.exp(z).sum(1)), rtol=1e-12)
    assert np.asarray(loss).shape == ((9,) if reduction == "none" else ())


@pytest.mark.parametrize("eps,reduction", XENT_CASES)
def test_xent_backward_finite_differences(eps, reduction):
    z = RNG.standard_normal((5, 4)) * 2
    y = np.array([0, 3, -100, 1, 2])
    g = RNG.standard_normal(5) if reduction == "none" else np.asarray(1.7)
    _, lse = K.softmax_xent_forward(z, y, eps, -100, reduction)
    dz = K.softmax_xent_backward(z, y, lse, g, eps, -100, reduction)

    def f(zz):
        return float(np.sum(np.asarray(K.softmax_xent_forward(zz, y, eps, -100, reduction)[0]) * g))

    num = np.zeros_like(z)
    h = 1e-6
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        num[idx] = (f(zp) - f(zm)) / (2 * h)
    np.testing.assert_allclose(dz, num, rtol=1e-6, atol=1e-8)
    assert np.all(dz[2] == 0)


@pytest.mark.parametrize("eps,reduction", XENT_CASES)
def test_xent_matches_torch(eps, reduction):
    torch = pytest.importorskip("torch")
    z = RNG.standard_normal((16, 10)).astype(np.float32) * 3
    y = RNG.integers(0, 10, 16)
    y[[0, 7]] = -100
    loss, lse = K.softmax_xent_forward(z, y, eps, -100, reduction)
    zt = torch.tensor(z, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(zt, torch.tensor(y), ignore_index=-100, label_smoothing=eps,
                                           reduction=reduction)
    np.testing.assert_allclose(loss, lt.detach().numpy(), rtol=1e-5, atol=1e-6)
    g = RNG.standard_normal(lt.shape).astype(np.float32)
    lt.backward(torch.tensor(g))
    dz = K.softmax_xent_backward(z, y, lse, g, eps, -100, reduction)
    assert dz.dtype == np.float32
    np.testing.assert_allclose(dz, zt.grad.numpy(), rtol=1e-5, atol=1e-6)


def test_xent_edge_cases():
    z = np.array([[1000.0, 0.0, -1000.0], [-5.0, 5.0, 0.0]], dtype=np.float32)   # no overflow in lse
    loss, lse = K.softmax_xent_forward(z, np.array([0, 1]), reduction="none")
    assert np.all(np.isfinite(loss)) and lse[0] == pytest.approx(1000.0)
    loss, _ = K.softmax_xent_forward(z, np.array([-100, -100]))
    assert np.isnan(loss)                                                           # PyTorch: 0/0
    with pytest.raises(IndexError, match="outside"):
        K.softmax_xent_forward(z, np.array([0, 3]))
    with pytest.raises(ValueError, match="reduction"):
        K.softmax_xent_forward(z, np.array([0, 1]), reduction="avg")
    with pytest.raises(TypeError, match="integer"):
        K.softmax_xent_forward(z, np.array([0.0, 1.0]))


# -------------------------------------------------------------------------------------------- bias act


def test_numpy_erf_accuracy():
    x = np.concatenate([np.linspace(-7, 7, 20001), [0.0, 1e-300, -1e-8, 2.0, -2.0, 6.0, np.inf, -np.inf]])
    ref = np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(K.erf(x), ref, rtol=5e-15, atol=5e-16)
    e32 = K.erf(x.astype(np.float32))
    assert e32.dtype == np.float32
    np.testing.assert_allclose(e32, ref, rtol=0, atol=3e-7)
    assert np.isnan(K.erf(np.array([np.nan]))[0])


def act_reference(z, name):
    if name in ("none", "identity"):
        return z
    if name == "relu":
        return np.where(z > 0, z, 0)
    if name == "gelu":
        return np.array([0.5 * v * (1 + math.erf(v / math.sqrt(2))) for v in z.ravel()]).reshape(z.shape)
    if name == "gelu_tanh":
        return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z ** 3)))
    if name == "tanh":
        return np.tanh(z)
    return 1 / (1 + np.exp(-z))


ACTS = ["none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid"]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("axis", [1, -1])
def test_bias_act_forward_and_backward(act, axis):
    x = RNG.standard_normal((3, 4, 5)) * 3
    b = RNG.standard_normal(x.shape[axis])
    bshape = [1, 1, 1]
    bshape[axis] = -1
    z = x + b.reshape(bshape)
    y = K.bias_act_forward(x, b, act, axis=axis)
    np.testing.assert_allclose(y, act_reference(z, act), rtol=1e-12, atol=1e-14)
    g = RNG.standard_normal(x.shape)
    h = 1e-6
    num = g * (act_reference(z + h, act) - act_reference(z - h, act)) / (2 * h)
    if act == "relu":
        num[np.abs(z) < 1e-5] = g[np.abs(z) < 1e-5] * (z[np.abs(z) < 1e-5] > 0)
    dz, db = K.bias_act_backward(g, act, y=y, x=x, bias=b, axis=axis)
    np.testing.assert_allclose(dz, num, rtol=1e-6, atol=1e-8)
    red = tuple(d for d in range(3) if d != axis % 3)
    np.testing.assert_allclose(db, num.sum(axis=red), rtol=1e-6, atol=1e-8)
    dz_in, _ = K.bias_act_backward(g, act, x=x, bias=b, axis=axis)            # from the input only
    np.testing.assert_allclose(dz_in, num, rtol=1e-6, atol=1e-8)


def test_bias_act_matches_torch_float32():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = RNG.standard_normal((8, 6, 4, 4)).astype(np.float32) * 2
    b = RNG.standard_normal(6).astype(np.float32)
    fns = {"relu": F.relu, "gelu": F.gelu, "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
           "tanh": torch.tanh, "sigmoid": torch.sigmoid}
    for act, fn in fns.items():
        xt = torch.tensor(x, requires_grad=True)
        bt = torch.tensor(b, requires_grad=True)
        yt = fn(xt + bt.reshape(1, -1, 1, 1))
        g = RNG.standard_normal(x.shape).astype(np.float32)
        yt.backward(torch.tensor(g))
        y = K.bias_act_forward(x, b, act)
        assert y.dtype == np.float32
        np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-5, atol=1e-6, err_msg=act)
        dz, db = K.bias_act_backward(g, act, y=y, x=x, bias=b)
        assert dz.dtype == np.float32
        np.testing.assert_allclose(dz, xt.grad.numpy(), rtol=1e-5, atol=1e-5, err_msg=act)
        np.testing.assert_allclose(db, bt.grad.numpy(), rtol=1e-4, atol=1e-4, err_msg=act)


def test_bias_act_argument_errors():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError, match="unknown activation"):
        K.bias_act_forward(x, None, "swish")
    with pytest.raises(ValueError, match="bias shape"):
        K.bias_act_forward(x, np.zeros(2, np.float32), "relu")
    with pytest.raises(ValueError, match="pre-activation"):
        K.bias_act_backward(x, "gelu", y=x)
    assert K.bias_act_forward(x, None, "gelu", approximate="tanh").shape == (2, 3)


# ------------------------------------------------------------------------------------------- optimizers


def naive_sgd(p, g, buf, lr, momentum, dampening, wd, nesterov, first):
    """Scalar loop over PyTorch's documented SGD algorithm."""
    p, buf = p.copy(), None if buf is None else buf.copy()
    for i in np.ndindex(p.shape):
        d = g[i] + wd * p[i]
        if momentum:
            buf[i] = d if first else momentum * buf[i] + (1 - dampening) * d
            d = d + momentum * buf[i] if nesterov else buf[i]
        p[i] = p[i] - lr * d
    return p, buf


def naive_adam(p, g, m, v, step, lr, b1, b2, eps, wd, decoupled):
    """Adam/AdamW as written in the PyTorch docs (bias-corrected moments)."""
    p, m, v = p.copy(), m.copy(), v.copy()
    for i in np.ndindex(p.shape):
        gi = g[i]
        if decoupled:
            p[i] *= 1 - lr * wd
        else:
            gi = gi + wd * p[i]
        m[i] = b1 * m[i] + (1 - b1) * gi
        v[i] = b2 * v[i] + (1 - b2) * gi * gi
        mhat, vhat = m[i] / (1 - b1 ** step), v[i] / (1 - b2 ** step)
        p[i] -= lr * mhat / (math.sqrt(vhat) + eps)
    return p, m, v


SGD_CASES = [dict(momentum=0.0), dict(momentum=0.9), dict(momentum=0.9, dampening=0.3),
             dict(momentum=0.8, nesterov=True, weight_decay=0.01), dict(momentum=0.5, weight_decay=0.1, dampening=0.5)]


@pytest.mark.parametrize("cfg", SGD_CASES)
def test_sgd_matches_formula(cfg):
    shapes = [(3, 4), (5,), (2, 2, 2)]
    ps = [RNG.standard_normal(s) for s in shapes]
    bufs = [np.zeros(s) for s in shapes]
    ref_p, ref_b = [p.copy() for p in ps], [b.copy() for b in bufs]
    mom = cfg.get("momentum", 0.0)
    for step in range(3):
        gs = [RNG.standard_normal(s) for s in shapes]
        K.sgd_momentum(ps, gs, bufs if mom else None, 0.05, first_step=step == 0, **cfg)
        for k in range(len(shapes)):
            ref_p[k], nb = naive_sgd(ref_p[k], gs[k], ref_b[k], 0.05, mom, cfg.get("dampening", 0.0),
                                     cfg.get("weight_decay", 0.0), cfg.get("nesterov", False), step == 0)
            ref_b[k] = nb if nb is not None else ref_b[k]
    for p, r in zip(ps, ref_p):
        np.testing.assert_allclose(p, r, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 0.05), (True, 0.05)])
def test_adam_matches_formula(decoupled, wd):
    shapes = [(4, 3), (7,)]
    ps = [RNG.standard_normal(s) for s in shapes]
    ms = [np.zeros(s) for s in shapes]
    vs = [np.zeros(s) for s in shapes]
    refs = [(p.copy(), m.copy(), v.copy()) for p, m, v in zip(ps, ms, vs)]
    for step in range(1, 4):
        gs = [RNG.standard_normal(s) for s in shapes]
        K.adam(ps, gs, ms, vs, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled)
        refs = [naive_adam(p, g, m, v, step, 1e-2, 0.9, 0.999, 1e-8, wd, decoupled) for (p, m, v), g in zip(refs, gs)]
    for (p, m, v), (rp, rm, rv) in zip(zip(ps, ms, vs), refs):
        np.testing.assert_allclose(p, rp, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(m, rm, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(v, rv, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("cfg", SGD_CASES)
def test_sgd_matches_torch(cfg, dtype, tol):
    torch = pytest.importorskip("torch")
    shapes = [(6, 5), (5,), (3, 2, 2)]
    init = [RNG.standard_normal(s).astype(dtype) for s in shapes]
    tp = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = torch.optim.SGD(tp, lr=0.05, **cfg)
    ps = [a.copy() for a in init]
    mom = cfg.get("momentum", 0.0)
    bufs = [np.zeros_like(a) for a in init] if mom else None
    for step in range(4):
        gs = [RNG.standard_normal(s).astype(dtype) for s in shapes]
        for t, g in zip(tp, gs):
            t.grad = torch.tensor(g)
        opt.step()
        K.sgd_momentum(ps, gs, bufs, 0.05, first_step=step == 0, **cfg)
    for p, t in zip(ps, tp):
        assert p.dtype == dtype
        np.testing.assert_allclose(p, t.detach().numpy(), rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 3e-6)])
@pytest.mark.parametrize("kind,wd,betas", [("Adam", 0.0, (0.9, 0.999)), ("Adam", 0.02, (0.9, 0.999)),
                                           ("AdamW", 0.02, (0.9, 0.999)), ("AdamW", 0.1, (0.3, 0.99))])
def test_adam_matches_torch(kind, wd, betas, dtype, tol):
    torch = pytest.importorskip("torch")
    shapes = [(6, 5), (5,), (2, 3, 4)]
    init = [RNG.standard_normal(s).astype(dtype) for s in shapes]
    tp = [torch.tensor(a.copy(), requires_grad=True) for a in init]
    opt = getattr(torch.optim, kind)(tp, lr=3e-3, betas=betas, eps=1e-8, weight_decay=wd)
    ps = [a.copy() for a in init]
    ms = [np.zeros_like(a) for a in init]
    vs = [np.zeros_like(a) for a in init]
    for step in range(1, 6):
        gs = [RNG.standard_normal(s).astype(dtype) for s in shapes]
        for t, g in zip(tp, gs):
            t.grad = torch.tensor(g)
        opt.step()
        K.adam(ps, gs, ms, vs, step, 3e-3, betas[0], betas[1], 1e-8, wd, decoupled=kind == "AdamW")
    for k, t in enumerate(tp):
        st = opt.state[t]
        np.testing.assert_allclose(ps[k], t.detach().numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(ms[k], st["exp_avg"].numpy(), rtol=tol, atol=tol)
        np.testing.assert_allclose(vs[k], st["exp_avg_sq"].numpy(), rtol=tol, atol=tol)


def test_optimizer_argument_errors():
    p = [np.zeros(3, np.float32)]
    with pytest.raises(ValueError, match="nesterov"):
        K.sgd_momentum(p, p, p, 0.1, momentum=0.0, nesterov=True)
    with pytest.raises(ValueError, match="buffers"):
        K.sgd_momentum(p, p, None, 0.1, momentum=0.9)
    with pytest.raises(TypeError, match="one dtype"):
        K.sgd_momentum(p, [np.zeros(3, np.float64)], None, 0.1)
    with pytest.raises(ValueError, match="elements"):
        K.adam(p, [np.zeros(4, np.float32)], p, p, 1, 0.1)
    with pytest.raises(ValueError, match="step"):
        K.adam(p, p, p, p, 0, 0.1)


# ------------------------------------------------------------------------------------------------ bucket


def test_bucket_pack_unpack_roundtrip():
    arrays = [RNG.standard_normal(s).astype(np.float32) for s in [(3, 4), (5,), (2, 2, 2), (1,)]]
    offsets, total = K.layout(arrays, align=4)
    assert offsets == [0, 12, 20, 28] and total == 29
    flat = np.full(total, np.nan, np.float32)
    K.pack(arrays, flat, offsets)
    for a, o in zip(arrays, offsets):
        np.testing.assert_array_equal(flat[o:o + a.size], a.ravel())
    outs = [np.empty_like(a) for a in arrays]
    K.unpack(flat, outs, offsets)
    for a, b in zip(arrays, outs):
        np.testing.assert_array_equal(a, b)
    K.unpack(flat, outs, offsets, scale=0.25)
    for a, b in zip(arrays, outs):
        np.testing.assert_array_equal(b, a * np.float32(0.25))
    noncontig = np.zeros((4, 6), np.float32)[:, ::2]          # a strided target is still written correctly
    K.unpack(flat, [noncontig], [0])
    np.testing.assert_array_equal(noncontig, flat[:12].reshape(4, 3))
    with pytest.raises(ValueError, match="does not fit"):
        K.pack(arrays, np.zeros(10, np.float32), offsets)
    with pytest.raises(ValueError, match="offsets"):
        K.pack(arrays, flat, offsets[:2])


def test_dispatch_stays_on_numpy():
    from engine.kernels import _runtime
    x = np.zeros((1, 1, 4, 4), np.float32)
    assert not _runtime.is_cupy(x)
    assert type(K.im2col(x, 2, 2, 1, 1, 0, 0)) is np.ndarray
    assert isinstance(K.available(), bool)
    with pytest.raises(TypeError, match="float32 and float64"):
        _runtime.float_suffix(np.int32)
