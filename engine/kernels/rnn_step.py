"""Fused time steps of the recurrent layers (LSTM, GRU, Elman RNN) and the GPU layer loops around them.

Why: the numpy layers (engine/nn/_rnn.py) issue ~9 elementwise ops per LSTM step forward and ~17 backward.
On a GPU each is a kernel launch plus cupy's Python overhead, so a 28-step sequence is launch-bound (~800
launches).  Here a step is one matmul (h_{t-1} @ W_hh^T, or d_t @ W_hh backward) and one ElementwiseKernel
doing all of the step's gate math; the input projection of every step is one matmul before the loop and the
weight gradients one matmul after it (every step's gate gradients are kept: (T, N, G*H)).

    packed, ctx = lstm_forward_gpu(x, h0, c0, w_ih, w_hh, b, h0_is_zero)   same contracts as the
    dx, dh0, dc0, dw_ih, dw_hh, db = lstm_backward_gpu(g, ctx, ...)         engine.nn._rnn functions
    gru_forward_gpu / gru_backward_gpu, rnn_forward_gpu / rnn_backward_gpu

Layout is batch-major, as row-major gemms produce it: gate pre-activations (T, N, G*H), states (T+1, N, H).
Gate k is the column block [k*H, (k+1)*H); each kernel gets every block as a strided (N, H) view, which
cupy's ElementwiseKernel indexes through the view's strides -- no index arithmetic in the CUDA code.  LSTM
gates are permuted to i, f, o, g (as in _rnn.py); GRU gates are r, z, n.  Weights are used unscaled and the
gate sigmoid is 0.5 * tanh(z / 2) + 0.5, the numpy path's formula, so the stored activations mean the same.

Variable-length batches (batch_sizes or a keep mask, as in engine.nn._rnn): the kernels run the whole
batch; the held rows of step t get their state copied back after the step, and backward zeroes their gate
gradients and passes their state gradient through -- a few row copies per step, only for such a batch.

Three launchers run this glue: rt.CupyLauncher (the GPU), _emulate.HostLauncher (the CUDA source compiled
for the host, in tests) and TwinLauncher (each kernel's numpy twin below: the CPU oracle of the kernels).
"""
from __future__ import annotations

import numpy as np

from . import _runtime as rt
from . import _source
from .bias_act import ACT_CODES, act_forward_cpu, act_grad_cpu

_PRE = "rnn_step.cuh"

LSTM_FWD = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_lstm_fwd_step",
    "T xi, T xf, T xo, T xg, T hi, T hf, T ho, T hg, T c_prev",
    "T a_i, T a_f, T a_o, T a_g, T c, T tc, T h",
    "const T si = dpt_gate_sigmoid(xi + hi);\n"
    "const T sf = dpt_gate_sigmoid(xf + hf);\n"
    "const T so = dpt_gate_sigmoid(xo + ho);\n"
    "const T tg = dpt_tanh(xg + hg);\n"
    "const T cn = sf * c_prev + si * tg;\n"
    "const T tcn = dpt_tanh(cn);\n"
    "a_i = si; a_f = sf; a_o = so; a_g = tg; c = cn; tc = tcn; h = so * tcn;",
    _PRE))

LSTM_BWD = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_lstm_bwd_step",
    "T g, T dhm, T a_i, T a_f, T a_o, T a_g, T c_prev, T tc, T dc_in",
    "T d_i, T d_f, T d_o, T d_g, T dc_out",
    "const T dh = g + dhm;\n"
    "const T dc = dc_in + dh * a_o * dpt_dtanh(tc);\n"
    "d_i = dc * a_g * dpt_dsigmoid(a_i);\n"
    "d_f = dc * c_prev * dpt_dsigmoid(a_f);\n"
    "d_o = dh * tc * dpt_dsigmoid(a_o);\n"
    "d_g = dc * a_i * dpt_dtanh(a_g);\n"
    "dc_out = dc * a_f;",
    _PRE))

GRU_FWD = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_gru_fwd_step",
    "T xr, T xz, T xn, T hr, T hz, T hn_mm, T b_hn, T h_prev",
    "T a_r, T a_z, T a_n, T hn, T h",
    "const T r = dpt_gate_sigmoid(xr + hr);\n"
    "const T u = dpt_gate_sigmoid(xz + hz);\n"
    "const T hv = hn_mm + b_hn;\n"
    "const T nv = dpt_tanh(xn + r * hv);\n"
    "a_r = r; a_z = u; a_n = nv; hn = hv; h = nv + u * (h_prev - nv);",
    _PRE))

GRU_BWD = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_gru_bwd_step",
    "T g, T carry, T dhm, T a_r, T a_z, T a_n, T hn, T h_prev",
    "T dx_r, T dx_z, T dx_n, T dh_r, T dh_z, T dh_n, T carry_out",
    "const T dh = g + carry + dhm;\n"
    "const T dnp = dh * ((T)1 - a_z) * dpt_dtanh(a_n);\n"
    "const T dzp = dh * ((h_prev - a_n) * dpt_dsigmoid(a_z));\n"
    "const T drp = dnp * (hn * dpt_dsigmoid(a_r));\n"
    "dx_r = drp; dx_z = dzp; dx_n = dnp; dh_r = drp; dh_z = dzp; dh_n = dnp * a_r; carry_out = dh * a_z;",
    _PRE))

RNN_FWD = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_rnn_fwd_step", "T p, T hw, int32 kind", "T h", "h = dpt_act_forward(p + hw, kind);", _PRE, ("kind",)))

RNN_BWD = _source.register_elementwise(_source.ElementwiseSpec(
    "dpt_rnn_bwd_step", "T g, T dhm, T h, int32 kind", "T dp",
    "dp = (g + dhm) * dpt_act_grad_from_output(h, kind);", _PRE, ("kind",)))


# ------------------------------------------------------------------------------------------ numpy twins
# Same arguments as the kernels (inputs, then outputs written in place), same formulas and operation order.


def _sig(z):
    half = z.dtype.type(0.5)
    return half * np.tanh(half * z) + half


def _dsig(s):
    return s * (s.dtype.type(1) - s)


def _dtanh(t):
    return t.dtype.type(1) - t * t


def _store(*pairs):
    for dst, value in pairs:
        dst[...] = value


def lstm_fwd_twin(xi, xf, xo, xg, hi, hf, ho, hg, c_prev, a_i, a_f, a_o, a_g, c, tc, h):
    si, sf, so, tg = _sig(xi + hi), _sig(xf + hf), _sig(xo + ho), np.tanh(xg + hg)
    cn = sf * c_prev + si * tg
    tcn = np.tanh(cn)
    _store((a_i, si), (a_f, sf), (a_o, so), (a_g, tg), (c, cn), (tc, tcn), (h, so * tcn))


def lstm_bwd_twin(g, dhm, a_i, a_f, a_o, a_g, c_prev, tc, dc_in, d_i, d_f, d_o, d_g, dc_out):
    dh = g + dhm
    dc = dc_in + dh * a_o * _dtanh(tc)
    _store((d_i, dc * a_g * _dsig(a_i)), (d_f, dc * c_prev * _dsig(a_f)), (d_o, dh * tc * _dsig(a_o)),
           (d_g, dc * a_i * _dtanh(a_g)), (dc_out, dc * a_f))


def gru_fwd_twin(xr, xz, xn, hr, hz, hn_mm, b_hn, h_prev, a_r, a_z, a_n, hn, h):
    r, u = _sig(xr + hr), _sig(xz + hz)
    hv = hn_mm + b_hn
    nv = np.tanh(xn + r * hv)
    _store((a_r, r), (a_z, u), (a_n, nv), (hn, hv), (h, nv + u * (h_prev - nv)))


def gru_bwd_twin(g, carry, dhm, a_r, a_z, a_n, hn, h_prev, dx_r, dx_z, dx_n, dh_r, dh_z, dh_n, carry_out):
    dh = g + carry + dhm
    dnp = dh * (a_z.dtype.type(1) - a_z) * _dtanh(a_n)
    dzp = dh * ((h_prev - a_n) * _dsig(a_z))
    drp = dnp * (hn * _dsig(a_r))
    _store((dx_r, drp), (dx_z, dzp), (dx_n, dnp), (dh_r, drp), (dh_z, dzp), (dh_n, dnp * a_r),
           (carry_out, dh * a_z))


_ACT_NAMES = {ACT_CODES["tanh"]: "tanh", ACT_CODES["relu"]: "relu"}


def rnn_fwd_twin(p, hw, kind, h):
    h[...] = act_forward_cpu(p + hw, _ACT_NAMES[int(kind)])


def rnn_bwd_twin(g, dhm, h, kind, dp):
    dp[...] = (g + dhm) * act_grad_cpu(_ACT_NAMES[int(kind)], y=h)


TWINS = {LSTM_FWD.name: lstm_fwd_twin, LSTM_BWD.name: lstm_bwd_twin, GRU_FWD.name: gru_fwd_twin,
         GRU_BWD.name: gru_bwd_twin, RNN_FWD.name: rnn_fwd_twin, RNN_BWD.name: rnn_bwd_twin}


class TwinLauncher:
    """Runs each fused step through its numpy twin: the same glue as on the GPU, on the CPU, as the oracle."""

    xp_name = "numpy"

    def __init__(self):
        self.launches = []

    def elementwise(self, spec_name, *args):
        self.launches.append(spec_name)
        TWINS[spec_name](*args)


# ------------------------------------------------------------------------------------------ layer glue


class FusedCtx:
    """What a fused forward keeps for its backward; its type tells engine.nn._rnn to run the fused backward."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _xp(a):
    return rt.cupy() if rt.is_cupy(a) else np


def _blocks(a, gates, H):
    """The gate blocks of a (..., gates*H) array as strided (..., H) views (kernel arguments, no copies)."""
    return [a[..., k * H:(k + 1) * H] for k in range(gates)]


def _at(views, t):
    return [v[t] for v in views]


def _frozen(batch_sizes, keep, T, N):
    from ..nn._rnn import held_rows       # the numpy path's plan (engine.nn is loaded by now)
    return held_rows(batch_sizes, keep, T, N)


def _forward_setup(x, w_ih, w_hh, launcher):
    """What every forward starts from: the launcher, the array module, T, N, H and the compute dtype
    (checked to be one the kernels are compiled for)."""
    T, N, _ = x.shape
    dt = w_ih.dtype
    rt.float_suffix(dt)
    return launcher or rt.LAUNCHER, _xp(x), T, N, w_hh.shape[1], dt


def _input_projection(x, w, b):
    """x (T, N, I) @ w^T (+ b) for every time step at once: (T, N, rows of w), one matmul before the loop."""
    T, N, I = x.shape
    xw = (x.reshape(T * N, I) @ w.T).reshape(T, N, w.shape[0])
    if b is not None:
        xw += b
    return xw


# ------------------------------------------------------------------------------------------ LSTM


def lstm_forward_gpu(x, h0, c0, w_ih, w_hh, b, h0_is_zero=False, launcher=None, batch_sizes=None, keep=None):
    """Contract of engine.nn._rnn.lstm_forward: packed (T+1, N, H) = [h_1 .. h_T, c_T] and the context."""
    launcher, xp, T, N, H, dt = _forward_setup(x, w_ih, w_hh, launcher)
    from ..nn._rnn import _lstm_perm     # the numpy path's gate order (engine.nn is loaded by now)
    perm = _lstm_perm(H, xp)
    w_ih_p, w_hh_p = w_ih[perm], w_hh[perm]
    xw = _input_projection(x, w_ih_p, None if b is None else b[perm])
    hc = xp.empty((T + 2, N, H), dtype=dt)      # h_0 .. h_T, then c_T: the packed output is the view hc[1:]
    hc[0] = h0
    cs = xp.empty((T + 1, N, H), dtype=dt)      # c_0 .. c_T
    cs[0] = c0
    act = xp.empty((T, N, 4 * H), dtype=dt)     # sigmoid(i, f, o), tanh(g)
    tcs = xp.empty((T, N, H), dtype=dt)         # tanh(c_t)
    frozen = _frozen(batch_sizes, keep, T, N)
    _lstm_forward_loop(xw, hc, cs, act, tcs, w_hh_p, h0_is_zero, frozen, launcher)
    hc[T + 1] = cs[T]
    ctx = FusedCtx(x=x, hc=hc, cs=cs, act=act, tcs=tcs, w_ih_p=w_ih_p, w_hh_p=w_hh_p, perm=perm,
                   has_bias=b is not None, frozen=frozen)
    return hc[1:], ctx


def _lstm_forward_loop(xw, hc, cs, act, tcs, w_hh_p, h0_is_zero, frozen, launcher):
    """Per step: hw = h_{t-1} @ W_hh^T (skipped for a zero h_0), then one fused kernel for the gates and c, h."""
    xp = _xp(xw)
    T, N, G = xw.shape
    H = G // 4
    whh_t = xp.ascontiguousarray(w_hh_p.T)     # (H, 4H)
    hw = xp.empty((N, G), dtype=xw.dtype)
    hw_g, xw_g, act_g = _blocks(hw, 4, H), _blocks(xw, 4, H), _blocks(act, 4, H)
    for t in range(T):
        if t == 0 and h0_is_zero:
            hw.fill(0)
        else:
            xp.matmul(hc[t], whh_t, out=hw)
        launcher.elementwise(LSTM_FWD.name, *_at(xw_g, t), *hw_g, cs[t],
                             *_at(act_g, t), cs[t + 1], tcs[t], hc[t + 1])
        f = frozen[t]
        if f is not None:                                # finished sequences keep their h, c
            hc[t + 1, f] = hc[t, f]
            cs[t + 1, f] = cs[t, f]


def lstm_backward_gpu(gpacked, ctx, need_x, need_h0, need_c0, need_w, launcher=None):
    """Contract of engine.nn._rnn.lstm_backward: dx, dh0, dc0, dw_ih, dw_hh, db (db serves both biases)."""
    launcher = launcher or rt.LAUNCHER
    xp = _xp(gpacked)
    T, N, G = ctx.act.shape
    dt = ctx.act.dtype
    g = xp.ascontiguousarray(gpacked, dtype=dt)        # (T+1, N, H): dh_1 .. dh_T, dc_T
    dz = xp.empty((T, N, G), dtype=dt)                  # every step's gate gradients, order i, f, o, g
    dh0, dc0 = _lstm_backward_loop(g, ctx, dz, need_h0, launcher)
    dz2 = dz.reshape(T * N, G)
    dx = (dz2 @ ctx.w_ih_p).reshape(T, N, -1) if need_x else None
    dw_ih = dw_hh = db = None
    if need_w:
        dw_ih, dw_hh, db = _lstm_weight_grads(dz2, ctx)
    return dx, dh0, (dc0 if need_c0 else None), dw_ih, dw_hh, db


def _lstm_backward_loop(g, ctx, dz, need_h0, launcher):
    """Per step: one fused kernel (gate gradients into dz[t], dc_{t-1}), then dh_{t-1} = dz[t] @ W_hh."""
    xp = _xp(g)
    T, N, G = dz.shape
    H = G // 4
    dc_in = g[T].copy()                                  # dc ping-pongs: a kernel never reads what it writes
    dc_out = xp.empty_like(dc_in)
    dhm = xp.zeros((N, H), dtype=dz.dtype)               # dz[t+1] @ W_hh: zero at the last step
    act_g, dz_g = _blocks(ctx.act, 4, H), _blocks(dz, 4, H)
    for t in range(T - 1, -1, -1):
        f = ctx.frozen[t]
        if f is not None:                                # frozen rows: no step, the gradients pass through
            dh_frozen = g[t, f] + dhm[f]
        launcher.elementwise(LSTM_BWD.name, g[t], dhm, *_at(act_g, t), ctx.cs[t], ctx.tcs[t], dc_in,
                             *_at(dz_g, t), dc_out)
        if f is not None:
            dz[t, f] = 0
            dc_out[f] = dc_in[f]
        dc_in, dc_out = dc_out, dc_in
        if t > 0 or need_h0:
            xp.matmul(dz[t], ctx.w_hh_p, out=dhm)
            if f is not None:
                dhm[f] = dh_frozen
    return (dhm if need_h0 else None), dc_in


def _lstm_weight_grads(dz2, ctx):
    """[dW_ih | db | dW_hh] = dz^T [x_t, 1, h_{t-1}] over all steps in one matmul, rows back to i, f, g, o."""
    xp = _xp(dz2)
    x = ctx.x
    T, N, I = x.shape
    ones = [xp.ones((T, N, 1), dtype=dz2.dtype)] if ctx.has_bias else []
    xh = xp.concatenate([x.astype(dz2.dtype, copy=False)] + ones + [ctx.hc[:T]], axis=2).reshape(T * N, -1)
    dw = (dz2.T @ xh)[xp.argsort(ctx.perm)]
    k0 = I + len(ones)
    return dw[:, :I], dw[:, k0:], (dw[:, I] if ctx.has_bias else None)


# ------------------------------------------------------------------------------------------ GRU


def gru_forward_gpu(x, h0, w_ih, w_hh, b_ih, b_hh, launcher=None, batch_sizes=None, keep=None):
    """Contract of engine.nn._rnn.gru_forward: packed (T, N, H) = [h_1 .. h_T] and the context.

    b_hh's r and z parts are added to the input projection once (they sit outside any product); its n part
    goes to the kernel, which needs W_hn h + b_hn on its own (n = tanh(x_n + r * (W_hn h + b_hn))).
    """
    launcher, xp, T, N, H, dt = _forward_setup(x, w_ih, w_hh, launcher)
    xw = _input_projection(x, w_ih, b_ih)
    if b_hh is not None:
        xw[..., :2 * H] += b_hh[:2 * H]
        b_hn = b_hh[2 * H:]
    else:
        b_hn = xp.zeros((H,), dtype=dt)
    hs = xp.empty((T + 1, N, H), dtype=dt)      # h_0 .. h_T
    hs[0] = h0
    act = xp.empty((T, N, 3 * H), dtype=dt)     # r, z, n
    hn = xp.empty((T, N, H), dtype=dt)          # W_hn h + b_hn (needed for dr)
    whh_t = xp.ascontiguousarray(w_hh.T)       # (H, 3H)
    hw = xp.empty((N, 3 * H), dtype=dt)
    hw_g, xw_g, act_g = _blocks(hw, 3, H), _blocks(xw, 3, H), _blocks(act, 3, H)
    frozen = _frozen(batch_sizes, keep, T, N)
    for t in range(T):
        xp.matmul(hs[t], whh_t, out=hw)
        launcher.elementwise(GRU_FWD.name, *_at(xw_g, t), *hw_g, b_hn, hs[t], *_at(act_g, t), hn[t], hs[t + 1])
        f = frozen[t]
        if f is not None:
            hs[t + 1, f] = hs[t, f]
    return hs[1:], FusedCtx(x=x, hs=hs, act=act, hn=hn, frozen=frozen)


def gru_backward_gpu(gout, ctx, w_ih, w_hh, need_x, need_h0, need_w, need_bih, need_bhh, launcher=None):
    """Contract of engine.nn._rnn.gru_backward: dx, dh0, dw_ih, dw_hh, db_ih, db_hh."""
    launcher = launcher or rt.LAUNCHER
    xp = _xp(gout)
    T, N, G = ctx.act.shape
    dt = ctx.act.dtype
    g = xp.ascontiguousarray(gout, dtype=dt)
    dxw = xp.empty((T, N, G), dtype=dt)                  # d(x-side pre-activations) r, z, n
    dhw = xp.empty((T, N, G), dtype=dt)                  # d(h-side pre-activations): n part scaled by r
    dh0 = _gru_backward_loop(g, ctx, w_hh, dxw, dhw, need_h0, launcher)
    dxw2, dhw2 = dxw.reshape(T * N, G), dhw.reshape(T * N, G)
    x2 = ctx.x.reshape(T * N, -1)
    dx = (dxw2 @ w_ih).reshape(T, N, -1) if need_x else None
    dw_ih = dxw2.T @ x2 if need_w else None
    dw_hh = dhw2.T @ ctx.hs[:T].reshape(T * N, -1) if need_w else None
    db_ih = dxw2.sum(axis=0) if need_bih else None
    db_hh = dhw2.sum(axis=0) if need_bhh else None
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh


def _gru_backward_loop(g, ctx, w_hh, dxw, dhw, need_h0, launcher):
    """Per step: one fused kernel, then dhw[t] @ W_hh.  dh_{t-1} = dh_t * z_t + dhw[t] @ W_hh: the kernel
    passes dh_t * z_t on as `carry` (ping-pong buffers) and adds both parts at the next step."""
    xp = _xp(g)
    T, N, G = dxw.shape
    H = G // 3
    carry_in = xp.zeros((N, H), dtype=dxw.dtype)
    carry_out = xp.empty_like(carry_in)
    dhm = xp.zeros((N, H), dtype=dxw.dtype)
    act_g, dxw_g, dhw_g = _blocks(ctx.act, 3, H), _blocks(dxw, 3, H), _blocks(dhw, 3, H)
    for t in range(T - 1, -1, -1):
        launcher.elementwise(GRU_BWD.name, g[t], carry_in, dhm, *_at(act_g, t), ctx.hn[t], ctx.hs[t],
                             *_at(dxw_g, t), *_at(dhw_g, t), carry_out)
        f = ctx.frozen[t]
        if f is not None:                                # frozen rows: no step, all of dh is carried on
            dxw[t, f] = 0
            dhw[t, f] = 0                               # so dhm's frozen rows come out zero
            carry_out[f] = g[t, f] + carry_in[f] + dhm[f]
        carry_in, carry_out = carry_out, carry_in
        if t > 0 or need_h0:
            xp.matmul(dhw[t], w_hh, out=dhm)
    return carry_in + dhm if need_h0 else None


# ------------------------------------------------------------------------------------------ Elman RNN


def rnn_forward_gpu(x, h0, w_ih, w_hh, b, nonlinearity, launcher=None, batch_sizes=None, keep=None):
    """Contract of engine.nn._rnn.rnn_forward: packed (T, N, H) = [h_1 .. h_T] and the context."""
    launcher, xp, T, N, H, dt = _forward_setup(x, w_ih, w_hh, launcher)
    kind = rt.i32(ACT_CODES[nonlinearity])
    pre = _input_projection(x, w_ih, b)
    hs = xp.empty((T + 1, N, H), dtype=dt)
    hs[0] = h0
    whh_t = xp.ascontiguousarray(w_hh.T)
    hw = xp.empty((N, H), dtype=dt)
    frozen = _frozen(batch_sizes, keep, T, N)
    for t in range(T):
        xp.matmul(hs[t], whh_t, out=hw)
        launcher.elementwise(RNN_FWD.name, pre[t], hw, kind, hs[t + 1])
        f = frozen[t]
        if f is not None:
            hs[t + 1, f] = hs[t, f]
    return hs[1:], FusedCtx(x=x, hs=hs, kind=kind, frozen=frozen)


def rnn_backward_gpu(gout, ctx, w_ih, w_hh, need_x, need_h0, need_w, need_b, launcher=None):
    """Contract of engine.nn._rnn.rnn_backward: dx, dh0, dw_ih, dw_hh, db."""
    launcher = launcher or rt.LAUNCHER
    xp = _xp(gout)
    hs = ctx.hs
    T, N, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    g = xp.ascontiguousarray(gout, dtype=hs.dtype)
    dpre = xp.empty((T, N, H), dtype=hs.dtype)
    dhm = xp.zeros((N, H), dtype=hs.dtype)               # dpre[t+1] @ W_hh: zero at the last step
    for t in range(T - 1, -1, -1):
        launcher.elementwise(RNN_BWD.name, g[t], dhm, hs[t + 1], ctx.kind, dpre[t])
        f = ctx.frozen[t]
        if f is not None:                                # frozen rows: no step, the gradient passes through
            dpre[t, f] = 0
            dh_frozen = g[t, f] + dhm[f]
        if t > 0 or need_h0:
            xp.matmul(dpre[t], w_hh, out=dhm)
            if f is not None:
                dhm[f] = dh_frozen
    dp2 = dpre.reshape(T * N, H)
    dx = (dp2 @ w_ih).reshape(T, N, -1) if need_x else None
    dw_ih = dp2.T @ ctx.x.reshape(T * N, -1) if need_w else None
    dw_hh = dp2.T @ hs[:T].reshape(T * N, H) if need_w else None
    db = dp2.sum(axis=0) if need_b else None
    return dx, (dhm if need_h0 else None), dw_ih, dw_hh, db
