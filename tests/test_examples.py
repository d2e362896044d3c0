"""The example programs run end to end as users run them (subprocesses, embedded data)."""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _embedded_dir():
    from engine.data.embedded import EMBEDDED_DIR
    return EMBEDDED_DIR


def run_example(script, *flags, timeout=60, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               DPTRAIN_OFFLINE="1", PYTHONPATH=REPO)
    cmd = [sys.executable, os.path.join(REPO, "examples", script), "--data", _embedded_dir(), *flags]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    m = re.search(r"^Test accuracy: ([0-9.]+)$", proc.stdout, re.M)
    assert m, f"{script} printed no test accuracy:\n{proc.stdout[-2000:]}"
    return float(m.group(1)), proc.stdout


@pytest.mark.timeout(90)
def test_seed_keras_cnn_example():
    acc, out = run_example("seed_keras_cnn.py", "--epochs", "1", "--limit", "1500", "--test-limit", "500",
                           "--verbose", "2")
    assert "Total params: 693,962" in out            # model.summary() ran
    assert re.search(r"Epoch 1/1 .*loss: [0-9.]+ - accuracy: [0-9.]+", out)
    assert acc > 0.5, f"1500 images for one epoch should beat chance (0.1) by far, got {acc}"


@pytest.mark.timeout(90)
def test_seed_lstm_example():
    acc, out = run_example("seed_lstm.py", "--epochs", "1", "--limit", "1500", "--test-limit", "500")
    assert re.search(r"Epoch \[1/1\], Loss: [0-9.]+", out)
    assert acc > 0.3, f"one short epoch of the LSTM should beat chance (0.1), got {acc}"


def test_examples_reject_bad_flags():
    env = dict(os.environ, PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, os.path.join(REPO, "examples", "seed_keras_cnn.py"), "--epochs", "0"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--epochs must be positive" in proc.stderr


@pytest.mark.timeout(90)
def test_keras_data_parallel_example_runs_alone():
    """The data-parallel Keras example also runs as one plain process (a 1-rank job)."""
    acc, out = run_example("keras_data_parallel.py", "--epochs", "1", "--limit", "1500", "--test-limit", "500",
                           "--verbose", "2")
    assert "workers: 1" in out and acc > 0.5


@pytest.mark.timeout(120)
def test_keras_data_parallel_example_under_dptrain_run(tmp_path):
    """`dptrain run ... job.script=examples/keras_data_parallel.py` on 2 ZeroMQ workers."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", DPTRAIN_OFFLINE="1", PYTHONPATH=REPO)
    for k in [k for k in env if k.startswith(("DPTRAIN_", "OMPI_", "PMI_", "HYDRA_"))]:
        del env[k]
    env["DPTRAIN_OFFLINE"] = "1"
    args = ["job.script=examples/keras_data_parallel.py", "cluster.backend=zmq", f"output.dir={tmp_path / 'run'}",
            f"job.script_args=[--data, {_embedded_dir()}, --epochs, '1', --limit, '1500', --test-limit, '500', "
            f"--verbose, '2', --batch-size, '64']"]
    proc = subprocess.run([sys.executable, "-m", "launcher", "run", "configs/local.yaml", *args], env=env,
                          capture_output=True, text=True, timeout=110, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[rank 0] Test accuracy:" in proc.stdout and "workers: 2" in proc.stdout
    assert "[rank 1] Test accuracy" not in proc.stdout           # only rank 0 reports


@pytest.mark.timeout(90)
def test_torch_ddp_example_runs_alone(tmp_path):
    acc, out = run_example("torch_ddp.py", "--epochs", "1", "--limit", "1500", "--test-limit", "500", cwd=tmp_path)
    assert "workers: 1" in out and acc > 0.5
    assert (tmp_path / "runs" / "torch_ddp" / "torch_ddp.safetensors").exists()


@pytest.mark.timeout(120)
def test_torch_ddp_example_under_dptrain_launch(tmp_path):
    """The PyTorch DDP tutorial's program (imports changed) on 2 workers, like torchrun."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPTRAIN_", "OMPI_", "PMI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", DPTRAIN_OFFLINE="1", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-m", "launcher", "launch", "-n", "2", "--backend", "zmq",
                           "--output", str(tmp_path / "run"), os.path.join(REPO, "examples", "torch_ddp.py"),
                           "--data", _embedded_dir(), "--epochs", "1", "--limit", "1500", "--test-limit", "500"],
                          env=env, capture_output=True, text=True, timeout=110, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"^\[rank 0\] Test accuracy: ([0-9.]+)$", proc.stdout, re.M)
    assert m and float(m.group(1)) > 0.5 and "[rank 0] workers: 2" in proc.stdout
    assert (tmp_path / "run" / "torch_ddp.safetensors").exists()     # rank 0's model.module.state_dict()


@pytest.mark.timeout(120)
def test_horovod_example_under_dptrain_launch(tmp_path):
    """Horovod's pytorch_mnist.py (imports changed) on 2 MPI workers, where Horovod has horovodrun;
    and with fp16 compression and a predivide factor on ZeroMQ."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DPTRAIN_", "OMPI_", "PMI_", "HYDRA_"))}
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", DPTRAIN_OFFLINE="1", PYTHONPATH=REPO)
    for backend, extra in (("mpi", []), ("zmq", ["--fp16-allreduce", "--gradient-predivide-factor", "2"])):
        proc = subprocess.run([sys.executable, "-m", "launcher", "launch", "-n", "2", "--backend", backend,
                               "--output", str(tmp_path / backend), os.path.join(REPO, "examples", "horovod_mnist.py"),
                               "--data", _embedded_dir(), "--epochs", "2", "--limit", "3000", "--test-limit", "500",
                               "--lr", "0.05", *extra],
                              env=env, capture_output=True, text=True, timeout=55, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        accs = [float(a) for a in re.findall(r"^\[rank 0\] Test accuracy: ([0-9.]+)$", proc.stdout, re.M)]
        assert len(accs) == 2 and accs[-1] > 0.4, (backend, proc.stdout[-2000:])   # chance: 0.1
        assert "[rank 0] workers: 2  train samples: 3000" in proc.stdout
        assert "[rank 1] Test accuracy" not in proc.stdout       # only rank 0 prints
