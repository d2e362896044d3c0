"""Canonical PyTorch programs ported by changing their imports: what pytorch/examples' mnist and
word_language_model, the "Training a Classifier" tutorial and the DDP tutorial call that was
missing or different (Adadelta, torch.backends / torch.accelerator / torch.utils.data,
Tensor.type / narrow / t / __index__, `p.data.add_(...)`, nn.Transformer, torch.save to a file
object, flatten_parameters, torch.max(outputs.data, 1), silent log(0)).

Each test runs without torch; where torch is installed the numbers are checked against it too.
"""
import io
import math
import warnings

import numpy as np
import pytest

import engine as torch
from engine import nn, optim


# ---------------------------------------------------------------- Adadelta (mnist/main.py)
def _adadelta_reference(p, grads, lr=1.0, rho=0.9, eps=1e-6, wd=0.0):
    """torch's documented Adadelta update, written out in float64."""
    p = p.astype(np.float64).copy()
    v, u = np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g + wd * p
        v = rho * v + (1 - rho) * g * g
        delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        p = p - lr * delta
    return p


@pytest.mark.parametrize("kw", [{}, {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.1}])
def test_adadelta_follows_the_documented_update(kw):
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    p = torch.tensor(start.copy(), requires_grad=True)
    opt = optim.Adadelta([p], **kw)
    assert opt.defaults == {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0, **kw}
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    ref = _adadelta_reference(start, grads, **{"wd" if k == "weight_decay" else k: v for k, v in kw.items()})
    np.testing.assert_allclose(p.data, ref, rtol=1e-12)
    assert set(opt.state_dict()["state"][0]) == {"step", "square_avg", "acc_delta"}
    with pytest.raises(ValueError, match="rho"):
        optim.Adadelta([p], rho=1.5)


def test_adadelta_with_steplr_matches_torch():
    t = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (3,)]]
    grads = [[rng.standard_normal(a.shape).astype(np.float32) for a in arrays] for _ in range(6)]
    ours = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [t.tensor(a.copy(), requires_grad=True) for a in arrays]
    opt, topt = optim.Adadelta(ours, lr=1.0), t.optim.Adadelta(theirs, lr=1.0)
    s, ts = optim.lr_scheduler.StepLR(opt, 1, gamma=0.7), t.optim.lr_scheduler.StepLR(topt, 1, gamma=0.7)
    for gs in grads:
        for p, q, g in zip(ours, theirs, gs):
            p.grad, q.grad = torch.tensor(g.copy()), t.tensor(g.copy())
        opt.step(), topt.step(), s.step(), ts.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert set(opt.state_dict()["state"][0]) == set(topt.state_dict()["state"][0])


# ---------------------------------------------------------------- device selection, torch.utils.data
def test_backends_accelerator_and_utils_data():
    assert torch.backends.mps.is_available() is False and torch.backends.mps.is_built() is False
    torch.backends.cudnn.benchmark = True          # accepted, changes nothing
    torch.backends.cudnn.deterministic = True
    assert torch.accelerator.is_available() == torch.cuda.is_available()
    if not torch.accelerator.is_available():
        assert torch.accelerator.current_accelerator() is None
    import engine.utils.data
    from engine.utils.data import DataLoader, Subset, TensorDataset
    assert torch.utils.data is engine.utils.data is torch.data
    ds = Subset(TensorDataset(torch.arange(10)), range(4))
    assert [int(b[0].sum()) for b in torch.utils.data.DataLoader(ds, batch_size=2)] == [1, 5]
    assert DataLoader is torch.data.DataLoader
