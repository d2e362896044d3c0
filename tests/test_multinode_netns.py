"""Two "nodes" on one machine: ranks in separate network namespaces joined by a veth pair.

Each rank sees only its own address, so the ZeroMQ rendezvous, the ring traffic and the
coordinator-free DDP job all cross a real (virtual) network link, as between two hosts.
Needs root and iproute2; skipped otherwise.
"""
import os
import shutil
import subprocess
import sys
import uuid

import numpy as np
import pytest

import engine
from dist_utils import ROOT, base_env

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                reason="network namespaces need root and iproute2")


def _sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@pytest.fixture
def two_nodes():
    tag = uuid.uuid4().hex[:6]
    ns = [f"dpt{tag}a", f"dpt{tag}b"]
    veth = [f"va{tag}", f"vb{tag}"]
    addrs = ["10.231.0.1", "10.231.0.2"]
    try:
        for n in ns:
            _sh("ip", "netns", "add", n)
            _sh("ip", "-n", n, "link", "set", "lo", "up")
        _sh("ip", "link", "add", veth[0], "type", "veth", "peer", "name", veth[1])
        for n, v, a in zip(ns, veth, addrs):
            _sh("ip", "link", "set", v, "netns", n)
            _sh("ip", "-n", n, "addr", "add", f"{a}/24", "dev", v)
            _sh("ip", "-n", n, "link", "set", v, "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        for n in ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
        pytest.skip(f"cannot create network namespaces here: {e}")
    yield ns, addrs
    for n in ns:
        subprocess.run(["ip", "netns", "del", n], capture_output=True)


@pytest.mark.timeout(240)
def test_two_node_ddp_over_a_virtual_link_matches_one_worker(tmp_path, two_nodes):
    ns, addrs = two_nodes
    worker = os.path.join(ROOT, "tests", "ddp_worker.py")
    args = ["--model", "mlp_bn", "--steps", "10", "--global-batch", "16"]
    # reference: one worker, no network
    ref = subprocess.run([sys.executable, worker, str(tmp_path / "one")] + args, cwd=ROOT, env=base_env(),
                         capture_output=True, text=True, timeout=120)
    assert ref.returncode == 0, ref.stderr[-2000:]
    procs = []
    for r in range(2):
        env = base_env({"DPTRAIN_RANK": str(r), "DPTRAIN_WORLD_SIZE": "2", "DPTRAIN_LOCAL_RANK": "0",
                        "DPTRAIN_LOCAL_WORLD_SIZE": "1", "DPTRAIN_NODE_RANK": str(r),
                        "DPTRAIN_MASTER_ADDR": addrs[0], "DPTRAIN_MASTER_PORT": "29517",
                        "DPTRAIN_COMM_ADDR": addrs[r], "DPTRAIN_COMM_BACKEND": "zmq",
                        "DPTRAIN_COMM_SHM": "0", "DPTRAIN_COMM_LIVENESS": "0", "DPTRAIN_COMM_TIMEOUT": "60"})
        procs.append(subprocess.Popen(["ip", "netns", "exec", ns[r], sys.executable, worker,
                                       str(tmp_path / "two")] + args,
                                      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=180))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (o, e) in zip(procs, outs):
        assert p.returncode == 0, e[-3000:]
    import json
    for r in range(2):
        info = json.loads((tmp_path / f"two.rank{r}.json").read_text())
        assert info["size"] == 2 and info["backend"] == "zmq"
    one = engine.load(str(tmp_path / "one.safetensors"))
    two = engine.load(str(tmp_path / "two.safetensors"))
    diff = max(float(np.max(np.abs(np.asarray(one[k], np.float64) - np.asarray(two[k], np.float64))))
               for k in one)
    assert diff <= 1e-5
