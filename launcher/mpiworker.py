"""Worker shim under mpiexec / srun: MPI environment -> dptrain environment, then run the worker.

    mpiexec ... python -m launcher.mpiworker -- python -u -m cluster.worker

Why a shim: whatever started the process (Open MPI, MPICH/Hydra, Slurm), the worker
should see the same ``DPTRAIN_*`` variables as under ``dptrain run``, its output
should carry ``[rank N]`` and land in ``RUN_DIR/logs/rank{N}.log``, and the launcher
should learn each rank's exit code (``RUN_DIR/status/rank{N}.json``).  The shim runs
the worker as a child (passing Hydra/Slurm's PMI file descriptor through, so MPI
initialises normally in the child), forwards SIGTERM/SIGINT, stops the child if the
shim's parent (the MPI process manager) disappears, and exits with the child's code.

It deliberately imports nothing heavy (json + launcher.placement/output only).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

from .output import Console, RankStream
from .placement import detect_env

__all__ = ["main", "resolve_rank_env"]


def _load_placement(path: str | None) -> dict | None:
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def resolve_rank_env(env: dict, placement: dict | None) -> tuple[dict[str, str], list[str]]:
    """The DPTRAIN_* per-rank variables for this process, plus warnings.

    The rank and world size come from the MPI/Slurm environment.  Local rank, node and
    GPU come from the placement (our hostfile reproduces it) except under Slurm and Open MPI,
    whose local ids are exact per machine; when the world size differs from the placement
    (someone ran mpiexec by hand with another -n) the environment is used throughout.
    """
    probe = {k: v for k, v in env.items() if k not in ("DPTRAIN_RANK",)}
    info = detect_env(probe)
    if info is None or info.source == "dptrain":
        raise SystemExit("launcher.mpiworker: no MPI or Slurm rank in the environment; start it through "
                         "mpiexec/srun (dptrain mpirun / dptrain script do)")
    warnings: list[str] = []
    slots = (placement or {}).get("slots") or []
    gpus_per_node = (placement or {}).get("gpus") or []
    hosts = (placement or {}).get("hosts") or []
    slot = slots[info.rank] if len(slots) == info.world_size and info.rank < len(slots) else None
    if slot is None and slots:
        warnings.append(f"world size {info.world_size} from {info.source} differs from the config's "
                        f"{len(slots)}; using {info.source}'s local ranks")
    local_rank = info.local_rank if info.local_rank is not None else 0
    local_size = info.local_world_size if info.local_world_size is not None else 1
    node_rank = info.node_rank
    if slot is not None and (info.source == "mpich" or info.local_rank is None):
        local_rank, local_size, node_rank = slot["local_rank"], slot["local_world_size"], slot["node_rank"]
    if node_rank is None:
        node_rank = slot["node_rank"] if slot is not None else _node_by_hostname(hosts)
    gpu = None
    if node_rank is not None and node_rank < len(gpus_per_node) and gpus_per_node[node_rank]:
        gpu = local_rank % gpus_per_node[node_rank]
    out = {
        "DPTRAIN_RANK": str(info.rank),
        "DPTRAIN_WORLD_SIZE": str(info.world_size),
        "DPTRAIN_LOCAL_RANK": str(local_rank),
        "DPTRAIN_LOCAL_WORLD_SIZE": str(local_size),
        "DPTRAIN_NODE_RANK": str(node_rank if node_rank is not None else 0),
        "DPTRAIN_GPU": "" if gpu is None else str(gpu),
        "DPTRAIN_PROGRESS": "1" if info.rank == 0 and (placement or {}).get("progress", True) else "0",
    }
    return out, warnings


def _node_by_hostname(hosts: list[str]) -> int | None:
    me = {socket.gethostname(), socket.gethostname().split(".")[0], socket.getfqdn()}
    for i, h in enumerate(hosts):
        if h in me or h.split(".")[0] in me:
            return i
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        print("usage: python -m launcher.mpiworker -- WORKER_COMMAND...", file=sys.stderr)
        return 2
    placement = _load_placement(os.environ.get("DPTRAIN_PLACEMENT"))
    rank_env, warnings = resolve_rank_env(dict(os.environ), placement)
    rank = int(rank_env["DPTRAIN_RANK"])
    env = dict(os.environ)
    env.update(rank_env)
    run_dir = os.environ.get("DPTRAIN_RUN_DIR")
    log_path = None
    if run_dir:
        os.makedirs(os.path.join(run_dir, "logs"), exist_ok=True)
        log_path = os.path.join(run_dir, "logs", f"rank{rank}.log")
    console = Console(sys.stdout, tty=False)
    show_all = (placement or {}).get("console", "all") == "all"
    for w in warnings:
        console.line(f"[rank {rank}] dptrain: warning: {w}")

    pass_fds = []
    for name in ("PMI_FD", "PMI_PORT_FD"):  # Hydra / Slurm PMI hand the rank an open socket
        v = os.environ.get(name, "")
        if v.isdigit():
            pass_fds.append(int(v))
    try:
        child = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, pass_fds=pass_fds, preexec_fn=_die_with_parent)
    except OSError as e:
        console.line(f"[rank {rank}] dptrain: cannot start {argv[0]}: {e}")
        _write_status(run_dir, rank, 127)
        return 127
    stream = RankStream(rank, child.stdout, console, log_path, show_lines=show_all or rank == 0,
                        show_progress=rank == 0 and rank_env["DPTRAIN_PROGRESS"] == "1")
    stream.write_marker(f"===== dptrain {os.environ.get('DPTRAIN_LAUNCHER', 'mpirun')} attempt "
                        f"{os.environ.get('DPTRAIN_RESTART', '0')} pid {child.pid} host {socket.gethostname()} "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S')} =====")
    stream.start()
    _write_status(run_dir, rank, None)   # started: a shim that vanishes without a final record was killed

    def forward(signum, frame):
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    parent = os.getppid()
    orphan_since = None
    while True:
        try:
            code = child.wait(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            pass
        if os.getppid() != parent and orphan_since is None:  # mpiexec/proxy died: do not linger
            orphan_since = time.monotonic()
            forward(signal.SIGTERM, None)
        elif orphan_since is not None and time.monotonic() - orphan_since > 10:
            forward(signal.SIGKILL, None)
    stream.join(5.0)
    rc = 128 - code if code < 0 else code
    _write_status(run_dir, rank, rc)
    return rc


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when this shim dies (Linux), so a killed shim does not
    leave its worker training on unsupervised, its output going nowhere."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _write_status(run_dir: str | None, rank: int, rc: int | None) -> None:
    """RUN_DIR/status/rankN.json: exit_code None once the worker started, its code at the end."""
    if not run_dir:
        return
    d = os.path.join(run_dir, "status")
    try:
        os.makedirs(d, exist_ok=True)
        tmp = os.path.join(d, f".rank{rank}.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"rank": rank, "exit_code": rc, "time": time.time(), "host": socket.gethostname(),
                       "pid": os.getpid()}, f)
        os.replace(tmp, os.path.join(d, f"rank{rank}.json"))
    except OSError:
        pass


if __name__ == "__main__":
    sys.exit(main())
