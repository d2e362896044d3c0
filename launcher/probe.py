"""`python -m launcher.probe`: one JSON line describing this host, for `auto` on remote nodes.

Why: `slots: auto` / `gpus: auto` promise to place work where the resources are, but the
launching machine cannot see a remote node's cores or GPUs.  `dptrain mpirun` therefore starts
this module once on each remote `auto` node, through the job's own mpiexec (the same ssh,
hostfile style and `cluster.mpi.extra_args` that will start the ranks), before it plans them.

It has to answer fast and on a node where nothing but Python and dptrain's launcher
dependencies is known to work: it imports the standard library and cluster.resources
(psutil) only, never numpy or the engine, and creates no CUDA context (GPUs are counted
the way the local `auto` counts them: CUDA_VISIBLE_DEVICES, else `nvidia-smi -L`).

The line is tagged (`"probe": "dptrain"`) so the launcher can tell it from whatever else a
remote login prints; `parse_report` is the launcher's side of the same format.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

__all__ = ["measure", "report_line", "parse_report", "TAG", "VERSION"]

TAG = "dptrain"
VERSION = 1


def measure() -> dict:
    """What this host offers to workers: usable cores (affinity aware), GPUs, memory."""
    t0 = time.monotonic()
    from cluster.resources import local_gpu_count, usable_cpu_count
    out = {"probe": TAG, "version": VERSION, "hostname": socket.gethostname(),
           "cpus": usable_cpu_count(), "cpus_total": os.cpu_count() or 1, "gpus": local_gpu_count(),
           "mem_total_bytes": None, "mem_available_bytes": None,
           "python": ".".join(str(v) for v in sys.version_info[:3])}
    try:
        import psutil
        vm = psutil.virtual_memory()
        out["mem_total_bytes"], out["mem_available_bytes"] = int(vm.total), int(vm.available)
    except (ImportError, OSError, RuntimeError):   # memory is informative only: leave it null
        pass
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out


def report_line(report: dict | None = None) -> str:
    """The one line the probe prints (JSON, no newline inside)."""
    return json.dumps(measure() if report is None else report, separators=(",", ":"), sort_keys=True)


def _count(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def parse_report(text: str) -> dict:
    """The probe's report from what a remote run printed; ValueError saying why there is none.

    Other lines (a login banner, warnings) are skipped; the last tagged line wins."""
    found = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict) and obj.get("probe") == TAG:
            found = obj
    if found is None:
        shown = " | ".join(ln.strip() for ln in text.strip().splitlines()[-3:])[:200]
        raise ValueError(f"it printed no probe report ({'output: ' + repr(shown) if shown else 'no output'})")
    bad = [k for k, least in (("cpus", 1), ("gpus", 0)) if not _count(found.get(k), least)]
    if not isinstance(found.get("hostname"), str):
        bad.append("hostname")
    for k in ("mem_total_bytes", "mem_available_bytes"):
        if found.get(k) is not None and not _count(found.get(k), 0):
            bad.append(k)
    if bad:
        raise ValueError(f"its probe report has bad or missing fields ({', '.join(bad)}): {json.dumps(found)[:200]}")
    return found


def main(argv=None) -> int:
    """Print this host's report on stdout (one line) and exit 0."""
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        return 0
    sys.stdout.write(report_line() + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
