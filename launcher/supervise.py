"""The attempt loop shared by `dptrain run` and `dptrain mpirun`: start, watch, stop, restart.

Why: failure handling is the same whatever starts the processes.  A *group* (the
local worker processes, or one mpiexec) is started; the supervisor watches the
processes and the coordinator's events (missed heartbeats, ranks that never
register); on the first failure it stops the whole group (SIGTERM, then SIGKILL
after ``fault_tolerance.grace_period``), prints the failed rank's last lines and,
while ``max_restarts`` allows, starts a fresh group that resumes from the newest
valid checkpoint (the runtime does the resume when ``checkpoint.resume: auto``).
Ctrl-C (or SIGTERM to the launcher) stops everything and exits 130 (143).
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from cluster.checkpoint import checkpoint_step
from cluster.stall import UNEVEN_STEPS, find_laggards, views_pending
from cluster.worker import EXIT_CONFIG, EXIT_PEER_FAILURE

from .job import Job, free_port, start_coordinator

__all__ = ["Failure", "Group", "Supervisor", "describe_exit", "exit_code_of", "root_cause", "tail_file"]


@dataclass
class Failure:
    rank: int | None
    exit_code: int           # what the launcher exits with
    reason: str
    tail: list[str]
    where: list[str] = field(default_factory=list)   # a header, then where the rank was (lagging ranks)


def resource_usage(path: str, attempt: int) -> dict:
    """Per rank of the last attempt: peak resident memory, mean CPU % and peak GPU memory, from the
    heartbeats in resources.jsonl (what to size the next run by). Empty when there are none."""
    import json
    per: dict = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if rec.get("attempt") != attempt or not isinstance(rec.get("rank"), int):
                    continue
                d = per.setdefault(rec["rank"], {"rss": 0, "cpu": [], "gpu": 0})
                d["rss"] = max(d["rss"], int(rec.get("rss_bytes") or 0))
                d["gpu"] = max(d["gpu"], int(rec.get("gpu_mem_used_bytes") or 0))
                if isinstance(rec.get("cpu_percent"), (int, float)):
                    d["cpu"].append(float(rec["cpu_percent"]))
    except OSError:
        return {}
    mb = 1 << 20
    return {str(r): {"peak_rss_mb": round(d["rss"] / mb, 1),
                     "mean_cpu_percent": round(sum(d["cpu"]) / len(d["cpu"]), 1) if d["cpu"] else None,
                     **({"peak_gpu_mem_mb": round(d["gpu"] / mb, 1)} if d["gpu"] else {})}
            for r, d in sorted(per.items())}


#: how long a rank that failed only because a peer did (exit 75) waits to be explained by that peer
ECHO_GRACE_S = 2.0


def root_cause(bad: list[tuple[int, int]], seen: dict[int, float]) -> tuple[int, int]:
    """Pick the (rank, code) that caused a failure out of every rank that failed.

    When one rank crashes, its peers fail a moment later with EXIT_PEER_FAILURE; under
    load both exits can land between two polls, so rank order would blame the echo.
    Prefer a rank that did not fail because of a peer, then the earliest one seen.
    """
    return min(bad, key=lambda rc: (rc[1] == EXIT_PEER_FAILURE, seen.get(rc[0], float("inf")), rc[0]))


def exit_code_of(returncode: int) -> int:
    """Shell convention: a process killed by signal N -> 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(code: int) -> str:
    """'exit code N', or 'killed by signal K (SIGNAME)' for the shell's 128+K (a Popen -K as well)."""
    sig = -code if code < 0 else code - 128 if code > 128 else 0
    if sig:
        try:
            return f"killed by signal {sig} ({signal.Signals(sig).name})"
        except ValueError:
            pass
    return f"exit code {code}"


def _one_terminal() -> bool:
    """stdout (the ranks' lines) and stderr (this report) are the same terminal: what is "above"
    in one is above in the other (not so when either is redirected to a file or a pipe)."""
    try:
        return sys.stdout.isatty() and sys.stderr.isatty() and \
            os.ttyname(sys.stdout.fileno()) == os.ttyname(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False


def tail_file(path: str, n: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return []
    # the log carries every attempt and launch; only the newest one's lines belong to this failure
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("===== dptrain "):
            lines = lines[i + 1:]
            break
    return lines[-n:]


class Group:
    """A started set of workers. Subclasses: local processes, one mpiexec."""

    def start(self, attempt: int) -> None: ...

    def poll(self) -> tuple[bool, Failure | None]:
        """(all finished successfully, first failure or None)."""
        raise NotImplementedError

    def stop(self, grace: float) -> None: ...

    def tail(self, rank: int, n: int = 20) -> list[str]:
        return []

    def on_console(self, rank: int, lines: list[str]) -> bool:
        """True when `lines` of `rank` were just shown on the console (no need to repeat them)."""
        return False

    def exited_ok(self, rank: int) -> bool:
        """True when `rank` already finished with exit code 0 (its silence is then no failure)."""
        return False

    def failure_of(self, rank: int) -> Failure | None:
        """The failure of `rank` when it has already exited non-zero, else None."""
        return None

    def replanned(self) -> None:
        """The job's nodes changed (elastic restart): rebuild whatever depends on them."""

    def close(self) -> None: ...


class Supervisor:
    def __init__(self, job: Job, group: Group, out=None):
        self.job = job
        self.group = group
        self.out = out or sys.stderr
        self._signal: int | None = None
        self._signals_seen = 0
        self._checkpoint_asked = False          # SIGUSR1: checkpoint now, keep training
        self._stop_asked: float | None = None   # SIGTERM: when a checkpoint-then-stop was asked for
        self._stop_sent = False
        self._coord = None

    def say(self, text: str) -> None:
        try:
            self.out.write(f"dptrain: {text}\n")
            self.out.flush()
        except (OSError, ValueError):
            pass

    # ------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGUSR1:
            self._checkpoint_asked = True       # acted on by the watch loop (no locks in a handler)
            return
        self._signals_seen += 1
        if signum == signal.SIGTERM and self._signals_seen == 1 and self._stops_cleanly():
            self._stop_asked = time.monotonic()
            return
        self._signal = signum
        if self._signals_seen >= 2:  # second Ctrl-C: no more grace
            self.group.stop(0.0)

    def _stops_cleanly(self) -> bool:
        """SIGTERM (preemption, a time limit, `kill`) first asks for a checkpoint and a clean stop:
        the built-in training loop honours that, and so does a job.script whose every rank polls
        cluster.stop_requested() (e.g. keras.callbacks.BackupAndRestore); any other script is
        stopped at once, as on Ctrl-C."""
        if float(self.job.cfg["fault_tolerance"]["stop_timeout"]) <= 0:
            return False
        if not self.job.cfg["job"]["script"]:
            return True
        try:
            return self._coord is not None and self._coord.all_honour_stop()
        except Exception:  # noqa: BLE001 - in a signal handler: never raise
            return False

    def _install(self) -> dict:
        old = {}
        if threading.current_thread() is threading.main_thread():
            # SIGHUP: the terminal closed; stop as cleanly as on Ctrl-C (summary, /dev/shm cleanup)
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
                old[sig] = signal.signal(sig, self._on_signal)
        return old

    def _act_on_requests(self, coord) -> int | None:
        """SIGUSR1 / SIGTERM asked for a checkpoint (and a stop): pass it on to the workers through
        the coordinator; 128 + SIGTERM once a clean stop has taken longer than stop_timeout."""
        if self._checkpoint_asked:
            self._checkpoint_asked = False
            coord.request_checkpoint()
            self.say("SIGUSR1: the workers save a checkpoint at their next metrics step (job.log_every)")
        if self._stop_asked is None:
            return None
        limit = float(self.job.cfg["fault_tolerance"]["stop_timeout"])
        if not self._stop_sent:
            self._stop_sent = True
            coord.request_stop()
            when = ("at their next cluster.stop_requested() check" if self.job.cfg["job"]["script"]
                    else "at their next metrics step")
            self.say(f"SIGTERM: the workers save a checkpoint and stop {when} (up to {limit:g} s, "
                     f"fault_tolerance.stop_timeout); send it again to stop them at once")
        if time.monotonic() - self._stop_asked > limit:
            self.say(f"the workers did not stop within {limit:g} s; stopping them now")
            self._signal = signal.SIGTERM
            return 128 + signal.SIGTERM
        return None

    @staticmethod
    def _restore(old: dict) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    # ------------------------------------------------------------------ loop
    def run(self) -> int:
        job, cfg = self.job, self.job.cfg
        ft = cfg["fault_tolerance"]
        old = self._install()
        coord = None
        try:
            coord = self._coord = start_coordinator(job)
            max_restarts = ft["max_restarts"]
            attempt = 0
            while True:
                coord.begin_attempt(attempt, world_size=job.world_size)
                if attempt and not cfg["cluster"]["master_port"]:
                    job.master_port = free_port()   # the old rendezvous port may still be held
                rec = {"attempt": attempt, "started": round(time.time(), 3), "status": "running"}
                job.attempts.append(rec)
                job.write_launcher_state(status="running")
                self.group.start(attempt)
                result = self._watch(coord)
                rec["ended"] = round(time.time(), 3)
                if result is None and self._stop_asked is not None and (
                        job.cfg["job"]["script"] or (job.run.read_summary() or {}).get("stopped_early")):
                    # stopped cleanly on SIGTERM (not a run that happened to finish meanwhile)
                    rec["status"] = "stopped"
                    job.write_launcher_state(status="stopped")
                    self.say("the workers saved a checkpoint and stopped; run the same command again to "
                             "continue from it")
                    self._finish_summary("stopped", 128 + signal.SIGTERM, attempt)
                    return 128 + signal.SIGTERM
                if result is None:                      # success
                    rec["status"] = "ok"
                    job.write_launcher_state(status="ok")
                    self._finish_summary("ok", 0, attempt)
                    return 0
                if isinstance(result, int):             # interrupted
                    rec["status"] = "interrupted"
                    self.say(f"interrupted; stopping {job.world_size} workers")
                    self.group.stop(ft["grace_period"])
                    job.write_launcher_state(status="interrupted")
                    self._finish_summary("interrupted", result, attempt)
                    return result
                failure = result
                rec.update(status="failed", failed_rank=failure.rank, exit_code=failure.exit_code,
                           reason=failure.reason)
                who = f"rank {failure.rank}" if failure.rank is not None else "the job"
                self.say(f"{who} failed: {failure.reason}; stopping the other workers")
                if failure.where:
                    self.say(failure.where[0])
                    for line in failure.where[1:-1]:
                        self.out.write(f"    {line}\n")
                    self.say(failure.where[-1])
                self.group.stop(ft["grace_period"])
                tail = failure.tail or (self.group.tail(failure.rank) if failure.rank is not None else [])
                if tail:
                    log = job.run.rank_log(failure.rank) if failure.rank is not None else job.run.path
                    if (failure.rank is not None and _one_terminal()
                            and self.group.on_console(failure.rank, tail)):
                        self.say(f"{who}'s last lines are above (full log: {log})")
                    else:
                        self.say(f"last {len(tail)} line{'s' if len(tail) != 1 else ''} of {who} (full log: {log}):")
                        for line in tail:
                            self.out.write(f"    {line}\n")
                        self.out.flush()
                job.write_launcher_state(status="failed")
                if self._signal is not None or self._stop_asked is not None:
                    code = 128 + (self._signal or signal.SIGTERM)
                    self._finish_summary("interrupted", code, attempt)
                    return code
                if attempt < max_restarts and failure.exit_code == EXIT_CONFIG:
                    self.say(f"not restarting: that error would recur on every attempt (exit code "
                             f"{EXIT_CONFIG}); fix it, then run the same command again")
                elif attempt < max_restarts:
                    attempt += 1
                    self._maybe_shrink(failure)
                    what = ("the script starts again (DPTRAIN_RESTART tells it which attempt this is)"
                            if job.cfg["job"]["script"] else "workers resume from the newest valid checkpoint")
                    self.say(f"restarting the worker group (restart {attempt} of {max_restarts}); {what}")
                    continue
                if max_restarts and failure.exit_code != EXIT_CONFIG:
                    self.say(f"giving up after {max_restarts} restart{'s' if max_restarts != 1 else ''}")
                self._finish_summary("failed", failure.exit_code, attempt, failure)
                return failure.exit_code or 1
        finally:
            try:
                self.group.stop(0.5)
                self.group.close()
            finally:
                if coord is not None:
                    coord.stop()
                self._restore(old)

    def _maybe_shrink(self, failure: Failure) -> None:
        """Elastic restart (fault_tolerance.min_workers): leave the failed worker's node out."""
        job = self.job
        min_workers = job.cfg["fault_tolerance"].get("min_workers")
        if not min_workers or failure.rank is None or not 0 <= failure.rank < job.world_size:
            return
        from .elastic import shrink_nodes
        node = job.slots[failure.rank].node_rank
        shrunk = shrink_nodes(job.cfg["cluster"]["nodes"], node, min_workers,
                              job.cfg["job"]["global_batch_size"])
        if shrunk is None:
            self.say(f"cannot continue on fewer workers (fault_tolerance.min_workers: {min_workers}, "
                     f"global batch {job.cfg['job']['global_batch_size']}); restarting on the same nodes")
            return
        nodes, why = shrunk
        job.replan(nodes)
        self.group.replanned()
        self.say(f"elastic restart: {why}")

    def _watch(self, coord):
        """None on success, an int exit code when interrupted, else a Failure."""
        while True:
            if self._signal is not None:
                return 128 + self._signal
            code = self._act_on_requests(coord)
            if code is not None:
                return code
            ok, failure = self.group.poll()
            if failure is not None:
                return self._behind_timeout(self._behind_echo(failure, coord), coord)
            if ok:
                return None
            ev = coord.get_event(timeout=0.1)
            if ev is None or ev.attempt != coord.attempt:
                continue
            if ev.kind == "dead" and ev.rank is not None and self.group.exited_ok(ev.rank):
                continue  # finished normally without saying goodbye to the coordinator
            if ev.kind in ("dead", "startup_timeout"):
                # give a process that just exited a moment to be seen as the cause
                time.sleep(0.2)
                ok, failure = self.group.poll()
                if failure is not None and ev.rank is not None and failure.rank != ev.rank:
                    named = self.group.failure_of(ev.rank)
                    if named is not None and named.exit_code != EXIT_PEER_FAILURE:
                        failure = named
                if failure is not None:
                    return failure
                detail = ev.detail
                if ev.kind == "startup_timeout":
                    detail += self._where_missing(coord)
                return Failure(ev.rank, 1, detail, [])
            if ev.kind == "failed":
                self.say(f"rank {ev.rank} reported an error: {ev.detail.splitlines()[-1] if ev.detail else ''}")
            if ev.kind == "warning":
                self.say(f"warning: {ev.detail}")

    def _behind_echo(self, failure: Failure, coord) -> Failure:
        """A rank that stopped only because a peer failed (exit 75) is an echo.  When no rank failed
        for its own reason, the cause is a peer that is still there but silent (hung, or stopped
        with SIGSTOP / Ctrl-Z): name the one whose heartbeats stopped first."""
        if failure.exit_code != EXIT_PEER_FAILURE:
            return failure
        # The echo can be reaped before its cause has exited (under load the crashed rank is still
        # printing its traceback): give the cause a moment to show up before looking further.
        deadline = time.monotonic() + ECHO_GRACE_S
        while time.monotonic() < deadline:
            time.sleep(0.05)
            _, cause = self.group.poll()
            if cause is not None and cause.exit_code != EXIT_PEER_FAILURE:
                return cause
        interval = float(self.job.cfg["fault_tolerance"]["heartbeat_interval"])
        try:
            silent = [(r, s) for r, s in coord.silent_ranks(3 * interval) if r != failure.rank]
        except Exception:  # noqa: BLE001
            silent = []
        if not silent:
            done = [r for r in range(self.job.world_size) if self.group.exited_ok(r)]
            if done:   # it said goodbye while the others were inside a collective (ZeroMQ's BYE)
                return Failure(done[0], 1, f"it finished and exited while the other ranks still "
                                                           f"ran collectives: {UNEVEN_STEPS}", [])
            return failure
        rank, seconds = silent[0]
        return Failure(rank, 1, f"no heartbeat for {seconds:.1f} s while rank {failure.rank} lost its connection "
                                f"to it (hung, or stopped with SIGSTOP / Ctrl-Z)", [])

    def _behind_timeout(self, failure: Failure, coord) -> Failure:
        """A rank that timed out inside a collective names the neighbour it waited for, which may be
        waiting itself: name instead the rank that never joined that collective, with the line its
        last heartbeat found it at (stall.py).  Waits up to a heartbeat interval for the ranks'
        views after the timeout; keeps `failure` when the evidence does not single anyone out."""
        if failure.rank is None:
            return failure
        try:
            view = coord.collective_view()
        except Exception:  # noqa: BLE001 - the diagnosis is a courtesy
            return failure
        report = (view.get(failure.rank) or {}).get("timed_out")
        if not report:
            return failure
        interval = float(self.job.cfg["fault_tolerance"]["heartbeat_interval"])
        deadline = time.monotonic() + min(interval + 1.0, 10.0)
        while time.monotonic() < deadline:
            finished = {r for r in view if self.group.exited_ok(r) or self.group.failure_of(r) is not None}
            if not views_pending(view, report, finished):
                break
            time.sleep(0.1)
            view = coord.collective_view()
        lag = find_laggards(view, report)
        if lag is None or lag.ranks[0] == failure.rank:
            return failure
        own = self.group.failure_of(lag.ranks[0])
        if own is not None and own.exit_code != EXIT_PEER_FAILURE:
            return own          # it crashed: that is the cause, with its own message
        where = [lag.where_header(), *lag.where, lag.advice()] if lag.state != "done" else []
        return Failure(lag.ranks[0], failure.exit_code, lag.reason(), [], where)

    def _where_missing(self, coord) -> str:
        """' (hosts ...; ...)': where the ranks that never registered were to run, and what to check."""
        try:
            missing = coord.missing_ranks()
        except Exception:  # noqa: BLE001 - the message is a courtesy
            return ""
        hosts = sorted({self.job.slots[r].host for r in missing if 0 <= r < len(self.job.slots)})
        if not hosts:
            return ""
        return (f" (on {', '.join(hosts)}: check that the host is reachable with ssh, has the same Python "
                f"environment, and can reach the coordinator at {self.job.coord_addr})")

    def _finish_summary(self, status: str, code: int, attempt: int, failure: Failure | None = None) -> None:
        """Add launcher facts to summary.json (the runtime writes the training results)."""
        job = self.job
        summary = job.run.read_summary() or {}
        extra = {"status": status, "exit_code": code, "restarts": attempt,
                 "wall_time_s": round(time.time() - job.started, 3), "launcher": job.mode}
        summary.setdefault("world_size", job.world_size)
        if not job.cfg["job"]["script"]:     # a script picks its own epochs (it may write its own summary)
            summary.setdefault("epochs", job.cfg["job"]["epochs"])
            if summary.get("steps") is None and job.coordinator is not None:
                # stopped before the runtime wrote its summary: the last step the workers reported
                try:
                    steps = [w.get("step") for w in job.coordinator.state()["workers"].values()]
                    summary["steps"] = max((s for s in steps if isinstance(s, int)), default=None)
                except Exception:  # noqa: BLE001 - summary facts are best effort
                    pass
        if failure is not None:
            extra.update(failed_rank=failure.rank, failure=failure.reason)
            if failure.where:
                extra["failure_where"] = failure.where
        if not summary.get("last_checkpoint"):
            try:
                from cluster.checkpoint import latest_valid_checkpoint
                import warnings
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    summary["last_checkpoint"] = latest_valid_checkpoint(job.cfg["checkpoint"]["dir"])
            except Exception:  # summary facts are best effort, never fail the launch
                summary["last_checkpoint"] = None
        # heartbeats report the step every few seconds: a newer checkpoint proves a later one
        ckpt_step = checkpoint_step(summary.get("last_checkpoint"))
        if isinstance(summary.get("steps"), int) and ckpt_step is not None and ckpt_step > summary["steps"]:
            summary["steps"] = ckpt_step
        summary.update(extra)
        usage = resource_usage(job.run.file("resources.jsonl"), attempt)
        if usage:
            summary["resources"] = usage
        try:
            job.run.write_summary(summary)
        except OSError as e:
            self.say(f"could not write {job.run.summary_path}: {e}")
