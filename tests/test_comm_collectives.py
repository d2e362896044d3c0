"""Multi-process correctness of every collective on both transports, 1 to 4 ranks.

One launch per (transport, size) runs the whole batch of checks in
tests/comm_worker.py (every op, dtype, awkward size, layout, root, async order and
mismatch case) against numpy; here we check that every rank passed and that the
ranks hold bit-identical results.  4 ranks on 2 cores is oversubscribed on
purpose.  Small segments (4 KB) force the multi-segment pipeline on small arrays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest

from comm_worker_launch import REPO, WORKER, can_fake_hosts, clean_env, launch_mpi, launch_zmq

SMALL_SEGMENTS = {"DPTRAIN_COMM_SEGMENT_BYTES": "4096", "DPTRAIN_COMM_SHM_MIN_BYTES": "0"}


def _check_suite(launch, n: int, backend: str, min_checks: int, hosts=None) -> None:
    """hosts: each rank's hostname (default: all on this one)."""
    info = launch.describe()
    hosts = hosts or ["here"] * n
    counts = {h: hosts.count(h) for h in hosts}
    two_level = len(counts) > 1 and len(set(counts.values())) == 1 and min(counts.values()) > 1
    assert len(launch.results) == n, f"expected {n} results; {info}"
    for res in launch.results:
        assert "fatal" not in res, res.get("fatal")
        assert res["failures"] == [], "\n".join(res["failures"])[:8000]
        assert res["size"] == n and res["backend"] == backend
        mine = hosts[res["rank"]]
        assert res["local_rank"] == hosts[:res["rank"]].count(mine) and res["local_size"] == counts[mine]
        assert res["hierarchical"] == two_level, "two-level collectives exactly when hosts differ and are even"
        assert res["env_rank"] == res["rank"] and res["env_size"] == n
        assert res["checks"] >= min_checks
    assert sorted(r["rank"] for r in launch.results) == list(range(n))
    first = launch.results[0]["hashes"]
    assert first, "no digests recorded"
    for res in launch.results[1:]:
        diff = {k for k in first if first[k] != res["hashes"].get(k)}
        assert not diff, f"rank {res['rank']} differs from rank 0 in {sorted(diff)}"


def _shared_files():
    try:
        return {f for f in os.listdir("/dev/shm") if f.startswith("dptrain-buf-")}
    except OSError:
        return set()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_suite_mpi(n):
    before = _shared_files()
    launch = launch_mpi(n, ["suite", "--timeout", "30"], env=SMALL_SEGMENTS, timeout=100)
    _check_suite(launch, n, "mpi", 500)
    assert all(r["mpi_imported"] for r in launch.results)
    # all ranks on this host: Communicator.alloc hands out buffers the peers map (1 rank: nothing to share)
    assert all(r["shared_buffers"] == [n > 1] * 5 for r in launch.results), [r["shared_buffers"] for r in launch.results]
    assert _shared_files() <= before, "shared buffers left files in /dev/shm"


@pytest.mark.timeout(120)
def test_suite_mpi_rendezvous_sized_segments():
    """16 KB segments are above MPICH's eager limit (sends complete only once the receiver posted the
    matching receive) and cut the large array into more segments per chunk than receives are posted
    ahead: this catches ring schedules that wait for the wrong sends (a deadlock, found at 64 MB)."""
    launch = launch_mpi(4, ["suite", "--timeout", "30"], env={"DPTRAIN_COMM_SEGMENT_BYTES": "16384"}, timeout=100)
    _check_suite(launch, 4, "mpi", 500)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_suite_zmq_shared_memory(n):
    launch = launch_zmq(n, ["suite", "--timeout", "30"], env=SMALL_SEGMENTS, timeout=100)
    _check_suite(launch, n, "zmq", 260)
    assert not any(r["mpi_imported"] for r in launch.results), "the ZeroMQ backend must not initialise MPI"
    assert all(r["shared_buffers"] == [n > 1] * 5 for r in launch.results), [r["shared_buffers"] for r in launch.results]


@pytest.mark.timeout(120)
def test_suite_zmq_frames_only():
    """Same checks with shared memory off: payloads as zero-copy ZeroMQ frames (tracked sends >= 64 KB)."""
    env = {"DPTRAIN_COMM_SHM": "0", "DPTRAIN_COMM_SEGMENT_BYTES": str(128 << 10)}
    launch = launch_zmq(3, ["suite", "--timeout", "30"], env=env, timeout=100)
    _check_suite(launch, 3, "zmq", 260)
    assert all(r["shared_buffers"] == [False] * 5 for r in launch.results), "DPTRAIN_COMM_SHM=0 must share nothing"


needs_fake_hosts = pytest.mark.skipif(not can_fake_hosts(), reason="needs `unshare --uts` (root) to give ranks "
                                                                  "their own hostnames")
TWO_HOSTS = ["node-a", "node-a", "node-b", "node-b"]


@needs_fake_hosts
@pytest.mark.timeout(150)
@pytest.mark.parametrize("backend,hosts", [
    ("zmq", TWO_HOSTS), ("mpi", TWO_HOSTS),
    ("zmq", ["node-a", "node-b", "node-a", "node-b"]),                 # cyclic placement
    ("zmq", ["node-a", "node-a", "node-b", "node-b", "node-c", "node-c"]),  # 3 hosts x 2
    ("zmq", ["node-a", "node-a", "node-a", "node-b"]),                 # uneven: the flat ring
], ids=["zmq-2x2", "mpi-2x2", "zmq-2x2-cyclic", "zmq-3x2", "zmq-uneven"])
def test_suite_across_hosts_takes_the_two_level_ring(backend, hosts):
    """Ranks under their own hostnames look like several hosts: every collective goes through the
    two-level ring (inside the host, across hosts, inside again) with the same results as numpy,
    bit-identical on every rank, several segments per span; uneven hosts keep the flat ring."""
    n = len(hosts)
    launch = (launch_zmq if backend == "zmq" else launch_mpi)(n, ["suite", "--timeout", "30"], env=SMALL_SEGMENTS,
                                                               timeout=130, hosts=hosts)
    _check_suite(launch, n, backend, 260, hosts=hosts)
    # shared buffers need one host for the whole job
    assert all(r["shared_buffers"] == [False] * 5 for r in launch.results)


@needs_fake_hosts
@pytest.mark.timeout(120)
def test_two_level_ring_can_be_turned_off_and_a_rank_that_disagrees_is_named():
    """DPTRAIN_COMM_HIERARCHICAL=0 gives the flat ring; ranks that disagree fail the fingerprint
    check before any data moves (no hang, no wrong sums)."""
    flat = launch_zmq(4, ["suite", "--timeout", "30"], env={"DPTRAIN_COMM_HIERARCHICAL": "0"}, timeout=110,
                      hosts=TWO_HOSTS)
    assert all("fatal" not in r and r["failures"] == [] and not r["hierarchical"] for r in flat.results), \
        flat.describe()


@pytest.mark.timeout(60)
def test_suite_single_process_without_any_environment():
    """No launcher variables at all: a 1-rank local communicator, and MPI is never initialised."""
    with tempfile.TemporaryDirectory() as out:
        env = clean_env({"COMM_TEST_RESULT_DIR": out})
        proc = subprocess.run([sys.executable, str(WORKER), "suite"], env=env, cwd=str(REPO), timeout=50,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        files = os.listdir(out)
        assert len(files) == 1, proc.stdout[-4000:]
        with open(os.path.join(out, files[0]), encoding="utf-8") as fh:
            res = json.load(fh)
    assert res["failures"] == [], res["failures"]
    assert res["backend"] == "local" and res["size"] == 1 and res["rank"] == 0
    assert res["checks"] >= 260
    assert not res["mpi_imported"]
