"""torch.utils.data's samplers, ConcatDataset / IterableDataset and DataLoader(batch_sampler=...).

Random orders come from numpy, so they are compared with torch's *semantics* (which indices, how
many, batch boundaries, what is refused), not with torch's numbers; where torch is installed the
deterministic parts (sequential orders, batches, lengths, errors) are checked against it directly.
"""
import numpy as np
import pytest

import engine
from engine.data import (BatchSampler, ChainDataset, ConcatDataset, DataLoader, Dataset, IterableDataset,
                         RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler, TensorDataset,
                         WeightedRandomSampler, default_collate, default_convert, get_worker_info)


def _ds(n=10, start=0):
    return TensorDataset(np.arange(start, start + n, dtype=np.float32).reshape(n, 1), np.arange(start, start + n))


def _labels(loader):
    return [b[1].numpy().tolist() for b in loader]


# ---------------------------------------------------------------- samplers
def test_sequential_and_batch_sampler():
    assert list(SequentialSampler(range(5))) == [0, 1, 2, 3, 4]
    bs = BatchSampler(SequentialSampler(range(10)), batch_size=4, drop_last=False)
    assert list(bs) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]] and len(bs) == 3
    bs = BatchSampler(range(10), 4, drop_last=True)
    assert list(bs) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(bs) == 2
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="batch_size"):
            BatchSampler(range(3), bad, False)
    with pytest.raises(TypeError, match="drop_last"):
        BatchSampler(range(3), 2, 1)


def test_random_sampler_permutations_and_replacement():
    engine.manual_seed(0)
    s = RandomSampler(range(10))
    e0, e1 = list(s), list(s)
    assert sorted(e0) == list(range(10)) and sorted(e1) == list(range(10)) and e0 != e1   # new each epoch
    assert len(s) == 10
    more = RandomSampler(range(4), num_samples=10)          # 2 whole permutations + 2 of a third
    got = list(more)
    assert len(got) == 10 == len(more)
    assert sorted(got[:4]) == sorted(got[4:8]) == [0, 1, 2, 3] and len(set(got[8:])) == 2
    rep = RandomSampler(range(3), replacement=True, num_samples=300)
    draws = np.array(list(rep))
    assert len(draws) == 300 and set(draws.tolist()) == {0, 1, 2}
    assert len(list(RandomSampler(range(5), replacement=True))) == 5
    with pytest.raises(TypeError, match="replacement"):
        RandomSampler(range(3), replacement=1)
    with pytest.raises(ValueError, match="num_samples"):
        RandomSampler(range(3), num_samples=0)


def test_random_samplers_follow_manual_seed_and_generator():
    """Same seed -> same orders (every rank of a job alike); generator= takes precedence."""
    def orders():
        ws = WeightedRandomSampler([0.1, 0.2, 0.7], num_samples=6)
        return [list(RandomSampler(range(8))), list(SubsetRandomSampler([3, 5, 7, 9])), list(ws),
                list(RandomSampler(range(8), replacement=True))]
    engine.manual_seed(123)
    a = orders()
    engine.manual_seed(123)
    b = orders()
    engine.manual_seed(124)
    c = orders()
    assert a == b and a != c
    g1, g2 = np.random.default_rng(5), np.random.default_rng(5)
    engine.manual_seed(1)
    x = list(RandomSampler(range(20), generator=g1))
    engine.manual_seed(2)
    assert list(RandomSampler(range(20), generator=g2)) == x


def test_subset_random_sampler():
    s = SubsetRandomSampler(np.array([10, 20, 30, 40]), generator=np.random.default_rng(0))
    got = list(s)
    assert sorted(got) == [10, 20, 30, 40] and len(s) == 4


def test_weighted_random_sampler():
    rng = np.random.default_rng(0)
    s = WeightedRandomSampler([1.0, 0.0, 3.0], num_samples=4000, generator=rng)    # need not sum to 1
    counts = np.bincount(list(s), minlength=3)
    assert counts[1] == 0 and abs(counts[2] / counts[0] - 3.0) < 0.4
    no_rep = list(WeightedRandomSampler(np.array([5, 1, 1, 1, 0.0]), 4, replacement=False, generator=rng))
    assert sorted(no_rep) == [0, 1, 2, 3]
    w = engine.tensor(np.array([1.0, 2.0]))                # engine Tensors work as weights
    assert len(list(WeightedRandomSampler(w, 3))) == 3
    with pytest.raises(ValueError, match="distinct"):
        WeightedRandomSampler([1.0, 1.0, 0.0], 3, replacement=False)
    with pytest.raises(ValueError, match="non-negative"):
        WeightedRandomSampler([1.0, -1.0], 2)
    with pytest.raises(ValueError, match="1-D"):
        WeightedRandomSampler([[1.0, 1.0]], 2)
    with pytest.raises(ValueError, match="num_samples"):
        WeightedRandomSampler([1.0, 1.0], 0)


# ---------------------------------------------------------------- DataLoader
def test_loader_with_samplers_and_batch_sampler():
    ds = _ds(10)
    engine.manual_seed(7)
    loader = DataLoader(ds, batch_size=3, sampler=RandomSampler(ds))
    e0, e1 = sum(_labels(loader), []), sum(_labels(loader), [])
    assert sorted(e0) == list(range(10)) and e0 != e1 and len(loader) == 4
    bl = DataLoader(ds, batch_sampler=BatchSampler(SequentialSampler(ds), 4, drop_last=True))
    assert _labels(bl) == [[0, 1, 2, 3], [4, 5, 6, 7]] and len(bl) == 2 and bl.batch_size is None
    custom = DataLoader(ds, batch_sampler=[[9, 0], [3], [1, 2, 4]])      # any iterable of index lists
    assert _labels(custom) == [[9, 0], [3], [1, 2, 4]]
    assert custom.epoch_indices().tolist() == [9, 0, 3, 1, 2, 4]
    for bad in (dict(batch_size=2), dict(shuffle=True), dict(sampler=range(10)), dict(drop_last=True)):
        with pytest.raises(ValueError, match="mutually exclusive"):
            DataLoader(ds, batch_sampler=[[0]], **bad)


def test_batch_sampler_forwards_set_epoch():
    class Sharded:
        epoch = None

        def set_epoch(self, e):
            self.epoch = e

        def __iter__(self):
            return iter(range(6))

        def __len__(self):
            return 6
    inner = Sharded()
    loader = DataLoader(_ds(6), batch_sampler=BatchSampler(inner, 4, False))
    loader.set_epoch(3)
    assert inner.epoch == 3
    assert _labels(loader) == [[0, 1, 2, 3], [4, 5]]


def test_generic_path_with_batch_sampler_and_weighted_sampler():
    class Plain(Dataset):                   # __getitem__ only: per-sample path + default_collate
        def __len__(self):
            return 6

        def __getitem__(self, i):
            return {"x": np.full(2, i, np.float32), "y": i}
    loader = DataLoader(Plain(), batch_sampler=BatchSampler(range(6), 4, False))
    first = next(iter(loader))
    assert first["y"].numpy().tolist() == [0, 1, 2, 3] and first["x"].shape == (4, 2)
    w = DataLoader(Plain(), batch_size=5, sampler=WeightedRandomSampler([0, 0, 1, 0, 0, 0], 5))
    assert next(iter(w))["y"].numpy().tolist() == [2] * 5


def test_concat_dataset():
    a, b, c = _ds(3), _ds(4, start=100), _ds(2, start=200)
    cat = ConcatDataset([a, b, c])
    assert len(cat) == 9 and cat.cumulative_sizes == [3, 7, 9]
    assert int(cat[3][1]) == 100 and int(cat[-1][1]) == 201 and int(cat[2][1]) == 2
    with pytest.raises(IndexError):
        cat[9]
    assert hasattr(cat, "get_batch")
    x, y = cat.get_batch([8, 0, 4, 2, 7])
    assert y.tolist() == [201, 0, 101, 2, 200] and x[:, 0].tolist() == [201, 0, 101, 2, 200]
    assert len(a + b) == 7 and isinstance(a + b, ConcatDataset)

    class Plain(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return np.array([i], np.float32), i
    mixed = ConcatDataset([a, Plain()])
    assert not hasattr(mixed, "get_batch")                  # one part without it: per-sample path
    engine.manual_seed(0)
    fast = DataLoader(cat, batch_size=4, shuffle=True)
    engine.manual_seed(0)
    slow = DataLoader(cat, batch_size=4, shuffle=True, collate_fn=default_collate)
    assert _labels(fast) == _labels(slow)                  # collate_fn=default_collate: Tensors, as in torch
    assert _labels(DataLoader(mixed, batch_size=5)) == [[0, 1, 2, 0, 1]]
    with pytest.raises(TypeError, match="IterableDataset"):
        ConcatDataset([a, _Stream(3)])


class _Stream(IterableDataset):
    def __init__(self, n, start=0, sized=True):
        self.n, self.start, self.sized = n, start, sized

    def __iter__(self):
        assert get_worker_info() is None
        for i in range(self.start, self.start + self.n):
            yield np.full(2, i, np.float32), i

    def __len__(self):
        if not self.sized:
            raise TypeError("no length")
        return self.n


def test_iterable_dataset_and_chain():
    loader = DataLoader(_Stream(7), batch_size=3)
    assert _labels(loader) == [[0, 1, 2], [3, 4, 5], [6]] and len(loader) == 3
    assert _labels(DataLoader(_Stream(7), batch_size=3, drop_last=True)) == [[0, 1, 2], [3, 4, 5]]
    chain = _Stream(2) + _Stream(3, start=10)
    assert isinstance(chain, ChainDataset) and len(chain) == 5
    assert _labels(DataLoader(chain, batch_size=4)) == [[0, 1, 10, 11], [12]]
    with pytest.raises(ValueError, match="IterableDataset"):
        DataLoader(_Stream(3), shuffle=True)
    with pytest.raises(ValueError, match="IterableDataset"):
        DataLoader(_Stream(3), sampler=range(3))
    with pytest.raises(TypeError):
        _Stream(3)[0]
    with pytest.raises(TypeError):
        len(DataLoader(_Stream(3, sized=False), batch_size=2))
    assert _labels(DataLoader(_Stream(3, sized=False), batch_size=2)) == [[0, 1], [2]]


def test_batch_size_none_yields_samples():
    out = list(DataLoader(_ds(3), batch_size=None))
    assert len(out) == 3 and out[1][0].shape == (1,) and int(out[1][1].item()) == 1
    stream = list(DataLoader(_Stream(2), batch_size=None))   # (array, int): like torch, the int stays
    assert [s[1] for s in stream] == [0, 1] and isinstance(stream[1][0], engine.Tensor)
    assert list(DataLoader(_ds(2), batch_size=None, collate_fn=lambda s: int(s[1]))) == [0, 1]
    with pytest.raises(ValueError, match="drop_last"):
        DataLoader(_ds(2), batch_size=None, drop_last=True)


def test_default_collate_and_convert_give_tensors():
    samples = [(np.array([1.0, 2.0], np.float32), 3, {"k": np.int64(4)}), (np.array([5.0, 6.0], np.float32), 7,
                                                                           {"k": np.int64(8)})]
    x, y, d = default_collate(samples)
    assert isinstance(x, engine.Tensor) and x.shape == (2, 2) and y.numpy().tolist() == [3, 7]
    assert d["k"].numpy().tolist() == [4, 8]
    x, n, d = default_convert(samples[0])
    assert isinstance(x, engine.Tensor) and n == 3 and isinstance(d["k"], engine.Tensor)
    assert default_convert("text") == "text"
    seen = []
    loader = DataLoader(_ds(4), batch_size=2, collate_fn=lambda s: seen.append(default_collate(s)) or len(s))
    assert list(loader) == [2, 2] and isinstance(seen[0][0], engine.Tensor)


def test_sampler_base_class_is_subclassable():
    class Evens(Sampler):
        def __init__(self, n):
            self.n = n

        def __iter__(self):
            return iter(range(0, self.n, 2))

        def __len__(self):
            return (self.n + 1) // 2
    assert _labels(DataLoader(_ds(7), batch_size=3, sampler=Evens(7))) == [[0, 2, 4], [6]]


# ---------------------------------------------------------------- against torch
def test_deterministic_parts_match_torch():
    torch = pytest.importorskip("torch")
    td = torch.utils.data
    for n, bs, drop in [(10, 4, False), (10, 4, True), (8, 4, True), (3, 5, False)]:
        ours = list(BatchSampler(SequentialSampler(range(n)), bs, drop))
        theirs = list(td.BatchSampler(td.SequentialSampler(range(n)), bs, drop))
        assert ours == theirs
        assert len(BatchSampler(range(n), bs, drop)) == len(td.BatchSampler(range(n), bs, drop))
    for k, n in [(10, 4), (3, 4), (8, 4)]:
        assert len(RandomSampler(range(n), num_samples=k)) == len(td.RandomSampler(range(n), num_samples=k))
        assert len(list(RandomSampler(range(n), num_samples=k))) == len(list(td.RandomSampler(range(n),
                                                                                             num_samples=k)))
    a, b = [np.arange(3), np.arange(4)], [torch.arange(3), torch.arange(4)]
    assert ConcatDataset([TensorDataset(x) for x in a]).cumulative_sizes == \
        td.ConcatDataset([td.TensorDataset(x) for x in b]).cumulative_sizes

    class TStream(td.IterableDataset):
        def __iter__(self):
            return iter(range(7))
    tl = [b.tolist() for b in td.DataLoader(TStream(), batch_size=3, drop_last=False)]
    ol = [b.numpy().tolist() for b in DataLoader(ChainDataset([_Ints(7)]), batch_size=3)]
    assert ol == tl
    with pytest.raises(ValueError):
        td.DataLoader(TStream(), shuffle=True)
    with pytest.raises(ValueError):
        td.DataLoader(range(3), batch_sampler=[[0]], batch_size=2)
    assert len(td.DataLoader(range(10), batch_sampler=td.BatchSampler(range(10), 4, False))) == \
        len(DataLoader(_ds(10), batch_sampler=BatchSampler(range(10), 4, False)))


class _Ints(IterableDataset):
    def __init__(self, n):
        self.n = n

    def __iter__(self):
        return iter(range(self.n))
