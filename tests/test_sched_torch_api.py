"""torch.optim.lr_scheduler's other schedules (and the optimizers torch scripts use) on engine.optim.

Sequences are compared with torch's own schedulers when torch is installed (several param groups,
momentum / betas too), and with hand-computed values otherwise; state dicts must round-trip
through engine.save (safetensors + JSON, no pickle) and resume the same sequence.
"""
import json
import math

import numpy as np
import pytest

import engine
from engine import optim
from engine.optim import lr_scheduler as sched

SHAPES = [(4, 3), (3,), (2, 2), ()]


def _params(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _opt(kind="sgd", lr=0.1, groups=2, lib=None, arrays=None):
    """engine (lib=None) or torch optimizer over two param groups, the second with 3x the lr."""
    arrays = _params() if arrays is None else arrays
    if lib is None:
        ps = [engine.tensor(a.copy(), requires_grad=True) for a in arrays]
        o = optim
    else:
        ps = [lib.tensor(a.copy(), requires_grad=True) for a in arrays]
        o = lib.optim
    spec = [{"params": ps[:2]}, {"params": ps[2:], "lr": lr * 3}][:groups]
    if groups == 1:
        spec = [{"params": ps}]
    if kind == "sgd":
        return o.SGD(spec, lr=lr, momentum=0.9)
    return o.Adam(spec, lr=lr)


def _lrs(opt):
    return [g["lr"] for g in opt.param_groups]


def _hyper(opt):
    out = []
    for g in opt.param_groups:
        out.append([g["lr"], g.get("momentum", 0.0), tuple(g.get("betas", (0.0, 0.0)))[0]])
    return out


# ---------------------------------------------------------------- against torch
def _f_half(e):
    return 0.5 ** e


def _f_mult(e):
    return 0.9 if e % 2 else 0.95


SCHEDS = {
    "lambda": (lambda o, L: L.LambdaLR(o, lr_lambda=_f_half), 12),
    "lambda_per_group": (lambda o, L: L.LambdaLR(o, lr_lambda=[_f_half, lambda e: 1.0 / (1 + e)]), 12),
    "multiplicative": (lambda o, L: L.MultiplicativeLR(o, lr_lambda=_f_mult), 12),
    "multistep": (lambda o, L: L.MultiStepLR(o, milestones=[3, 7, 7, 10], gamma=0.5), 14),
    "exponential": (lambda o, L: L.ExponentialLR(o, gamma=0.8), 12),
    "linear": (lambda o, L: L.LinearLR(o, start_factor=0.25, end_factor=0.75, total_iters=6), 12),
    "linear_defaults": (lambda o, L: L.LinearLR(o), 10),
    "constant": (lambda o, L: L.ConstantLR(o, factor=0.5, total_iters=4), 10),
    "polynomial": (lambda o, L: L.PolynomialLR(o, total_iters=8, power=2.0), 12),
    "warm_restarts": (lambda o, L: L.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2, eta_min=1e-3), 25),
    "warm_restarts_mult1": (lambda o, L: L.CosineAnnealingWarmRestarts(o, T_0=4), 13),
    "sequential_3": (lambda o, L: L.SequentialLR(o, [L.ConstantLR(o, factor=0.1, total_iters=2),
                                                      L.ExponentialLR(o, gamma=0.9),
                                                      L.CosineAnnealingLR(o, T_max=5)], milestones=[3, 8]), 18),
    "sequential_linear_multistep": (
        lambda o, L: L.SequentialLR(o, [L.LinearLR(o, start_factor=0.2, total_iters=4),
                                        L.MultiStepLR(o, [2, 5], gamma=0.3)], milestones=[4]), 12),
    "chained": (lambda o, L: L.ChainedScheduler([L.ConstantLR(o, factor=0.5, total_iters=3),
                                                  L.ExponentialLR(o, gamma=0.9)]), 10),
    "onecycle_cos": (lambda o, L: L.OneCycleLR(o, max_lr=1.0, total_steps=20), 20),
    "onecycle_linear_3phase": (lambda o, L: L.OneCycleLR(o, max_lr=[0.5, 2.0], epochs=4, steps_per_epoch=5,
                                                          anneal_strategy="linear", three_phase=True,
                                                          pct_start=0.25, div_factor=10.0,
                                                          final_div_factor=100.0), 20),
    "onecycle_no_momentum": (lambda o, L: L.OneCycleLR(o, max_lr=0.3, total_steps=11, cycle_momentum=False,
                                                        base_momentum=0.7, max_momentum=0.9), 11),
}


def _run(make, steps, lib, kind):
    o = _opt(kind, lib=lib)
    L = sched if lib is None else lib.optim.lr_scheduler
    s = make(o, L)
    seq = [_hyper(o)]
    last = [s.get_last_lr()]
    for _ in range(steps):
        o.step()
        s.step()
        seq.append(_hyper(o))
        last.append(s.get_last_lr())
    return seq, last, s


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(SCHEDS))
def test_sequence_matches_torch(name, kind):
    torch = pytest.importorskip("torch")
    make, steps = SCHEDS[name]
    got, got_last, _ = _run(make, steps, None, kind)
    want, want_last, _ = _run(make, steps, torch, kind)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got_last, want_last, rtol=1e-12, atol=1e-15)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", ["step", "cosine", "linear_warmup", "warmup_then_cosine"])
def test_existing_schedulers_keep_torch_interface(name):
    """The schedulers that were there first: same sequence, state keys and step(epoch) as torch's."""
    torch = pytest.importorskip("torch")
    TL = torch.optim.lr_scheduler
    ours = {"step": lambda o: sched.StepLR(o, 3, 0.5),
            "cosine": lambda o: sched.CosineAnnealingLR(o, T_max=6, eta_min=0.01),
            "linear_warmup": lambda o: sched.LinearWarmup(o, 4, start_factor=0.25),
            "warmup_then_cosine": lambda o: sched.LinearWarmup(o, 3, 0.5, after=sched.CosineAnnealingLR(o, 6))}
    theirs = {"step": lambda o: TL.StepLR(o, 3, 0.5),
              "cosine": lambda o: TL.CosineAnnealingLR(o, T_max=6, eta_min=0.01),
              "linear_warmup": lambda o: TL.LinearLR(o, start_factor=0.25, total_iters=4),
              "warmup_then_cosine": lambda o: TL.SequentialLR(
                  o, [TL.LinearLR(o, 0.5, total_iters=3), TL.CosineAnnealingLR(o, 6)], milestones=[3])}
    o, to = _opt(), _opt(lib=torch)
    s, ts = ours[name](o), theirs[name](to)
    for _ in range(12):
        o.step()
        to.step()
        s.step()
        ts.step()
        assert s.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)
        assert s.last_epoch == ts.last_epoch
    assert s.base_lrs == pytest.approx(getattr(ts, "base_lrs", s.base_lrs))
    if name in ("step", "cosine"):        # LinearWarmup is this project's own name (LinearLR is torch's)
        assert set(ts.state_dict()) - set(s.state_dict()) <= {"_get_lr_called_within_step"}
        s.step(2)                          # torch's deprecated step(epoch): jump with the closed form
        ts.step(2)
        assert s.get_last_lr() == pytest.approx(ts.get_last_lr(), rel=1e-12)


@pytest.mark.parametrize("mode,threshold_mode", [("min", "rel"), ("min", "abs"), ("max", "rel"), ("max", "abs")])
def test_reduce_on_plateau_matches_torch(mode, threshold_mode):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    metrics = np.concatenate([np.linspace(1.0, 0.5, 6), 0.5 + 0.002 * rng.standard_normal(30)])
    if mode == "max":
        metrics = 2.0 - metrics
    kw = dict(mode=mode, factor=0.5, patience=2, threshold=0.01, threshold_mode=threshold_mode,
              cooldown=1, min_lr=[0.01, 0.02], eps=1e-8)
    o, to = _opt(), _opt(lib=torch)
    s = sched.ReduceLROnPlateau(o, **kw)
    ts = torch.optim.lr_scheduler.ReduceLROnPlateau(to, **kw)
    for m in metrics:
        s.step(float(m))
        ts.step(float(m))
        assert _lrs(o) == _lrs(to)
        assert s.get_last_lr() == ts.get_last_lr()
        assert (s.best, s.num_bad_epochs, s.cooldown_counter, s.last_epoch) == \
            (ts.best, ts.num_bad_epochs, ts.cooldown_counter, ts.last_epoch)
    assert _lrs(o)[0] < 0.1                             # it did reduce
    assert set(ts.state_dict()) <= set(s.state_dict())


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_torch_state_dicts_load():
    """A torch scheduler's state dict (numbers, lists, a Counter) continues here."""
    torch = pytest.importorskip("torch")
    to = _opt(lib=torch)
    ts = torch.optim.lr_scheduler.MultiStepLR(to, [2, 4, 4], gamma=0.5)
    for _ in range(3):
        to.step()
        ts.step()
    o = _opt()
    s = sched.MultiStepLR(o, [1], gamma=0.9)           # built first, then the states loaded (torch's order)
    for g, tg in zip(o.param_groups, to.param_groups):  # what loading the optimizer's state does
        g["lr"], g["initial_lr"] = tg["lr"], tg["initial_lr"]
    s.load_state_dict(ts.state_dict())
    assert s.milestones == {2: 1, 4: 2} and s.gamma == 0.5
    for _ in range(3):
        to.step()
        ts.step()
        s.step()
        assert _lrs(o) == pytest.approx(_lrs(to), rel=1e-12)


# ---------------------------------------------------------------- hand-computed (no torch needed)
def _one_group(lr=1.0, kind="sgd"):
    return _opt(kind, lr=lr, groups=1)


def _seq(s, steps):
    out = [s.get_last_lr()[0]]
    for _ in range(steps):
        s.optimizer.step()
        s.step()
        out.append(s.get_last_lr()[0])
    return out


def test_hand_computed_sequences():
    a = pytest.approx
    assert _seq(sched.LambdaLR(_one_group(), lambda e: 1.0 / (e + 1)), 3) == a([1, 1 / 2, 1 / 3, 1 / 4])
    assert _seq(sched.MultiplicativeLR(_one_group(), lambda e: 0.5), 3) == a([1, 0.5, 0.25, 0.125])
    assert _seq(sched.MultiStepLR(_one_group(), [2, 4, 4], 0.1), 5) == a([1, 1, 0.1, 0.1, 1e-3, 1e-3])
    assert _seq(sched.ExponentialLR(_one_group(), 0.5), 3) == a([1, 0.5, 0.25, 0.125])
    assert _seq(sched.ConstantLR(_one_group(), 0.5, total_iters=2), 3) == a([0.5, 0.5, 1, 1])
    assert _seq(sched.LinearLR(_one_group(), 0.5, 1.0, total_iters=2), 3) == a([0.5, 0.75, 1, 1])
    assert _seq(sched.PolynomialLR(_one_group(), total_iters=4, power=1.0), 5) == a([1, .75, .5, .25, 0, 0])
    cos = [(1 + math.cos(math.pi * t / 2)) / 2 for t in (0, 1)]
    assert _seq(sched.CosineAnnealingWarmRestarts(_one_group(), T_0=2), 4) == a(cos + cos + cos[:1])
    seq = sched.SequentialLR(o := _one_group(), [sched.ConstantLR(o, 0.1, 10), sched.ExponentialLR(o, 0.5)], [2])
    assert _seq(seq, 4) == a([0.1, 0.1, 1, 0.5, 0.25])


def test_onecycle_hand_computed_and_momentum():
    o = _one_group(kind="sgd")
    s = sched.OneCycleLR(o, max_lr=1.0, total_steps=10, pct_start=0.3, anneal_strategy="linear",
                         div_factor=10.0, final_div_factor=10.0)
    # up: steps 0..2 from 0.1 to 1.0 (end_step = 0.3 * 10 - 1 = 2); down: 2..9 from 1.0 to 0.01
    want = [0.1, 0.55, 1.0] + [1.0 + (0.01 - 1.0) * (k - 2) / 7 for k in range(3, 10)]
    got = [s.get_last_lr()[0]]
    moms = [o.param_groups[0]["momentum"]]
    for _ in range(9):
        o.step()
        s.step()
        got.append(s.get_last_lr()[0])
        moms.append(o.param_groups[0]["momentum"])
    assert got == pytest.approx(want)
    assert moms[0] == pytest.approx(0.95) and moms[2] == pytest.approx(0.85) and moms[-1] == pytest.approx(0.95)
    s.step()                                           # step 10 == total_steps is still allowed
    with pytest.raises(ValueError, match="total_steps"):
        s.step()
    a = _one_group(kind="adam")
    sched.OneCycleLR(a, max_lr=0.01, total_steps=5)
    assert a.param_groups[0]["betas"] == (0.95, 0.999)
    with pytest.raises(ValueError, match="total_steps"):
        sched.OneCycleLR(_one_group(), max_lr=1.0)
    r = optim.RMSprop([engine.tensor(np.ones(2, np.float32), requires_grad=True)])
    r.defaults.pop("momentum")
    with pytest.raises(ValueError, match="cycle_momentum"):
        sched.OneCycleLR(r, max_lr=1.0, total_steps=5)


def test_reduce_on_plateau_hand_computed():
    o = _one_group()
    s = sched.ReduceLROnPlateau(o, factor=0.5, patience=1, cooldown=1, min_lr=0.2)
    lrs = []
    for m in [1.0, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]:
        s.step(engine.tensor(m))                        # a 0-d Tensor metric works too
        lrs.append(_lrs(o)[0])
    # bad epochs: 2 -> reduce at the 4th step; 1 cooldown epoch; reduce again 2 bad epochs later; floor 0.2
    assert lrs == pytest.approx([1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25])
    s.step(0.9)
    s.step(0.9)
    assert _lrs(o)[0] == pytest.approx(0.2)
    with pytest.raises(ValueError, match="factor"):
        sched.ReduceLROnPlateau(o, factor=1.0)
    with pytest.raises(ValueError, match="mode"):
        sched.ReduceLROnPlateau(o, mode="up")


def test_argument_errors():
    with pytest.raises(ValueError, match="2 lr_lambdas"):
        sched.LambdaLR(_opt(), [_f_half])
    with pytest.raises(TypeError, match="function"):
        sched.MultiplicativeLR(_opt(), 0.5)
    with pytest.raises(ValueError, match="start_factor"):
        sched.LinearLR(_opt(), start_factor=0.0)
    with pytest.raises(ValueError, match="T_0"):
        sched.CosineAnnealingWarmRestarts(_opt(), T_0=0)
    o = _opt()
    with pytest.raises(ValueError, match="one milestone fewer"):
        sched.SequentialLR(o, [sched.ExponentialLR(o, 0.9)], milestones=[2])
    with pytest.raises(ValueError, match="same optimizer"):
        sched.ChainedScheduler([sched.ExponentialLR(o, 0.9), sched.ExponentialLR(_opt(), 0.9)])
    with pytest.raises(ValueError, match="ReduceLROnPlateau"):
        sched.SequentialLR(o, [sched.ExponentialLR(o, 0.9), sched.ReduceLROnPlateau(o)], [2])
    with pytest.raises(ValueError, match="max_lr"):
        sched.OneCycleLR(o, max_lr=[1.0], total_steps=4)


# ---------------------------------------------------------------- state dicts
class _Warm:
    """A callable-object lr_lambda: its attributes are stored (functions are not)."""

    def __init__(self, n):
        self.n = n

    def __call__(self, e):
        return min(1.0, (e + 1) / self.n)


RESUME = {
    "lambda": lambda o: sched.LambdaLR(o, [_Warm(4), lambda e: 0.9 ** e]),
    "multiplicative": lambda o: sched.MultiplicativeLR(o, _f_mult),
    "multistep": lambda o: sched.MultiStepLR(o, [2, 5, 5, 9], 0.5),
    "exponential": lambda o: sched.ExponentialLR(o, 0.9),
    "linear": lambda o: sched.LinearLR(o, 0.2, 0.8, 7),
    "constant": lambda o: sched.ConstantLR(o, 0.3, 6),
    "polynomial": lambda o: sched.PolynomialLR(o, 10, 1.5),
    "warm_restarts": lambda o: sched.CosineAnnealingWarmRestarts(o, 3, 2, 0.01),
    "onecycle": lambda o: sched.OneCycleLR(o, max_lr=[1.0, 2.0], total_steps=16, three_phase=True),
    "sequential": lambda o: sched.SequentialLR(o, [sched.LinearLR(o, 0.1, total_iters=4),
                                                   sched.CosineAnnealingLR(o, 8)], [4]),
    "chained": lambda o: sched.ChainedScheduler([sched.LinearLR(o, 0.5, total_iters=3),
                                                 sched.MultiStepLR(o, [4, 8], 0.5)]),
    "plateau": lambda o: sched.ReduceLROnPlateau(o, patience=1, factor=0.5, cooldown=1),
}


def _advance(s, i):
    s.optimizer.step()
    if isinstance(s, sched.ReduceLROnPlateau):
        s.step([1.0, 0.9, 0.95, 0.95, 0.95, 0.8, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9][i])
    else:
        s.step()


@pytest.mark.parametrize("kind", ["sgd", "adam"])
@pytest.mark.parametrize("name", sorted(RESUME))
def test_state_dict_is_json_and_resumes(name, kind, tmp_path):
    make = RESUME[name]
    o = _opt(kind)
    s = make(o)
    hyper = []
    for i in range(14):
        _advance(s, i)
        hyper.append(_hyper(o))
        if i == 5:
            sd = s.state_dict()
            json.dumps(sd)                              # plain data: no functions, no objects
            engine.save({"opt": o.state_dict(), "sched": sd}, tmp_path / "ck.safetensors")
    ck = engine.load(tmp_path / "ck.safetensors")
    o2 = _opt(kind)
    s2 = make(o2)
    o2.load_state_dict(ck["opt"])
    s2.load_state_dict(ck["sched"])
    for i in range(6, 14):
        _advance(s2, i)
        np.testing.assert_allclose(_hyper(o2), hyper[i], rtol=1e-12, err_msg=f"step {i}")
        assert s2.get_last_lr() == [g["lr"] for g in o2.param_groups]
    if name == "lambda":
        assert ck["sched"]["lr_lambdas"] == [{"n": 4}, None]


def test_multistep_state_keeps_repeated_milestones():
    s = sched.MultiStepLR(_opt(), [3, 3, 1], 0.5)
    assert s.state_dict()["milestones"] == [1, 3, 3]
    s2 = sched.MultiStepLR(_opt(), [7])
    s2.load_state_dict(s.state_dict())
    assert s2.milestones == {1: 1, 3: 2}


# ---------------------------------------------------------------- optimizers
OPTIMS = {
    "adadelta": ({"lr": 1.0}, "Adadelta"),
    "adadelta_all": ({"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.1}, "Adadelta"),
    "adagrad": ({"lr": 0.1}, "Adagrad"),
    "adagrad_all": ({"lr": 0.05, "lr_decay": 0.01, "weight_decay": 0.1, "initial_accumulator_value": 0.2,
                     "eps": 1e-6}, "Adagrad"),
    "adamax": ({"lr": 0.01}, "Adamax"),
    "adamax_wd": ({"lr": 0.02, "betas": (0.8, 0.9), "eps": 1e-6, "weight_decay": 0.1}, "Adamax"),
    "nadam": ({"lr": 0.01}, "NAdam"),
    "nadam_wd": ({"lr": 0.01, "betas": (0.85, 0.99), "weight_decay": 0.1, "momentum_decay": 0.01}, "NAdam"),
    "nadam_decoupled": ({"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}, "NAdam"),
    "radam": ({"lr": 0.01}, "RAdam"),
    "radam_wd": ({"lr": 0.01, "betas": (0.5, 0.9), "weight_decay": 0.1}, "RAdam"),
    "radam_decoupled": ({"lr": 0.01, "weight_decay": 0.1, "decoupled_weight_decay": True}, "RAdam"),
}


def _run_optim(cls, kw, arrays, grads, lib=None):
    if lib is None:
        ps = [engine.tensor(a.copy(), requires_grad=True) for a in arrays]
        opt = getattr(optim, cls)([{"params": ps[:2]}, {"params": ps[2:], "lr": kw["lr"] / 2}], **kw)
    else:
        ps = [lib.tensor(a.copy(), requires_grad=True) for a in arrays]
        opt = getattr(lib.optim, cls)([{"params": ps[:2]}, {"params": ps[2:], "lr": kw["lr"] / 2}], **kw)
    for gs in grads:
        for p, g in zip(ps, gs):
            p.grad = engine.tensor(g.copy()) if lib is None else lib.tensor(g.copy())
        opt.step()
    return [p.data if lib is None else p.detach().numpy() for p in ps], opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", sorted(OPTIMS))
def test_optimizer_matches_torch(name, dtype):
    torch = pytest.importorskip("torch")
    kw, cls = OPTIMS[name]
    arrays = _params(dtype=dtype)
    rng = np.random.default_rng(5)
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(8)]
    ours, opt = _run_optim(cls, kw, arrays, grads)
    theirs, topt = _run_optim(cls, kw, arrays, grads, lib=torch)
    tol = dict(rtol=1e-4, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-12)
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype
        np.testing.assert_allclose(a, b, **tol)
    assert set(opt.state_dict()["state"][0]) == set(topt.state_dict()["state"][0])


@pytest.mark.parametrize("name", ["adagrad_all", "adamax_wd", "nadam_wd", "radam"])
def test_optimizer_loads_torch_state_dict(name):
    """torch state (0-d tensors for step / mu_product) converted to numpy loads and continues."""
    torch = pytest.importorskip("torch")
    kw, cls = OPTIMS[name]
    arrays = _params(dtype=np.float64)
    rng = np.random.default_rng(6)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(6)]
    _, topt = _run_optim(cls, kw, arrays, grads[:3], lib=torch)
    tsd = topt.state_dict()
    sd = {"param_groups": tsd["param_groups"],
          "state": {k: {n: v.numpy() for n, v in st.items()} for k, st in tsd["state"].items()}}
    current = [p.detach().numpy().copy() for g in topt.param_groups for p in g["params"]]
    ps = [engine.tensor(a.copy(), requires_grad=True) for a in current]
    opt = getattr(optim, cls)([{"params": ps[:2]}, {"params": ps[2:]}], lr=kw["lr"])
    opt.load_state_dict(sd)
    for gs in grads[3:]:
        for p, g in zip(ps, gs):
            p.grad = engine.tensor(g.copy())
        opt.step()
    want, _ = _run_optim(cls, kw, arrays, grads, lib=torch)
    for p, w in zip(ps, want):
        np.testing.assert_allclose(p.data, w, rtol=1e-10, atol=1e-12)


def test_adagrad_hand_computed():
    p = engine.tensor(np.array([1.0, 2.0]), requires_grad=True)
    opt = optim.Adagrad([p], lr=0.5, lr_decay=1.0, initial_accumulator_value=1.0, eps=0.0)
    for _ in range(2):
        p.grad = engine.tensor(np.array([1.0, -2.0]))
        opt.step()
    # step 1: sum = 1 + g^2, p -= 0.5 * g / sqrt(sum); step 2: lr / (1 + 1 * lr_decay), sum += g^2
    p1 = np.array([1 - 0.5 / math.sqrt(2), 2 + 0.5 * 2 / math.sqrt(5)])
    want = p1 - 0.25 * np.array([1.0, -2.0]) / np.sqrt([3.0, 9.0])
    np.testing.assert_allclose(p.data, want)


def test_adamax_hand_computed():
    p = engine.tensor(np.array([1.0]), requires_grad=True)
    opt = optim.Adamax([p], lr=0.1, betas=(0.5, 0.5), eps=0.0)
    p.grad = engine.tensor(np.array([2.0]))
    opt.step()                     # m = 1, u = 2, p -= 0.1 / (1 - 0.5) * 1 / 2
    np.testing.assert_allclose(p.data, [0.9])


def test_nadam_radam_first_step_hand_computed():
    p = engine.tensor(np.array([1.0]), requires_grad=True)
    opt = optim.NAdam([p], lr=0.1, eps=0.0)
    p.grad = engine.tensor(np.array([2.0]))
    opt.step()
    mu1, mu2 = (0.9 * (1 - 0.5 * 0.96 ** (t * 0.004)) for t in (1, 2))
    m, d = 0.1 * 2.0, math.sqrt(0.001 * 4.0 / 0.001)           # d = sqrt(v / (1 - beta2))
    want = 1.0 - 0.1 * (1 - mu1) / (1 - mu1) * 2.0 / d - 0.1 * mu2 / (1 - mu1 * mu2) * m / d
    np.testing.assert_allclose(p.data, [want], rtol=1e-6)
    q = engine.tensor(np.array([1.0]), requires_grad=True)
    opt = optim.RAdam([q], lr=0.1)
    q.grad = engine.tensor(np.array([2.0]))
    opt.step()                     # rho_1 = 1 <= 5: plain bias-corrected momentum, p -= lr * g
    np.testing.assert_allclose(q.data, [0.8])


def test_add_param_group_and_schedulers():
    """torch's add_param_group: the new group takes the defaults; OneCycleLR / LambdaLR see it."""
    a = engine.tensor(np.ones(2, np.float32), requires_grad=True)
    b = engine.tensor(np.ones(3, np.float32), requires_grad=True)
    opt = optim.Adagrad([a], lr=0.1)
    opt.add_param_group({"params": [b], "lr": 0.3})
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.3]
    assert opt.param_groups[1]["lr_decay"] == 0.0
    s = sched.LambdaLR(opt, lambda e: 0.5 ** e)
    s.step()
    assert s.get_last_lr() == pytest.approx([0.05, 0.15])
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [a]})


def test_invalid_optimizer_arguments():
    p = [engine.tensor(np.ones(2, np.float32), requires_grad=True)]
    with pytest.raises(ValueError, match="lr_decay"):
        optim.Adagrad(p, lr_decay=-1)
    with pytest.raises(ValueError, match="betas"):
        optim.Adamax(p, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="momentum_decay"):
        optim.NAdam(p, momentum_decay=-0.1)
    with pytest.raises(ValueError, match="epsilon"):
        optim.RAdam(p, eps=-1.0)
