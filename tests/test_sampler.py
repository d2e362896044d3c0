"""cluster.DistributedSampler: the data side of "N workers train like one"."""
import numpy as np
import pytest

from cluster.sampler import DistributedSampler


class _Data:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def _shards(n, size, **kw):
    return [list(DistributedSampler(_Data(n), r, size, **kw)) for r in range(size)]


def test_ranks_split_one_permutation_disjointly_and_cover_it():
    shards = _shards(100, 4, seed=3)
    flat = sorted(i for s in shards for i in s)
    assert flat == list(range(100))
    assert all(len(s) == 25 for s in shards)
    assert _shards(100, 4, seed=3) == shards                  # deterministic
    assert _shards(100, 4, seed=4) != shards


def test_padding_and_drop_last_give_every_rank_the_same_count():
    padded = _shards(10, 4, seed=0)                            # 10 -> 12: two samples repeat
    assert [len(s) for s in padded] == [3, 3, 3, 3]
    assert set(i for s in padded for i in s) == set(range(10))
    dropped = _shards(10, 4, seed=0, drop_last=True)
    assert [len(s) for s in dropped] == [2, 2, 2, 2]
    assert len(set(i for s in dropped for i in s)) == 8


def test_set_epoch_reshuffles_the_same_way_on_every_rank():
    a = [DistributedSampler(_Data(64), r, 2, seed=1) for r in range(2)]
    e0 = [list(s) for s in a]
    for s in a:
        s.set_epoch(1)
    e1 = [list(s) for s in a]
    assert e0 != e1
    assert sorted(e1[0] + e1[1]) == list(range(64))


@pytest.mark.parametrize("size", [2, 4])
def test_step_k_of_n_ranks_is_step_k_of_one_rank_with_the_global_batch(size):
    one = list(DistributedSampler(_Data(96), 0, 1, seed=5))
    shards = _shards(96, size, seed=5)
    gb, lb = 16, 16 // size
    for k in range(96 // gb):
        union = sorted(i for s in shards for i in s[k * lb:(k + 1) * lb])
        assert union == sorted(one[k * gb:(k + 1) * gb])


def test_state_dict_resumes_mid_epoch_on_the_same_and_on_another_world_size():
    n, gb = 96, 16
    two = [DistributedSampler(_Data(n), r, 2, seed=7) for r in range(2)]
    for s in two:
        s.advance(3 * gb // 2)                                 # 3 global steps
    state = two[0].state_dict()
    assert state["consumed"] == 3 * gb and state["num_replicas"] == 2
    again = DistributedSampler(_Data(n), 1, 2, seed=7)
    again.load_state_dict(state)
    assert list(again) == list(two[1])
    one = DistributedSampler(_Data(n), 0, 1, seed=7)
    one.load_state_dict(state)
    rest = list(one)
    assert sorted(rest[:gb]) == sorted(list(two[0])[:gb // 2] + list(two[1])[:gb // 2])
    assert len(rest) == n - 3 * gb


def test_position_that_does_not_split_over_the_new_ranks_is_a_clear_error():
    s = DistributedSampler(_Data(90), 0, 1, seed=0)
    s.advance(5)
    three = DistributedSampler(_Data(90), 0, 2, seed=0)
    with pytest.raises(ValueError, match="does not split evenly over 2 ranks"):
        three.load_state_dict(s.state_dict())


def test_old_checkpoints_with_a_per_rank_start_still_load():
    s = DistributedSampler(_Data(40), 1, 2, seed=0)
    s.load_state_dict({"epoch": 0, "start": 5, "seed": 0})
    assert len(s) == 15


def test_bad_rank_is_rejected():
    with pytest.raises(ValueError, match=r"rank 2 is not in \[0, 2\)"):
        DistributedSampler(_Data(4), 2, 2)
    assert np.array_equal(np.sort(_shards(8, 1)[0]), np.arange(8))
