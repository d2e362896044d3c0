"""Entry point of one worker process: `python -m cluster.worker`.

The launcher (local mode, mpirun, or a generated launch script) starts this
module on every rank with the environment described in the README (rank,
rendezvous, coordinator, run directory, resolved config).  It joins the
communicator, registers with the coordinator, runs either the built-in training
loop or the user's `job.script`, and turns every failure into one readable line
on stderr and a non-zero exit code.
"""
from __future__ import annotations

import os
import runpy
import socket
import sys
import traceback


#: Exit code of a worker that stopped because a *peer* failed first (lost connection, dead
#: process, aborted collective).  Launchers use it to report the root cause, not its echo.
EXIT_PEER_FAILURE = 75   # sysexits EX_TEMPFAIL: the cause is elsewhere; a restart may fix it
#: Exit code of a worker whose launcher (and coordinator) disappeared: nobody supervises the run any more.
EXIT_LAUNCHER_LOST = 69  # sysexits EX_UNAVAILABLE
#: Exit code of a worker whose error would recur on every restart (no dataset, a model that does not
#: fit its checkpoint, bad model arguments): launchers do not restart on it.
EXIT_CONFIG = 78         # sysexits EX_CONFIG

#: Where engine/, comm/, cluster/ and launcher/ live: frames and warnings from here are dptrain's.
_PACKAGES_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _error_kinds() -> tuple[tuple, tuple]:
    """(complete, recurring) error types.  Complete: ours, whose message already names the problem
    and the fix, so the console gets that message and the traceback goes to the rank's log
    directory (it helps us, not the user).  Recurring: a restart cannot fix them (the same inputs
    give the same error)."""
    import comm
    from engine.data.datasets import DatasetNotFoundError
    from engine.data.download import DownloadError
    from engine.data.idx import IDXFormatError
    from engine.nn.module import StateDictError
    from engine.serialization import CheckpointFormatError
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .ddp import DDPError
    from .heartbeat import CoordinatorError
    from .runtime import WorkerError
    recurring = (DatasetNotFoundError, IDXFormatError, StateDictError, ConfigError, WorkerError,
                 comm.CommSetupError)
    return recurring + (comm.CommError, DownloadError, CheckpointFormatError, CheckpointError, DDPError,
                        CoordinatorError), recurring


def _user_frames(tb):
    """The traceback without this module's and runpy's frames (a job.script's error starts in it)."""
    start = tb
    while tb is not None and (tb.tb_frame.f_code.co_filename in (__file__, "<frozen runpy>")
                              or tb.tb_frame.f_code.co_filename.endswith("runpy.py")):
        tb = tb.tb_next
    return tb if tb is not None else start


def _user_call_site(tb) -> str:
    """'raised from FILE, line N' for the deepest frame outside dptrain's own packages, if any."""
    site = ""
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if not name.startswith(_PACKAGES_DIR) and not name.startswith("<") and not name.endswith("runpy.py"):
            site = f"raised from {name}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return site


def _report(rank, exc: BaseException, run_dir) -> int:
    """Print one readable line for `exc` (plus the traceback where it is ours to read) -> exit code."""
    print(f"error on rank {rank}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    try:
        complete, recurring = _error_kinds()
    except Exception:  # noqa: BLE001 - the engine itself failed to import: show everything
        complete, recurring = (), ()
    text = "".join(traceback.format_exception(type(exc), exc, _user_frames(exc.__traceback__)))
    if isinstance(exc, complete):
        path = os.path.join(run_dir, "logs", f"rank{rank}.traceback") if run_dir else None
        if path:
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
            except OSError:
                path = None
        where = _user_call_site(exc.__traceback__)
        if where or path:   # the user's own line that led here (a job.script), and where the rest is
            print("  " + "; ".join(x for x in (where, f"full traceback: {path}" if path else "") if x),
                  file=sys.stderr, flush=True)
    elif os.environ.get("DPTRAIN_TRACEBACK", "1") != "0":
        print(text, end="", file=sys.stderr, flush=True)
    return EXIT_CONFIG if isinstance(exc, recurring) else 1


def _install_stop_check() -> None:
    """Let keras.callbacks.BackupAndRestore answer the launcher's stop requests (the engine cannot
    import the cluster layer, so it gets cluster.stop_requested handed in)."""
    try:
        from engine.keras import callbacks
        from .preempt import stop_requested
    except Exception:  # noqa: BLE001 - the script will report a broken engine itself
        return
    callbacks.stop_check = stop_requested


def _torchrun_environment(communicator) -> None:
    """The variables torchrun gives a script (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
    GROUP_RANK, MASTER_ADDR/PORT), so `int(os.environ["LOCAL_RANK"])` in a ported script reads this
    worker's place; values the user set are left alone."""
    env = os.environ
    values = {"RANK": communicator.rank, "WORLD_SIZE": communicator.size, "LOCAL_RANK": communicator.local_rank,
              "LOCAL_WORLD_SIZE": communicator.local_size, "GROUP_RANK": env.get("DPTRAIN_NODE_RANK", "0"),
              "MASTER_ADDR": env.get("DPTRAIN_MASTER_ADDR", ""), "MASTER_PORT": env.get("DPTRAIN_MASTER_PORT", "")}
    for key, value in values.items():
        if str(value) and key not in env:
            env[key] = str(value)


def _comm_timeout_in(exc: BaseException):
    """The CommTimeoutError behind `exc` (itself, or what it was raised from), else None."""
    import comm
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, comm.CommTimeoutError):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _exit_now(code: int) -> None:
    """Under MPI a failing rank must not enter MPI_Finalize: it waits for the ranks that are still
    computing (or stuck waiting for this one), so the failure would surface only at their timeout
    and as theirs.  Leaving without it makes mpiexec stop the job at once; the shim still records
    our exit code, so the launcher names this rank."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _stop_orphan(rank, run_dir):
    """Heartbeat thread: the launcher is gone, so stop instead of training on unsupervised (the
    checkpoint files are written to a temporary name and renamed, so stopping here loses nothing
    but the steps since the last checkpoint)."""
    def stop(reason):
        where = f" in {os.path.join(run_dir, 'checkpoints')}" if run_dir else ""
        print(f"error on rank {rank}: {reason}; this worker stops rather than train on unsupervised. "
              f"The newest checkpoint{where} is intact: run the same command again to resume.",
              file=sys.stderr, flush=True)
        os._exit(EXIT_LAUNCHER_LOST)
    return stop


def _plain_warnings() -> None:
    """Our own warnings are complete sentences: print them as `warning: ...`, without Python's
    file:line and source echo (a user script's warnings keep theirs)."""
    import warnings
    default = warnings.formatwarning

    def fmt(message, category, filename, lineno, line=None):
        if str(filename).startswith(_PACKAGES_DIR):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = fmt


def _log(rank):
    def log(msg):
        print(msg, flush=True)
    return log


def main(argv=None) -> int:
    from .config import ConfigError, load_config
    cfg_path = os.environ.get("DPTRAIN_CONFIG")
    if not cfg_path:
        print("error: DPTRAIN_CONFIG is not set; workers are started by `dptrain run CONFIG` "
              "(or `dptrain mpirun` / a `dptrain script` launch script)", file=sys.stderr)
        return 2
    try:
        cfg = load_config(cfg_path)
    except ConfigError as e:
        print(e.format(), file=sys.stderr)
        return 2
    run_dir = os.environ.get("DPTRAIN_RUN_DIR") or None
    _plain_warnings()
    import comm
    backend = os.environ.get("DPTRAIN_COMM_BACKEND") or cfg.cluster.backend
    communicator = None
    client = None
    failure = ""
    try:
        communicator = comm.init(backend=backend)
        _torchrun_environment(communicator)
        from .heartbeat import CoordinatorClient
        client = CoordinatorClient.from_env(rank=communicator.rank)
        if client is not None and client.enabled:
            client.share()
            client.watch(communicator)
            client.register()
            client.start_heartbeat(cfg.fault_tolerance.heartbeat_interval,
                                   lost_after=cfg.fault_tolerance.heartbeat_timeout,
                                   on_lost=_stop_orphan(communicator.rank, run_dir))
        if cfg.job.script:
            script = os.path.abspath(cfg.job.script)
            if not os.path.isfile(script):  # validated on the launching machine, not on this one
                from .runtime import WorkerError
                raise WorkerError(f"job.script: file {script!r} does not exist on {socket.gethostname()}; "
                                  f"every node needs the script at the same path (a shared file system, "
                                  f"or copy it there)")
            _install_stop_check()
            sys.argv = [cfg.job.script] + list(cfg.job.script_args)
            sys.path.insert(0, os.path.dirname(script))   # as `python script.py` would: its modules import
            runpy.run_path(script, run_name="__main__")
        else:
            from .runtime import Trainer
            Trainer(cfg, communicator, run_dir=run_dir, coordinator=client,
                    log=_log(communicator.rank)).run()
        if client is not None:
            client.report_done()
        code = 0
    except SystemExit as e:
        if e.code is not None and not isinstance(e.code, int):
            print(e.code, file=sys.stderr, flush=True)     # sys.exit("message") prints it, exits 1
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        failure = f"exit code {code}" if isinstance(e.code, int) else str(e.code)
        if code == 0 and client is not None:
            try:
                client.report_done()
            except Exception as done_error:  # noqa: BLE001 - the script itself succeeded
                print(f"warning: could not tell the coordinator this rank is done: {done_error}",
                      file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code, failure = 130, "interrupted"
    except comm.PeerFailureError as e:
        rank = communicator.rank if communicator is not None else os.environ.get("DPTRAIN_RANK", "?")
        print(f"error on rank {rank}: a peer failed first: {e}", file=sys.stderr, flush=True)
        code, failure = EXIT_PEER_FAILURE, "a peer failed first"
    except Exception as e:  # one readable line first; the traceback where it helps
        rank = communicator.rank if communicator is not None else os.environ.get("DPTRAIN_RANK", "?")
        code, failure = _report(rank, e, run_dir), f"{type(e).__name__}: {e}"
        timed_out = _comm_timeout_in(e)
        if client is not None and timed_out is not None:
            client.report_timeout(timed_out)   # before exiting: under mpiexec our exit stops the others
    finally:
        if client is not None:
            client.close()
    mpi = communicator is not None and communicator.backend == "mpi"
    if code and mpi:
        _exit_now(code)
    if communicator is not None:
        try:
            if code:
                communicator.abort(failure or f"exit code {code}")
            else:
                communicator.close()
        except Exception:
            pass
    return code


if __name__ == "__main__":
    sys.exit(main())
