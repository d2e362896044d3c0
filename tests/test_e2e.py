"""The product as users run it: `dptrain run|mpirun CONFIG` end to end, resume, bad configs."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import engine
from dist_utils import ROOT, base_env

QUICK = ["job.model=mlp_bn", "job.model_args={hidden: 32}", "job.dataset.name=synthetic",
         "job.dataset.train_subset=640", "job.dataset.test_subset=200", "job.global_batch_size=32",
         "job.epochs=2", "job.log_every=5", "job.optimizer.lr=0.01", "output.progress=false",
         "fault_tolerance.max_restarts=0", "fault_tolerance.heartbeat_interval=0.5"]


def dptrain(*args, env=None, timeout=240):
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=ROOT, env=base_env(env),
                          capture_output=True, text=True, timeout=timeout)


def _params(run_dir):
    return {k: np.asarray(getattr(v, "data", v)) for k, v in engine.load(os.path.join(run_dir, "model.safetensors")).items()}


@pytest.mark.timeout(400)
@pytest.mark.parametrize("mode,backend", [("run", "zmq"), ("run", "mpi"), ("mpirun", "mpi"), ("mpirun", "zmq")])
def test_end_to_end_modes_and_backends(tmp_path, mode, backend):
    out = tmp_path / "run"
    p = dptrain(mode, "configs/local.yaml", *QUICK, f"cluster.backend={backend}", f"output.dir={out}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("world_size", "epochs", "steps", "test_accuracy", "test_loss", "samples_per_s", "restarts",
                "last_checkpoint"):
        assert key in summary, key
    assert summary["world_size"] == 2 and summary["steps"] == 40 and summary["epochs"] == 2
    assert summary["test_accuracy"] > 0.2          # 10 classes: chance is 0.1
    assert os.path.isdir(summary["last_checkpoint"])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(5, 41, 5))
    assert (out / "config.yaml").exists() and (out / "logs" / "rank1.log").exists()
    assert "[rank 0]" in p.stdout and "test accuracy" in p.stdout
    # shard: auto shards the optimizer over MPI, and over ZeroMQ when the workers share a host (shared buffers)
    assert "optimizer sharded (ZeRO-1)" in p.stdout, p.stdout[-2000:]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_end_to_end_through_the_launch_script(tmp_path, backend):
    """`dptrain script` + bash: the same training job, with the script's own rendezvous port and
    coordinator (a ZeroMQ run needs DPTRAIN_MASTER_PORT from the script)."""
    out, script = tmp_path / "run", tmp_path / "launch.sh"
    p = dptrain("script", "configs/local.yaml", *QUICK, f"cluster.backend={backend}", f"output.dir={out}",
                "-o", str(script))
    assert p.returncode == 0, p.stderr
    p = subprocess.run(["bash", str(script)], cwd=tmp_path, env=base_env(None), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["launcher"] == "script" and summary["world_size"] == 2
    assert summary["steps"] == 40 and summary["test_accuracy"] > 0.2
    assert "optimizer sharded (ZeRO-1)" in p.stdout, p.stdout[-2000:]


RESUME = QUICK + ["checkpoint.interval=8", "checkpoint.keep=2"]


def _uninterrupted_and_crashed(tmp_path):
    """Run dir `a`: the whole job; run dir `b`: the same job where rank 1 dies at step 13, after
    the checkpoint of step 8, so the run fails and leaves that checkpoint behind."""
    a, b = tmp_path / "a", tmp_path / "b"
    p = dptrain("run", "configs/local.yaml", *RESUME, f"output.dir={a}")
    assert p.returncode == 0, p.stderr[-3000:]
    from launcher import shmclean
    before = shmclean.snapshot()
    p = dptrain("run", "configs/local.yaml", *RESUME, f"output.dir={b}",
                env={"DPTRAIN_FAULT_CRASH_AT_STEP": "13"})
    assert p.returncode != 0
    assert not (b / "model.safetensors").exists()
    # the crashed rank never reached MPI_Finalize; the launcher removed what it left in /dev/shm
    leftover = shmclean.snapshot() - before - shmclean.in_use()
    assert not {f"{shmclean.SHM_DIR}/{n}" for n in leftover} - shmclean.in_use(), leftover
    return a, b


@pytest.mark.timeout(400)
def test_interrupted_run_resumes_to_exactly_the_uninterrupted_parameters(tmp_path):
    a, b = _uninterrupted_and_crashed(tmp_path)
    # started again on the same output directory it resumes from step 8
    p = dptrain("run", "configs/local.yaml", *RESUME, f"output.dir={b}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        assert np.array_equal(pa[k], pb[k]), f"{k} differs after resume"


@pytest.mark.timeout(400)
def test_checkpoint_of_two_workers_resumes_on_one_worker(tmp_path):
    """A lost worker need not stop the job: the global batch, sampler position and RNG state
    are world-size independent, so a 2-worker checkpoint continues on 1 worker and ends where
    the uninterrupted 2-worker run ends (BatchNorm is synchronised, dropout drawn per global batch)."""
    a, b = _uninterrupted_and_crashed(tmp_path)
    p = dptrain("run", "configs/local.yaml", *RESUME, "cluster.nodes.0.slots=1", f"output.dir={b}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resumed from" in p.stdout and "step-00000008" in p.stdout
    assert "written by 2 worker(s); continuing on 1 with the same global batch 32" in p.stdout
    assert json.loads((b / "summary.json").read_text())["world_size"] == 1
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-5, atol=1e-5, err_msg=k)


@pytest.mark.timeout(400)
def test_restart_with_resume_never_continues_from_this_launchs_checkpoint(tmp_path):
    """`checkpoint.resume: never` means start from scratch, not lose progress on a restart: a crash
    resumes from the checkpoint this launch wrote (step 8), never from an older run's (step 40)."""
    a = tmp_path / "a"
    p = dptrain("run", "configs/local.yaml", *RESUME, f"output.dir={a}")
    assert p.returncode == 0, p.stderr[-3000:]
    want = _params(a)
    assert "step-00000040" in json.loads((a / "summary.json").read_text())["last_checkpoint"]
    p = dptrain("run", "configs/local.yaml", *RESUME, f"output.dir={a}", "checkpoint.resume=never",
                "fault_tolerance.max_restarts=1", env={"DPTRAIN_FAULT_CRASH_AT_STEP": "13"})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "fault injection" in p.stdout and "resumed from" in p.stdout and "step-00000008" in p.stdout
    got = _params(a)
    for k in want:
        assert np.array_equal(want[k], got[k]), k
    # metrics of a fresh launch start a new file; the earlier run's moved aside
    steps = [json.loads(line)["step"] for line in (a / "metrics.jsonl").read_text().splitlines()]
    assert steps[0] == 5 and steps[-1] == 40 and (a / "metrics.previous.jsonl").exists()
    # the same command again: the newest checkpoint already completes the run, so it only evaluates
    p = dptrain("run", "configs/local.yaml", *RESUME, f"output.dir={a}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "nothing to train: evaluating only" in p.stdout and "checkpoint.resume=never" in p.stdout
    summary = json.loads((a / "summary.json").read_text())
    assert summary["evaluated_only"] is True and summary["samples_per_s"] is None
    assert json.loads((a / "summary.previous.json").read_text())["samples_per_s"] > 0


@pytest.mark.timeout(200)
def test_resuming_at_another_global_batch_keeps_the_epoch_count(tmp_path):
    out = tmp_path / "run"
    # stopped 11 steps (352 samples) into epoch 0 at batch 32; at batch 64 that is 5.5 steps: the
    # remaining 288 samples make 4 whole batches, so epoch 0 ends at step 10 and epoch 1 at 20
    p = dptrain("run", "configs/local.yaml", *QUICK, "job.max_steps=11", f"output.dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    before = len((out / "metrics.jsonl").read_text().splitlines())
    p = dptrain("run", "configs/local.yaml", *QUICK, "job.global_batch_size=64", "job.log_every=1",
                f"output.dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "the same position is step 6 of 20" in p.stdout
    assert json.loads((out / "summary.json").read_text())["steps"] == 20          # 640 samples / 64 x 2 epochs
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()[before:]]
    assert [r["step"] for r in records] == list(range(7, 21))
    assert [r["epoch"] for r in records] == [0] * 4 + [1] * 10


@pytest.mark.timeout(120)
def test_an_error_that_would_recur_is_one_line_and_not_restarted(tmp_path):
    out = tmp_path / "run"
    p = dptrain("run", "configs/local.yaml", *QUICK, "job.model_args={hiddn: 32}", "fault_tolerance.max_restarts=2",
                f"output.dir={out}")
    assert p.returncode == 78, p.stdout[-3000:] + p.stderr[-3000:]
    both = p.stdout + p.stderr
    assert "WorkerError: job.model_args do not fit the model 'mlp_bn'" in both and "hiddn" in both
    assert "Traceback" not in both                          # ours: the message is complete
    assert "not restarting: that error would recur" in p.stderr and "restarting the worker group" not in p.stderr
    assert len(json.loads((out / "launcher.json").read_text())["attempts"]) == 1
    # the rank that failed first wrote its traceback (the other may be stopped before it gets there)
    assert any("Traceback" in f.read_text() for f in (out / "logs").glob("rank*.traceback"))


@pytest.mark.timeout(200)
def test_resuming_with_another_optimizer_or_model_is_one_line_naming_the_fix(tmp_path):
    """An SGD checkpoint resumed with job.optimizer.name=adam used to load and then die at the first
    step with a KeyError traceback (and be restarted); a checkpoint of another model suggested
    strict=False, which a config cannot pass."""
    out = tmp_path / "run"
    p = dptrain("run", "configs/local.yaml", *QUICK, "job.max_steps=4", "job.optimizer.name=sgd",
                "job.optimizer.momentum=0.9", "cluster.backend=zmq", f"output.dir={out}")
    assert p.returncode == 0, p.stderr[-3000:]
    p = dptrain("run", "configs/local.yaml", *QUICK, "job.max_steps=8", "job.optimizer.name=adam",
                "cluster.backend=zmq", "fault_tolerance.max_restarts=1", f"output.dir={out}")
    both = p.stdout + p.stderr
    assert p.returncode == 78, both[-3000:]
    assert "holds the state of a 'sgd' optimizer" in both and "not of job.optimizer.name='adam'" in both
    assert "checkpoint.resume=never" in both and "Traceback" not in both and "KeyError" not in both
    assert "restarting the worker group" not in p.stderr
    p = dptrain("run", "configs/local.yaml", *QUICK, "job.max_steps=8", "job.optimizer.name=sgd",
                "job.optimizer.momentum=0.9", "job.model_args={hidden: 16}", "cluster.backend=zmq",
                f"output.dir={out}")
    both = p.stdout + p.stderr
    assert p.returncode == 78, both[-3000:]
    assert "does not fit job.model='mlp_bn'" in both and "size mismatch" in both
    assert "strict=False" not in both and "Traceback" not in both


@pytest.mark.timeout(60)
def test_bad_config_exits_2_naming_the_dotted_path_and_starts_nothing(tmp_path):
    out = tmp_path / "never"
    p = dptrain("run", "configs/local.yaml", "cluster.nodes.0.slots=-2", "job.optimizer.lr=fast",
                f"output.dir={out}")
    assert p.returncode == 2
    assert "cluster.nodes.0.slots" in p.stderr and "job.optimizer.lr" in p.stderr
    assert not out.exists()


def _workers_of(run_dir, everything=False):
    """Pids of the workers whose environment names this run directory (everything: also mpiexec, its
    proxies and the per-rank wrappers)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                env = fh.read().split(b"\0")
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                cmd = fh.read()
        except OSError:
            continue
        if f"DPTRAIN_RUN_DIR={run_dir}".encode() in env and (
                everything or (b"cluster.worker" in cmd and b"mpiworker" not in cmd)):
            found.append(int(pid))
    return found


@pytest.mark.timeout(120)
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads /proc")
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_workers_stop_when_the_launcher_is_killed(tmp_path, backend):
    """kill -9 of `dptrain run` (OOM killer, closed session) must not leave workers training as orphans."""
    import signal
    import time
    out = tmp_path / "run"
    args = [sys.executable, "-m", "launcher", "run", "configs/local.yaml", *QUICK, "job.epochs=1000",
            f"cluster.backend={backend}", f"output.dir={out}", "fault_tolerance.heartbeat_timeout=20"]
    p = subprocess.Popen(args, cwd=ROOT, env=base_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(_workers_of(out)) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        workers = _workers_of(out)
        assert len(workers) == 2, "the workers did not start"
        time.sleep(1.0)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        t0 = time.monotonic()
        while _workers_of(out, everything=True) and time.monotonic() - t0 < 30:
            time.sleep(0.2)
        left = _workers_of(out, everything=True)
        assert not left, f"processes {left} still running {time.monotonic() - t0:.0f} s after the launcher died"
        # well before the 20 s heartbeat timeout: the launcher's pid is checked on this host
        assert time.monotonic() - t0 < 15
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        for pid in _workers_of(out, everything=True):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


@pytest.mark.timeout(120)
def test_an_interrupted_run_records_how_far_it_got(tmp_path):
    import signal
    import time
    out = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "launcher", "run", "configs/local.yaml", *QUICK, "job.epochs=500",
                          f"output.dir={out}"], cwd=ROOT, env=base_env(None), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 3:
        assert time.time() < deadline and p.poll() is None
        time.sleep(0.2)
    time.sleep(1.5)                       # at least one heartbeat carries the step
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=60)
    assert p.returncode == 130
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "interrupted" and isinstance(summary["steps"], int) and summary["steps"] >= 15


def _start(out, *extra, script=None):
    """A long built-in job in the background (stopped by the test), and a wait for its first metrics;
    with `script`, through a `dptrain script` launch script written there."""
    import time
    args = ["configs/local.yaml", *QUICK, "job.epochs=1000", "checkpoint.interval=0", "checkpoint.keep=5",
            f"output.dir={out}", *extra]
    cmd = [sys.executable, "-m", "launcher", "run", *args]
    if script is not None:
        assert dptrain("script", *args, "-o", str(script)).returncode == 0
        cmd = ["bash", str(script)]
    p = subprocess.Popen(cmd, cwd=ROOT, env=base_env(None), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    end = time.time() + 120
    while time.time() < end and not (out / "metrics.jsonl").exists():
        time.sleep(0.1)
    assert (out / "metrics.jsonl").exists(), "no metrics within 120 s"
    return p


def _usr1_then_term(p, out):
    """SIGUSR1, wait for its checkpoint, then SIGTERM: -> (stdout, stderr, checkpoint steps) once the
    launcher has exited 143 after saying both requests were passed on."""
    import signal
    import time
    p.send_signal(signal.SIGUSR1)
    end = time.time() + 60
    while time.time() < end and not ((out / "checkpoints").is_dir() and _checkpoint_steps(out)):
        time.sleep(0.1)
    time.sleep(1.5)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 143, stdout[-2000:] + stderr[-2000:]
    assert "SIGUSR1: the workers save a checkpoint" in stderr and "SIGTERM: the workers save a checkpoint" in stderr
    return stdout, stderr, _checkpoint_steps(out)


def _checkpoint_steps(out):
    return sorted(int(n.split("-")[1]) for n in os.listdir(out / "checkpoints") if n.startswith("step-"))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_sigterm_saves_a_checkpoint_and_stops_cleanly_then_the_run_resumes(tmp_path, backend):
    """Preemption / a time limit / `kill`: SIGTERM to the launcher makes the workers checkpoint at their
    next metrics step and stop (exit 143, status "stopped"); SIGUSR1 before it only adds a checkpoint.
    Running the same command again continues from the stop's checkpoint."""
    out = tmp_path / "run"
    stdout, stderr, steps = _usr1_then_term(_start(out, f"cluster.backend={backend}"), out)
    assert "the workers saved a checkpoint and stopped" in stderr
    assert len(steps) == 2 and all(s % 5 == 0 for s in steps), steps   # the requested one is taken once
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["stopped_early"] and summary["exit_code"] == 143
    assert summary["last_checkpoint"].endswith(f"step-{steps[-1]:08d}") and summary["steps"] == steps[-1]
    assert f"stopped on request at step {steps[-1]} of 20000" in stdout
    assert json.loads((out / "launcher.json").read_text())["status"] == "stopped"
    again = dptrain("run", "configs/local.yaml", *QUICK, "job.epochs=1000", f"job.max_steps={steps[-1] + 5}",
                    f"cluster.backend={backend}", f"output.dir={out}")
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert f"resumed from {out / 'checkpoints' / f'step-{steps[-1]:08d}'} at step {steps[-1]}" in again.stdout


@pytest.mark.timeout(300)
def test_the_launch_script_passes_sigusr1_and_sigterm_on_like_the_launcher(tmp_path):
    out = tmp_path / "run"
    stdout, stderr, steps = _usr1_then_term(_start(out, "cluster.backend=mpi", script=tmp_path / "launch.sh"), out)
    assert "the workers saved a checkpoint and stopped; run this script again" in stderr
    assert len(steps) == 2, steps
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["exit_code"] == 143 and summary["steps"] == steps[-1]
