"""`dptrain mpirun` and `dptrain script` end to end with the venv's mpiexec on localhost."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys

import pytest

from cluster.config import resolve_config
from launcher import mpirun as M

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "test_launcher_worker.py")


def _mpiexec():
    cand = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return cand if os.access(cand, os.X_OK) else shutil.which("mpiexec")


needs_mpi = pytest.mark.skipif(_mpiexec() is None, reason="no mpiexec installed")


def config(tmp_path, mode="ok", extra=""):
    p = tmp_path / "job.yaml"
    p.write_text(f"""
name: m
cluster:
  nodes:
    - host: localhost
      slots: 2
job:
  script: {WORKER}
  script_args: [{mode}]
output:
  dir: {tmp_path / 'run'}
fault_tolerance:
  heartbeat_interval: 0.2
  heartbeat_timeout: 10
  grace_period: 2
{extra}
""")
    return str(p)


def dptrain(args, cwd, timeout=60):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def envs_of(stdout):
    return {int(m.group(1)): json.loads(m.group(2))
            for m in re.finditer(r"^\[rank (\d+)\] ENV (.*)$", stdout, re.M)}


@needs_mpi
@pytest.mark.timeout(60)
def test_mpirun_end_to_end(tmp_path):
    r = dptrain(["mpirun", config(tmp_path)], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    envs = envs_of(r.stdout)
    assert set(envs) == {0, 1}
    for rank, e in envs.items():
        # the rank came from the MPI process manager, translated by launcher.mpiworker
        assert e["PMI_RANK"] == str(rank) or e["OMPI_COMM_WORLD_RANK"] == str(rank)
        assert e["DPTRAIN_RANK"] == str(rank) and e["DPTRAIN_WORLD_SIZE"] == "2"
        assert e["DPTRAIN_LOCAL_RANK"] == str(rank) and e["DPTRAIN_COMM_BACKEND"] == "mpi"
        assert e["DPTRAIN_COORD_ADDR"].startswith("tcp://127.0.0.1:") and e["OMP_NUM_THREADS"] == "1"
    assert "[rank 1] rank 1 finished" in r.stdout
    run = tmp_path / "run"
    assert (run / "hostfile").read_text() == "localhost:2\n"
    assert json.loads((run / "status/rank1.json").read_text())["exit_code"] == 0
    assert "rank 1 finished" in (run / "logs/rank1.log").read_text()
    assert json.loads((run / "summary.json").read_text())["launcher"] == "mpirun"
    co = json.loads((run / "coordinator.json").read_text())
    assert {w["state"] for w in co["workers"].values()} == {"done"}


@needs_mpi
@pytest.mark.timeout(60)
def test_mpirun_failure_names_the_rank(tmp_path):
    r = dptrain(["mpirun", config(tmp_path, "failalways")], tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert "rank 1 failed: exit code 3" in r.stderr
    assert "rank 1 is failing on purpose" in r.stderr.split("last", 1)[1]


@needs_mpi
@pytest.mark.timeout(60)
def test_mpirun_dry_run_starts_nothing(tmp_path):
    r = dptrain(["mpirun", config(tmp_path), "--dry-run", "cluster.nodes.0.slots=4"], tmp_path)
    assert r.returncode == 0, r.stderr
    cmd = r.stdout.strip().splitlines()[-1]
    assert re.search(r"mpiexec -f \S+/run/hostfile -n 4 -launcher fork \S*python\S* -m launcher.mpiworker -- ",
                     cmd), cmd
    assert "#   localhost:4" in r.stdout and "DPTRAIN_JOB_SECRET=<random" in r.stdout
    assert not (tmp_path / "run").exists()


@needs_mpi
@pytest.mark.timeout(60)
def test_script_runs_and_propagates_exit_codes(tmp_path):
    out = tmp_path / "launch.sh"
    r = dptrain(["script", config(tmp_path), "-o", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert os.access(out, os.X_OK)
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    assert "localhost:2" in text and "-m cluster.coordinator" in text and "DPTRAIN_EOF" in text
    assert "DPTRAIN_JOB_SECRET=\"${DPTRAIN_JOB_SECRET:-$(" in text          # generated at run time, not stored
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("DPTRAIN_JOB_SECRET", None)
    run = subprocess.run(["bash", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    envs = envs_of(run.stdout)
    assert set(envs) == {0, 1} and envs[1]["DPTRAIN_COMM_BACKEND"] == "mpi"
    # a free rendezvous port, the same on every rank (the ZeroMQ backend needs it), and no bash errors
    assert envs[0]["DPTRAIN_MASTER_PORT"].isdigit() and envs[0]["DPTRAIN_MASTER_PORT"] == envs[1]["DPTRAIN_MASTER_PORT"]
    assert not re.search(r"line \d+: ", run.stderr), run.stderr
    assert (tmp_path / "run/config.yaml").exists() and (tmp_path / "run/logs/rank0.log").exists()
    co = json.loads((tmp_path / "run/coordinator.json").read_text())
    assert {w["state"] for w in co["workers"].values()} == {"done"}
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "ok" and summary["exit_code"] == 0 and summary["restarts"] == 0
    assert summary["launcher"] == "script" and summary["world_size"] == 2
    # a failing job: the script exits non-zero after its restart budget
    bad = tmp_path / "bad.sh"
    assert dptrain(["script", config(tmp_path, "failalways"), "fault_tolerance.max_restarts=1", "-o", str(bad)],
                   tmp_path).returncode == 0
    run = subprocess.run(["bash", str(bad)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 3, run.stdout + run.stderr
    assert "restarting the worker group (restart 1 of 1)" in run.stderr
    assert run.stderr.count("rank 1 failed with exit code 3; last lines of its log:") == 2
    assert "    rank 1 is failing on purpose" in run.stderr
    summary = json.loads((tmp_path / "run/summary.json").read_text())   # not the previous launch's "ok"
    assert summary["status"] == "failed" and summary["exit_code"] == 3 and summary["restarts"] == 1
    assert json.loads((tmp_path / "run/summary.previous.json").read_text())["status"] == "ok"


def test_slurm_script_is_valid_bash(tmp_path):
    out = tmp_path / "job.sbatch"
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text("cluster:\n  nodes:\n    - {host: a, slots: 2, gpus: 2}\n    - {host: b, slots: 2, gpus: 2}\n"
                   f"  placement: cyclic\njob:\n  script: {WORKER}\noutput:\n  dir: {tmp_path / 'run'}\n")
    cfg = str(cfg)
    r = dptrain(["script", cfg, "--slurm", "-o", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    s = out.read_text()
    assert subprocess.run(["bash", "-n", str(out)]).returncode == 0
    for frag in ("#SBATCH --nodes=2", "#SBATCH --ntasks=4", "#SBATCH --distribution=cyclic",
                 "#SBATCH --ntasks-per-node=2", "#SBATCH --gpus-per-node=2", "srun --kill-on-bad-exit=1",
                 "-m launcher.mpiworker", "scontrol show hostnames", "export DPTRAIN_COMM_BACKEND=zmq"):
        assert frag in s, frag
    assert s.index("#SBATCH") < s.index("set -uo pipefail")


# ---------------------------------------------------------------- command construction (no MPI needed)
def _cfg(tmp_path, nodes, placement="block", **cluster):
    return resolve_config({"cluster": {"nodes": nodes, "placement": placement, **cluster},
                           "job": {"global_batch_size": 60}}, base_dir=str(tmp_path))


def test_openmpi_command_and_hostfile(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, [{"host": "n1", "slots": 2}, {"host": "n2", "slots": 1}], "cyclic",
               mpi={"extra_args": ["--bind-to", "none"]})
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    cmd = M.build_command(cfg, "/x/mpirun", "openmpi", "/r/hostfile", ["DPTRAIN_A", "OMP_NUM_THREADS"],
                          python="/py")
    assert cmd[:8] == ["/x/mpirun", "--hostfile", "/r/hostfile", "-np", "3", "--map-by", "node",
                       "--allow-run-as-root"]
    assert cmd[8:12] == ["-x", "DPTRAIN_A", "-x", "OMP_NUM_THREADS"]
    assert cmd[12:14] == ["--bind-to", "none"]
    assert cmd[14:18] == ["/py", "-m", "launcher.mpiworker", "--"] and cmd[18] == "/py"
    assert M.hostfile_text(cfg, "openmpi") == "n1 slots=2\nn2 slots=1\n"


def test_mpich_hostfiles(tmp_path):
    block = _cfg(tmp_path, [{"host": "n1", "slots": 2}, {"host": "n2", "slots": 3}])
    assert M.hostfile_text(block, "mpich") == "n1:2\nn2:3\n"
    cmd = M.build_command(block, "mpiexec", "mpich", "hf", [], python="/py")
    assert cmd[:5] == ["mpiexec", "-f", "hf", "-n", "5"] and "-launcher" not in cmd and "-ppn" not in cmd
    # cyclic, equal slots: Hydra's -ppn 1 round robin
    eq = _cfg(tmp_path, [{"host": "n1", "slots": 2}, {"host": "n2", "slots": 2}], "cyclic")
    assert "-ppn" in M.build_command(eq, "mpiexec", "mpich", "hf", [], python="/py")
    # cyclic, unequal slots: one hostfile entry per run of ranks, in rank order
    uneq = _cfg(tmp_path, [{"host": "n1", "slots": 1}, {"host": "n2", "slots": 3}, {"host": "n3", "slots": 1}],
                "cyclic")
    assert M.hostfile_text(uneq, "mpich") == "n1:1\nn2:1\nn3:1\nn2:2\n"
    local = _cfg(tmp_path, [{"host": "localhost", "slots": 2}])
    assert M.build_command(local, "mpiexec", "mpich", "hf", [], python="/py")[5:7] == ["-launcher", "fork"]


@needs_mpi
def test_flavor_detection():
    assert M.mpi_flavor(_mpiexec()) in ("mpich", "openmpi")


def test_mpich_cleanup_banner_is_kept_out_of_the_console_but_logged(tmp_path):
    import io
    from launcher.mpirun import _relay_mpiexec_output
    text = ("[rank 0] a rank's line (in its own log)\n"
            "[mpiexec@vm] a real Hydra error\n"
            "===================================================================================\n"
            "=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n"
            "=   PID 4573 RUNNING AT localhost\n"
            "=   EXIT CODE: 9\n"
            "===================================================================================\n"
            "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n"
            "This typically refers to a problem with your application.\n"
            "Please see the FAQ page for debugging suggestions\n"
            "after the banner\n")
    out = io.StringIO()
    _relay_mpiexec_output(io.BytesIO(text.encode()), out, str(tmp_path / "mpiexec.log"))
    assert out.getvalue() == "[rank 0] a rank's line (in its own log)\n[mpiexec@vm] a real Hydra error\nafter the banner\n"
    assert (tmp_path / "mpiexec.log").read_text() == text.split("\n", 1)[1]


def test_slurm_script_mpi_pmi_port_and_run_dir(tmp_path):
    """sbatch opens #SBATCH --output before the script runs: the run directory must exist; MPI ranks
    under srun need a PMI plugin; two jobs on one node must not share a fixed rendezvous port."""
    out = tmp_path / "job.sbatch"
    cfg = tmp_path / "slurm.yaml"
    cfg.write_text(f"cluster:\n  nodes:\n    - {{host: a, slots: 2}}\n  backend: mpi\noutput:\n  dir: {tmp_path / 'run'}\n")
    r = dptrain(["script", str(cfg), "--slurm", "-o", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    s = out.read_text()
    assert (tmp_path / "run").is_dir()
    assert 'srun --mpi="$SRUN_MPI"' in s and 'SRUN_MPI="${SRUN_MPI:-pmi2}"' in s
    assert "29500" not in s and "s.bind((\"\", 0))" in s
    zmq = dptrain(["script", str(cfg), "--slurm", "-o", "-", "cluster.backend=zmq"], tmp_path).stdout
    assert "--mpi" not in zmq
    # one node: the batch host's own cleanup covers it; several nodes over MPI: one cleanup task per node
    assert "launcher.shmclean --since" not in s
    two = dptrain(["script", str(cfg), "--slurm", "-o", "-", "cluster.nodes=[{host: a, slots: 1}, {host: b, slots: 1}]"],
                  tmp_path).stdout
    assert ('srun --nodes="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 --kill-on-bad-exit=0 "$PYTHON" -m '
            'launcher.shmclean --since "$DPTRAIN_LAUNCH_STARTED" --quiet || true') in two
    assert subprocess.run(["bash", "-n"], input=two, text=True).returncode == 0
    bad = dptrain(["script", str(cfg), "--slurm", "-o", str(tmp_path / "no/such/dir/job.sh")], tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


def _kill_rank1_shim_when_ready(tmp_path, timeout=40):
    """SIGKILL rank 1's launcher.mpiworker once its worker (mode "sleep") is up; its start record."""
    import time
    status, log = tmp_path / "run/status/rank1.json", tmp_path / "run/logs/rank1.log"
    deadline = time.time() + timeout
    while time.time() < deadline and not (status.exists() and log.exists() and "ready pid=" in
                                          log.read_text(errors="replace")):
        time.sleep(0.2)
    record = json.loads(status.read_text())
    os.kill(record["pid"], signal.SIGKILL)
    return record


def _assert_killed_shim_named(record, err):
    # named alone, or (when mpiexec killed the other shim before anyone looked) among the killed
    assert (f"rank 1 failed: its launcher.mpiworker (pid {record['pid']}) was killed" in err
            or re.search(rf"launcher.mpiworker processes of ranks 0, 1 \(pids \d+, {record['pid']}\) were killed",
                         err)), err


@needs_mpi
@pytest.mark.timeout(60)
def test_a_killed_mpiworker_shim_is_named_and_takes_its_worker_along(tmp_path):
    """mpiexec reports only its own exit code when a rank's shim is killed; the shim's start record
    names the rank, and its worker gets SIGTERM with it instead of running on unsupervised."""
    import time
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "launcher", "mpirun", config(tmp_path, "sleep")], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    record = _kill_rank1_shim_when_ready(tmp_path)
    assert record["exit_code"] is None and record["rank"] == 1
    worker = int(re.search(r"ready pid=(\d+)", (tmp_path / "run/logs/rank1.log").read_text()).group(1))
    out, err = proc.communicate(timeout=40)
    assert proc.returncode != 0
    _assert_killed_shim_named(record, err)
    for _ in range(50):                      # the worker went with its shim
        try:
            os.kill(worker, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker {worker} outlived its killed shim")


def test_several_killed_shims_are_all_named():
    """mpiexec kills the other ranks' processes once one is gone, often before the launcher looks:
    then every vanished rank is named rather than one picked at random."""
    import socket
    from launcher.mpirun import diagnose
    dead = []
    for _ in range(2):
        p = subprocess.Popen([sys.executable, "-c", "pass"])
        p.wait()
        dead.append(p.pid)
    results = [{"rank": r, "exit_code": None, "host": socket.gethostname(), "pid": pid, "time": 1.0}
               for r, pid in enumerate(dead)] + [{"rank": 2, "exit_code": 75, "host": "x", "pid": 1}]
    failure = diagnose(results, 9, lambda rank: os.devnull)
    assert failure.rank is None and failure.exit_code == 9
    assert f"launcher.mpiworker processes of ranks 0, 1 (pids {dead[0]}, {dead[1]}) were killed" in failure.reason


@needs_mpi
@pytest.mark.timeout(90)
def test_script_names_a_killed_shim_and_keeps_the_mpich_banner_in_the_log(tmp_path):
    """A launch script reports a killed worker shim like `dptrain mpirun` does (launcher.postmortem),
    and MPICH's "BAD TERMINATION ... YOU CAN IGNORE" banner goes to logs/mpiexec.log, not the console."""
    out = tmp_path / "launch.sh"
    assert dptrain(["script", config(tmp_path, "sleep"), "-o", str(out)], tmp_path).returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(["bash", str(out)], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    record = _kill_rank1_shim_when_ready(tmp_path)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode != 0
    _assert_killed_shim_named(record, stderr)
    assert "BAD TERMINATION" not in stdout + stderr
    assert "[rank 1] ready pid=" in stdout                  # the ranks' lines still reach the console
    # (MPICH prints the banner when Hydra notices the killed shim first, which is usual but not certain;
    # when it does, the banner is in mpiexec's log)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == proc.returncode


def test_mpiexec_exit_code_0_does_not_hide_a_failed_rank(tmp_path):
    """MPICH 4.1's mpiexec sometimes exits 0 after a rank failed and it stopped the others: the
    rank's own exit code in its status record is the failure (an elastic restart must still happen)."""
    group = M.MpiGroup.__new__(M.MpiGroup)
    group.status_dir = str(tmp_path)
    group.job = type("J", (), {"run": type("R", (), {"rank_log": staticmethod(lambda rank: os.devnull)})()})()
    group.proc = subprocess.Popen([sys.executable, "-c", "pass"])
    group.proc.wait()
    for rank, code in ((0, None), (1, 17)):             # rank 0's shim was stopped: no final record
        (tmp_path / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "exit_code": code, "time": 1.0,
                                                               "host": "elsewhere", "pid": 1}))
    done, failure = group.poll()
    assert not done and failure.rank == 1 and failure.exit_code == 17
    for rank in (0, 1):
        (tmp_path / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "exit_code": 0, "time": 1.0,
                                                               "host": "elsewhere", "pid": 1}))
    assert group.poll() == (True, None)


def test_postmortem_reports_the_root_cause_and_nothing_on_success(tmp_path):
    from launcher import postmortem
    status = tmp_path / "status"
    status.mkdir()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs/rank1.log").write_text("===== dptrain script attempt 0 =====\nboom\n")
    for rank, code, t in ((0, 75, 2.0), (1, 3, 1.0)):      # rank 0 is rank 1's echo
        (status / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "exit_code": code, "time": t,
                                                              "host": "elsewhere", "pid": 1}))
    assert postmortem.report(str(tmp_path), 1) == [
        "3", "dptrain: rank 1 failed with exit code 3; last lines of its log:", "    boom"]
    for rank in (0, 1):
        (status / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "exit_code": 0, "time": 1.0,
                                                              "host": "elsewhere", "pid": 1}))
    assert postmortem.report(str(tmp_path), 0) == []
    assert postmortem.main([str(tmp_path)]) == 2


def test_an_mpiexec_that_hangs_on_version_is_ended_with_its_children(tmp_path, monkeypatch):
    import subprocess as sp
    from launcher import mpirun
    fake = tmp_path / "mpiexec"
    fake.write_text("#!/bin/sh\nsleep 97531 &\nwait\n")
    fake.chmod(0o755)
    monkeypatch.setattr(mpirun, "VERSION_TIMEOUT_S", 1.0)
    with pytest.raises(mpirun.MpiError, match=r"--version did not answer within 1 s; check cluster.mpi.mpiexec"):
        mpirun.mpi_flavor(str(fake))
    left = sp.run(["pgrep", "-f", "sleep 97531"], capture_output=True, text=True).stdout.split()
    assert not left, f"the fake mpiexec's child is still running: {left}"


@needs_mpi
@pytest.mark.timeout(90)
def test_script_coordinator_names_the_rank_that_never_joined(tmp_path):
    """A launch script has no supervising launcher: its coordinator prints the diagnosis itself."""
    from test_launch_cli import LAGGING
    (tmp_path / "lagging.py").write_text(LAGGING)
    (tmp_path / "lag.yaml").write_text(f"""
name: lag
cluster: {{nodes: [{{host: localhost, slots: 3}}], backend: mpi}}
job: {{script: {tmp_path / 'lagging.py'}, script_args: [stuck]}}
output: {{dir: {tmp_path / 'run'}}}
fault_tolerance: {{heartbeat_interval: 0.5}}
""")
    out = tmp_path / "lag.sh"
    assert dptrain(["script", str(tmp_path / "lag.yaml"), "-o", str(out)], tmp_path).returncode == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", DPTRAIN_COMM_TIMEOUT="3")
    env.pop("DPTRAIN_JOB_SECRET", None)
    run = subprocess.run(["bash", str(out)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=80)
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    assert re.search(r"\[coordinator\] rank 1: it never joined allreduce #\d+: ranks 0 and 2 waited there 3 s",
                     run.stderr), run.stderr[-3000:]
    assert re.search(r'lagging\.py", line 1[12], in <module>', run.stderr), run.stderr[-3000:]
