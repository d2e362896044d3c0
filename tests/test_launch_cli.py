"""`dptrain launch`: a script on N local workers without a config file (torchrun-style)."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = '''
import sys
import numpy as np
import cluster
ctx = cluster.init()
x = np.array([float(ctx.rank + 1)])
ctx.comm.allreduce(x)
print(f"rank {ctx.rank}/{ctx.size} backend {ctx.comm.backend} sum {x[0]:g} args {sys.argv[1:]}", flush=True)
'''


def _launch(tmp_path, *args, timeout=90, **extra_env):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPTRAIN_", "OMPI_", "PMI_", "HYDRA_"))}
    env.update(PYTHONPATH=ROOT, OMP_NUM_THREADS="1", **extra_env)
    return subprocess.run([sys.executable, "-m", "launcher", "launch", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_launch_runs_the_script_on_n_workers_with_its_own_arguments(tmp_path, backend):
    p = _launch(tmp_path, "-n", "3", "--backend", backend, "probe.py", "--lr", "0.1", "job.epochs=3")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    for r in range(3):
        # arguments after SCRIPT (even KEY=VALUE ones) belong to the script, not to dptrain
        assert f"[rank {r}] rank {r}/3 backend {backend} sum 6 args ['--lr', '0.1', 'job.epochs=3']" in p.stdout
    assert (tmp_path / "runs" / "probe" / "config.yaml").exists()        # a run directory like `run`'s


def test_launch_errors_exit_2_before_starting_anything(tmp_path):
    p = _launch(tmp_path, "-n", "0", "probe.py")
    assert p.returncode == 2 and "-n/--nproc must be a positive integer" in p.stderr
    p = _launch(tmp_path, "missing.py")
    assert p.returncode == 2 and "job.script: file" in p.stderr and "missing.py" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_launch_on_several_hosts_builds_the_mpiexec_command(tmp_path):
    p = _launch(tmp_path, "--hosts", "node1:4,node2", "-n", "2", "--dry-run", "probe.py", "--lr", "0.1")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "#   node1:4" in p.stdout and "#   node2:2" in p.stdout and "DPTRAIN_WORLD_SIZE=6" in p.stdout
    assert "# each rank runs (inside cluster.worker, which supervises it): " in p.stdout
    assert "probe.py --lr 0.1\n" in p.stdout and p.stdout.rstrip().endswith("-m cluster.worker")
    p = _launch(tmp_path, "--hosts", "node1:2,node2:2", "--dry-run", "/cluster/home/train.py")  # not here: ok
    assert p.returncode == 0 and "/cluster/home/train.py\n" in p.stdout, p.stderr
    p = _launch(tmp_path, "--hosts", "node1,node2", "--dry-run", "probe.py")
    assert p.returncode == 2 and "--hosts entry 'node1': give its number of workers (node1:4) or -n N" in p.stderr
    p = _launch(tmp_path, "--hosts", "node1:x", "probe.py")
    assert p.returncode == 2 and "expected HOST or HOST:SLOTS" in p.stderr
    p = _launch(tmp_path, "--backend", "zmq", "--dry-run", "probe.py")
    assert p.returncode == 2 and "would start the workers directly over ZeroMQ" in p.stderr
    p = _launch(tmp_path, "--hosts", "localhost:2", "--dry-run", "probe.py")   # auto: MPI here
    assert p.returncode == 0 and "-n 2" in p.stdout, p.stderr



@pytest.mark.timeout(120)
def test_launch_hints_name_its_backend_flag_not_the_config_key(tmp_path):
    """`dptrain launch` has no config: its hints must say --backend, not cluster.backend=... (which,
    typed after SCRIPT, would go to the script)."""
    p = _launch(tmp_path, "-n", "1", "probe.py")
    assert p.returncode == 0, p.stderr[-2000:]
    if "launching through mpiexec" not in p.stderr:
        pytest.skip("MPI does not start here: no backend hint to check")
    assert "--backend zmq starts the workers directly" in p.stderr and "cluster.backend" not in p.stderr

FAILING = '''
import sys
import time
import numpy as np
import cluster
ctx = cluster.init()
mode = sys.argv[1]
for i in range(200):
    if ctx.rank == 1 and i == 10:
        if mode == "raise":
            raise ValueError("rank 1 fails on purpose")
        sys.exit(3)
    if ctx.rank == 0 and i == 10 and mode == "exit":
        time.sleep(40)                  # busy elsewhere: must not delay the report of rank 1's exit
    ctx.comm.allreduce(np.ones(1000, np.float32))
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
@pytest.mark.parametrize("mode,code", [("raise", 1), ("exit", 3)])
def test_a_failing_rank_is_reported_at_once_on_both_backends(tmp_path, backend, mode, code):
    """Under MPI a rank that raised used to wait in MPI_Finalize for its peers: the job ended only at
    the communication timeout (60 s), blaming the wrong rank. It must end in seconds, naming rank 1."""
    import time
    (tmp_path / "failing.py").write_text(FAILING)
    t0 = time.monotonic()
    p = _launch(tmp_path, "-n", "2", "--backend", backend, "failing.py", mode)
    took = time.monotonic() - t0
    assert p.returncode == code, p.stdout[-2000:] + p.stderr[-2000:]
    assert took < 25, took
    assert f"rank 1 failed: exit code {code}" in p.stderr
    if mode == "raise":
        assert "error on rank 1: ValueError: rank 1 fails on purpose" in p.stdout + p.stderr
        assert 'failing.py", line 11' in p.stdout + p.stderr                # the script's own frame ...
        assert "runpy" not in p.stdout + p.stderr                           # ... not the wrapper's
        if backend == "zmq":   # the peer is told why (not "called fewer collectives")
            assert "rank 1 reported: rank 1 failed: ValueError: rank 1 fails on purpose" in p.stdout


STOPPED = '''
import os
import signal
import numpy as np
import cluster
ctx = cluster.init()
for i in range(100000):
    if ctx.rank == 1 and i == 20:
        os.kill(os.getpid(), signal.SIGSTOP)      # frozen mid-training: alive, silent
    ctx.comm.allreduce(np.ones(1000, np.float32))
'''


@pytest.mark.timeout(120)
def test_a_stopped_rank_is_blamed_not_the_peer_that_lost_it(tmp_path):
    """kill -STOP (Ctrl-Z, a debugger) on one rank: its peer loses the connection and stops (exit 75, an
    echo); the launcher must name the silent rank, and the peer must not call it dead."""
    (tmp_path / "stopped.py").write_text(STOPPED)
    p = _launch(tmp_path, "-n", "2", "--backend", "zmq", "stopped.py", timeout=110)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "dptrain: rank 1 failed: no heartbeat for" in p.stderr and "stopped with SIGSTOP" in p.stderr
    assert "that process is stopped (SIGSTOP, Ctrl-Z or a debugger)" in p.stdout


LAGGING = '''
import sys
import time
import numpy as np
import cluster
ctx = cluster.init()
mode = sys.argv[1]
for i in range(6 if mode == "uneven" and ctx.rank == 1 else 12):
    if mode == "stuck" and ctx.rank == 1 and i == 5:
        until = time.time() + 60
        while time.time() < until:       # busy here: alive, heartbeating, never reaching the collective
            pass
    ctx.comm.allreduce(np.ones(1000, np.float32))
'''


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_the_rank_that_never_joined_a_collective_is_named_with_its_line(tmp_path, backend):
    """Rank 1 loops forever before a collective. Ranks 0 and 2 each time out naming their ring
    neighbour (rank 0 names rank 2, which is itself waiting); the launcher must name rank 1 and show
    the line its last heartbeat found it at, not the first rank that exited."""
    import re
    (tmp_path / "lagging.py").write_text(LAGGING)
    p = _launch(tmp_path, "-n", "3", "--backend", backend, "lagging.py", "stuck", DPTRAIN_COMM_TIMEOUT="3")
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    err = p.stderr
    assert re.search(r"dptrain: rank 1 failed: it never joined allreduce #\d+: ranks 0 and 2 waited there 3 s "
                     r"and timed out", err), err[-3000:]
    assert "found it outside any collective" in err, err[-3000:]
    assert re.search(r'lagging\.py", line 1[12], in <module>\n      (while time.time\(\) < until:|pass)', err), err[-3000:]
    assert "raise the collective timeout (DPTRAIN_COMM_TIMEOUT" in err
    summary = __import__("json").loads((tmp_path / "runs/lagging/summary.json").read_text())
    assert summary["failed_rank"] == 1 and summary["failure"].startswith("it never joined allreduce #")
    assert any("lagging.py" in line for line in summary["failure_where"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_a_rank_that_ran_fewer_steps_is_named_with_the_fix(tmp_path, backend):
    """Rank 1 runs 6 steps, the others 12: rank 1 exits cleanly while the others wait in a collective
    (ZeroMQ hears its goodbye; MPI only sees the others time out). Rank 1 is named, with the fix."""
    (tmp_path / "lagging.py").write_text(LAGGING)
    p = _launch(tmp_path, "-n", "3", "--backend", backend, "lagging.py", "uneven", DPTRAIN_COMM_TIMEOUT="3")
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert "dptrain: rank 1 failed: it finished and exited" in p.stderr, p.stderr[-3000:]
    assert "the ranks ran different numbers of steps" in p.stderr and "drop_last=True" in p.stderr


TORCHRUN_STYLE = '''
import os
import cluster.distributed as dist
local_rank = int(os.environ["LOCAL_RANK"])          # as a script written for torchrun reads it
dist.init_process_group(backend="nccl")              # the backend name is ignored
print("ENV", os.environ["RANK"], os.environ["WORLD_SIZE"], local_rank, os.environ["LOCAL_WORLD_SIZE"],
      dist.get_rank(), dist.get_world_size(), os.environ["MASTER_PORT"] == os.environ["DPTRAIN_MASTER_PORT"],
      flush=True)
'''


@pytest.mark.timeout(120)
def test_scripts_written_for_torchrun_find_its_variables(tmp_path):
    (tmp_path / "torchrun_style.py").write_text(TORCHRUN_STYLE)
    p = _launch(tmp_path, "-n", "2", "--backend", "zmq", "torchrun_style.py")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    for r in range(2):
        assert f"[rank {r}] ENV {r} 2 {r} 2 {r} 2 True" in p.stdout, p.stdout
