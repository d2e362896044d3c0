"""Test-wide settings: no dataset downloads (CI has no internet), one BLAS thread per process."""
import os

os.environ.setdefault("DPTRAIN_OFFLINE", "1")
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(var, "1")
