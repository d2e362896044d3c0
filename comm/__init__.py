"""dptrain comm: collectives over MPI or ZeroMQ for numpy and cupy arrays.

    import comm
    c = comm.init()                 # MPI under mpirun/srun, ZeroMQ under dptrain, else 1 rank
    c.allreduce(grad, op="mean")    # in place, bit-identical on every rank
    h = c.allreduce_async(bucket)   # runs on the comm thread; h.wait() returns the array
    comm.finalize()

`comm.env.detect()` reads rank/size/local rank from launcher variables without
initialising MPI.  This package never imports `engine` (DESIGN.md §1).
"""

from __future__ import annotations

import atexit
import threading
import weakref
from typing import Optional

from . import env
from .communicator import Communicator
from .env import Topology, choose_backend, comm_timeout, detect
from .errors import CollectiveMismatchError, CommError, CommSetupError, CommTimeoutError, PeerFailureError
from .progress import Handle
from .transport import LocalTransport

_lock = threading.Lock()
_default: Optional[Communicator] = None
_open: "weakref.WeakSet[Communicator]" = weakref.WeakSet()


def _build(backend: str, topo: Topology, timeout: float) -> Communicator:
    if backend == "mpi":
        from .mpi_transport import MpiTransport  # imports mpi4py.MPI: only now

        transport = MpiTransport(timeout)
        launched = env.detect_dptrain()
        if launched is not None and launched.size != transport.size:
            transport.close(clean=False)
            raise CommSetupError(
                f"MPI_COMM_WORLD has {transport.size} rank(s) but the launcher started {launched.size} "
                f"(DPTRAIN_WORLD_SIZE): MPI did not reach the job's process manager (a rank started "
                f"without mpiexec, or srun without a PMI plugin), so every rank runs alone. Under srun pass --mpi=pmi2 (MPICH, Intel MPI) or --mpi=pmix (Open MPI), "
                f"or use cluster.backend: zmq")
    elif backend == "zmq":
        topo = env.detect_dptrain() or topo
        if topo.launcher != "dptrain":
            raise CommError("backend 'zmq' needs DPTRAIN_RANK, DPTRAIN_WORLD_SIZE, DPTRAIN_MASTER_ADDR and "
                            "DPTRAIN_MASTER_PORT in the environment (the dptrain launcher sets them)")
        if topo.size == 1:
            transport = LocalTransport()
        else:
            from .zmq_transport import ZmqTransport

            transport = ZmqTransport(topo, timeout)
    else:
        transport = LocalTransport()
    try:
        comm = Communicator(transport, topo if backend != "local" else Topology(), timeout, backend)
        comm._setup()
    except BaseException:
        transport.close(clean=False)
        raise
    return comm


def init(backend: str = "auto", timeout: Optional[float] = None) -> Communicator:
    """The communicator of this process.

    backend: "auto" (MPI when started by mpirun/mpiexec/srun, ZeroMQ when DPTRAIN_WORLD_SIZE
    is set, else a 1-rank local communicator; DPTRAIN_COMM_BACKEND overrides), "mpi", "zmq"
    or "local".  timeout: seconds any single wait may take (default DPTRAIN_COMM_TIMEOUT or 60).
    Calling init again returns the same open communicator (a given timeout replaces the old one).
    """
    global _default
    seconds = comm_timeout(timeout)
    resolved = choose_backend(backend)
    with _lock:
        current = _default
        if current is not None and not current.closed and current.backend == resolved:
            if timeout is not None:
                current.timeout = seconds
            return current
        comm = _build(resolved, detect(), seconds)
        _open.add(comm)
        if current is None or current.closed:
            _default = comm
        return comm


def finalize(timeout: Optional[float] = None) -> None:
    """Close the communicator returned by init() (MPI itself is finalised at interpreter exit)."""
    global _default
    with _lock:
        comm, _default = _default, None
    if comm is not None:
        comm.close(timeout)


def _close_all_at_exit() -> None:
    for comm in list(_open):
        try:
            comm.close(timeout=min(comm.timeout, 10.0))
        except Exception:  # noqa: BLE001 - interpreter is exiting
            pass


atexit.register(_close_all_at_exit)

__all__ = [
    "init", "finalize", "Communicator", "Handle", "Topology", "detect", "choose_backend", "env",
    "CommError", "CommSetupError", "CommTimeoutError", "CollectiveMismatchError", "PeerFailureError",
]
