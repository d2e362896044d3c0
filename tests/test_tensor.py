"""Engine core: every op's gradient against finite differences, graph semantics, dtypes, errors."""
import numpy as np
import pytest

import engine
from engine import Tensor, gradcheck


def t64(*shape, seed=0, positive=False, noncontig=False):
    rng = np.random.default_rng(seed)
    if noncontig:
        a = rng.standard_normal(tuple(reversed(shape))).T      # a transposed (non-contiguous) view
    else:
        a = rng.standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    assert a.shape == tuple(shape)
    return engine.tensor(a, dtype="float64", requires_grad=True) if not noncontig else \
        Tensor(a, dtype=None, requires_grad=True)


BINARY = [
    ("add", lambda a, b: a + b),
    ("sub", lambda a, b: a - b),
    ("mul", lambda a, b: a * b),
    ("div", lambda a, b: a / b),
    ("pow", lambda a, b: a ** b),
    ("maximum", engine.maximum),
    ("minimum", engine.minimum),
]
SHAPE_PAIRS = [((3, 4), (3, 4)), ((3, 4), (4,)), ((2, 1, 4), (3, 1)), ((5,), ()), ((2, 3, 1), (1, 3, 4))]


@pytest.mark.parametrize("name,fn", BINARY)
@pytest.mark.parametrize("sa,sb", SHAPE_PAIRS)
def test_binary_gradients_with_broadcasting(name, fn, sa, sb):
    a = t64(*sa, seed=1, positive=(name == "pow"))
    b = t64(*sb, seed=2, positive=(name in ("div", "pow")))
    assert gradcheck(fn, [a, b])


@pytest.mark.parametrize("name,fn,positive", [
    ("neg", lambda a: -a, False), ("exp", engine.exp, False), ("log", engine.log, True),
    ("sqrt", engine.sqrt, True), ("tanh", engine.tanh, False), ("sigmoid", engine.sigmoid, False),
    ("relu", engine.relu, False), ("abs", engine.abs, False), ("pow2", lambda a: a ** 2, False),
    ("pow_frac", lambda a: a ** 1.5, True), ("rsub", lambda a: 1.0 - a, False),
    ("rdiv", lambda a: 2.0 / a, True), ("clip", lambda a: a.clip(-0.5, 0.5), False),
])
@pytest.mark.parametrize("noncontig", [False, True])
def test_unary_gradients(name, fn, positive, noncontig):
    a = t64(3, 5, seed=3, positive=positive, noncontig=noncontig)
    if name in ("relu", "abs", "clip"):      # keep away from the kinks
        a.data[np.abs(a.data) < 1e-3] = 0.1
        a.data[np.abs(np.abs(a.data) - 0.5) < 1e-3] = 0.3
    assert gradcheck(fn, [a])


@pytest.mark.parametrize("op", ["sum", "mean", "max", "min"])
@pytest.mark.parametrize("axis,keepdims", [(None, False), (0, False), (1, True), ((0, 2), False), (-1, True)])
def test_reduction_gradients(op, axis, keepdims):
    a = t64(2, 3, 4, seed=4, noncontig=True)
    assert gradcheck(lambda x: getattr(x, op)(axis=axis, keepdims=keepdims), [a])


def test_torch_style_dim_aliases():
    a = engine.tensor(np.arange(6.0).reshape(2, 3))
    assert a.sum(dim=1, keepdim=True).shape == (2, 1)
    assert np.allclose(a.mean(dim=0).numpy(), [1.5, 2.5, 3.5])
    assert a.max(axis=1).tolist() == [2.0, 5.0]


@pytest.mark.parametrize("ashape,bshape", [((3, 4), (4, 5)), ((4,), (4, 2)), ((3, 4), (4,)),
                                           ((2, 3, 4), (4, 5)), ((2, 3, 4), (2, 4, 2)), ((4,), (4,)),
                                           ((1, 3, 4), (2, 4, 5))])
def test_matmul_gradients(ashape, bshape):
    assert gradcheck(lambda a, b: a @ b, [t64(*ashape, seed=5), t64(*bshape, seed=6)])


def test_shape_op_gradients():
    a = t64(2, 3, 4, seed=7, noncontig=True)
    assert gradcheck(lambda x: x.reshape(4, 6) * 2, [a])
    assert gradcheck(lambda x: x.transpose(2, 0, 1), [a])
    assert gradcheck(lambda x: x.T, [a])
    assert gradcheck(lambda x: x.flatten(1), [a])
    assert gradcheck(lambda x: x.unsqueeze(1).squeeze(1), [a])


def test_getitem_gradients_slices_arrays_masks():
    a = t64(5, 4, seed=8)
    assert gradcheck(lambda x: x[1:4, ::2], [a])
    assert gradcheck(lambda x: x[-1], [a])
    assert gradcheck(lambda x: x[None, 2, ..., 1:], [a])
    # repeated integer indices must accumulate
    idx = np.array([0, 2, 2, 4, 0, 0])
    assert gradcheck(lambda x: x[idx], [a])
    a.grad = None
    a[idx].sum().backward()
    assert a.grad.numpy()[:, 0].tolist() == [3, 0, 2, 0, 1]
    mask = a.data > 0
    assert gradcheck(lambda x: x[mask] * 3, [a])
    assert gradcheck(lambda x: x[engine.tensor(np.array([1, 1, 3])), 2], [a])


def test_concat_stack_where_gradients():
    a, b = t64(2, 3, seed=9), t64(4, 3, seed=10)
    assert gradcheck(lambda x, y: engine.concat([x, y, x], axis=0), [a, b])
    c = t64(2, 3, seed=11)
    assert gradcheck(lambda x, y: engine.stack([x, y], axis=1), [a, c])
    cond = a.data > 0
    assert gradcheck(lambda x, y: engine.where(cond, x, y * 2), [a, c])
    assert gradcheck(lambda x: engine.where(cond, x, 0.0), [a])


def test_var_gradient():
    assert gradcheck(lambda x: x.var(axis=1, ddof=1), [t64(3, 5, seed=12)])


def test_reused_nodes_and_diamonds():
    a = engine.tensor([1.0, 2.0, 3.0], requires_grad=True)
    b = a + a
    b.sum().backward()
    assert a.grad.tolist() == [2.0, 2.0, 2.0]
    a.grad = None
    x = a * 2                # diamond: x feeds two branches that meet again
    y = x * x + engine.exp(x)
    y.sum().backward()
    xv = a.data * 2
    assert np.allclose(a.grad.numpy(), 2 * (2 * xv + np.exp(xv)), rtol=1e-6)
    assert gradcheck(lambda t: (t * t) * (t + 1) + t, [t64(4, seed=13)])


def test_backward_twice_with_retain_graph_accumulates():
    a = engine.tensor([1.0, -2.0], requires_grad=True)
    y = (a * a).sum()
    y.backward(retain_graph=True)
    y.backward()
    assert a.grad.tolist() == [4.0, -8.0]
    with pytest.raises(RuntimeError, match="second time"):
        y.backward()


def test_hooks_fire_once_per_backward_with_final_gradient():
    a = engine.tensor([1.0, 2.0], requires_grad=True)
    seen = []
    a.register_hook(lambda g: seen.append(g.numpy().copy()))
    post = []
    a.register_post_accumulate_grad_hook(lambda t: post.append(t.grad.numpy().copy()))
    y = (a * 3 + a * a + a).sum()      # three uses of a
    y.backward()
    assert len(seen) == 1 and np.allclose(seen[0], [6.0, 8.0])
    assert len(post) == 1
    (a * 1).sum().backward()
    assert len(seen) == 2 and np.allclose(seen[1], [1.0, 1.0])
    assert np.allclose(post[1], [7.0, 9.0])      # post hook sees the accumulated .grad


def test_hook_can_replace_gradient_and_be_removed():
    a = engine.tensor([1.0], requires_grad=True)
    h = a.register_hook(lambda g: g * 10)
    (a * 2).sum().backward()
    assert a.grad.item() == 20.0
    h.remove()
    a.grad = None
    (a * 2).sum().backward()
    assert a.grad.item() == 2.0


def test_last_layer_leaves_finalise_before_earlier_ones():
    """Leaves are finalised as soon as their consumers are done (what DDP overlap relies on)."""
    order = []
    w1 = engine.randn(4, 4, requires_grad=True, seed=1)
    w2 = engine.randn(4, 4, requires_grad=True, seed=2)
    w1.register_hook(lambda g: order.append("w1"))
    w2.register_hook(lambda g: order.append("w2"))
    x = engine.randn(3, 4, seed=3)
    ((x @ w1).tanh() @ w2).tanh().sum().backward()
    assert order == ["w2", "w1"]


def test_no_grad_records_nothing():
    a = engine.tensor([1.0], requires_grad=True)
    with engine.no_grad():
        b = a * 2 + 1
    assert not b.requires_grad and b.is_leaf and b._parents == ()
    c = a * 2
    assert c.requires_grad and not c.is_leaf

    @engine.no_grad()
    def f(t):
        return t * t
    assert not f(a).requires_grad

    @engine.no_grad                      # PyTorch 2 also takes it without parentheses
    def g(t):
        return t * t
    assert not g(a).requires_grad and (a * a).requires_grad


def test_detach_and_to_cpu():
    a = engine.tensor([1.0, 2.0], requires_grad=True)
    d = a.detach()
    assert not d.requires_grad and d.data is a.data
    b = a.to("cpu")
    assert b is a
    with pytest.raises(ValueError, match="unknown device"):
        a.to("tpu")


def test_chain_of_100k_ops_backward_iteratively():
    a = engine.tensor([1.0], requires_grad=True)
    y = a
    for _ in range(100_000):
        y = y * 1.0 + 0.0
    y = y.sum()
    y.backward()
    assert a.grad.item() == 1.0


ALL_OPS_F32 = [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b, lambda a, b: a / b,
    lambda a, b: a @ b.T, lambda a, b: a ** 2, lambda a, b: a + 1.5, lambda a, b: 2.0 * a,
    lambda a, b: 1 / (a.abs() + 1), lambda a, b: a ** 0.5 if False else a.abs().sqrt(),
    lambda a, b: a.exp(), lambda a, b: (a.abs() + 1).log(), lambda a, b: a.tanh(),
    lambda a, b: a.sigmoid(), lambda a, b: a.relu(), lambda a, b: a.sum(axis=0),
    lambda a, b: a.mean(), lambda a, b: a.max(axis=1), lambda a, b: a.min(),
    lambda a, b: a.reshape(-1), lambda a, b: a.T, lambda a, b: a[0], lambda a, b: a[np.array([0, 0])],
    lambda a, b: engine.concat([a, b]), lambda a, b: engine.stack([a, b]),
    lambda a, b: engine.where(a.data > 0, a, b), lambda a, b: engine.maximum(a, b),
    lambda a, b: engine.minimum(a, 0.0), lambda a, b: a + np.float64(2.0), lambda a, b: a * np.ones(3),
    lambda a, b: a.var(axis=0), lambda a, b: a.clip(-1, 1),
]


@pytest.mark.parametrize("i", range(len(ALL_OPS_F32)))
def test_float32_in_float32_out(i):
    a = engine.randn(2, 3, requires_grad=True, seed=1)
    b = engine.randn(2, 3, requires_grad=True, seed=2)
    out = ALL_OPS_F32[i](a, b)
    assert out.dtype == np.float32
    out.sum().backward()
    assert a.grad.dtype == np.float32


def test_dtype_policy():
    assert engine.tensor([1.0, 2.0]).dtype == np.float32
    assert engine.tensor([1.0], dtype="float64").dtype == np.float64
    assert engine.tensor([1, 2]).dtype == np.int64
    assert (engine.tensor([1, 2]) / engine.tensor([2, 2])).dtype == np.float32
    assert (engine.tensor([1, 2]) * 0.5).dtype == np.float32
    assert engine.randn(2, seed=0).dtype == np.float32
    assert np.array_equal(engine.randn(3, seed=5).numpy(), engine.randn(3, seed=5).numpy())
    g = np.random.default_rng(3)
    assert engine.rand(4, generator=g).shape == (4,)


def test_shape_mismatch_errors_name_both_shapes():
    a, b = engine.ones(3, 4), engine.ones(5, 6)
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
        a @ b
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(5, 6\)"):
        a + b
    with pytest.raises(ValueError, match=r"cannot reshape.*\(3, 4\)"):
        a.reshape(5, 5)


def test_backward_on_non_scalar_needs_gradient():
    a = engine.ones(2, 3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"non-scalar.*\(2, 3\)"):
        (a * 2).backward()
    (a * 2).backward(np.ones((2, 3), np.float32))
    assert a.grad.numpy().tolist() == [[2.0] * 3] * 2


def test_ops_on_different_devices_name_both(monkeypatch):
    a = engine.ones(2)
    b = engine.ones(2)

    class FakeGpuArray(np.ndarray):
        pass
    b.data = b.data.view(FakeGpuArray)
    monkeypatch.setattr(type(b), "device", property(lambda t: "cuda:0" if t is b else "cpu"))
    with pytest.raises(RuntimeError, match="cpu and cuda:0"):
        a + b


def test_requires_grad_only_for_floats():
    with pytest.raises(TypeError, match="floating point"):
        engine.tensor([1, 2], requires_grad=True)


def test_gradcheck_reports_worst_element():
    from engine import from_op

    def bad_square(x):
        return from_op(x.data ** 2, (x,), lambda g: (g * x.data * 3,), "bad_square")
    with pytest.raises(engine.GradcheckError, match="element"):
        gradcheck(bad_square, [t64(3, seed=1)])


def test_size_is_numpy_count_and_pytorch_callable():
    x = engine.ones(2, 3)
    assert x.size == 6 and x.size * 2 == 12
    assert x.size(0) == 2 and x.size(-1) == 3 and x.size() == (2, 3)


def test_leaf_gradients_never_alias_each_other_or_the_callers_gradient():
    a = engine.ones(3, requires_grad=True)
    b = engine.ones(3, requires_grad=True)
    (a + b).sum().backward()                  # `+` hands the same upstream array to both inputs
    a.grad.data *= 5
    assert b.grad.tolist() == [1.0, 1.0, 1.0]
    c = engine.ones(2, requires_grad=True)
    g = np.ones(2, np.float32)
    (c * 1.0).backward(g)
    c.grad.data *= 3
    assert g.tolist() == [1.0, 1.0]
    d = engine.ones(2, 2, requires_grad=True)
    d.T.sum().backward()                      # view-shaped gradients are copied, not kept
    assert d.grad.data.base is None and d.grad.data.flags.writeable
