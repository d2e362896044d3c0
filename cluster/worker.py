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
import sys
import traceback


#: Exit code of a worker that stopped because a *peer* failed first (lost connection, dead
#: process, aborted collective).  Launchers use it to report the root cause, not its echo.
EXIT_PEER_FAILURE = 75   # sysexits EX_TEMPFAIL: the cause is elsewhere; a restart may fix it
#: Exit code of a worker whose launcher (and coordinator) disappeared: nobody supervises the run any more.
EXIT_LAUNCHER_LOST = 69  # sysexits EX_UNAVAILABLE


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
    import comm
    backend = os.environ.get("DPTRAIN_COMM_BACKEND") or cfg.cluster.backend
    communicator = None
    client = None
    try:
        communicator = comm.init(backend=backend)
        from .heartbeat import CoordinatorClient
        client = CoordinatorClient.from_env(rank=communicator.rank)
        if client is not None:
            client.register()
            client.start_heartbeat(cfg.fault_tolerance.heartbeat_interval,
                                   lost_after=cfg.fault_tolerance.heartbeat_timeout,
                                   on_lost=_stop_orphan(communicator.rank, run_dir))
        if cfg.job.script:
            sys.argv = [cfg.job.script] + list(cfg.job.script_args)
            runpy.run_path(cfg.job.script, run_name="__main__")
        else:
            from .runtime import Trainer
            Trainer(cfg, communicator, run_dir=run_dir, coordinator=client,
                    log=_log(communicator.rank)).run()
        if client is not None:
            client.report_done()
        return 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        return code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except comm.PeerFailureError as e:
        rank = communicator.rank if communicator is not None else os.environ.get("DPTRAIN_RANK", "?")
        print(f"error on rank {rank}: a peer failed first: {e}", file=sys.stderr, flush=True)
        return EXIT_PEER_FAILURE
    except Exception as e:  # one readable line first, the traceback for the logs after it
        rank = communicator.rank if communicator is not None else os.environ.get("DPTRAIN_RANK", "?")
        print(f"error on rank {rank}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        if os.environ.get("DPTRAIN_TRACEBACK", "1") != "0":
            traceback.print_exc()
        return 1
    finally:
        if client is not None:
            client.close()
        if communicator is not None:
            try:
                communicator.close()
            except Exception:
                pass


if __name__ == "__main__":
    sys.exit(main())
