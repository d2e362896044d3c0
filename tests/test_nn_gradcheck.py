"""Finite-difference checks (float64, engine.gradcheck) of every layer's and loss's hand-written
backward: input gradients and every parameter gradient, on small shapes that still exercise
stride, padding, dilation, groups, ceil_mode, multi-layer recurrences with initial states, etc."""
import numpy as np
import pytest

import engine
import engine.nn as nn
import engine.nn.functional as F


def rand(*shape, seed=0, scale=1.0):
    r = np.random.default_rng(seed).standard_normal(shape) * scale
    return engine.tensor(r, dtype="float64", requires_grad=True)


def check_module(module, *inputs, train=True):
    """gradcheck module(*inputs) w.r.t. the inputs that require grad and all parameters."""
    module.double().train(train)
    params = [p for p in module.parameters()]
    n_in = len(inputs)

    def fn(*args):
        out = module(*args[:n_in])
        if isinstance(out, tuple):                    # RNNs: check output and final states together
            flat = [out[0]] + (list(out[1]) if isinstance(out[1], tuple) else [out[1]])
            return engine.concat([t.reshape(-1) for t in flat])
        return out
    assert engine.gradcheck(fn, list(inputs) + params)


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(stride=2, padding=1),
    dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1)),
    dict(groups=2, bias=False),
    dict(padding="same", kernel_size=(2, 3)),
])
def test_conv2d(kwargs):
    k = kwargs.pop("kernel_size", 3)
    check_module(nn.Conv2d(2, 4, k, **kwargs), rand(2, 2, 6, 5))


def test_conv2d_1x1():
    check_module(nn.Conv2d(3, 2, 1), rand(2, 3, 3, 4))


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2),                                        # the pairwise fast path
    dict(kernel_size=2, stride=2, ceil_mode=True),              # odd size, partial window
    dict(kernel_size=3, stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=1, dilation=(1, 2)),
])
def test_max_pool2d(kwargs):
    # distinct values: max pooling is not differentiable at ties
    x = engine.tensor(np.random.default_rng(0).permutation(2 * 3 * 7 * 7).reshape(2, 3, 7, 7) / 10.0,
                      dtype="float64", requires_grad=True)
    check_module(nn.MaxPool2d(**kwargs), x)


@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=2),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, divisor_override=4),
])
def test_avg_pool2d(kwargs):
    check_module(nn.AvgPool2d(**kwargs), rand(2, 2, 7, 6))


def test_linear_and_activations():
    check_module(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5), nn.Sigmoid()), rand(3, 4))
    check_module(nn.Linear(4, 3, bias=False), rand(2, 3, 4))
    for act in (nn.GELU(), nn.GELU("tanh"), nn.Softmax(dim=1), nn.LogSoftmax(dim=-1), nn.LeakyReLU(0.1)):
        check_module(act, rand(3, 4, seed=2))
    x = rand(3, 4, seed=3).numpy()
    x = engine.tensor(x + np.sign(x) * 0.05, dtype="float64", requires_grad=True)    # away from the kink
    check_module(nn.ReLU(), x)


def test_flatten_of_pooled_conv_layout():
    # conv/pool outputs are transposed views; Flatten + Linear must differentiate through them
    check_module(nn.Sequential(nn.Conv2d(1, 3, 3), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(12, 2)),
                 rand(2, 1, 6, 6, seed=4))


def test_normalisation():
    check_module(nn.BatchNorm2d(3), rand(4, 3, 2, 2))
    check_module(nn.BatchNorm1d(3), rand(5, 3))
    check_module(nn.BatchNorm1d(3, affine=False), rand(4, 3, 2))
    bn = nn.BatchNorm2d(3)
    bn.running_mean.data[...] = [0.1, -0.2, 0.3]
    bn.running_var.data[...] = [1.5, 0.5, 2.0]
    check_module(bn, rand(2, 3, 2, 2), train=False)              # eval: running statistics
    check_module(nn.LayerNorm(4), rand(3, 4))
    check_module(nn.LayerNorm((2, 3)), rand(2, 2, 3))


def test_embedding():
    idx = engine.tensor(np.array([[0, 1, 5], [5, 2, 0]]))
    plain = nn.Embedding(6, 3).double()
    assert engine.gradcheck(lambda w: plain(idx), [plain.weight])
    emb = nn.Embedding(6, 3, padding_idx=1)      # by definition not differentiable at the padding row
    emb(idx).sum().backward()
    assert not emb.weight.grad.numpy()[1].any()                 # padding row gets no gradient
    np.testing.assert_array_equal(emb.weight.grad.numpy()[5], 2.0)   # repeated index accumulates


@pytest.mark.parametrize("cls", ["LSTM", "GRU", "RNN_tanh", "RNN_relu"])
def test_recurrent_multilayer_with_initial_state(cls):
    name, _, nl = cls.partition("_")
    kw = dict(nonlinearity=nl) if nl else {}
    m = getattr(nn, name)(3, 4, num_layers=2, **kw)
    x = rand(3, 2, 3, seed=5)
    h0 = rand(2, 2, 4, seed=6, scale=0.5)
    state = (h0, rand(2, 2, 4, seed=7, scale=0.5)) if name == "LSTM" else h0
    m.double().train()
    params = list(m.parameters())
    flat_state = list(state) if name == "LSTM" else [state]

    def fn(x, *rest):
        st = tuple(rest[:2]) if name == "LSTM" else rest[0]
        out, hn = m(x, st)
        parts = [out] + (list(hn) if name == "LSTM" else [hn])
        return engine.concat([t.reshape(-1) for t in parts])
    assert engine.gradcheck(fn, [x] + flat_state + params)


def test_recurrent_batch_first_bidirectional():
    check_module(nn.GRU(2, 3, batch_first=True, bidirectional=True), rand(2, 3, 2, seed=8))
    check_module(nn.LSTM(2, 3, num_layers=2, bidirectional=True), rand(3, 2, 2, seed=9))


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(reduction="sum", label_smoothing=0.2),
    dict(reduction="none", ignore_index=2),
    dict(weight=np.array([1.0, 2.0, 0.5, 1.5]), label_smoothing=0.1, ignore_index=0),
])
def test_cross_entropy(kwargs):
    w = kwargs.pop("weight", None)
    loss = nn.CrossEntropyLoss(weight=engine.tensor(w, dtype="float64") if w is not None else None, **kwargs)
    target = engine.tensor(np.array([0, 2, 3, 1, 2]))
    assert engine.gradcheck(lambda x: loss(x, target), [rand(5, 4, seed=10)])
    # (N, C, d) input with (N, d) targets
    t2 = engine.tensor(np.array([[0, 2, 3], [1, 1, 2]]))
    assert engine.gradcheck(lambda x: loss(x, t2), [rand(2, 4, 3, seed=11)])


def test_cross_entropy_probability_targets_and_nll_mse_l1():
    p = np.random.default_rng(0).random((3, 4))
    probs = engine.tensor(p / p.sum(1, keepdims=True), dtype="float64", requires_grad=True)
    assert engine.gradcheck(lambda x, t: F.cross_entropy(x, t, label_smoothing=0.1), [rand(3, 4), probs])
    target = engine.tensor(np.array([1, 0, 3]))
    assert engine.gradcheck(lambda x: nn.NLLLoss()(F.log_softmax(x, dim=1), target), [rand(3, 4, seed=1)])
    assert engine.gradcheck(lambda x, y: nn.MSELoss()(x, y), [rand(3, 4, seed=2), rand(3, 4, seed=3)])
    assert engine.gradcheck(lambda x: nn.L1Loss(reduction="sum")(x, engine.zeros(3, 4, dtype="float64")),
                            [rand(3, 4, seed=4)])


def test_dropout_backward_uses_the_forward_mask():
    x = rand(4, 5)
    gen_state = np.random.default_rng(0)
    y = F.dropout(x, 0.5, training=True, generator=gen_state)
    y.sum().backward()
    mask = (y.numpy() != 0)
    np.testing.assert_allclose(x.grad.numpy(), mask * 2.0)


@pytest.mark.parametrize("kwargs,size", [
    (dict(), (6, 6)),
    (dict(stride=2, padding=1), (7, 9)),                # odd conv output: last row/column unpooled
    (dict(padding="same", dilation=2, bias=False), (5, 6)),
])
def test_fused_conv_relu_maxpool(kwargs, size):
    # distinct, mostly positive pre-activations keep max/relu away from their kinks
    conv = nn.Conv2d(2, 3, 3, **kwargs)
    x = rand(2, 2, *size, seed=12)
    conv.double()
    assert engine.gradcheck(lambda x, *p: F.conv2d_relu_max_pool2d(x, conv.weight, conv.bias, conv.stride,
                                                                   conv.padding, conv.dilation),
                            [x] + list(conv.parameters()))
