"""Stand-in worker for the launcher tests (run as `job.script`; the mode is its first argument).

It does what the real runtime does around training — reads its place from the
environment, registers with the coordinator, heartbeats, checkpoints and resumes —
without training anything, so launcher tests take seconds.
"""
import json
import os
import signal
import sys
import time


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else "ok"
    rank = int(os.environ["DPTRAIN_RANK"])
    attempt = int(os.environ.get("DPTRAIN_RESTART", "0"))
    KEYS = ["DPTRAIN_RANK", "DPTRAIN_WORLD_SIZE", "DPTRAIN_LOCAL_RANK", "DPTRAIN_LOCAL_WORLD_SIZE", "DPTRAIN_NODE_RANK",
            "DPTRAIN_MASTER_ADDR", "DPTRAIN_MASTER_PORT", "DPTRAIN_COORD_ADDR", "DPTRAIN_RUN_DIR", "DPTRAIN_CONFIG",
            "DPTRAIN_GPU", "DPTRAIN_COMM_BACKEND", "DPTRAIN_RESTART", "DPTRAIN_PROGRESS", "OMP_NUM_THREADS",
            "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "PMI_RANK", "OMPI_COMM_WORLD_RANK"]
    print("ENV " + json.dumps({k: os.environ.get(k) for k in KEYS}), flush=True)
    print(f"secret-length {len(os.environ.get('DPTRAIN_JOB_SECRET', ''))}", flush=True)

    def on_term(*_):
        print(f"rank {rank} got SIGTERM", flush=True)
        sys.exit(143)

    signal.signal(signal.SIGTERM, on_term)

    from cluster.heartbeat import CoordinatorClient

    client = CoordinatorClient.from_env()
    client.register()
    client.start_heartbeat()

    if mode == "ok":
        for i in range(3):
            client.update(step=i)
            if rank == 0:
                sys.stderr.write(f"\rprogress {i + 1}/3")
                sys.stderr.flush()
            time.sleep(0.05)
        if rank == 0:
            sys.stderr.write("\n")
        print(f"rank {rank} finished", flush=True)
        client.report_done()
        sys.exit(0)

    if mode in ("fail", "failalways"):
        if rank == 1 and (mode == "failalways" or attempt == 0):
            for i in range(25):
                print(f"rank 1 line {i}", flush=True)
            print("rank 1 is failing on purpose", file=sys.stderr, flush=True)
            time.sleep(0.2)
            sys.exit(3)
        if mode == "fail" and attempt > 0:
            client.report_done()
            sys.exit(0)
        time.sleep(60)
        sys.exit(0)

    if mode == "restart":
        from cluster.checkpoint import checkpoint_digest, latest_valid_checkpoint, load_checkpoint, save_checkpoint
        from cluster.config import load_config
        import numpy as np
        cfg = load_config(os.environ["DPTRAIN_CONFIG"])
        ckdir = cfg.checkpoint.dir
        if attempt == 0:
            if rank == 0:
                for step in (5, 10):
                    if client.should_checkpoint(step):
                        path = save_checkpoint(ckdir, step, {"w": np.full(3, float(step))}, {"epoch": 0},
                                               keep=cfg.checkpoint.keep)
                        client.report_checkpoint(step, path, checkpoint_digest(path))
                        print(f"saved checkpoint {step}", flush=True)
                time.sleep(60)
            else:
                end = time.time() + 20
                while latest_valid_checkpoint(ckdir) is None or "step-00000010" not in latest_valid_checkpoint(ckdir):
                    if time.time() > end:
                        sys.exit(4)
                    time.sleep(0.05)
                print("rank 1 crashes after the checkpoint", flush=True)
                sys.exit(3)
        latest = latest_valid_checkpoint(ckdir)
        arrays, meta = load_checkpoint(latest)
        print(f"resumed from step {meta['step']} w={arrays['w'].tolist()}", flush=True)
        client.report_done()
        sys.exit(0)

    if mode == "hang":
        print(f"rank {rank} registered", flush=True)
        if rank == 1:
            time.sleep(0.3)
            os.kill(os.getpid(), signal.SIGSTOP)   # frozen: no output, no heartbeats
        time.sleep(60)
        sys.exit(0)

    if mode == "quietexit":
        if rank == 1:
            os._exit(0)                     # done, but never told the coordinator
        time.sleep(2.0)                     # outlives the heartbeat timeout of rank 1
        client.report_done()
        print("rank 0 finished late", flush=True)
        sys.exit(0)

    if mode == "sleep":
        print(f"ready pid={os.getpid()}", flush=True)
        time.sleep(60)
        sys.exit(0)

    sys.exit(f"unknown mode {mode}")


def test_worker_runs_without_a_launcher(tmp_path):
    """Outside a launch (no coordinator in the environment) the client is a no-op: a plain run works."""
    import subprocess
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPTRAIN_")}
    env.update(DPTRAIN_RANK="0", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, __file__, "ok"], env=env, capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "rank 0 finished" in r.stdout and "secret-length 0" in r.stdout


def test_a_script_missing_on_a_node_is_named_with_the_host(tmp_path):
    """Validation on the launching machine cannot see remote nodes' files; the worker there names it."""
    import socket
    import subprocess
    cfg = tmp_path / "c.yaml"
    cfg.write_text("cluster: {nodes: [{host: node1, slots: 1}]}\njob: {script: /nonexistent/train.py}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DPTRAIN_")}
    env.update(DPTRAIN_CONFIG=str(cfg), DPTRAIN_RANK="0", DPTRAIN_WORLD_SIZE="1", OMP_NUM_THREADS="1",
               PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-m", "cluster.worker"], env=env, capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert r.returncode == 78, r.stderr          # it would recur: not restarted
    assert (f"job.script: file '/nonexistent/train.py' does not exist on {socket.gethostname()}; every node "
            f"needs the script at the same path") in r.stderr
    assert "Traceback" not in r.stderr


if __name__ == "__main__":  # run as a worker by the launcher tests
    main()
