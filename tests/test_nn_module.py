"""engine.nn.Module machinery: registration, iteration order, state_dict round trips and their
errors, train/eval, dtype moves, hooks, containers, initialisation statistics, input-shape errors."""
import math

import numpy as np
import pytest

import engine
import engine.nn as nn
from engine.nn import init


def seed_cnn():
    return nn.Sequential(nn.Conv2d(1, 32, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(5408, 128), nn.ReLU(), nn.Linear(128, 10))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
        self.register_buffer("scale", engine.ones(1))
        self.register_buffer("scratch", engine.zeros(2), persistent=False)

    def forward(self, x):
        return self.head(engine.relu(self.bn(self.conv(x)))) * self.scale


def test_parameter_is_a_trainable_tensor():
    p = nn.Parameter(engine.zeros(3))
    assert isinstance(p, engine.Tensor) and p.requires_grad and p.dtype == np.float32
    q = nn.Parameter(np.ones(2, dtype=np.float32), requires_grad=False)
    assert not q.requires_grad
    assert repr(p).startswith("Parameter containing:")
    assert type(p * 2) is engine.Tensor          # ops return plain tensors


def test_registration_and_iteration_order():
    net = Net()
    names = [n for n, _ in net.named_parameters()]
    assert names == ["conv.weight", "conv.bias", "bn.weight", "bn.bias", "head.1.weight", "head.1.bias"]
    assert [n for n, _ in net.named_buffers()] == [
        "scale", "scratch", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked"]
    assert len(list(net.parameters())) == 6 and len(list(net.buffers())) == 5
    assert [type(m).__name__ for m in net.children()] == ["Conv2d", "BatchNorm2d", "Sequential"]
    assert [n for n, _ in net.named_modules()] == ["", "conv", "bn", "head", "head.0", "head.1"]
    assert net.get_submodule("head.1") is net.head[1]
    assert net.get_parameter("head.1.bias") is net.head[1].bias
    # shared parameters are reported once
    lin = nn.Linear(3, 3)
    shared = nn.Sequential(lin, lin)
    assert len(list(shared.parameters())) == 2
    # re-assigning replaces, deleting unregisters
    net.conv.bias = None
    assert "conv.bias" not in dict(net.named_parameters())
    with pytest.raises(TypeError):
        net.conv.weight = engine.zeros(4, 2, 3, 3)    # a plain Tensor is not a Parameter


def test_state_dict_order_keys_and_persistence():
    net = Net()
    sd = net.state_dict()
    assert list(sd) == ["scale", "conv.weight", "conv.bias", "bn.weight", "bn.bias", "bn.running_mean",
                        "bn.running_var", "bn.num_batches_tracked", "head.1.weight", "head.1.bias"]
    assert "scratch" not in sd                    # non-persistent buffer
    assert sd["bn.num_batches_tracked"].dtype == np.int64 and sd["bn.num_batches_tracked"].shape == ()
    assert not sd["conv.weight"].requires_grad
    assert np.shares_memory(sd["conv.weight"].data, net.conv.weight.data)   # like torch: no copy


def test_load_state_dict_numpy_and_tensors_round_trip():
    a, b = Net(), Net()
    sd = {k: v.numpy().copy() for k, v in a.state_dict().items()}
    sd["bn.running_mean"] = sd["bn.running_mean"] + 1.5
    result = b.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in b.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), sd[k])
    w = b.conv.weight
    b.load_state_dict(a.state_dict())                 # Tensors work too, written in place
    assert b.conv.weight is w
    np.testing.assert_array_equal(w.numpy(), a.conv.weight.numpy())
    x = engine.randn(2, 2, 5, 5, seed=0)
    a.eval(), b.eval()
    np.testing.assert_allclose(a(x).numpy(), b(x).numpy(), rtol=1e-6)


def test_load_state_dict_reports_every_problem():
    net = Net()
    sd = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    del sd["conv.bias"]
    sd["extra.weight"] = np.zeros(3, np.float32)
    sd["head.1.weight"] = np.zeros((3, 99), np.float32)
    with pytest.raises(RuntimeError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    assert "conv.bias" in msg and "missing" in msg
    assert "extra.weight" in msg and "unexpected" in msg
    assert "head.1.weight" in msg and "(3, 100)" in msg and "(3, 99)" in msg
    # strict=False: missing/unexpected tolerated, but a shape mismatch never is
    with pytest.raises(RuntimeError, match="size mismatch"):
        net.load_state_dict(sd, strict=False)
    sd["head.1.weight"] = np.ones((3, 100), np.float32)
    res = net.load_state_dict(sd, strict=False)
    assert res.missing_keys == ["conv.bias"] and res.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(net.head[1].weight.numpy(), 1.0)


def test_train_eval_and_zero_grad():
    net = Net()
    assert net.training and net.bn.training
    net.eval()
    assert not net.training and not net.head[1].training
    net.train()
    assert net.bn.training
    out = net(engine.randn(2, 2, 5, 5, seed=1)).sum()
    out.backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(float(np.abs(p.grad.numpy()).sum()) == 0 for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_dtype_keeps_identity_and_integer_buffers():
    net = Net()
    w = net.conv.weight
    net.double()
    assert net.conv.weight is w and w.dtype == np.float64
    assert net.bn.num_batches_tracked.dtype == np.int64
    assert net(engine.randn(1, 2, 5, 5, dtype="float64", seed=0)).dtype == np.float64
    net.to("float32")
    assert w.dtype == np.float32
    net.to("cpu")
    assert w.device == "cpu"


def test_forward_hooks():
    lin = nn.Linear(2, 2)
    seen = []
    h1 = lin.register_forward_pre_hook(lambda m, args: seen.append(("pre", args[0].shape)))
    h2 = lin.register_forward_hook(lambda m, args, out: out * 0)
    assert float(np.abs(lin(engine.ones(1, 2)).numpy()).sum()) == 0
    assert seen == [("pre", (1, 2))]
    h1.remove(), h2.remove()
    assert float(np.abs(lin(engine.ones(1, 2)).numpy()).sum()) > 0 and len(seen) == 1


def test_containers():
    seq = seed_cnn()
    assert len(seq) == 7 and isinstance(seq[0], nn.Conv2d) and isinstance(seq[-1], nn.Linear)
    sub = seq[3:]
    assert isinstance(sub, nn.Sequential) and len(sub) == 4 and sub[1] is seq[4]
    with pytest.raises(IndexError):
        seq[7]
    assert [type(m).__name__ for m in seq][:3] == ["Conv2d", "ReLU", "MaxPool2d"]
    ml = nn.ModuleList([nn.Linear(2, 2) for _ in range(3)])
    ml.append(nn.ReLU())
    assert len(ml) == 4 and [n for n, _ in ml.named_parameters()][:2] == ["0.weight", "0.bias"]
    md = nn.ModuleDict({"a": nn.Linear(1, 1)})
    assert "a" in md and list(md.state_dict()) == ["a.weight", "a.bias"]


def test_repr_matches_torch():
    torch = pytest.importorskip("torch")
    tn = torch.nn
    pairs = [
        (seed_cnn(), tn.Sequential(tn.Conv2d(1, 32, 3), tn.ReLU(), tn.MaxPool2d(2), tn.Flatten(),
                                   tn.Linear(5408, 128), tn.ReLU(), tn.Linear(128, 10))),
        (nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2, bias=False),
         tn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2, bias=False)),
        (nn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.5),
         tn.LSTM(3, 4, num_layers=2, batch_first=True, dropout=0.5)),
        (nn.GRU(3, 4), tn.GRU(3, 4)), (nn.BatchNorm2d(3), tn.BatchNorm2d(3)),
        (nn.LayerNorm(5), tn.LayerNorm(5)), (nn.Embedding(10, 3, padding_idx=0), tn.Embedding(10, 3, padding_idx=0)),
        (nn.Dropout(0.1), tn.Dropout(0.1)), (nn.AvgPool2d(2), tn.AvgPool2d(2)), (nn.GELU(), tn.GELU()),
        (nn.Softmax(dim=1), tn.Softmax(dim=1)), (nn.CrossEntropyLoss(), tn.CrossEntropyLoss()),
        (nn.ModuleList([nn.ReLU()]), tn.ModuleList([tn.ReLU()])),
    ]
    for ours, theirs in pairs:
        assert repr(ours) == repr(theirs)


def test_initialisation_follows_torch_bounds_and_seed():
    engine.manual_seed(123)
    a = nn.Linear(400, 50)
    engine.manual_seed(123)
    b = nn.Linear(400, 50)
    np.testing.assert_array_equal(a.weight.numpy(), b.weight.numpy())   # seedable
    bound = 1 / math.sqrt(400)
    w = a.weight.numpy()
    assert w.dtype == np.float32 and np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound           # uniform(-b, b)
    conv = nn.Conv2d(8, 16, 3)
    cb = 1 / math.sqrt(8 * 9)
    assert np.abs(conv.weight.numpy()).max() <= cb and np.abs(conv.bias.numpy()).max() <= cb
    lstm = nn.LSTM(10, 20)
    assert all(np.abs(p.numpy()).max() <= 1 / math.sqrt(20) for p in lstm.parameters())
    emb = nn.Embedding(1000, 8, padding_idx=3)
    assert abs(emb.weight.numpy().std() - 1) < 0.05 and not emb.weight.numpy()[3].any()
    bn = nn.BatchNorm1d(4)
    assert (bn.weight.numpy() == 1).all() and (bn.bias.numpy() == 0).all()
    t = engine.zeros(300, 200)
    init.xavier_uniform_(t, generator=np.random.default_rng(0))
    assert np.abs(t.numpy()).max() <= math.sqrt(6 / 500)
    init.kaiming_normal_(t, mode="fan_out", nonlinearity="relu", generator=np.random.default_rng(0))
    assert abs(t.numpy().std() - math.sqrt(2 / 300)) < 0.05 * math.sqrt(2 / 300)
    init.orthogonal_(t, generator=np.random.default_rng(0))
    np.testing.assert_allclose(t.numpy().T @ t.numpy(), np.eye(200), atol=1e-4)


def test_shape_errors_name_layer_and_shapes():
    conv = nn.Conv2d(1, 32, 3)
    with pytest.raises(ValueError) as e:
        conv(engine.zeros(32, 28, 28, 1))
    msg = str(e.value)
    assert "Conv2d(1, 32, kernel_size=(3, 3)" in msg and "(N, 1, H, W)" in msg and "(32, 28, 28, 1)" in msg
    assert "channels-last" in msg
    with pytest.raises(RuntimeError):             # also a RuntimeError, like PyTorch's
        conv(engine.zeros(2, 3, 28, 28))
    lin = nn.Linear(5408, 128)
    with pytest.raises(ValueError, match=r"Linear\(in_features=5408, out_features=128.*expected last "
                                         r"dimension 5408, got 5000"):
        lin(engine.zeros(4, 5000))
    with pytest.raises(ValueError, match=r"BatchNorm2d\(8.*\(N, 8, H, W\).*\(2, 3, 4, 4\)"):
        nn.BatchNorm2d(8)(engine.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"LSTM\(28, 128.*expected input.*28.*got \(64, 28, 27\)"):
        nn.LSTM(28, 128, batch_first=True)(engine.zeros(64, 28, 27))
    with pytest.raises(ValueError, match=r"expected h_0 of shape \(1, 4, 8\)"):
        nn.LSTM(3, 8)(engine.zeros(5, 4, 3), (engine.zeros(1, 3, 8), engine.zeros(1, 4, 8)))
    with pytest.raises(ValueError, match=r"LayerNorm.*\(5,\).*got \(2, 4\)"):
        nn.LayerNorm(5)(engine.zeros(2, 4))
    with pytest.raises(IndexError, match="index 10 is out of range.*10 rows"):
        nn.Embedding(10, 3)(engine.tensor(np.array([1, 10])))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        nn.Conv2d(1, 1, 5)(engine.zeros(1, 1, 3, 3))
    with pytest.raises(IndexError, match="target 10 is out of bounds for 10 classes"):
        nn.CrossEntropyLoss()(engine.zeros(2, 10), engine.tensor(np.array([1, 10])))
    with pytest.raises(ValueError, match=r"target of shape \(3,\) does not match input of shape \(2, 10\)"):
        nn.CrossEntropyLoss()(engine.zeros(2, 10), engine.tensor(np.array([1, 2, 3])))
    with pytest.raises(ValueError, match="target shape"):
        nn.MSELoss()(engine.zeros(2, 3), engine.zeros(3, 2))
    with pytest.raises(ValueError, match="padding_mode"):
        nn.Conv2d(1, 1, 3, padding_mode="mirror")


def test_float64_numpy_input_runs_in_float32():
    # float64 numpy data (common in user code) is computed in the weights' float32, gradient back in float64
    lin = nn.Linear(3, 2)
    x = engine.tensor(np.ones((4, 3)), dtype="float64", requires_grad=True)
    y = lin(x)
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float64 and lin.weight.grad.dtype == np.float32
