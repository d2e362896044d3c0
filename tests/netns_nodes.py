"""Two network-namespace "nodes" on a bridge, reached by Hydra through an `ip netns exec` stand-in for ssh.

Shared by the multi-node `dptrain mpirun` tests (test_multinode_mpirun.py, test_remote_auto.py):
each node is a namespace with its own address and hostname, so the hostfile, remote launch,
environment propagation and coordinator traffic all cross a real (virtual) network.  Needs root
and iproute2; `needs_netns` skips a test module otherwise.  Test modules take the fixture with
`cluster_of_two = netns_nodes.cluster_of_two`.
"""
import os
import random
import shutil
import subprocess
import sys
import uuid

import pytest

from dist_utils import base_env

needs_netns = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None,
                                 reason="network namespaces need root and iproute2")


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


@pytest.fixture
def cluster_of_two(tmp_path):
    """Yields (net, bridge, ssh): nodes at NET.2 and NET.3, this machine at NET.1 on `bridge`, and
    the ssh stand-in (it knows only those two addresses: any other host fails with exit 255)."""
    tag = uuid.uuid4().hex[:5]
    net = f"10.{random.randint(100, 250)}.{random.randint(1, 250)}"
    bridge, ns = f"dpb{tag}", {f"{net}.2": f"dpn{tag}a", f"{net}.3": f"dpn{tag}b"}
    try:
        sh("ip", "link", "add", bridge, "type", "bridge")
        sh("ip", "addr", "add", f"{net}.1/24", "dev", bridge)
        sh("ip", "link", "set", bridge, "up")
        for i, (addr, name) in enumerate(ns.items()):
            sh("ip", "netns", "add", name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
            sh("ip", "link", "add", f"dpv{tag}{i}", "type", "veth", "peer", "name", "eth0", "netns", name)
            sh("ip", "link", "set", f"dpv{tag}{i}", "master", bridge)
            sh("ip", "link", "set", f"dpv{tag}{i}", "up")
            sh("ip", "-n", name, "addr", "add", f"{addr}/24", "dev", "eth0")
            sh("ip", "-n", name, "link", "set", "eth0", "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        for name in ns.values():
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        pytest.skip(f"cannot create a bridge and network namespaces here: {e}")
    ssh = tmp_path / "netns-ssh"
    cases = "\n".join(f'  {addr}) ns={name} ;;' for addr, name in ns.items())
    ssh.write_text(f"""#!/bin/bash
# Stand-in for ssh, as Hydra calls it: [options] HOST COMMAND... -> run COMMAND in HOST's namespace
while [[ "$1" == -* ]]; do shift; done
host="$1"; shift
case "$host" in
{cases}
  *) echo "unknown host $host" >&2; exit 255 ;;
esac
# each node under its own hostname, as real hosts are (the two-level collectives key on it)
exec ip netns exec "$ns" unshare --uts /bin/sh -c "hostname $ns && $*"
""")
    ssh.chmod(0o755)
    yield net, bridge, str(ssh)
    for name in ns.values():
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def write_config(tmp_path, net, bridge, ssh, slots=1):
    """mn.yaml: a small mlp_bn job on the two nodes (`slots` for both), through the ssh stand-in."""
    (tmp_path / "mn.yaml").write_text(f"""
name: mn
cluster:
  nodes:
    - {{host: {net}.2, slots: {slots}}}
    - {{host: {net}.3, slots: {slots}}}
  backend: mpi
  coordinator: {{host: {net}.1}}
  mpi:
    extra_args: ["-launcher", "ssh", "-launcher-exec", "{ssh}", "-iface", "{bridge}"]
job:
  model: mlp_bn
  model_args: {{hidden: 32}}
  dataset: {{name: synthetic, train_subset: 640, test_subset: 200}}
  epochs: 2
  global_batch_size: 32
  log_every: 5
checkpoint: {{interval: 8}}
output: {{dir: run, progress: false}}
fault_tolerance: {{heartbeat_interval: 0.5, startup_timeout: 60}}
""")
    return "mn.yaml"


def dptrain(tmp_path, *args, env=None, timeout=150):
    """`python -m launcher ARGS` in tmp_path with the test environment."""
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=tmp_path, env=base_env(env),
                          capture_output=True, text=True, timeout=timeout)
