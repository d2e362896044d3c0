"""cluster.nodes: slurm — the allocation's nodes, tasks per node and GPUs (a fake scontrol here)."""
import os
import stat

import pytest

from cluster.config import ConfigError, resolve_config
from cluster.slurm import allocation_nodes, expand_counts


def test_compressed_counts_expand_like_slurm():
    assert expand_counts("2(x3),1") == [2, 2, 2, 1]
    assert expand_counts("4") == [4]
    with pytest.raises(ValueError, match="cannot read"):
        expand_counts("2(x)")


@pytest.fixture
def fake_scontrol(tmp_path, monkeypatch):
    tool = tmp_path / "scontrol"
    tool.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 1\n"
                    "case \"$3\" in 'gpu[01-03],cpu7') printf 'gpu01\\ngpu02\\ngpu03\\ncpu7\\n';; "
                    "*) echo \"unknown $3\" >&2; exit 1;; esac\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    return tool


def test_the_allocation_becomes_the_node_list(fake_scontrol):
    env = {"SLURM_JOB_NODELIST": "gpu[01-03],cpu7", "SLURM_TASKS_PER_NODE": "4(x3),2", "SLURM_GPUS_PER_NODE": "gpu:a100:4"}
    errors: list = []
    assert allocation_nodes(env, errors) == [{"host": "gpu01", "slots": 4, "gpus": 4},
                                             {"host": "gpu02", "slots": 4, "gpus": 4},
                                             {"host": "gpu03", "slots": 4, "gpus": 4},
                                             {"host": "cpu7", "slots": 2, "gpus": 4}] and not errors
    assert allocation_nodes({"SLURM_JOB_NODELIST": "gpu[01-03],cpu7"}, errors)[0]["slots"] == 1
    assert allocation_nodes({**env, "SLURM_TASKS_PER_NODE": "4(x2)"}, errors) is None
    assert "lists 4 nodes but SLURM_TASKS_PER_NODE='4(x2)' gives 2 task counts" in errors[-1]
    assert allocation_nodes({"SLURM_JOB_NODELIST": "other[1-2]"}, errors) is None
    assert "failed: unknown other[1-2]" in errors[-1]


def test_nodes_slurm_in_a_config(fake_scontrol, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[01-03],cpu7")
    monkeypatch.setenv("SLURM_TASKS_PER_NODE", "2(x4)")
    monkeypatch.delenv("SLURM_GPUS_ON_NODE", raising=False)
    monkeypatch.delenv("SLURM_GPUS_PER_NODE", raising=False)
    cfg = resolve_config({"cluster": {"nodes": "slurm"}, "job": {"global_batch_size": 64}})
    assert [n["host"] for n in cfg["cluster"]["nodes"]] == ["gpu01", "gpu02", "gpu03", "cpu7"]
    assert cfg.world_size == 8
    monkeypatch.delenv("SLURM_JOB_NODELIST")
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST is not set: run the command inside `salloc`"):
        resolve_config({"cluster": {"nodes": "slurm"}})
    with pytest.raises(ConfigError, match=r"cluster.nodes: expected a list"):
        resolve_config({"cluster": {"nodes": "slurmm"}})


def test_launch_hosts_slurm_outside_an_allocation_names_the_fix(tmp_path):
    import subprocess
    import sys
    from dist_utils import ROOT, base_env
    (tmp_path / "t.py").write_text("print('never')\n")
    env = {k: v for k, v in base_env().items() if not k.startswith("SLURM_")}
    p = subprocess.run([sys.executable, "-m", "launcher", "launch", "--hosts", "slurm", str(tmp_path / "t.py")],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "SLURM_JOB_NODELIST is not set: run the command inside `salloc`" in p.stderr
