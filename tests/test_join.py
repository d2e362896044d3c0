"""DDP join(): ranks with different numbers of batches train to the same model as one process
summing the gradients of the ranks that still have a batch."""
import json

import pytest

import engine
from dist_utils import run_mpi, run_zmq


def _results(out, size):
    return [json.load(open(f"{out}.rank{r}.json")) for r in range(size)]


def _check(rows, size, fp_tol):
    assert [r["rank"] for r in rows] == list(range(size))
    for name in ("sgd", "sgd_overlap", "sgd_active_divisor", "adam_zero_schedule", "sgd_zero_active_divisor",
                 "adam_schedule", "sgd_fp16", "batchnorm", "no_sync", "adam_joined_then_even"):
        assert len({r[name]["digest"] for r in rows}) == 1, (name, "ranks ended with different models")
    for r in rows:
        for name in ("sgd", "sgd_overlap", "sgd_active_divisor", "adam_zero_schedule", "sgd_zero_active_divisor",
                     "adam_schedule", "adam_joined_then_even"):
            assert r[name]["diff"] <= fp_tol, (name, r)
        # the reference adds the micro-batches' gradients in another order
        assert r["no_sync"]["diff"] <= 1e-6, r
        assert r["sgd_fp16"]["diff"] <= 1e-3, r          # float16 on the wire
        assert r["sgd"]["steps"] == 3 + 2 * r["rank"]
        # every rank stops at the first step some rank has no batch for, with the same message
        assert r["throw"]["steps"] == 3, r
        assert "rank 0 ran out of inputs" in r["throw"]["error"], r
        assert r["after"] == size
    # dividing by the ranks still training is another model than dividing by the world size
    assert rows[0]["sgd"]["digest"] != rows[0]["sgd_active_divisor"]["digest"]
    # ZeRO: the joined ranks keep updating their shard (with the scheduled learning rate)
    assert rows[0]["adam_zero_schedule"]["digest"] == rows[0]["adam_schedule"]["digest"]


@pytest.mark.timeout(150)
def test_join_on_two_zeromq_ranks(tmp_path):
    results = run_zmq(2, ["tests/join_worker.py", str(tmp_path / "r")], timeout=120)
    for rc, out, err in results:
        assert rc == 0, err[-3000:]
    # two ranks: a sum of two numbers is the same in any order, so the reference is exact
    _check(_results(tmp_path / "r", 2), 2, fp_tol=0.0)


@pytest.mark.timeout(150)
def test_join_on_three_mpi_ranks(tmp_path):
    rc, out, err = run_mpi(3, ["tests/join_worker.py", str(tmp_path / "r")], timeout=120)
    assert rc == 0, err[-3000:]
    _check(_results(tmp_path / "r", 3), 3, fp_tol=1e-6)


class _Solo:
    size, rank, local_size, backend = 1, 0, 1, "solo"


def test_one_rank_join_is_a_no_op():
    import cluster
    model = engine.nn.Linear(3, 1)
    ddp = cluster.DistributedDataParallel(model, _Solo())
    with ddp.join():
        ddp(engine.ones((2, 3))).sum().backward()
    assert ddp._join is None and model.weight.grad is not None


def test_join_refuses_sync_batchnorm_and_strangers():
    import cluster
    from engine import optim

    class Pair:                     # two ranks for the constructor; nothing is sent
        size, rank, local_size, backend = 2, 0, 2, "test"

        def broadcast(self, arr, root=0):
            return arr

    bn = cluster.convert_sync_batchnorm(engine.nn.Sequential(engine.nn.Linear(3, 4), engine.nn.BatchNorm1d(4)),
                                       Pair())
    ddp = cluster.DistributedDataParallel(bn, Pair(), overlap=False)
    with pytest.raises(cluster.DDPError, match="SyncBatchNorm"):
        with ddp.join():
            pass
    with pytest.raises(TypeError, match="cannot join"):
        cluster.Join([ddp, object()])
    with pytest.raises(cluster.DDPError, match="does not update this model"):
        cluster.Join([ddp, optim.SGD(engine.nn.Linear(2, 2).parameters(), lr=0.1)])
    cluster.Join([ddp, optim.SGD(bn.parameters(), lr=0.1)])
    with pytest.raises(cluster.DDPError, match="exactly one"):
        cluster.Join([])
