"""engine.nn.functional: argument aliases, dtype discipline (no float64 promotion), memory-layout
independence of the fused ops, numerical stability, seeded dropout, and error messages."""
import numpy as np
import pytest

import engine
import engine.nn as nn
import engine.nn.functional as F


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_dim_and_axis_aliases():
    x = engine.tensor(rnd(3, 4, 5))
    for fn in (F.softmax, F.log_softmax):
        a = fn(x, dim=1).numpy()
        np.testing.assert_allclose(fn(x, axis=1).numpy(), a)
        np.testing.assert_allclose(fn(x, 1).numpy(), a)
        np.testing.assert_allclose(fn(x, dim=-2).numpy(), a)
    np.testing.assert_allclose(F.softmax(x, dim=2).numpy().sum(axis=2), 1.0, rtol=1e-6)
    assert nn.Softmax(axis=0)(x).shape == (3, 4, 5)
    with pytest.raises(IndexError):
        F.softmax(x, dim=3)


def test_outputs_and_gradients_stay_float32():
    x = engine.tensor(rnd(2, 3, 6, 6), requires_grad=True)
    lin_w = nn.Parameter(engine.tensor(rnd(4, 6)))
    conv = nn.Conv2d(3, 4, 3)
    outs = [
        F.linear(x, lin_w), conv(x), F.max_pool2d(x, 2), F.max_pool2d(x, 3, 1, 1), F.avg_pool2d(x, 3, 2, 1),
        F.relu(x), F.leaky_relu(x), F.gelu(x), F.gelu(x, "tanh"), F.sigmoid(x), F.tanh(x), F.softmax(x, 1),
        F.log_softmax(x, 1), F.dropout(x, 0.3), F.batch_norm(x, None, None, training=True),
        F.layer_norm(x, (6,)), F.mse_loss(x, engine.zeros(2, 3, 6, 6)), F.l1_loss(x, engine.zeros(2, 3, 6, 6)),
        F.cross_entropy(x, engine.tensor(np.zeros((2, 6, 6), np.int64)), label_smoothing=0.1),
        F.nll_loss(x, engine.tensor(np.zeros((2, 6, 6), np.int64))),
    ]
    for out in outs:
        assert out.dtype == np.float32, out
        out.sum().backward()
        assert x.grad.dtype == np.float32
        x.grad = None


def test_fused_ops_accept_any_memory_layout():
    """Channels-last views (the Keras facade), transposed or sliced inputs give the same results."""
    base = rnd(2, 7, 9, 3)                      # NHWC memory
    x_view = engine.tensor(base).transpose(0, 3, 1, 2)
    x_contig = engine.tensor(np.ascontiguousarray(base.transpose(0, 3, 1, 2)))
    w = nn.Parameter(engine.tensor(rnd(4, 3, 3, 3, seed=1)))
    for fn in (lambda t: F.conv2d(t, w, None, 1, 1), lambda t: F.max_pool2d(t, 2),
               lambda t: F.avg_pool2d(t, 3, 2, 1), lambda t: F.batch_norm(t, None, None, training=True),
               lambda t: F.linear(t, nn.Parameter(engine.tensor(rnd(5, 9, seed=2))))):
        np.testing.assert_allclose(fn(x_view).numpy(), fn(x_contig).numpy(), rtol=1e-5, atol=1e-6)
    # a chain through the internal (C, H, W, N) layout and back
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 2, 1), nn.Flatten())
    np.testing.assert_allclose(m(x_view).numpy(), m(x_contig).numpy(), rtol=1e-5, atol=1e-6)
    y = m(x_contig)
    assert y.shape == (2, 2 * 2 * 3)
    assert np.asarray(y.numpy()).flags.f_contiguous or y.numpy().flags.c_contiguous


def test_cross_entropy_is_numerically_stable():
    x = engine.tensor(np.array([[1e4, 0.0, -1e4], [-3e4, 3e4, 0.0]], np.float32), requires_grad=True)
    loss = F.cross_entropy(x, engine.tensor(np.array([0, 2])))
    assert np.isfinite(loss.item()) and abs(loss.item() - 1.5e4) < 1.0
    loss.backward()
    assert np.isfinite(x.grad.numpy()).all()
    np.testing.assert_allclose(x.grad.numpy()[1], [0, 0.5, -0.5], atol=1e-6)


def test_cross_entropy_ignore_index_and_unbatched():
    x = engine.tensor(rnd(4, 3), requires_grad=True)
    y = engine.tensor(np.array([0, -100, 2, -100]))
    loss = F.cross_entropy(x, y)
    ref = F.cross_entropy(engine.tensor(x.numpy()[[0, 2]]), engine.tensor(np.array([0, 2])))
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    loss.backward()
    assert not x.grad.numpy()[[1, 3]].any()
    none = F.cross_entropy(x, y, reduction="none")
    assert none.shape == (4,) and none.numpy()[1] == 0
    one = F.cross_entropy(engine.tensor(rnd(5)), engine.tensor(np.array(3)))
    assert one.shape == ()
    with pytest.raises(TypeError, match="integer class indices"):
        F.cross_entropy(x, engine.tensor(np.zeros(4, np.float32)))


def test_dropout_seeding_scaling_and_modes():
    x = engine.ones(200, 100)
    engine.manual_seed(7)
    a = F.dropout(x, 0.25).numpy()
    engine.manual_seed(7)
    b = F.dropout(x, 0.25).numpy()
    np.testing.assert_array_equal(a, b)                              # reproducible from the global seed
    c = F.dropout(x, 0.25, generator=np.random.default_rng(3)).numpy()
    d = F.dropout(x, 0.25, generator=np.random.default_rng(3)).numpy()
    np.testing.assert_array_equal(c, d)
    assert set(np.unique(a)) == {0.0, np.float32(1 / 0.75)}
    assert abs((a == 0).mean() - 0.25) < 0.02 and abs(a.mean() - 1.0) < 0.03
    assert F.dropout(x, 0.5, training=False) is x
    assert not F.dropout(x, 1.0).numpy().any()
    drop = nn.Dropout(0.5)
    drop.eval()
    np.testing.assert_array_equal(drop(x).numpy(), 1.0)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout(1.5)


def test_batch_norm_functional_updates_running_stats():
    x = engine.tensor(rnd(16, 3) * 2 + 1)
    rm, rv = engine.zeros(3), engine.ones(3)
    F.batch_norm(x, rm, rv, training=True, momentum=0.5)
    xs = x.numpy()
    np.testing.assert_allclose(rm.numpy(), 0.5 * xs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(rv.numpy(), 0.5 + 0.5 * xs.var(0, ddof=1), rtol=1e-5)
    y = F.batch_norm(x, rm, rv, training=False)
    np.testing.assert_allclose(y.numpy(), (xs - rm.numpy()) / np.sqrt(rv.numpy() + 1e-5), rtol=1e-5)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        F.batch_norm(engine.ones(1, 3), rm, rv, training=True)


def test_embedding_max_norm_matches_torch():
    torch = pytest.importorskip("torch")
    w = rnd(6, 4) * 3
    idx = np.array([[0, 2], [2, 5]])
    tw = torch.tensor(w)
    ref = torch.nn.functional.embedding(torch.tensor(idx), tw, max_norm=1.5)
    ew = nn.Parameter(engine.tensor(w))
    out = F.embedding(engine.tensor(idx), ew, max_norm=1.5)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), rtol=1e-5)
    np.testing.assert_allclose(ew.numpy(), tw.numpy(), rtol=1e-5)     # renormalised in place, as torch


def test_no_grad_records_nothing_and_one_hot():
    conv = nn.Conv2d(1, 2, 3)
    with engine.no_grad():
        y = conv(engine.ones(1, 1, 5, 5))
    assert not y.requires_grad and y.is_leaf
    oh = F.one_hot(engine.tensor(np.array([0, 2, 1])), 4)
    np.testing.assert_array_equal(oh.numpy(), np.eye(4, dtype=np.int64)[[0, 2, 1]])


def test_functional_argument_errors():
    x = engine.zeros(2, 3, 8, 8)
    w = nn.Parameter(engine.zeros(4, 3, 3, 3))
    with pytest.raises(ValueError, match="4-D"):
        F.conv2d(engine.zeros(3, 8), w)
    with pytest.raises(ValueError, match="padding='same' is not supported for strided"):
        F.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(ValueError, match="at most half of the kernel"):
        F.max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="reduction must be"):
        F.mse_loss(x, x, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        F.cross_entropy(engine.zeros(2, 3), engine.tensor(np.array([0, 1])), label_smoothing=1.5)
    with pytest.raises(ValueError, match="does not end with normalized_shape"):
        F.layer_norm(x, (3,))
    with pytest.raises(ValueError, match="approximate"):
        F.gelu(x, approximate="fast")
