"""`dptrain mpirun`: run the workers through mpiexec with a hostfile built from the config.

Why: on a real cluster the MPI launcher is what starts processes on other machines
(ssh/PBS/Slurm integration, process pinning), and MPI collectives need their own
process manager.  We only translate the config into the right command line for the
mpiexec found (MPICH/Hydra or Open MPI: different flags), keep the coordinator in
this process, and start every rank through ``python -m launcher.mpiworker`` which
turns the MPI environment into dptrain's (rank, GPU, logs) and runs the real worker.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

from cluster.config import Config, is_local_host, is_loopback_host
from cluster.worker import EXIT_PEER_FAILURE

from . import shmclean
from .job import Job, clean_env, worker_command, write_launch_notes
from .output import RecentLines
from .placement import nodes_per_rank
from .supervise import root_cause, Failure, Group, Supervisor, describe_exit, exit_code_of, tail_file

__all__ = ["MpiError", "find_mpiexec", "mpi_flavor", "hostfile_text", "build_command", "per_host_command",
           "MpiGroup", "run_mpirun",
           "describe_dry_run", "read_rank_results", "vanished_ranks", "diagnose"]


class MpiError(RuntimeError):
    pass


def find_mpiexec(cfg: Config) -> str:
    """cluster.mpi.mpiexec, else the mpiexec next to the worker Python (a venv's MPICH), else the PATH."""
    want = cfg["cluster"]["mpi"]["mpiexec"]
    if want:
        path = want if os.sep in want else shutil.which(want)
        if not path or not os.access(path, os.X_OK):
            raise MpiError(f"cluster.mpi.mpiexec {want!r} is not an executable; fix the path or set it to null "
                           f"to search the Python environment and the PATH")
        return path
    for py in (cfg["cluster"]["python"], sys.executable):
        if py:
            cand = os.path.join(os.path.dirname(py), "mpiexec")
            if os.access(cand, os.X_OK):
                return cand
    for name in ("mpiexec", "mpirun"):
        path = shutil.which(name)
        if path:
            return path
    raise MpiError("no mpiexec found: install MPICH (`pip install mpich`) or Open MPI, or set cluster.mpi.mpiexec")


_flavor_cache: dict[str, str] = {}


VERSION_TIMEOUT_S = 20.0


def mpi_flavor(mpiexec: str) -> str:
    """'mpich' (Hydra, also Intel MPI) or 'openmpi', from `mpiexec --version`."""
    if mpiexec in _flavor_cache:
        return _flavor_cache[mpiexec]
    try:
        # its own process group: a wrapper script that hangs is ended together with its children
        p = subprocess.Popen([mpiexec, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    except OSError as e:
        raise MpiError(f"cannot run {mpiexec} --version: {e}") from None
    try:
        out, err = p.communicate(timeout=VERSION_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except OSError:
            pass
        p.communicate()
        raise MpiError(f"{mpiexec} --version did not answer within {VERSION_TIMEOUT_S:g} s; check "
                       "cluster.mpi.mpiexec") from None
    text = (out or "") + (err or "")
    if re.search(r"open mpi|openrte|open-mpi|prte", text, re.I):
        flavor = "openmpi"
    elif re.search(r"hydra|mpich|intel\(r\) mpi", text, re.I):
        flavor = "mpich"
    else:
        raise MpiError(f"{mpiexec} is neither MPICH/Hydra nor Open MPI (its --version says: "
                       f"{text.strip()[:200]!r}); set cluster.mpi.mpiexec to one of those")
    _flavor_cache[mpiexec] = flavor
    return flavor


def _equal_slots(cfg: Config) -> bool:
    return len({n["slots"] for n in cfg["cluster"]["nodes"]}) == 1


def hostfile_text(cfg: Config, flavor: str, here: str | None = None) -> str:
    """Hostfile reproducing the placement: `host:slots` (MPICH) or `host slots=N` (Open MPI).

    MPICH cyclic with unequal slots lists one entry per rank run (Hydra fills entries in order),
    so the mapping is exact; the worker shim takes local ranks from the placement, not from Hydra.
    here: this machine's address for the other nodes.  With remote nodes, a node written as
    `localhost` / 127.x is listed under it: Hydra tells the remote proxies to call back the
    launching node by its hostfile name, and `localhost` there is the remote machine itself.
    """
    nodes = cfg["cluster"]["nodes"]
    if here and not cfg.all_local:
        nodes = [dict(n, host=here) if is_loopback_host(n["host"]) else n for n in nodes]
    if flavor == "openmpi":
        return "".join(f"{n['host']} slots={n['slots']}\n" for n in nodes)
    if cfg["cluster"]["placement"] == "cyclic" and not _equal_slots(cfg):
        runs: list[list] = []
        for node in nodes_per_rank(nodes, "cyclic"):
            if runs and runs[-1][0] == node:
                runs[-1][1] += 1
            else:
                runs.append([node, 1])
        return "".join(f"{nodes[i]['host']}:{k}\n" for i, k in runs)
    return "".join(f"{n['host']}:{n['slots']}\n" for n in nodes)


def _relay_mpiexec_output(src, dst, log_path: str, recent: RecentLines | None = None) -> None:
    """Copy one of mpiexec's streams to ours, without MPICH's "BAD TERMINATION ... YOU CAN IGNORE
    THE BELOW CLEANUP MESSAGES" banner (Hydra prints it on stdout when ranks are stopped): the
    launcher names the failed rank and its exit code itself, so on the console the banner is only
    noise.  logs/mpiexec.log keeps mpiexec's own lines (the ranks' lines have their own logs)."""
    banner = False
    try:
        log = open(log_path, "ab")
    except OSError:
        log = None
    try:
        for raw in iter(src.readline, b""):
            line = raw.decode("utf-8", "replace")
            if log is not None and not line.startswith("[rank "):
                log.write(raw)
                log.flush()
            if not banner and line.startswith("=" * 20):
                banner = True          # the block opens with a rule; hide up to its last line
            if banner:
                if line.startswith("Please see the FAQ page"):
                    banner = False
                continue
            if recent is not None:
                recent.add(line)
            try:
                dst.write(line)
                dst.flush()
            except (OSError, ValueError):
                pass
    finally:
        if log is not None:
            log.close()


def build_command(cfg: Config, mpiexec: str, flavor: str, hostfile: str, env_names: list[str],
                  python: str | None = None) -> list[str]:
    """The full mpiexec command line (worker shim + worker command)."""
    n = str(cfg.world_size)
    cyclic = cfg["cluster"]["placement"] == "cyclic"
    extra = list(cfg["cluster"]["mpi"]["extra_args"])
    if flavor == "openmpi":
        cmd = [mpiexec, "--hostfile", hostfile, "-np", n, "--map-by", "node" if cyclic else "slot"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        for name in env_names:
            cmd += ["-x", name]
    else:
        cmd = [mpiexec, "-f", hostfile, "-n", n]
        if cyclic and _equal_slots(cfg):
            cmd += ["-ppn", "1"]
        if cfg.all_local:
            cmd += ["-launcher", "fork"]   # no ssh to ourselves
        # Hydra forwards the whole environment by default (-genvall), so the DPTRAIN_* set for
        # mpiexec reach every rank without putting the secret on the command line.
    py = python or cfg["cluster"]["python"] or sys.executable
    worker = worker_command(cfg)
    worker[0] = py
    return cmd + extra + [py, "-m", "launcher.mpiworker", "--"] + worker


def per_host_command(cfg: Config, mpiexec: str, flavor: str, hosts: list[str], hostfile: str) -> list[str]:
    """The mpiexec command (program not included) that starts one process on each of `hosts`.

    For the launcher's own helpers on remote nodes (shared-memory cleanup, the resource probe):
    the same mpiexec, hostfile style and `cluster.mpi.extra_args` as the ranks, since those may be
    how the hosts are reached at all.  MPICH gets `hostfile` written (one `host:1` line each)."""
    extra = list(cfg["cluster"]["mpi"]["extra_args"])
    if flavor == "openmpi":
        cmd = [mpiexec, "--host", ",".join(f"{h}:1" for h in hosts), "-np", str(len(hosts)), "--map-by", "node"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
    else:
        with open(hostfile, "w") as f:
            f.write("".join(f"{h}:1\n" for h in hosts))
        cmd = [mpiexec, "-f", hostfile, "-n", str(len(hosts)), "-ppn", "1"]
    return cmd + extra


def _env_for_mpiexec(job: Job, attempt: int) -> dict[str, str]:
    env = clean_env()
    env.update(job.common_env(attempt))
    if os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    return env


def read_rank_results(status_dir: str) -> list[dict]:
    """The shims' RUN_DIR/status/rankN.json records (exit_code None: started, not finished)."""
    out = []
    try:
        names = os.listdir(status_dir)
    except OSError:
        return out
    for n in names:
        if re.fullmatch(r"rank\d+\.json", n):
            try:
                with open(os.path.join(status_dir, n)) as f:
                    out.append(json.load(f))
            except (OSError, ValueError):
                pass
    return out


def vanished_ranks(results: list[dict]) -> list[dict]:
    """Ranks whose shim (on this host) started and is gone without a final record: it was killed
    (mpiexec then reports only its own exit code, naming no rank)."""
    here = socket.gethostname()
    gone = []
    for r in results:
        if r.get("exit_code") is None and r.get("host") == here and isinstance(r.get("pid"), int):
            try:
                os.kill(r["pid"], 0)
            except ProcessLookupError:
                gone.append(r)
            except PermissionError:
                pass
    return gone


def diagnose(results: list[dict], mpiexec_code: int | None, rank_log) -> Failure:
    """Which rank made an mpiexec/srun launch fail, and how, from the shims' status records.

    rank_log(rank) -> path of that rank's log (for the tail).  Shared by `dptrain mpirun` and the
    launch scripts (through launcher.postmortem), so both name the same rank the same way.  (MPICH's
    termination banner names a PID too, but not reliably the first to die: it is not used.)"""
    bad = [r for r in results if r.get("exit_code")]
    real = [r for r in bad if r["exit_code"] != EXIT_PEER_FAILURE]
    gone = vanished_ranks(results)
    if gone and not real:   # its peers' exits are echoes (75) of this one
        code = exit_code_of(mpiexec_code or 137)
        if len(gone) == 1:
            rank = int(gone[0]["rank"])
            return Failure(rank, code, f"its launcher.mpiworker (pid {gone[0]['pid']}) was killed before the "
                                       f"rank finished", tail_file(rank_log(rank)))
        # mpiexec kills the other ranks' processes once one is gone: which went first is not recorded
        ranks = ", ".join(str(int(g["rank"])) for g in sorted(gone, key=lambda g: int(g["rank"])))
        pids = ", ".join(str(g["pid"]) for g in sorted(gone, key=lambda g: int(g["rank"])))
        return Failure(None, code, f"the launcher.mpiworker processes of ranks {ranks} (pids {pids}) were "
                                   f"killed before their ranks finished (mpiexec stops the others once one "
                                   f"is gone, so one of them is the cause)", [])
    if bad:
        seen = {int(r["rank"]): float(r.get("time", 0)) for r in bad}
        rank, rc = root_cause([(int(r["rank"]), int(r["exit_code"])) for r in bad], seen)
        return Failure(rank, rc, describe_exit(rc), tail_file(rank_log(rank)))
    return Failure(None, exit_code_of(mpiexec_code or 1), f"mpiexec exited with code {mpiexec_code}", [])


class MpiGroup(Group):
    """One mpiexec process running all ranks; per-rank exit codes come from the shims' status files."""

    def __init__(self, job: Job, mpiexec: str, flavor: str):
        self.job = job
        self.mpiexec = mpiexec
        self.flavor = flavor
        self.hostfile = job.run.file("hostfile")
        with open(self.hostfile, "w") as f:
            f.write(hostfile_text(job.cfg, flavor, job.here))
        self.proc: subprocess.Popen | None = None
        self.status_dir = job.run.file("status")
        self._shm_before = shmclean.snapshot()     # MPI segments that are not ours to clean up
        self._started = time.time()                 # other hosts' segments are told apart by age
        self._remote_hosts = sorted({n["host"] for n in job.cfg["cluster"]["nodes"] if not is_local_host(n["host"])})
        self._failed = False                        # an attempt failed: killed ranks may have left segments
        self.recent = RecentLines()                 # what the console showed, for the failure report

    def replanned(self) -> None:
        with open(self.hostfile, "w") as f:
            f.write(hostfile_text(self.job.cfg, self.flavor, self.job.here))

    def command(self, attempt: int) -> tuple[list[str], dict]:
        env = _env_for_mpiexec(self.job, attempt)
        names = sorted(k for k in self.job.common_env(attempt))
        return build_command(self.job.cfg, self.mpiexec, self.flavor, self.hostfile, names), env

    def start(self, attempt: int) -> None:
        os.makedirs(self.status_dir, exist_ok=True)
        for n in os.listdir(self.status_dir):
            if n.startswith("rank") and n.endswith(".json"):
                os.unlink(os.path.join(self.status_dir, n))
        cmd, env = self.command(attempt)
        self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        log = self.job.run.file(os.path.join("logs", "mpiexec.log"))
        self._relays = [threading.Thread(target=_relay_mpiexec_output, args=(src, dst, log, self.recent),
                                         name=f"dptrain-mpiexec-{name}", daemon=True)
                        for name, src, dst in (("stdout", self.proc.stdout, sys.stdout),
                                               ("stderr", self.proc.stderr, sys.stderr))]
        for t in self._relays:
            t.start()

    def _rank_results(self) -> list[dict]:
        return read_rank_results(self.status_dir)

    def poll(self) -> tuple[bool, Failure | None]:
        if self.proc is None:
            return False, None
        code = self.proc.poll()
        if code is None:
            results = self._rank_results()
            bad = [r for r in results if r.get("exit_code")]
            if bad or vanished_ranks(results):  # a rank failed but mpiexec has not noticed yet
                return False, self._failure(results, None)
            return False, None
        results = self._rank_results()
        if code == 0 and not any(r.get("exit_code") for r in results):
            return True, None
        # (MPICH 4.1's mpiexec now and then exits 0 although a rank failed and the others were
        # stopped: a rank's own non-zero exit code outweighs mpiexec's 0, as in launcher.postmortem)
        return False, self._failure(results, code or None)

    def _failure(self, results: list[dict], mpiexec_code: int | None) -> Failure:
        self._failed = True
        return diagnose(results, mpiexec_code, self.job.run.rank_log)

    def close(self) -> None:
        """After the last attempt: remove the /dev/shm segments that killed ranks left behind."""
        for relay in getattr(self, "_relays", []):
            relay.join(timeout=2.0)         # mpiexec's last words reach the console and its log
        removed = shmclean.remove_orphans(self._shm_before)
        if removed:
            print(f"dptrain: removed {len(removed)} shared-memory segment(s) left in {shmclean.SHM_DIR} by "
                  f"MPI ranks that did not finish cleanly", file=sys.stderr, flush=True)
        if self._failed and self._remote_hosts:
            self._clean_remote_hosts()

    def _clean_remote_hosts(self, timeout: float = 30.0) -> None:
        """Killed ranks leave MPI segments on their own hosts too: after a failed attempt, one
        `python -m launcher.shmclean --since START` per remote host, started by the same mpiexec
        (and the config's extra_args, which may be how the hosts are reached).  Best effort with a
        deadline: an unreachable host must not hold up the exit.  mpiexec.log records the outcome."""
        cfg = self.job.cfg
        hosts = self._remote_hosts
        python = cfg["cluster"]["python"] or sys.executable
        clean = [python, "-m", "launcher.shmclean", "--since", f"{self._started - 1:.0f}", "--quiet"]
        cmd = per_host_command(cfg, self.mpiexec, self.flavor, hosts, self.job.run.file("hostfile.shmclean"))
        log = self.job.run.file(os.path.join("logs", "mpiexec.log"))
        try:
            r = subprocess.run(cmd + clean, env=clean_env(), stdin=subprocess.DEVNULL, capture_output=True,
                               text=True, timeout=timeout)
            outcome = f"exit code {r.returncode}"
            said = [line for line in r.stderr.splitlines() if line.startswith("dptrain: ")]
        except (OSError, subprocess.TimeoutExpired) as e:
            outcome, said = f"not finished: {type(e).__name__}", []
        for line in said:                   # "dptrain: HOST: removed N shared-memory segment(s) ..."
            print(line, file=sys.stderr, flush=True)
        try:
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"dptrain: shared-memory cleanup on {', '.join(hosts)}: {outcome}\n")
        except OSError:
            pass

    def stop(self, grace: float) -> None:
        p = self.proc
        if p is None:
            return
        if p.poll() is not None:
            # mpiexec is gone, but what it started in its process group may not be (an ssh to an
            # unreachable node, a proxy): the group id stays reserved while any member lives
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(p.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass
            try:
                p.wait(timeout=max(0.1, grace))
                return
            except subprocess.TimeoutExpired:
                continue

    def tail(self, rank: int, n: int = 20) -> list[str]:
        return tail_file(self.job.run.rank_log(rank), n)

    def on_console(self, rank: int, lines: list[str]) -> bool:
        return self.recent.shows(rank, lines)

    def exited_ok(self, rank: int) -> bool:
        return any(r.get("rank") == rank and r.get("exit_code") == 0 for r in self._rank_results())


def describe_dry_run(cfg: Config, job: Job, mpiexec: str, flavor: str) -> str:
    """What `dptrain mpirun --dry-run` prints: hostfile, environment, command (secret masked)."""
    hostfile = job.run.file("hostfile")
    names = sorted(job.common_env(0))
    cmd = build_command(cfg, mpiexec, flavor, hostfile, names)
    env = job.common_env(0)
    env["DPTRAIN_JOB_SECRET"] = "<random, generated at launch>"
    env["DPTRAIN_COORD_ADDR"] = f"{job.coord_bind.replace('*', job.coord_advertise)} (port chosen at launch "\
                                f"when 0)"
    env["DPTRAIN_MASTER_PORT"] = str(job.master_port or "<free port chosen at launch>")
    lines = [f"# mpiexec: {mpiexec} ({flavor})", f"# hostfile {hostfile}:"]
    lines += ["#   " + ln for ln in hostfile_text(cfg, flavor, job.here).splitlines()]
    lines.append("# environment for every rank (per-rank DPTRAIN_RANK/LOCAL_RANK/NODE_RANK/GPU are set by "
                 "launcher.mpiworker from the MPI environment):")
    lines += [f"#   {k}={v}" for k, v in sorted(env.items())]
    if cfg["job"]["script"]:
        lines.append("# each rank runs (inside cluster.worker, which supervises it): "
                     + " ".join(shlex.quote(str(c)) for c in [cfg["job"]["script"], *cfg["job"]["script_args"]]))
    lines.append(" ".join(shlex.quote(c) for c in cmd))
    return "\n".join(lines) + "\n"


def run_mpirun(job: Job, dry_run: bool = False, out=None) -> int:
    err = out or sys.stderr
    cfg = job.cfg
    try:
        mpiexec = find_mpiexec(cfg)
        flavor = mpi_flavor(mpiexec)
    except MpiError as e:
        err.write(f"dptrain: {e}\n")
        return 1
    if dry_run:
        sys.stdout.write(describe_dry_run(cfg, job, mpiexec, flavor))
        sys.stdout.flush()
        return 0
    remote = [n["host"] for n in cfg["cluster"]["nodes"] if not is_local_host(n["host"])]
    err.write(f"dptrain: {job.world_size} ranks via {os.path.basename(mpiexec)} ({flavor}) on "
              f"{len(cfg['cluster']['nodes'])} node(s){' incl. ' + ', '.join(remote) if remote else ''}; "
              f"backend {job.backend}; run dir {job.run.path}\n")
    write_launch_notes(cfg, err)
    group = MpiGroup(job, mpiexec, flavor)
    return Supervisor(job, group, out=err).run()
