"""cluster.horovod: Horovod's PyTorch API on the job's communicator (see tests/horovod_worker.py)."""
import json

import numpy as np
import pytest

import engine
from dist_utils import run_mpi, run_zmq


def _rows(out, size):
    return [json.load(open(f"{out}.rank{r}.json")) for r in range(size)]


def _check(rows, n, fp_tol):
    assert [r["rank"] for r in rows] == list(range(n))
    for r in rows:
        assert (r["size"], r["local_size"], r["local_rank"]) == (n, n, r["rank"])
        assert (r["cross_rank"], r["cross_size"], r["homogeneous"], r["initialized"]) == (0, 1, True, True)
        # the optimizer equals one process averaging (or summing) the ranks' gradients
        for case in ("sgd", "adam", "sum", "predivide", "passes"):
            assert r[case]["diff"] <= fp_tol, (case, r[case])
            assert r[case]["isinstance"], case
        assert r["fp16"]["diff"] <= 1e-4, r["fp16"]              # float16 on the wire
        assert r["clip"]["warned"] == 0 and r["clip"]["warned_after"][0].startswith("optimizer.step() called")
        assert r["unused_grad"] is True                          # no rank had a gradient: still None
        assert "zero_grad() was called after loss.backward()" in r["zero_grad_error"]
        assert "more than backward_passes_per_step" in r["passes_error"]
        assert r["lr_after_sched"] == pytest.approx(0.05)
        # rank 0's state everywhere, even where another learning rate had been set
        assert r["optimizer_state"]["lr"] == 0.01 and r["optimizer_state"]["entries"] == 4
        assert r["optimizer_state"]["betas"] == [0.8, 0.9]
        mean = sum(range(1, n + 1)) / n
        assert r["allreduce_avg"] == [[mean] * 3] * 2
        assert r["allreduce_sum"] == r["allreduce_average_false"] == r["allreduce_scaled"] == [[mean * n] * 3] * 2
        assert r["allreduce_max"] == [[float(n)] * 3] * 2 and r["allreduce_min"] == [[1.0] * 3] * 2
        assert r["allreduce_int_avg"] == [sum(3 * k + 1 for k in range(n)) // n]
        assert np.allclose(r["allreduce_fp16"], mean, rtol=1e-3)
        assert r["input_unchanged"] == [[r["rank"] + 1.0] * 3] * 2
        assert r["allreduce_inplace"] == [float(sum(range(n)))]
        assert r["poll"] is True and r["async"] == [float(n), float(sum(range(n)))]
        assert r["grouped"] == [[float(sum(range(n)))], [2.0 * sum(range(n))]]
        assert r["allgather"] == [[float(k)] * 2 for k in range(n) for _ in range(k + 1)]
        assert r["broadcast"] == r["broadcast_inplace"] == [n + 4.0, 0.0]
        assert r["broadcast_keeps_input"] == [r["rank"] + 5.0, 0.0]
        total = sum(k + 1 for k in range(n))
        rows_ = 2 * n + 1
        counts = [rows_ // n + (1 if k < rows_ % n else 0) for k in range(n)]
        start = sum(counts[:r["rank"]])
        assert r["reducescatter"] == [float(total * i) for i in range(start, start + counts[r["rank"]])]
        want = [10.0 * src + k for src in range(n) for k in range(n + 1)
                if (k < 2 if r["rank"] == 0 else k == r["rank"] + 1)]
        assert r["alltoall"]["out"] == want
        assert r["alltoall"]["recv"] == [2 if r["rank"] == 0 else 1] * n
        assert r["broadcast_object"] == {"epoch": 3, "name": "rank0"}
        assert r["allgather_object"] == [k * k for k in range(n)]
        assert r["pickle_refused"] == "TypeError"
        assert "agree in every dimension but the first" in r["allgather_mismatch"]
        assert r["join"] == n - 1                                # the rank that arrived last
    for case in ("sgd", "adam", "sum", "predivide", "fp16", "passes", "clip"):
        assert len({r[case]["digest"] for r in rows}) == 1, (case, "ranks ended with different models")
    assert len({r["broadcast_parameters"] for r in rows}) == 1
    assert len({r["optimizer_state"]["digest"] for r in rows}) == 1
    # Sum is another model than Average; the predivide factor only moves where the division happens
    assert rows[0]["sum"]["digest"] != rows[0]["sgd"]["digest"]


@pytest.mark.timeout(150)
def test_horovod_api_on_two_mpi_ranks(tmp_path):
    rc, out, err = run_mpi(2, ["tests/horovod_worker.py", str(tmp_path / "r")], timeout=120)
    assert rc == 0, err[-3000:]
    # two ranks: a sum of two numbers is the same in any order, so the reference is exact
    _check(_rows(tmp_path / "r", 2), 2, fp_tol=0.0)


@pytest.mark.timeout(150)
def test_horovod_api_on_three_zeromq_ranks(tmp_path):
    for rc, out, err in run_zmq(3, ["tests/horovod_worker.py", str(tmp_path / "r")], timeout=120):
        assert rc == 0, err[-3000:]
    _check(_rows(tmp_path / "r", 3), 3, fp_tol=1e-6)


@pytest.fixture
def hvd(monkeypatch):
    for k in ("DPTRAIN_WORLD_SIZE", "DPTRAIN_RANK", "DPTRAIN_COMM_BACKEND", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        monkeypatch.delenv(k, raising=False)
    import cluster.horovod as hvd
    yield hvd
    hvd._state["comm"] = None          # leave the process's communicator to other tests


def test_calls_before_init_name_the_fix():
    import cluster.horovod as hvd
    hvd._state["comm"] = None
    with pytest.raises(ValueError, match=r"hvd.init\(\)"):
        hvd.rank()


def test_one_process_job_and_refusals(hvd):
    from engine import keras, nn, optim
    hvd.init()
    assert (hvd.rank(), hvd.size(), hvd.local_rank(), hvd.cross_size()) == (0, 1, 0, 1)
    model = nn.Linear(3, 2)
    opt = hvd.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), named_parameters=model.named_parameters())
    assert isinstance(opt, optim.SGD) and type(opt).__name__ == "SGD"
    with pytest.raises(ValueError, match="already a hvd.DistributedOptimizer"):
        hvd.DistributedOptimizer(opt)
    with pytest.raises(NotImplementedError, match="Adasum"):
        hvd.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), op=hvd.Adasum)
    with pytest.raises(ValueError, match="gradient_predivide_factor not supported"):
        hvd.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), op=hvd.Sum, gradient_predivide_factor=2.0)
    with pytest.raises(ValueError, match="were not named"):
        hvd.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1),
                                 named_parameters=[("weight", model.weight)])
    with pytest.raises(ValueError, match="must be unique"):
        hvd.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1),
                                 named_parameters=[("w", model.weight), ("w", model.bias)])
    with pytest.raises(ValueError, match="sequence of tuples"):
        hvd.DistributedOptimizer(optim.SGD(model.parameters(), lr=0.1), named_parameters=[model.weight])
    with pytest.raises(TypeError, match="cluster.keras.distribute"):
        hvd.DistributedOptimizer(keras.optimizers.Adam())
    with pytest.raises(NotImplementedError, match="process sets"):
        hvd.allreduce(engine.tensor(np.ones(2, np.float32)), process_set=object())
    with pytest.raises(ValueError, match="supersedes average"):
        hvd.allreduce(engine.tensor(np.ones(2, np.float32)), average=True, op=hvd.Sum)
    # one process: the optimizer is the plain one, the collectives are identities
    x = engine.tensor(np.ones((4, 3), np.float32))
    before = model.weight.data.copy()
    model(x).sum().backward()
    opt.step()
    assert np.allclose(model.weight.data, before - 0.1 * 4)
    assert hvd.allgather(x).shape == (4, 3) and hvd.broadcast(x, 0).shape == (4, 3)
    hvd.shutdown()
    assert not hvd.is_initialized()
