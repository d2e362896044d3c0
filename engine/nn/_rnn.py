"""Array-level fused recurrent layers (LSTM, GRU, Elman RNN): one layer, one direction.

Why fused: a graph of per-timestep ops would record thousands of tiny nodes per batch.
Here a whole layer is one op: the input projection of every timestep is one matmul,
the time loop does one (N, H) @ (H, gates) matmul plus a handful of in-place
elementwise ops per step, and backward-through-time is written by hand with the
weight gradients again computed as single matmuls over all timesteps.

Layouts and gate orders are PyTorch's: weight_ih (G*H, I), weight_hh (G*H, H), LSTM
gates i, f, g, o; GRU gates r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).
Inputs are time-major (T, N, I).  Sigmoids are computed as 0.5 * tanh(z / 2) + 0.5 so one
tanh call covers every gate of a step; the 1/2 is folded into a scaled copy of the weights.

Each forward returns (packed, ctx) where packed holds [outputs h_1..h_T] (+ [c_T] for the
LSTM) so that a single autodiff op can expose output, h_n (and c_n) as slices.

Variable-length batches: some columns of the batch skip some steps, keeping their state as it was.
Two callers say which: a PackedSequence passes batch_sizes, the number of leading columns still
running at each step (the batch sorted longest first), and Keras masking passes keep, a (T, N)
boolean mask (False: a padded step).  Both become one plan (held_rows): per step, the columns that
do not run, as a slice (a packed batch's finished tail) or an index array (a mask's padded steps).
The step is computed for the whole batch (one matmul, no ragged shapes), then the held columns get
their state copied back from t-1 (copied, so a padded sequence ends in exactly the unpadded one's
state), and backward lets their gradient pass through unchanged with zero gate gradients.  So out[T-1]
(and c_T) hold every sequence's state at its own last step, and a reversed packed run (batch_sizes
reversed: short sequences start late) holds h_0 until the sequence begins.  Without either the loops
do exactly what they did before.

On a GPU (cupy float32/float64 arrays, a device present) each function hands over to
engine.kernels.rnn_step: there every elementwise op below would be a kernel launch of its own
(launch-bound), and one fused kernel per step does the step's gate math instead.  The numpy
code here is the CPU path and the reference those kernels are tested against.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

_FUSED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _half(dtype):
    return dtype.type(0.5)


def _fused(a):
    """engine.kernels.rnn_step when `a` is a float32/float64 cupy array and a CUDA device is there, else None.

    Imported lazily: CPU runs never load the kernels package for the recurrent layers."""
    if type(a).__module__.split(".", 1)[0] != "cupy" or a.dtype not in _FUSED_DTYPES:
        return None
    from .. import kernels
    return kernels.rnn_step if kernels.available() else None


def _fused_ctx(ctx):
    """engine.kernels.rnn_step when `ctx` came from a fused forward (its backward must be fused too), else None."""
    if isinstance(ctx, tuple):
        return None
    from ..kernels import rnn_step
    return rnn_step if isinstance(ctx, rnn_step.FusedCtx) else None


def held_rows(batch_sizes, keep, T, N):
    """Per step, the columns that keep their state (None: every column runs): a slice for a packed
    batch, an index array for a mask -- one cheap check per step in the loops."""
    if keep is not None:
        if batch_sizes is not None:
            raise ValueError("give batch_sizes (a packed batch) or keep (a step mask), not both")
        if tuple(keep.shape) != (T, N):
            raise ValueError(f"the step mask must have shape (T, N) = {(T, N)}, got {tuple(keep.shape)}")
        xp = get_array_module(keep)
        held = []
        for t in range(T):
            rows = xp.nonzero(~keep[t])[0]
            held.append(rows if rows.size else None)
        return tuple(held)
    if batch_sizes is None:
        return (None,) * T
    if len(batch_sizes) != T:
        raise ValueError(f"batch_sizes has {len(batch_sizes)} entries for {T} time steps")
    return tuple(slice(int(b), None) if b < N else None for b in batch_sizes)


# ------------------------------------------------------------------------------------------ LSTM


def _lstm_perm(H, xp):
    """Row permutation i, f, g, o -> i, f, o, g: the three sigmoid gates become one contiguous block."""
    return xp.concatenate([xp.arange(0, 2 * H), xp.arange(3 * H, 4 * H), xp.arange(2 * H, 3 * H)])


def lstm_forward(x, h0, c0, w_ih, w_hh, b, h0_is_zero=False, batch_sizes=None, keep=None):
    """x (T, N, I); h0, c0 (N, H); b = b_ih + b_hh (4H,) or None; batch_sizes, keep: see the module docstring.

    Returns packed (T+1, N, H) = [h_1 .. h_T, c_T] (a strided view) and the backward context.

    Internally everything is feature-major -- h_t^T (H, N), gates (4H, N) -- so every gate
    slice is a contiguous block and numpy's elementwise fast paths apply (strided (N, H)
    column slices are 3-5x slower for the small per-step arrays).
    """
    fused = _fused(x)
    if fused is not None:
        return fused.lstm_forward_gpu(x, h0, c0, w_ih, w_hh, b, h0_is_zero, batch_sizes=batch_sizes, keep=keep)
    xp = get_array_module(x)
    T, N, I = x.shape
    frozen = held_rows(batch_sizes, keep, T, N)
    H = w_hh.shape[1]
    dt = w_ih.dtype
    perm = _lstm_perm(H, xp)
    scale = xp.ones((4 * H, 1), dtype=dt)
    scale[:3 * H] = 0.5
    # One matmul per step: gates_t = [W_ih, b, W_hh] @ [x_t; 1; h_t] -- the input projection and the
    # bias ride along in the recurrent matmul, and the backward gets [dW_ih | db | dW_hh] at once.
    parts = [w_ih[perm]] + ([b[perm][:, None]] if b is not None else []) + [w_hh[perm]]
    K0 = I + (1 if b is not None else 0)          # row of xh where h starts
    wcat = xp.concatenate(parts, axis=1)          # (4H, K0 + H), gate order i, f, o, g
    wcat_s = wcat * scale                          # sigmoid rows pre-scaled by 1/2 (tanh trick)
    # xh[t] = [x_t^T; 1; h_t^T] (K0 + H, N); xh[T+1] keeps c_T so the output is one strided view
    xh = xp.empty((T + 2, K0 + H, N), dtype=dt)
    xh[:T, :I] = x.transpose(0, 2, 1)
    xh[T:, :K0] = 0
    if b is not None:
        xh[:T, I] = 1
    xh[0, K0:] = h0.T
    act = xp.empty((T, 4 * H, N), dtype=dt)
    cs = xp.empty((T + 1, H, N), dtype=dt)
    cs[0] = c0.T
    tcs = xp.empty((T, H, N), dtype=dt)
    half = _half(dt)
    H2, H3 = 2 * H, 3 * H
    ig = xp.empty((H, N), dtype=dt)                # per-step scratch: no allocation inside the loop
    matmul, tanh, mul = xp.matmul, xp.tanh, xp.multiply
    for t in range(T):
        z = act[t]
        if t == 0 and h0_is_zero:                   # no initial state: skip the all-zero h part
            matmul(wcat_s[:, :K0], xh[0, :K0], out=z)
        else:
            matmul(wcat_s, xh[t], out=z)
        tanh(z, out=z)
        s = z[:H3]
        s *= half
        s += half                                           # sigmoid = (tanh(x/2) + 1) / 2
        c = cs[t + 1]
        mul(z[H:H2], cs[t], out=c)                          # f * c_{t-1}
        mul(z[:H], z[H3:], out=ig)
        c += ig                                             # + i * g
        tanh(c, out=tcs[t])
        mul(z[H2:H3], tcs[t], out=xh[t + 1, K0:])           # h = o * tanh(c)
        f = frozen[t]
        if f is not None:                                   # finished sequences keep their h, c
            xh[t + 1, K0:, f] = xh[t, K0:, f]
            c[:, f] = cs[t][:, f]
    xh[T + 1, K0:] = cs[T]
    ctx = (xh, cs, tcs, act, wcat, perm, I, K0, h0_is_zero, frozen)
    return xh[1:, K0:].transpose(0, 2, 1), ctx


def lstm_backward(gpacked, ctx, need_x, need_h0, need_c0, need_w):
    """Backward through time.  Returns dx, dh0, dc0, dw_ih, dw_hh, db (db serves both biases)."""
    fused = _fused_ctx(ctx)
    if fused is not None:
        return fused.lstm_backward_gpu(gpacked, ctx, need_x, need_h0, need_c0, need_w)
    xh, cs, tcs, act, wcat, perm, I, K0, h0_is_zero, frozen = ctx
    xp = get_array_module(gpacked)
    T, _, N = act.shape
    H = cs.shape[1]
    dt = act.dtype
    H2, H3 = 2 * H, 3 * H
    one = dt.type(1)
    whh_pT = xp.ascontiguousarray(wcat[:, K0:].T)  # (H, 4H), unscaled, gate order i, f, o, g
    gT = xp.ascontiguousarray(gpacked.transpose(0, 2, 1), dtype=dt)     # (T+1, H, N)
    dc = gT[T]                                     # our own copy: updated in place
    dz = xp.empty((T, 4 * H, N), dtype=dt) if need_x else None
    d = xp.empty((4 * H, N), dtype=dt)             # per-step scratch (hot in cache)
    dh = xp.empty((H, N), dtype=dt)
    tmp = xp.empty((H, N), dtype=dt)
    fac = xp.empty((H3, N), dtype=dt)
    dw = xp.zeros(wcat.shape, dtype=dt) if need_w else None
    dw_t = xp.empty(wcat.shape, dtype=dt) if need_w else None
    dh_next = None
    matmul, mul, sub = xp.matmul, xp.multiply, xp.subtract
    for t in range(T - 1, -1, -1):
        if dh_next is None:
            dh[...] = gT[t]
        else:
            xp.add(gT[t], dh_next, out=dh)
        a = act[t]
        if dz is not None:
            d = dz[t]
        f = frozen[t]
        if f is not None:
            dc_frozen = dc[:, f].copy()
        tc = tcs[t]
        mul(dh, tc, out=d[H2:H3])                           # d o (before sigmoid')
        mul(tc, tc, out=tmp)
        sub(one, tmp, out=tmp)                              # tanh'(c)
        tmp *= a[H2:H3]
        tmp *= dh
        dc += tmp                                           # dc += dh * o * tanh'(c)
        mul(dc, a[H3:], out=d[:H])                          # d i = dc * g
        mul(dc, cs[t], out=d[H:H2])                         # d f = dc * c_{t-1}
        dgt = d[H3:]
        mul(dc, a[:H], out=dgt)                             # d g = dc * i
        g = a[H3:]
        mul(g, g, out=tmp)
        sub(one, tmp, out=tmp)
        dgt *= tmp                                          # * tanh'(g)
        sg = a[:H3]
        sub(one, sg, out=fac)
        fac *= sg
        d[:H3] *= fac                                       # * sigmoid'
        dc *= a[H:H2]                                       # dc_{t-1} = dc * f
        if f is not None:                                   # frozen columns: no step, gradients pass through
            d[:, f] = 0
            dc[:, f] = dc_frozen
        if dw is not None:
            if t == 0 and h0_is_zero:
                matmul(d, xh[0, :K0].T, out=dw_t[:, :K0])
                dw[:, :K0] += dw_t[:, :K0]
            else:
                matmul(d, xh[t].T, out=dw_t)                # [dW_ih | db | dW_hh] += d_t [x_t; 1; h_t]^T
                dw += dw_t
        if t > 0 or need_h0:
            if dh_next is None:
                dh_next = xp.empty((H, N), dtype=dt)
            matmul(whh_pT, d, out=dh_next)
            if f is not None:
                dh_next[:, f] = dh[:, f]
    dx = dh0 = dw_ih = dw_hh = db = None
    if need_x:
        dx = xp.matmul(wcat[:, :I].T, dz).transpose(0, 2, 1)     # (T, N, I)
    if need_h0:
        dh0 = dh_next.T
    dc0 = dc.T if need_c0 else None
    if need_w:
        inv = xp.argsort(perm)
        dw = dw[inv]
        dw_ih, dw_hh = dw[:, :I], dw[:, K0:]
        db = dw[:, I] if K0 > I else None
    return dx, dh0, dc0, dw_ih, dw_hh, db


# ------------------------------------------------------------------------------------------ GRU


def gru_forward(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes=None, keep=None):
    """x (T, N, I), h0 (N, H).  Returns packed (T, N, H) = [h_1 .. h_T] and the context."""
    fused = _fused(x)
    if fused is not None:
        return fused.gru_forward_gpu(x, h0, w_ih, w_hh, b_ih, b_hh, batch_sizes=batch_sizes, keep=keep)
    xp = get_array_module(x)
    T, N, I = x.shape
    frozen = held_rows(batch_sizes, keep, T, N)
    H = w_hh.shape[1]
    dt = w_ih.dtype
    H2 = 2 * H
    scale = xp.ones((3 * H,), dtype=dt)
    scale[:H2] = 0.5
    xw = (x.reshape(T * N, I) @ (w_ih * scale[:, None]).T).reshape(T, N, 3 * H)
    if b_ih is not None:
        xw += b_ih * scale
    whh_sT = xp.ascontiguousarray((w_hh * scale[:, None]).T)    # (H, 3H)
    bhh_s = b_hh * scale if b_hh is not None else None
    buf = xp.empty((T + 1, N, H), dtype=dt)
    buf[0] = h0
    act = xp.empty((T, N, 3 * H), dtype=dt)        # r, z, n
    hn = xp.empty((T, N, H), dtype=dt)             # W_hn h + b_hn (needed for dr)
    half = _half(dt)
    hw = xp.empty((N, 3 * H), dtype=dt)            # per-step scratch: no allocation inside the loop
    tmp = xp.empty((N, H), dtype=dt)
    for t in range(T):
        xp.matmul(buf[t], whh_sT, out=hw)
        if bhh_s is not None:
            hw += bhh_s
        a = act[t]
        rz = a[:, :H2]
        xp.add(xw[t, :, :H2], hw[:, :H2], out=rz)
        xp.tanh(rz, out=rz)
        rz *= half
        rz += half
        hn[t] = hw[:, H2:]
        n = a[:, H2:]
        xp.multiply(a[:, :H], hw[:, H2:], out=n)
        n += xw[t, :, H2:]
        xp.tanh(n, out=n)
        xp.subtract(buf[t], n, out=tmp)
        tmp *= a[:, H:H2]
        xp.add(n, tmp, out=buf[t + 1])             # h = n + z * (h_prev - n)
        f = frozen[t]
        if f is not None:
            buf[t + 1, f] = buf[t, f]
    ctx = (x, buf, act, hn, frozen)
    return buf[1:], ctx


def gru_backward(gout, ctx, w_ih, w_hh, need_x, need_h0, need_w, need_bih, need_bhh):
    fused = _fused_ctx(ctx)
    if fused is not None:
        return fused.gru_backward_gpu(gout, ctx, w_ih, w_hh, need_x, need_h0, need_w, need_bih, need_bhh)
    x, buf, act, hn, frozen = ctx
    xp = get_array_module(gout)
    T, N, I = x.shape
    H = w_hh.shape[1]
    dt = act.dtype
    H2 = 2 * H
    one = dt.type(1)
    r, z, n = act[:, :, :H], act[:, :, H:H2], act[:, :, H2:]
    one_minus_z = one - z
    dn_fac = one - n * n                            # tanh'
    dz_fac = (buf[:T] - n) * (z * (one - z))        # d h / d z_pre per unit dh
    dr_fac = hn * (r * (one - r))                   # d n_pre / d r_pre per unit dn_pre
    dxw = xp.empty((T, N, 3 * H), dtype=dt)
    dhw = xp.empty((T, N, 3 * H), dtype=dt)
    dh_next = None
    for t in range(T - 1, -1, -1):
        dh = gout[t] if dh_next is None else gout[t] + dh_next
        dx_t, dh_t = dxw[t], dhw[t]
        dnp = dx_t[:, H2:]
        xp.multiply(dh, one_minus_z[t], out=dnp)
        dnp *= dn_fac[t]                            # d n_pre
        xp.multiply(dh, dz_fac[t], out=dx_t[:, H:H2])  # d z_pre
        xp.multiply(dnp, dr_fac[t], out=dx_t[:, :H])   # d r_pre
        dh_t[:, :H2] = dx_t[:, :H2]
        xp.multiply(dnp, r[t], out=dh_t[:, H2:])     # d (W_hn h + b_hn)
        f = frozen[t]
        if f is not None:                           # frozen rows: no step, the gradient passes through
            dx_t[f] = 0
            dh_t[f] = 0
        if t > 0 or need_h0:
            dh_next = dh * z[t]
            dh_next += dh_t @ w_hh
            if f is not None:
                dh_next[f] = dh[f]
    dx = dh0 = dw_ih = dw_hh = db_ih = db_hh = None
    dxw2 = dxw.reshape(T * N, 3 * H)
    dhw2 = dhw.reshape(T * N, 3 * H)
    if need_x:
        dx = (dxw2 @ w_ih).reshape(T, N, I)
    if need_h0:
        dh0 = dh_next
    if need_w:
        dw_ih = dxw2.T @ x.reshape(T * N, I)
        dw_hh = dhw2.T @ buf[:T].reshape(T * N, H)
    if need_bih:
        db_ih = dxw2.sum(axis=0)
    if need_bhh:
        db_hh = dhw2.sum(axis=0)
    return dx, dh0, dw_ih, dw_hh, db_ih, db_hh


# ------------------------------------------------------------------------------------------ RNN


def rnn_forward(x, h0, w_ih, w_hh, b, nonlinearity, batch_sizes=None, keep=None):
    """Elman RNN, h = act(W_ih x + W_hh h + b), act tanh or relu.  Returns packed (T, N, H) and ctx."""
    fused = _fused(x)
    if fused is not None:
        return fused.rnn_forward_gpu(x, h0, w_ih, w_hh, b, nonlinearity, batch_sizes=batch_sizes, keep=keep)
    xp = get_array_module(x)
    T, N, I = x.shape
    frozen = held_rows(batch_sizes, keep, T, N)
    H = w_hh.shape[1]
    dt = w_ih.dtype
    pre = (x.reshape(T * N, I) @ w_ih.T).reshape(T, N, H)
    if b is not None:
        pre += b
    whhT = xp.ascontiguousarray(w_hh.T)
    buf = xp.empty((T + 1, N, H), dtype=dt)
    buf[0] = h0
    zero = dt.type(0)
    for t in range(T):
        z = pre[t]
        z += buf[t] @ whhT
        if nonlinearity == "tanh":
            xp.tanh(z, out=buf[t + 1])
        else:
            xp.maximum(z, zero, out=buf[t + 1])
        f = frozen[t]
        if f is not None:
            buf[t + 1, f] = buf[t, f]
    return buf[1:], (x, buf, nonlinearity, frozen)


def rnn_backward(gout, ctx, w_ih, w_hh, need_x, need_h0, need_w, need_b):
    fused = _fused_ctx(ctx)
    if fused is not None:
        return fused.rnn_backward_gpu(gout, ctx, w_ih, w_hh, need_x, need_h0, need_w, need_b)
    x, buf, nonlinearity, frozen = ctx
    xp = get_array_module(gout)
    T, N, I = x.shape
    H = w_hh.shape[1]
    h = buf[1:]
    dt = buf.dtype
    if nonlinearity == "tanh":
        dact = dt.type(1) - h * h
    else:
        dact = (h > 0).astype(dt)
    dpre = xp.empty((T, N, H), dtype=dt)
    dh_next = None
    for t in range(T - 1, -1, -1):
        dh = gout[t] if dh_next is None else gout[t] + dh_next
        xp.multiply(dh, dact[t], out=dpre[t])
        f = frozen[t]
        if f is not None:                           # frozen rows: no step, the gradient passes through
            dpre[t, f] = 0
        if t > 0 or need_h0:
            dh_next = dpre[t] @ w_hh
            if f is not None:
                dh_next[f] = dh[f]
    dp2 = dpre.reshape(T * N, H)
    dx = dh0 = dw_ih = dw_hh = db = None
    if need_x:
        dx = (dp2 @ w_ih).reshape(T, N, I)
    if need_h0:
        dh0 = dh_next
    if need_w:
        dw_ih = dp2.T @ x.reshape(T * N, I)
        dw_hh = dp2.T @ buf[:T].reshape(T * N, H)
    if need_b:
        db = dp2.sum(axis=0)
    return dx, dh0, dw_ih, dw_hh, db
