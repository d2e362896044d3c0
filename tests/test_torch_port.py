"""PyTorch code ported by changing its imports: the idioms a torch user types without thinking.

Each case was an AttributeError, a TypeError or (worse) a silently different result before; the
expected values are PyTorch's documented behaviour (cross-checked against torch when installed).
"""
import os
import subprocess
import sys

import numpy as np
import pytest

import engine as torch
from engine import nn
from engine.data import DataLoader, TensorDataset, random_split

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_max_and_min_with_a_dim_return_values_and_indices():
    x = torch.tensor([[1.0, 5.0, 2.0], [7.0, 0.0, 3.0]], requires_grad=True)
    values, indices = torch.max(x, 1)
    assert values.numpy().tolist() == [5.0, 7.0] and indices.numpy().tolist() == [1, 0]
    assert x.max(1)[1].numpy().tolist() == [1, 0]                 # `pred = out.max(1)[1]`
    assert x.min(dim=0).indices.numpy().tolist() == [0, 1, 0]
    assert x.max(dim=1, keepdim=True).values.shape == (2, 1)
    assert x.max(axis=1).numpy().tolist() == [5.0, 7.0]             # NumPy spelling: values only
    assert float(x.max()) == 7.0
    assert torch.max(x, torch.zeros(2, 3)).shape == (2, 3)          # elementwise, as torch.max(a, b)
    x.max(dim=1).values.sum().backward()
    assert x.grad.numpy().tolist() == [[0, 1, 0], [1, 0, 0]]
    with pytest.raises(TypeError, match="use .values"):
        np.asarray(x.max(dim=1))                                    # not broadcast by accident


def test_var_and_std_follow_torch_with_dim_and_numpy_with_axis():
    data = np.array([[1.0, 2.0, 4.0], [3.0, 5.0, 9.0]], np.float32)
    x = torch.tensor(data)
    assert np.allclose(x.var(dim=1).numpy(), data.var(axis=1, ddof=1))
    assert np.allclose(x.var(1).numpy(), data.var(axis=1, ddof=1))
    assert np.allclose(x.std(dim=0, unbiased=False).numpy(), data.std(axis=0))
    assert np.allclose(x.var(axis=1).numpy(), data.var(axis=1))
    assert np.allclose(torch.std(x, dim=1, correction=0).numpy(), data.std(axis=1))


def test_cat_and_stack_with_dim_convert_and_format():
    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    assert torch.cat([a, b], dim=1).shape == (2, 6) and torch.stack([a, b], dim=0).shape == (2, 2, 3)
    assert torch.cat([a, b]).shape == (4, 3)
    assert a.to(torch.float64).dtype == np.float64 and a.to(b).dtype == np.float32
    assert a.to("cpu", non_blocking=True) is not None
    assert f"{torch.tensor(0.123456):.3f}" == "0.123"
    assert torch.long == "int64" and torch.float == "float32" and torch.bool == "bool"
    assert torch.zeros(2, dtype=torch.long).dtype == np.int64


def test_in_place_updates_where_torch_allows_them():
    ema = torch.ones(3)
    p = nn.Parameter(torch.full((3,), 3.0).data)
    with torch.no_grad():
        ema.mul_(0.5).add_(p, alpha=0.5)
        p.sub_(torch.ones(3))
    assert ema.numpy().tolist() == [2.0, 2.0, 2.0] and p.numpy().tolist() == [2.0, 2.0, 2.0]
    with pytest.raises(RuntimeError, match="in-place update of a tensor that requires grad"):
        p.add_(1.0)
    ema.clamp_(max=1.5).masked_fill_(torch.tensor([True, False, False]), 0.0)
    assert ema.numpy().tolist() == [0.0, 1.5, 1.5]
    toks = torch.zeros(2, 4, dtype=torch.long)
    toks[1, :2] = torch.tensor([7, 8])                       # collate_fn padding
    assert toks.numpy().tolist() == [[0, 0, 0, 0], [7, 8, 0, 0]]
    with pytest.raises(RuntimeError, match="item assignment"):
        p[0] = 1.0
    ema.zero_()
    assert not ema.numpy().any()


def test_masked_fill_expand_and_friends_are_differentiable():
    x = torch.tensor([[1.0, -2.0], [3.0, -4.0]], requires_grad=True)
    y = x.masked_fill(x < 0, 0.0).sum() + x[:, :1].expand(2, 3).sum()
    y.backward()
    assert x.grad.numpy().tolist() == [[4.0, 0.0], [4.0, 0.0]]
    assert x.view_as(torch.zeros(4)).shape == (4,) and x.contiguous() is x
    assert np.allclose(x.softmax(dim=1).numpy().sum(axis=1), 1.0)
    mask = (x > 0) & (x < 2)
    assert mask.numpy().tolist() == [[True, False], [False, False]] and (~mask).numpy().sum() == 3


def test_dataloader_and_random_split_follow_manual_seed():
    ds = TensorDataset(np.arange(100, dtype=np.float32), np.arange(100))
    orders = []
    for _ in range(2):
        torch.manual_seed(42)
        train, val = random_split(ds, [80, 20])
        loader = DataLoader(train, batch_size=10, shuffle=True, num_workers=4, pin_memory=True,
                            persistent_workers=False)
        orders.append((list(val.indices), [b[1].numpy().tolist() for b in loader]))
    # the same on every rank of a job that seeds alike, as with torch's global generator
    assert orders[0] == orders[1]
    with pytest.raises(TypeError, match="unexpected arguments"):
        DataLoader(ds, batch_size=4, num_worker=2)


def test_load_takes_map_location(tmp_path):
    torch.save({"w": torch.ones(2)}, str(tmp_path / "m.pt"))
    assert torch.load(str(tmp_path / "m.pt"), map_location="cpu", weights_only=True)["w"].numpy().tolist() == [1, 1]


def test_ddp_wrapper_takes_torch_arguments():
    from cluster import DistributedDataParallel
    import comm
    model = nn.Sequential(nn.Linear(3, 2))
    ddp = DistributedDataParallel(model, comm.init("local"), device_ids=[0], output_device=0,
                                  gradient_as_bucket_view=True)
    assert ddp.to("cpu") is ddp and ddp.module is model
    assert list(ddp.state_dict(prefix="m.")) == ["m.0.weight", "m.0.bias"]
    assert [n for n, _ in ddp.named_parameters(prefix="m")] == ["m.0.weight", "m.0.bias"]
    ddp(torch.ones(4, 3)).sum().backward()
    ddp.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    assert repr(ddp).startswith("DistributedDataParallel(")
    with pytest.raises(TypeError, match="unexpected arguments"):
        DistributedDataParallel(model, comm.init("local"), bucket_mb=5)


DIST = '''
import datetime
import engine as torch
import cluster.distributed as dist
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
t = torch.tensor([float(rank + 1), 10.0])
dist.all_reduce(t, op=dist.ReduceOp.SUM)
m = torch.tensor([float(rank)])
dist.all_reduce(m, op=dist.ReduceOp.AVG)
b = torch.tensor([float(rank)])
dist.broadcast(b, src=1)
g = [torch.zeros(2) for _ in range(world)]
dist.all_gather(g, torch.tensor([rank, rank], dtype=torch.float32))
objs = [None] * world
dist.all_gather_object(objs, {"rank": rank})
work = dist.barrier(async_op=True)
print("RESULT", rank, world, t.numpy().tolist(), m.numpy().tolist(), b.numpy().tolist(),
      [x.numpy().tolist() for x in g], objs, work.wait(), dist.get_backend(), flush=True)
r = torch.tensor([float(rank + 2)])
dist.reduce(r, dst=1, op=dist.ReduceOp.MAX)
gl = [torch.zeros(3) for _ in range(world)] if rank == 0 else None
dist.gather(torch.full((3,), float(rank)), gl, dst=0)
sc = torch.zeros(2)
dist.scatter(sc, [torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])] if rank == 1 else None, src=1)
big = torch.zeros(world * 2)
dist.all_gather_into_tensor(big, torch.tensor([float(rank), 5.0]))
rs = torch.zeros(2)
dist.reduce_scatter_tensor(rs, torch.arange(4, dtype=torch.float32) + rank)
rsl = torch.zeros(1)
dist.reduce_scatter(rsl, [torch.tensor([1.0]), torch.tensor([10.0])], op=dist.ReduceOp.SUM)
go = [None] * world if rank == 0 else None
dist.gather_object({"r": rank}, go, dst=0)
so = [None]
dist.scatter_object_list(so, ["a", "b"] if rank == 0 else None, src=0)
dist.monitored_barrier(timeout=datetime.timedelta(seconds=30))
try:
    dist.all_reduce(r, op=dist.ReduceOp.PRODUCT)
except NotImplementedError as e:
    prod = str(e)
print("MORE", rank, r.numpy().tolist(), None if gl is None else [x.numpy().tolist() for x in gl],
      sc.numpy().tolist(), big.numpy().tolist(), rs.numpy().tolist(), rsl.numpy().tolist(), go, so,
      dist.is_torchelastic_launched(), dist.is_mpi_available(), prod, flush=True)
dist.destroy_process_group()
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_torch_distributed_calls_on_two_workers(tmp_path, backend):
    if backend == "mpi":
        pytest.importorskip("mpi4py")
    (tmp_path / "dist_probe.py").write_text(DIST)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPTRAIN_", "OMPI_", "PMI_", "HYDRA_"))}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "launcher", "launch", "-n", "2", "--backend", backend,
                        "dist_probe.py"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=100)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    for r in range(2):
        assert (f"RESULT {r} 2 [3.0, 20.0] [0.5] [1.0] [[0.0, 0.0], [1.0, 1.0]] "
                f"[{{'rank': 0}}, {{'rank': 1}}] True {backend}") in p.stdout, p.stdout
    prod = "ReduceOp.PRODUCT is not supported; the collectives reduce with SUM, AVG, MAX or MIN"
    assert (f"MORE 0 [3.0] [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]] [1.0, 2.0] [0.0, 5.0, 1.0, 5.0] [1.0, 3.0] [2.0] "
            f"[{{'r': 0}}, {{'r': 1}}] ['a'] True True {prod}") in p.stdout, p.stdout
    assert (f"MORE 1 [3.0] None [3.0, 4.0] [0.0, 5.0, 1.0, 5.0] [5.0, 7.0] [20.0] None ['b'] True True "
            f"{prod}") in p.stdout, p.stdout


def test_the_same_idioms_give_torch_s_numbers():
    real = pytest.importorskip("torch")
    data = np.random.default_rng(0).standard_normal((4, 5)).astype(np.float32)
    ours, theirs = torch.tensor(data), real.tensor(data)
    assert np.array_equal(ours.max(1)[1].numpy(), theirs.max(1)[1].numpy())
    assert np.array_equal(torch.min(ours, 0).indices.numpy(), real.min(theirs, 0).indices.numpy())
    for kw in ({"dim": 1}, {"dim": 0, "unbiased": False}, {"dim": 1, "keepdim": True}):
        assert np.allclose(ours.var(**kw).numpy(), theirs.var(**kw).numpy(), rtol=1e-5)
        assert np.allclose(ours.std(**kw).numpy(), theirs.std(**kw).numpy(), rtol=1e-5)
    assert np.allclose(ours.masked_fill(ours > 0, 1.0).numpy(), theirs.masked_fill(theirs > 0, 1.0).numpy())
