"""Read the process topology from the environment, without initialising MPI.

Launchers tell each process who it is through environment variables: Open MPI
(`OMPI_COMM_WORLD_*`), MPICH/Hydra (`PMI_RANK`, `PMI_SIZE`, `MPI_LOCALRANKID`,
`MPI_LOCALNRANKS`), PMIx (`PMIX_RANK`), Slurm (`SLURM_PROCID`, `SLURM_NTASKS`,
`SLURM_LOCALID`, ...) and our own launcher (`DPTRAIN_*`).  `detect()` turns them
into one `Topology`; the DDP and launcher layers use it to pick a GPU or name a log
file before any communicator exists, and `comm.init` uses it to choose a backend.
Importing `mpi4py.MPI` would initialise MPI, so nothing here touches it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Mapping, Optional

from .errors import CommError

DEFAULT_TIMEOUT_S = 60.0
BACKENDS = ("auto", "mpi", "zmq", "local")

# Launcher kinds whose processes are MPI processes.
MPI_LAUNCHERS = ("openmpi", "mpich", "pmix", "slurm")


@dataclass(frozen=True)
class Topology:
    """Where this process sits in the job, as the launcher described it."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    launcher: str = "none"  # openmpi | mpich | pmix | slurm | dptrain | none
    node_rank: Optional[int] = None
    master_addr: Optional[str] = None
    master_port: Optional[int] = None

    @property
    def is_mpi(self) -> bool:
        """True when an MPI launcher (mpirun/mpiexec/srun) started this process."""
        return self.launcher in MPI_LAUNCHERS


def _int(env: Mapping[str, str], name: str) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        return int(raw.strip())
    except ValueError:
        raise CommError(f"environment variable {name}={raw!r} is not an integer; fix the launcher "
                        f"or unset it") from None


def _first_int(env: Mapping[str, str], *names: str) -> Optional[int]:
    for name in names:
        value = _int(env, name)
        if value is not None:
            return value
    return None


def _slurm_tasks_on_node(env: Mapping[str, str]) -> Optional[int]:
    """Tasks on this node from SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE ("2(x3),1")."""
    raw = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE")
    node = _int(env, "SLURM_NODEID")
    if not raw:
        return None
    counts = []
    for part in raw.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if not m:
            return None
        counts.extend([int(m.group(1))] * int(m.group(2) or 1))
    if node is None:
        return counts[0] if len(set(counts)) == 1 else None
    return counts[node] if node < len(counts) else None


def _check(topo: Topology, source: str) -> Topology:
    if topo.size < 1:
        raise CommError(f"{source}: world size {topo.size} must be >= 1")
    if not 0 <= topo.rank < topo.size:
        raise CommError(f"{source}: rank {topo.rank} is outside 0..{topo.size - 1}")
    if topo.local_size < 1 or not 0 <= topo.local_rank < topo.local_size:
        raise CommError(f"{source}: local rank {topo.local_rank} is outside 0..{topo.local_size - 1}")
    return topo


def detect(environ: Optional[Mapping[str, str]] = None) -> Topology:
    """Topology of this process from launcher environment variables (no MPI import).

    Precedence: Open MPI, MPICH/Hydra (PMI_*), PMIx, Slurm (unless our launcher set
    DPTRAIN_WORLD_SIZE), our launcher (DPTRAIN_*), else a single process.  When a
    launcher gives no local rank, the job is assumed to be on one node
    (local_rank = rank, local_size = size).
    """
    env = os.environ if environ is None else environ
    node = _first_int(env, "DPTRAIN_NODE_RANK", "SLURM_NODEID")

    size = _int(env, "OMPI_COMM_WORLD_SIZE")
    if size is not None:
        rank = _int(env, "OMPI_COMM_WORLD_RANK") or 0
        lr = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK")
        ls = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE")
        return _check(Topology(rank, size, rank if lr is None else lr, size if ls is None else ls,
                               "openmpi", node), "Open MPI environment (OMPI_COMM_WORLD_*)")

    if env.get("PMI_SIZE") is not None or env.get("PMI_RANK") is not None:
        rank = _int(env, "PMI_RANK") or 0
        size = _first_int(env, "PMI_SIZE", "SLURM_NTASKS") or 1
        lr = _first_int(env, "MPI_LOCALRANKID", "SLURM_LOCALID")
        ls = _first_int(env, "MPI_LOCALNRANKS") or _slurm_tasks_on_node(env)
        return _check(Topology(rank, size, rank if lr is None else lr, size if ls is None else ls,
                               "mpich", node), "MPICH/Hydra environment (PMI_*)")

    if env.get("PMIX_RANK") is not None:
        rank = _int(env, "PMIX_RANK") or 0
        size = _first_int(env, "PMIX_SIZE", "SLURM_NTASKS", "SLURM_NPROCS")
        if size is None:
            raise CommError("PMIX_RANK is set but no world size is (PMIX_SIZE or SLURM_NTASKS); "
                            "start the job with mpirun/srun or set DPTRAIN_COMM_BACKEND")
        lr = _first_int(env, "PMIX_LOCAL_RANK", "SLURM_LOCALID")
        ls = _first_int(env, "PMIX_LOCAL_SIZE") or _slurm_tasks_on_node(env)
        return _check(Topology(rank, size, rank if lr is None else lr, size if ls is None else ls,
                               "pmix", node), "PMIx environment (PMIX_*)")

    if env.get("SLURM_PROCID") is not None and env.get("DPTRAIN_WORLD_SIZE") is None:
        rank = _int(env, "SLURM_PROCID") or 0
        size = _first_int(env, "SLURM_NTASKS", "SLURM_NPROCS") or 1
        lr = _int(env, "SLURM_LOCALID")
        ls = _slurm_tasks_on_node(env)
        return _check(Topology(rank, size, rank if lr is None else lr, size if ls is None else ls,
                               "slurm", node), "Slurm environment (SLURM_*)")

    dptrain = detect_dptrain(env)
    if dptrain is not None:
        return dptrain
    return Topology()


def detect_dptrain(environ: Optional[Mapping[str, str]] = None) -> Optional[Topology]:
    """Topology from the DPTRAIN_* variables only (None when DPTRAIN_WORLD_SIZE is unset).

    Used by backend="zmq", which must follow our launcher even inside an MPI job.
    """
    env = os.environ if environ is None else environ
    node = _first_int(env, "DPTRAIN_NODE_RANK", "SLURM_NODEID")
    size = _int(env, "DPTRAIN_WORLD_SIZE")
    if size is not None:
        rank = _int(env, "DPTRAIN_RANK")
        if rank is None:
            raise CommError("DPTRAIN_WORLD_SIZE is set but DPTRAIN_RANK is not; the launcher must set both")
        lr = _int(env, "DPTRAIN_LOCAL_RANK")
        ls = _int(env, "DPTRAIN_LOCAL_WORLD_SIZE")
        addr = env.get("DPTRAIN_MASTER_ADDR") or None
        port = _int(env, "DPTRAIN_MASTER_PORT")
        if port is not None and not 0 < port < 65536:
            raise CommError(f"DPTRAIN_MASTER_PORT={port} is not a TCP port (1..65535)")
        return _check(Topology(rank, size, rank if lr is None else lr, size if ls is None else ls,
                               "dptrain", node, addr, port), "dptrain environment (DPTRAIN_*)")
    return None


def choose_backend(requested: str = "auto", environ: Optional[Mapping[str, str]] = None,
                   topology: Optional[Topology] = None) -> str:
    """Resolve "auto" (or DPTRAIN_COMM_BACKEND) to "mpi", "zmq" or "local"."""
    env = os.environ if environ is None else environ
    backend = (requested or "auto").lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown comm backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "auto":
        forced = env.get("DPTRAIN_COMM_BACKEND", "").strip().lower()
        if forced:
            if forced not in BACKENDS:
                raise CommError(f"DPTRAIN_COMM_BACKEND={forced!r} is not one of {', '.join(BACKENDS)}")
            backend = forced
    if backend != "auto":
        return backend
    topo = topology or detect(env)
    if topo.is_mpi:
        return "mpi"
    if topo.launcher == "dptrain":
        return "zmq"
    return "local"


def comm_timeout(explicit: Optional[float] = None, environ: Optional[Mapping[str, str]] = None) -> float:
    """Seconds any single wait may take: init(timeout=) > DPTRAIN_COMM_TIMEOUT > 60."""
    env = os.environ if environ is None else environ
    value: object = explicit
    source = "timeout"
    if value is None and env.get("DPTRAIN_COMM_TIMEOUT"):
        value, source = env["DPTRAIN_COMM_TIMEOUT"], "DPTRAIN_COMM_TIMEOUT"
    if value is None:
        return DEFAULT_TIMEOUT_S
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CommError(f"{source}={value!r} is not a number of seconds") from None
    if not seconds > 0:
        raise CommError(f"{source}={value!r} must be a positive number of seconds")
    return seconds


def env_int(name: str, default: int, minimum: int = 0, environ: Optional[Mapping[str, str]] = None) -> int:
    """Integer tuning knob from the environment, with a readable error when malformed."""
    env = os.environ if environ is None else environ
    value = _int(env, name)
    if value is None:
        return default
    if value < minimum:
        raise CommError(f"{name}={value} must be >= {minimum}")
    return value


__all__ = ["Topology", "detect", "detect_dptrain", "choose_backend", "comm_timeout", "env_int", "DEFAULT_TIMEOUT_S"]
