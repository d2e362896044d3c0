"""Failure behaviour: killed peers, hung peers and broken rendezvous fail fast and say who.

Each test starts real processes (tests/comm_worker.py) with a hard wall-clock
limit in the launcher and a pytest timeout, so nothing here can hang.
"""

from __future__ import annotations

import pytest

from comm_worker_launch import can_fake_hosts, launch_mpi, launch_zmq


def _survivors(launch, victim: int):
    return [r for r in launch.results if r.get("rank") != victim]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("liveness,shared", [("1", False), ("0", False), ("1", True)],
                         ids=["pid-check", "sockets-only", "shared-buffer"])
def test_killed_peer_zmq(liveness, shared):
    """SIGKILL rank 1 in the middle of all-reduces: every other rank raises within seconds (timeout 30 s).

    sockets-only turns the same-host pid check off, so detection comes from the ZeroMQ
    disconnect of the neighbours and the ABORT they forward to rank 3 (not a neighbour of 1).
    """
    launch = launch_zmq(4, ["kill", "--timeout", "30", "--victim", "1"] + (["--shared"] if shared else []),
                        env={"DPTRAIN_COMM_LIVENESS": liveness}, timeout=50)
    survivors = _survivors(launch, 1)
    assert len(survivors) == 3, launch.describe()
    for res in survivors:
        assert res["shared"] is shared, res
        assert res["error"] == "PeerFailureError", res
        assert "rank 1 (pid" in res["message"], res["message"]
        assert res["elapsed"] < 10, f"rank {res['rank']} needed {res['elapsed']:.1f} s to notice"
        # The communicator is retired: later calls fail at once with the original error.
        assert "unusable after an earlier failure" in res["after"] and res["after_elapsed"] < 1
    assert launch.wall < 40


@pytest.mark.skipif(not can_fake_hosts(), reason="needs `unshare --uts` (root) to give ranks their own hostnames")
@pytest.mark.timeout(60)
def test_killed_peer_across_hosts_zmq():
    """2 hosts x 2 ranks (two-level ring), pid checks off: a killed rank is still noticed by every
    survivor within seconds, through the sockets of the in-host and the cross-host rings."""
    launch = launch_zmq(4, ["kill", "--timeout", "30", "--victim", "1"], env={"DPTRAIN_COMM_LIVENESS": "0"},
                        timeout=50, hosts=["node-a", "node-a", "node-b", "node-b"])
    survivors = _survivors(launch, 1)
    assert len(survivors) == 3, launch.describe()
    for res in survivors:
        assert res["error"] == "PeerFailureError" and "rank 1 (pid" in res["message"], res
        assert res["elapsed"] < 10, f"rank {res['rank']} needed {res['elapsed']:.1f} s to notice"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("shared", [False, True], ids=["private", "shared-buffer"])
def test_killed_peer_mpi(shared):
    """Under mpiexec the launcher itself tears the job down at once and names the dead process;
    survivors that notice first (pid check) raise PeerFailureError naming rank 1."""
    launch = launch_mpi(3, ["kill", "--timeout", "30", "--victim", "1"] + (["--shared"] if shared else []),
                        timeout=50)
    assert launch.returncodes[0] not in (0, None), launch.describe()
    assert launch.wall < 20, f"job took {launch.wall:.1f} s to end after a rank was killed"
    assert "signal 9" in launch.output.lower() or "EXIT CODE: 9" in launch.output, launch.describe()
    for res in _survivors(launch, 1):
        assert res["error"] == "PeerFailureError" and "rank 1 (pid" in res["message"], res


@pytest.mark.timeout(60)
@pytest.mark.parametrize("transport", ["mpi", "zmq"])
def test_hung_peer_times_out_naming_it(transport):
    """Rank 1 never joins the all-reduce: rank 0 raises CommTimeoutError after the 2 s timeout naming rank 1."""
    args = ["timeout", "--timeout", "2", "--victim", "1"]
    launch = launch_mpi(2, args, timeout=40) if transport == "mpi" else launch_zmq(2, args, timeout=40)
    res = launch.by_rank().get(0)
    assert res is not None, launch.describe()
    assert res["error"] == "CommTimeoutError" and res["is_timeout"], res
    assert "waiting for data from rank 1 (pid" in res["message"], res["message"]
    assert "DPTRAIN_COMM_TIMEOUT" in res["message"]
    assert 1.9 < res["elapsed"] < 8, res["elapsed"]


@pytest.mark.timeout(60)
def test_hung_peer_three_ranks_zmq():
    """With 3 ranks the rank right of the hung one times out naming it; the other fails as soon as it
    hears (ABORT) or times out itself; nobody waits much longer than the timeout."""
    launch = launch_zmq(3, ["timeout", "--timeout", "2", "--victim", "1"], timeout=40)
    by_rank = launch.by_rank()
    assert set(by_rank) == {0, 1, 2}, launch.describe()
    info = f"{by_rank}\n{launch.describe()}"
    assert "waiting for data from rank 1" in by_rank[2]["message"], info
    assert by_rank[0]["error"] in ("CommTimeoutError", "PeerFailureError"), info
    assert "rank 1" in by_rank[0]["message"] or "rank 2" in by_rank[0]["message"], info
    assert all(by_rank[r]["elapsed"] < 8 for r in (0, 2)), info


@pytest.mark.timeout(60)
def test_abort_from_a_rank_that_timed_out_on_us_still_names_the_hung_rank():
    """Rank 1 hangs; rank 0 (waiting for rank 2, which waits for rank 1) times out first and aborts the
    ring. Rank 2's error must still lead to rank 1, not only repeat rank 0's view that rank 2 was late."""
    launch = launch_zmq(3, ["timeout", "--timeout", "4", "--rank0-timeout", "1.5", "--victim", "1"], timeout=40)
    by_rank = launch.by_rank()
    info = f"{by_rank}\n{launch.describe()}"
    assert by_rank[0]["error"] == "CommTimeoutError" and "waiting for data from rank 2" in by_rank[0]["message"], info
    assert by_rank[2]["error"] == "PeerFailureError", info
    msg = by_rank[2]["message"]
    assert "rank 0 reported" in msg and "itself still waiting for data from rank 1 (pid" in msg, info
    assert by_rank[2]["elapsed"] < 3.5, info


@pytest.mark.timeout(60)
def test_peer_that_closed_early_is_named_zmq():
    """A rank that called comm.finalize() while the others still run a collective is reported as such
    (its BYE tells a clean close from a crash), well before the 20 s timeout."""
    launch = launch_zmq(3, ["early_close", "--timeout", "20", "--victim", "1"], timeout=50)
    by_rank = launch.by_rank()
    for r in (0, 2):
        res = by_rank.get(r)
        assert res is not None, launch.describe()
        assert res["error"] == "PeerFailureError", res
        assert "rank 1 (pid" in res["message"] and "closed its communicator" in res["message"], res
        assert res["elapsed"] < 10


@pytest.mark.timeout(30)
def test_rendezvous_without_rank0_times_out():
    launch = launch_zmq(1, ["init", "--timeout", "1.5"], ranks=[1], world=[2], timeout=20)
    (res,) = launch.results
    assert res["error"] == "CommTimeoutError", res
    assert "rendezvous" in res["message"] and "tcp://127.0.0.1:" in res["message"]
    assert res["elapsed"] < 6


@pytest.mark.timeout(30)
def test_rendezvous_world_size_disagreement():
    launch = launch_zmq(2, ["init", "--timeout", "10"], ranks=[0, 1], world=[2, 3], timeout=25)
    assert len(launch.results) == 2, launch.describe()
    for res in launch.results:
        assert res["error"] == "CommError", res
        assert "DPTRAIN_WORLD_SIZE=3" in res["message"] and "rank 0 with 2" in res["message"], res["message"]
        assert res["elapsed"] < 8


@pytest.mark.timeout(30)
def test_rendezvous_duplicate_rank():
    launch = launch_zmq(3, ["init", "--timeout", "10"], ranks=[0, 1, 1], world=[3, 3, 3], timeout=25)
    assert len(launch.results) == 3, launch.describe()
    for res in launch.results:
        assert res["error"] == "CommError", res
        assert "two processes claim rank 1" in res["message"], res["message"]


RAISES = """
import numpy as np
import comm
c = comm.init()
for i in range(50):
    if c.rank == 1 and i == 5:
        raise ValueError("rank 1 raises on purpose")
    c.allreduce(np.ones(100, np.float32))
"""


@pytest.mark.timeout(60)
def test_uncaught_exception_under_plain_mpiexec_aborts_the_job_at_once(tmp_path):
    """Without the abort, rank 1 would wait in MPI_Finalize and rank 0 in its all-reduce until the
    communication timeout (here 30 s) — and the timeout message would blame rank 1 for hanging."""
    import time
    from dist_utils import run_mpi
    from launcher import shmclean
    script = tmp_path / "raises.py"
    script.write_text(RAISES)
    before = shmclean.snapshot()
    t0 = time.monotonic()
    rc, out, err = run_mpi(2, [str(script)], timeout=50, env={"DPTRAIN_COMM_TIMEOUT": "30"})
    took = time.monotonic() - t0
    # an aborted job cannot unlink its MPICH segment: remove it once the killed ranks are gone
    for _ in range(50):
        if not shmclean.remove_orphans(before) and not (shmclean.snapshot() - before):
            break
        time.sleep(0.1)
    assert rc != 0 and took < 15
    assert "ValueError: rank 1 raises on purpose" in err and "MPI_Abort" in out + err


@pytest.mark.timeout(60)
def test_mpi_ranks_that_each_see_a_world_of_one_are_refused():
    """srun without --mpi=pmi2 (or a rank started without mpiexec) gives every rank its own
    1-rank MPI_COMM_WORLD: they would all call themselves rank 0 and train alone."""
    import os
    import subprocess
    import sys
    pytest.importorskip("mpi4py")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPTRAIN_", "PMI_", "OMPI_", "HYDRA_"))}
    env.update(DPTRAIN_RANK="0", DPTRAIN_WORLD_SIZE="2", DPTRAIN_MASTER_ADDR="127.0.0.1",
               DPTRAIN_MASTER_PORT="29999", PYTHONPATH=root, OMP_NUM_THREADS="1")
    code = ("import comm\ntry:\n    comm.init('mpi')\nexcept comm.CommSetupError as e:\n    print(e)\n"
            "    raise SystemExit(3)\n")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=50)
    assert r.returncode == 3, r.stdout + r.stderr
    assert ("MPI_COMM_WORLD has 1 rank(s) but the launcher started 2 (DPTRAIN_WORLD_SIZE)" in r.stdout
            and "--mpi=pmi2" in r.stdout)
