"""The torch.Tensor / torch.* API that ported scripts use beyond the core op set.

Every differentiable op is gradchecked in float64; when PyTorch is installed, values and gradients
are also compared with torch's (a random projection of the output is backpropagated in both).
"""
import numpy as np
import pytest

import engine as torch
from engine import gradcheck


def t64(*shape, seed=0, positive=False):
    a = np.random.default_rng(seed).standard_normal(shape)
    if positive:
        a = np.abs(a) + 0.5
    return torch.tensor(a, dtype="float64", requires_grad=True)


def _run(fn, arrays, lib):
    """fn on tensors of `lib` made from arrays; returns (output values, input gradients)."""
    ts = [lib.tensor(a, dtype=lib.float64, requires_grad=True) if a.dtype.kind == "f"
          else lib.tensor(a) for a in arrays]
    out = fn(*ts)
    proj = np.random.default_rng(7).standard_normal(tuple(out.shape))
    (out * lib.tensor(proj, dtype=lib.float64)).sum().backward()
    grads = [None if t.grad is None else t.grad.numpy() for t in ts]
    return out.detach().numpy(), grads


def same_as_torch(fn, *arrays, torch_fn=None, atol=1e-10):
    """fn gives torch's values and gradients (fn is called with engine, then torch tensors)."""
    real = pytest.importorskip("torch")
    out, grads = _run(fn, arrays, torch)
    tout, tgrads = _run(torch_fn or fn, arrays, real)
    np.testing.assert_allclose(out, tout, atol=atol, rtol=1e-7)
    for g, tg in zip(grads, tgrads):
        if tg is None:
            assert g is None or not g.any()
        else:
            np.testing.assert_allclose(g, tg, atol=atol, rtol=1e-7)


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


# ---------------------------------------------------------------- einsum and bmm

EINSUM = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (4, 5)]),
    ("...ij,...jk", [(1, 2, 3), (5, 1, 3, 2)]),            # broadcast batch dims, implicit output
    ("bhqd,bhkd->bhqk", [(2, 2, 3, 4), (2, 2, 5, 4)]),     # attention scores
    ("ii->i", [(4, 4)]),                                     # diagonal
    ("ii", [(3, 3)]),                                        # trace
    ("ij->", [(3, 4)]),
    ("i,j->ij", [(3,), (4,)]),
    ("ijk,k->ij", [(2, 3, 4), (4,)]),
    ("ij,ij->i", [(1, 4), (3, 4)]),                          # size-1 broadcasting
    ("ba,c", [(2, 3), (4,)]),
    ("ij,jk,kl->il", [(2, 3), (3, 4), (4, 2)]),
    ("i j , j k -> i k", [(2, 3), (3, 2)]),
]


@pytest.mark.parametrize("eq,shapes", EINSUM)
def test_einsum_gradients(eq, shapes):
    ts = [t64(*s, seed=i) for i, s in enumerate(shapes)]
    assert gradcheck(lambda *xs: torch.einsum(eq, *xs), ts)


@pytest.mark.parametrize("eq,shapes", EINSUM)
def test_einsum_matches_torch(eq, shapes):
    same_as_torch(lambda *xs: torch_mod(xs).einsum(eq, *xs), *[rnd(*s, seed=i) for i, s in enumerate(shapes)])


def torch_mod(xs):
    """engine or torch, whichever made these tensors."""
    if isinstance(xs[0], torch.Tensor):
        return torch
    import torch as real
    return real


def test_einsum_list_form_dtype_and_errors():
    a, b = torch.ones(2, 3), torch.ones(3, 4)
    assert torch.einsum("ij,jk", [a, b]).shape == (2, 4)
    assert torch.einsum("ij,jk", a, b).dtype == np.float32
    with pytest.raises(ValueError, match="names 2 operands, got 1"):
        torch.einsum("ij,jk", a)
    with pytest.raises(ValueError, match="do not fit an operand of shape"):
        torch.einsum("ijk,jk", a, b)


def test_bmm():
    a, b = t64(2, 3, 4), t64(2, 4, 5, seed=1)
    assert gradcheck(torch.bmm, [a, b])
    same_as_torch(lambda x, y: x.bmm(y), rnd(2, 3, 4), rnd(2, 4, 5, seed=1))
    with pytest.raises(ValueError, match="bmm needs"):
        torch.bmm(torch.ones(3, 4), torch.ones(4, 5))


# ---------------------------------------------------------------- indexing and slicing


def test_gather_accumulates_repeated_indices():
    x = t64(3, 4)
    idx = torch.tensor(np.array([[0, 0, 2, 1], [2, 2, 2, 0]]))
    assert gradcheck(lambda t: torch.gather(t, 0, idx), [x])
    assert gradcheck(lambda t: t.gather(1, torch.tensor(np.array([[3, 3], [0, 1], [2, 2]]))), [x])
    i0 = np.array([[0, 0, 2, 1], [2, 2, 2, 0]])
    same_as_torch(lambda t, i: t.gather(0, i), rnd(3, 4), i0)
    same_as_torch(lambda t, i: t.gather(-1, i), rnd(3, 4), np.array([[3, 3], [0, 1]]))  # smaller index
    with pytest.raises(ValueError, match="does not fit"):
        torch.gather(torch.ones(2, 2), 0, torch.tensor(np.zeros((3, 3), np.int64)))


def test_index_select_split_chunk_unbind():
    x = t64(5, 4)
    idx = torch.tensor(np.array([4, 0, 4]))
    assert gradcheck(lambda t: t.index_select(0, idx) * 1.0, [x])
    same_as_torch(lambda t, i: t.index_select(1, i), rnd(5, 4), np.array([3, 3, 1]))
    assert [p.shape for p in x.split(2)] == [(2, 4), (2, 4), (1, 4)]
    assert [p.shape for p in torch.split(x, [1, 3], dim=1)] == [(5, 1), (5, 3)]
    assert [p.shape for p in x.chunk(3, dim=1)] == [(5, 2), (5, 2)]          # as torch: fewer pieces
    assert [p.shape for p in x.chunk(2)] == [(3, 4), (2, 4)]
    assert [p.shape for p in torch.unbind(x, 1)] == [(5,)] * 4
    assert isinstance(x.chunk(2), tuple)
    assert gradcheck(lambda t: t.split([1, 3], dim=1)[1] * t.chunk(2)[0].sum(), [x])
    assert gradcheck(lambda t: torch.stack([u * (k + 1) for k, u in enumerate(t.unbind(1))]), [x])
    for fn in (lambda t: torch_mod([t]).cat([p * (k + 1) for k, p in enumerate(t.chunk(3, 1))], 1),
               lambda t: t.split([2, 3])[1],
               lambda t: torch_mod([t]).stack(t.unbind(0)[::2])):
        same_as_torch(fn, rnd(5, 4))
    with pytest.raises(ValueError, match="sum to 3, not 5"):
        x.split([1, 2])


def test_flip_tril_triu_repeat_tile():
    x = t64(3, 4)
    for fn in (lambda t: t.flip(0), lambda t: t.flip(0, 1), lambda t: torch_mod([t]).flip(t, [1]),
               lambda t: t.tril(), lambda t: t.triu(1), lambda t: torch_mod([t]).tril(t, -1),
               lambda t: t.repeat(2, 3), lambda t: t.repeat(2, 1, 2),
               lambda t: torch_mod([t]).tile(t, (2,))):
        assert gradcheck(fn, [x])
        same_as_torch(fn, rnd(3, 4))
    assert x.repeat((2, 1)).shape == (6, 4)
    with pytest.raises(ValueError, match="a count for each of the 2 dims"):
        x.repeat(2)


# ---------------------------------------------------------------- sorting and selection


def test_sort_argsort_topk():
    x = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.0, 5.0, -1.0, 4.0]], requires_grad=True)
    values, indices = x.sort(dim=1)
    assert values.numpy().tolist() == [[1, 1, 2, 3], [-1, 0, 4, 5]]
    assert indices.numpy().tolist() == [[1, 3, 2, 0], [2, 0, 3, 1]] and indices.dtype == np.int64
    assert torch.sort(x, descending=True).indices.numpy().tolist() == [[0, 2, 1, 3], [1, 3, 0, 2]]
    assert x.argsort(dim=0).numpy().tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    top = x.topk(2)
    assert top.values.numpy().tolist() == [[3, 2], [5, 4]]
    assert top.indices.numpy().tolist() == [[0, 2], [1, 3]]
    assert torch.topk(x, 1, dim=0, largest=False).indices.numpy().tolist() == [[1, 0, 1, 0]]
    top.values.sum().backward()
    assert x.grad.numpy().tolist() == [[1, 0, 1, 0], [0, 1, 0, 1]]
    nan = torch.tensor([1.0, float("nan"), 3.0])
    assert nan.topk(2).indices.numpy().tolist() == [1, 2]              # NaN is the largest, as in torch
    with pytest.raises(TypeError, match="use .values"):
        np.asarray(x.topk(1))
    with pytest.raises(ValueError, match="out of range"):
        x.topk(5)


def test_sort_and_topk_gradients_and_torch():
    x = t64(3, 5)
    assert gradcheck(lambda t: t.sort(dim=0).values, [x])
    assert gradcheck(lambda t: t.topk(3, dim=1).values, [x])
    assert gradcheck(lambda t: t.topk(2, dim=0, largest=False).values, [x])
    same_as_torch(lambda t: t.sort(dim=1, descending=True).values, rnd(3, 5))
    same_as_torch(lambda t: t.topk(2).values, rnd(3, 5))
    same_as_torch(lambda t: t.topk(2, dim=0, largest=False).values, rnd(3, 5))
    real = pytest.importorskip("torch")
    a = rnd(4, 6)
    assert np.array_equal(torch.tensor(a).argsort(dim=1).numpy(), real.tensor(a).argsort(dim=1).numpy())
    assert np.array_equal(torch.tensor(a).topk(3).indices.numpy(), real.tensor(a).topk(3).indices.numpy())


# ---------------------------------------------------------------- elementwise, scans, reductions

UNARY = [
    ("sin", lambda t: t.sin(), False),
    ("cos", lambda t: torch_mod([t]).cos(t), False),
    ("square", lambda t: t.square(), False),
    ("rsqrt", lambda t: t.rsqrt(), True),
    ("erf", lambda t: t.erf(), False),
    ("cumsum", lambda t: t.cumsum(1), False),
    ("cumsum0", lambda t: torch_mod([t]).cumsum(t, dim=0), False),
    ("prod", lambda t: t.prod(), False),
    ("prod_dim", lambda t: t.prod(1, keepdim=True), False),
    ("logsumexp", lambda t: t.logsumexp(1), False),
    ("logsumexp_k", lambda t: torch_mod([t]).logsumexp(t, dim=0, keepdim=True), False),
    ("norm", lambda t: t.norm(), False),
    ("norm_dim", lambda t: t.norm(dim=1), False),
    ("norm_p1", lambda t: t.norm(p=1, dim=0, keepdim=True), False),
    ("norm_p3", lambda t: t.norm(p=3, dim=1), False),
    ("norm_inf", lambda t: t.norm(p=float("inf"), dim=1), False),
    ("mod", lambda t: t % 0.7, False),
]


@pytest.mark.parametrize("name,fn,positive", UNARY, ids=[u[0] for u in UNARY])
def test_unary_gradients_and_torch(name, fn, positive):
    x = t64(3, 4, positive=positive)
    assert gradcheck(fn, [x])
    same_as_torch(fn, x.numpy().copy(), atol=1e-9)


def test_prod_with_zeros_and_cumsum_flattened():
    x = torch.tensor([[0.0, 2.0, 3.0], [0.0, 0.0, 4.0]], dtype="float64", requires_grad=True)
    assert gradcheck(lambda t: t.prod(1), [x]) and gradcheck(lambda t: t.prod(), [x])
    same_as_torch(lambda t: t.prod(1), x.numpy().copy())
    assert torch.tensor([[1, 2], [3, 4]]).cumsum(axis=None).numpy().tolist() == [1, 3, 6, 10]
    assert torch.tensor([3, 1, 2]).cumsum(0).dtype == np.int64


def test_logsumexp_is_stable_and_norm_of_zero_has_zero_gradient():
    x = torch.tensor([[1000.0, 1000.0], [-1000.0, -1001.0], [-np.inf, -np.inf]])
    out = x.logsumexp(dim=1).numpy()
    assert np.allclose(out[:2], [1000 + np.log(2), -1000 + np.log1p(np.exp(-1))]) and out[2] == -np.inf
    z = torch.zeros(2, 3, requires_grad=True)
    z.norm().backward()
    assert z.grad.numpy().tolist() == [[0, 0, 0]] * 2
    assert torch.norm(torch.tensor([3.0, 0.0, 4.0]), p=0).item() == 2.0
    with pytest.raises(ValueError, match="'nuc' is not supported"):
        z.norm(p="nuc")


def test_floor_divide_and_remainder():
    a = torch.tensor([-7, 7, 8])
    assert (a // 2).numpy().tolist() == [-4, 3, 4] and (a % 3).numpy().tolist() == [2, 1, 2]
    assert (a // 2).dtype == np.int64 and (17 // torch.tensor([5])).numpy().tolist() == [3]
    assert (7.5 % torch.tensor([2.0])).numpy().tolist() == [1.5]
    x = torch.tensor([-7.0, 7.5], requires_grad=True)
    assert not (x // 2).requires_grad                # torch has no derivative for floor_divide
    y = torch.tensor([2.0, -3.0], requires_grad=True)
    (x % y).sum().backward()
    assert x.grad.numpy().tolist() == [1, 1] and y.grad.numpy().tolist() == [4, 3]   # torch's values
    assert (x % 2.0).dtype == np.float32


def test_predicates_allclose_equal():
    x = torch.tensor([1.0, float("nan"), float("inf"), -float("inf")])
    assert x.isnan().numpy().tolist() == [False, True, False, False]
    assert torch.isinf(x).numpy().tolist() == [False, False, True, True]
    assert torch.isfinite(x).numpy().tolist() == [True, False, False, False]
    assert x.isnan().dtype == np.bool_
    a = torch.tensor([1.0, 2.0])
    assert torch.allclose(a, a + 1e-9) and not torch.allclose(a, a + 1e-3) and a.allclose(a)
    assert torch.equal(a, torch.tensor([1.0, 2.0])) and not torch.equal(a, torch.tensor([1.0]))
    assert not a.equal(torch.tensor([1.0, 3.0])) and isinstance(torch.equal(a, a), bool)


# ---------------------------------------------------------------- factories and Tensor.new_*


def test_factories():
    x = torch.ones(2, 3, dtype="float64")
    assert torch.full_like(x, 7).numpy().tolist() == [[7] * 3] * 2
    assert torch.full_like(x, 7).dtype == np.float64
    assert torch.full_like(torch.zeros(2, dtype=torch.long), 2.7).dtype == np.int64
    assert torch.empty_like(x).shape == (2, 3)
    assert torch.zeros_like(x, device="cpu").device == "cpu"
    assert torch.eye(3).numpy().tolist() == np.eye(3).tolist() and torch.eye(2, 3).shape == (2, 3)
    assert torch.eye(2).dtype == np.float32
    assert np.allclose(torch.linspace(0, 1, 5).numpy(), [0, 0.25, 0.5, 0.75, 1])
    assert torch.linspace(0, 1, 5).dtype == np.float32
    torch.manual_seed(3)
    p1 = torch.randperm(10)
    torch.manual_seed(3)
    assert torch.randperm(10).numpy().tolist() == p1.numpy().tolist()
    assert sorted(p1.numpy().tolist()) == list(range(10)) and p1.dtype == np.int64
    assert torch.randperm(5, seed=1).numpy().tolist() == torch.randperm(5, seed=1).numpy().tolist()
    r = torch.rand_like(x, seed=0)
    assert r.shape == (2, 3) and r.dtype == np.float64 and (r.numpy() >= 0).all()
    assert torch.randn_like(x, seed=0).numpy().tolist() == torch.randn_like(x, seed=0).numpy().tolist()
    assert torch.randn_like(x, requires_grad=True).requires_grad


def test_new_factories_and_tolist():
    x = torch.ones(2, dtype="float64")
    assert x.new_zeros(2, 3).shape == (2, 3) and x.new_zeros((2, 3)).dtype == np.float64
    assert x.new_ones(3).numpy().tolist() == [1, 1, 1]
    assert x.new_full((2,), 5).numpy().tolist() == [5, 5] and x.new_full((2,), 5).dtype == np.float64
    assert x.new_empty(4).shape == (4,)
    assert x.new_zeros(2, dtype=torch.long).dtype == np.int64
    src = np.array([1.0, 2.0])
    t = x.new_tensor(src)
    src[0] = 9.0
    assert t.numpy().tolist() == [1, 2] and t.dtype == np.float64     # a copy, x's dtype
    assert x.tolist() == [1.0, 1.0] and x.is_floating_point()
    assert not torch.zeros(2, dtype=torch.long).is_floating_point()


# ---------------------------------------------------------------- grad mode, devices, cuda


def test_set_grad_enabled_and_inference_mode():
    w = torch.ones(2, requires_grad=True)
    with torch.set_grad_enabled(False):
        assert not (w * 2).requires_grad
    assert torch.is_grad_enabled() and (w * 2).requires_grad
    for train in (True, False):                         # the usual train/eval loop idiom
        with torch.set_grad_enabled(train):
            assert (w * 2).requires_grad is train
    torch.set_grad_enabled(False)                       # as a plain call: takes effect at once
    try:
        assert not torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)
    assert torch.is_grad_enabled()

    @torch.set_grad_enabled(False)
    def evaluate():
        return (w * 2).requires_grad
    assert torch.is_grad_enabled() and evaluate() is False and torch.is_grad_enabled()

    with torch.inference_mode():
        assert not (w * 2).requires_grad
    with torch.inference_mode(False):
        assert (w * 2).requires_grad

    @torch.inference_mode
    def predict():
        return (w * 2).requires_grad
    assert predict() is False and torch.is_grad_enabled()
    assert torch.is_tensor(w) and not torch.is_tensor(np.ones(2))


def test_device_objects_compare_with_tensor_devices():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.ones(2).to(device)
    assert x.device == device and str(device) in ("cpu", "cuda:0")
    assert torch.device("cpu") == "cpu" and torch.device("cpu").type == "cpu"
    assert torch.device("cpu").index is None
    cuda1 = torch.device("cuda", 1)
    assert cuda1 == "cuda:1" and cuda1.type == "cuda" and cuda1.index == 1
    assert torch.device("cuda") == "cuda:0" and torch.device(torch.device("cpu")) == "cpu"
    assert torch.ones(1).device.type == "cpu" and f"{torch.ones(1).device}" == "cpu"
    assert isinstance(torch.ones(1).device, torch.device)
    assert torch.ones(1).to(torch.device("cpu")).device == "cpu"
    with pytest.raises(ValueError, match="unknown device"):
        torch.device("tpu")


def test_cuda_module_matches_the_backend():
    from engine import backend
    assert torch.cuda.is_available() == backend.gpu_available()
    assert torch.cuda.device_count() == backend.gpu_count()
    assert (torch.cuda.device_count() > 0) == torch.cuda.is_available()
    torch.cuda.manual_seed_all(0)                       # accepted: one generator covers both
    torch.cuda.synchronize()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            torch.cuda.current_device()


# ---------------------------------------------------------------- the same on cupy


def _run_on(fn, arrays, device):
    ts = [torch.tensor(a, dtype="float64", requires_grad=True, device=device) if a.dtype.kind == "f"
          else torch.tensor(a, device=device) for a in arrays]
    out = fn(*ts)
    proj = np.random.default_rng(7).standard_normal(out.shape)
    if out.requires_grad:
        (out * torch.tensor(proj, dtype="float64", device=device)).sum().backward()
    return out.numpy(), [t.grad.numpy() if t.grad is not None else None for t in ts]


_I = np.array([[0, 0, 2, 1], [2, 2, 2, 0]])
GPU_CASES = ([(f"einsum {eq}", (lambda *xs, eq=eq: torch.einsum(eq, *xs)), shapes) for eq, shapes in EINSUM]
             + [(name, fn, [(3, 4)]) for name, fn, _ in UNARY if name != "rsqrt"]
             + [("rsqrt", lambda t: (t * t + 0.5).rsqrt(), [(3, 4)]),
                ("bmm", torch.bmm, [(2, 3, 4), (2, 4, 5)]),
                ("gather", lambda t, i: t.gather(0, i), [(3, 4), _I]),
                ("index_select", lambda t, i: t.index_select(1, i), [(3, 4), np.array([3, 3, 0])]),
                ("split", lambda t: torch.cat([p * (k + 1) for k, p in enumerate(t.split([1, 3], 1))], 1),
                 [(3, 4)]),
                ("chunk", lambda t: torch.cat([p * (k + 1) for k, p in enumerate(t.chunk(2))]), [(3, 4)]),
                ("unbind", lambda t: torch.stack([u * (k + 1) for k, u in enumerate(t.unbind(1))]), [(3, 4)]),
                ("flip", lambda t: t.flip(0, 1), [(3, 4)]),
                ("tril", lambda t: t.tril(-1) + t.triu(1) * 2, [(2, 3, 4)]),
                ("repeat", lambda t: t.repeat(2, 1, 3), [(3, 4)]),
                ("sort", lambda t: t.sort(dim=0, descending=True).values, [(3, 4)]),
                ("topk", lambda t: t.topk(2, largest=False).values, [(3, 4)]),
                ("sort indices", lambda t: t.sort(1).indices, [(3, 4)]),
                ("topk indices", lambda t: t.topk(3).indices, [(3, 4)]),
                ("floordiv", lambda t: t // 0.3, [(3, 4)]),
                ("remainder", lambda a, b: a % (b * b + 0.5), [(3, 4), (3, 4)]),
                ("isfinite", lambda t: t.isfinite() & ~t.isnan(), [np.array([1.0, np.nan, np.inf])])])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs cupy and a CUDA device")
@pytest.mark.parametrize("name,fn,specs", GPU_CASES, ids=[c[0] for c in GPU_CASES])
def test_same_values_and_gradients_on_gpu(name, fn, specs):
    arrays = [s if isinstance(s, np.ndarray) else rnd(*s, seed=i) for i, s in enumerate(specs)]
    out, grads = _run_on(fn, arrays, "cpu")
    gout, ggrads = _run_on(fn, arrays, "cuda:0")
    np.testing.assert_allclose(gout, out, rtol=1e-9, atol=1e-10)
    for g, gg in zip(grads, ggrads):
        assert (g is None) == (gg is None)
        if g is not None:
            np.testing.assert_allclose(gg, g, rtol=1e-9, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs cupy and a CUDA device")
def test_devices_factories_and_predicates_on_gpu():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    x = torch.ones(2, 3).to(device)
    assert x.device == device == "cuda:0" and x.device.type == "cuda" and x.device.index == 0
    assert torch.cuda.device_count() >= 1 and torch.cuda.current_device() == 0
    torch.cuda.synchronize()
    for t in (torch.eye(3, device=device), torch.linspace(0, 1, 4, device=device),
              torch.randperm(5, device=device, seed=0), torch.full_like(x, 2.0), torch.randn_like(x),
              x.new_zeros(2), x.new_tensor([1.0, 2.0]), torch.zeros_like(x, device="cpu").to(device)):
        assert t.device == "cuda:0"
    assert torch.randperm(5, device=device, seed=0).tolist() == torch.randperm(5, seed=0).tolist()
    assert torch.allclose(x, x + 1e-9) and torch.equal(x, x.clone()) and not torch.equal(x, x * 2)
    assert x.isnan().device == "cuda:0" and not x.isnan().any().item()
