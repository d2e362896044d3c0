"""Elastic restarts: continue on fewer workers when a node (or worker slot) keeps failing.

Why: a restart on the same machines only helps when the failure was transient.  When a
node is gone for good, every restart fails again until the budget is spent.  With
``fault_tolerance.min_workers`` set, the launcher leaves the failed worker's node out of
the next attempt (on a one-node cluster: one of its slots), as Horovod's elastic mode
blacklists a failed host.  Checkpoints do not depend on the world size (global batch,
global sampler position, one RNG stream), so the smaller group resumes from the newest
checkpoint and trains on as if nothing had changed.

`shrink_nodes` is a pure function of the node list, so the policy is tested without
machines to lose.
"""
from __future__ import annotations

import copy
from typing import Sequence

__all__ = ["shrink_nodes"]


def shrink_nodes(nodes: Sequence[dict], failed_node: int, min_workers: int,
                 global_batch: int) -> tuple[list[dict], str] | None:
    """The node list for the next attempt without the failed node (or, alone, one of its slots).

    None when the result would have fewer than `min_workers` workers or a world size that
    does not divide `global_batch` (every rank must get the same share of a step).
    """
    nodes = [copy.deepcopy(dict(n)) for n in nodes]
    if not 0 <= failed_node < len(nodes):
        return None
    host = nodes[failed_node]["host"]
    if len(nodes) > 1:
        rest = nodes[:failed_node] + nodes[failed_node + 1:]
        world = sum(int(n["slots"]) for n in rest)
        why = f"node {failed_node} ({host}) is left out"
    else:
        rest = nodes
        before = int(rest[0]["slots"])
        world = before - 1
        # keep as many workers as still split the global batch evenly
        while world >= max(1, min_workers) and global_batch % world:
            world -= 1
        rest[0]["slots"] = world
        why = f"{host} runs {world} worker{'s' if world != 1 else ''} instead of {before}"
    if world < max(1, min_workers) or global_batch % world:
        return None
    return rest, (f"{why}; {world} worker{' continues' if world == 1 else 's continue'} "
                  f"(fault_tolerance.min_workers: {min_workers})")
