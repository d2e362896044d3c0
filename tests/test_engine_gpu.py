"""The engine on a GPU against the same code on numpy: every op, layer, loss and optimizer step, on
fresh random float32 inputs, forward values and every gradient (needs cupy and a CUDA device).

Tolerances (float32, issue 6): elementwise rel <= 1e-5, reductions and matmuls rel <= 1e-4, each
with an absolute floor of the same size times the data's scale (near 0 a relative error says
nothing).  The layers run their numpy path on the CPU and their cupy path (custom kernels
included) on the GPU from identical weights.  `DPTRAIN_TEST_DEVICE=cpu` runs the whole file
against the CPU itself, which is how the harness is checked on machines without a GPU.
"""
import os

import numpy as np
import pytest

import engine
import engine.nn as nn
import engine.nn.functional as F
from engine import backend, optim
from rnn_cases import WithState

DEVICE = os.environ.get("DPTRAIN_TEST_DEVICE", "cuda:0")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE != "cpu" and not backend.gpu_available(),
                                 reason="needs cupy and a CUDA device")]
ELEM, RED = 1e-5, 1e-4


def host(a):
    a = getattr(a, "data", a)
    return a.get() if hasattr(a, "get") else np.asarray(a)


def close(got, ref, rel):
    got, ref = host(got), host(ref)
    scale = float(np.max(np.abs(ref))) if ref.size else 1.0
    np.testing.assert_allclose(got, ref, rtol=rel, atol=rel * max(scale, 1e-30))


def fresh(*shape, positive=False):
    r = np.random.default_rng().standard_normal(shape).astype(np.float32)   # fresh every run
    return np.abs(r) + 0.1 if positive else r


def run(fn, arrays, device):
    ts = [engine.tensor(a, requires_grad=a.dtype.kind == "f", device=device) for a in arrays]
    out = fn(*ts)
    weights = engine.tensor(np.linspace(-1, 1, out.size, dtype=np.float32).reshape(out.shape), device=device)
    (out * weights).sum().backward()        # every output element gets its own gradient
    return host(out), [None if t.grad is None else host(t.grad) for t in ts]


OPS = [  # name, fn, input shapes (or arrays), tolerance
    ("add broadcast", lambda a, b: a + b, [(3, 4), (4,)], ELEM),
    ("sub", lambda a, b: a - b, [(2, 3, 1), (1, 3, 4)], ELEM),
    ("mul", lambda a, b: a * b, [(3, 4), (3, 1)], ELEM),
    ("div", lambda a, b: a / b, [(3, 4), ("pos", 3, 4)], ELEM),
    ("pow", lambda a: a ** 3, [(3, 4)], ELEM),
    ("exp log", lambda a: (a.exp() + 1).log(), [(3, 4)], ELEM),
    ("sqrt", lambda a: a.sqrt(), [("pos", 5, 3)], ELEM),
    ("tanh sigmoid relu", lambda a: a.tanh() + a.sigmoid() * a.relu(), [(4, 5)], ELEM),
    ("abs neg clip", lambda a: (-a).abs() + a.clip(-0.5, 0.5), [(4, 5)], ELEM),
    ("matmul", lambda a, b: a @ b, [(16, 32), (32, 8)], RED),
    ("batched matmul", lambda a, b: a @ b, [(3, 16, 32), (32, 8)], RED),
    ("sum mean", lambda a: a.sum(axis=1) + a.mean(axis=1), [(8, 64)], RED),
    ("max min", lambda a: a.max(axis=0) - a.min(axis=0), [(6, 5)], RED),
    ("var", lambda a: a.var(axis=1), [(4, 50)], RED),
    ("reshape transpose", lambda a: a.reshape(4, 6).transpose().flatten(), [(2, 3, 4)], ELEM),
    ("getitem slices", lambda a: a[1:, ::2], [(4, 6)], ELEM),
    ("getitem repeated index", lambda a: a[np.array([0, 2, 0, 1])], [(3, 5)], ELEM),
    ("getitem mask", lambda a: a[np.array([True, False, True])], [(3, 2)], ELEM),
    ("concat stack", lambda a, b: engine.concat([a, b], axis=1).sum(axis=1) + engine.stack([a, b]).mean(axis=0).sum(axis=1),
     [(3, 4), (3, 4)], RED),
    ("where maximum", lambda a, b: engine.where(a > b, a, b) + engine.maximum(a, b), [(3, 4), (3, 4)], ELEM),
    ("unsqueeze squeeze", lambda a: a.unsqueeze(1).squeeze(1) * 2, [(3, 4)], ELEM),
]


@pytest.mark.parametrize("name,fn,specs,rel", OPS, ids=[o[0] for o in OPS])
def test_ops_match_numpy(name, fn, specs, rel):
    arrays = [fresh(*s[1:], positive=True) if s and s[0] == "pos" else fresh(*s) for s in specs]
    out, grads = run(fn, arrays, "cpu")
    gout, ggrads = run(fn, arrays, DEVICE)
    close(gout, out, rel)
    for g, gg in zip(grads, ggrads):
        close(gg, g, RED)                   # gradients sum over broadcast axes: reductions


def _module_pair(build):
    engine.manual_seed(0)
    ref = build()
    engine.manual_seed(0)
    dev = build()
    dev.load_state_dict({k: host(v) for k, v in ref.state_dict().items()})
    return ref, dev.to(DEVICE)


LAYERS = [  # name, builder, input shape or (array maker), tolerance
    ("Linear", lambda: nn.Linear(64, 32), (16, 64)),
    ("Conv2d", lambda: nn.Conv2d(3, 8, 3), (4, 3, 12, 12)),
    ("Conv2d stride pad dil groups", lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2), (2, 4, 13, 11)),
    ("Conv1d", lambda: nn.Conv1d(3, 5, 4, padding=1), (2, 3, 20)),
    ("seed CNN block", lambda: nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                             nn.Linear(5408, 128), nn.ReLU(), nn.Linear(128, 10)), (8, 1, 28, 28)),
    ("MaxPool2d", lambda: nn.MaxPool2d(3, stride=2, padding=1), (2, 3, 9, 9)),
    ("AvgPool2d", lambda: nn.AvgPool2d(2), (2, 3, 8, 8)),
    ("AdaptiveAvgPool2d", lambda: nn.AdaptiveAvgPool2d((3, 2)), (2, 3, 7, 5)),
    ("BatchNorm2d", lambda: nn.BatchNorm2d(4), (8, 4, 5, 5)),
    ("BatchNorm1d", lambda: nn.BatchNorm1d(6), (16, 6)),
    ("LayerNorm", lambda: nn.LayerNorm(10), (4, 7, 10)),
    ("GroupNorm", lambda: nn.GroupNorm(2, 6), (3, 6, 4, 4)),
    ("GELU SiLU ELU Softplus", lambda: nn.Sequential(nn.GELU(), nn.SiLU(), nn.ELU(), nn.Softplus()), (5, 9)),
    ("Softmax LogSoftmax", lambda: nn.Sequential(nn.Softmax(dim=1), nn.LogSoftmax(dim=1)), (5, 9)),
    ("LSTM", lambda: nn.LSTM(28, 64, num_layers=2, batch_first=True), (4, 28, 28)),
    ("GRU bidirectional", lambda: nn.GRU(8, 16, batch_first=True, bidirectional=True), (3, 6, 8)),
    ("RNN", lambda: nn.RNN(8, 16), (6, 3, 8)),
    # the recurrent layers' fused GPU path (engine.kernels.rnn_step): no bias, reverse direction, given states
    ("LSTM no bias bidirectional", lambda: nn.LSTM(8, 16, bias=False, bidirectional=True), (6, 3, 8)),
    ("LSTM with state", lambda: WithState(nn.LSTM(8, 16, batch_first=True)), (3, 6, 8)),
    ("seed LSTM", lambda: nn.LSTM(28, 128, batch_first=True), (16, 28, 28)),
    ("GRU no bias with state", lambda: WithState(nn.GRU(8, 16, bias=False)), (6, 3, 8)),
    ("RNN relu with state", lambda: WithState(nn.RNN(8, 16, nonlinearity="relu", batch_first=True)), (3, 6, 8)),
    ("MultiheadAttention", lambda: _SelfAttention(), (2, 5, 16)),
    ("TransformerEncoderLayer", lambda: nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0,
                                                                    batch_first=True), (2, 5, 16)),
]


class _SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x):
        return self.attn(x, x, x)[0]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("name,build,shape", LAYERS, ids=[layer[0] for layer in LAYERS])
def test_layers_match_numpy(name, build, shape):
    ref, dev = _module_pair(build)
    x = fresh(*shape)
    results = []
    for module, device in ((ref, "cpu"), (dev, DEVICE)):
        out, (gx,) = run(lambda t: _first(module(t)), [x], device)
        grads = {n: host(p.grad) for n, p in module.named_parameters()}
        results.append((out, gx, grads, {n: host(b) for n, b in module.named_buffers()}))
    (out, gx, grads, bufs), (gout, ggx, ggrads, gbufs) = results
    close(gout, out, RED)
    close(ggx, gx, RED)
    assert grads.keys() == ggrads.keys()
    for n in grads:
        close(ggrads[n], grads[n], RED)
    for n in bufs:                          # BatchNorm running statistics
        close(gbufs[n], bufs[n], RED)


def _labels(n, c):
    return np.random.default_rng().integers(0, c, n)


LOSSES = [
    ("cross_entropy", lambda x, y: F.cross_entropy(x, y, label_smoothing=0.1), lambda: [fresh(32, 10), _labels(32, 10)]),
    ("cross_entropy weights ignore", lambda x, y: F.cross_entropy(x, y, weight=engine.tensor(np.arange(1, 6, dtype=np.float32), device=x.device), ignore_index=2),
     lambda: [fresh(16, 5), _labels(16, 5)]),
    ("nll_loss", lambda x, y: F.nll_loss(F.log_softmax(x, dim=1), y), lambda: [fresh(16, 7), _labels(16, 7)]),
    ("mse l1 smooth_l1", lambda a, b: F.mse_loss(a, b) + F.l1_loss(a, b) + F.smooth_l1_loss(a, b, beta=0.5),
     lambda: [fresh(8, 5), fresh(8, 5)]),
    ("bce_with_logits", lambda x, t: F.binary_cross_entropy_with_logits(x, t), lambda: [fresh(8, 5) * 5,
                                                                                      (fresh(8, 5) > 0).astype(np.float32)]),
    ("kl_div", lambda x, t: F.kl_div(F.log_softmax(x, dim=1), t, reduction="batchmean"),
     lambda: [fresh(8, 5), np.full((8, 5), 0.2, np.float32)]),
]


@pytest.mark.parametrize("name,fn,make", LOSSES, ids=[loss[0] for loss in LOSSES])
def test_losses_match_numpy(name, fn, make):
    arrays = make()
    out, grads = run(fn, arrays, "cpu")
    gout, ggrads = run(fn, arrays, DEVICE)
    close(gout, out, RED)
    close(ggrads[0], grads[0], RED)


@pytest.mark.parametrize("make", [
    lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4),
    lambda ps: optim.Adam(ps, lr=1e-2),
    lambda ps: optim.AdamW(ps, lr=1e-2, weight_decay=0.1),
    lambda ps: optim.RMSprop(ps, lr=1e-2, momentum=0.5),
], ids=["sgd", "adam", "adamw", "rmsprop"])
def test_optimizer_steps_match_numpy(make):
    """On the GPU, SGD and Adam/AdamW run the fused multi-tensor kernels; on the CPU the numpy path."""
    ref, dev = _module_pair(lambda: nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 3)))
    x, y = fresh(64, 20), _labels(64, 3)
    for module in (ref, dev):
        device = "cpu" if module is ref else DEVICE
        opt = make(list(module.parameters()))
        for _ in range(5):
            opt.zero_grad()
            F.cross_entropy(module(engine.tensor(x, device=device)), engine.tensor(y, device=device)).backward()
            opt.step()
    for (n, p), (_, q) in zip(ref.named_parameters(), dev.named_parameters()):
        close(q, p, RED)


def test_seed_cnn_trains_on_the_gpu_as_on_the_cpu():
    """The seed CNN, one epoch of the embedded Fashion-MNIST subset from the same initial weights and
    batches: test accuracy on both devices within one point (float32 sums differ in order only)."""
    from engine.data import DataLoader, datasets
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = datasets.FashionMNIST(root=None, train=True, download=False)
        test = datasets.FashionMNIST(root=None, train=False, download=False)
    accs = []
    for device in ("cpu", DEVICE):
        engine.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(5408, 128), nn.ReLU(), nn.Linear(128, 10)).to(device)
        opt = optim.Adam(model.parameters(), lr=1e-3)
        for xb, yb in DataLoader(train, batch_size=64, shuffle=True, seed=0, device=device):
            opt.zero_grad()
            F.cross_entropy(model(xb), yb).backward()
            opt.step()
        correct = 0
        with engine.no_grad():
            for xb, yb in DataLoader(test, batch_size=500, device=device):
                correct += int((host(model(xb).argmax(axis=1)) == host(yb)).sum())
        accs.append(correct / len(test))
    assert accs[0] > 0.7 and abs(accs[1] - accs[0]) <= 0.01, accs
