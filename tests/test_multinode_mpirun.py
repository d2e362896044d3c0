"""`dptrain mpirun` across two "nodes": network namespaces on a bridge, launched by Hydra.

Each node is a network namespace with its own address; Hydra reaches it through a
stand-in for ssh (`ip netns exec`), exactly as it reaches a remote host through ssh.
The launcher, the coordinator and mpiexec stay in the root namespace, so the hostfile,
remote launch, environment propagation, coordinator traffic over the network and the
elastic restart that drops a failed node are all exercised.  Needs root and iproute2;
skipped otherwise.
"""
import json

import pytest

import netns_nodes
from netns_nodes import dptrain as _dptrain, write_config as _config

pytestmark = netns_nodes.needs_netns
cluster_of_two = netns_nodes.cluster_of_two


@pytest.mark.timeout(200)
def test_mpirun_places_one_rank_on_each_node_and_trains(tmp_path, cluster_of_two):
    net, bridge, ssh = cluster_of_two
    r = _dptrain(tmp_path, "mpirun", _config(tmp_path, net, bridge, ssh))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"on 2 node(s) incl. {net}.2, {net}.3" in r.stderr
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 40
    workers = json.loads((tmp_path / "run/coordinator.json").read_text())["workers"]
    # the coordinator saw each rank connect from its own node's address
    assert {r: w["address"] for r, w in workers.items()} == {"0": f"{net}.2", "1": f"{net}.3"}
    assert all(w["state"] == "done" for w in workers.values())


@pytest.mark.timeout(200)
def test_two_ranks_on_each_node_reduce_in_two_levels(tmp_path, cluster_of_two):
    """2 nodes x 2 slots: the gradients take the two-level ring (inside each node, then across)."""
    net, bridge, ssh = cluster_of_two
    r = _dptrain(tmp_path, "mpirun", _config(tmp_path, net, bridge, ssh, slots=2))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "two-level ring across hosts" in r.stdout + r.stderr, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["world_size"] == 4 and summary["steps"] == 40
    workers = json.loads((tmp_path / "run/coordinator.json").read_text())["workers"]
    assert sorted(w["address"] for w in workers.values()) == [f"{net}.2"] * 2 + [f"{net}.3"] * 2


@pytest.mark.timeout(200)
def test_a_failed_node_is_left_out_and_the_other_finishes(tmp_path, cluster_of_two):
    net, bridge, ssh = cluster_of_two
    r = _dptrain(tmp_path, "mpirun", _config(tmp_path, net, bridge, ssh), "fault_tolerance.max_restarts=1",
                 "fault_tolerance.min_workers=1", env={"DPTRAIN_FAULT_CRASH_AT_STEP": "13"})
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "rank 1 failed with exit code 17" in r.stderr or "rank 1 failed: exit code 17" in r.stderr
    assert f"elastic restart: node 1 ({net}.3) is left out; 1 worker continues" in r.stderr
    assert (tmp_path / "run/hostfile").read_text().strip() == f"{net}.2:1"
    summary = json.loads((tmp_path / "run/summary.json").read_text())
    assert summary["world_size"] == 1 and summary["restarts"] == 1 and summary["steps"] == 40
    workers = json.loads((tmp_path / "run/coordinator.json").read_text())["workers"]
    assert {r: w["address"] for r, w in workers.items()} == {"0": f"{net}.2"}
    # after the failed attempt, the MPI segments killed ranks left are cleaned on every node, the
    # left-out one included, through the same mpiexec and ssh stand-in
    log = (tmp_path / "run/logs/mpiexec.log").read_text()
    assert f"shared-memory cleanup on {net}.2, {net}.3: exit code 0" in log, log[-2000:]


@pytest.mark.timeout(200)
def test_the_launching_machine_can_be_a_node_too(tmp_path, cluster_of_two):
    """`host: localhost` for the machine running dptrain, a remote node beside it, and no coordinator
    host given: remote ranks must be told an address of this machine they can reach (not localhost)."""
    net, bridge, ssh = cluster_of_two
    text = open(tmp_path / _config(tmp_path, net, bridge, ssh)).read()
    text = text.replace(f"    - {{host: {net}.2, slots: 1}}\n    - {{host: {net}.3, slots: 1}}\n",
                        f"    - {{host: localhost, slots: 1}}\n    - {{host: {net}.2, slots: 1}}\n")
    text = text.replace(f"  coordinator: {{host: {net}.1}}\n", "")
    text = text.replace(f', "-iface", "{bridge}"', "")
    (tmp_path / "mixed.yaml").write_text(text)
    r = _dptrain(tmp_path, "mpirun", "mixed.yaml")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    workers = json.loads((tmp_path / "run/coordinator.json").read_text())["workers"]
    assert workers["1"]["address"] == f"{net}.2" and all(w["state"] == "done" for w in workers.values())
