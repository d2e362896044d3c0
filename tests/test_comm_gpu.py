"""cupy arrays through the collectives (host staging; CUDA-aware MPI is used only when available).

Skipped cleanly without cupy or a CUDA device.
"""

from __future__ import annotations

import numpy as np
import pytest

from comm.communicator import Communicator
from comm.env import Topology
from comm.transport import LocalTransport

cp = pytest.importorskip("cupy")
try:
    _HAVE_GPU = cp.cuda.runtime.getDeviceCount() > 0
except Exception:  # noqa: BLE001 - no driver / no device
    _HAVE_GPU = False
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _HAVE_GPU, reason="no CUDA device")]


@pytest.mark.timeout(60)
def test_cupy_single_rank_in_place():
    c = Communicator(LocalTransport(), Topology(), 10.0, "local")
    x = cp.arange(10, dtype=cp.float32)
    assert c.allreduce(x, op="mean") is x
    assert cp.asnumpy(x).tolist() == list(range(10))
    g = c.allgather(x)
    assert isinstance(g, cp.ndarray) and g.shape == (1, 10)
    c.close()


@pytest.mark.timeout(60)
def test_cupy_three_ranks_over_threads():
    from test_comm_local import make_comms, run_comms  # the in-memory transport

    comms = make_comms(3)

    def body(c):
        x = cp.full((4, 5), c.rank + 1, dtype=cp.float64)
        view = x[:, ::2]  # non-contiguous device array: reduced and written back
        c.allreduce(view, op="sum")
        b = cp.arange(7, dtype=cp.int32) * (c.rank + 1)
        c.broadcast(b, root=2)
        rs = c.reduce_scatter(cp.ones((6, 2), dtype=cp.float32), op="sum")
        return cp.asnumpy(x), cp.asnumpy(b), cp.asnumpy(rs), isinstance(rs, cp.ndarray)

    results, errors = run_comms(comms, body)
    assert not any(errors), errors
    for r, (x, b, rs, on_device) in enumerate(results):
        assert np.array_equal(x[:, ::2], np.full((4, 3), 6.0))
        assert np.array_equal(x[:, 1::2], np.full((4, 2), r + 1.0))
        assert np.array_equal(b, np.arange(7) * 3)
        assert on_device and np.array_equal(rs, np.full((2, 2), 3.0))
