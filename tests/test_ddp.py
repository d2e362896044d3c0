"""DistributedDataParallel: N workers end where one worker ends; all-reduce overlaps backward."""
import json
import os
import sys

import numpy as np
import pytest

import engine
from comm_worker_launch import can_fake_hosts
from dist_utils import ROOT, run_mpi, run_zmq

sys.path.insert(0, os.path.dirname(__file__))
WORKER = os.path.join(ROOT, "tests", "ddp_worker.py")


def _train(backend, n, out, *args, env=None, hosts=None):
    argv = [WORKER, str(out)] + list(args)
    if backend == "zmq":
        res = run_zmq(n, argv, timeout=150, env=env, hosts=hosts)
        for r, (rc, so, se) in enumerate(res):
            assert rc == 0, f"rank {r} failed:\n{so}\n{se[-3000:]}"
    else:
        rc, so, se = run_mpi(n, argv, timeout=150, env=env, hosts=hosts)
        assert rc == 0, f"mpiexec failed:\n{so}\n{se[-3000:]}"
    params = engine.load(str(out) + ".safetensors")
    logs = [json.load(open(f"{out}.rank{r}.json")) for r in range(n)]
    return {k: np.asarray(getattr(v, "data", v)) for k, v in params.items()}, logs


def _max_diff(a, b):
    assert a.keys() == b.keys()
    return max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
@pytest.mark.parametrize("model", ["mlp_bn", "seed_cnn"])
def test_one_two_four_workers_end_with_the_same_parameters(tmp_path, backend, model):
    """Same seed and global batch: 1, 2 and 4 workers agree after 20 steps (BatchNorm + Dropout in mlp_bn)."""
    ref, _ = _train(backend, 1, tmp_path / "w1", "--model", model, "--steps", "20", "--global-batch", "16")
    for n in (2, 4):
        got, logs = _train(backend, n, tmp_path / f"w{n}", "--model", model, "--steps", "20",
                           "--global-batch", "16")
        assert all(lg["size"] == n and lg["backend"] == backend for lg in logs)
        assert all(lg["shared"] for lg in logs), "one host: the buckets should be same-host shared buffers"
        diff = _max_diff(ref, got)
        assert diff <= 1e-5, f"{n} workers on {backend}: max |param difference| = {diff:.3g}"
    # the training moved the parameters (the test would be vacuous otherwise)
    engine.manual_seed(3)
    from cluster.zoo import build_model
    kw = {"hidden": 32} if model == "mlp_bn" else {"channels": 4, "hidden": 16}
    init = {k: np.asarray(v.data) for k, v in build_model(model, **kw).state_dict().items()}
    assert _max_diff(init, ref) > 1e-3


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_16_bit_compression_stays_close_to_one_worker_and_really_rounds(tmp_path, backend):
    """compression="fp16" (and torch's fp16_compress_hook): gradients travel as float16. After 20 steps
    the parameters stay within float16 rounding of one uncompressed worker, with and without ZeRO and
    overlap, and differ from the uncompressed 2-worker run (the rounding did happen)."""
    common = ["--model", "mlp_bn", "--steps", "20", "--global-batch", "16", "--bucket-mb", "0.01"]
    ref, _ = _train(backend, 1, tmp_path / "w1", *common)
    plain, _ = _train(backend, 2, tmp_path / "plain", *common, "--overlap", "true")
    for i, extra in enumerate((["--compression", "fp16"], ["--compression", "fp16", "--zero"],
                               ["--hook", "--overlap", "true"], ["--compression", "fp16", "--zero", "--overlap", "true"])):
        got, _ = _train(backend, 2, tmp_path / f"c{i}", *common, *extra)
        diff = _max_diff(ref, got)
        assert 1e-7 < diff <= 5e-3, f"{extra} on {backend}: max |param difference| = {diff:.3g}"
        assert _max_diff(plain, got) > 0
    # bfloat16 keeps 8 mantissa bits (float16: 11), so the same 20 steps drift further, but stay close
    for i, extra in enumerate((["--compression", "bf16", "--zero"], ["--compression", "bf16", "--overlap", "true"])):
        got, _ = _train(backend, 2, tmp_path / f"b{i}", *common, *extra)
        diff = _max_diff(ref, got)
        assert 1e-6 < diff <= 0.15, f"{extra} on {backend}: max |param difference| = {diff:.3g}"
    from cluster.ddp import DDPError, DistributedDataParallel
    with pytest.raises(DDPError, match="compression='int8' is not one of None, 'fp16', 'bf16'"):
        DistributedDataParallel(engine.nn.Linear(2, 2), compression="int8")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_zero_sharded_optimizer_and_both_overlap_modes_match_one_worker(tmp_path, backend):
    """ZeroRedundancyOptimizer (reduce-scatter, shard update, all-gather) and DDP with the reductions
    inside backward (overlap) or after it end where one worker ends."""
    common = ["--model", "mlp_bn", "--steps", "20", "--global-batch", "16", "--bucket-mb", "0.01"]
    ref, _ = _train(backend, 1, tmp_path / "w1", *common)
    no_shm = {"DPTRAIN_COMM_SHM": "0"}
    for n, extra, env in ((2, ["--zero"], None), (4, ["--zero", "--overlap", "true"], None),
                          (2, ["--overlap", "true"], None), (2, ["--overlap", "false"], None),
                          (2, ["--zero"], no_shm), (4, [], no_shm)):
        got, logs = _train(backend, n, tmp_path / f"w{n}{''.join(extra)}{bool(env)}", *common, *extra, env=env)
        assert all(lg["overlap"] == ("true" in extra) for lg in logs) or "--overlap" not in extra
        # DPTRAIN_COMM_SHM=0: private buffers, the ring moves the data
        assert all(lg["shared"] is (env is None) for lg in logs), (extra, env)
        diff = _max_diff(ref, got)
        assert diff <= 1e-5, f"{n} workers {extra} on {backend}: max |param difference| = {diff:.3g}"


@pytest.mark.skipif(not can_fake_hosts(), reason="needs `unshare --uts` (root) to give ranks their own hostnames")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_two_hosts_of_two_workers_match_one_worker(tmp_path, backend):
    """4 workers as 2 hosts x 2: DDP's bucket all-reduces and ZeRO's reduce-scatter / all-gather take
    the two-level ring (no shared buffers across hosts) and still end where one worker ends."""
    common = ["--model", "mlp_bn", "--steps", "20", "--global-batch", "16", "--bucket-mb", "0.01"]
    ref, _ = _train(backend, 1, tmp_path / "w1", *common)
    hosts = ["node-a", "node-a", "node-b", "node-b"]
    for extra in (["--overlap", "true"], ["--zero"]):
        got, logs = _train(backend, 4, tmp_path / f"h{''.join(extra)}", *common, *extra, hosts=hosts)
        assert all(lg["hierarchical"] and not lg["shared"] for lg in logs), logs
        diff = _max_diff(ref, got)
        assert diff <= 1e-5, f"2 hosts x 2 workers {extra} on {backend}: max |param difference| = {diff:.3g}"


def test_overlap_auto_follows_the_spare_cores(monkeypatch):
    """Reductions overlap backward only when a core is left over for them (or on GPU)."""
    from cluster.ddp import DistributedDataParallel

    class FakeComm:
        size, rank, local_size = 2, 0, 2

        def broadcast(self, arr, root=0):
            return arr
    model = engine.nn.Linear(4, 2)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert DistributedDataParallel(model, FakeComm()).overlap is False        # 2 cores, 2 workers x 1 thread
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert DistributedDataParallel(model, FakeComm()).overlap is True         # 4 cores per worker, 1 thread
    assert DistributedDataParallel(model, FakeComm(), overlap=False).overlap is False
    with pytest.raises(ValueError, match="overlap must be True, False or 'auto'"):
        DistributedDataParallel(model, FakeComm(), overlap="yes")


@pytest.mark.timeout(200)
def test_first_bucket_allreduce_starts_before_backward_finishes(tmp_path):
    _, logs = _train("zmq", 2, tmp_path / "ov", "--model", "seed_cnn", "--steps", "3",
                     "--global-batch", "16", "--bucket-mb", "0.0005", "--overlap", "true")
    for lg in logs:
        assert lg["buckets"] >= 3 and lg["overlap"] is True
        for step in lg["log"]:
            launches = [e for e in step["events"] if e[0] == "launch"]
            assert [e[1] for e in launches] == list(range(lg["buckets"]))      # in order
            first_launch = launches[0][2]
            # bucket 0 (last layer) is on the wire before the first layer's gradient even exists
            assert first_launch < step["first_param_hook"] < step["backward_end"]
