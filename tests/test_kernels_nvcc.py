"""Every CUDA kernel without a GPU: (1) nvcc compiles each .cu file and every ElementwiseKernel body, and
the PTX defines exactly the kernels the Python side launches; (2) the host emulator runs the same CUDA
source through the same Python glue (`*_gpu(..., launcher=HostLauncher())`) and must match the numpy paths.
"""
import re
import shutil
import subprocess

import numpy as np
import pytest

import engine.kernels  # noqa: F401  (registers every kernel)
from engine.kernels import _multi_tensor, _source, bias_act, bucket, conv, optim_fused, rnn_step, softmax_xent
from rnn_cases import check_gru, check_lstm, check_rnn

NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc not on PATH")
RNG = np.random.default_rng(99)
DTYPES = [np.float32, np.float64]


def _ptx(src_path, tmp_path):
    out = tmp_path / (src_path.stem + ".ptx")
    res = subprocess.run([NVCC, "--ptx", "-arch=sm_80", "--Werror", "all-warnings",
                          "-I", str(_source.KERNEL_DIR), str(src_path), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, f"nvcc failed on {src_path.name}:\n{res.stderr}"
    return set(re.findall(r"\.entry\s+(\w+)\s*\(", out.read_text()))


@needs_nvcc
@pytest.mark.timeout(120)
def test_every_cu_file_compiles_and_defines_the_registered_kernels(tmp_path):
    files = _source.cu_files()
    assert set(files) == set(_source.RAW_KERNELS), "a .cu file without Python users, or a missing one"
    for name in files:
        entries = _ptx(_source.KERNEL_DIR / name, tmp_path)
        expected = {f"{b}_{s}" for b in _source.RAW_KERNELS[name] for s in ("f32", "f64")}
        assert entries == expected, f"{name}: PTX defines {sorted(entries)}, Python launches {sorted(expected)}"


@needs_nvcc
@pytest.mark.timeout(120)
def test_inlined_sources_compile_as_nvrtc_sees_them(tmp_path):
    """What cupy hands NVRTC is the include-inlined text: compile that too (no -I available there)."""
    unit = tmp_path / "all_inlined.cu"
    unit.write_text("\n".join(_source.load(f) for f in _source.cu_files()))
    entries = _ptx(unit, tmp_path)
    assert len(entries) == 2 * sum(len(v) for v in _source.RAW_KERNELS.values())


@needs_nvcc
@pytest.mark.timeout(120)
def test_every_elementwise_body_compiles(tmp_path):
    unit = tmp_path / "elementwise.cu"
    unit.write_text(_source.elementwise_unit())
    entries = _ptx(unit, tmp_path)
    assert entries == {f"{s.name}_{sfx}" for s in _source.ELEMENTWISE.values() for sfx in ("f32", "f64")}
    assert len(_source.ELEMENTWISE) >= 5


def _find_nvrtc():
    """libnvrtc from $DPTRAIN_NVRTC, the CUDA toolkit, or a pip `nvidia-cuda-nvrtc` wheel on sys.path."""
    import ctypes.util
    import glob
    import os
    import sys
    cands = [os.environ.get("DPTRAIN_NVRTC"), ctypes.util.find_library("nvrtc")]
    roots = [os.environ.get("CUDA_HOME", ""), "/usr/local/cuda", *glob.glob("/usr/local/cuda-*")]
    cands += [p for r in roots for p in sorted(glob.glob(os.path.join(r, "lib64", "libnvrtc.so*")))]
    cands += [p for d in sys.path for p in sorted(glob.glob(os.path.join(d, "nvidia", "*", "lib", "libnvrtc.so*")))]
    for c in cands:
        if c and os.path.exists(c) or (c and not os.path.isabs(c)):
            try:
                return ctypes.CDLL(c)
            except OSError:
                continue
    return None


def nvrtc_compile(lib, source, name, std=None):
    """Compile with NVRTC as cupy does (no include path, no host headers); return the PTX entries."""
    import ctypes
    prog = ctypes.c_void_p()
    assert lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None) == 0
    opts = [b"--gpu-architecture=compute_80"] + ([f"--std={std}".encode()] if std else [])
    rc = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    assert rc == 0, f"NVRTC rejected {name}:\n{log.value.decode(errors='replace')}"
    lib.nvrtcGetPTXSize(prog, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetPTX(prog, ptx)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return set(re.findall(r"\.entry\s+(\w+)\s*\(", ptx.value.decode()))


@pytest.mark.timeout(120)
def test_sources_compile_with_nvrtc():
    """The runtime compiler cupy uses, on the exact strings it receives (skips when libnvrtc is absent)."""
    lib = _find_nvrtc()
    if lib is None:
        pytest.skip("libnvrtc not found (set DPTRAIN_NVRTC or install the nvidia-cuda-nvrtc wheel)")
    for std in (None, "c++11"):            # NVRTC's default, and the oldest standard cupy may request
        for name in _source.cu_files():
            entries = nvrtc_compile(lib, _source.load(name), name, std)
            assert entries == {f"{b}_{s}" for b in _source.RAW_KERNELS[name] for s in ("f32", "f64")}
        entries = nvrtc_compile(lib, _source.elementwise_unit(), "elementwise.cu", std)
        assert len(entries) == 2 * len(_source.ELEMENTWISE)


# ------------------------------------------------------------------------------------------ emulation

emulate = pytest.importorskip("engine.kernels._emulate")
needs_cxx = pytest.mark.skipif(emulate.compiler() is None, reason="no host C++ compiler for the emulator")


@pytest.fixture
def launcher():
    return emulate.HostLauncher()


def _tol(dtype):
    return dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-13)


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [(2, 3, 7, 6, 3, 3, 1, 1, 0, 0, 1, 1), (2, 2, 9, 8, 3, 2, 2, 1, 1, 2, 2, 1),
                                  (3, 1, 10, 7, 4, 3, 3, 2, 3, 2, 1, 3), (2, 4, 28, 28, 3, 3, 1, 1, 1, 1, 1, 1)])
def test_emulated_im2col_col2im(case, dtype, launcher):
    n, c, h, w, kh, kw, sy, sx, ph, pw, dy, dx = case
    x = RNG.standard_normal((n, c, h, w)).astype(dtype)
    np.testing.assert_array_equal(conv.im2col_gpu(x, kh, kw, sy, sx, ph, pw, dy, dx, launcher=launcher),
                                  conv.im2col_cpu(x, kh, kw, sy, sx, ph, pw, dy, dx))
    np.testing.assert_array_equal(conv.im2col_gpu(x, kh, kw, sy, sx, ph, pw, dy, dx, -np.inf, launcher=launcher),
                                  conv.im2col_cpu(x, kh, kw, sy, sx, ph, pw, dy, dx, -np.inf))
    col = RNG.standard_normal(conv.im2col_cpu(x, kh, kw, sy, sx, ph, pw, dy, dx).shape).astype(dtype)
    np.testing.assert_allclose(conv.col2im_gpu(col, h, w, sy, sx, ph, pw, dy, dx, launcher=launcher),
                               conv.col2im_cpu(col, h, w, sy, sx, ph, pw, dy, dx), **_tol(dtype))
    assert [name for name, _, _ in launcher.launches][-1].endswith("f32" if dtype == np.float32 else "f64")


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("eps,reduction", [(0.0, "mean"), (0.1, "sum"), (0.2, "none"), (0.0, "none")])
@pytest.mark.parametrize("n,c", [(7, 10), (3, 70), (40, 3)])
def test_emulated_softmax_xent(n, c, eps, reduction, dtype, launcher):
    z = (RNG.standard_normal((n, c)) * 5).astype(dtype)
    y = RNG.integers(0, c, n)
    y[::3] = -100
    loss_ref, lse_ref = softmax_xent.forward_cpu(z, y, eps, -100, reduction)
    loss, lse = softmax_xent.forward_gpu(z, y, eps, -100, reduction, launcher=launcher)
    np.testing.assert_allclose(lse, lse_ref, **_tol(dtype))
    np.testing.assert_allclose(loss, loss_ref, **_tol(dtype))
    g = RNG.standard_normal(np.shape(loss_ref)).astype(dtype)
    np.testing.assert_allclose(softmax_xent.backward_gpu(z, y, lse, g, eps, -100, reduction, launcher=launcher),
                               softmax_xent.backward_cpu(z, y, lse_ref, g, eps, -100, reduction), **_tol(dtype))


@needs_cxx
def test_emulated_softmax_xent_bad_label_is_nan(launcher):
    z = RNG.standard_normal((3, 4)).astype(np.float32)
    loss, _ = softmax_xent.forward_gpu(z, np.array([0, 9, -100]), reduction="none", launcher=launcher)
    assert loss[0] > 0 and np.isnan(loss[1]) and loss[2] == 0


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ["none", "relu", "gelu", "gelu_tanh", "tanh", "sigmoid"])
def test_emulated_bias_act(act, dtype, launcher):
    x = (RNG.standard_normal((4, 6, 3, 5)) * 3).astype(dtype)
    x[0, 0, 0, :3] = [40.0, -40.0, 0.0]                       # saturation, sigmoid overflow guard, relu kink
    b = RNG.standard_normal(6).astype(dtype)
    y = bias_act.forward_gpu(x, b, act, 1, launcher=launcher)
    y_ref = bias_act.forward_cpu(x, b, act, 1)
    np.testing.assert_allclose(y, y_ref, **_tol(dtype))
    np.testing.assert_allclose(bias_act.forward_gpu(x, None, act, launcher=launcher),
                               bias_act.forward_cpu(x, None, act), **_tol(dtype))
    g = RNG.standard_normal(x.shape).astype(dtype)
    for kw in (dict(y=y_ref, x=x, bias=b), dict(x=x, bias=b), dict(x=x)):
        dz, db = bias_act.backward_gpu(g, act, launcher=launcher, **kw)
        dz_ref, db_ref = bias_act.backward_cpu(g, act, **kw)
        # gelu' cancels two O(1) terms for z < -2: float32 paths agree to ~1e-6 absolute, not relative
        np.testing.assert_allclose(dz, dz_ref, **(_tol(dtype) if dtype == np.float64 else dict(rtol=1e-5, atol=1e-5)))
        if db_ref is not None:
            np.testing.assert_allclose(db, db_ref, rtol=1e-4 if dtype == np.float32 else 1e-12, atol=1e-5)


def _params(dtype, sizes):
    return [RNG.standard_normal(s).astype(dtype) for s in sizes]


# sizes straddle the chunk size so tensors span several chunks and chunks end mid-tensor
MT_SHAPES = [(3, 4), (_multi_tensor.CHUNK + 5,), (0,), (2 * _multi_tensor.CHUNK,), (7,)]


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("cfg", [dict(momentum=0.0), dict(momentum=0.9, weight_decay=0.01),
                                 dict(momentum=0.9, dampening=0.2), dict(momentum=0.7, nesterov=True)])
def test_emulated_sgd(cfg, dtype, launcher):
    ps = _params(dtype, MT_SHAPES)
    ref = [p.copy() for p in ps]
    bufs, ref_bufs = [np.zeros_like(p) for p in ps], [np.zeros_like(p) for p in ps]
    for step in range(3):
        gs = _params(dtype, MT_SHAPES)
        optim_fused.sgd_gpu(ps, gs, bufs, 0.1, first_step=step == 0, launcher=launcher, **cfg)
        optim_fused.sgd_cpu(ref, gs, ref_bufs if cfg["momentum"] else None, 0.1, first_step=step == 0, **cfg)
    for p, r in zip(ps, ref):
        np.testing.assert_allclose(p, r, **_tol(dtype))
    n_chunks = sum(-(-int(np.prod(s)) // _multi_tensor.CHUNK) for s in MT_SHAPES)
    assert n_chunks == 6
    assert [grid for _, grid, _ in launcher.launches] == [n_chunks] * 3     # one launch per step, a block per chunk


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("decoupled,wd,beta1", [(False, 0.0, 0.9), (False, 0.01, 0.9), (True, 0.05, 0.9),
                                                (True, 0.05, 0.2)])
def test_emulated_adam(decoupled, wd, beta1, dtype, launcher):
    ps = _params(dtype, MT_SHAPES)
    ref = [p.copy() for p in ps]
    st = [[np.zeros_like(p) for p in ps] for _ in range(4)]
    for step in range(1, 4):
        gs = _params(dtype, MT_SHAPES)
        optim_fused.adam_gpu(ps, gs, st[0], st[1], step, 1e-2, beta1, 0.999, 1e-8, wd, decoupled, launcher=launcher)
        optim_fused.adam_cpu(ref, gs, st[2], st[3], step, 1e-2, beta1, 0.999, 1e-8, wd, decoupled)
    for a, b in zip(ps + st[0] + st[1], ref + st[2] + st[3]):
        np.testing.assert_allclose(a, b, **_tol(dtype))


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
def test_emulated_bucket_pack_unpack(dtype, launcher):
    grads = _params(dtype, MT_SHAPES)
    offsets, total = bucket.layout(grads, align=8)
    flat = np.full(total, np.nan, dtype)
    bucket.pack_gpu(grads, flat, offsets, launcher=launcher)
    for g, o in zip(grads, offsets):
        np.testing.assert_array_equal(flat[o:o + g.size], g.ravel())
    outs = [np.empty_like(g) for g in grads]
    bucket.unpack_gpu(flat, outs, offsets, scale=0.5, launcher=launcher)
    for g, o in zip(grads, outs):
        np.testing.assert_array_equal(o, g * dtype(0.5))
    bucket.unpack_gpu(flat, outs, offsets, launcher=launcher)
    for g, o in zip(grads, outs):
        np.testing.assert_array_equal(o, g)
    n_before = len(_multi_tensor._cache)
    bucket.unpack_gpu(flat, outs, offsets, launcher=launcher)                 # same addresses: table reused
    assert len(_multi_tensor._cache) == n_before


@needs_cxx
def test_emulator_rejects_mismatched_argument_types(launcher):
    """The emulator checks each argument against the kernel's C signature: the glue cannot drift silently."""
    x = np.zeros((1, 1, 4, 4), np.float32)
    col = np.zeros((1, 1, 2, 2, 3, 3), np.float32)
    good = [x, col] + [np.int64(v) for v in (36, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0, 1, 1)] + [np.float64(0)]
    launcher.raw("conv.cu", "im2col", np.float32, 36, tuple(good))
    bad = list(good)
    bad[3] = np.int32(4)
    with pytest.raises(TypeError, match="numpy int64 scalar"):
        launcher.raw("conv.cu", "im2col", np.float32, 36, tuple(bad))
    with pytest.raises(TypeError, match="array of float64"):
        launcher.raw("conv.cu", "im2col", np.float32, 36, (x.astype(np.float64),) + tuple(good[1:]))
    with pytest.raises(TypeError, match="arguments"):
        launcher.raw("conv.cu", "im2col", np.float32, 36, tuple(good[:-1]))


# ------------------------------------------------------------------------------------------ fused RNN steps
# The layer glue of engine.kernels.rnn_step with the CUDA step kernels run by the emulator, against the numpy
# layers of engine.nn._rnn (cases shared with tests/test_rnn_fused.py, which runs the same glue on the twins).

RNN_SPECS = [rnn_step.LSTM_FWD, rnn_step.LSTM_BWD, rnn_step.GRU_FWD, rnn_step.GRU_BWD, rnn_step.RNN_FWD,
             rnn_step.RNN_BWD]
# host libm's tanhf stands in for the device's: float32 results may differ from numpy's tanh by an ulp or two
_LAYER_REL = {np.float32: 2e-6, np.float64: 1e-12}


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", RNN_SPECS, ids=[s.name for s in RNN_SPECS])
def test_emulated_rnn_step_matches_twin(spec, dtype, launcher):
    """Each step kernel against its numpy twin on strided (N, H) views, saturating inputs (|z| = 40) included."""
    N, H = 5, 7
    params = _source.parse_params(spec, "double")
    for kind in ("tanh", "relu") if spec.scalars else ("tanh",):
        args, twin_args = [], []
        for p in params:
            if p.is_scalar:
                args.append(np.int32(bias_act.ACT_CODES[kind]))
                twin_args.append(args[-1])
                continue
            buf = (np.full((N, 3 * H), np.nan, dtype) if p.is_out
                   else (RNG.standard_normal((N, 3 * H)) * 3).astype(dtype))
            if not p.is_out:
                buf[0, H:H + 2] = [40.0, -40.0]
            args.append(buf[:, H:2 * H])
            twin_args.append(buf[:, H:2 * H].copy())
        launcher.elementwise(spec.name, *args)
        rnn_step.TWINS[spec.name](*twin_args)
        for p, got, ref in zip(params, args, twin_args):
            if p.is_out:
                assert np.isfinite(got).all(), f"{spec.name}: {p.name} not finite"
                np.testing.assert_allclose(got, ref, **_tol(dtype))


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("bias,h0_is_zero,needs", [(True, False, (True, True, True, True)),
                                                   (False, True, (True, False, True, True))])
def test_emulated_lstm_layer(bias, h0_is_zero, needs, dtype, launcher):
    check_lstm(launcher, dtype, bias, h0_is_zero, needs, rel=_LAYER_REL[dtype])
    sfx = "f32" if dtype == np.float32 else "f64"
    assert [n for n, _, _ in launcher.launches] == [f"dpt_lstm_fwd_step_{sfx}"] * 6 + [f"dpt_lstm_bwd_step_{sfx}"] * 6


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b_ih,b_hh", [(True, True), (False, True), (True, False)])
def test_emulated_gru_layer(b_ih, b_hh, dtype, launcher):
    check_gru(launcher, dtype, b_ih, b_hh, rel=_LAYER_REL[dtype])
    assert len(launcher.launches) == 12


@needs_cxx
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_emulated_rnn_layer(nonlinearity, dtype, launcher):
    check_rnn(launcher, dtype, nonlinearity, rel=_LAYER_REL[dtype])
    assert len(launcher.launches) == 12
