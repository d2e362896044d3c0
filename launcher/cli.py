"""The `dptrain` command line (also `python -m launcher`).

    dptrain run CONFIG [key=value ...]        local worker processes (through mpiexec when MPI is available)
    dptrain launch [-n N] SCRIPT [ARGS ...]   a script on N local workers, no config file (like torchrun)
    dptrain mpirun CONFIG [key=value ...] [--dry-run]
    dptrain script CONFIG [key=value ...] -o launch.sh [--slurm]
    dptrain validate CONFIG [key=value ...] [--json] [--quiet]
    dptrain status RUN_DIR [--json] [--tail N] [--watch [SECONDS]]
    dptrain reference                         the config reference (Markdown), generated from the schema

Exit codes: 0 success; 2 invalid config or usage, or a remote `slots: auto` node that `mpirun`
could not measure (nothing was started); a failed worker's exit code (128+N for signal N) or 1
for other failures; 130 after Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys

__all__ = ["main", "build_parser"]

EXIT_CONFIG = 2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dptrain", description="Data-parallel training launcher.",
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Overrides use dotted keys parsed as YAML, e.g. job.epochs=1 "
                                       "cluster.nodes.0.slots=4 job.optimizer.lr=3e-3")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    def with_config(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("config", metavar="CONFIG", help="YAML config file")
        sp.add_argument("overrides", nargs="*", default=[], metavar="KEY=VALUE",
                        help="dotted overrides, e.g. job.epochs=1")
        return sp

    with_config("run", "train with worker processes on this machine: through mpiexec when MPI is available "
                       "(cluster.backend auto or mpi), else directly over ZeroMQ; remote nodes via mpiexec")
    # parsed by _launch_parser (its arguments after SCRIPT belong to the script); listed here for --help
    sub.add_parser("launch", add_help=False,
                   help="run SCRIPT [ARGS] on N local workers without a config file (dptrain launch -h)")
    sp = with_config("mpirun", "train through mpiexec with a hostfile built from the config")
    sp.add_argument("--dry-run", action="store_true", help="print the hostfile, environment and command only")
    sp = with_config("script", "write a bash launch script (mpiexec, or sbatch+srun with --slurm)")
    sp.add_argument("-o", "--output", required=True, metavar="FILE", help="script to write ('-' for stdout)")
    sp.add_argument("--slurm", action="store_true", help="write an sbatch script that uses srun")
    sp = with_config("validate", "check a config; print the resolved config or every error (exit 2)")
    sp.add_argument("--json", action="store_true", help="print the resolved config as JSON")
    sp.add_argument("--quiet", action="store_true", help="print nothing when the config is valid")
    sp = sub.add_parser("reference", help="print the config reference (Markdown table)")
    sp = sub.add_parser("status", help="show the state of a run from its run directory",
                        description="show the state of a run from its run directory")
    sp.add_argument("run_dir", metavar="RUN_DIR")
    sp.add_argument("--json", action="store_true", help="machine-readable output")
    sp.add_argument("--tail", type=int, default=5, help="metrics lines to show (default 5)")
    sp.add_argument("--watch", type=float, nargs="?", const=2.0, default=None, metavar="SECONDS",
                    help="redraw every SECONDS (default 2) until the run ends or Ctrl-C")
    return p


def _load(args):
    """The validated config, or None after printing why (exit 2).  `mpirun` also measures remote
    `auto` nodes (a probe through mpiexec, once the rest of the config is valid)."""
    from cluster.config import ConfigError, load_config
    measure, probe_error = None, ()
    if args.command == "mpirun":
        from .measure import ProbeError, measure_remote
        measure, probe_error = measure_remote, ProbeError
    try:
        return load_config(args.config, args.overrides, measure=measure)
    except ConfigError as e:
        sys.stderr.write(e.format() + "\n")
        return None
    except probe_error as e:
        sys.stderr.write(f"{e}\n")
        return None


_OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=")
_TAKES_VALUE = {"-o", "--output", "--tail"}


def _split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull KEY=VALUE tokens after CONFIG out of argv, so they may follow options (`--dry-run job.epochs=1`)."""
    rest: list[str] = []
    overrides: list[str] = []
    positionals = 0          # the command, then CONFIG
    skip = False
    for tok in argv:
        if skip:
            rest.append(tok)
            skip = False
        elif tok in _TAKES_VALUE:
            rest.append(tok)
            skip = True
        elif tok.startswith("-"):
            rest.append(tok)
        elif positionals >= 2 and _OVERRIDE.match(tok):
            overrides.append(tok)
        else:
            positionals += 1
            rest.append(tok)
    return rest, overrides


def main(argv: list[str] | None = None) -> int:
    """Entry point of `dptrain` / `python -m launcher`; returns the exit code."""
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:  # Ctrl-C before the workers started (the supervisor handles it afterwards)
        sys.stderr.write("dptrain: interrupted\n")
        return 130


class _LaunchParser(argparse.ArgumentParser):
    def error(self, message):
        # argparse counts the (optional) script arguments as required when SCRIPT is missing
        super().error(message.replace("SCRIPT, ARGS", "SCRIPT"))


def _launch_parser() -> argparse.ArgumentParser:
    p = _LaunchParser(
        prog="dptrain launch", description="Run a Python training script on N local worker processes, like "
        "torchrun --nproc_per_node N: no config file; the script calls cluster.init() (engine.nn models: "
        "cluster.DistributedDataParallel; Keras models: cluster.keras.distribute). Everything after SCRIPT "
        "goes to the script.")
    p.add_argument("-n", "--nproc", default="auto", metavar="N",
                   help="worker processes (default auto: one per usable core, or per GPU)")
    p.add_argument("--backend", default="auto", choices=("auto", "mpi", "zmq"),
                   help="auto: MPI when mpiexec works here, else ZeroMQ")
    p.add_argument("--threads", type=int, default=1, help="OMP/OpenBLAS threads per worker (default 1)")
    p.add_argument("--output", default=None, metavar="DIR", help="run directory (default runs/<script name>)")
    p.add_argument("--max-restarts", type=int, default=0, help="restart the workers this often after a failure")
    p.add_argument("--hosts", default=None, metavar="HOST:SLOTS,...",
                   help="several machines, e.g. node1:16,node2:16 (started through mpiexec; -n is then the "
                        "slots of hosts given without :SLOTS), or `slurm`: the nodes and tasks of the Slurm "
                        "allocation this runs in")
    p.add_argument("--dry-run", action="store_true",
                   help="with --hosts or --backend mpi: print the hostfile, environment and mpiexec command only")
    p.add_argument("script", metavar="SCRIPT")
    p.add_argument("script_args", nargs=argparse.REMAINDER, metavar="ARGS")
    return p


def _launch(argv: list[str]) -> int:
    """`dptrain launch`: the config a one-machine script job needs, built from flags, then `run`."""
    from cluster.config import ConfigError, is_local_host, resolve_config
    args = _launch_parser().parse_args(argv)
    nproc = args.nproc if args.nproc == "auto" else _positive_int(args.nproc)
    if nproc is None:
        sys.stderr.write(f"dptrain launch: -n/--nproc must be a positive integer or auto, got {args.nproc!r}\n")
        return EXIT_CONFIG
    stem = os.path.splitext(os.path.basename(args.script))[0] or "script"
    nodes = [{"host": "localhost", "slots": nproc}]
    if args.hosts and args.hosts.strip() == "slurm":
        nodes = "slurm"                 # the allocation's nodes and tasks (cluster/slurm.py)
    elif args.hosts:
        nodes = []
        for item in filter(None, (h.strip() for h in args.hosts.split(","))):
            host, _, slots = item.partition(":")
            count = _positive_int(slots) if slots else nproc
            if not host or count is None:
                sys.stderr.write(f"dptrain launch: --hosts entry {item!r}: expected HOST or HOST:SLOTS with "
                                 f"SLOTS a positive integer\n")
                return EXIT_CONFIG
            if count == "auto" and not is_local_host(host):
                sys.stderr.write(f"dptrain launch: --hosts entry {item!r}: give its number of workers "
                                 f"({host}:4) or -n N; -n auto counts this machine's cores only\n")
                return EXIT_CONFIG
            nodes.append({"host": host, "slots": count})
        if not nodes:
            sys.stderr.write("dptrain launch: --hosts is empty\n")
            return EXIT_CONFIG
    raw = {"name": stem,
           "cluster": {"nodes": nodes, "backend": args.backend},
           "job": {"script": args.script, "script_args": list(args.script_args), "threads": args.threads},
           "output": {"dir": args.output or os.path.join("runs", stem)},
           "fault_tolerance": {"max_restarts": args.max_restarts}}
    try:
        cfg = resolve_config(raw, source="dptrain launch")
    except ConfigError as e:
        sys.stderr.write("".join(f"dptrain launch: {err}\n" for err in e.errors))
        return EXIT_CONFIG
    if args.dry_run:
        if cfg.all_local and (args.backend == "zmq" or (args.backend == "auto" and not _mpi_available(cfg))):
            sys.stderr.write("dptrain launch: --dry-run prints the mpiexec command of a launch, and this one "
                             "would start the workers directly over ZeroMQ (no mpiexec); drop --dry-run, or "
                             "use --backend mpi / --hosts with MPI installed\n")
            return EXIT_CONFIG
        return _start(cfg, "mpirun", dry=True)
    return _start(cfg, "run")


def _positive_int(text: str):
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value > 0 else None


def _run(argv: list[str]) -> int:
    if argv and argv[0] == "launch":       # its own parser: the script's arguments are not overrides
        return _launch(argv[1:])
    rest, overrides = _split_overrides(argv)
    args = build_parser().parse_args(rest)
    if hasattr(args, "overrides"):
        args.overrides = list(args.overrides) + overrides
    cmd = args.command
    if cmd == "reference":
        from cluster.config import schema_reference
        sys.stdout.write(schema_reference() + "\n")
        return 0
    if cmd == "status":
        from .status import collect_status, format_status, status_json
        try:
            st = collect_status(args.run_dir, tail=max(0, args.tail))
        except FileNotFoundError as e:
            sys.stderr.write(f"dptrain status: {e}\n")
            return EXIT_CONFIG
        sys.stdout.write(status_json(st) if args.json else format_status(st))
        if args.watch is not None and not args.json:
            return _watch_status(args, st)
        return 0

    cfg = _load(args)
    if cfg is None:
        return EXIT_CONFIG
    if cmd == "validate":
        from cluster.config import dump_config
        if not args.quiet:
            if args.json:
                sys.stdout.write(json.dumps(cfg.to_dict(), indent=2) + "\n")
            else:
                sys.stdout.write(f"# {args.config}: valid; world size {cfg.world_size}, "
                                 f"{cfg.per_rank_batch_size} samples per rank per step\n" + dump_config(cfg))
        return 0

    from .job import prepare_job
    if cmd == "script":
        from .mpirun import MpiError
        from .script import mpirun_script, slurm_script
        job = prepare_job(cfg, "slurm" if args.slurm else "script", create=False)
        try:
            text = slurm_script(job) if args.slurm else mpirun_script(job)
        except MpiError as e:
            sys.stderr.write(f"dptrain script: {e}\n")
            return 1
        try:
            if args.slurm:  # sbatch opens `#SBATCH --output` in the run directory before the script runs
                os.makedirs(job.run.path, exist_ok=True)
            if args.output != "-":
                with open(args.output, "w") as f:
                    f.write(text)
                os.chmod(args.output, 0o755)
        except OSError as e:
            sys.stderr.write(f"dptrain script: {e}\n")
            return EXIT_CONFIG
        if args.output == "-":
            sys.stdout.write(text)
        else:
            sys.stderr.write(f"dptrain: wrote {args.output} ({'sbatch ' if args.slurm else 'bash '}"
                             f"{args.output} to launch {cfg.world_size} ranks)\n")
        if cfg["fault_tolerance"].get("min_workers"):
            sys.stderr.write("dptrain: note: fault_tolerance.min_workers (elastic restarts) is applied by "
                             "`dptrain run` / `dptrain mpirun`; the script restarts on the same nodes\n")
        return 0

    return _start(cfg, cmd, dry=getattr(args, "dry_run", False))


def _start(cfg, cmd: str, dry: bool = False) -> int:
    """Start the job of a validated config: local processes or mpiexec (`run` / `mpirun`)."""
    from cluster.coordinator import CoordinatorStartError
    try:
        return _start_job(cfg, cmd, dry)
    except (_Refused, CoordinatorStartError) as e:
        sys.stderr.write(f"dptrain: {e}\n")
        return EXIT_CONFIG


class _Refused(Exception):
    """The launch cannot start (its run directory is busy or not writable): one line, exit 2."""


def _prepare(cfg, mode: str, create: bool = True):
    from cluster.rundir import RunDirBusy
    from .job import prepare_job
    try:
        return prepare_job(cfg, mode, create=create)
    except RunDirBusy as e:
        raise _Refused(str(e)) from None
    except OSError as e:
        where = e.filename or cfg["output"]["dir"]
        raise _Refused(f"cannot write {where}: {e.strerror or e}; pick a writable output.dir (and "
                       f"checkpoint.dir) with free space") from None


def _start_job(cfg, cmd: str, dry: bool) -> int:
    backend = cfg["cluster"]["backend"]
    auto_mpi = cmd == "run" and backend == "auto" and cfg.all_local and _mpi_available(cfg)
    use_mpi = cmd == "mpirun" or backend == "mpi" or not cfg.all_local or auto_mpi
    if cmd == "run" and use_mpi:
        launch = cfg.source == "dptrain launch"
        why = (("--backend mpi" if launch else "cluster.backend is mpi") if backend == "mpi"
               else "some nodes are remote" if not cfg.all_local
               else f"MPI is available ({'--backend' if launch else 'cluster.backend:'} auto)")
        tail = f"; {_backend_setting(cfg, 'zmq')} starts the workers directly" if auto_mpi else ""
        sys.stderr.write(f"dptrain: {why}: launching through mpiexec (as `dptrain mpirun`){tail}\n")
    if use_mpi:
        from .mpirun import run_mpirun
        job = _prepare(cfg, "mpirun", create=not dry)
        return run_mpirun(job, dry_run=dry)
    from .local import run_local
    job = _prepare(cfg, "local")
    return run_local(job)


def _watch_status(args, st) -> int:
    """Redraw `dptrain status` until the run is no longer running (a small `top` for one run)."""
    import time
    from .status import collect_status, format_status
    interval = max(0.2, float(args.watch))
    clear = "\x1b[H\x1b[2J" if sys.stdout.isatty() else "\n"
    try:
        while str(st.get("state", "")).startswith("running"):
            time.sleep(interval)
            try:
                st = collect_status(args.run_dir, tail=max(0, args.tail))
            except FileNotFoundError as e:
                sys.stderr.write(f"dptrain status: {e}\n")
                return EXIT_CONFIG
            sys.stdout.write(clear + format_status(st))
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 130
    return 0


def _backend_setting(cfg, value: str) -> str:
    """How the user sets the backend: `dptrain launch` has a flag, the config commands a key."""
    return f"--backend {value}" if cfg.source == "dptrain launch" else f"cluster.backend={value}"


def _mpi_available(cfg) -> bool:
    """MPI is the primary transport; ZeroMQ is the fallback where MPI is not installed.

    Available means: an mpiexec is found (cluster.mpi.mpiexec, next to the worker Python,
    or on the PATH) and the worker Python can import mpi4py."""
    import subprocess
    from .mpirun import MpiError, find_mpiexec
    try:
        mpiexec = find_mpiexec(cfg)
    except MpiError:
        return False
    py = cfg["cluster"]["python"]
    if not py or os.path.realpath(py) == os.path.realpath(sys.executable):
        import importlib.util
        if importlib.util.find_spec("mpi4py") is None:
            return False
    else:
        try:
            if subprocess.run([py, "-c", "import mpi4py"], capture_output=True, timeout=30).returncode:
                return False
        except (OSError, subprocess.TimeoutExpired):
            return False
    # Hydra must also be able to start a process here (it resolves the host name, for one);
    # if it cannot, ZeroMQ still works, so say so and fall back instead of failing the run.
    try:
        probe = subprocess.run([mpiexec, "-n", "1", "-launcher", "fork", "true"], capture_output=True,
                               text=True, timeout=20, stdin=subprocess.DEVNULL)
        ok = probe.returncode == 0
        why = (probe.stderr or probe.stdout).strip().splitlines()[-1:] if not ok else []
    except (OSError, subprocess.TimeoutExpired) as e:
        ok, why = False, [str(e)]
    if not ok:
        sys.stderr.write(f"dptrain: {mpiexec} cannot start processes here ({' '.join(why) or 'no output'}); "
                         f"using ZeroMQ (set {_backend_setting(cfg, 'zmq')} to skip this check)\n")
    return ok


if __name__ == "__main__":
    sys.exit(main())
