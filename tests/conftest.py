"""Test-wide settings: no dataset downloads (CI has no internet), one BLAS thread per process."""
import os

os.environ.setdefault("DPTRAIN_OFFLINE", "1")
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _no_leftover_mpi_segments():
    """Tests kill MPI ranks on purpose; remove the /dev/shm segments those ranks could not (the
    launcher does the same for its own jobs, see launcher/shmclean.py)."""
    from launcher import shmclean
    import time
    before = shmclean.snapshot()
    yield
    for _ in range(30):          # ranks killed by the last test may still be exiting (mapping theirs)
        shmclean.remove_orphans(before)
        if not shmclean.snapshot() - before:
            break
        time.sleep(0.1)
