"""Shared cases for the fused recurrent-step tests (tests/test_rnn_fused.py on the numpy twins,
tests/test_kernels_nvcc.py on the host-emulated CUDA source, tests/test_kernels_gpu.py on a device):
`check_*` runs engine.kernels.rnn_step's layer glue under a launcher and compares it, output and every
gradient, with the numpy layers of engine.nn._rnn.
"""
import numpy as np

import engine
from engine import nn
from engine.kernels import rnn_step as R
from engine.nn import _rnn

DTYPES = [np.float32, np.float64]


def tol(dtype):
    return 1e-6 if dtype == np.float32 else 1e-12


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def close(got, ref, rel):
    got, ref = host(got), host(ref)
    assert got.shape == ref.shape
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=rel, atol=rel * max(scale, 1e-30))


def rand_array(rng, dtype, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


SMALL = dict(T=6, N=3, I=5, H=4)
SEED_LSTM = dict(T=28, N=128, I=28, H=128)      # the benchmark's seed LSTM (batch 128, 28 steps of 28 features)


def _weights(H):
    """Weight scale: 0.5 for the tiny cases (states far from 0 and from saturation), ~PyTorch's 1/sqrt(H) above."""
    return 0.5 if H <= 8 else 1.0 / np.sqrt(H)


def lstm_case(rng, dtype, T=6, N=3, I=5, H=4, bias=True):
    w = _weights(H)
    return dict(x=rand_array(rng, dtype, T, N, I), h0=rand_array(rng, dtype, N, H), c0=rand_array(rng, dtype, N, H),
                w_ih=rand_array(rng, dtype, 4 * H, I, scale=w), w_hh=rand_array(rng, dtype, 4 * H, H, scale=w),
                b=rand_array(rng, dtype, 4 * H) if bias else None)


def gru_case(rng, dtype, T=6, N=3, I=5, H=4, b_ih=True, b_hh=True):
    w = _weights(H)
    return dict(x=rand_array(rng, dtype, T, N, I), h0=rand_array(rng, dtype, N, H),
                w_ih=rand_array(rng, dtype, 3 * H, I, scale=w), w_hh=rand_array(rng, dtype, 3 * H, H, scale=w),
                b_ih=rand_array(rng, dtype, 3 * H) if b_ih else None,
                b_hh=rand_array(rng, dtype, 3 * H) if b_hh else None)


def rnn_case(rng, dtype, T=6, N=3, I=5, H=4, bias=True):
    w = _weights(H)
    return dict(x=rand_array(rng, dtype, T, N, I), h0=rand_array(rng, dtype, N, H),
                w_ih=rand_array(rng, dtype, H, I, scale=w), w_hh=rand_array(rng, dtype, H, H, scale=w),
                b=rand_array(rng, dtype, H) if bias else None)


def _on(dev, arrays):
    """The fused side's copy of the inputs: `dev` moves an array there (cupy.asarray on a GPU)."""
    return {k: None if v is None else dev(v) for k, v in arrays.items()}


def _same(a):
    return a


def check_lstm(launcher, dtype, bias=True, h0_is_zero=False, needs=(True, True, True, True), seed=0, rel=None,
               dev=_same, sizes=SMALL):
    """Fused glue under `launcher` against _rnn.lstm_forward/backward (numpy): packed output, then every gradient.

    launcher None means the cupy kernels (then `dev` must move arrays to the GPU)."""
    rng = np.random.default_rng(seed)
    a = lstm_case(rng, dtype, bias=bias, **sizes)
    if h0_is_zero:
        a["h0"][...] = 0
    ref, ctx_ref = _rnn.lstm_forward(**a, h0_is_zero=h0_is_zero)
    got, ctx = R.lstm_forward_gpu(**_on(dev, a), h0_is_zero=h0_is_zero, launcher=launcher)
    rel = rel or tol(dtype)
    close(got, ref, rel)
    g = rand_array(rng, dtype, *ref.shape)
    for r, x in zip(_rnn.lstm_backward(g, ctx_ref, *needs),
                    R.lstm_backward_gpu(dev(g), ctx, *needs, launcher=launcher)):
        assert (r is None) == (x is None)
        if r is not None:
            close(x, r, rel)


def check_gru(launcher, dtype, b_ih=True, b_hh=True, needs=(True, True, True, True, True), seed=0, rel=None,
              dev=_same, sizes=SMALL):
    rng = np.random.default_rng(seed)
    a = gru_case(rng, dtype, b_ih=b_ih, b_hh=b_hh, **sizes)
    d = _on(dev, a)
    ref, ctx_ref = _rnn.gru_forward(**a)
    got, ctx = R.gru_forward_gpu(**d, launcher=launcher)
    rel = rel or tol(dtype)
    close(got, ref, rel)
    g = rand_array(rng, dtype, *ref.shape)
    needs = (needs[0], needs[1], needs[2], needs[3] and b_ih, needs[4] and b_hh)
    for r, x in zip(_rnn.gru_backward(g, ctx_ref, a["w_ih"], a["w_hh"], *needs),
                    R.gru_backward_gpu(dev(g), ctx, d["w_ih"], d["w_hh"], *needs, launcher=launcher)):
        assert (r is None) == (x is None)
        if r is not None:
            close(x, r, rel)


def check_rnn(launcher, dtype, nonlinearity, bias=True, needs=(True, True, True, True), seed=0, rel=None,
              dev=_same, sizes=SMALL):
    rng = np.random.default_rng(seed)
    a = rnn_case(rng, dtype, bias=bias, **sizes)
    d = _on(dev, a)
    ref, ctx_ref = _rnn.rnn_forward(**a, nonlinearity=nonlinearity)
    got, ctx = R.rnn_forward_gpu(**d, nonlinearity=nonlinearity, launcher=launcher)
    rel = rel or tol(dtype)
    close(got, ref, rel)
    g = rand_array(rng, dtype, *ref.shape)
    needs = needs[:3] + (needs[3] and bias,)
    for r, x in zip(_rnn.rnn_backward(g, ctx_ref, a["w_ih"], a["w_hh"], *needs),
                    R.rnn_backward_gpu(dev(g), ctx, d["w_ih"], d["w_hh"], *needs, launcher=launcher)):
        assert (r is None) == (x is None)
        if r is not None:
            close(x, r, rel)


class WithState(nn.Module):
    """A recurrent layer run from learned initial states: the dh0 / dc0 paths and a non-zero h_0."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        shape = (layer.num_layers * (2 if layer.bidirectional else 1), 3, layer.hidden_size)
        self.h0 = nn.Parameter(engine.randn(*shape) * 0.5)
        if isinstance(layer, nn.LSTM):
            self.c0 = nn.Parameter(engine.randn(*shape) * 0.5)

    def forward(self, x):
        state = (self.h0, self.c0) if isinstance(self.layer, nn.LSTM) else self.h0
        out, _ = self.layer(x, state)
        return out
