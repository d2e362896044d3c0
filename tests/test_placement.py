"""Rank placement (block/cyclic, GPUs, cross ranks) and rank detection from launcher environments."""
from __future__ import annotations

import pytest

from launcher.mpiworker import resolve_rank_env
from launcher.placement import assign_ranks, detect_env, nodes_per_rank, parse_slurm_tasks_per_node, plan


def nodes(*spec):
    return [{"host": h, "slots": s, "gpus": g} for h, s, g in spec]


def table(slots):
    return [(s.rank, s.host, s.local_rank, s.node_rank) for s in slots]


def test_block_fills_nodes_in_order():
    s = assign_ranks(nodes(("a", 2, 0), ("b", 3, 0)), "block")
    assert table(s) == [(0, "a", 0, 0), (1, "a", 1, 0), (2, "b", 0, 1), (3, "b", 1, 1), (4, "b", 2, 1)]
    assert all(x.world_size == 5 and x.num_nodes == 2 for x in s)
    assert [x.local_world_size for x in s] == [2, 2, 3, 3, 3]


def test_cyclic_round_robin_skips_full_nodes():
    s = assign_ranks(nodes(("a", 1, 0), ("b", 3, 0), ("c", 2, 0)), "cyclic")
    assert [x.host for x in s] == ["a", "b", "c", "b", "c", "b"]
    assert [x.local_rank for x in s] == [0, 0, 0, 1, 1, 2]
    assert nodes_per_rank(nodes(("a", 1, 0), ("b", 3, 0), ("c", 2, 0)), "cyclic") == [0, 1, 2, 1, 2, 1]


def test_gpus_round_robin_and_none_without_gpus():
    s = assign_ranks(nodes(("a", 3, 2), ("b", 2, 0)), "block")
    assert [x.gpu for x in s] == [0, 1, 0, None, None]
    s = assign_ranks(nodes(("a", 4, 4)), "cyclic")
    assert [x.gpu for x in s] == [0, 1, 2, 3]


def test_cross_ranks():
    s = assign_ranks(nodes(("a", 2, 0), ("b", 1, 0), ("c", 2, 0)), "block")
    # local rank 0 exists on a, b, c; local rank 1 only on a and c
    assert [(x.local_rank, x.cross_rank, x.cross_size) for x in s] == [(0, 0, 3), (1, 0, 2), (0, 1, 3),
                                                                       (0, 2, 3), (1, 1, 2)]


def test_plan_uses_config(tmp_path):
    from cluster.config import resolve_config
    cfg = resolve_config({"cluster": {"nodes": [{"host": "a", "slots": 2}, {"host": "b", "slots": 2}],
                                      "placement": "cyclic"}}, base_dir=str(tmp_path))
    assert [x.host for x in plan(cfg)] == ["a", "b", "a", "b"]


def test_bad_placement():
    with pytest.raises(ValueError):
        assign_ranks(nodes(("a", 1, 0)), "random")
    with pytest.raises(ValueError):
        assign_ranks([], "block")


# ---------------------------------------------------------------- environments
def test_no_launcher_environment():
    assert detect_env({"HOME": "/root"}) is None


def test_openmpi_env():
    e = detect_env({"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                    "OMPI_COMM_WORLD_LOCAL_SIZE": "2", "SLURM_PROCID": "0", "SLURM_NTASKS": "1"})
    assert (e.source, e.rank, e.world_size, e.local_rank, e.local_world_size, e.node_rank) == \
        ("openmpi", 3, 4, 1, 2, None)


def test_mpich_hydra_env():
    e = detect_env({"PMI_RANK": "1", "PMI_SIZE": "2", "MPI_LOCALRANKID": "1", "MPI_LOCALNRANKS": "2"})
    assert (e.source, e.rank, e.world_size, e.local_rank, e.local_world_size) == ("mpich", 1, 2, 1, 2)


def test_mvapich_env():
    e = detect_env({"MV2_COMM_WORLD_RANK": "5", "MV2_COMM_WORLD_SIZE": "8", "MV2_COMM_WORLD_LOCAL_RANK": "1"})
    assert (e.source, e.rank, e.world_size, e.local_rank) == ("mvapich", 5, 8, 1)


def test_slurm_env():
    e = detect_env({"SLURM_PROCID": "6", "SLURM_NTASKS": "7", "SLURM_LOCALID": "0", "SLURM_NODEID": "3",
                    "SLURM_TASKS_PER_NODE": "2(x3),1"})
    assert (e.source, e.rank, e.world_size, e.local_rank, e.local_world_size, e.node_rank) == \
        ("slurm", 6, 7, 0, 1, 3)


def test_dptrain_env_wins():
    e = detect_env({"DPTRAIN_RANK": "1", "DPTRAIN_WORLD_SIZE": "2", "DPTRAIN_LOCAL_RANK": "1",
                    "PMI_RANK": "0", "PMI_SIZE": "2"})
    assert (e.source, e.rank, e.local_rank) == ("dptrain", 1, 1)


def test_parse_slurm_tasks_per_node():
    assert parse_slurm_tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert parse_slurm_tasks_per_node("4") == [4]
    with pytest.raises(ValueError):
        parse_slurm_tasks_per_node("2(y3)")


# ---------------------------------------------------------------- the mpiexec/srun shim
def _placement(node_list, placement="block", console="all"):
    slots = assign_ranks(node_list, placement)
    return {"progress": True, "console": console, "gpus": [n["gpus"] for n in node_list],
            "hosts": [n["host"] for n in node_list], "slots": [s.as_dict() for s in slots]}


def test_shim_uses_placement_under_hydra():
    pl = _placement(nodes(("a", 1, 0), ("b", 2, 2)), "cyclic")   # ranks: a, b, b
    env, warns = resolve_rank_env({"PMI_RANK": "2", "PMI_SIZE": "3", "MPI_LOCALRANKID": "0"}, pl)
    assert env["DPTRAIN_RANK"] == "2" and env["DPTRAIN_WORLD_SIZE"] == "3"
    assert env["DPTRAIN_NODE_RANK"] == "1" and env["DPTRAIN_LOCAL_RANK"] == "1" and env["DPTRAIN_GPU"] == "1"
    assert env["DPTRAIN_PROGRESS"] == "0" and not warns


def test_shim_slurm_local_ids_and_gpu():
    pl = _placement(nodes(("x", 2, 2), ("y", 2, 2)))
    env, _ = resolve_rank_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0",
                               "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "2(x2)"}, pl)
    assert env["DPTRAIN_RANK"] == "0" and env["DPTRAIN_GPU"] == "0" and env["DPTRAIN_PROGRESS"] == "1"
    env, _ = resolve_rank_env({"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
                               "SLURM_NODEID": "1", "SLURM_TASKS_PER_NODE": "2(x2)"}, pl)
    assert (env["DPTRAIN_NODE_RANK"], env["DPTRAIN_LOCAL_RANK"], env["DPTRAIN_GPU"]) == ("1", "1", "1")


def test_shim_world_size_mismatch_warns():
    pl = _placement(nodes(("a", 2, 0)))
    env, warns = resolve_rank_env({"OMPI_COMM_WORLD_RANK": "2", "OMPI_COMM_WORLD_SIZE": "3",
                                   "OMPI_COMM_WORLD_LOCAL_RANK": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "3"}, pl)
    assert env["DPTRAIN_RANK"] == "2" and env["DPTRAIN_LOCAL_RANK"] == "2" and warns


def test_shim_refuses_without_launcher():
    with pytest.raises(SystemExit):
        resolve_rank_env({"DPTRAIN_WORLD_SIZE": "2"}, None)
