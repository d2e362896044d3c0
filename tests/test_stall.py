"""Naming the rank that never joined a collective: comm facts, heartbeat fields, the classifier."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import comm
from cluster.coordinator import Coordinator
from cluster.heartbeat import CoordinatorClient, main_thread_stack
from comm.errors import CommTimeoutError
from comm.transport import Deadline, Request, describe_timeout
from cluster.stall import find_laggards, views_pending

SECRET = "stall-secret"


def view_of(**ranks):
    """rank -> view entry as Coordinator.collective_view() gives it."""
    out = {}
    for name, v in ranks.items():
        out[int(name[1:])] = {"state": "running", "host": "h", "pid": 1, "comm": None, "comm_at": 0.0,
                              "where": [], "timed_out": None, **v}
    return out


def test_the_rank_behind_is_named_and_the_waiters_are_listed():
    t = 1000.0
    report = {"seq": 7, "collective": "allreduce", "timeout_s": 3.0, "waiting_for": [3], "time": t}
    view = view_of(r0={"timed_out": report, "comm": {"completed": 7, "seq": 7}, "comm_at": t - 2},
                   r1={"comm": {"completed": 7, "seq": 7, "kind": "allreduce"}, "comm_at": t - 1},
                   r2={"comm": {"completed": 7}, "comm_at": t - 0.5, "where": ['File "a.py", line 3, in f']},
                   r3={"comm": {"completed": 7, "seq": 7}, "comm_at": t + 0.2})
    lag = find_laggards(view, report)
    assert lag.ranks == [2] and lag.waiters == [0, 1, 3] and lag.seq == 7 and lag.completed == 7
    assert lag.reason() == "it never joined allreduce #7: ranks 0, 1 and 3 waited there 3 s and timed out"
    assert lag.where_header() == ("rank 2's last heartbeat, 0.5 s before the first timeout, found it outside "
                                  "any collective (7 completed), at:")
    assert lag.where == ['File "a.py", line 3, in f'] and "DPTRAIN_COMM_TIMEOUT" in lag.advice()


def test_old_evidence_names_nobody():
    """A heartbeat from before the reporter entered the call cannot tell a laggard from a late joiner."""
    t = 1000.0
    report = {"seq": 7, "collective": "allreduce", "timeout_s": 3.0, "waiting_for": [1], "time": t}
    view = view_of(r0={"timed_out": report}, r1={"comm": {"completed": 6}, "comm_at": t - 3.5})
    assert find_laggards(view, report) is None
    view[1]["comm_at"] = t - 2.5
    assert find_laggards(view, report).ranks == [1]


def test_a_rank_that_finished_is_named_whenever_it_last_wrote():
    t = 1000.0
    report = {"seq": 12, "collective": "barrier", "timeout_s": 5.0, "waiting_for": [1], "time": t}
    view = view_of(r0={"timed_out": report}, r1={"state": "done", "comm": {"completed": 12}, "comm_at": t - 60})
    lag = find_laggards(view, report)
    assert lag.ranks == [1] and lag.state == "done"
    assert lag.reason().startswith("it finished and exited after 12 collectives, while rank 0 waited in barrier #12")
    assert "different numbers of steps" in lag.reason()


def test_everyone_inside_the_call_names_nobody_and_pending_views_are_waited_for():
    t = 1000.0
    report = {"seq": 3, "collective": "allreduce", "timeout_s": 3.0, "waiting_for": [1], "time": t}
    view = view_of(r0={"timed_out": report}, r1={"comm": {"completed": 3, "seq": 3}, "comm_at": t - 1},
                   r2={"comm": {"completed": 2, "seq": 2}, "comm_at": t - 1})
    assert views_pending(view, report, finished=set()) == [1, 2]
    assert views_pending(view, report, finished={1}) == [2]
    lag = find_laggards(view, report)          # rank 2 still inside an earlier call
    assert lag.ranks == [2] and lag.where_header().endswith("found it still inside collective #2")
    view[2]["comm"]["kind"] = "broadcast"
    assert find_laggards(view, report).where_header().endswith("found it still inside broadcast #2")
    view[2]["comm"] = {"completed": 3, "seq": 3}
    assert find_laggards(view, report) is None


def test_timeout_errors_carry_their_facts():
    class Ctx:
        fp = type("FP", (), {"seq": 9, "kind": "allgather"})()

        def __str__(self):
            return "allgather #9"

    err = describe_timeout(CommTimeoutError("x"), Ctx(), [2, 3], 1.5)
    assert (err.seq, err.collective, err.waiting_for, err.timeout) == (9, "allgather", (2, 3), 1.5)
    plain = describe_timeout(CommTimeoutError("x"), "comm.init", [], None)
    assert plain.seq is None and plain.waiting_for == () and plain.timeout is None
    tp = comm.transport.LocalTransport()
    made = tp.timeout_error([Request(1, 0, 8, False)], Deadline(2.0), Ctx())
    assert made.waiting_for == (1,) and made.seq == 9


def test_activity_counts_collectives_and_shows_the_one_running():
    c = comm.init(backend="local")
    try:
        before = c.activity()
        c.allreduce(np.ones(4, np.float32))
        c.barrier()
        after = c.activity()
        assert after["completed"] == before["completed"] + 2 and "seq" not in after
        c._inside = (after["completed"], "allreduce", time.time())   # as while one runs
        assert c.activity()["seq"] == after["completed"] and c.activity()["kind"] == "allreduce"
    finally:
        c._inside = None
        comm.finalize()


def test_main_thread_stack_shows_where_the_main_thread_is():
    seen: list = []
    captured = threading.Event()

    def look():
        time.sleep(0.2)
        seen.extend(main_thread_stack())
        captured.set()

    threading.Thread(target=look, daemon=True).start()
    captured.wait(10)         # the main thread sits here while the other thread looks
    assert any("test_main_thread_stack_shows_where_the_main_thread_is" in line for line in seen), seen
    assert any(line.strip().startswith("captured.wait(10)") for line in seen), seen
    assert len(seen) <= 16


@pytest.mark.timeout(30)
def test_heartbeats_carry_activity_and_stack_and_timeouts_are_recorded(tmp_path):
    co = Coordinator(SECRET, 2, run_dir=str(tmp_path), heartbeat_timeout=10, startup_timeout=30).start()
    c0 = CoordinatorClient(co.address, SECRET, 0, world_size=2, timeout=3.0)
    try:
        c0.watch(type("C", (), {"activity": staticmethod(lambda: {"completed": 4, "seq": 4, "kind": "allreduce",
                                                                   "since": 1.0})})())
        c0.register()
        c0.heartbeat()
        v = co.collective_view()[0]
        assert v["comm"] == {"completed": 4, "seq": 4, "kind": "allreduce", "since": 1.0} and v["comm_at"] > 0
        assert any("test_heartbeats_carry_activity" in line for line in v["where"])
        err = describe_timeout(CommTimeoutError("rank 0: allreduce #4 timed out"), None, [1], 3.0)
        err.seq, err.collective = 4, "allreduce"
        c0.report_timeout(err)
        v = co.collective_view()[0]
        assert v["state"] == "failed" and v["timed_out"]["seq"] == 4 and v["timed_out"]["waiting_for"] == [1]
        assert co.state()["workers"]["0"]["comm"]["seq"] == 4      # dptrain status can show it
    finally:
        c0.close()
        co.stop()


def test_status_shows_each_ranks_collective_and_where_the_laggard_is(tmp_path):
    """`dptrain status` while a job hangs: ranks 0 and 2 sit in allreduce #7; rank 1 is elsewhere."""
    import json
    from launcher.status import collect_status, format_status
    now = time.time()

    def worker(state, comm_, where=()):
        return {"host": "vm", "address": "127.0.0.1", "pid": 10, "state": state, "step": 3, "epoch": 0,
                "last_seen": now, "resources": {}, "comm": comm_, "where": list(where)}
    inside = {"completed": 7, "seq": 7, "kind": "allreduce", "since": now - 40}
    (tmp_path / "coordinator.json").write_text(json.dumps({
        "address": "tcp://127.0.0.1:1", "attempt": 0, "updated": now,
        "workers": {"0": worker("running", inside),
                    "1": worker("running", {"completed": 7}, ['File "t.py", line 15, in <module>', "  load()"]),
                    "2": worker("running", inside)}}))
    text = format_status(collect_status(str(tmp_path)))
    assert "in allreduce #7 for 40s" in text and "7 done" in text
    assert "ranks 0, 2 have waited inside a collective for more than 5 s; the ranks outside it were at:" in text
    assert '    rank 1: File "t.py", line 15, in <module> / load()' in text
    healthy = json.loads((tmp_path / "coordinator.json").read_text())
    healthy["workers"]["0"]["comm"] = healthy["workers"]["2"]["comm"] = {"completed": 7}
    (tmp_path / "coordinator.json").write_text(json.dumps(healthy))
    assert "have waited inside" not in format_status(collect_status(str(tmp_path)))
