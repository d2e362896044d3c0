"""What every launch mode shares: the run directory, the secret, ports and the worker environment.

Why one place: `dptrain run`, `dptrain mpirun` and the scripts written by
`dptrain script` must hand workers exactly the same variables, or a worker would
behave differently depending on how it was started.  The list of variables is
``WORKER_ENV_VARS`` (documented in the README).
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field

from cluster.config import Config, is_local_host
from cluster.rundir import RunDir, atomic_write_json

from .placement import Slot, plan

__all__ = ["Job", "prepare_job", "free_port", "worker_command", "WORKER_ENV_VARS", "clean_env",
           "oversubscription_note", "resume_note", "write_launch_notes",
           "resolve_backend"]

# every variable the launcher sets for workers; inherited values of these are dropped first
WORKER_ENV_VARS = (
    "DPTRAIN_RANK", "DPTRAIN_WORLD_SIZE", "DPTRAIN_LOCAL_RANK", "DPTRAIN_LOCAL_WORLD_SIZE", "DPTRAIN_NODE_RANK",
    "DPTRAIN_NUM_NODES", "DPTRAIN_GPU", "DPTRAIN_MASTER_ADDR", "DPTRAIN_MASTER_PORT", "DPTRAIN_COORD_ADDR",
    "DPTRAIN_JOB_SECRET", "DPTRAIN_RUN_DIR", "DPTRAIN_CONFIG", "DPTRAIN_COMM_BACKEND", "DPTRAIN_ALLREDUCE",
    "DPTRAIN_RESTART", "DPTRAIN_RESTART_COUNT", "DPTRAIN_LAUNCH_STARTED", "DPTRAIN_MAX_RESTARTS",
    "DPTRAIN_HEARTBEAT_INTERVAL",
    "DPTRAIN_PROGRESS",
    "DPTRAIN_LAUNCHER", "DPTRAIN_LAUNCHER_PID", "DPTRAIN_LAUNCHER_HOST", "DPTRAIN_PLACEMENT", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
    "PYTHONUNBUFFERED",
)
PER_RANK_VARS = ("DPTRAIN_RANK", "DPTRAIN_WORLD_SIZE", "DPTRAIN_LOCAL_RANK", "DPTRAIN_LOCAL_WORLD_SIZE",
                 "DPTRAIN_NODE_RANK", "DPTRAIN_GPU", "DPTRAIN_PROGRESS")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host if host not in ("*", "") else "0.0.0.0", 0))
        return s.getsockname()[1]


def clean_env(base: dict | None = None) -> dict:
    """A copy of the environment without stale launcher variables (e.g. from a parent dptrain run)."""
    env = dict(os.environ if base is None else base)
    for k in WORKER_ENV_VARS:
        if k.startswith("DPTRAIN_"):
            env.pop(k, None)
    return env


def resolve_backend(cfg: Config, mode: str) -> str:
    """The comm backend workers get: auto means ZeroMQ for processes the launcher starts itself
    (`dptrain run` picks that mode only where MPI is unavailable), MPI under mpirun/srun."""
    b = cfg["cluster"]["backend"]
    if b != "auto":
        return b
    return "zmq" if mode == "local" else "mpi"


def worker_command(cfg: Config) -> list[str]:
    """What each worker runs: `python -m cluster.worker`, which runs the built-in loop or the
    user's job.script (with its job.script_args) under the same supervision: registration,
    heartbeats, one-line errors, exit codes that name the root cause, MPI abort on failure."""
    py = cfg["cluster"]["python"] or sys.executable
    return [py, "-u", "-m", "cluster.worker"]


@dataclass
class Job:
    cfg: Config
    run: RunDir
    slots: list[Slot]
    mode: str                          # local | mpirun | script | slurm
    backend: str
    secret: str
    master_addr: str
    master_port: int
    coord_bind: str
    coord_advertise: str
    here: str = "127.0.0.1"            # this machine as the job's other nodes reach it
    coordinator: object | None = None  # cluster.coordinator.Coordinator once started
    attempts: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @property
    def world_size(self) -> int:
        return len(self.slots)

    @property
    def coord_addr(self) -> str:
        return self.coordinator.address if self.coordinator is not None else ""

    def common_env(self, attempt: int) -> dict[str, str]:
        """Variables identical for every rank."""
        cfg = self.cfg
        threads = str(cfg["job"]["threads"])
        return {
            "DPTRAIN_WORLD_SIZE": str(self.world_size),
            "DPTRAIN_NUM_NODES": str(len(cfg["cluster"]["nodes"])),
            "DPTRAIN_MASTER_ADDR": self.master_addr,
            "DPTRAIN_MASTER_PORT": str(self.master_port),
            "DPTRAIN_COORD_ADDR": self.coord_addr,
            "DPTRAIN_JOB_SECRET": self.secret,
            "DPTRAIN_RUN_DIR": self.run.path,
            "DPTRAIN_CONFIG": self.run.config_path,
            "DPTRAIN_COMM_BACKEND": self.backend,
            "DPTRAIN_ALLREDUCE": cfg["cluster"]["allreduce"],
            "DPTRAIN_RESTART": str(attempt),
            "DPTRAIN_RESTART_COUNT": str(attempt),
            "DPTRAIN_LAUNCH_STARTED": f"{self.started:.3f}",
            "DPTRAIN_MAX_RESTARTS": str(cfg["fault_tolerance"]["max_restarts"]),
            "DPTRAIN_HEARTBEAT_INTERVAL": f"{cfg['fault_tolerance']['heartbeat_interval']:g}",
            "DPTRAIN_LAUNCHER": self.mode,
            # workers on this host stop when this process is gone (see cluster/heartbeat.py)
            "DPTRAIN_LAUNCHER_PID": str(os.getpid()),
            "DPTRAIN_LAUNCHER_HOST": socket.gethostname(),
            "DPTRAIN_PLACEMENT": self.run.file("placement.json"),
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1",
        }

    def rank_env(self, slot: Slot) -> dict[str, str]:
        """Variables of one rank."""
        return slot_env(slot, self.cfg["output"]["progress"])

    def write_launcher_state(self, **extra) -> None:
        atomic_write_json(self.run.file("launcher.json"),
                          {"mode": self.mode, "pid": os.getpid(), "host": socket.gethostname(),
                           "world_size": self.world_size, "backend": self.backend, "started": round(self.started, 3),
                           "coordinator": self.coord_addr, "attempts": self.attempts, **extra})


    def replan(self, nodes: list[dict]) -> None:
        """Run the next attempts on `nodes` (elastic shrink): new placement, config.yaml and
        placement.json, so workers, the coordinator and mpiexec all see the smaller group."""
        import copy
        cfg = copy.deepcopy(self.cfg)
        cfg["cluster"]["nodes"] = nodes
        from cluster.config import Config
        cfg = Config(cfg.to_dict(), cfg.source)
        self.cfg = cfg
        self.slots = plan(cfg)
        if not cfg.all_local:
            node0 = cfg["cluster"]["nodes"][0]["host"]
            self.master_addr = socket.getfqdn() if is_local_host(node0) else node0
        self.run.write_config(cfg)
        from cluster.rundir import atomic_write_bytes
        atomic_write_bytes(self.run.file("placement.json"), placement_json(cfg, self.slots).encode())


def slot_env(slot: Slot, progress: bool) -> dict[str, str]:
    return {
        "DPTRAIN_RANK": str(slot.rank),
        "DPTRAIN_WORLD_SIZE": str(slot.world_size),
        "DPTRAIN_LOCAL_RANK": str(slot.local_rank),
        "DPTRAIN_LOCAL_WORLD_SIZE": str(slot.local_world_size),
        "DPTRAIN_NODE_RANK": str(slot.node_rank),
        "DPTRAIN_GPU": "" if slot.gpu is None else str(slot.gpu),
        "DPTRAIN_PROGRESS": "1" if (progress and slot.rank == 0) else "0",
    }


def placement_json(cfg: Config, slots: list[Slot]) -> str:
    """RUN_DIR/placement.json: read by the worker shim under mpiexec/srun (json only, no config parsing)."""
    return json.dumps({"progress": bool(cfg["output"]["progress"]), "console": cfg["output"]["console"],
                       "gpus": [int(n["gpus"]) for n in cfg["cluster"]["nodes"]],
                       "hosts": [n["host"] for n in cfg["cluster"]["nodes"]],
                       "slots": [s.as_dict() for s in slots]}, indent=1) + "\n"


def _is_loopback_name(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def address_for_peers(peers: list[str]) -> str:
    """This machine's name or address as remote nodes should dial it (coordinator, rendezvous).

    Why not just getfqdn(): on many machines /etc/hosts maps the host name to 127.0.x.1, and a
    remote worker told to dial `localhost` reaches itself.  Then the address of the interface that
    routes to the first remote node is used (a UDP connect sends nothing)."""
    fqdn = socket.getfqdn()
    if fqdn and not _is_loopback_name(fqdn) and fqdn != "localhost":
        return fqdn
    for peer in peers:
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.connect((peer, 9))
                addr = s.getsockname()[0]
        except OSError:
            continue
        if not ipaddress.ip_address(addr).is_loopback:
            return addr
    return socket.gethostname()


def _check_port_free(bind: str) -> None:
    """Raise CoordinatorStartError now if the coordinator's fixed port is taken, so a launch that
    cannot start leaves an existing run directory exactly as it was."""
    host, _, port = bind.rpartition(":")
    host = host.replace("tcp://", "").replace("*", "")
    if not port.isdigit() or int(port) == 0:
        return
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, int(port)))
    except OSError as e:
        from cluster.coordinator import CoordinatorStartError
        raise CoordinatorStartError.cannot_bind(bind, e.strerror or e) from None


def prepare_job(cfg: Config, mode: str, create: bool = True) -> Job:
    """Compute placement, addresses and the secret; with create=True also make the run directory.

    The run directory gets config.yaml (resolved) and placement.json before any worker starts.
    """
    slots = plan(cfg)
    all_local = cfg.all_local
    node0 = cfg["cluster"]["nodes"][0]["host"]
    remote = [n["host"] for n in cfg["cluster"]["nodes"] if not is_local_host(n["host"])]
    here = "127.0.0.1" if all_local else address_for_peers(remote)
    if all_local:
        master_addr = "127.0.0.1"
    else:
        master_addr = here if is_local_host(node0) else node0
    master_port = cfg["cluster"]["master_port"] or (free_port() if create else 0)
    coord = cfg["cluster"]["coordinator"]
    port = coord["port"]
    if all_local:
        bind = f"tcp://127.0.0.1:{port}"
        advertise = coord["host"] or "127.0.0.1"
    else:
        bind = f"tcp://*:{port}"
        advertise = coord["host"] or here
    run = RunDir(cfg["output"]["dir"])
    job = Job(cfg=cfg, run=run, slots=slots, mode=mode, backend=resolve_backend(cfg, mode),
              secret=secrets.token_hex(32), master_addr=master_addr, master_port=master_port,
              coord_bind=bind, coord_advertise=advertise, here=here)
    if create:
        _check_port_free(bind)         # before touching the run directory
        run.create()
        run.lock()
        os.makedirs(cfg["checkpoint"]["dir"], exist_ok=True)
        run.write_config(cfg)
        from cluster.rundir import atomic_write_bytes
        atomic_write_bytes(run.file("placement.json"), placement_json(cfg, slots).encode())
        if os.path.exists(run.summary_path):  # a previous launch's results must not pass for this one's
            os.replace(run.summary_path, run.file("summary.previous.json"))
        # Resources are per launch (attempt numbers restart at 0); metrics continue only when the
        # run does (a resumed run appends, a fresh one starts a new file).
        rotate = ["resources.jsonl"] + ([] if resume_note(cfg) else ["metrics.jsonl"])
        for name in rotate:
            if os.path.exists(run.file(name)):
                os.replace(run.file(name), run.file(name.replace(".jsonl", ".previous.jsonl")))
    return job


def start_coordinator(job: Job):
    """Start the coordinator thread for this job (in the launcher process)."""
    from cluster.coordinator import Coordinator
    ft = job.cfg["fault_tolerance"]
    c = Coordinator(job.secret, job.world_size, run_dir=job.run.path, bind=job.coord_bind,
                    advertise_host=job.coord_advertise, heartbeat_timeout=ft["heartbeat_timeout"],
                    startup_timeout=ft["startup_timeout"],
                    checkpoint_interval=job.cfg["checkpoint"]["interval"])
    c.start()
    job.coordinator = c
    return c


def oversubscription_note(cfg: Config) -> str | None:
    """A warning when the workers on this machine would run more threads than it has cores."""
    from cluster.resources import usable_cpu_count
    here = sum(n["slots"] for n in cfg["cluster"]["nodes"] if is_local_host(n["host"]) and not n.get("gpus"))
    threads = int(cfg["job"]["threads"])
    cores = usable_cpu_count()
    if here * threads <= cores:
        return None
    return (f"warning: {here} worker(s) x {threads} thread(s) = {here * threads} threads on {cores} usable "
            f"core(s) here: they will compete and each step gets slower; lower job.threads or the slots")


def write_launch_notes(cfg: Config, err) -> None:
    """The lines every launch mode prints before starting workers: resuming, oversubscription."""
    for note in (resume_note(cfg), oversubscription_note(cfg)):
        if note:
            err.write(f"dptrain: {note}\n")
    err.flush()


def resume_note(cfg: Config) -> str | None:
    """One line telling the user a launch will continue from an existing checkpoint (or None)."""
    ck = cfg["checkpoint"]
    if ck["resume"] == "never":
        return None
    if ck["resume"] != "auto":
        return f"workers resume from {ck['resume']} (checkpoint.resume)"
    import warnings
    from cluster.checkpoint import latest_valid_checkpoint
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        latest = latest_valid_checkpoint(ck["dir"])
    if latest is None:
        return None
    return (f"checkpoint.resume=auto: workers resume from {latest}; pass checkpoint.resume=never "
            f"(or delete {ck['dir']}) to start over")
