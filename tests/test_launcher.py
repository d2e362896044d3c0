"""`dptrain run` (local processes): environment, logs, failure handling, restarts, Ctrl-C, status."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "test_launcher_worker.py")


def config(tmp_path, mode="ok", extra=""):
    text = f"""
name: t
cluster:
  nodes:
    - host: localhost
      slots: 2
  backend: zmq          # these tests are about the local process launcher (auto would pick MPI)
job:
  script: {WORKER}
  script_args: [{mode}]
  global_batch_size: 64
output:
  dir: {tmp_path / 'run'}
fault_tolerance:
  heartbeat_interval: 0.2
  heartbeat_timeout: 10
  grace_period: 2
{extra}
"""
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return str(p)


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    e.pop("DPTRAIN_RANK", None)
    return e


def dptrain(args, cwd, timeout=60):
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, env=env(), capture_output=True,
                       text=True, timeout=timeout)
    r.elapsed = time.time() - t0
    return r


def envs_of(stdout):
    out = {}
    for line in stdout.splitlines():
        m = re.match(r"\[rank (\d+)\] ENV (.*)", line)
        if m:
            out[int(m.group(1))] = json.loads(m.group(2))
    return out


@pytest.mark.timeout(60)
def test_run_two_ranks_succeeds(tmp_path):
    cfg = config(tmp_path, "ok")
    r = dptrain(["run", cfg, "job.threads=2"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "run"
    envs = envs_of(r.stdout)
    assert set(envs) == {0, 1}
    for rank, e in envs.items():
        assert e["DPTRAIN_RANK"] == str(rank) and e["DPTRAIN_WORLD_SIZE"] == "2"
        assert e["DPTRAIN_LOCAL_RANK"] == str(rank) and e["DPTRAIN_LOCAL_WORLD_SIZE"] == "2"
        assert e["DPTRAIN_NODE_RANK"] == "0" and e["DPTRAIN_GPU"] == ""
        assert e["DPTRAIN_COMM_BACKEND"] == "zmq" and e["DPTRAIN_MASTER_ADDR"] == "127.0.0.1"
        assert int(e["DPTRAIN_MASTER_PORT"]) > 0 and e["DPTRAIN_COORD_ADDR"].startswith("tcp://127.0.0.1:")
        assert e["DPTRAIN_RUN_DIR"] == str(run) and e["DPTRAIN_CONFIG"] == str(run / "config.yaml")
        assert e["OMP_NUM_THREADS"] == e["OPENBLAS_NUM_THREADS"] == e["MKL_NUM_THREADS"] == "2"
        assert e["DPTRAIN_RESTART"] == "0"
    assert envs[0]["DPTRAIN_PROGRESS"] == "1" and envs[1]["DPTRAIN_PROGRESS"] == "0"
    assert "[rank 0] secret-length 64" in r.stdout
    # every line carries its rank; rank 0's progress updates are shown, its final state as a line
    assert "[rank 0] progress 1/3" in r.stdout and "[rank 0] progress 3/3" in r.stdout
    assert "[rank 1] rank 1 finished" in r.stdout
    assert all(line.startswith("[rank ") for line in r.stdout.splitlines() if line.strip())
    # run directory
    for name in ("config.yaml", "placement.json", "launcher.json", "summary.json", "coordinator.json",
                 "logs/rank0.log", "logs/rank1.log"):
        assert (run / name).exists(), name
    assert "rank 1 finished" in (run / "logs/rank1.log").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["world_size"] == 2 and summary["restarts"] == 0
    co = json.loads((run / "coordinator.json").read_text())
    assert {w["state"] for w in co["workers"].values()} == {"done"}
    from cluster.config import load_config
    assert load_config(str(run / "config.yaml")).job.threads == 2   # the resolved config reloads
    # status reads it all back
    s = dptrain(["status", str(run)], tmp_path)
    assert s.returncode == 0, s.stderr
    assert "state      ok" in s.stdout and "attempt 0: ok" in s.stdout and "done" in s.stdout
    js = json.loads(dptrain(["status", str(run), "--json"], tmp_path).stdout)
    assert js["summary"]["world_size"] == 2 and js["launcher"]["attempts"][0]["status"] == "ok"
    assert dptrain(["status", str(tmp_path / "nope")], tmp_path).returncode == 2
    # --watch on a finished run draws once and returns
    w = dptrain(["status", str(run), "--watch", "0.2"], tmp_path)
    assert w.returncode == 0 and w.stdout.count("state      ok") == 1 and w.elapsed < 20


@pytest.mark.timeout(60)
def test_failed_rank_stops_the_others(tmp_path):
    r = dptrain(["run", config(tmp_path, "fail")], tmp_path)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.elapsed < 30                                        # rank 0 (sleeping 60 s) was stopped
    assert "dptrain: rank 1 failed: exit code 3; stopping the other workers" in r.stderr
    assert "last 20 lines of rank 1" in r.stderr
    tail = r.stderr.split("last 20 lines of rank 1", 1)[1]
    assert "rank 1 is failing on purpose" in tail and "rank 1 line 24" in tail and "rank 1 line 5\n" not in tail
    assert "rank 0 got SIGTERM" in (tmp_path / "run/logs/rank0.log").read_text()
    launcher = json.loads((tmp_path / "run/launcher.json").read_text())
    assert launcher["status"] == "failed" and launcher["attempts"][0]["failed_rank"] == 1
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["status"] == "failed" and summary["exit_code"] == 3 and summary["failed_rank"] == 1


@pytest.mark.timeout(60)
def test_restart_resumes_from_newest_checkpoint(tmp_path):
    r = dptrain(["run", config(tmp_path, "restart", "checkpoint:\n  interval: 5\n  keep: 2\n"),
                 "fault_tolerance.max_restarts=1"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[rank 0] saved checkpoint 10" in r.stdout
    assert "restarting the worker group (restart 1 of 1)" in r.stderr
    assert "[rank 0] resumed from step 10 w=[10.0, 10.0, 10.0]" in r.stdout
    assert "[rank 1] resumed from step 10" in r.stdout
    envs = [json.loads(m) for m in re.findall(r"\[rank \d\] ENV (.*)", r.stdout)]
    assert sorted(e["DPTRAIN_RESTART"] for e in envs) == ["0", "0", "1", "1"]
    launcher = json.loads((tmp_path / "run/launcher.json").read_text())
    assert [a["status"] for a in launcher["attempts"]] == ["failed", "ok"]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["restarts"] == 1 and summary["last_checkpoint"].endswith("step-00000010")
    co = json.loads((tmp_path / "run/coordinator.json").read_text())
    assert co["attempt"] == 1
    log1 = (tmp_path / "run/logs/rank1.log").read_text()
    assert "attempt 0" in log1 and "attempt 1" in log1


@pytest.mark.timeout(60)
def test_restarts_are_limited(tmp_path):
    r = dptrain(["run", config(tmp_path, "failalways"), "fault_tolerance.max_restarts=1"], tmp_path)
    assert r.returncode == 3
    assert r.stderr.count("rank 1 failed: exit code 3") == 2
    assert "giving up after 1 restart" in r.stderr


@pytest.mark.timeout(60)
def test_frozen_rank_detected_by_missing_heartbeats(tmp_path):
    cfg = config(tmp_path, "hang")
    r = dptrain(["run", cfg, "fault_tolerance.heartbeat_timeout=1.5", "fault_tolerance.grace_period=0.5"], tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.elapsed < 30
    assert re.search(r"rank 1 failed: no heartbeat from rank 1 \(pid \d+ on .*\) for \d", r.stderr)


@pytest.mark.timeout(60)
def test_rank_that_finished_is_not_declared_dead(tmp_path):
    r = dptrain(["run", config(tmp_path, "quietexit"), "fault_tolerance.heartbeat_timeout=0.8"], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[rank 0] rank 0 finished late" in r.stdout
    co = json.loads((tmp_path / "run/coordinator.json").read_text())
    assert co["workers"]["1"]["state"] == "dead" and co["workers"]["0"]["state"] == "done"


@pytest.mark.timeout(60)
def test_ctrl_c_stops_everything(tmp_path):
    p = subprocess.Popen([sys.executable, "-m", "launcher", "run", config(tmp_path, "sleep")], cwd=tmp_path,
                         env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pids = []
    end = time.time() + 30
    while len(pids) < 2 and time.time() < end:
        line = p.stdout.readline()
        m = re.search(r"ready pid=(\d+)", line)
        if m:
            pids.append(int(m.group(1)))
    assert len(pids) == 2
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=20)
    assert p.returncode == 130, err
    assert "interrupted; stopping 2 workers" in err
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert json.loads((tmp_path / "run/launcher.json").read_text())["status"] == "interrupted"


@pytest.mark.timeout(60)
def test_console_rank0_only(tmp_path):
    r = dptrain(["run", config(tmp_path, "ok"), "output.console=rank0", "output.progress=false"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "[rank 1]" not in r.stdout and "[rank 0] rank 0 finished" in r.stdout
    assert "progress 1/3" not in r.stdout
    assert "rank 1 finished" in (tmp_path / "run/logs/rank1.log").read_text()


@pytest.mark.timeout(60)
def test_builtin_worker_restart_and_summary(tmp_path):
    """The real worker (`python -m cluster.worker`): a crash at step 12 is restarted from step 8."""
    (tmp_path / "rt.yaml").write_text("""
name: rt
cluster: {nodes: [{host: localhost, slots: 2}], backend: zmq}
job:
  model: mlp
  dataset: {name: synthetic, train_subset: 1024, test_subset: 256}
  epochs: 2
  global_batch_size: 64
  log_every: 4
checkpoint: {interval: 8, keep: 2}
output: {dir: run}
fault_tolerance: {max_restarts: 1, heartbeat_interval: 0.5, heartbeat_timeout: 20}
""")
    e = env()
    e["DPTRAIN_FAULT_CRASH_AT_STEP"] = "12"          # the runtime's fault injection: last rank exits 17
    r = subprocess.run([sys.executable, "-m", "launcher", "run", "rt.yaml"], cwd=tmp_path, env=e,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 1 failed: exit code 17" in r.stderr and "restart 1 of 1" in r.stderr
    assert re.search(r"\[rank 0\] resumed from \S+step-00000008", r.stdout)
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    for key in ("world_size", "epochs", "steps", "test_accuracy", "test_loss", "samples_per_s", "restarts",
                "last_checkpoint"):
        assert key in summary, key
    assert summary["world_size"] == 2 and summary["restarts"] == 1 and summary["steps"] == 32
    assert summary["last_checkpoint"].endswith("step-00000032")
    assert (tmp_path / "run/metrics.jsonl").read_text().count("\n") >= 8
    # launching again continues from the finished run's checkpoint, and says so
    r = subprocess.run([sys.executable, "-m", "launcher", "run", "rt.yaml"], cwd=tmp_path, env=env(),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "checkpoint.resume=auto: workers resume from" in r.stderr and "step-00000032" in r.stderr
    assert (tmp_path / "run/summary.previous.json").exists()


@pytest.mark.timeout(30)
def test_console_script_and_module_entry(tmp_path):
    exe = os.path.join(os.path.dirname(sys.executable), "dptrain")
    if os.access(exe, os.X_OK):
        r = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "mpirun" in r.stdout and "status" in r.stdout
    r = dptrain(["--help"], tmp_path)
    assert r.returncode == 0 and "validate" in r.stdout
    r = dptrain(["frobnicate"], tmp_path)
    assert r.returncode == 2

# ---------------------------------------------------------------- output plumbing (no processes)
def test_split_segments():
    from launcher.output import split_segments
    segs, rest = split_segments(b"a\nb\r\n\rp1\rp2\rdone\nhalf")
    assert segs == [("line", b"a"), ("line", b"b"), ("progress", b""), ("progress", b"p1"),
                    ("progress", b"p2"), ("line", b"done")]
    assert rest == b"half"
    assert split_segments(b"x\r") == ([], b"x\r")        # a \n may still follow


def test_console_keeps_progress_line_at_bottom_on_a_tty():
    import io
    from launcher.output import Console
    buf = io.StringIO()
    c = Console(buf, tty=True)
    c.progress("[rank 0] 10%")
    c.line("[rank 1] hello")
    c.progress("[rank 0] 20%")
    c.end_progress()
    assert buf.getvalue() == ("\r\x1b[K[rank 0] 10%" "\r\x1b[K[rank 1] hello\n\r[rank 0] 10%"
                              "\r\x1b[K[rank 0] 20%" "\r\x1b[K")
    buf = io.StringIO()
    c = Console(buf, tty=False, progress_interval=60)
    c.progress("[rank 0] 10%")
    c.progress("[rank 0] 20%")                          # throttled away in logs/pipes
    c.line("[rank 0] done")
    assert buf.getvalue() == "[rank 0] 10%\n[rank 0] done\n"


def test_rank_stream_logs_and_tails(tmp_path):
    import io
    from launcher.output import Console, RankStream
    r, w = os.pipe()
    buf = io.StringIO()
    log = tmp_path / "rank3.log"
    s = RankStream(3, r, Console(buf, tty=False, progress_interval=60), str(log), show_progress=True,
                   tail_lines=2).start()
    os.write(w, b"l1\n\rp1\rp2\rfinal\nl2\nno newline at exit")
    os.close(w)
    s.join(5)
    assert buf.getvalue().splitlines() == ["[rank 3] l1", "[rank 3] p1", "[rank 3] final", "[rank 3] l2",
                                           "[rank 3] no newline at exit"]
    assert log.read_text().splitlines() == ["l1", "p1", "final", "l2", "no newline at exit"]
    assert list(s.tail) == ["l2", "no newline at exit"]


def test_root_cause_prefers_the_rank_that_did_not_fail_because_of_a_peer():
    """Both exits can land between two polls; the echo (EXIT_PEER_FAILURE) must not be blamed."""
    from cluster.worker import EXIT_PEER_FAILURE
    from launcher.supervise import root_cause
    seen = {0: 1.0, 1: 1.0}
    assert root_cause([(0, EXIT_PEER_FAILURE), (1, 17)], seen) == (1, 17)
    assert root_cause([(0, 1), (1, 17)], {0: 2.0, 1: 1.0}) == (1, 17)        # earliest seen
    assert root_cause([(0, 1), (1, 17)], seen) == (0, 1)                      # tie: lowest rank
    assert root_cause([(0, EXIT_PEER_FAILURE), (1, EXIT_PEER_FAILURE)], seen) == (0, EXIT_PEER_FAILURE)


@pytest.mark.timeout(60)
def test_auto_backend_falls_back_to_zeromq_when_mpiexec_cannot_start_processes(tmp_path):
    bad = tmp_path / "mpiexec"
    bad.write_text("#!/bin/sh\necho 'HYD_sock_connect: unable to get host address for vm' >&2\nexit 5\n")
    bad.chmod(0o755)
    path = config(tmp_path)
    with open(path) as f:
        text = f.read().replace("  backend: zmq", f"  backend: auto\n  mpi: {{mpiexec: {bad}}}")
    with open(path, "w") as f:
        f.write(text)
    r = dptrain(["run", path], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "cannot start processes here (HYD_sock_connect: unable to get host address for vm); using ZeroMQ" in r.stderr
    assert "backend zmq" in r.stderr


def test_summary_resource_usage_per_rank_of_the_last_attempt(tmp_path):
    from launcher.supervise import resource_usage
    lines = [{"rank": 0, "attempt": 0, "rss_bytes": 900 << 20, "cpu_percent": 50.0},      # earlier attempt
             {"rank": 0, "attempt": 1, "rss_bytes": 100 << 20, "cpu_percent": 90.0},
             {"rank": 0, "attempt": 1, "rss_bytes": 300 << 20, "cpu_percent": 100.0},
             {"rank": 1, "attempt": 1, "rss_bytes": 200 << 20, "gpu_mem_used_bytes": 64 << 20}]
    path = tmp_path / "resources.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    assert resource_usage(str(path), 1) == {
        "0": {"peak_rss_mb": 300.0, "mean_cpu_percent": 95.0},
        "1": {"peak_rss_mb": 200.0, "mean_cpu_percent": None, "peak_gpu_mem_mb": 64.0}}
    assert resource_usage(str(tmp_path / "missing.jsonl"), 0) == {}


@pytest.mark.timeout(60)
def test_a_second_launch_on_a_live_run_directory_is_refused(tmp_path):
    """Two launches on one run directory would resume from and rotate away each other's checkpoints."""
    first = subprocess.Popen([sys.executable, "-m", "launcher", "run", config(tmp_path, "sleep")], cwd=tmp_path,
                             env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 30
        while "ready pid" not in (tmp_path / "run" / "logs" / "rank1.log").read_text() \
                if (tmp_path / "run" / "logs" / "rank1.log").exists() else True:
            assert time.time() < deadline and first.poll() is None
            time.sleep(0.1)
        r = dptrain(["run", config(tmp_path, "ok")], tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert f"is in use by pid {first.pid}" in r.stderr and "dptrain status" in r.stderr
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=30)
    r = dptrain(["run", config(tmp_path, "ok")], tmp_path)          # free again once it ended
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.timeout(60)
def test_a_coordinator_port_in_use_refuses_before_touching_the_run_directory(tmp_path):
    import socket
    r = dptrain(["run", config(tmp_path, "ok")], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = dptrain(["run", config(tmp_path, "ok"), f"cluster.coordinator.port={port}"], tmp_path)
    assert r.returncode == 2 and "the coordinator cannot listen on" in r.stderr and "cluster.coordinator.port" in r.stderr
    assert "workers on this machine" not in r.stderr                     # nothing was started
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert after == before


def test_recent_console_lines_know_what_a_rank_just_showed():
    from launcher.output import Console, RecentLines
    import io
    console = Console(io.StringIO(), tty=False)
    for line in ("error on rank 1: DatasetNotFoundError: ...", "  /usr/share/datasets/mnist"):
        console.line(f"[rank 1] {line}")
    console.line("[rank 0] something else")
    assert console.recent.shows(1, ["error on rank 1: DatasetNotFoundError: ...", "  /usr/share/datasets/mnist"])
    assert not console.recent.shows(0, ["error on rank 1: DatasetNotFoundError: ..."])
    assert not console.recent.shows(1, []) and not RecentLines().shows(1, ["x"])


@pytest.mark.timeout(60)
def test_on_one_terminal_a_failed_rank_s_lines_are_not_printed_twice(tmp_path):
    """Its error is right above on the same terminal; with stdout or stderr redirected (the other
    tests) the report repeats the lines, since 'above' would then be in another file."""
    import pty
    cfg = config(tmp_path, "fail")
    pid, fd = pty.fork()
    if pid == 0:  # child: stdout and stderr are the pty
        os.chdir(tmp_path)
        os.execve(sys.executable, [sys.executable, "-m", "launcher", "run", cfg], env())
    chunks = []
    deadline = time.time() + 50
    while time.time() < deadline:
        try:
            data = os.read(fd, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    assert os.waitstatus_to_exitcode(status) == 3, text[-2000:]
    assert "[rank 1] rank 1 is failing on purpose" in text
    assert "rank 1's last lines are above (full log: " in text and "last 20 lines of rank 1" not in text
