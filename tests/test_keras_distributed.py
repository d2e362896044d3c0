"""cluster.keras: a Keras model trained with model.fit on 2 and 3 ranks ends where one worker at
the global batch ends; every rank holds the same weights; the logs are global averages."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dist_utils import ROOT, base_env, run_mpi, run_zmq

WORKER = os.path.join(ROOT, "tests", "keras_dp_worker.py")


def _load(out, n):
    with np.load(str(out) + ".npz") as z:
        weights = [z[f"arr_{i}"] for i in range(len(z.files))]
    return weights, [json.load(open(f"{out}.rank{r}.json")) for r in range(n)]


def _one_worker(tmp_path):
    out = tmp_path / "w1"
    p = subprocess.run([sys.executable, WORKER, str(out)], env=base_env(), cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return _load(out, 1)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("backend", ["zmq", "mpi"])
def test_keras_fit_on_several_ranks_matches_one_worker(tmp_path, backend):
    ref, (ref_log,) = _one_worker(tmp_path)
    for n in (2, 3):
        out = tmp_path / f"w{n}"
        if backend == "zmq":
            for r, (rc, so, se) in enumerate(run_zmq(n, [WORKER, str(out)], timeout=150)):
                assert rc == 0, f"rank {r}: {se[-3000:]}"
        else:
            rc, so, se = run_mpi(n, [WORKER, str(out)], timeout=150)
            assert rc == 0, se[-3000:]
        got, logs = _load(out, n)
        assert [lg["size"] for lg in logs] == [n] * n and {lg["backend"] for lg in logs} == {backend}
        assert len({lg["digest"] for lg in logs}) == 1, "ranks ended with different weights"
        assert [lg["rows"] for lg in logs] == [200 // n] * n          # equal shares, remainder dropped
        if 200 // n * n == 200 and 24 % n == 0:                     # same rows and steps as one worker
            diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
            assert diff <= 1e-5, f"{n} ranks on {backend}: max |weight difference| {diff:.3g}"
            np.testing.assert_allclose(logs[0]["history"]["loss"], ref_log["history"]["loss"], rtol=1e-5)
        # MetricAverageCallback: every rank reports the same (global) epoch figures
        assert all(lg["history"] == logs[0]["history"] for lg in logs)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("variant", ["--augment", "--regularized"])
def test_random_layers_and_penalties_on_two_ranks_match_one_worker(tmp_path, variant):
    """--augment: Dropout, RandomFlip and RandomTranslation under cluster.keras: each rank draws for
    the whole global batch and keeps its rows (and the ranks start from rank 0's random state,
    although they were seeded differently).  --regularized: weight and activity regularizers (the
    latter divided by the local batch, so the ranks' mean is the global batch's) and a MaxNorm
    constraint.  Either way 2 ranks end with one worker's weights."""
    one = tmp_path / "a1"
    p = subprocess.run([sys.executable, WORKER, str(one), variant], env=base_env(), cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    ref, _ = _load(one, 1)
    two = tmp_path / "a2"
    for r, (rc, so, se) in enumerate(run_zmq(2, [WORKER, str(two), variant], timeout=150)):
        assert rc == 0, f"rank {r}: {se[-3000:]}"
    got, logs = _load(two, 2)
    assert logs[0]["digest"] == logs[1]["digest"]
    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref, got))
    assert diff <= 1e-5, f"max |weight difference| {diff:.3g}"


@pytest.mark.timeout(120)
def test_weights_without_gradient_do_not_stall_the_all_reduce(tmp_path):
    """A built layer the loss never uses: its bucket is completed with zeros before each update, so
    the ranks keep reducing and end identical (without that they silently drift apart)."""
    out = tmp_path / "spare"
    for r, (rc, so, se) in enumerate(run_zmq(2, [WORKER, str(out), "--unused"], timeout=100)):
        assert rc == 0, f"rank {r}: {se[-3000:]}"
    logs = [json.load(open(f"{out}.rank{r}.json")) for r in range(2)]
    assert logs[0]["digest"] == logs[1]["digest"]


def test_distribute_and_shard_errors_and_single_process_passthrough():
    import comm
    from cluster import keras as dpk
    from engine import keras
    from engine.keras import layers
    unbuilt = keras.Sequential([layers.Dense(2)])
    with pytest.raises(ValueError, match="has no weights yet; give its first layer input_shape="):
        dpk.distribute(unbuilt)
    c = comm.init("local")
    model = keras.Sequential([layers.Dense(2, input_shape=(3,))])
    ddp = dpk.distribute(model, c)
    assert dpk.distribute(model, c) is ddp                           # idempotent
    x, y = np.arange(10), np.arange(10) * 2
    xs, ys = dpk.shard(x, y, rank=1, size=3)
    assert xs.tolist() == [1, 4, 7] and ys.tolist() == [2, 8, 14]    # interleaved, 10 -> 9 rows kept
    assert dpk.shard(x, comm=c).tolist() == list(range(10))
    with pytest.raises(ValueError, match="different lengths"):
        dpk.shard(x, y[:5], rank=0, size=2)
    with pytest.raises(ValueError, match="cannot be split over 4 ranks"):
        dpk.shard(x[:3], rank=0, size=4)


_KERAS_JOB = '''
import os, sys
import numpy as np
import cluster
from cluster import keras as dpk
from engine import keras
from engine.keras import layers

ctx = cluster.init()
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((8,)), layers.Dense(16, activation="relu"), layers.Dropout(0.3),
                          layers.Dense(3, activation="softmax")])
model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
dpk.distribute(model, ctx.comm)
rng = np.random.default_rng(0)
x = rng.normal(size=(96, 8)).astype("float32")
y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0)
xs, ys = dpk.shard(x, y, comm=ctx.comm)
'''

BACKUP_SCRIPT = _KERAS_JOB + '''

class CrashOnce(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if sys.argv[2] == "crash" and epoch == 2 and ctx.rank == 1 and os.environ.get("DPTRAIN_RESTART") == "0":
            os._exit(3)


model.fit(xs, ys, batch_size=8, epochs=5, verbose=0, shuffle=False,
          callbacks=[keras.callbacks.BackupAndRestore(sys.argv[1] + ".backup"), CrashOnce()])
if ctx.rank == 0:
    np.savez(sys.argv[1] + ".npz", *model.get_weights())
'''


@pytest.mark.timeout(300)
def test_backup_and_restore_resumes_a_restarted_data_parallel_fit_exactly(tmp_path):
    """dptrain launch --max-restarts 1 + BackupAndRestore: rank 1 dies after epoch 3; the restarted
    script resumes at epoch 4 and ends with the weights of a run that never crashed."""
    script = tmp_path / "fit.py"
    script.write_text(BACKUP_SCRIPT)
    finals = {}
    for mode in ("clean", "crash"):
        out = tmp_path / mode
        p = subprocess.run([sys.executable, "-m", "launcher", "launch", "-n", "2", "--backend", "zmq",
                            "--max-restarts", "1", "--output", str(tmp_path / f"run-{mode}"), str(script), str(out),
                            mode], cwd=ROOT, env=base_env(), capture_output=True, text=True, timeout=240)
        assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
        with np.load(str(out) + ".npz") as z:
            finals[mode] = [z[f"arr_{i}"] for i in range(len(z.files))]
        if mode == "crash":
            assert "rank 1 failed: exit code 3" in p.stderr and "restarting the worker group" in p.stderr
            assert "BackupAndRestore: resuming at epoch 4" in p.stdout, p.stdout[-3000:]
        assert not os.path.exists(str(out) + ".backup")        # removed when fit completed
    for a, b in zip(finals["clean"], finals["crash"]):
        np.testing.assert_array_equal(a, b)


STOPPABLE = _KERAS_JOB + '''
model.fit(xs, ys, batch_size=8, epochs=int(sys.argv[2]), verbose=0, shuffle=False,
          callbacks=[keras.callbacks.BackupAndRestore(sys.argv[1])])
print(f"rank {ctx.rank} finished", flush=True)
'''


@pytest.mark.timeout(300)
def test_sigterm_makes_a_keras_script_with_backup_and_restore_stop_cleanly_and_resume(tmp_path):
    """A job.script is normally stopped at once on SIGTERM; one whose ranks poll the stop request
    (BackupAndRestore does) gets the clean stop: backup, exit 143 'stopped', and the next run resumes."""
    import signal
    import time
    script, backup = tmp_path / "fit.py", tmp_path / "backup"
    script.write_text(STOPPABLE)
    cmd = [sys.executable, "-m", "launcher", "launch", "-n", "2", "--backend", "zmq", "--output",
           str(tmp_path / "run"), str(script), str(backup)]
    p = subprocess.Popen(cmd + ["100000"], cwd=ROOT, env=base_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    end = time.time() + 90
    while time.time() < end and not (backup / "training_metadata.json").exists():
        time.sleep(0.2)
    time.sleep(2.5)                  # a heartbeat has said that every rank polls the stop request
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, out[-3000:] + err[-3000:]
    assert "at their next cluster.stop_requested() check" in err and "saved a checkpoint and stopped" in err
    assert "BackupAndRestore: the launcher asked the job to stop; backed up at epoch" in out, out[-3000:]
    meta = json.loads((backup / "training_metadata.json").read_text())
    assert 1 <= meta["batch"] <= 6                  # taken at a stop check (every 10 batches; 6 per epoch)
    again = subprocess.run(cmd + [str(meta["epoch"] + 2)], cwd=ROOT, env=base_env(), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"BackupAndRestore: resuming at epoch {meta['epoch'] + 1}" in again.stdout
    assert again.stdout.count("finished") == 2 and not backup.exists()
