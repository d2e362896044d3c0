"""`python -m launcher.postmortem RUN_DIR CODE`: which rank made a launch script's mpiexec/srun fail.

Why: a launch script (`dptrain script`) has no dptrain process watching the ranks.  After
mpiexec or srun exits with CODE it asks this module, so the script names the failed rank
and the reason exactly as `dptrain mpirun` does, including a worker shim killed by a
signal, which leaves no exit code of its own (mpiexec then reports only "9").

Prints nothing when there is nothing to add (every rank finished, or no rank left a
record).  Otherwise the first line is the exit code the script should exit with and the
other lines are the report for stderr.
"""
from __future__ import annotations

import os
import sys

from .mpirun import diagnose, read_rank_results


def report(run_dir: str, code: int) -> list[str]:
    results = read_rank_results(os.path.join(run_dir, "status"))
    if code == 0 and not any(r.get("exit_code") for r in results):
        return []
    failure = diagnose(results, code or None, lambda rank: os.path.join(run_dir, "logs", f"rank{rank}.log"))
    if failure.rank is None and not failure.reason.startswith("the launcher.mpiworker"):
        return []           # no rank to name: the script's own "exit code N" line says all there is
    if failure.rank is None:
        head = f"dptrain: {failure.reason}"
    elif failure.reason.startswith(("exit code", "killed by")):
        head = f"dptrain: rank {failure.rank} failed with {failure.reason}"
    else:
        head = f"dptrain: rank {failure.rank} failed: {failure.reason}"
    lines = [str(failure.exit_code)]
    if failure.tail:
        lines.append(head + "; last lines of its log:")
        lines += ["    " + t for t in failure.tail]
    else:
        lines.append(head)
    return lines


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or not args[1].lstrip("-").isdigit():
        print("usage: python -m launcher.postmortem RUN_DIR EXIT_CODE", file=sys.stderr)
        return 2
    for line in report(args[0], int(args[1])):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
