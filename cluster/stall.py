"""Name the rank that never joined a collective the others timed out in, and where it was.

Why: in a ring every rank waits on its neighbour, so when one rank stops short of a
collective, *each* of the others times out naming the rank next to it, and the first
of those to exit is not the one to look at.  Every rank's heartbeat carries its
communicator's activity (collectives completed, the one running now) and its main
thread's innermost frames; a rank that times out reports which call it was in.  From
those, the rank(s) that had not reached that call while the others sat inside it are
the cause, and their last heartbeat says at which line they were (NCCL's "flight
recorder" answers the same question for PyTorch).
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Laggard", "UNEVEN_STEPS", "find_laggards", "views_pending"]


#: what it means when one rank finished while the others still ran collectives
UNEVEN_STEPS = ("the ranks ran different numbers of steps (give every rank the same number of batches: "
                "cluster.DistributedSampler with drop_last=True, or wrap the training loop in "
                "`with model.join():` so ranks that run out answer the others' all-reduces)")


def _ranks(ranks: list[int]) -> str:
    if len(ranks) == 1:
        return f"rank {ranks[0]}"
    return "ranks " + ", ".join(str(r) for r in ranks[:-1]) + f" and {ranks[-1]}"


@dataclass
class Laggard:
    ranks: list[int]          # the ranks that had not joined (first: the one to report)
    seq: int                  # the collective the others timed out in
    kind: str
    timeout_s: float
    waiters: list[int]        # ranks known to be inside it
    state: str                # coordinator state of ranks[0]: running | done | dead | failed
    completed: int            # collectives ranks[0] had completed at its last heartbeat
    inside: dict | None       # the collective ranks[0] was running then, if any
    age_s: float              # how long before the first timeout that heartbeat was
    where: list[str]          # ranks[0]'s innermost frames at that heartbeat

    def reason(self) -> str:
        who = "it" if len(self.ranks) == 1 else f"it (and {_ranks(self.ranks[1:])})"
        call = f"{self.kind} #{self.seq}" if self.kind else f"collective #{self.seq}"
        if self.state == "done":
            return (f"{who} finished and exited after {self.completed} collectives, while "
                    f"{_ranks(self.waiters)} waited in {call} (and timed out after {self.timeout_s:g} s): "
                    f"{UNEVEN_STEPS}")
        return f"{who} never joined {call}: {_ranks(self.waiters)} waited there {self.timeout_s:g} s and timed out"

    def where_header(self) -> str:
        if self.inside is not None:
            doing = f"still inside {self.inside.get('kind') or 'collective'} #{self.inside.get('seq')}"
        else:
            doing = f"outside any collective ({self.completed} completed)"
        when = (f"last heartbeat, {self.age_s:.1f} s before the first timeout," if self.age_s > 0.05
                else "heartbeat right after the first timeout")
        return f"rank {self.ranks[0]}'s {when} found it {doing}" + (", at:" if self.where else "")

    def advice(self) -> str:
        return (f"if rank {self.ranks[0]} is only slower there, raise the collective timeout "
                f"(DPTRAIN_COMM_TIMEOUT or comm.init(timeout=...)); otherwise it is stuck there")


def views_pending(view: dict[int, dict], report: dict, finished: set[int]) -> list[int]:
    """Ranks whose state after the first timeout is not known yet: still running, not timed out
    in the same call and not exited (`finished`), with no heartbeat since that report."""
    return [r for r, v in view.items()
            if r not in finished and v["state"] == "running"
            and (v["timed_out"] or {}).get("seq") != report["seq"] and v["comm_at"] < report["time"]]


def find_laggards(view: dict[int, dict], report: dict) -> Laggard | None:
    """The ranks that had not reached call `report["seq"]` (see the module docstring), or None.

    `view` is Coordinator.collective_view(); `report` the first timeout report.  A rank counts
    as behind only on evidence from after the reporter entered the call (a heartbeat sent since
    `report["time"] - timeout`): an older heartbeat cannot tell a laggard from a rank that
    joined the call later but before its deadline.  A rank that finished (said "done") will not
    join anything, whenever it last wrote.
    """
    seq, timeout_s = report["seq"], float(report["timeout_s"])
    entered = report["time"] - timeout_s
    waiters, behind = [], []
    for r, v in sorted(view.items()):
        comm = v["comm"] or {}
        if (v["timed_out"] or {}).get("seq") == seq or comm.get("seq") == seq:
            waiters.append(r)
        elif v["comm"] is not None and (v["comm_at"] >= entered or v["state"] == "done") \
                and int(comm.get("completed", 0)) <= seq:
            behind.append(r)
    if not behind or not waiters:
        return None
    first = view[behind[0]]
    comm = first["comm"] or {}
    inside = {"seq": comm["seq"], "kind": comm.get("kind", "")} if "seq" in comm else None
    return Laggard(ranks=behind, seq=seq, kind=str(report.get("collective") or ""), timeout_s=timeout_s,
                   waiters=waiters, state=str(first["state"]), completed=int(comm.get("completed", 0)),
                   inside=inside, age_s=report["time"] - first["comm_at"], where=list(first["where"]))
