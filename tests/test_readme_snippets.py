"""The README's worker scripts run as written: saved as a file and started with `dptrain launch -n 2`
(the embedded Fashion-MNIST subset, ZeroMQ so that no MPI is needed)."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _snippet(heading):
    """The first ```python block after the README heading `heading`."""
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    section = readme[readme.index("\n" + heading + "\n"):]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, f"no python block after {heading!r}"
    return m.group(1)


def _launch(tmp_path, name, text):
    from engine.data.embedded import EMBEDDED_DIR
    (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPTRAIN_", "OMPI_", "PMI_", "HYDRA_"))}
    env.update(PYTHONPATH=REPO, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               DPTRAIN_DATA=EMBEDDED_DIR, DPTRAIN_OFFLINE="1")
    p = subprocess.run([sys.executable, "-m", "launcher", "launch", "-n", "2", "--backend", "zmq", name],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]


@pytest.mark.timeout(300)
def test_the_data_parallelism_snippet_runs_as_train_py(tmp_path):
    _launch(tmp_path, "train.py", _snippet("## Data parallelism (`cluster`)"))


@pytest.mark.timeout(300)
def test_the_keras_data_parallel_snippet_runs(tmp_path):
    _launch(tmp_path, "keras_dp.py", _snippet("### Keras models, data-parallel (`cluster.keras`)"))


@pytest.mark.timeout(300)
def test_the_horovod_snippet_runs(tmp_path):
    _launch(tmp_path, "hvd_train.py", _snippet("### Horovod scripts (`cluster.horovod`)"))
