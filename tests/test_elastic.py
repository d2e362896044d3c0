"""Elastic restarts: fewer workers continue from the newest checkpoint when one fails."""
import json
import subprocess
import sys

import numpy as np
import pytest

from launcher.elastic import shrink_nodes


def _nodes(*slots):
    return [{"host": f"node{i}", "slots": s, "gpus": 0} for i, s in enumerate(slots)]


def test_a_failed_node_is_left_out_when_enough_workers_remain():
    nodes, why = shrink_nodes(_nodes(2, 2, 2), failed_node=1, min_workers=2, global_batch=64)
    assert [n["host"] for n in nodes] == ["node0", "node2"]
    assert "node 1 (node1) is left out; 4 workers continue" in why


def test_no_shrink_below_min_workers_or_to_a_size_that_does_not_split_the_batch():
    assert shrink_nodes(_nodes(2, 2), failed_node=0, min_workers=3, global_batch=64) is None
    assert shrink_nodes(_nodes(3, 2), failed_node=1, min_workers=1, global_batch=64) is None   # 3 does not divide 64
    assert shrink_nodes(_nodes(3, 2), failed_node=0, min_workers=1, global_batch=64) is not None
    assert shrink_nodes(_nodes(2, 2), failed_node=5, min_workers=1, global_batch=64) is None


def test_one_node_loses_one_slot_or_as_many_as_the_batch_needs():
    nodes, why = shrink_nodes(_nodes(4), failed_node=0, min_workers=1, global_batch=64)
    assert nodes[0]["slots"] == 2 and "node0 runs 2 workers instead of 4" in why      # 3 does not divide 64
    nodes, _ = shrink_nodes(_nodes(2), failed_node=0, min_workers=1, global_batch=30)
    assert nodes[0]["slots"] == 1
    assert shrink_nodes(_nodes(1), failed_node=0, min_workers=1, global_batch=8) is None
    original = _nodes(4)
    shrink_nodes(original, failed_node=0, min_workers=1, global_batch=64)
    assert original[0]["slots"] == 4                                                  # input untouched


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])          # local processes / through mpiexec
def test_a_failing_worker_is_dropped_and_the_rest_finish_the_run(tmp_path, backend):
    from dist_utils import base_env
    (tmp_path / "el.yaml").write_text(f"""
name: el
cluster: {{nodes: [{{host: localhost, slots: 2}}], backend: {backend}}}
job:
  model: mlp_bn
  model_args: {{hidden: 32}}
  dataset: {{name: synthetic, train_subset: 640, test_subset: 200}}
  epochs: 2
  global_batch_size: 32
  log_every: 5
  optimizer: {{lr: 0.01}}
checkpoint: {{interval: 8, keep: 2}}
output: {{dir: el, progress: false}}
fault_tolerance: {{max_restarts: 1, min_workers: 1, heartbeat_interval: 0.5}}
""")
    r = subprocess.run([sys.executable, "-m", "launcher", "run", "el.yaml"], cwd=tmp_path,
                       env=base_env({"DPTRAIN_FAULT_CRASH_AT_STEP": "13"}), capture_output=True, text=True,
                       timeout=110)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "elastic restart: localhost runs 1 worker instead of 2; 1 worker continues" in r.stderr
    assert "written by 2 worker(s); continuing on 1" in r.stdout
    summary = json.loads((tmp_path / "el/summary.json").read_text())
    assert summary["world_size"] == 1 and summary["restarts"] == 1 and summary["steps"] == 40
    assert "slots: 1" in (tmp_path / "el/config.yaml").read_text()
    placement = json.loads((tmp_path / "el/placement.json").read_text())
    assert len(placement["slots"]) == 1 and np.isfinite(summary["test_loss"])


def test_min_workers_is_validated(tmp_path):
    from cluster.config import ConfigError, load_config
    (tmp_path / "c.yaml").write_text("name: x\ncluster: {nodes: [{host: localhost, slots: 1}]}\n"
                                     "fault_tolerance: {min_workers: 0}\n")
    with pytest.raises(ConfigError, match="fault_tolerance.min_workers"):
        load_config(tmp_path / "c.yaml")
