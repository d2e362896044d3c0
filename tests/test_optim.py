"""engine.optim, lr_scheduler and clip_grad_norm_ against PyTorch's reference implementations."""
import copy
import math

import numpy as np
import pytest

import engine
from engine import optim
from engine.nn.utils import clip_grad_norm_
from engine.optim import lr_scheduler as sched

torch = pytest.importorskip("torch")

SHAPES = [(7, 5), (5,), (3, 2, 4), ()]


def _make_params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    arrays = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ours = [engine.tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    return ours, theirs


def _grad_seq(steps, seed=1, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(steps)]


def _set_grads(ours, theirs, grads):
    for p, t, g in zip(ours, theirs, grads):
        p.grad = engine.tensor(g.copy())
        t.grad = torch.tensor(g.copy())


def _run_both(make_ours, make_theirs, steps=6, dtype=np.float32):
    ours, theirs = _make_params(dtype=dtype)
    opt, topt = make_ours(ours), make_theirs(theirs)
    for grads in _grad_seq(steps, dtype=dtype):
        _set_grads(ours, theirs, grads)
        opt.step()
        topt.step()
    return ours, theirs, opt


def _assert_close(ours, theirs, rtol=1e-4, atol=1e-6):
    for p, t in zip(ours, theirs):
        assert p.data.dtype == t.detach().numpy().dtype
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=rtol, atol=atol)


CASES = {
    "sgd": (lambda p: optim.SGD(p, lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_wd": (lambda p: optim.SGD(p, lr=0.1, weight_decay=0.05),
               lambda p: torch.optim.SGD(p, lr=0.1, weight_decay=0.05)),
    "sgd_momentum": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd_momentum_dampening_wd": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2)),
    "sgd_nesterov_wd": (lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
                        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adam": (lambda p: optim.Adam(p, lr=1e-2), lambda p: torch.optim.Adam(p, lr=1e-2)),
    "adam_wd_betas": (lambda p: optim.Adam(p, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1),
                      lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)),
    "adam_amsgrad": (lambda p: optim.Adam(p, lr=1e-2, amsgrad=True),
                     lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True)),
    "adamw": (lambda p: optim.AdamW(p, lr=1e-2), lambda p: torch.optim.AdamW(p, lr=1e-2)),
    "adamw_amsgrad_wd": (lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.3, amsgrad=True),
                         lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.3, amsgrad=True)),
    "rmsprop": (lambda p: optim.RMSprop(p, lr=1e-2), lambda p: torch.optim.RMSprop(p, lr=1e-2)),
    "rmsprop_centered_momentum_wd": (
        lambda p: optim.RMSprop(p, lr=1e-3, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01),
        lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, momentum=0.5, centered=True, weight_decay=0.01)),
    "rmsprop_momentum": (lambda p: optim.RMSprop(p, lr=1e-3, momentum=0.9),
                         lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.9)),
    "rmsprop_centered": (lambda p: optim.RMSprop(p, lr=1e-3, centered=True),
                         lambda p: torch.optim.RMSprop(p, lr=1e-3, centered=True)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_float32(name):
    ours_f, theirs_f = CASES[name]
    ours, theirs, _ = _run_both(ours_f, theirs_f, steps=8)
    _assert_close(ours, theirs)


@pytest.mark.parametrize("name", ["sgd_nesterov_wd", "adam_amsgrad", "rmsprop_centered_momentum_wd"])
def test_matches_torch_float64_tightly(name):
    ours_f, theirs_f = CASES[name]
    ours, theirs, _ = _run_both(ours_f, theirs_f, steps=5, dtype=np.float64)
    _assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


FUSED = {
    "sgd_fused": (lambda p: optim.SGD(p, lr=0.1, fused=True), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_nesterov_wd_fused": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, fused=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "sgd_dampening_fused": (
        lambda p: optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2, fused=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-2)),
    "adam_wd_fused": (lambda p: optim.Adam(p, lr=3e-3, weight_decay=0.1, fused=True),
                      lambda p: torch.optim.Adam(p, lr=3e-3, weight_decay=0.1)),
    "adamw_fused": (lambda p: optim.AdamW(p, lr=1e-2, weight_decay=0.3, fused=True),
                    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.3)),
}


@pytest.mark.parametrize("name", sorted(FUSED))
def test_fused_hook_matches_torch(name):
    """fused=True routes through engine.kernels' multi-tensor update (its CPU path here)."""
    pytest.importorskip("engine.kernels")
    ours_f, theirs_f = FUSED[name]
    ours, theirs, opt = _run_both(ours_f, theirs_f, steps=6)
    _assert_close(ours, theirs)
    assert all(st.get("step", 6) == 6 for st in opt.state.values())


def test_fused_refuses_unsupported_settings():
    ours, _ = _make_params()
    opt = optim.Adam(ours, amsgrad=True, fused=True)
    for p in ours:
        p.grad = engine.tensor(np.ones(p.shape, np.float32))
    with pytest.raises(RuntimeError, match="amsgrad"):
        opt.step()


def test_grad_untouched_and_dtype_kept():
    ours, _ = _make_params()
    opt = optim.Adam(ours, lr=0.1, weight_decay=0.1)
    grads = _grad_seq(1)[0]
    for p, g in zip(ours, grads):
        p.grad = engine.tensor(g.copy())
    opt.step()
    for p, g in zip(ours, grads):
        np.testing.assert_array_equal(p.grad.data, g)      # L2 decay must not leak into .grad
        assert p.data.dtype == np.float32
        for v in opt.state[p].values():
            if isinstance(v, np.ndarray):
                assert v.dtype == np.float32


def test_param_groups_and_skip_params_without_grad():
    ours, theirs = _make_params()
    opt = optim.SGD([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.5, "momentum": 0.9}], lr=0.1)
    topt = torch.optim.SGD([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.5, "momentum": 0.9}], lr=0.1)
    for step, grads in enumerate(_grad_seq(4)):
        _set_grads(ours, theirs, grads)
        if step == 2:                 # a parameter without a gradient is skipped by both
            ours[1].grad, theirs[1].grad = None, None
        opt.step()
        topt.step()
    _assert_close(ours, theirs)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]


def test_zero_grad():
    ours, _ = _make_params()
    opt = optim.SGD(ours, lr=0.1)
    for p in ours:
        p.grad = engine.tensor(np.ones(p.shape, np.float32))
    opt.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.data.any() for p in ours)
    opt.zero_grad()
    assert all(p.grad is None for p in ours)


def test_invalid_arguments():
    ours, _ = _make_params()
    with pytest.raises(ValueError, match="Nesterov"):
        optim.SGD(ours, lr=0.1, nesterov=True)
    with pytest.raises(ValueError, match="learning rate"):
        optim.Adam(ours, lr=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adam(ours, betas=(0.9, 1.0))
    with pytest.raises(ValueError, match="empty"):
        optim.Adam([])
    with pytest.raises(ValueError, match="more than one"):
        optim.SGD([{"params": ours[:2]}, {"params": ours[1:]}], lr=0.1)
    with pytest.raises(ValueError, match="requires_grad"):
        optim.SGD([engine.tensor(np.ones(3, np.float32))], lr=0.1)


@pytest.mark.parametrize("name", ["sgd_nesterov_wd", "adam_amsgrad", "adamw", "rmsprop_centered_momentum_wd"])
def test_state_dict_resume_is_identical(name, tmp_path):
    """Train 6 steps straight vs 3 steps, save through engine.save, fresh optimizer, 3 more steps."""
    make = CASES[name][0]
    grads = _grad_seq(6)
    ref, _ = _make_params()
    opt = make(ref)
    for gs in grads:
        for p, g in zip(ref, gs):
            p.grad = engine.tensor(g.copy())
        opt.step()

    first, _ = _make_params()
    opt1 = make(first)
    for gs in grads[:3]:
        for p, g in zip(first, gs):
            p.grad = engine.tensor(g.copy())
        opt1.step()
    path = tmp_path / "ckpt.safetensors"
    engine.save({"params": [p.data for p in first], "optim": opt1.state_dict()}, path)
    snapshot = copy.deepcopy(opt1.state_dict())
    for gs in grads[3:]:                       # later steps must not change a taken state_dict
        for p, g in zip(first, gs):
            p.grad = engine.tensor(g.copy())
        opt1.step()
    loaded = engine.load(path)
    for k, st in snapshot["state"].items():
        for n, v in st.items():
            np.testing.assert_array_equal(loaded["optim"]["state"][k][n], v)

    resumed = [engine.tensor(a, requires_grad=True) for a in loaded["params"]]
    opt2 = make(resumed)
    opt2.load_state_dict(loaded["optim"])
    for gs in grads[3:]:
        for p, g in zip(resumed, gs):
            p.grad = engine.tensor(g.copy())
        opt2.step()
    for a, b in zip(ref, resumed):
        np.testing.assert_array_equal(a.data, b.data)


def test_state_dict_layout_matches_torch_keys():
    ours, theirs = _make_params()
    _, _, opt = _run_both(CASES["adam_amsgrad"][0], CASES["adam_amsgrad"][1], steps=2)
    ours_sd = opt.state_dict()
    topt = torch.optim.Adam(theirs, lr=1e-2, amsgrad=True)
    for grads in _grad_seq(2):
        _set_grads(ours, theirs, grads)
        topt.step()
    tsd = topt.state_dict()
    assert sorted(ours_sd["state"]) == sorted(tsd["state"])
    assert set(ours_sd["state"][0]) == set(tsd["state"][0])
    assert ours_sd["param_groups"][0]["params"] == tsd["param_groups"][0]["params"]
    assert ours_sd["state"][0]["step"] == 2


def test_load_state_dict_rejects_wrong_model():
    ours, _ = _make_params()
    opt = optim.Adam(ours)
    for p in ours:
        p.grad = engine.tensor(np.ones(p.shape, np.float32))
    opt.step()
    sd = opt.state_dict()
    other = [engine.tensor(np.zeros((2, 2), np.float32), requires_grad=True) for _ in SHAPES]
    with pytest.raises(ValueError, match="shape"):
        optim.Adam(other).load_state_dict(sd)
    with pytest.raises(ValueError, match="parameters"):
        optim.Adam(other[:2]).load_state_dict(sd)


def test_loads_torch_state_dict_converted_to_numpy():
    ours, theirs = _make_params()
    topt = torch.optim.Adam(theirs, lr=1e-2)
    grads = _grad_seq(5)
    for gs in grads[:3]:
        _set_grads(ours, theirs, gs)
        topt.step()
    tsd = topt.state_dict()
    conv = {"state": {k: {n: v.numpy() for n, v in st.items()} for k, st in tsd["state"].items()},
            "param_groups": tsd["param_groups"]}
    for p, t in zip(ours, theirs):
        p.data[...] = t.detach().numpy()
    opt = optim.Adam(ours, lr=1e-2)
    opt.load_state_dict(conv)
    for gs in grads[3:]:
        _set_grads(ours, theirs, gs)
        topt.step()
        opt.step()
    _assert_close(ours, theirs)


# ---------------------------------------------------------------- clip_grad_norm_
@pytest.mark.parametrize("norm_type", [2.0, 1.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 100.0])
def test_clip_grad_norm_matches_torch(norm_type, max_norm):
    ours, theirs = _make_params()
    _set_grads(ours, theirs, _grad_seq(1)[0])
    total = clip_grad_norm_(ours, max_norm, norm_type)
    ttotal = torch.nn.utils.clip_grad_norm_(theirs, max_norm, norm_type)
    assert isinstance(total, engine.Tensor) and total.shape == ()
    np.testing.assert_allclose(total.item(), ttotal.item(), rtol=1e-5)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.grad.data, t.grad.numpy(), rtol=1e-5, atol=1e-7)


def test_clip_grad_norm_nonfinite_and_empty():
    p = engine.tensor(np.ones(3, np.float32), requires_grad=True)
    assert clip_grad_norm_([p], 1.0).item() == 0.0            # no gradients at all
    p.grad = engine.tensor(np.array([np.inf, 1, 1], np.float32))
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(p, 1.0, error_if_nonfinite=True)


# ---------------------------------------------------------------- schedulers
def _sched_pair(make_ours, make_theirs, steps=25, lr=0.1, groups=2):
    ours, theirs = _make_params()
    opt = optim.SGD([{"params": ours[:2]}, {"params": ours[2:], "lr": lr * 3}][:groups], lr=lr)
    topt = torch.optim.SGD([{"params": theirs[:2]}, {"params": theirs[2:], "lr": lr * 3}][:groups], lr=lr)
    s, ts = make_ours(opt), make_theirs(topt)
    got = [[g["lr"] for g in opt.param_groups]]
    want = [[g["lr"] for g in topt.param_groups]]
    for _ in range(steps):
        opt.step()
        topt.step()
        for x in (s if isinstance(s, list) else [s]):
            x.step()
        for x in (ts if isinstance(ts, list) else [ts]):
            x.step()
        got.append([g["lr"] for g in opt.param_groups])
        want.append([g["lr"] for g in topt.param_groups])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    return opt, s


SCHEDS = {
    "step": (lambda o: sched.StepLR(o, step_size=4, gamma=0.5),
             lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=4, gamma=0.5)),
    "cosine": (lambda o: sched.CosineAnnealingLR(o, T_max=10, eta_min=1e-3),
               lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=10, eta_min=1e-3)),
    "warmup": (lambda o: sched.LinearWarmup(o, warmup_steps=5, start_factor=0.2),
               lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.2, total_iters=5)),
    "chained_warmup_step": (
        lambda o: [sched.LinearWarmup(o, warmup_steps=4, start_factor=0.25), sched.StepLR(o, 3, 0.5)],
        lambda o: torch.optim.lr_scheduler.ChainedScheduler(
            [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.25, total_iters=4),
             torch.optim.lr_scheduler.StepLR(o, 3, 0.5)])),
    "warmup_then_cosine": (
        lambda o: sched.LinearWarmup(o, warmup_steps=5, start_factor=0.1,
                                     after=sched.CosineAnnealingLR(o, T_max=12)),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.1, total_iters=5),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=12)], milestones=[5])),
    "warmup_then_step": (
        lambda o: sched.LinearWarmup(o, warmup_steps=3, start_factor=0.5, after=sched.StepLR(o, 4, 0.1)),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=3),
                torch.optim.lr_scheduler.StepLR(o, 4, 0.1)], milestones=[3])),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(SCHEDS))
def test_scheduler_matches_torch(name):
    _sched_pair(*SCHEDS[name])


def test_closed_form_agrees_with_recursive():
    for make in (SCHEDS["step"][0], SCHEDS["cosine"][0], SCHEDS["warmup"][0], SCHEDS["warmup_then_cosine"][0]):
        ours, _ = _make_params()
        s = make(optim.SGD(ours, lr=0.1))
        for _ in range(30):
            s.step()
            np.testing.assert_allclose(s.get_last_lr(), s._closed_form_lr(), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", ["cosine", "warmup_then_cosine"])
def test_scheduler_state_dict_resume(name, tmp_path):
    make = SCHEDS[name][0]
    ours, _ = _make_params()
    opt = optim.SGD(ours, lr=0.1, momentum=0.9)
    s = make(opt)
    lrs = []
    for i in range(14):
        s.step()
        lrs.append(s.get_last_lr())
        if i == 6:
            engine.save({"opt": opt.state_dict(), "sched": s.state_dict()}, tmp_path / "s.safetensors")
    ck = engine.load(tmp_path / "s.safetensors")
    ours2, _ = _make_params()
    opt2 = optim.SGD(ours2, lr=0.1, momentum=0.9)
    s2 = make(opt2)
    opt2.load_state_dict(ck["opt"])
    s2.load_state_dict(ck["sched"])
    for i in range(7, 14):
        s2.step()
        assert s2.get_last_lr() == lrs[i]
        assert [g["lr"] for g in opt2.param_groups] == lrs[i]


def test_a_non_contiguous_parameter_is_updated_without_the_fused_kernel():
    """The multi-tensor kernels update flat memory in place; a parameter that is a view (found on a
    GPU with Keras weights) takes the per-parameter path, or fused=True says why it cannot."""
    import engine
    from engine import nn
    w = nn.Parameter(engine.tensor(np.ones((4, 6), np.float32)))
    v = nn.Parameter(np.ascontiguousarray(np.ones((6, 4), np.float32)).T)
    assert not v.data.flags.c_contiguous
    for p in (w, v):
        p.grad = engine.tensor(np.ones(p.shape, np.float32))
    with pytest.raises(RuntimeError, match="non-contiguous view"):
        optim.Adam([w, v], lr=0.1, fused=True).step()
    optim.Adam([w, v], lr=0.1).step()
    assert np.allclose(v.numpy(), 0.9) and np.allclose(w.numpy(), 0.9)
