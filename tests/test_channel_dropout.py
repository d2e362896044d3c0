"""nn.Dropout1d/2d/3d (F.dropout1d/2d/3d), engine.set_num_threads and
engine.utils.data.distributed: torch names that ported scripts use in their bodies."""
import warnings

import numpy as np
import pytest

import engine
from engine import nn
from engine.nn import functional as F


@pytest.mark.parametrize("layer,shape", [(nn.Dropout1d, (6, 8, 5)), (nn.Dropout1d, (8, 5)),
                                         (nn.Dropout2d, (6, 8, 4, 4)), (nn.Dropout3d, (3, 8, 2, 3, 3)),
                                         (nn.Dropout3d, (8, 2, 3, 3))])
def test_whole_channels_are_dropped_and_the_rest_scaled(layer, shape):
    engine.manual_seed(0)
    x = engine.tensor(np.random.default_rng(0).random(shape).astype(np.float32) + 1.0, requires_grad=True)
    m = layer(p=0.4)
    y = m(x)
    lead = 2 if len(shape) == {nn.Dropout1d: 3, nn.Dropout2d: 4, nn.Dropout3d: 5}[layer] else 1
    ratio = (y.data / x.data).reshape(int(np.prod(shape[:lead])), -1)
    for row in ratio:                                   # one channel of one sample: all or nothing
        assert np.allclose(row, 0.0) or np.allclose(row, 1 / 0.6)
    kept = np.mean([not np.allclose(row, 0.0) for row in ratio])
    assert 0.2 < kept < 0.95
    y.sum().backward()                                  # the gradient is the same mask
    assert np.allclose(x.grad.data, y.data / x.data)
    m.eval()
    assert m(x) is x or np.array_equal(m(x).data, x.data)


def test_channel_dropout_edges_and_errors():
    x = engine.tensor(np.ones((2, 3, 4, 4), np.float32))
    assert np.array_equal(F.dropout2d(x, 0.0).data, x.data)
    assert np.array_equal(F.dropout2d(x, 1.0).data, np.zeros_like(x.data))
    assert np.array_equal(F.dropout2d(x, 0.5, training=False).data, x.data)
    with pytest.raises(ValueError, match="between 0 and 1"):
        nn.Dropout2d(1.5)
    with pytest.raises(ValueError, match="dropout3d: expected a 4D"):
        F.dropout3d(x[0, 0], 0.5)
    # torch 2.x reads a 3D input to dropout2d as (N, C, L), and warns
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = F.dropout2d(engine.tensor(np.ones((4, 16, 5), np.float32)), 0.5)
    assert any("dropout1d" in str(w.message) for w in caught)
    for n in range(4):
        for c in range(16):
            assert len(set(y.data[n, c].tolist())) == 1


def test_channel_dropout_under_data_parallelism_draws_for_the_global_batch():
    from engine import random as erandom
    x = np.ones((4, 6, 3, 3), np.float32)
    engine.manual_seed(5)
    with erandom.batch_shard(0, 1):
        full = F.dropout2d(engine.tensor(x), 0.5).data
    halves = []
    for r in range(2):
        engine.manual_seed(5)
        with erandom.batch_shard(r, 2):
            halves.append(F.dropout2d(engine.tensor(x[r::2]), 0.5).data)
    assert np.array_equal(halves[0], full[0::2]) and np.array_equal(halves[1], full[1::2])


def test_torch_agrees_on_shapes_and_scale():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).random((5, 7, 3, 3)).astype(np.float32) + 1
    ours = F.dropout2d(engine.tensor(x), 0.3).data / x
    theirs = (torch.nn.functional.dropout2d(torch.from_numpy(x), 0.3) / torch.from_numpy(x)).numpy()
    for vals in (np.unique(ours), np.unique(theirs)):
        assert all(np.isclose(v, 0.0) or np.isclose(v, 1 / 0.7) for v in vals), vals
    assert str(nn.Dropout2d(0.3)) == str(torch.nn.Dropout2d(0.3))


def test_set_num_threads_resizes_blas():
    before = engine.get_num_threads()
    try:
        engine.set_num_threads(2)
        assert engine.get_num_threads() == 2
        engine.set_num_threads(1)
        assert engine.get_num_threads() == 1
    finally:
        engine.set_num_threads(before)
    with pytest.raises(ValueError, match="positive"):
        engine.set_num_threads(0)


def test_torch_utils_data_distributed_is_the_samplers_module(monkeypatch):
    import engine.utils.data.distributed as tud
    import cluster
    from engine.data import distributed
    assert tud is distributed and engine.utils.data.distributed is distributed
    assert issubclass(cluster.DistributedSampler, tud.DistributedSampler)
    s = tud.DistributedSampler(list(range(10)), num_replicas=3, rank=1, shuffle=False)   # torch's order
    assert list(s) == [1, 4, 7, 0] and s.num_replicas == 3 and len(s) == 4
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match="pass num_replicas= and rank="):
        tud.DistributedSampler(list(range(10)))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert list(tud.DistributedSampler(list(range(6)), shuffle=False)) == [1, 3, 5]
