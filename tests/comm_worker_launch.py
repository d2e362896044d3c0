"""Start comm test ranks: under the venv's mpiexec (MPI) or as plain processes (ZeroMQ).

Used by tests/test_comm_*.py.  Every launch has a hard wall-clock limit and kills
its processes when it is hit, so no test can hang.  Each rank of
tests/comm_worker.py writes one JSON result file into a temporary directory;
`Launch.results` holds them in rank order.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().with_name("comm_worker.py")
MPIEXEC = Path(sys.executable).parent / "mpiexec"
_LAUNCHER_PREFIXES = ("OMPI_", "PMI_", "PMIX_", "SLURM_", "DPTRAIN_", "MPI_LOCAL", "HYDRA_", "MPIR_CVAR_")


def clean_env(extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """The test's environment without any launcher variables, one BLAS thread, repo on the path."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_PREFIXES)}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO),
               PYTHONUNBUFFERED="1")
    env.update(extra or {})
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Launch:
    results: List[dict] = field(default_factory=list)
    output: str = ""
    returncodes: List[Optional[int]] = field(default_factory=list)
    wall: float = 0.0

    def by_rank(self) -> Dict[int, dict]:
        return {r["rank"]: r for r in self.results if "rank" in r}

    def describe(self) -> str:
        return f"return codes {self.returncodes}, output:\n{self.output[-6000:]}"


def _collect(result_dir: str) -> List[dict]:
    out = []
    for path in glob.glob(os.path.join(result_dir, "result-*.json")):
        with open(path, encoding="utf-8") as fh:
            out.append(json.load(fh))
    return sorted(out, key=lambda r: r.get("rank", -1))


def _mpich_segments() -> set:
    try:
        return {f for f in os.listdir("/dev/shm") if f.startswith("mpich_shm_")}
    except OSError:
        return set()


def _remove_orphaned_segments(before: set) -> None:
    """MPICH leaves its /dev/shm segment behind when ranks are killed or leave through os._exit (the
    failure tests do both): remove the ones this launch created that no process maps any more."""
    new = _mpich_segments() - before
    if not new:
        return
    mapped = set()
    for maps in glob.glob("/proc/[0-9]*/maps"):
        try:
            with open(maps, encoding="ascii", errors="replace") as fh:
                mapped.update(name for name in new if name in fh.read())
        except OSError:
            continue
    for name in new - mapped:
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except OSError:
            pass


def as_host(hostname: Optional[str], argv: Sequence[str]) -> List[str]:
    """argv run under its own hostname (a UTS namespace, root only): ranks on one machine then
    look like ranks on different hosts to the communicator (two-level collectives)."""
    if hostname is None:
        return list(argv)
    return ["unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', hostname, *argv]


def mpmd_per_host(hosts: Sequence[str], prog: Sequence[str]) -> List[str]:
    """mpiexec's MPMD arguments for one rank per entry of `hosts`, each under its hostname."""
    out: List[str] = []
    for i, host in enumerate(hosts):
        out += ([":"] if i else []) + ["-n", "1", *as_host(host, prog)]
    return out


def can_fake_hosts() -> bool:
    try:
        return subprocess.run(as_host("dptrain-probe", ["true"]), capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def launch_mpi(n: int, args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 60,
               flags: Sequence[str] = (), hosts: Optional[Sequence[str]] = None) -> Launch:
    """n ranks under mpiexec; `hosts` gives each rank its own hostname (MPMD, one block per rank)."""
    prog = [sys.executable, str(WORKER), *args]
    if hosts is None:
        cmd = [str(MPIEXEC), "-n", str(n), "-launcher", "fork", *flags, *prog]
    else:
        cmd = [str(MPIEXEC), "-launcher", "fork", *flags, *mpmd_per_host(hosts, prog)]
    t0 = time.monotonic()
    segments_before = _mpich_segments()
    with tempfile.TemporaryDirectory(prefix="comm-test-") as result_dir:
        penv = clean_env(env)
        penv["COMM_TEST_RESULT_DIR"] = result_dir
        proc = subprocess.Popen(cmd, env=penv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        try:
            text, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)  # mpiexec and every rank it started
            text, _ = proc.communicate()
            text += f"\n[launch killed after {timeout} s]"
        _remove_orphaned_segments(segments_before)  # also after os._exit(), which skips MPI_Finalize
        return Launch(_collect(result_dir), text, [proc.returncode], time.monotonic() - t0)


def launch_zmq(n: int, args: Sequence[str], env: Optional[Dict[str, str]] = None, timeout: float = 60,
               ranks: Optional[Sequence[int]] = None, world: Optional[Sequence[int]] = None,
               hosts: Optional[Sequence[str]] = None) -> Launch:
    """n processes with DPTRAIN_* variables; `ranks`/`world` override what each process is told,
    `hosts` the hostname each one runs under."""
    port = free_port()
    procs = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="comm-test-") as result_dir:
        for i in range(n):
            rank = ranks[i] if ranks is not None else i
            size = world[i] if world is not None else n
            penv = clean_env(env)
            penv.update(DPTRAIN_RANK=str(rank), DPTRAIN_WORLD_SIZE=str(size), DPTRAIN_LOCAL_RANK=str(rank),
                        DPTRAIN_LOCAL_WORLD_SIZE=str(size), DPTRAIN_MASTER_ADDR="127.0.0.1",
                        DPTRAIN_MASTER_PORT=str(port), COMM_TEST_RESULT_DIR=result_dir)
            argv = as_host(hosts[i] if hosts else None, [sys.executable, str(WORKER), *args])
            procs.append(subprocess.Popen(argv, env=penv, stdout=subprocess.PIPE,
                                          stderr=subprocess.STDOUT, text=True))
        texts, codes = [], []
        for p in procs:
            try:
                out, _ = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                p.kill()
                out, _ = p.communicate()
                out += f"\n[process killed after {timeout} s]"
            texts.append(out)
            codes.append(p.returncode)
        return Launch(_collect(result_dir), "\n".join(texts), codes, time.monotonic() - t0)
