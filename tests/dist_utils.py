"""Start N real worker processes for a test, on the ZeroMQ or the MPI backend, and always end."""
import os
import socket
import subprocess
import sys

from comm_worker_launch import as_host, mpmd_per_host

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(extra=None):
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                "PYTHONPATH": ROOT + os.pathsep + env.get("PYTHONPATH", "")})
    for k in list(env):
        if k.startswith(("DPTRAIN_", "OMPI_", "PMI_", "PMIX_", "SLURM_", "HYDRA_")):
            del env[k]
    env.update(extra or {})
    return env


def run_zmq(n, argv, timeout=120, env=None, hosts=None):
    """Run `python argv...` as n ZeroMQ-backend ranks; returns [(rc, stdout, stderr)] per rank.
    hosts: the hostname each rank runs under (see comm_worker_launch.as_host)."""
    port = free_port()
    procs = []
    for r in range(n):
        e = base_env(env)
        e.update({"DPTRAIN_RANK": str(r), "DPTRAIN_WORLD_SIZE": str(n), "DPTRAIN_LOCAL_RANK": str(r),
                  "DPTRAIN_LOCAL_WORLD_SIZE": str(n), "DPTRAIN_MASTER_ADDR": "127.0.0.1",
                  "DPTRAIN_MASTER_PORT": str(port), "DPTRAIN_COMM_BACKEND": "zmq"})
        cmd = as_host(hosts[r] if hosts else None, [sys.executable] + list(argv))
        procs.append(subprocess.Popen(cmd, env=e, cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def run_mpi(n, argv, timeout=120, env=None, hosts=None):
    """Run `python argv...` under the venv's mpiexec with n ranks; returns (rc, stdout, stderr)."""
    mpiexec = os.path.join(VENV_BIN, "mpiexec")
    cmd = [mpiexec, "-n", str(n), "-launcher", "fork", sys.executable] + list(argv)
    if hosts:
        cmd = [mpiexec, "-launcher", "fork"] + mpmd_per_host(hosts, [sys.executable] + list(argv))
    e = base_env(env)
    e["DPTRAIN_COMM_BACKEND"] = "mpi"
    p = subprocess.run(cmd, env=e, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr
