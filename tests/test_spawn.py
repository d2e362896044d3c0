"""engine.multiprocessing.spawn + init_process_group without a launcher: PyTorch's DDP tutorial as written."""
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import engine
from dist_utils import ROOT, base_env

TUTORIAL = '''
import os
import sys
import engine as torch
import cluster.distributed as dist
import engine.nn as nn
import engine.optim as optim
import engine.multiprocessing as mp
from cluster import DistributedDataParallel as DDP


def setup(rank, world_size):
    os.environ["MASTER_ADDR"] = "localhost"
    os.environ["MASTER_PORT"] = sys.argv[1]
    dist.init_process_group("gloo", rank=rank, world_size=world_size)


class ToyModel(nn.Module):
    def __init__(self):
        super(ToyModel, self).__init__()
        self.net1 = nn.Linear(10, 10)
        self.relu = nn.ReLU()
        self.net2 = nn.Linear(10, 5)

    def forward(self, x):
        return self.net2(self.relu(self.net1(x)))


def demo_basic(rank, world_size):
    if sys.argv[2] == "fail" and rank == 1:
        raise ValueError("rank 1 fails on purpose")
    setup(rank, world_size)
    torch.manual_seed(rank)            # different weights on every rank: DDP must broadcast rank 0's
    model = ToyModel()
    ddp_model = DDP(model)
    loss_fn = nn.MSELoss()
    optimizer = optim.SGD(ddp_model.parameters(), lr=0.1)
    torch.manual_seed(100 + rank)      # and different data
    optimizer.zero_grad()
    outputs = ddp_model(torch.randn(20, 10))
    labels = torch.randn(20, 5)
    loss_fn(outputs, labels).backward()
    optimizer.step()
    torch.save(model.state_dict(), os.path.join(sys.argv[3], f"rank{rank}.safetensors"))
    dist.destroy_process_group()
    print(f"Finished running basic DDP example on rank {rank}.", flush=True)


if __name__ == "__main__":
    mp.spawn(demo_basic, args=(2,), nprocs=2, join=True)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def _run(tmp_path, mode):
    script = tmp_path / "ddp_tutorial.py"
    script.write_text(TUTORIAL)
    env = {k: v for k, v in base_env(None).items() if not k.startswith(("DPTRAIN_", "PMI_", "OMPI_", "PMIX_"))}
    return subprocess.run([sys.executable, str(script), _free_port(), mode, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)


@pytest.mark.timeout(120)
def test_the_ddp_tutorial_runs_unchanged_and_averages_gradients(tmp_path):
    p = _run(tmp_path, "ok")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert p.stdout.count("Finished running basic DDP example") == 2
    got = [engine.load(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    # the same step by hand: rank 0's initial weights, the gradient averaged over both ranks' batches
    from engine import nn
    engine.manual_seed(0)
    net1, net2 = nn.Linear(10, 10), nn.Linear(10, 5)
    params = list(net1.parameters()) + list(net2.parameters())
    grads = [np.zeros_like(p.data) for p in params]
    for r in (0, 1):
        engine.manual_seed(100 + r)
        x, y = engine.randn(20, 10), engine.randn(20, 5)
        for p in params:
            p.grad = None
        nn.functional.mse_loss(net2(nn.functional.relu(net1(x))), y).backward()
        for g, p in zip(grads, params):
            g += p.grad.numpy() / 2
    want = [p.numpy() - 0.1 * g for p, g in zip(params, grads)]
    for state in got:
        have = [np.asarray(getattr(state[k], "data", state[k]))
                for k in ("net1.weight", "net1.bias", "net2.weight", "net2.bias")]
        for h, w in zip(have, want):
            np.testing.assert_allclose(h, w, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(120)
def test_a_failing_child_stops_the_others_and_raises_in_the_parent(tmp_path):
    """Rank 0 waits in the rendezvous for rank 1, which raised: the parent must stop rank 0 and raise
    ProcessRaisedException with rank 1's traceback, well before any communication timeout."""
    t0 = time.monotonic()
    p = _run(tmp_path, "fail")
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    assert time.monotonic() - t0 < 30
    assert "ProcessRaisedException" in p.stderr and "-- Process 1 terminated with the following error:" in p.stderr
    assert "ValueError: rank 1 fails on purpose" in p.stderr


def test_spawn_reports_exit_codes_and_signals_and_join_false_returns_the_context():
    import engine.multiprocessing as mp

    def ok(i, out):
        os.write(out, bytes([i]))

    r, w = os.pipe()
    ctx = mp.spawn(ok, args=(w,), nprocs=3, join=False)
    assert len(ctx.pids()) == 3 and ctx.join(timeout=30) is True
    os.close(w)
    assert sorted(os.read(r, 16)) == [0, 1, 2]
    os.close(r)

    def exits(i):
        if i == 1:
            os._exit(3)
        time.sleep(30)

    t0 = time.monotonic()
    with pytest.raises(mp.ProcessExitedException, match="process 1 terminated with exit code 3") as err:
        mp.spawn(exits, nprocs=2)
    assert err.value.exit_code == 3 and err.value.error_index == 1 and time.monotonic() - t0 < 15

    def killed(i):
        os.kill(os.getpid(), 9)

    with pytest.raises(mp.ProcessExitedException, match="signal SIGKILL"):
        mp.spawn(killed, nprocs=1)


def test_init_process_group_without_a_launcher_names_what_is_missing(monkeypatch):
    import cluster.distributed as dist
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "DPTRAIN_WORLD_SIZE", "PMI_RANK", "PMI_SIZE",
              "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(k, raising=False)
    with pytest.raises(ValueError, match=r"environment variable MASTER_ADDR and MASTER_PORT expected"):
        dist.init_process_group("gloo", rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"rank 2 is not in 0..1"):
        dist.init_process_group("gloo", rank=2, world_size=2)
    with pytest.raises(ValueError, match="init_method 'file:///tmp/x' is not supported"):
        dist.init_process_group("gloo", init_method="file:///tmp/x", rank=0, world_size=2)
