"""Cross-checks against PyTorch: the same weights (loaded through load_state_dict from a torch
state_dict converted to numpy) must give the same outputs, input gradients and parameter
gradients (float32, rtol 1e-4), and the same architecture must produce the same state_dict
keys and shapes.  Also train/eval behaviour: BatchNorm running statistics, dropout."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
tn = torch.nn

import engine  # noqa: E402
import engine.nn as nn  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5

# torch's own note about padding='same' with an even kernel is not about us
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def to_numpy_sd(module):
    return {k: v.detach().cpu().numpy().copy() for k, v in module.state_dict().items()}


def compare(tmod, emod, x, *extra, train=True, seed=1, atol=ATOL):
    """Load torch's weights into ours, run both, compare outputs and all gradients."""
    emod.load_state_dict(to_numpy_sd(tmod))
    tmod.train(train)
    emod.train(train)
    is_float = x.dtype.kind == "f"
    xt = torch.tensor(x, requires_grad=is_float)
    xe = engine.tensor(x, requires_grad=is_float)
    ot = tmod(xt, *extra)
    oe = emod(xe, *[engine.tensor(e.detach().numpy()) if isinstance(e, torch.Tensor) else
                    tuple(engine.tensor(a.detach().numpy()) for a in e) if isinstance(e, tuple) else e
                    for e in extra])
    flat_t, flat_e = _flatten(ot), _flatten(oe)
    assert len(flat_t) == len(flat_e)
    loss_t, loss_e = 0, 0
    rng = np.random.default_rng(seed)
    for a, b in zip(flat_t, flat_e):
        assert tuple(a.shape) == b.shape
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=RTOL, atol=atol)
        g = rng.standard_normal(tuple(a.shape)).astype(np.float32)
        loss_t = loss_t + (a * torch.tensor(g)).sum()
        loss_e = loss_e + (b * engine.tensor(g)).sum()
    loss_t.backward()
    loss_e.backward()
    if is_float:
        np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=RTOL, atol=atol)
    ours = dict(emod.named_parameters())
    for name, p in tmod.named_parameters():
        assert ours[name].grad is not None, name
        np.testing.assert_allclose(ours[name].grad.numpy(), p.grad.numpy(), rtol=RTOL, atol=atol, err_msg=name)
    for name, b in tmod.named_buffers():
        np.testing.assert_allclose(dict(emod.named_buffers())[name].numpy(), b.numpy(), rtol=RTOL, atol=atol,
                                   err_msg=name)


def _flatten(out):
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    return [out]


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def pair(name, *args, **kwargs):
    torch.manual_seed(0)
    return getattr(tn, name)(*args, **kwargs), getattr(nn, name)(*args, **kwargs)


@pytest.mark.parametrize("args,kwargs", [
    ((3, 6, 3), {}),
    ((3, 6, 3), dict(stride=2, padding=1, dilation=2, groups=3)),
    ((3, 4, (2, 4)), dict(padding="same", bias=False)),
    ((3, 5, 1), {}),
    ((3, 4, (3, 2)), dict(stride=(1, 2), padding=(2, 0))),
])
def test_conv2d(args, kwargs):
    compare(*pair("Conv2d", *args, **kwargs), rnd(4, 3, 9, 8))


@pytest.mark.parametrize("name,args,kwargs", [
    ("MaxPool2d", (2,), {}),
    ("MaxPool2d", (2,), dict(ceil_mode=True)),
    ("MaxPool2d", (3, 2, 1), dict(ceil_mode=True)),
    ("MaxPool2d", (2, 1), dict(dilation=2)),
    ("AvgPool2d", (2,), {}),
    ("AvgPool2d", (3, 2, 1), dict(ceil_mode=True, count_include_pad=False)),
    ("AvgPool2d", (3, 2, 1), dict(ceil_mode=True)),
    ("AvgPool2d", (2, 1), dict(divisor_override=3)),
])
def test_pooling(name, args, kwargs):
    compare(*pair(name, *args, **kwargs), rnd(2, 3, 9, 7))


def test_max_pool_ties_route_gradient_like_torch():
    # after a ReLU most 2x2 windows are all-zero ties; torch sends the gradient to the first one
    x = np.maximum(rnd(2, 3, 6, 6), 0)
    x[0, 0, :2, :2] = 1.0
    compare(*pair("MaxPool2d", 2), x)
    compare(*pair("MaxPool2d", 3, 1, 1), x)


def test_max_pool_return_indices():
    x = rnd(2, 3, 7, 7)
    for kwargs in (dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1)):
        _, it = tn.MaxPool2d(return_indices=True, **kwargs)(torch.tensor(x))
        _, ie = nn.MaxPool2d(return_indices=True, **kwargs)(engine.tensor(x))
        np.testing.assert_array_equal(ie.numpy(), it.numpy())


@pytest.mark.parametrize("name,args,kwargs,shape", [
    ("Linear", (9, 5), {}, (4, 9)),
    ("Linear", (9, 5), dict(bias=False), (2, 3, 9)),
    ("ReLU", (), {}, (4, 9)),
    ("LeakyReLU", (0.2,), {}, (4, 9)),
    ("Tanh", (), {}, (4, 9)),
    ("Sigmoid", (), {}, (4, 9)),
    ("GELU", (), {}, (4, 9)),
    ("GELU", (), dict(approximate="tanh"), (4, 9)),
    ("Softmax", (), dict(dim=1), (2, 4, 3)),
    ("LogSoftmax", (), dict(dim=-1), (4, 9)),
    ("Flatten", (), {}, (2, 3, 4, 5)),
    ("Identity", (), {}, (2, 3)),
    ("LayerNorm", ((4, 5),), {}, (2, 3, 4, 5)),
    ("LayerNorm", (5,), dict(elementwise_affine=False), (3, 5)),
])
def test_dense_layers(name, args, kwargs, shape):
    compare(*pair(name, *args, **kwargs), rnd(*shape))


def test_batchnorm_train_and_eval_running_stats():
    for name, shape in (("BatchNorm2d", (6, 3, 4, 5)), ("BatchNorm1d", (8, 3)), ("BatchNorm1d", (4, 3, 5))):
        t, e = pair(name, 3)
        for step in range(3):                      # running stats and num_batches_tracked follow torch
            compare(t, e, rnd(*shape, seed=step), train=True)
            assert int(e.num_batches_tracked.item()) == int(t.num_batches_tracked.item())
        compare(t, e, rnd(*shape, seed=9), train=False)
    t, e = pair("BatchNorm1d", 3, momentum=None)   # cumulative average
    for step in range(3):
        compare(t, e, rnd(5, 3, seed=step), train=True)
    t, e = pair("BatchNorm2d", 3, affine=False, track_running_stats=False)
    compare(t, e, rnd(4, 3, 2, 2), train=False)     # no running stats: batch statistics in eval too


def test_embedding():
    t, e = pair("Embedding", 10, 4, padding_idx=2)
    compare(t, e, np.random.default_rng(0).integers(0, 10, (3, 7)))
    t, e = pair("Embedding", 10, 4, scale_grad_by_freq=True)
    compare(t, e, np.array([[1, 1, 3], [3, 3, 9]]))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
@pytest.mark.parametrize("kwargs", [
    dict(num_layers=2),
    dict(num_layers=2, batch_first=True),
    dict(num_layers=1, bias=False),
    dict(num_layers=2, bidirectional=True),
])
def test_recurrent(name, kwargs):
    t, e = pair(name, 3, 6, **kwargs)
    compare(t, e, rnd(5, 4, 3))


@pytest.mark.parametrize("name", ["LSTM", "GRU", "RNN"])
def test_recurrent_initial_state_and_unbatched(name):
    kwargs = dict(nonlinearity="relu") if name == "RNN" else {}
    t, e = pair(name, 3, 6, num_layers=2, **kwargs)
    h0 = torch.tensor(rnd(2, 4, 6, seed=3) * 0.5)
    state = (h0, torch.tensor(rnd(2, 4, 6, seed=4))) if name == "LSTM" else h0
    compare(t, e, rnd(5, 4, 3), state)
    compare(t, e, rnd(5, 3, seed=2))               # unbatched (L, H_in)


def test_recurrent_dropout_between_layers_is_train_only():
    e = nn.LSTM(3, 5, num_layers=2, dropout=0.5)
    x = engine.tensor(rnd(4, 2, 3))
    e.eval()
    a, b = e(x)[0].numpy(), e(x)[0].numpy()
    np.testing.assert_array_equal(a, b)
    e.train()
    engine.manual_seed(1)
    c = e(x)[0].numpy()
    engine.manual_seed(2)
    d = e(x)[0].numpy()
    assert not np.allclose(c, d) and not np.allclose(c, a)


@pytest.mark.parametrize("kwargs", [
    {}, dict(reduction="sum"), dict(reduction="none"), dict(label_smoothing=0.1), dict(ignore_index=1),
    dict(weight=[1.0, 2.0, 0.5, 1.0, 3.0], label_smoothing=0.2, ignore_index=0),
])
def test_cross_entropy_loss(kwargs):
    w = kwargs.pop("weight", None)
    t = tn.CrossEntropyLoss(weight=torch.tensor(w) if w is not None else None, **kwargs)
    e = nn.CrossEntropyLoss(weight=engine.tensor(w) if w is not None else None, **kwargs)
    for shape, tshape in (((6, 5), (6,)), ((3, 5, 4), (3, 4))):
        x = rnd(*shape)
        y = np.random.default_rng(1).integers(0, 5, tshape)
        xt, xe = torch.tensor(x, requires_grad=True), engine.tensor(x, requires_grad=True)
        lt, le = t(xt, torch.tensor(y)), e(xe, engine.tensor(y))
        np.testing.assert_allclose(le.numpy(), lt.detach().numpy(), rtol=RTOL, atol=ATOL)
        g = rnd(*lt.shape, seed=5)
        (lt * torch.tensor(g)).sum().backward()
        (le * engine.tensor(g)).sum().backward()
        np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=RTOL, atol=ATOL)


def test_cross_entropy_probability_targets():
    x, p = rnd(4, 3), np.random.default_rng(2).random((4, 3)).astype(np.float32)
    p /= p.sum(1, keepdims=True)
    xt, xe = torch.tensor(x, requires_grad=True), engine.tensor(x, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(p), label_smoothing=0.1)
    le = nn.functional.cross_entropy(xe, engine.tensor(p), label_smoothing=0.1)
    np.testing.assert_allclose(le.numpy(), lt.detach().numpy(), rtol=RTOL)
    lt.backward(), le.backward()
    np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("name,kwargs", [("MSELoss", {}), ("MSELoss", dict(reduction="none")),
                                         ("L1Loss", dict(reduction="sum")), ("NLLLoss", dict(ignore_index=2))])
def test_other_losses(name, kwargs):
    t, e = getattr(tn, name)(**kwargs), getattr(nn, name)(**kwargs)
    x = rnd(5, 4)
    y = np.random.default_rng(1).integers(0, 4, 5) if name == "NLLLoss" else rnd(5, 4, seed=3)
    xt, xe = torch.tensor(x, requires_grad=True), engine.tensor(x, requires_grad=True)
    lt, le = t(xt, torch.tensor(y)), e(xe, engine.tensor(y))
    np.testing.assert_allclose(le.numpy(), lt.detach().numpy(), rtol=RTOL, atol=ATOL)
    lt.sum().backward(), le.sum().backward()
    np.testing.assert_allclose(xe.grad.numpy(), xt.grad.numpy(), rtol=RTOL, atol=ATOL)


ARCHS = {
    "seed_cnn": lambda m: m.Sequential(m.Conv2d(1, 32, 3), m.ReLU(), m.MaxPool2d(2), m.Flatten(),
                                       m.Linear(5408, 128), m.ReLU(), m.Linear(128, 10)),
    "convnet": lambda m: m.Sequential(m.Conv2d(3, 8, 3, padding=1), m.BatchNorm2d(8), m.ReLU(),
                                      m.AvgPool2d(2), m.Conv2d(8, 4, 3, groups=4, bias=False), m.Flatten(),
                                      m.Dropout(0.3), m.LayerNorm(4 * 2 * 2), m.Linear(16, 3)),
    "rnns": lambda m: m.ModuleList([m.LSTM(28, 16, num_layers=2, batch_first=True), m.GRU(4, 5, bidirectional=True),
                                    m.RNN(3, 2, bias=False), m.Embedding(7, 3), m.BatchNorm1d(4)]),
}


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_state_dict_keys_and_shapes_match_torch(arch):
    ours, theirs = ARCHS[arch](nn).state_dict(), ARCHS[arch](tn).state_dict()
    assert list(ours) == list(theirs)
    for k in theirs:
        assert ours[k].shape == tuple(theirs[k].shape), k
        assert ours[k].dtype == theirs[k].numpy().dtype, k


class TorchSeedLSTM(tn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = tn.LSTM(28, 32, batch_first=True)
        self.fc = tn.Linear(32, 10)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


class SeedLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(28, 32, batch_first=True)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1])


def test_torch_state_dict_loads_and_predicts_the_same():
    torch.manual_seed(0)
    for tmodel, emodel, x in ((ARCHS["seed_cnn"](tn), ARCHS["seed_cnn"](nn), rnd(8, 1, 28, 28)),
                              (ARCHS["convnet"](tn), ARCHS["convnet"](nn), rnd(4, 3, 8, 8)),
                              (TorchSeedLSTM(), SeedLSTM(), rnd(8, 28, 28))):
        tmodel.eval()
        emodel.load_state_dict(to_numpy_sd(tmodel))
        emodel.eval()
        with torch.no_grad():
            ref = tmodel(torch.tensor(x)).numpy()
        with engine.no_grad():
            got = emodel(engine.tensor(x)).numpy()
        np.testing.assert_allclose(got, ref, rtol=RTOL, atol=ATOL)
        np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))
    # torch tensors themselves are accepted by load_state_dict too
    emodel.load_state_dict(tmodel.state_dict())


def test_seed_cnn_training_steps_follow_torch():
    """Three SGD steps on identical weights stay together (the whole forward/backward chain)."""
    torch.manual_seed(0)
    tm, em = ARCHS["seed_cnn"](tn), ARCHS["seed_cnn"](nn)
    em.load_state_dict(to_numpy_sd(tm))
    x, y = rnd(16, 1, 28, 28), np.random.default_rng(0).integers(0, 10, 16)
    for _ in range(3):
        for model, lib, mk in ((tm, torch, torch.tensor), (em, engine, engine.tensor)):
            model.zero_grad()
            loss = (tn.CrossEntropyLoss() if lib is torch else nn.CrossEntropyLoss())(model(mk(x)), mk(y))
            loss.backward()
            for p in model.parameters():
                p.data -= 0.1 * p.grad.data
    for k, v in tm.state_dict().items():
        np.testing.assert_allclose(em.state_dict()[k].numpy(), v.numpy(), rtol=1e-3, atol=1e-5, err_msg=k)


@pytest.mark.parametrize("conv_kwargs,shape", [
    (dict(in_channels=1, out_channels=8, kernel_size=3), (4, 1, 12, 12)),
    (dict(in_channels=3, out_channels=4, kernel_size=3, stride=2, padding=1), (2, 3, 9, 11)),
    (dict(in_channels=3, out_channels=5, kernel_size=(2, 3), padding="same", dilation=2, bias=False), (3, 3, 7, 8)),
])
def test_fused_conv_relu_pool_sequential_matches_torch(conv_kwargs, shape):
    """nn.Sequential runs Conv2d -> ReLU -> MaxPool2d(2) as one fused op; a second conv block
    after it makes the fused op produce an input gradient too."""
    c2 = dict(in_channels=conv_kwargs["out_channels"], out_channels=2, kernel_size=1)
    torch.manual_seed(0)
    t = tn.Sequential(tn.Conv2d(**conv_kwargs), tn.ReLU(), tn.MaxPool2d(2), tn.Conv2d(**c2), tn.ReLU(),
                      tn.MaxPool2d(2, ceil_mode=True), tn.Flatten())
    e = nn.Sequential(nn.Conv2d(**conv_kwargs), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(**c2), nn.ReLU(),
                      nn.MaxPool2d(2, ceil_mode=True), nn.Flatten())
    compare(t, e, np.maximum(rnd(*shape), -0.2))


def test_fused_path_is_taken_and_hooks_disable_it():
    from engine.nn import functional as F
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2))
    x = engine.tensor(rnd(2, 1, 8, 8))
    fused = seq(x)
    y = seq(engine.tensor(rnd(2, 1, 8, 8), requires_grad=True))
    assert y._op == "conv2d_relu_max_pool2d"
    seen = []
    seq[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    z = seq(engine.tensor(rnd(2, 1, 8, 8), requires_grad=True))
    assert seen == [(2, 2, 6, 6)] and z._op == "max_pool2d"       # hook observed the ReLU output
    np.testing.assert_allclose(z.numpy(), y.numpy(), rtol=1e-6)
    unfused = F.max_pool2d(F.relu(F.conv2d(x, seq[0].weight, seq[0].bias)), 2)
    np.testing.assert_allclose(fused.numpy(), unfused.numpy(), rtol=1e-6)
