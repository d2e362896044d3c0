"""`cluster.nodes: slurm`: the nodes of the Slurm allocation this command runs in.

Why: inside `salloc` / `sbatch` the allocation already says which machines the job has and how
many tasks each may run; copying that into the YAML by hand is error-prone and changes with
every allocation.  `SLURM_JOB_NODELIST` (compressed, e.g. `gpu[01-03,07]`) is expanded by
`scontrol show hostnames`, as Slurm's own scripts do; the slots of each node come from
`SLURM_TASKS_PER_NODE` (`2(x3),1`: three nodes with 2 tasks, then one with 1), the GPUs from
`SLURM_GPUS_ON_NODE` or `SLURM_GPUS_PER_NODE` (`gpu:a100:2` -> 2).  Ask for the tasks you want
(`--ntasks-per-node=4`): an allocation made without them has one task per node.
"""
from __future__ import annotations

import re
import subprocess
from typing import Mapping

__all__ = ["allocation_nodes", "expand_counts"]

#: scontrol answers at once; a hung controller must not hang the launcher
SCONTROL_TIMEOUT_S = 15.0


def expand_counts(text: str) -> list[int]:
    """Slurm's compressed per-node counts: '2(x3),1' -> [2, 2, 2, 1]."""
    out: list[int] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            raise ValueError(f"cannot read the per-node count {part!r} in {text!r}")
        out += [int(m.group(1))] * int(m.group(2) or 1)
    return out


def _gpus(env: Mapping[str, str]) -> int:
    for key in ("SLURM_GPUS_ON_NODE", "SLURM_GPUS_PER_NODE"):
        raw = env.get(key, "").strip()
        if raw:
            m = re.search(r"(\d+)\s*$", raw.split(",")[0])   # '2', 'gpu:2', 'gpu:a100:2'
            if m:
                return int(m.group(1))
    return 0


def allocation_nodes(env: Mapping[str, str], errors: list[str], path: str = "cluster.nodes") -> list[dict] | None:
    """[{host, slots, gpus}] of the allocation in `env`, or None with the reason added to `errors`."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        errors.append(f"{path}: 'slurm' takes the nodes of the Slurm allocation, but SLURM_JOB_NODELIST is not set: "
                      f"run the command inside `salloc` or an sbatch script, or list the nodes")
        return None
    try:
        r = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                           timeout=SCONTROL_TIMEOUT_S)
    except FileNotFoundError:
        errors.append(f"{path}: 'slurm' needs `scontrol` to expand SLURM_JOB_NODELIST={nodelist!r}, and it is not "
                      f"on PATH: load the Slurm module, or list the nodes")
        return None
    except subprocess.TimeoutExpired:
        errors.append(f"{path}: `scontrol show hostnames {nodelist}` did not answer within "
                      f"{SCONTROL_TIMEOUT_S:g} s; is the Slurm controller up? Or list the nodes")
        return None
    hosts = r.stdout.split()
    if r.returncode != 0 or not hosts:
        errors.append(f"{path}: `scontrol show hostnames {nodelist}` failed: "
                      f"{(r.stderr or r.stdout).strip() or 'no hosts'}; list the nodes instead")
        return None
    per_node = env.get("SLURM_TASKS_PER_NODE") or env.get("SLURM_NTASKS_PER_NODE") or ""
    try:
        slots = expand_counts(per_node) if per_node else [1] * len(hosts)
    except ValueError as e:
        errors.append(f"{path}: SLURM_TASKS_PER_NODE: {e}")
        return None
    if len(slots) == 1 and len(hosts) > 1:
        slots = slots * len(hosts)                 # SLURM_NTASKS_PER_NODE is one number for every node
    if len(slots) != len(hosts):
        errors.append(f"{path}: the allocation lists {len(hosts)} nodes but SLURM_TASKS_PER_NODE={per_node!r} "
                      f"gives {len(slots)} task counts; list the nodes instead")
        return None
    gpus = _gpus(env)
    return [{"host": h, "slots": s, "gpus": gpus} for h, s in zip(hosts, slots)]
