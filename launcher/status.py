"""`dptrain status RUN_DIR`: what a run is doing or did, from the files in its run directory.

Why files only: the status must work while the job runs (another terminal, another
machine with the shared file system) and long after it ended, without talking to
any process.  Every file it reads is written atomically or line by line, so a
running job never shows half a record.
"""
from __future__ import annotations

import json
import os
import time

import yaml

from cluster.rundir import RunDir, read_json, read_jsonl_tail

__all__ = ["collect_status", "format_status"]


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, ValueError, TypeError):
        return False


def collect_status(run_dir: str, tail: int = 5) -> dict:
    """Everything known about a run, as one JSON-able dict."""
    run = RunDir(run_dir)
    if not os.path.isdir(run.path):
        raise FileNotFoundError(f"{run.path} is not a directory")
    cfg = None
    try:
        with open(run.config_path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f)
    except (OSError, yaml.YAMLError):
        pass
    launcher = read_json(run.file("launcher.json"))
    if not any(os.path.exists(run.file(n)) for n in ("config.yaml", "launcher.json", "summary.json",
                                                     "metrics.jsonl", "coordinator.json")):
        raise FileNotFoundError(f"{run.path} does not look like a dptrain run directory "
                                f"(no config.yaml, launcher.json, summary.json or metrics.jsonl)")
    ckpt_dir = run.checkpoints_dir
    if isinstance(cfg, dict):
        ckpt_dir = ((cfg.get("checkpoint") or {}).get("dir")) or ckpt_dir
    checkpoints = []
    try:
        import warnings
        from cluster.checkpoint import list_checkpoints
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            checkpoints = [{"step": e["step"], "name": e["name"], "epoch": e.get("epoch"),
                            "created": e.get("created"), "path": os.path.join(ckpt_dir, e["name"])}
                           for e in list_checkpoints(ckpt_dir)]
    except Exception:  # status is best effort
        checkpoints = []
    state = "unknown"
    if launcher:
        state = launcher.get("status", "unknown")
        if state == "running" and not (launcher.get("host") == os.uname().nodename and _pid_alive(launcher.get("pid"))):
            state = "running?" if launcher.get("host") != os.uname().nodename else "dead (launcher gone)"
    summary = read_json(run.summary_path)
    if summary and state in ("unknown",):
        state = summary.get("status", "finished")
    return {
        "run_dir": run.path,
        "name": (cfg or {}).get("name") if isinstance(cfg, dict) else None,
        "state": state,
        "launcher": launcher,
        "summary": summary,
        "metrics_tail": read_jsonl_tail(run.metrics_path, tail),
        "coordinator": read_json(run.file("coordinator.json")),
        "checkpoints": checkpoints,
        "checkpoint_dir": ckpt_dir,
    }


def _ago(t) -> str:
    try:
        d = time.time() - float(t)
    except (TypeError, ValueError):
        return "?"
    if d < 120:
        return f"{d:.0f}s ago"
    if d < 7200:
        return f"{d / 60:.0f}min ago"
    return f"{d / 3600:.1f}h ago"


def _mb(b) -> str:
    try:
        return f"{int(b) / 2**20:.0f} MB"
    except (TypeError, ValueError):
        return "-"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


#: a collective running this long on some rank, while others are outside it, is worth pointing at
STALL_AFTER_S = 5.0


def _collective(c, seen) -> str:
    """'in allreduce #7 for 12s', or '7 done', from a heartbeat's communicator activity."""
    if not isinstance(c, dict):
        return "-"
    if "seq" in c:
        try:
            took = f" for {float(seen) - float(c['since']):.0f}s"
        except (KeyError, TypeError, ValueError):
            took = ""
        return f"in {c.get('kind') or 'collective'} #{c['seq']}{took}"
    return f"{c.get('completed', '?')} done"


def _stall_lines(workers: dict) -> list[str]:
    """When some ranks have sat inside a collective for a while, where the others were (the ones
    that have not joined it), from their last heartbeats."""
    inside, outside = [], []
    for r, w in sorted(workers.items(), key=lambda kv: int(kv[0])):
        c = w.get("comm")
        if w.get("state") != "running" or not isinstance(c, dict):
            continue
        try:
            stalled = "seq" in c and float(w["last_seen"]) - float(c["since"]) > STALL_AFTER_S
        except (KeyError, TypeError, ValueError):
            stalled = False
        (inside if stalled else outside if "seq" not in c else []).append((r, w))
    if not inside or not outside:
        return []
    out = [f"  ranks {', '.join(r for r, _ in inside)} have waited inside a collective for more than "
           f"{STALL_AFTER_S:g} s; the ranks outside it were at:"]
    for r, w in outside:
        out.append(f"    rank {r}: " + " / ".join(x.strip() for x in (w.get("where") or ["?"])))
    return out


def format_status(st: dict) -> str:
    lines = [f"run        {st['run_dir']}" + (f"  ({st['name']})" if st.get("name") else ""),
             f"state      {st['state']}"]
    la = st.get("launcher") or {}
    if la:
        attempts = la.get("attempts") or []
        lines.append(f"launcher   {la.get('mode')} on {la.get('host')} pid {la.get('pid')}, world size "
                     f"{la.get('world_size')}, backend {la.get('backend')}, started {_ago(la.get('started'))}, "
                     f"attempts {len(attempts)}")
        for a in attempts:
            extra = f" rank {a.get('failed_rank')}: {a.get('reason')}" if a.get("status") == "failed" else ""
            lines.append(f"  attempt {a.get('attempt')}: {a.get('status')}{extra}")
    s = st.get("summary")
    if s:
        keys = ["status", "world_size", "epochs", "steps", "test_accuracy", "test_loss", "samples_per_s",
                "restarts", "wall_time_s", "last_checkpoint", "exit_code"]
        lines.append("summary    " + ", ".join(f"{k}={_fmt(s[k])}" for k in keys if k in s))
        if s.get("failure"):
            lines.append(f"failure    rank {s.get('failed_rank')}: {s['failure']}")
            lines += [f"  {x}" for x in s.get("failure_where") or []]
    co = st.get("coordinator") or {}
    workers = co.get("workers") or {}
    if workers:
        lines.append(f"workers    (coordinator {co.get('address')}, attempt {co.get('attempt')}, updated "
                     f"{_ago(co.get('updated'))})")
        lines.append("  rank  state     host (address)               pid      step   epoch  cpu%    rss      "
                     "gpu-mem  last-seen  collectives")
        for r, w in sorted(workers.items(), key=lambda kv: int(kv[0])):
            res = w.get("resources") or {}
            where = str(w.get("host"))
            if w.get("address") and w["address"] not in ("127.0.0.1", "::1"):
                where += f" ({w['address']})"       # hostnames repeat across containers; addresses do not
            lines.append(f"  {int(r):<5} {w.get('state', '?'):<9} {where[:28]:<28} {w.get('pid', '-'):<8} "
                         f"{_fmt(w.get('step')):<6} {_fmt(w.get('epoch')):<6} {_fmt(res.get('cpu_percent', '-')):<7} "
                         f"{_mb(res.get('rss_bytes')):<8} {_mb(res.get('gpu_mem_used_bytes')):<8} "
                         f"{_ago(w.get('last_seen')):<10} {_collective(w.get('comm'), w.get('last_seen'))}")
        lines += _stall_lines(workers)
        if co.get("rejected"):
            lines.append(f"  refused messages: {co['rejected']}")
    ck = st.get("checkpoints") or []
    if ck:
        lines.append(f"checkpoints {len(ck)} in {st['checkpoint_dir']}: " +
                     ", ".join(f"step {c['step']}" for c in ck[-5:]))
    else:
        lines.append(f"checkpoints none in {st['checkpoint_dir']}")
    mt = st.get("metrics_tail") or []
    if mt:
        lines.append("metrics (last lines of metrics.jsonl)")
        for m in mt:
            lines.append("  " + ", ".join(f"{k}={_fmt(v)}" for k, v in m.items() if k != "time"))
    return "\n".join(lines) + "\n"


def status_json(st: dict) -> str:
    return json.dumps(st, indent=2, default=str) + "\n"
