"""Coordinator: registration, heartbeats + resources, failure detection, authentication, limits, checkpoints."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import time

import msgpack
import pytest
import zmq

from cluster import protocol
from cluster.coordinator import Coordinator
from cluster.heartbeat import CoordinatorClient, CoordinatorError

SECRET = "s3cret-for-tests"


@pytest.fixture
def coord(tmp_path):
    c = Coordinator(SECRET, 2, run_dir=str(tmp_path), heartbeat_timeout=1.0, startup_timeout=30,
                    checkpoint_interval=5)
    c.start()
    yield c
    c.stop()


def client(c, rank, secret=SECRET, **kw):
    return CoordinatorClient(c.address, secret, rank, world_size=c.world_size, timeout=3.0, **kw)


def wait_for(pred, timeout=5.0):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.02)
    return False


def raw_request(addr, frames, timeout=3.0):
    """Send raw frames from a DEALER and return the decoded reply (or None on timeout)."""
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(addr)
    try:
        s.send_multipart(frames)
        if not s.poll(int(timeout * 1000)):
            return None
        return protocol.decode(SECRET, s.recv_multipart(), reply=True)
    finally:
        s.close(0)


@pytest.mark.timeout(30)
def test_register_and_heartbeat_with_resources(coord, tmp_path):
    c0, c1 = client(coord, 0), client(coord, 1)
    try:
        info = c0.register(local_rank=0, gpu=None)
        assert info["world_size"] == 2 and info["checkpoint_interval"] == 5
        c1.register(local_rank=1)
        c0.update(step=3, epoch=0)
        c0.start_heartbeat(0.05)
        c1.start_heartbeat(0.05)
        assert wait_for(lambda: (tmp_path / "resources.jsonl").exists() and
                        len((tmp_path / "resources.jsonl").read_text().splitlines()) >= 4)
        st = coord.state()
        assert set(st["workers"]) == {"0", "1"}
        w0 = st["workers"]["0"]
        assert w0["pid"] == os.getpid() and w0["state"] == "running" and w0["step"] == 3
        assert w0["resources"]["rss_bytes"] > 0 and "cpu_percent" in w0["resources"]
        rec = json.loads((tmp_path / "resources.jsonl").read_text().splitlines()[-1])
        assert {"rank", "attempt", "rss_bytes", "cpu_percent"} <= set(rec)
        # coordinator.json is written for `dptrain status`
        assert wait_for(lambda: "workers" in (json.loads((tmp_path / "coordinator.json").read_text())
                                              if (tmp_path / "coordinator.json").exists() else {}))
        c0.report_done()
        c1.report_done()
        assert wait_for(coord.all_done)
        kinds = []
        while (ev := coord.get_event()) is not None:
            kinds.append((ev.kind, ev.rank))
        assert ("registered", 0) in kinds and ("done", 1) in kinds
        # done ranks are not declared dead when they go silent
        time.sleep(1.3)
        assert coord.get_event() is None
    finally:
        c0.close()
        c1.close()


@pytest.mark.timeout(30)
def test_missing_heartbeats_are_reported(coord):
    c0, c1 = client(coord, 0), client(coord, 1)
    try:
        c0.register()
        c1.register()
        c0.start_heartbeat(0.1)
        c1.start_heartbeat(0.1)
        time.sleep(0.5)
        c1.stop_heartbeat()            # rank 1 hangs / its node vanished
        t0 = time.time()
        ev = None
        while time.time() - t0 < 5:
            ev = coord.get_event(timeout=0.1)
            if ev is not None and ev.kind == "dead":
                break
        assert ev is not None and ev.kind == "dead" and ev.rank == 1, ev
        assert "no heartbeat from rank 1" in ev.detail
        assert 0.8 < time.time() - t0 < 3.0
        assert coord.state()["workers"]["1"]["state"] == "dead"
        assert coord.state()["workers"]["0"]["state"] == "running"
    finally:
        c0.close()
        c1.close()


@pytest.mark.timeout(30)
def test_startup_timeout(tmp_path):
    c = Coordinator(SECRET, 3, heartbeat_timeout=5, startup_timeout=0.5).start()
    cl = client(c, 0)
    try:
        cl.register()
        ev = None
        end = time.time() + 5
        while time.time() < end:
            ev = c.get_event(timeout=0.1)
            if ev is not None and ev.kind == "startup_timeout":
                break
        assert ev is not None and ev.kind == "startup_timeout" and "[1, 2]" in ev.detail
    finally:
        cl.close()
        c.stop()


@pytest.mark.timeout(30)
def test_bad_hmac_is_rejected(coord):
    bad = client(coord, 0, secret="wrong-secret")
    try:
        with pytest.raises(CoordinatorError, match="verification|bad_mac"):
            bad.register()
    finally:
        bad.close()
    # forged payload with a garbage MAC
    payload = msgpack.packb(protocol.make_request("register", 0, 0, 1, {"host": "x", "pid": 1, "world_size": 2}))
    reply = raw_request(coord.address, [payload, b"\0" * 32])
    assert reply is not None and reply["ok"] is False and "bad_mac" in reply["error"]
    assert coord.rejected.get("bad_mac") == 2
    assert coord.state()["workers"] == {}


@pytest.mark.timeout(30)
def test_oversized_messages_are_rejected(coord):
    big = protocol.make_request("error", 0, 0, 1, {"message": "x" * (protocol.MAX_MESSAGE_BYTES + 10)})
    payload = msgpack.packb(big)
    mac = hmac.new(SECRET.encode(), payload, hashlib.sha256).digest()
    reply = raw_request(coord.address, [payload, mac])
    assert reply is not None and reply["ok"] is False and "too_large" in reply["error"]
    assert coord.rejected.get("too_large") == 1
    # far beyond the transport limit: libzmq drops the peer, the coordinator keeps serving
    assert raw_request(coord.address, [b"y" * (8 * protocol.MAX_MESSAGE_BYTES), mac], timeout=0.5) is None
    ok = client(coord, 0)
    try:
        assert ok.register()["world_size"] == 2
    finally:
        ok.close()
    # the client refuses to send oversized messages itself
    with pytest.raises(protocol.ProtocolError, match="exceeds"):
        protocol.encode(SECRET, big)


@pytest.mark.timeout(30)
def test_schema_replay_and_stale_attempts(coord):
    def signed(msg):
        return protocol.encode(SECRET, msg) if isinstance(msg, dict) else msg

    r = raw_request(coord.address, signed(protocol.make_request("launch_missiles", 0, 0, 1, {})))
    assert "bad_type" in r["error"]
    r = raw_request(coord.address, signed(protocol.make_request("register", 0, 0, 1,
                                                                {"host": "h", "pid": "1", "world_size": 2})))
    assert "bad_schema" in r["error"] and "pid" in r["error"]
    r = raw_request(coord.address, signed(protocol.make_request("register", 0, 0, 1,
                                                                {"host": "h", "pid": 1, "world_size": 2, "x": 1})))
    assert "unexpected field" in r["error"]
    r = raw_request(coord.address, signed(protocol.make_request("heartbeat", 1, 0, 1, {})))
    assert "not_registered" in r["error"]
    r = raw_request(coord.address, signed(protocol.make_request("register", 0, 0, 5,
                                                                {"host": "h", "pid": 1, "world_size": 3})))
    assert "bad_world_size" in r["error"]
    r = raw_request(coord.address, signed(protocol.make_request("register", 7, 0, 5,
                                                                {"host": "h", "pid": 1, "world_size": 2})))
    assert "bad_rank" in r["error"]
    # a valid register, then a replay of an old sequence number
    r = raw_request(coord.address, signed(protocol.make_request("register", 0, 0, 10,
                                                                {"host": "h", "pid": 1, "world_size": 2})))
    assert r["ok"]
    r = raw_request(coord.address, signed(protocol.make_request("heartbeat", 0, 0, 10, {})))
    assert "replay" in r["error"]
    # after a restart, the previous attempt's messages are refused
    coord.begin_attempt(1)
    r = raw_request(coord.address, signed(protocol.make_request("heartbeat", 0, 0, 11, {})))
    assert "stale_attempt" in r["error"]
    # garbage that is correctly signed
    junk = b"\xc1\xc1"
    r = raw_request(coord.address, [junk, hmac.new(SECRET.encode(), junk, hashlib.sha256).digest()])
    assert "bad_encoding" in r["error"]
    assert coord.rejected["bad_schema"] == 2


@pytest.mark.timeout(30)
def test_checkpoint_orchestration(coord, tmp_path):
    c0 = client(coord, 0)
    try:
        c0.register()
        assert [s for s in range(1, 16) if c0.should_checkpoint(s)] == [5, 10, 15]
        assert c0.should_checkpoint(7, final=True)
        coord.request_checkpoint()              # e.g. before a planned shutdown
        assert c0.should_checkpoint(8) and not c0.should_checkpoint(9)
        c0.report_checkpoint(10, "/ckpt/step-00000010", "ab" * 32, epoch=0)
        st = coord.state()
        assert st["checkpoints"][-1]["step"] == 10 and st["checkpoints"][-1]["sha256"] == "ab" * 32
        saved = json.loads((tmp_path / "coordinator.json").read_text())
        assert saved["checkpoints"][-1]["path"] == "/ckpt/step-00000010"
    finally:
        c0.close()


def test_client_without_coordinator_is_a_noop(monkeypatch):
    for k in ("DPTRAIN_COORD_ADDR", "DPTRAIN_JOB_SECRET"):
        monkeypatch.delenv(k, raising=False)
    c = CoordinatorClient.from_env()
    assert not c.enabled
    assert c.register() == {} and c.heartbeat() == {}
    c.start_heartbeat(0.01)
    c.report_checkpoint(1, "p", "x")
    c.report_done()
    assert c.should_checkpoint(10, interval=5) and not c.should_checkpoint(11, interval=5)
    assert c.should_checkpoint(11, final=True) and not c.should_checkpoint(10)
    c.close()


@pytest.mark.timeout(10)
def test_request_timeout_names_the_address():
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)      # a peer that never answers
    port = s.bind_to_random_port("tcp://127.0.0.1")
    c = CoordinatorClient(f"tcp://127.0.0.1:{port}", SECRET, 0, world_size=1, timeout=0.3)
    try:
        t0 = time.time()
        with pytest.raises(CoordinatorError, match=f"127.0.0.1:{port}.*did not answer"):
            c.register()
        assert time.time() - t0 < 2
    finally:
        c.close()
        s.close(0)


def test_silent_coordinator_calls_on_lost_after_the_heartbeat_timeout(monkeypatch):
    """A worker whose coordinator stopped answering (launcher killed on another host) gives up after
    `lost_after` seconds instead of training on unsupervised."""
    monkeypatch.delenv("DPTRAIN_LAUNCHER_PID", raising=False)
    ctx = zmq.Context.instance()
    s = ctx.socket(zmq.ROUTER)      # a coordinator that never answers
    port = s.bind_to_random_port("tcp://127.0.0.1")
    c = CoordinatorClient(f"tcp://127.0.0.1:{port}", SECRET, 3, world_size=4, timeout=0.2)
    lost = []
    try:
        t0 = time.monotonic()
        c.start_heartbeat(0.05, lost_after=1.0, on_lost=lambda why: lost.append((why, time.monotonic() - t0)))
        deadline = time.monotonic() + 10
        while not lost and time.monotonic() < deadline:
            time.sleep(0.05)
        assert lost, "on_lost was never called"
        why, after = lost[0]
        assert f"127.0.0.1:{port} has not answered for" in why and "heartbeat_timeout 1 s" in why, why
        assert 1.0 <= after < 3.0, after
        time.sleep(0.5)
        assert len(lost) == 1               # once, and the thread has stopped
    finally:
        c.stop_heartbeat()
        c.close()
        s.close(0)


def test_launcher_gone_checks_the_pid_on_this_host_only(monkeypatch):
    import socket

    from cluster.heartbeat import launcher_gone
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    monkeypatch.setenv("DPTRAIN_LAUNCHER_HOST", socket.gethostname())
    monkeypatch.setenv("DPTRAIN_LAUNCHER_PID", str(dead.pid))
    assert launcher_gone() == f"the launcher (pid {dead.pid}) has exited"
    monkeypatch.setenv("DPTRAIN_LAUNCHER_PID", str(os.getpid()))
    assert launcher_gone() == ""
    monkeypatch.setenv("DPTRAIN_LAUNCHER_PID", str(dead.pid))
    monkeypatch.setenv("DPTRAIN_LAUNCHER_HOST", "some-other-host")
    assert launcher_gone() == ""            # another host's pid means nothing here
    monkeypatch.delenv("DPTRAIN_LAUNCHER_PID")
    assert launcher_gone() == ""


@pytest.mark.timeout(40)
def test_standalone_coordinator_kills_job_on_dead_rank(tmp_path):
    """`python -m cluster.coordinator` (used by launch scripts) SIGTERMs the pid in --kill-pidfile."""
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    pidfile = tmp_path / "mpiexec.pid"
    pidfile.write_text(str(victim.pid))
    addr_file = tmp_path / "coord.addr"
    env = dict(os.environ, DPTRAIN_JOB_SECRET=SECRET)
    proc = subprocess.Popen([sys.executable, "-m", "cluster.coordinator", "--world-size", "1", "--run-dir",
                             str(tmp_path), "--heartbeat-timeout", "0.6", "--addr-file", str(addr_file),
                             "--kill-pidfile", str(pidfile)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(addr_file.exists, 20)
        addr = addr_file.read_text().strip()
        c = CoordinatorClient(addr, SECRET, 0, world_size=1, timeout=3)
        c.register()
        c.close()                      # and never heartbeat again
        assert victim.wait(timeout=10) == -signal.SIGTERM
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
        if victim.poll() is None:
            victim.kill()
    assert proc.returncode == 0
    assert "dead: no heartbeat from rank 0" in err


def test_resource_sample_includes_gpu_memory_when_cupy_is_in_use(monkeypatch):
    """GPU fields come from an already imported CuPy (faked here: no GPU on the test machine)."""
    import types
    from cluster import resources
    MiB = 2**20
    fake = types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(memGetInfo=lambda: (70 * MiB, 80 * MiB),
                                                                 getDevice=lambda: 1)),
        get_default_memory_pool=lambda: types.SimpleNamespace(used_bytes=lambda: 6 * MiB))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    s = resources.ResourceSampler().sample()
    assert s["gpu_device"] == 1 and s["gpu_mem_used_bytes"] == 10 * MiB and s["gpu_pool_bytes"] == 6 * MiB
    assert s["rss_bytes"] > 0
    monkeypatch.delitem(sys.modules, "cupy")
    assert "gpu_mem_used_bytes" not in resources.ResourceSampler().sample()


def test_low_host_memory_is_a_warning_naming_the_hungriest_rank(coord):
    class FakeSampler:
        def __init__(self, rss):
            self.rss = rss

        def sample(self):
            return {"rss_bytes": self.rss, "host_mem_available_bytes": 100 << 20,
                    "host_mem_total_bytes": 8 << 30}
    c0, c1 = client(coord, 0), client(coord, 1)
    c0.register()
    c1.register()
    c0._sampler, c1._sampler = FakeSampler(900 << 20), FakeSampler(3000 << 20)
    c0.heartbeat()
    c1.heartbeat()
    c0.heartbeat()                                     # once a minute per host, not per heartbeat
    warnings = []
    while True:
        ev = coord.get_event(timeout=0.2)
        if ev is None:
            break
        if ev.kind == "warning":
            warnings.append(ev)
    assert len(warnings) == 1, warnings
    assert "has 100 MB of 8192 MB memory left" in warnings[0].detail
    assert warnings[0].rank in (0, 1) and "Lower job.global_batch_size" in warnings[0].detail
    c0.close()
    c1.close()


@pytest.mark.timeout(30)
def test_stop_requests_reach_the_workers_and_polling_scripts_are_counted(tmp_path, monkeypatch):
    import cluster
    from cluster import heartbeat
    co = Coordinator(SECRET, 1, run_dir=str(tmp_path), heartbeat_timeout=10, startup_timeout=30).start()
    c0 = CoordinatorClient(co.address, SECRET, 0, world_size=1, timeout=3.0)
    try:
        c0.register()
        c0.share()
        assert cluster.stop_requested() is False and c0.honours_stop      # polling marks the client
        c0.heartbeat()
        assert co.all_honour_stop() and co.state()["all_honour_stop"] is True
        co.request_stop()
        c0.heartbeat()
        assert c0.stop_pending and cluster.stop_requested() is True
    finally:
        monkeypatch.setattr(heartbeat, "_process_client", None)
        c0.close()
        co.stop()
    assert cluster.stop_requested() is False                               # no launcher: never asked
