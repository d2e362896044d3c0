"""Measure remote `slots: auto` / `gpus: auto` nodes for `dptrain mpirun`, before ranks are planned.

Why: a remote node's cores and GPUs are only visible from that node.  `dptrain mpirun`
already reaches every node through mpiexec, so it starts `python -m launcher.probe` there
the same way (same mpiexec flavour, hostfile style and `cluster.mpi.extra_args`), reads the
one JSON line it prints, and lets cluster.config apply the same rule as on this machine.

One mpiexec per host, all started together: a single mpiexec over all hosts aborts as a
whole when one host is unreachable, and then cannot say which one it was.  Every wait is
bounded by one deadline (30 s by default; a stalled ssh is killed with its process group).
A host that cannot be measured stops the launch before anything else starts: the message
names the node, what failed and the fix (give its slots explicitly).

`measure_remote` is the `measure` callback of cluster.config.resolve_config; the config
module never imports the launcher.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time

from cluster.config import auto_resources

from .job import clean_env
from .mpirun import MpiError, find_mpiexec, mpi_flavor, per_host_command
from .probe import parse_report

__all__ = ["ProbeError", "DEADLINE_S", "run_probes", "measure_remote", "resolution_line"]

DEADLINE_S = 30.0


class ProbeError(RuntimeError):
    """Remote `auto` nodes could not be measured; the message says which, why and the fix."""


# Hydra's trace lines: "[mpiexec@vm] main (/src/.../mpiexec.c:270): process manager error ..."
_TRACE = re.compile(r"^\[(?:mpiexec|proxy)[^\]]*\] \S+ \([^)]*:\d+\): (.*)$")


def _what_it_said(path: str) -> str:
    """The telling line of a failed mpiexec's output: the last one of its own (ssh's "Could not
    resolve hostname", Python's "No module named ..."), else the first of Hydra's trace messages."""
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20).decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    own = [ln for ln in lines if not _TRACE.match(ln)]
    if own:
        return own[-1][:200]
    return _TRACE.match(lines[0]).group(1)[:200] if lines else ""


def _kill_group(p: subprocess.Popen) -> None:
    """mpiexec and what it started (ssh, a proxy) share its process group."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run_probes(cfg: dict, hosts: list[str], timeout: float = DEADLINE_S) -> dict[str, dict | str]:
    """Run the probe on each host; host -> its report (dict), or what failed (str)."""
    mpiexec = find_mpiexec(cfg)
    flavor = mpi_flavor(mpiexec)
    python = cfg["cluster"]["python"] or sys.executable
    results: dict[str, dict | str] = {}
    procs: dict[str, tuple[subprocess.Popen, str, str]] = {}
    with tempfile.TemporaryDirectory(prefix="dptrain-probe-") as tmp:
        deadline = time.monotonic() + timeout
        for k, host in enumerate(hosts):
            cmd = per_host_command(cfg, mpiexec, flavor, [host], os.path.join(tmp, f"hostfile.{k}"))
            out, err = os.path.join(tmp, f"{k}.out"), os.path.join(tmp, f"{k}.err")
            try:
                with open(out, "wb") as fo, open(err, "wb") as fe:
                    p = subprocess.Popen(cmd + [python, "-m", "launcher.probe"], env=clean_env(),
                                         stdin=subprocess.DEVNULL, stdout=fo, stderr=fe, start_new_session=True)
            except OSError as e:
                results[host] = f"{os.path.basename(mpiexec)} could not be started ({e.strerror or e})"
                continue
            procs[host] = (p, out, err)
        try:
            for host, (p, out, err) in procs.items():
                try:
                    code = p.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    code = None
                _kill_group(p)             # a finished mpiexec may still leave an ssh behind
                if code is None:
                    try:                   # reap it; SIGKILL is quick, but the whole exit stays bounded
                        p.wait(timeout=max(0.1, deadline + 5.0 - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        pass
                    results[host] = (f"no answer within {timeout:g} s (host down or unreachable, or its ssh or "
                                     f"Python stalled)")
                    continue
                try:
                    with open(out, "rb") as f:
                        text = f.read(1 << 20).decode("utf-8", "replace")
                except OSError:
                    text = ""
                if code != 0:
                    said = _what_it_said(err) or _what_it_said(out)
                    said = f": {said}" if said else ""
                    results[host] = f"{os.path.basename(mpiexec)} exited with code {code}{said}"
                    continue
                try:
                    results[host] = parse_report(text)
                except ValueError as e:
                    results[host] = str(e)
        finally:                       # Ctrl-C or an error here: leave no probe behind
            for p, _, _ in procs.values():
                if p.poll() is None:
                    _kill_group(p)
    return results


def _gib(n) -> str:
    return f"{n / 2 ** 30:.1f}" if isinstance(n, int) else "?"


def resolution_line(i: int, node: dict, report: dict, threads: int) -> str:
    """`dptrain: cluster.nodes.1 (HOST): slots auto -> 2 (...), gpus auto -> 0; ...`: what `auto` became."""
    slots, gpus = auto_resources(node, report["cpus"], report["gpus"], threads)
    parts = []
    if node.get("slots") == "auto":
        why = ("one per GPU" if gpus > 0 else
               f"{report['cpus']} usable core{'s' if report['cpus'] != 1 else ''} // job.threads {threads}")
        parts.append(f"slots auto -> {slots} ({why})")
    if node.get("gpus") == "auto":
        parts.append(f"gpus auto -> {gpus}")
    name = report.get("hostname")
    host = node["host"] + (f", hostname {name}" if name and name != node["host"] else "")
    return (f"dptrain: cluster.nodes.{i} ({host}): {', '.join(parts)}; memory "
            f"{_gib(report.get('mem_available_bytes'))} of {_gib(report.get('mem_total_bytes'))} GiB available")


def measure_remote(cfg: dict, indices: list[int], out=None, timeout: float = DEADLINE_S) -> dict[int, dict]:
    """resolve_config's `measure`: probe the remote `auto` nodes; print what each resolves to.

    Raises ProbeError naming every node that could not be measured."""
    err = out or sys.stderr
    nodes = cfg["cluster"]["nodes"]
    hosts = [nodes[i]["host"] for i in indices]

    def fix(i: int) -> str:
        keys = [k for k in ("slots", "gpus") if nodes[i].get(k) == "auto"]
        eg = " ".join(f"cluster.nodes.{i}.{k}={'4' if k == 'slots' else '0'}" for k in keys)
        return f"give its {' and '.join(keys)} explicitly (in the config, or e.g. `{eg}`)"

    t0 = time.monotonic()
    try:
        results = run_probes(cfg, hosts, timeout)
    except MpiError as e:
        raise ProbeError("dptrain: cannot measure the remote `auto` node(s) " + ", ".join(
            f"cluster.nodes.{i} ({nodes[i]['host']})" for i in indices) + f": {e}; or give their slots "
            f"explicitly") from None
    failed = [i for i in indices if not isinstance(results.get(nodes[i]["host"]), dict)]
    if failed:
        raise ProbeError("\n".join(
            f"dptrain: cannot measure cluster.nodes.{i} ({nodes[i]['host']}) for `auto`: `python -m "
            f"launcher.probe` through mpiexec failed: {results.get(nodes[i]['host'], 'no result')}; "
            f"{fix(i)}" for i in failed))
    threads = cfg["job"]["threads"]
    for i in indices:
        err.write(resolution_line(i, nodes[i], results[nodes[i]["host"]], threads) + "\n")
    err.write(f"dptrain: measured {len(indices)} remote node(s) in {time.monotonic() - t0:.2f} s\n")
    err.flush()
    return {i: results[nodes[i]["host"]] for i in indices}
