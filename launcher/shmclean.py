"""Remove the shared-memory segments an MPI library leaves in /dev/shm when its ranks are killed.

Why: MPICH (`mpich_shm_*`) and Open MPI (`vader_segment.*`, `sm_segment.*`) keep their
same-node segments as files in /dev/shm and unlink them in MPI_Finalize.  A rank that is
SIGKILLed, or that leaves through os._exit after a failure (what a crashed worker does), never
gets there: every crash leaves a few MB of RAM in tmpfs until the next reboot, and a job that
restarts in a loop piles them up.  The launcher knows when its MPI job is over; it then removes
the segments that appeared while the job ran and that no live process maps or holds open (so
segments of MPI jobs still running on this host, including other users', are never touched).
"""
from __future__ import annotations

import os

SHM_DIR = "/dev/shm"
PATTERNS = ("mpich_shm_", "vader_segment.", "sm_segment.")


def snapshot(directory: str = SHM_DIR) -> set[str]:
    """Names of the MPI segments in `directory` now."""
    try:
        return {n for n in os.listdir(directory) if n.startswith(PATTERNS)}
    except OSError:
        return set()


def in_use(directory: str = SHM_DIR) -> set[str]:
    """Paths under `directory` that some process of this host maps or holds open."""
    used: set[str] = set()
    prefix = directory.rstrip("/") + "/"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    i = line.find(prefix)
                    if i >= 0:
                        used.add(line[i:].split(" (deleted)")[0].strip())
        except OSError:
            pass
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(prefix):
                    used.add(target)
        except OSError:
            pass
    return used


def remove_orphans(before: set[str], directory: str = SHM_DIR) -> list[str]:
    """Unlink the MPI segments created since `before` that nobody uses any more; returns their names."""
    new = snapshot(directory) - before
    if not new:
        return []
    used = in_use(directory)
    removed = []
    for name in sorted(new):
        path = os.path.join(directory, name)
        if path in used:
            continue
        try:
            os.unlink(path)
            removed.append(name)
        except OSError:
            pass
    return removed
