"""Array-level conv2d and 2-D pooling, forward and backward, for numpy (and cupy) arrays.

Why the odd internal layout: tensors stay logically NCHW (the PyTorch contract), but the
arrays these kernels produce are *physically* (C, H, W, N) -- channels first, batch last
-- and returned as transposed views.  With the batch innermost:

* conv2d is one 2-D sgemm ``(O, K) @ (K, OH*OW*N)`` with both operands contiguous, and its
  result is already the output array (no transpose copy);
* im2col is kh*kw slice copies whose inner runs are OW*N elements long (numpy's per-call
  overhead vanishes), col2im is kh*kw strided adds of the same shape;
* 2x2 max pooling reduces over pairs of rows/columns whose runs are W*N / N elements long;
* Flatten of a pooled (N, C, H, W) view is free: it is an F-ordered (N, C*H*W) matrix that
  BLAS consumes directly (Linear returns its input gradient in the same order).

Everything takes and returns logical NCHW arrays of any strides; `_chwn` makes the
(C, H, W, N) array contiguous and is free when the input already came from these kernels.
On cupy arrays conv2d uses engine.kernels.conv (im2col/col2im CUDA kernels).
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module


def _chwn(x, xp):
    """(N, C, H, W) array of any strides -> C-contiguous (C, H, W, N) array."""
    return xp.ascontiguousarray(x.transpose(1, 2, 3, 0))


def _nchw(a):
    """(C, H, W, N) array -> (N, C, H, W) view."""
    return a.transpose(3, 0, 1, 2)


def conv_out_size(size, k, s, p_lo, p_hi, d):
    return (size + p_lo + p_hi - d * (k - 1) - 1) // s + 1


def _window(i, d, s, n):
    """Slice of the padded axis read by kernel tap i for n outputs."""
    start = i * d
    return slice(start, start + s * (n - 1) + 1, s)


def _pad_chwn(xc, pt, pb, pl, pr, value, xp):
    if not (pt or pb or pl or pr):
        return xc
    C, H, W, N = xc.shape
    out = xp.full((C, H + pt + pb, W + pl + pr, N), value, dtype=xc.dtype)
    out[:, pt:pt + H, pl:pl + W] = xc
    return out


# ------------------------------------------------------------------------------------------ conv2d


def conv2d_forward(x, w, b, stride, padding, dilation, groups):
    """x (N, C, H, W), w (O, C/groups, kh, kw), b (O,) or None; padding = (top, bottom, left, right).

    Returns (out, ctx): out is (N, O, OH, OW) (a view of a (O, OH, OW, N) array), ctx feeds
    conv2d_backward.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    sy, sx = stride
    pt, pb, pl, pr = padding
    dy, dx = dilation
    G = groups
    OH = conv_out_size(H, kh, sy, pt, pb, dy)
    OW = conv_out_size(W, kw, sx, pl, pr, dx)
    M = OH * OW * N
    K = Cg * kh * kw
    fold_bias = b is not None and G == 1          # bias as an extra row of ones: no separate add pass

    cols = _im2col(x, kh, kw, stride, padding, dilation, OH, OW, fold_bias, xp)

    if G == 1:
        w2 = w.reshape(O, K)
        if fold_bias:
            w2 = xp.concatenate([w2, b.reshape(O, 1)], axis=1)
        out = w2 @ cols                                   # (O, M): one sgemm
    else:
        out = xp.matmul(w.reshape(G, O // G, K), cols.reshape(G, K, M)).reshape(O, M)
        if b is not None:
            out += b.reshape(O, 1)
    ctx = (cols, x.shape, w.shape, stride, padding, dilation, G, fold_bias, (OH, OW))
    return _nchw(out.reshape(O, OH, OW, N)), ctx


def _im2col(x, kh, kw, stride, padding, dilation, OH, OW, fold_bias, xp):
    """Column matrix (C*kh*kw [+1 row of ones], OH*OW*N), columns ordered (oh, ow, n)."""
    N, C, H, W = x.shape
    sy, sx = stride
    pt, pb, pl, pr = padding
    dy, dx = dilation
    M = OH * OW * N
    if xp is not np:
        return _im2col_gpu(x, kh, kw, sy, sx, padding, dy, dx, OH, OW, fold_bias, xp)
    xc = _chwn(x, xp)
    if kh == kw == 1 and sy == sx == 1 and not (pt or pb or pl or pr) and not fold_bias:
        return xc.reshape(C, M)                   # 1x1 conv: the input already is the column matrix
    xpad = _pad_chwn(xc, pt, pb, pl, pr, 0, xp)
    cols = xp.empty((C * kh * kw + (1 if fold_bias else 0), OH, OW, N), dtype=x.dtype)
    c6 = cols[:C * kh * kw].reshape(C, kh, kw, OH, OW, N)
    for i in range(kh):
        ys = _window(i, dy, sy, OH)
        for j in range(kw):
            c6[:, i, j] = xpad[:, ys, _window(j, dx, sx, OW)]
    if fold_bias:
        cols[-1] = 1
    return cols.reshape(-1, M)


def _im2col_gpu(x, kh, kw, sy, sx, padding, dy, dx, OH, OW, fold_bias, xp):
    from ..kernels import conv as kconv   # lazy: only the cupy path needs it
    pt, pb, pl, pr = padding
    N, C, H, W = x.shape
    if pt != pb or pl != pr:                  # asymmetric ('same' with an even kernel): pre-pad
        xp_ = xp.zeros((N, C, H + pt + pb, W + pl + pr), dtype=x.dtype)
        xp_[:, :, pt:pt + H, pl:pl + W] = x
        x, ph, pw = xp_, 0, 0
    else:
        ph, pw = pt, pl
    col = kconv.im2col(xp.ascontiguousarray(x), kh, kw, sy, sx, ph, pw, dy, dx)   # (N, C, kh, kw, OH, OW)
    K = C * kh * kw
    cols = xp.empty((K + (1 if fold_bias else 0), OH, OW, N), dtype=x.dtype)
    cols[:K] = col.reshape(N, K, OH, OW).transpose(1, 2, 3, 0)
    if fold_bias:
        cols[-1] = 1
    return cols.reshape(-1, OH * OW * N)


def conv2d_backward(g, w, ctx, need_x, need_w, need_b):
    """Gradients (dx, dw, db) of conv2d_forward's output gradient g (N, O, OH, OW)."""
    xp = get_array_module(g)
    cols, xshape, wshape, stride, padding, dilation, G, fold_bias, (OH, OW) = ctx
    N, C, H, W = xshape
    O, Cg, kh, kw = wshape
    K = Cg * kh * kw
    M = OH * OW * N
    gc = _chwn(g, xp).reshape(O, M)
    dx = dw = db = None
    if need_w or need_b:
        if G == 1:
            dw2 = gc @ cols.T                                # (O, K [+1]): one sgemm
            if need_w:
                dw = dw2[:, :K].reshape(wshape)
            if need_b:
                db = dw2[:, K] if fold_bias else gc.sum(axis=1)
        else:
            if need_w:
                dw = xp.matmul(gc.reshape(G, O // G, M),
                               cols.reshape(G, K, M).transpose(0, 2, 1)).reshape(wshape)
            if need_b:
                db = gc.sum(axis=1)
    if need_x:
        if G == 1:
            dcols = w.reshape(O, K).T @ gc                   # (K, M)
        else:
            dcols = xp.matmul(w.reshape(G, O // G, K).transpose(0, 2, 1),
                              gc.reshape(G, O // G, M)).reshape(G * K, M)
        dx = _col2im(dcols, xshape, (kh, kw), stride, padding, dilation, (OH, OW), xp)
    return dx, dw, db


def _col2im(dcols, xshape, ksize, stride, padding, dilation, osize, xp):
    N, C, H, W = xshape
    kh, kw = ksize
    sy, sx = stride
    pt, pb, pl, pr = padding
    dy, dx = dilation
    OH, OW = osize
    if xp is not np:
        from ..kernels import conv as kconv
        col = dcols.reshape(C, kh, kw, OH, OW, N).transpose(5, 0, 1, 2, 3, 4)
        if pt != pb or pl != pr:
            img = kconv.col2im(xp.ascontiguousarray(col), H + pt + pb, W + pl + pr, sy, sx, 0, 0, dy, dx)
            return img[:, :, pt:pt + H, pl:pl + W]
        return kconv.col2im(xp.ascontiguousarray(col), H, W, sy, sx, pt, pl, dy, dx)
    if kh == kw == 1 and sy == sx == 1 and not (pt or pb or pl or pr):
        return _nchw(dcols.reshape(C, H, W, N))
    Hp, Wp = H + pt + pb, W + pl + pr
    d6 = dcols.reshape(C, kh, kw, OH, OW, N)
    dpad = xp.zeros((C, Hp, Wp, N), dtype=dcols.dtype)
    for i in range(kh):
        ys = _window(i, dy, sy, OH)
        for j in range(kw):
            dst = dpad[:, ys, _window(j, dx, sx, OW)]
            xp.add(dst, d6[:, i, j], out=dst)
    return _nchw(dpad[:, pt:pt + H, pl:pl + W])


# ------------------------------------------------------------------------------------------ fused


#: bytes of conv output processed per block in the fused op (fits in L2 with its inputs)
FUSED_BLOCK_BYTES = 512 * 1024


def conv2d_relu_maxpool2_forward(x, w, b, stride, padding, dilation):
    """max_pool2d(relu(conv2d(x)), 2) as one cache-blocked pass (groups=1).

    Why: the conv output is the largest array of a small CNN (11 MB for the seed model at
    batch 128).  Unfused it is written by the sgemm, read and rewritten by ReLU, read by the
    pool, and the same again in the backward.  Here the sgemm runs on blocks of two (or a few)
    output rows at a time and each block is pooled while it is still in cache, so the full
    conv output never exists.  maxpool(relu(z)) == relu(maxpool(z)), so ReLU runs on the 4x
    smaller pooled array; the gradient reaches the first maximum of each window only when
    the pooled value is > 0 -- exactly what the unfused ops compute (PyTorch's tie rule).
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    O, Cg, kh, kw = w.shape
    OH = conv_out_size(H, kh, stride[0], padding[0], padding[1], dilation[0])
    OW = conv_out_size(W, kw, stride[1], padding[2], padding[3], dilation[1])
    PH, PW = OH // 2, OW // 2
    K = C * kh * kw
    fold_bias = b is not None
    cols = _im2col(x, kh, kw, stride, padding, dilation, OH, OW, fold_bias, xp)
    w2 = w.reshape(O, K)
    if fold_bias:
        w2 = xp.concatenate([w2, b.reshape(O, 1)], axis=1)
    dt = cols.dtype
    R = max(2, 2 * (FUSED_BLOCK_BYTES // max(1, 2 * O * OW * N * dt.itemsize)))
    pooled = xp.empty((O, PH, PW, N), dtype=dt)
    rowsel = xp.empty((O, PH, OW, N), dtype=bool)       # which row of each pair won
    colsel = xp.empty((O, PH, PW, N), dtype=bool)       # which column of each pair won
    zbuf = xp.empty((O, R, OW, N), dtype=dt)
    m1buf = xp.empty((O, R // 2, OW, N), dtype=dt)
    rowlen = OW * N
    for r0 in range(0, 2 * PH, R):
        rr = min(R, 2 * PH - r0)
        p0, pr = r0 // 2, rr // 2
        z = zbuf[:, :rr]
        xp.matmul(w2, cols[:, r0 * rowlen:(r0 + rr) * rowlen], out=z.reshape(O, rr * rowlen))
        a, bb = z[:, 0::2], z[:, 1::2]
        m1 = m1buf[:, :pr]
        xp.maximum(a, bb, out=m1)
        xp.greater(bb, a, out=rowsel[:, p0:p0 + pr])
        c, d = m1[:, :, 0:2 * PW:2], m1[:, :, 1:2 * PW:2]
        xp.maximum(c, d, out=pooled[:, p0:p0 + pr])
        xp.greater(d, c, out=colsel[:, p0:p0 + pr])
    xp.maximum(pooled, dt.type(0), out=pooled)
    ctx = (cols, x.shape, w.shape, tuple(stride), tuple(padding), tuple(dilation), fold_bias, (OH, OW), R,
           pooled, rowsel, colsel)
    return _nchw(pooled), ctx


def conv2d_relu_maxpool2_backward(g, w, ctx, need_x, need_w, need_b):
    xp = get_array_module(g)
    (cols, xshape, wshape, stride, padding, dilation, fold_bias, (OH, OW), R,
     pooled, rowsel, colsel) = ctx
    N, C, H, W = xshape
    O, _, kh, kw = wshape
    K = C * kh * kw
    PH, PW = OH // 2, OW // 2
    dt = pooled.dtype
    gm = _chwn(g, xp) * (pooled > 0)               # ReLU: no gradient where the pooled value is 0
    rowlen = OW * N
    alloc = xp.zeros if OW != 2 * PW else xp.empty   # an odd last column never receives gradient
    gz = alloc((O, R, OW, N), dtype=dt)
    d1 = alloc((O, R // 2, OW, N), dtype=dt)
    dw2 = xp.zeros((O, cols.shape[0]), dtype=dt) if (need_w or need_b) else None
    tmp = xp.empty_like(dw2) if dw2 is not None else None
    w2 = w.reshape(O, K)
    dpad = None
    if need_x:
        sy, sx = stride
        pt, pb, pl, pr = padding
        dy, dx_ = dilation
        dpad = xp.zeros((C, H + pt + pb, W + pl + pr, N), dtype=dt)
    for r0 in range(0, 2 * PH, R):
        rr = min(R, 2 * PH - r0)
        p0, pr_ = r0 // 2, rr // 2
        gp, cs, rs = gm[:, p0:p0 + pr_], colsel[:, p0:p0 + pr_], rowsel[:, p0:p0 + pr_]
        dd = d1[:, :pr_]
        xp.multiply(gp, ~cs, out=dd[:, :, 0:2 * PW:2])
        xp.multiply(gp, cs, out=dd[:, :, 1:2 * PW:2])
        z = gz[:, :rr]
        xp.multiply(dd, ~rs, out=z[:, 0::2])
        xp.multiply(dd, rs, out=z[:, 1::2])
        z2 = z.reshape(O, rr * rowlen)
        if dw2 is not None:
            xp.matmul(z2, cols[:, r0 * rowlen:(r0 + rr) * rowlen].T, out=tmp)
            dw2 += tmp
        if need_x:
            d6 = (w2.T @ z2).reshape(C, kh, kw, rr, OW, N)
            for i in range(kh):
                y0 = r0 * sy + i * dy
                ys = slice(y0, y0 + sy * (rr - 1) + 1, sy)
                for j in range(kw):
                    dst = dpad[:, ys, _window(j, dx_, sx, OW)]
                    xp.add(dst, d6[:, i, j], out=dst)
    dx = dw = db = None
    if need_x:
        pt, pb, pl, pr = padding
        dx = _nchw(dpad[:, pt:pt + H, pl:pl + W])
    if need_w:
        dw = dw2[:, :K].reshape(wshape)
    if need_b:
        db = dw2[:, K]
    return dx, dw, db


# ------------------------------------------------------------------------------------------ pooling


def pool_out_size(size, k, s, p, d, ceil_mode):
    """PyTorch's pooling output length (the last window must start inside input or left padding)."""
    eff = size + 2 * p - d * (k - 1) - 1
    out = (-(-eff // s) if ceil_mode else eff // s) + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _pool_geometry(x, ksize, stride, padding, dilation, ceil_mode):
    N, C, H, W = x.shape
    kh, kw = ksize
    sy, sx = stride
    ph, pw = padding
    dy, dx = dilation
    OH = pool_out_size(H, kh, sy, ph, dy, ceil_mode)
    OW = pool_out_size(W, kw, sx, pw, dx, ceil_mode)
    # extent of the padded input the windows actually read
    Hn = (OH - 1) * sy + dy * (kh - 1) + 1
    Wn = (OW - 1) * sx + dx * (kw - 1) + 1
    pb = max(0, Hn - ph - H)
    pr = max(0, Wn - pw - W)
    return OH, OW, pb, pr


def max_pool2d_forward(x, ksize, stride, padding, dilation, ceil_mode, return_indices=False):
    """Returns (out, ctx, indices-or-None); out (N, C, OH, OW) is a view of a (C, OH, OW, N) array."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    OH, OW, pb, pr = _pool_geometry(x, ksize, stride, padding, dilation, ceil_mode)
    xc = _chwn(x, xp)
    if tuple(ksize) == (2, 2) and tuple(stride) == (2, 2) and tuple(padding) == (0, 0) \
            and tuple(dilation) == (1, 1) and OH == H // 2 and OW == W // 2:
        # Non-overlapping 2x2: max over row pairs, then over column pairs; remember which of each
        # pair won (the first on ties, as PyTorch) for the backward.
        a, b = xc[:, 0:2 * OH:2], xc[:, 1:2 * OH:2]
        m1 = xp.maximum(a, b)
        row = b > a                                  # (C, OH, W, N)
        c, d = m1[:, :, 0:2 * OW:2], m1[:, :, 1:2 * OW:2]
        out = xp.maximum(c, d)
        col = d > c                                  # (C, OH, OW, N)
        ctx = ("pair", x.shape, row, col)
        idx = None
        if return_indices:
            r = xp.where(col, row[:, :, 1:2 * OW:2], row[:, :, 0:2 * OW:2]).astype(np.int64)
            hh = 2 * xp.arange(OH).reshape(1, OH, 1, 1) + r
            ww = 2 * xp.arange(OW).reshape(1, 1, OW, 1) + col.astype(np.int64)
            idx = _nchw(hh * W + ww)
        return _nchw(out), ctx, idx

    kh, kw = ksize
    sy, sx = stride
    ph, pw = padding
    dy, dx = dilation
    xpad = _pad_chwn(xc, ph, pb, pw, pr, -np.inf, xp)
    taps = [(i, j) for i in range(kh) for j in range(kw)]
    itype = np.uint8 if len(taps) < 256 else np.int32
    out = arg = None
    for k, (i, j) in enumerate(taps):
        s = xpad[:, _window(i, dy, sy, OH), _window(j, dx, sx, OW)]
        if out is None:
            out = s.copy()
            arg = xp.zeros(out.shape, dtype=itype)
            continue
        upd = s > out                                 # strict: the first maximum wins, as in PyTorch
        xp.maximum(out, s, out=out)
        # arg < k everywhere, so "arg = k where upd" is max(arg, k * upd)
        xp.maximum(arg, upd.astype(itype) * itype(k), out=arg)
    ctx = ("taps", x.shape, arg, (pb, pr), (OH, OW), (kh, kw), tuple(stride), tuple(padding), tuple(dilation))
    idx = None
    if return_indices:
        a64 = arg.astype(np.int64)
        hh = xp.arange(OH).reshape(1, OH, 1, 1) * sy - ph + (a64 // kw) * dy
        ww = xp.arange(OW).reshape(1, 1, OW, 1) * sx - pw + (a64 % kw) * dx
        idx = _nchw(hh * W + ww)
    return _nchw(out), ctx, idx


def max_pool2d_backward(g, ctx):
    xp = get_array_module(g)
    gc = _chwn(g, xp)
    if ctx[0] == "pair":
        _, (N, C, H, W), row, col = ctx
        OH, OW = gc.shape[1], gc.shape[2]
        alloc = xp.empty if W == 2 * OW else xp.zeros
        d1 = alloc((C, OH, W, N), dtype=gc.dtype)
        xp.multiply(gc, ~col, out=d1[:, :, 0:2 * OW:2])
        xp.multiply(gc, col, out=d1[:, :, 1:2 * OW:2])
        alloc = xp.empty if H == 2 * OH else xp.zeros
        dx = alloc((C, H, W, N), dtype=gc.dtype)
        xp.multiply(d1, ~row, out=dx[:, 0:2 * OH:2])
        xp.multiply(d1, row, out=dx[:, 1:2 * OH:2])
        return _nchw(dx)
    _, (N, C, H, W), arg, (pb, pr), (OH, OW), (kh, kw), (sy, sx), (ph, pw), (dy, dx_) = ctx
    dpad = xp.zeros((C, H + ph + pb, W + pw + pr, N), dtype=gc.dtype)
    k = 0
    for i in range(kh):
        ys = _window(i, dy, sy, OH)
        for j in range(kw):
            dst = dpad[:, ys, _window(j, dx_, sx, OW)]
            dst += gc * (arg == k)
            k += 1
    return _nchw(dpad[:, ph:ph + H, pw:pw + W])


def _avg_divisor(size, k, s, p, out, count_include_pad, xp, dtype):
    """Per-output-position window count along one axis (separable in H and W)."""
    start = np.arange(out) * s - p
    pos = start[:, None] + np.arange(k)[None, :]
    lo, hi = (-p, size + p) if count_include_pad else (0, size)
    return ((pos >= lo) & (pos < hi)).sum(axis=1).astype(dtype)


def avg_pool2d_forward(x, ksize, stride, padding, ceil_mode, count_include_pad, divisor_override):
    xp = get_array_module(x)
    N, C, H, W = x.shape
    kh, kw = ksize
    sy, sx = stride
    ph, pw = padding
    OH, OW, pb, pr = _pool_geometry(x, ksize, stride, padding, (1, 1), ceil_mode)
    xpad = _pad_chwn(_chwn(x, xp), ph, pb, pw, pr, 0, xp)
    out = None
    for i in range(kh):
        ys = _window(i, 1, sy, OH)
        for j in range(kw):
            s = xpad[:, ys, _window(j, 1, sx, OW)]
            if out is None:
                out = s.copy()
            else:
                out += s
    if divisor_override:
        out *= x.dtype.type(1.0 / divisor_override)
        div = None
    else:
        dh = _avg_divisor(H, kh, sy, ph, OH, count_include_pad, xp, x.dtype)
        dw = _avg_divisor(W, kw, sx, pw, OW, count_include_pad, xp, x.dtype)
        div = (dh[:, None] * dw[None, :]).reshape(1, OH, OW, 1)
        if xp is not np:
            div = xp.asarray(div)
        out /= div
    ctx = (x.shape, (pb, pr), (OH, OW), tuple(ksize), tuple(stride), tuple(padding), div, divisor_override)
    return _nchw(out), ctx


def avg_pool2d_backward(g, ctx):
    xp = get_array_module(g)
    (N, C, H, W), (pb, pr), (OH, OW), (kh, kw), (sy, sx), (ph, pw), div, override = ctx
    gc = _chwn(g, xp)
    gs = gc * gc.dtype.type(1.0 / override) if override else gc / div
    dpad = xp.zeros((C, H + ph + pb, W + pw + pr, N), dtype=gc.dtype)
    for i in range(kh):
        ys = _window(i, 1, sy, OH)
        for j in range(kw):
            dst = dpad[:, ys, _window(j, 1, sx, OW)]
            dst += gs
    return _nchw(dpad[:, ph:ph + H, pw:pw + W])


__all__ = ["conv2d_forward", "conv2d_backward", "conv2d_relu_maxpool2_forward", "conv2d_relu_maxpool2_backward",
           "max_pool2d_forward", "max_pool2d_backward", "avg_pool2d_forward", "avg_pool2d_backward",
           "conv_out_size", "pool_out_size"]
