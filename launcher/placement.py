"""Rank placement: which rank runs on which node, its local rank and its GPU.

Why: every launch mode (local processes, mpirun, the generated script, Slurm) must
agree on one mapping rank -> (node, local_rank, gpu), and a worker started by an
external launcher must be able to find its own entry from the environment that
launcher set (Open MPI, MPICH/Hydra, MVAPICH, Slurm).  The idea follows Horovod's
host-slot assignment (hosts with slots -> ranks, plus cross ranks for hierarchical
collectives); the code is our own.

`assign_ranks(nodes, placement)` is a pure function of the config; `detect_env(env)`
reads what an external launcher told the process.
"""
from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

__all__ = ["Slot", "EnvRank", "assign_ranks", "plan", "detect_env", "parse_slurm_tasks_per_node",
           "nodes_per_rank"]


@dataclass(frozen=True)
class Slot:
    """Where one rank runs."""
    rank: int
    world_size: int
    local_rank: int          # index among the ranks on the same node
    local_world_size: int    # ranks on this node
    node_rank: int           # index of the node in cluster.nodes
    num_nodes: int
    host: str
    gpu: int | None          # GPU index on the node (round robin over its gpus), None without GPUs
    cross_rank: int          # index of this node among nodes that have this local_rank
    cross_size: int          # number of nodes that have this local_rank

    def as_dict(self) -> dict:
        return asdict(self)


def _node_fields(node) -> tuple[str, int, int]:
    host = node["host"]
    slots = int(node.get("slots", 1))
    gpus = int(node.get("gpus", 0) or 0)
    if slots < 1:
        raise ValueError(f"node {host!r}: slots must be >= 1, got {slots}")
    if gpus < 0:
        raise ValueError(f"node {host!r}: gpus must be >= 0, got {gpus}")
    return host, slots, gpus


def nodes_per_rank(nodes: Sequence[Mapping], placement: str = "block") -> list[int]:
    """The node index of every rank, in rank order."""
    slots = [_node_fields(n)[1] for n in nodes]
    if placement == "block":
        return [i for i, s in enumerate(slots) for _ in range(s)]
    if placement == "cyclic":
        left = list(slots)
        order: list[int] = []
        while any(left):
            for i in range(len(left)):
                if left[i]:
                    order.append(i)
                    left[i] -= 1
        return order
    raise ValueError(f"placement must be 'block' or 'cyclic', got {placement!r}")


def assign_ranks(nodes: Sequence[Mapping], placement: str = "block") -> list[Slot]:
    """Assign ranks to node slots.

    block:  ranks fill node 0's slots, then node 1's, ... (neighbouring ranks share a node,
            which keeps ring neighbours local).
    cyclic: rank r goes to the next node that still has a free slot, round robin.
    GPUs are handed out round robin over the node's `gpus`: gpu = local_rank % gpus.
    """
    if not nodes:
        raise ValueError("at least one node is needed")
    fields = [_node_fields(n) for n in nodes]
    owner = nodes_per_rank(nodes, placement)
    world = len(owner)
    counters = [0] * len(fields)
    local: list[int] = []
    for node in owner:
        local.append(counters[node])
        counters[node] += 1
    # cross ranks: among nodes holding local rank L, in node order
    holders: dict[int, list[int]] = {}
    for node, (_, slots, _) in enumerate(fields):
        for lr in range(slots):
            holders.setdefault(lr, []).append(node)
    out = []
    for rank, (node, lr) in enumerate(zip(owner, local)):
        host, slots, gpus = fields[node]
        out.append(Slot(rank=rank, world_size=world, local_rank=lr, local_world_size=slots,
                        node_rank=node, num_nodes=len(fields), host=host,
                        gpu=(lr % gpus) if gpus else None,
                        cross_rank=holders[lr].index(node), cross_size=len(holders[lr])))
    return out


def plan(cfg) -> list[Slot]:
    """Placement of a resolved Config."""
    return assign_ranks(cfg["cluster"]["nodes"], cfg["cluster"]["placement"])


# --------------------------------------------------------------------------- environment
@dataclass(frozen=True)
class EnvRank:
    """What an external launcher told this process about its rank."""
    source: str                  # dptrain | openmpi | mpich | mvapich | slurm
    rank: int
    world_size: int
    local_rank: int | None
    local_world_size: int | None
    node_rank: int | None


def parse_slurm_tasks_per_node(text: str) -> list[int]:
    """Expand Slurm's compressed task counts: '2(x3),1' -> [2, 2, 2, 1]."""
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part)
        if not m:
            raise ValueError(f"cannot parse Slurm task count {text!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for n in names:
        v = env.get(n)
        if v is not None and v.strip().lstrip("-").isdigit():
            return int(v)
    return None


def detect_env(env: Mapping[str, str] | None = None) -> EnvRank | None:
    """Rank information from the environment, or None when no launcher set any.

    Order matters: an mpirun inside a Slurm allocation leaves SLURM_PROCID=0 in every
    rank's environment, so MPI variables win over Slurm ones; dptrain's own variables
    (set by `dptrain run` and by the worker shim) win over everything.
    """
    env = os.environ if env is None else env
    r = _int(env, "DPTRAIN_RANK")
    n = _int(env, "DPTRAIN_WORLD_SIZE")
    if r is not None and n is not None:
        return EnvRank("dptrain", r, n, _int(env, "DPTRAIN_LOCAL_RANK"), _int(env, "DPTRAIN_LOCAL_WORLD_SIZE"),
                       _int(env, "DPTRAIN_NODE_RANK"))
    r = _int(env, "OMPI_COMM_WORLD_RANK")
    n = _int(env, "OMPI_COMM_WORLD_SIZE")
    if r is not None and n is not None:
        # Open MPI has no node index variable; OMPI_COMM_WORLD_NODE_RANK is a per-node rank.
        return EnvRank("openmpi", r, n, _int(env, "OMPI_COMM_WORLD_LOCAL_RANK"),
                       _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE"), None)
    r = _int(env, "PMI_RANK")
    n = _int(env, "PMI_SIZE")
    if r is not None and n is not None:
        # MPICH Hydra, Intel MPI; the local ids are per Hydra proxy (one per hostfile line).
        return EnvRank("mpich", r, n, _int(env, "MPI_LOCALRANKID"), _int(env, "MPI_LOCALNRANKS"), None)
    r = _int(env, "PMIX_RANK")
    n = _int(env, "PMIX_SIZE", "OMPI_UNIVERSE_SIZE")
    if r is not None and n is not None:
        return EnvRank("pmix", r, n, _int(env, "PMIX_LOCAL_RANK"), _int(env, "PMIX_LOCAL_SIZE"), None)
    r = _int(env, "MV2_COMM_WORLD_RANK")
    n = _int(env, "MV2_COMM_WORLD_SIZE")
    if r is not None and n is not None:
        return EnvRank("mvapich", r, n, _int(env, "MV2_COMM_WORLD_LOCAL_RANK"),
                       _int(env, "MV2_COMM_WORLD_LOCAL_SIZE"), None)
    r = _int(env, "SLURM_PROCID")
    n = _int(env, "SLURM_NTASKS", "SLURM_NPROCS")
    if r is not None and n is not None:
        node = _int(env, "SLURM_NODEID")
        local_size = None
        tpn = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
        if tpn and node is not None:
            try:
                counts = parse_slurm_tasks_per_node(tpn)
                local_size = counts[node] if node < len(counts) else None
            except ValueError:
                local_size = None
        return EnvRank("slurm", r, n, _int(env, "SLURM_LOCALID"), local_size, node)
    return None
