"""`dptrain run`: world_size worker processes on this machine, supervised by the launcher.

Each worker is its own session (process group), so a Ctrl-C in the terminal reaches
only the launcher, which then stops the workers in order (SIGTERM, grace period,
SIGKILL) instead of every process dying at a random point of a collective.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from .job import Job, clean_env, worker_command, write_launch_notes
from .output import Console, RankStream
from .supervise import Failure, Group, Supervisor, describe_exit, exit_code_of, root_cause

__all__ = ["LocalGroup", "run_local"]


class LocalGroup(Group):
    def __init__(self, job: Job, console: Console | None = None):
        self.job = job
        self.console = console or Console()
        self.procs: list[subprocess.Popen] = []
        self.streams: list[RankStream] = []
        self.cmd = worker_command(job.cfg)

    def start(self, attempt: int) -> None:
        job = self.job
        base = clean_env()
        base.update(job.common_env(attempt))
        show_all = job.cfg["output"]["console"] == "all"
        self.procs, self.streams = [], []
        self._exit_seen: dict[int, float] = {}
        for slot in job.slots:
            env = dict(base)
            env.update(job.rank_env(slot))
            proc = subprocess.Popen(self.cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            stream = RankStream(slot.rank, proc.stdout, self.console, job.run.rank_log(slot.rank),
                                show_lines=show_all or slot.rank == 0,
                                show_progress=slot.rank == 0 and job.cfg["output"]["progress"])
            stream.write_marker(f"===== dptrain attempt {attempt} pid {proc.pid} "
                                f"{time.strftime('%Y-%m-%d %H:%M:%S')} =====")
            stream.start()
            self.procs.append(proc)
            self.streams.append(stream)

    def poll(self) -> tuple[bool, Failure | None]:
        codes = [p.poll() for p in self.procs]
        now = time.monotonic()
        for r, c in enumerate(codes):
            if c is not None:
                self._exit_seen.setdefault(r, now)
        bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
        if bad:
            rank, _ = root_cause(bad, self._exit_seen)
            return False, self.failure_of(rank)
        if codes and all(c == 0 for c in codes):
            for s in self.streams:
                s.join(5.0)
            return True, None
        return False, None

    def failure_of(self, rank: int) -> Failure | None:
        code = self.procs[rank].poll() if 0 <= rank < len(self.procs) else None
        if code in (None, 0):
            return None
        self.streams[rank].join(2.0)
        how = describe_exit(code)
        return Failure(rank, exit_code_of(code), how, list(self.streams[rank].tail))

    def on_console(self, rank: int, lines: list[str]) -> bool:
        return self.console.recent.shows(rank, lines)

    def tail(self, rank: int, n: int = 20) -> list[str]:
        if 0 <= rank < len(self.streams):
            self.streams[rank].join(1.0)
            return list(self.streams[rank].tail)[-n:]
        return []

    def exited_ok(self, rank: int) -> bool:
        return 0 <= rank < len(self.procs) and self.procs[rank].poll() == 0

    def stop(self, grace: float) -> None:
        live = [p for p in self.procs if p.poll() is None]
        for p in live:
            _killpg(p, signal.SIGTERM)
        deadline = time.monotonic() + max(0.0, grace)
        while live and time.monotonic() < deadline:
            live = [p for p in live if p.poll() is None]
            time.sleep(0.05)
        for p in live:
            _killpg(p, signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for s in self.streams:
            s.join(2.0)

    def close(self) -> None:
        self.console.end_progress()


def _killpg(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the worker and anything it started
    except (ProcessLookupError, PermissionError):
        try:
            p.send_signal(sig)
        except ProcessLookupError:
            pass




def run_local(job: Job, out=None) -> int:
    cfg = job.cfg
    err = out or sys.stderr
    what = os.path.basename(cfg["job"]["script"]) if cfg["job"]["script"] else f"{cfg['job']['model']} (cluster.worker)"
    err.write(f"dptrain: {job.world_size} workers on this machine running {what}; backend {job.backend}; "
              f"run dir {job.run.path}\n")
    write_launch_notes(cfg, err)
    return Supervisor(job, LocalGroup(job), out=err).run()
