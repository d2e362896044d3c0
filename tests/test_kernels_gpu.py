"""Every CuPy kernel against its numpy reference on fresh random inputs (needs cupy and a CUDA device).

Tolerances (float32): elementwise kernels rel <= 1e-5, reductions rel <= 1e-4, each with an absolute floor
of the same size times the data scale for values near 0, where a relative error means nothing.
Skipped cleanly without cupy or without a device; run with `pytest -m gpu tests/test_kernels_gpu.py`.
"""
import numpy as np
import pytest

from engine import kernels as K
from engine.kernels import _multi_tensor, _runtime, _source, rnn_step
from engine.nn import _rnn
from rnn_cases import SEED_LSTM, SMALL, check_gru, check_lstm, check_rnn

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not K.available(), reason="needs cupy and a CUDA device")]

ELEM, RED = 1e-5, 1e-4


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


@pytest.fixture
def rng():
    return np.random.default_rng()          # fresh inputs every run, as the issue asks


def close(gpu, ref, rel, dtype=np.float32, scale=None):
    got = gpu.get() if hasattr(gpu, "get") else np.asarray(gpu)
    ref = np.asarray(ref)
    if dtype == np.float64:
        rel = 1e-12
    scale = float(np.max(np.abs(ref))) if scale is None and ref.size else (scale or 1.0)
    np.testing.assert_allclose(got, ref, rtol=rel, atol=rel * max(scale, 1e-30))


CONV = [(8, 3, 28, 28, 3, 3, 1, 1, 0, 0, 1, 1), (4, 5, 17, 13, 3, 2, 2, 1, 1, 2, 2, 1),
        (2, 2, 10, 7, 4, 3, 3, 2, 3, 2, 1, 3), (128, 1, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONV)
def test_im2col_col2im(cp, rng, case, dtype):
    n, c, h, w, kh, kw, sy, sx, ph, pw, dy, dx = case
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    col_ref = K.im2col(x, kh, kw, sy, sx, ph, pw, dy, dx)
    col = K.im2col(cp.asarray(x), kh, kw, sy, sx, ph, pw, dy, dx)
    assert isinstance(col, cp.ndarray) and col.shape == col_ref.shape
    np.testing.assert_array_equal(col.get(), col_ref)                     # pure data movement: exact
    np.testing.assert_array_equal(K.im2col(cp.asarray(x), kh, kw, sy, sx, ph, pw, dy, dx, pval=-np.inf).get(),
                                  K.im2col(x, kh, kw, sy, sx, ph, pw, dy, dx, pval=-np.inf))
    g = rng.standard_normal(col_ref.shape).astype(dtype)
    img = K.col2im(cp.asarray(g), h, w, sy, sx, ph, pw, dy, dx)
    close(img, K.col2im(g, h, w, sy, sx, ph, pw, dy, dx), ELEM * kh * kw, dtype)
    again = K.col2im(cp.asarray(g), h, w, sy, sx, ph, pw, dy, dx)
    assert cp.array_equal(img, again), "col2im must be deterministic (gather, no atomics)"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,c", [(128, 10), (64, 1000), (8, 50257), (1000, 3)])
@pytest.mark.parametrize("eps,reduction", [(0.0, "mean"), (0.1, "sum"), (0.05, "none")])
def test_softmax_xent(cp, rng, n, c, eps, reduction, dtype):
    z = (rng.standard_normal((n, c)) * 4).astype(dtype)
    y = rng.integers(0, c, n)
    y[rng.random(n) < 0.1] = -100
    loss_ref, lse_ref = K.softmax_xent_forward(z, y, eps, -100, reduction)
    loss, lse = K.softmax_xent_forward(cp.asarray(z), cp.asarray(y), eps, -100, reduction)
    close(lse, lse_ref, RED, dtype)
    close(loss, loss_ref, RED, dtype)
    g = rng.standard_normal(np.shape(loss_ref)).astype(dtype)
    dz = K.softmax_xent_backward(cp.asarray(z), cp.asarray(y), lse, cp.asarray(g), eps, -100, reduction)
    close(dz, K.softmax_xent_backward(z, y, lse_ref, g, eps, -100, reduction), RED, dtype)


def test_softmax_xent_int32_labels_and_bad_label(cp):
    z = cp.asarray(np.random.default_rng().standard_normal((4, 5)).astype(np.float32))
    loss, _ = K.softmax_xent_forward(z, cp.asarray([0, 7, -100, 4], dtype=cp.int32), reduction="none")
    loss = loss.get()
    assert np.isfinite(loss[0]) and np.isnan(loss[1]) and loss[2] == 0 and np.isfinite(loss[3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ["none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid"])
@pytest.mark.parametrize("shape,axis", [((64, 32, 13, 13), 1), ((256, 512), 1), ((16, 10, 64), -1)])
def test_bias_act(cp, rng, act, shape, axis, dtype):
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    b = rng.standard_normal(shape[axis]).astype(dtype)
    y_ref = K.bias_act_forward(x, b, act, axis=axis)
    y = K.bias_act_forward(cp.asarray(x), cp.asarray(b), act, axis=axis)
    close(y, y_ref, ELEM, dtype)
    g = rng.standard_normal(shape).astype(dtype)
    xd, bd, gd = cp.asarray(x), cp.asarray(b), cp.asarray(g)
    # reference in float64: float32 gelu' cancels two O(1) terms, so compare both paths to the exact value
    x64, b64, g64 = x.astype(np.float64), b.astype(np.float64), g.astype(np.float64)
    dz_ref, db_ref = K.bias_act_backward(g64, act, x=x64, bias=b64, axis=axis)
    for kw in (dict(y=y, x=xd, bias=bd), dict(x=xd, bias=bd)):
        dz, db = K.bias_act_backward(gd, act, axis=axis, **kw)
        close(dz, dz_ref, ELEM, dtype, scale=float(np.abs(g).max()))
        close(db, db_ref, RED, dtype, scale=float(np.abs(db_ref).max()) + float(np.abs(g).sum(
            axis=tuple(d for d in range(len(shape)) if d != axis % len(shape))).max()))


SHAPES = [(32, 1, 3, 3), (32,), (128, 5408), (128,), (10, 128), (10,), (0,), (3 * _multi_tensor.CHUNK + 1,)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cfg", [dict(momentum=0.0), dict(momentum=0.9, weight_decay=1e-4),
                                 dict(momentum=0.9, dampening=0.1), dict(momentum=0.9, nesterov=True)])
def test_sgd(cp, rng, cfg, dtype):
    ps = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    dps = [cp.asarray(p) for p in ps]
    bufs = [np.zeros_like(p) for p in ps]
    dbufs = [cp.zeros_like(p) for p in dps]
    for step in range(3):
        gs = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        K.sgd_momentum(ps, gs, bufs, 0.05, first_step=step == 0, **cfg)
        K.sgd_momentum(dps, [cp.asarray(g) for g in gs], dbufs, 0.05, first_step=step == 0, **cfg)
    for p, d in zip(ps, dps):
        close(d, p, ELEM, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("decoupled,wd", [(False, 0.0), (False, 1e-2), (True, 1e-2)])
def test_adam(cp, rng, decoupled, wd, dtype):
    ps = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    dps = [cp.asarray(p) for p in ps]
    st = [[np.zeros_like(p) for p in ps] for _ in range(2)]
    dst = [[cp.zeros_like(p) for p in dps] for _ in range(2)]
    for step in range(1, 4):
        gs = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        K.adam(ps, gs, st[0], st[1], step, 1e-3, 0.9, 0.999, 1e-8, wd, decoupled)
        K.adam(dps, [cp.asarray(g) for g in gs], dst[0], dst[1], step, 1e-3, 0.9, 0.999, 1e-8, wd, decoupled)
    for a, b in zip(dps + dst[0] + dst[1], ps + st[0] + st[1]):
        close(a, b, ELEM, dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_bucket(cp, rng, dtype):
    grads = [cp.asarray(rng.standard_normal(s).astype(dtype)) for s in SHAPES]
    offsets, total = K.layout(grads, align=64)
    flat = cp.full(total, cp.nan, dtype=dtype)
    K.pack(grads, flat, offsets)
    for g, o in zip(grads, offsets):
        assert cp.array_equal(flat[o:o + g.size], g.ravel())
    outs = [cp.empty_like(g) for g in grads]
    K.unpack(flat, outs, offsets, scale=0.25)
    for g, o in zip(grads, outs):
        assert cp.array_equal(o, g * dtype(0.25))
    strided = cp.zeros((2 * grads[1].size,), dtype)[::2]                   # fallback path, still correct
    K.unpack(flat, [strided], [offsets[1]])
    assert cp.array_equal(strided, grads[1])


def test_kernels_compile_once(cp):
    x = cp.ones((2, 1, 5, 5), cp.float32)
    K.im2col(x, 3, 3, 1, 1, 0, 0)
    k1 = _runtime.raw_kernel("conv.cu", "im2col_f32")
    K.im2col(x, 3, 3, 1, 1, 1, 1)
    assert _runtime.raw_kernel("conv.cu", "im2col_f32") is k1
    assert set(_runtime._modules) <= set(_source.cu_files())


RNN_SPECS = [rnn_step.LSTM_FWD, rnn_step.LSTM_BWD, rnn_step.GRU_FWD, rnn_step.GRU_BWD, rnn_step.RNN_FWD,
             rnn_step.RNN_BWD]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("spec", RNN_SPECS, ids=[s.name for s in RNN_SPECS])
def test_rnn_step_kernel_matches_twin(cp, rng, spec, dtype):
    """Each fused step kernel on strided (N, H) gate views, as the layers pass them, against its numpy twin."""
    N, H = 128, 96
    params = _source.parse_params(spec, "double")
    for kind in ("tanh", "relu") if spec.scalars else ("tanh",):
        args, twin_args = [], []
        for p in params:
            if p.is_scalar:
                args.append(np.int32(K.ACT_CODES[kind]))
                twin_args.append(args[-1])
                continue
            buf = (np.full((N, 4 * H), np.nan, dtype) if p.is_out
                   else (rng.standard_normal((N, 4 * H)) * 3).astype(dtype))
            if not p.is_out:
                buf[0, 2 * H:2 * H + 2] = [40.0, -40.0]                     # saturation: no inf / nan
            args.append(cp.asarray(buf)[:, 2 * H:3 * H])
            twin_args.append(buf[:, 2 * H:3 * H].copy())
        _runtime.LAUNCHER.elementwise(spec.name, *args)
        rnn_step.TWINS[spec.name](*twin_args)
        for p, got, ref in zip(params, args, twin_args):
            if p.is_out:
                assert bool(cp.isfinite(got).all()), f"{spec.name}: {p.name} not finite"
                close(got, ref, ELEM, dtype)


# whole layers (T matmuls + T fused kernels each way, cuBLAS against numpy's BLAS): matmul-level tolerance
LAYER_REL = {np.float32: RED, np.float64: 1e-10}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [SMALL, SEED_LSTM], ids=["small", "seed"])
@pytest.mark.parametrize("bias,h0_is_zero,needs", [(True, True, (True, False, False, True)),
                                                   (False, False, (True, True, True, True))])
def test_lstm_layer_fused(cp, sizes, bias, h0_is_zero, needs, dtype):
    check_lstm(None, dtype, bias, h0_is_zero, needs, rel=LAYER_REL[dtype], dev=cp.asarray, sizes=sizes,
               seed=int(np.random.default_rng().integers(1 << 30)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [SMALL, SEED_LSTM], ids=["small", "seed"])
@pytest.mark.parametrize("b_ih,b_hh", [(True, True), (False, True), (True, False)])
def test_gru_layer_fused(cp, sizes, b_ih, b_hh, dtype):
    check_gru(None, dtype, b_ih, b_hh, rel=LAYER_REL[dtype], dev=cp.asarray, sizes=sizes,
              seed=int(np.random.default_rng().integers(1 << 30)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("sizes", [SMALL, SEED_LSTM], ids=["small", "seed"])
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_rnn_layer_fused(cp, sizes, nonlinearity, dtype):
    check_rnn(None, dtype, nonlinearity, rel=LAYER_REL[dtype], dev=cp.asarray, sizes=sizes,
              seed=int(np.random.default_rng().integers(1 << 30)))


def test_recurrent_layers_dispatch_to_the_fused_kernels(cp):
    """engine.nn._rnn hands cupy float arrays to engine.kernels.rnn_step (and its context back to it)."""
    T, N, I, H = 3, 2, 4, 5
    z = lambda *s: cp.asarray(np.random.default_rng().standard_normal(s).astype(np.float32))  # noqa: E731
    x, h0 = z(T, N, I), z(N, H)
    assert _rnn._fused(x) is rnn_step
    packed, ctx = _rnn.lstm_forward(x, h0, z(N, H), z(4 * H, I), z(4 * H, H), z(4 * H))
    assert isinstance(ctx, rnn_step.FusedCtx) and packed.shape == (T + 1, N, H)
    grads = _rnn.lstm_backward(cp.ones(packed.shape, cp.float32), ctx, True, True, True, True)
    assert [g.shape for g in grads] == [(T, N, I), (N, H), (N, H), (4 * H, I), (4 * H, H), (4 * H,)]
    assert isinstance(_rnn.gru_forward(x, h0, z(3 * H, I), z(3 * H, H), None, None)[1], rnn_step.FusedCtx)
    assert isinstance(_rnn.rnn_forward(x, h0, z(H, I), z(H, H), None, "relu")[1], rnn_step.FusedCtx)


def test_nccl_single_rank_allreduce(cp):
    nccl_mod = pytest.importorskip("comm.nccl")
    if not nccl_mod.nccl_available():
        pytest.skip("cupy has no usable NCCL")
    with nccl_mod.NcclAllreduce(0, 1, lambda uid: uid) as comm:
        x = cp.arange(1000, dtype=cp.float32)
        out = comm.allreduce(x.copy(), op="sum", timeout=60)
        assert cp.array_equal(out, x)
        out = comm.allreduce_async(x.copy(), op="avg").wait(60)
        assert cp.array_equal(out, x)
