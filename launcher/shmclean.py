"""Remove the shared-memory segments an MPI library leaves in /dev/shm when its ranks are killed.

Why: MPICH (`mpich_shm_*`) and Open MPI (`vader_segment.*`, `sm_segment.*`) keep their
same-node segments as files in /dev/shm and unlink them in MPI_Finalize.  A rank that is
SIGKILLed, or that leaves through os._exit after a failure (what a crashed worker does), never
gets there: every crash leaves a few MB of RAM in tmpfs until the next reboot, and a job that
restarts in a loop piles them up.  The launcher knows when its MPI job is over; it then removes
the segments that appeared while the job ran and that no live process maps or holds open (so
segments of MPI jobs still running on this host, including other users', are never touched).

On the other nodes of a multi-node job nothing took a snapshot before the job, so there the
segments are told apart by age: `python -m launcher.shmclean --since EPOCH` (run once per node,
e.g. by the Slurm script's srun after a failed MPI attempt) removes the unused ones created since
the launch started.
"""
from __future__ import annotations

import os
import sys

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


def created_since(since: float, directory: str = SHM_DIR) -> set[str]:
    """Names of the MPI segments in `directory` created (or resized) at or after `since` (epoch s)."""
    names = set()
    for name in snapshot(directory):
        try:
            st = os.stat(os.path.join(directory, name))
        except OSError:
            continue
        if max(st.st_ctime, st.st_mtime) >= since:
            names.add(name)
    return names


def main(argv=None) -> int:
    """`python -m launcher.shmclean --since EPOCH [--quiet]`: this node's cleanup after a failed MPI attempt."""
    import argparse
    ap = argparse.ArgumentParser(prog="python -m launcher.shmclean", description=main.__doc__)
    ap.add_argument("--since", type=float, required=True, help="launch start time (seconds since the epoch)")
    ap.add_argument("--quiet", action="store_true", help="print nothing when nothing was removed")
    ap.add_argument("--dir", default=SHM_DIR, help=f"where the segments are (default {SHM_DIR})")
    a = ap.parse_args(argv)
    removed = remove_orphans(snapshot(a.dir) - created_since(a.since, a.dir), a.dir)
    if removed or not a.quiet:
        import socket
        print(f"dptrain: {socket.gethostname()}: removed {len(removed)} shared-memory segment(s) left in {a.dir} "
              f"by killed ranks", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
