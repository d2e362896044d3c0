"""`dptrain script`: write a self-contained bash launch script (mpiexec, or sbatch + srun).

Why: on many clusters jobs are submitted as scripts (batch queues, cron, another
machine without dptrain's CLI in PATH).  The script carries everything inline — the
resolved config, the hostfile, the placement — exports the worker environment,
starts the coordinator (``python -m cluster.coordinator``), runs mpiexec (or srun),
restarts up to ``fault_tolerance.max_restarts`` times, and exits with the job's code.
Only the secret is generated when the script runs (never stored in the file).
"""
from __future__ import annotations

import math
import os
import shlex
import sys
import time

from cluster.config import dump_config
from cluster.worker import EXIT_CONFIG

from .job import Job, placement_json, worker_command
from .mpirun import build_command, find_mpiexec, hostfile_text, mpi_flavor

__all__ = ["mpirun_script", "slurm_script"]

_EOF = "DPTRAIN_EOF"


def _heredoc(path_expr: str, text: str) -> str:
    if _EOF in text:
        raise ValueError(f"the text to embed contains the heredoc marker {_EOF}")
    if not text.endswith("\n"):
        text += "\n"
    return f"cat > {path_expr} <<'{_EOF}'\n{text}{_EOF}\n"


def _q(s: str) -> str:
    return shlex.quote(str(s))


def _common_exports(job: Job, backend: str, launcher: str) -> str:
    env = job.common_env(0)
    fixed = {k: v for k, v in env.items() if k not in (
        "DPTRAIN_JOB_SECRET", "DPTRAIN_RUN_DIR", "DPTRAIN_CONFIG", "DPTRAIN_PLACEMENT", "DPTRAIN_COORD_ADDR",
        "DPTRAIN_MASTER_ADDR", "DPTRAIN_MASTER_PORT", "DPTRAIN_RESTART", "DPTRAIN_RESTART_COUNT",
        "DPTRAIN_COMM_BACKEND", "DPTRAIN_LAUNCHER", "DPTRAIN_LAUNCH_STARTED",
        # `dptrain script` exits at once; the script's coordinator is watched by heartbeats alone
        "DPTRAIN_LAUNCHER_PID", "DPTRAIN_LAUNCHER_HOST")}
    fixed["DPTRAIN_COMM_BACKEND"] = backend
    fixed["DPTRAIN_LAUNCHER"] = launcher
    lines = [
        '# per-job secret for the coordinator\'s message authentication (generated now, never stored)',
        'DPTRAIN_JOB_SECRET="${DPTRAIN_JOB_SECRET:-$("$PYTHON" -c \'import secrets; print(secrets.token_hex(32))\')}"',
        'export DPTRAIN_JOB_SECRET',
        'export DPTRAIN_RUN_DIR="$RUN_DIR" DPTRAIN_CONFIG="$RUN_DIR/config.yaml" '
        'DPTRAIN_PLACEMENT="$RUN_DIR/placement.json"',
    ]
    lines += [f"export {k}={_q(v)}" for k, v in sorted(fixed.items())]
    return "\n".join(lines) + "\n"


def _loop(launch: str, after_failed_attempt: str = ":") -> str:
    """The attempt loop around one launch line (restarts, root-cause exit code); after_failed_attempt:
    the body of a shell function run when an attempt fails (before the report and the restart)."""
    return (f"after_failed_attempt() {{\n  {after_failed_attempt}\n}}\n"
            + _LOOP.replace("LAUNCH_LINE", launch).replace("EXIT_CONFIG_CODE", str(EXIT_CONFIG)))


def _prelude(job: Job, python: str, title: str) -> str:
    cfg = job.cfg
    return (
        f"# {title}\n"
        f"# Written by `dptrain script` on {time.strftime('%Y-%m-%d %H:%M:%S')} for run {cfg['name']!r}: "
        f"{job.world_size} ranks on {len(cfg['cluster']['nodes'])} node(s).\n"
        "# Everything it needs is inline; override PYTHON / MPIEXEC from the environment. The run\n"
        "# directory is part of the embedded config: for another one, write the script again with\n"
        "# output.dir=... (and checkpoint.dir=...).\n"
        "set -uo pipefail\n\n"
        f"PYTHON=\"${{PYTHON:-{python}}}\"\n"
        f"RUN_DIR={_q(job.run.path)}\n"
        f"MAX_RESTARTS={int(cfg['fault_tolerance']['max_restarts'])}\n"
        f"WORLD_SIZE={job.world_size}\n\n"
        f"mkdir -p \"$RUN_DIR/logs\" \"$RUN_DIR/status\" {_q(cfg['checkpoint']['dir'])}\n"
        "# a previous launch's results must not pass for this one's\n"
        "if [ -e \"$RUN_DIR/summary.json\" ]; then mv -f \"$RUN_DIR/summary.json\" \"$RUN_DIR/summary.previous.json\"; fi\n"
        "# the resolved config every worker loads\n"
        + _heredoc('"$RUN_DIR/config.yaml"', dump_config(cfg))
        + "# rank -> node / local rank / GPU, read by launcher.mpiworker\n"
        + _heredoc('"$RUN_DIR/placement.json"', placement_json(cfg, job.slots))
    )


_COORD_FN = r'''
COORD_PID=""
MPI_PID=""
stop_coordinator() {
  if [ -n "$COORD_PID" ]; then kill "$COORD_PID" 2>/dev/null; wait "$COORD_PID" 2>/dev/null; COORD_PID=""; fi
}
on_signal() {
  echo "dptrain: interrupted; stopping the workers" >&2
  if [ -n "$MPI_PID" ]; then kill -TERM "$MPI_PID" 2>/dev/null; wait "$MPI_PID" 2>/dev/null; fi
  stop_coordinator
  finish interrupted "$1"
  # a job.script cannot be asked to checkpoint: near a Slurm time limit it is stopped and requeued
  # all the same, and resumes from what it saved itself (e.g. keras.callbacks.BackupAndRestore)
  if [ -n "${REQUEUE:-}" ] && scontrol requeue "$SLURM_JOB_ID"; then
    echo "dptrain: requeued Slurm job $SLURM_JOB_ID" >&2
    exit 0
  fi
  exit "$1"
}
# after the job: summary facts (status, exit code, restarts, wall time) and MPI's orphaned /dev/shm segments
finish() {
  "$PYTHON" - "$RUN_DIR" "$1" "$2" "${attempt:-0}" "${DPTRAIN_LAUNCH_STARTED:-0}" "${SHM_BEFORE:-}" \
      CHECKPOINT_DIR <<'PYEOF' || true
import json, os, sys, time, warnings
from cluster.rundir import RunDir
from launcher import shmclean
run_dir, status, code, attempt, started, shm_before, ckpt_dir = sys.argv[1:8]
run = RunDir(run_dir)
summary = run.read_summary() or {}
summary.update(status=status, exit_code=int(code), restarts=int(attempt), launcher="LAUNCHER_MODE")
summary.setdefault("world_size", WORLD_SIZE_VALUE)
if int(started):
    summary["wall_time_s"] = round(time.time() - int(started), 3)
if summary.get("steps") is None:  # stopped before the runtime wrote its summary: the last step reported
    try:
        with open(os.path.join(run_dir, "coordinator.json")) as f:
            steps = [w.get("step") for w in json.load(f)["workers"].values()]
        summary["steps"] = max((s for s in steps if isinstance(s, int)), default=None)
    except (OSError, ValueError, KeyError, AttributeError):
        pass
if not summary.get("last_checkpoint"):
    try:
        from cluster.checkpoint import latest_valid_checkpoint
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            summary["last_checkpoint"] = latest_valid_checkpoint(ckpt_dir)
    except Exception:  # summary facts are best effort
        pass
from cluster.checkpoint import checkpoint_step
ckpt_step = checkpoint_step(summary.get("last_checkpoint"))
if isinstance(summary.get("steps"), int) and ckpt_step is not None and ckpt_step > summary["steps"]:
    summary["steps"] = ckpt_step  # heartbeats report the step every few seconds; the checkpoint is newer
try:
    run.write_summary(summary)
except OSError as e:
    print(f"dptrain: could not write the summary: {e}", file=sys.stderr)
removed = shmclean.remove_orphans(set(shm_before.split()[1:])) if shm_before.startswith("snapshot") else []
if removed:
    print(f"dptrain: removed {len(removed)} shared-memory segment(s) left in {shmclean.SHM_DIR} by killed ranks",
          file=sys.stderr)
PYEOF
}
# SIGTERM (a time limit, preemption, `kill`): the built-in training loop saves a checkpoint and stops at
# its next metrics step, a job.script whose ranks all poll cluster.stop_requested() at its next poll (up to
# STOP_TIMEOUT s; 0: at once; any other script: at once); a second SIGTERM stops the workers at once.
# SIGUSR1: a checkpoint now, training goes on (under Slurm: checkpoint, stop and requeue, see REQUEUE_ON_USR1)
STOP_TIMEOUT=STOP_TIMEOUT_VALUE
SCRIPT_JOB=SCRIPT_JOB_VALUE
STOP_DEADLINE=""
REQUEUE=""
on_term() {
  if [ -n "$STOP_DEADLINE" ] || [ "$STOP_TIMEOUT" -eq 0 ] || [ -z "$MPI_PID" ] || [ -z "$COORD_PID" ]; then
    on_signal 143
  fi
  # a job.script stops cleanly only when every rank polls cluster.stop_requested() (the coordinator says so)
  if [ "$SCRIPT_JOB" = 1 ] && ! grep -qs '"all_honour_stop": true' "$RUN_DIR/coordinator.json"; then
    on_signal 143
  fi
  STOP_DEADLINE=$(( $(date +%s) + STOP_TIMEOUT ))
  echo "dptrain: $1: the workers save a checkpoint and stop at their next check (up to ${STOP_TIMEOUT} s);" \
       "SIGTERM again stops them at once" >&2
  kill -USR2 "$COORD_PID" 2>/dev/null
}
on_usr1() {
  if [ -n "${REQUEUE_ON_USR1:-}" ] && [ -n "${SLURM_JOB_ID:-}" ]; then REQUEUE=1; on_term "SIGUSR1 (time limit near)"; return; fi
  if [ -n "$COORD_PID" ]; then
    kill -USR1 "$COORD_PID" 2>/dev/null
    echo "dptrain: SIGUSR1: the workers save a checkpoint at their next metrics step" >&2
  fi
}
trap stop_coordinator EXIT
trap 'on_signal 130' INT
trap 'on_term SIGTERM' TERM
trap on_usr1 USR1
start_coordinator() {
  rm -f "$RUN_DIR/coordinator.addr"
  "$PYTHON" -m cluster.coordinator --world-size "$WORLD_SIZE" --bind "$COORD_BIND" \
      ${COORD_HOST:+--advertise-host "$COORD_HOST"} \
      --run-dir "$RUN_DIR" --attempt "$1" --heartbeat-timeout HB_TIMEOUT --startup-timeout STARTUP_TIMEOUT \
      --checkpoint-interval CKPT_INTERVAL --addr-file "$RUN_DIR/coordinator.addr" \
      --kill-pidfile "$RUN_DIR/mpiexec.pid" &
  COORD_PID=$!
  for _ in $(seq 1 300); do
    if [ -s "$RUN_DIR/coordinator.addr" ]; then break; fi
    if ! kill -0 "$COORD_PID" 2>/dev/null; then break; fi
    sleep 0.1
  done
  if [ ! -s "$RUN_DIR/coordinator.addr" ]; then
    echo "dptrain: the coordinator did not start (see the messages above)" >&2
    exit 1
  fi
  DPTRAIN_COORD_ADDR="$(cat "$RUN_DIR/coordinator.addr")"
  export DPTRAIN_COORD_ADDR
}
'''


def _coord_fn(job: Job, bind: str, host_expr: str) -> str:
    """Shell functions that start/stop the coordinator; `host_expr` is a shell word ('' for local)."""
    ft = job.cfg["fault_tolerance"]
    text = (_COORD_FN.replace("HB_TIMEOUT", f"{ft['heartbeat_timeout']:g}")
            .replace("STARTUP_TIMEOUT", f"{ft['startup_timeout']:g}")
            .replace("CKPT_INTERVAL", str(job.cfg["checkpoint"]["interval"])))
    text = text.replace("STOP_TIMEOUT_VALUE", str(math.ceil(float(ft["stop_timeout"]))))
    text = text.replace("SCRIPT_JOB_VALUE", "1" if job.cfg["job"]["script"] else "0")
    text = (text.replace("LAUNCHER_MODE", job.mode).replace("WORLD_SIZE_VALUE", str(job.world_size))
            .replace("CHECKPOINT_DIR", _q(job.cfg["checkpoint"]["dir"])))
    return f"COORD_BIND={_q(bind)}\nCOORD_HOST={host_expr or chr(34) * 2}\n" + text


_LOOP = r'''
rc=1
attempt=0
DPTRAIN_LAUNCH_STARTED="$(date +%s)"
export DPTRAIN_LAUNCH_STARTED
SHM_BEFORE="snapshot $(ls /dev/shm 2>/dev/null | tr '\n' ' ')"
while :; do
  export DPTRAIN_RESTART="$attempt" DPTRAIN_RESTART_COUNT="$attempt"
  rm -f "$RUN_DIR"/status/rank*.json "$RUN_DIR/mpiexec.pid"
  start_coordinator "$attempt"
  LAUNCH_LINE &
  MPI_PID=$!
  echo "$MPI_PID" > "$RUN_DIR/mpiexec.pid"
  # a rank that exits non-zero ends the job now (MPI launchers may wait for the other ranks)
  while kill -0 "$MPI_PID" 2>/dev/null; do
    if [ -n "$STOP_DEADLINE" ] && [ "$(date +%s)" -ge "$STOP_DEADLINE" ]; then
      echo "dptrain: the workers did not stop within ${STOP_TIMEOUT} s; stopping them now" >&2
      on_signal 143
    fi
    if grep -qsE '"exit_code": [1-9]' "$RUN_DIR"/status/rank*.json; then
      echo "dptrain: a rank failed; stopping the others" >&2
      kill -TERM "$MPI_PID" 2>/dev/null
      break
    fi
    sleep 0.5
  done
  wait "$MPI_PID"
  rc=$?
  MPI_PID=""
  stop_coordinator
  if [ -n "$STOP_DEADLINE" ] && [ "$rc" -eq 0 ]; then
    echo "dptrain: the workers saved a checkpoint and stopped; run this script again to continue from it" >&2
    finish stopped 143
    if [ -n "$REQUEUE" ] && scontrol requeue "$SLURM_JOB_ID"; then
      echo "dptrain: requeued Slurm job $SLURM_JOB_ID: it resumes from that checkpoint when it runs again" >&2
      exit 0
    fi
    exit 143
  fi
  if [ -n "$STOP_DEADLINE" ]; then finish interrupted 143; exit 143; fi
  if [ "$rc" -ne 0 ]; then after_failed_attempt; fi
  # name the rank that failed and why, as `dptrain mpirun` does (launcher.postmortem): its exit code
  # rather than the launcher's, or its worker shim killed by a signal
  report="$("$PYTHON" -m launcher.postmortem "$RUN_DIR" "$rc")"
  if [ -n "$report" ]; then
    rc="$(printf '%s\n' "$report" | head -n 1)"
    printf '%s\n' "$report" | tail -n +2 >&2
  fi
  if [ "$rc" -eq 0 ]; then break; fi
  echo "dptrain: the workers failed with exit code $rc (attempt $attempt)" >&2
  if [ "$attempt" -ge "$MAX_RESTARTS" ]; then break; fi
  if [ "$rc" -eq EXIT_CONFIG_CODE ]; then
    echo "dptrain: not restarting: that error would recur (fix it, then run this script again)" >&2
    break
  fi
  attempt=$((attempt + 1))
  echo "dptrain: restarting the worker group (restart $attempt of $MAX_RESTARTS)" >&2
done
if [ "$rc" -eq 0 ]; then finish ok 0; else finish failed "$rc"; fi
exit "$rc"
'''


_FREE_PORT = "$(\"$PYTHON\" -c 'import socket; s = socket.socket(); s.bind((\"\", 0)); print(s.getsockname()[1])')"


def mpirun_script(job: Job) -> str:
    """A bash script that runs the job with mpiexec (flavor detected now, overridable via MPIEXEC)."""
    cfg = job.cfg
    python = cfg["cluster"]["python"] or sys.executable
    mpiexec = find_mpiexec(cfg)
    flavor = mpi_flavor(mpiexec)
    names = sorted(job.common_env(0))
    cmd = build_command(cfg, "$MPIEXEC", flavor, "$RUN_DIR/hostfile", names, python="$PYTHON")
    shell_words = {"$MPIEXEC": '"$MPIEXEC"', "$PYTHON": '"$PYTHON"', "$RUN_DIR/hostfile": '"$RUN_DIR/hostfile"'}
    launch = " ".join(shell_words.get(c) or _q(c) for c in cmd)
    port = cfg["cluster"]["coordinator"]["port"]
    if cfg.all_local:
        bind, host_expr = f"tcp://127.0.0.1:{port}", ""
    else:
        bind = f"tcp://*:{port}"
        host = cfg["cluster"]["coordinator"]["host"]
        host_expr = _q(host) if host else '"$(hostname -f 2>/dev/null || hostname)"'
    master = "127.0.0.1" if cfg.all_local else job.master_addr
    backend = job.backend
    head = "#!/usr/bin/env bash\n" + _prelude(job, python, f"dptrain mpirun launch script ({flavor} mpiexec)")
    head += f"MPIEXEC=\"${{MPIEXEC:-{mpiexec}}}\"\n"
    head += _heredoc('"$RUN_DIR/hostfile"', hostfile_text(cfg, flavor, job.here))
    head += "\n" + _common_exports(job, backend, "script")
    head += f"export DPTRAIN_MASTER_ADDR={_q(master)}\n"
    port = cfg["cluster"]["master_port"] or _FREE_PORT
    head += f"DPTRAIN_MASTER_PORT=\"${{DPTRAIN_MASTER_PORT:-{port}}}\"\nexport DPTRAIN_MASTER_PORT\n"
    if os.geteuid() == 0 and flavor == "openmpi":
        head += "export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1\n"
    return head + _coord_fn(job, bind, host_expr) + _MPIEXEC_OUTPUT + _loop(launch + " > >(mpiexec_output)")


# Hydra prints a "BAD TERMINATION ... YOU CAN IGNORE THE BELOW CLEANUP MESSAGES" banner on stdout when a
# rank dies; the script names the failed rank itself, so the banner (like every line of mpiexec's own)
# goes to logs/mpiexec.log only.  The ranks' lines pass through (their logs are written by the shims).
_MPIEXEC_OUTPUT = r'''
mkdir -p "$RUN_DIR/logs"
mpiexec_output() {
  awk -v logfile="$RUN_DIR/logs/mpiexec.log" '
    !/^\[rank / { print >> logfile; fflush(logfile) }
    !banner && /^====================/ { banner = 1 }
    banner { if (/^Please see the FAQ page/) banner = 0; next }
    { print; fflush() }'
}
'''


def slurm_script(job: Job) -> str:
    """An sbatch script: resources in #SBATCH lines, the coordinator on the batch node, srun for the ranks."""
    cfg = job.cfg
    python = cfg["cluster"]["python"] or sys.executable
    nodes = cfg["cluster"]["nodes"]
    slots = [n["slots"] for n in nodes]
    gpus = max(int(n["gpus"]) for n in nodes)
    dist = "cyclic" if cfg["cluster"]["placement"] == "cyclic" else "block"
    sb = [f"#SBATCH --job-name={cfg['name']}", f"#SBATCH --nodes={len(nodes)}", f"#SBATCH --ntasks={job.world_size}",
          f"#SBATCH --distribution={dist}", f"#SBATCH --cpus-per-task={cfg['job']['threads']}",
          f"#SBATCH --output={job.run.path}/slurm-%j.out",
          # 120 s before the time limit: checkpoint, stop and requeue (the next run resumes); append so a
          # requeued job keeps its earlier output
          "#SBATCH --signal=B:USR1@120", "#SBATCH --requeue", "#SBATCH --open-mode=append"]
    if len(set(slots)) == 1:
        sb.append(f"#SBATCH --ntasks-per-node={slots[0]}")
    if gpus:
        sb.append(f"#SBATCH --gpus-per-node={gpus}")
    backend = cfg["cluster"]["backend"]
    backend = "zmq" if backend == "auto" else backend  # srun gives no MPI process manager to every MPI build
    head = "#!/usr/bin/env bash\n" + "\n".join(sb) + "\n" + _prelude(
        job, python, "dptrain Slurm batch script: submit with `sbatch`; ranks are started by srun")
    head += "\n" + _common_exports(job, backend, "slurm")
    head += "REQUEUE_ON_USR1=1   # SIGUSR1 from --signal: checkpoint, stop, scontrol requeue\n"
    head += ('DPTRAIN_MASTER_ADDR="$(scontrol show hostnames "${SLURM_JOB_NODELIST:-$(hostname)}" 2>/dev/null '
             '| head -n 1)"\n'
             'export DPTRAIN_MASTER_ADDR="${DPTRAIN_MASTER_ADDR:-$(hostname)}"\n')
    # rank 0 runs on the first node of the allocation, which is where this batch script runs: a port
    # free there (not a fixed one: jobs sharing a node would collide)
    port = cfg["cluster"]["master_port"] or _FREE_PORT
    head += f"DPTRAIN_MASTER_PORT=\"${{DPTRAIN_MASTER_PORT:-{port}}}\"\nexport DPTRAIN_MASTER_PORT\n"
    host = cfg["cluster"]["coordinator"]["host"]
    coord = _coord_fn(job, "tcp://*:" + str(cfg["cluster"]["coordinator"]["port"]),
                      _q(host) if host else '"$(hostname -f 2>/dev/null || hostname)"')
    cmd = " ".join(_q(c) for c in worker_command(cfg)[1:])
    # without a PMI plugin every MPI rank would start as a 1-rank MPI_COMM_WORLD; pmi2 serves MPICH
    # (the venv's wheel), Intel MPI and MVAPICH; Open MPI builds want SRUN_MPI=pmix
    mpi = ' --mpi="$SRUN_MPI"' if backend == "mpi" else ""
    if mpi:
        head += 'SRUN_MPI="${SRUN_MPI:-pmi2}"\n'
    # srun of Slurm 22.05+ does not inherit sbatch's --cpus-per-task: say it again for the step
    launch = (f'srun{mpi} --kill-on-bad-exit=1 --distribution={dist} --ntasks="$WORLD_SIZE" '
              f'--cpus-per-task={cfg["job"]["threads"]} "$PYTHON" -m launcher.mpiworker -- "$PYTHON" {cmd}')
    cleanup = ":"
    if backend == "mpi" and len(nodes) > 1:
        # the batch host cleans its own /dev/shm at the end (finish); on the other nodes the MPI
        # segments of killed ranks would stay until reboot: one cleanup task per node, by age
        cleanup = ('srun --nodes="${SLURM_JOB_NUM_NODES:-1}" --ntasks-per-node=1 --kill-on-bad-exit=0 '
                   '"$PYTHON" -m launcher.shmclean --since "$DPTRAIN_LAUNCH_STARTED" --quiet || true')
    return head + coord + _loop(launch, cleanup)
