"""The GPU recurrent path (engine.kernels.rnn_step) on the CPU: the fused-step glue run through each kernel's
numpy twin (TwinLauncher) must reproduce the numpy layers of engine.nn._rnn -- values and every gradient, to
1e-6 in float32 and 1e-12 in float64 (relative to the data's scale) -- and so must whole nn.LSTM / GRU / RNN
modules when engine.nn._rnn is made to dispatch to it.  The CUDA source of the same kernels is checked by
tests/test_kernels_nvcc.py (nvcc, host emulator) and on a device by tests/test_kernels_gpu.py.
"""
import numpy as np
import pytest

import engine
import engine.nn as nn
from engine.kernels import _runtime as rt
from engine.kernels import rnn_step as R
from engine.nn import _rnn
from rnn_cases import (DTYPES, SEED_LSTM, WithState, check_gru, check_lstm, check_rnn, close, lstm_case,
                       rand_array)

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias,h0_is_zero,needs", [
    (True, False, (True, True, True, True)), (False, False, (True, True, True, True)),
    (True, True, (True, False, False, True)), (False, True, (False, False, True, True)),
    (True, False, (False, True, False, False))])
def test_lstm_twin_matches_numpy_layer(dtype, bias, h0_is_zero, needs):
    launcher = R.TwinLauncher()
    check_lstm(launcher, dtype, bias, h0_is_zero, needs)
    T = lstm_case(np.random.default_rng(0), dtype)["x"].shape[0]
    assert launcher.launches == [R.LSTM_FWD.name] * T + [R.LSTM_BWD.name] * T     # one kernel per step


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b_ih,b_hh,needs", [(True, True, (True, True, True, True, True)),
                                             (False, True, (True, False, True, False, True)),
                                             (True, False, (False, True, True, True, False)),
                                             (False, False, (True, True, False, False, False))])
def test_gru_twin_matches_numpy_layer(dtype, b_ih, b_hh, needs):
    launcher = R.TwinLauncher()
    check_gru(launcher, dtype, b_ih, b_hh, needs)
    assert launcher.launches.count(R.GRU_FWD.name) == launcher.launches.count(R.GRU_BWD.name) == 6


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
@pytest.mark.parametrize("bias,needs", [(True, (True, True, True, True)), (False, (False, False, True, False))])
def test_rnn_twin_matches_numpy_layer(dtype, nonlinearity, bias, needs):
    check_rnn(R.TwinLauncher(), dtype, nonlinearity, bias, needs)


def test_twins_write_strided_views_in_place():
    """The kernels get gate blocks as strided views of bigger buffers; the twins must honour them the same way."""
    rng = np.random.default_rng(1)
    N, H = 3, 4
    z = rand_array(rng, np.float64, N, 8 * H)                 # x-side and h-side gate pre-activations
    c_prev = rand_array(rng, np.float64, N, H)
    out = np.full((N, 7 * H), np.nan)
    ins = [z[:, k * H:(k + 1) * H] for k in range(8)] + [c_prev]
    outs = [out[:, k * H:(k + 1) * H] for k in range(7)]
    R.lstm_fwd_twin(*ins, *outs)
    pre = z[:, :4 * H] + z[:, 4 * H:]
    s = 1 / (1 + np.exp(-pre))
    i, f, o, g = s[:, :H], s[:, H:2 * H], s[:, 2 * H:3 * H], np.tanh(pre[:, 3 * H:])
    c = f * c_prev + i * g
    np.testing.assert_allclose(out, np.concatenate([i, f, o, g, c, np.tanh(c), o * np.tanh(c)], axis=1),
                               rtol=1e-13, atol=1e-14)


def test_numpy_arrays_keep_the_numpy_path():
    x = np.zeros((2, 1, 3), np.float32)
    assert _rnn._fused(x) is None
    _, ctx = _rnn.lstm_forward(x, np.zeros((1, 2), np.float32), np.zeros((1, 2), np.float32),
                               np.zeros((8, 3), np.float32), np.zeros((8, 2), np.float32), None)
    assert isinstance(ctx, tuple) and _rnn._fused_ctx(ctx) is None


# ------------------------------------------------------------------------------------------ whole modules


MODULES = [
    ("LSTM 2 layers batch_first", lambda: nn.LSTM(5, 7, num_layers=2, batch_first=True), (3, 6, 5)),
    ("LSTM no bias bidirectional", lambda: nn.LSTM(5, 4, bias=False, bidirectional=True), (6, 3, 5)),
    ("LSTM with state", lambda: WithState(nn.LSTM(5, 4, batch_first=True)), (3, 6, 5)),
    ("GRU bidirectional", lambda: nn.GRU(5, 4, bidirectional=True), (6, 3, 5)),
    ("GRU no bias with state", lambda: WithState(nn.GRU(5, 4, bias=False, batch_first=True)), (3, 6, 5)),
    ("RNN relu with state", lambda: WithState(nn.RNN(5, 4, nonlinearity="relu", batch_first=True)), (3, 6, 5)),
    ("RNN tanh 2 layers", lambda: nn.RNN(5, 4, num_layers=2), (6, 3, 5)),
]


def _module_run(module, x):
    t = engine.tensor(x, requires_grad=True)
    out = module(t)
    out = out[0] if isinstance(out, tuple) else out
    w = engine.tensor(np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape))
    (out * w).sum().backward()
    return np.asarray(out.data), np.asarray(t.grad.data), {n: np.asarray(p.grad.data) for n, p in
                                                           module.named_parameters()}


@pytest.mark.parametrize("name,build,shape", MODULES, ids=[m[0] for m in MODULES])
def test_modules_through_the_fused_path(monkeypatch, name, build, shape):
    """nn modules end to end with engine.nn._rnn dispatching to the fused glue (twins standing in for the
    GPU kernels): functional's packing, slicing, states and gradient plumbing must work with its layouts."""
    engine.manual_seed(0)
    module = build()
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    ref = _module_run(module, x)
    module.zero_grad()
    launcher = R.TwinLauncher()
    monkeypatch.setattr(rt, "LAUNCHER", launcher)
    monkeypatch.setattr(_rnn, "_fused", lambda a: R)
    got = _module_run(module, x)
    assert {R.LSTM_BWD.name, R.GRU_BWD.name, R.RNN_BWD.name} & set(launcher.launches), "fused backward did not run"
    close(got[0], ref[0], 1e-6)
    close(got[1], ref[1], 1e-6)
    assert got[2].keys() == ref[2].keys()
    for n in ref[2]:
        close(got[2][n], ref[2][n], 1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_seed_lstm_size(dtype):
    """The benchmark's shape (28 steps, batch 128, 28 -> 128): rounding must not grow with the sequence."""
    check_lstm(R.TwinLauncher(), dtype, sizes=SEED_LSTM)
    check_gru(R.TwinLauncher(), dtype, sizes=SEED_LSTM)
    check_rnn(R.TwinLauncher(), dtype, "tanh", sizes=SEED_LSTM)
