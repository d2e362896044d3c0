"""Resource reports for heartbeats: CPU %, resident memory, threads, GPU memory if any.

Why: the coordinator shows what each worker costs (a rank at 100 % CPU with twice
the others' memory is the first thing to look at when a run is slow), and a
worker that stops reporting is how failures of remote ranks are detected.
Sampling must be cheap (it runs every heartbeat) and must never fail a worker:
any probe that errors is simply left out of the report.
"""
from __future__ import annotations

import os
import sys
import time

import psutil

__all__ = ["ResourceSampler", "sample_resources", "usable_cpu_count", "local_gpu_count"]


def usable_cpu_count() -> int:
    """CPU cores this process may run on (affinity / cpuset aware, unlike os.cpu_count())."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS has no sched_getaffinity
        return max(1, psutil.cpu_count(logical=True) or 1)


def local_gpu_count() -> int:
    """GPUs visible to workers on this machine: CUDA_VISIBLE_DEVICES when set, else `nvidia-smi -L`.

    No CUDA context is created (importing CuPy for this would cost seconds); 0 without a
    driver or GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [v for v in visible.split(",") if v.strip() and v.strip() != "-1"]
        return len(ids)
    import shutil
    import subprocess
    smi = shutil.which("nvidia-smi")
    if not smi:
        return 0
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if out.returncode != 0:
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


class ResourceSampler:
    """Samples one process; `cpu_percent` is measured over the time since the previous sample."""

    def __init__(self, pid: int | None = None):
        self._proc = psutil.Process(pid or os.getpid())
        try:
            self._proc.cpu_percent(None)  # the first call only starts the measurement window
        except psutil.Error:
            pass

    def sample(self) -> dict:
        out: dict = {"time": round(time.time(), 3)}
        try:
            with self._proc.oneshot():
                out["cpu_percent"] = round(self._proc.cpu_percent(None), 1)
                out["rss_bytes"] = int(self._proc.memory_info().rss)
                out["num_threads"] = int(self._proc.num_threads())
        except psutil.Error:
            pass
        try:
            out["host_cpu_percent"] = round(psutil.cpu_percent(None), 1)
            vm = psutil.virtual_memory()
            out["host_mem_available_bytes"] = int(vm.available)
            out["host_mem_total_bytes"] = int(vm.total)
        except (psutil.Error, OSError):
            pass
        out.update(_gpu_memory())
        return out


def _gpu_memory() -> dict:
    """GPU memory of the current device, only when CuPy is already in use by this process.

    Importing CuPy just to report would cost seconds and a CUDA context, so we look only
    at an already imported module.
    """
    cp = sys.modules.get("cupy")
    if cp is None:
        return {}
    try:
        free, total = cp.cuda.runtime.memGetInfo()
        pool = cp.get_default_memory_pool()
        return {"gpu_device": int(cp.cuda.runtime.getDevice()), "gpu_mem_used_bytes": int(total - free),
                "gpu_mem_total_bytes": int(total), "gpu_pool_bytes": int(pool.used_bytes())}
    except Exception:  # no device, driver problems: leave GPU fields out
        return {}


_default: ResourceSampler | None = None


def sample_resources() -> dict:
    """One report for the current process (keeps a sampler so CPU % covers the last interval)."""
    global _default
    if _default is None:
        _default = ResourceSampler()
    return _default.sample()
