"""`dptrain script --slurm` under a real Slurm: runs only where a Slurm controller answers and a node
is idle (e.g. the one-node Slurm of the README's "Testing the Slurm path"); skipped elsewhere.

Why a real one: the generated sbatch script broke in ways `bash -n` cannot see (Slurm opens
`#SBATCH --output` before the script runs; srun without `--mpi=pmi2` gives every MPI rank a world
of one).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from dist_utils import ROOT, base_env
from test_e2e import QUICK


def _idle_node():
    if not (shutil.which("sbatch") and shutil.which("sinfo") and shutil.which("squeue")):
        return None
    try:
        out = subprocess.run(["sinfo", "-h", "-N", "-t", "idle", "-o", "%N"], capture_output=True,
                             text=True, timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return None
    here = socket.gethostname().split(".")[0]
    return here if here in out else None    # the job must run here: the run directory is local


NODE = _idle_node()
needs_slurm = pytest.mark.skipif(NODE is None, reason="no Slurm controller with this machine as an idle node")


def _state(job_id):
    r = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10)
    for field in r.stdout.split():
        if field.startswith("JobState="):
            return field.split("=", 1)[1]
    return "UNKNOWN"


@needs_slurm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["mpi", "zmq"])
def test_sbatch_script_trains_and_writes_the_summary(tmp_path, backend):
    out = tmp_path / "run"
    script = tmp_path / "job.sh"
    args = [sys.executable, "-m", "launcher", "script", "configs/local.yaml", *QUICK,
            f"cluster.nodes=[{{host: {NODE}, slots: 2}}]", f"cluster.backend={backend}",
            f"output.dir={out}", "--slurm", "-o", str(script)]
    p = subprocess.run(args, cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert out.is_dir()                     # sbatch opens its --output file there before the script runs
    sub = subprocess.run(["sbatch", "--parsable", str(script)], cwd=tmp_path, env=base_env(),
                         capture_output=True, text=True, timeout=30)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    t0, state = time.monotonic(), "PENDING"
    try:
        while time.monotonic() - t0 < 240:
            state = _state(job_id)
            if state == "PENDING" and time.monotonic() - t0 > 60:
                pytest.skip(f"Slurm job {job_id} still pending after 60 s (the node is busy)")
            if state not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING"):
                break
            time.sleep(1)
    finally:
        if state in ("PENDING", "RUNNING", "CONFIGURING"):
            subprocess.run(["scancel", job_id], timeout=10)
    log = "".join(f.read_text() for f in out.glob("slurm-*.out"))
    assert state == "COMPLETED", f"{state}\n{log[-3000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["launcher"] == "slurm" and summary["world_size"] == 2
    assert summary["steps"] == 40 and summary["test_accuracy"] > 0.2
    assert "[rank 0]" in log and "test accuracy" in log and "all ranks finished" in log
    assert os.path.exists(out / "logs" / "rank1.log")


def _field(job_id, name):
    r = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=10)
    for field in r.stdout.split():
        if field.startswith(name + "="):
            return field.split("=", 1)[1]
    return None


@needs_slurm
@pytest.mark.timeout(300)
def test_time_limit_signal_checkpoints_stops_and_requeues(tmp_path):
    """`#SBATCH --signal=B:USR1@120` warns the batch script before the time limit: the workers save a
    checkpoint and stop, and the script requeues the job (which resumes from it when it runs again;
    Slurm holds a requeued job for about two minutes, so the test stops at the requeue)."""
    out = tmp_path / "run"
    script = tmp_path / "job.sh"
    args = [sys.executable, "-m", "launcher", "script", "configs/local.yaml", *QUICK, "job.epochs=1000",
            "checkpoint.interval=0", f"cluster.nodes=[{{host: {NODE}, slots: 2}}]", "cluster.backend=zmq",
            f"output.dir={out}", "--slurm", "-o", str(script)]
    p = subprocess.run(args, cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    text = script.read_text()
    assert "#SBATCH --signal=B:USR1@120" in text and "#SBATCH --requeue" in text and "--open-mode=append" in text
    sub = subprocess.run(["sbatch", "--parsable", str(script)], cwd=tmp_path, env=base_env(),
                         capture_output=True, text=True, timeout=30)
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip().split(";")[0]
    try:
        t0 = time.monotonic()
        while not (out / "metrics.jsonl").exists():
            if time.monotonic() - t0 > 60:
                pytest.skip(f"Slurm job {job_id} did not start training within 60 s (the node is busy)")
            time.sleep(0.5)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True, timeout=10)
        t0 = time.monotonic()
        while _field(job_id, "Restarts") in (None, "0") and time.monotonic() - t0 < 90:
            time.sleep(1)
        log = "".join(f.read_text() for f in out.glob("slurm-*.out"))
        assert _field(job_id, "Restarts") == "1", log[-3000:]
        assert "SIGUSR1 (time limit near): the workers save a checkpoint and stop" in log, log[-3000:]
        assert f"requeued Slurm job {job_id}" in log and "stopped on request at step" in log, log[-3000:]
        ckpts = sorted(n for n in os.listdir(out / "checkpoints") if n.startswith("step-"))
        assert len(ckpts) == 1, ckpts
        summary = json.loads((out / "summary.json").read_text())
        assert summary["status"] == "stopped" and summary["last_checkpoint"].endswith(ckpts[0])
    finally:
        subprocess.run(["scancel", job_id], timeout=10)


@needs_slurm
@pytest.mark.timeout(300)
def test_dptrain_run_inside_salloc_takes_the_allocations_nodes(tmp_path):
    out = tmp_path / "run"
    p = subprocess.run(["salloc", "-N1", "-n2", "--immediate=60", sys.executable, "-m", "launcher", "run",
                        "configs/local.yaml", *QUICK, "cluster.nodes=slurm", "cluster.backend=zmq",
                        f"output.dir={out}"], cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=240)
    if "Unable to allocate resources" in p.stderr:
        pytest.skip(f"no allocation: {p.stderr.strip()[-200:]}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["status"] == "ok"
    assert f"host: {NODE}" in (out / "config.yaml").read_text()
