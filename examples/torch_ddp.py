"""A PyTorch DistributedDataParallel training script, ported by changing its imports.

The body is what the PyTorch DDP tutorial teaches: init_process_group, DistributedSampler with
set_epoch, DDP(model, device_ids=...), a scheduler, gradient clipping, rank-0 checkpoints of
model.module.state_dict(), metrics all-reduced across ranks, eval under no_grad.

    .venv/bin/dptrain launch -n 2 examples/torch_ddp.py --epochs 2      # 2 workers, like torchrun
    python examples/torch_ddp.py --epochs 1 --limit 2000                 # one process

Only these lines differ from the PyTorch original:

    import torch, torch.nn as nn, torch.nn.functional as F          # was
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data import DataLoader, DistributedSampler, Subset
    from torchvision import datasets, transforms
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import data_root, parse_args  # noqa: E402

import engine as torch  # noqa: E402
import engine.nn as nn  # noqa: E402
import engine.nn.functional as F  # noqa: E402
import cluster.distributed as dist  # noqa: E402
from cluster import DistributedDataParallel as DDP, DistributedSampler  # noqa: E402
from engine.data import DataLoader, Subset, datasets  # noqa: E402


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3)
        self.fc1 = nn.Linear(32 * 13 * 13, 128)
        self.fc2 = nn.Linear(128, 10)
        self.dropout = nn.Dropout(0.25)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], epochs=2, batch_size=64, lr=1e-3, argv=argv)
    # --- the PyTorch program ------------------------------------------------------------------
    dist.init_process_group(backend="gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # the run directory under dptrain, else runs/torch_ddp (the tutorial writes next to itself)
    save_dir = os.environ.get("DPTRAIN_RUN_DIR") or os.path.join("runs", "torch_ddp")
    os.makedirs(save_dir, exist_ok=True)
    root = data_root(args.data)
    train_set = datasets.FashionMNIST(root=root, train=True)
    test_set = datasets.FashionMNIST(root=root, train=False)
    if args.limit:
        train_set = Subset(train_set, range(args.limit))
    if args.test_limit:
        test_set = Subset(test_set, range(args.test_limit))
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True, seed=args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size // world_size, sampler=sampler,
                              num_workers=2, pin_memory=True)
    test_loader = DataLoader(test_set, batch_size=500)

    model = Net().to(device)
    model = DDP(model, device_ids=[0] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)

    t0 = time.perf_counter()
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        model.train()
        for step, (x, y) in enumerate(train_loader):
            x, y = x.to(device), y.to(device)
            optimizer.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=1.0)
            optimizer.step()
            if rank == 0 and step % 100 == 0 and args.verbose:
                print(f"epoch {epoch} step {step} loss {loss.item():.4f} lr {scheduler.get_last_lr()[0]:.2e}",
                      flush=True)
        scheduler.step()
        if rank == 0:
            torch.save(model.module.state_dict(), os.path.join(save_dir, "torch_ddp.safetensors"))

    model.eval()
    correct = torch.zeros(1)
    total = torch.zeros(1)
    with torch.no_grad():
        for x, y in test_loader:
            x, y = x.to(device), y.to(device)
            _, predicted = torch.max(model(x), 1)
            correct += (predicted == y).sum().item()
            total += y.shape[0]
    dist.all_reduce(correct, op=dist.ReduceOp.SUM)      # every rank scored the whole test set:
    dist.all_reduce(total, op=dist.ReduceOp.SUM)        # the sum over ranks keeps the ratio
    accuracy = (correct / total).item()
    if rank == 0:
        print(f"Test accuracy: {accuracy:.4f}")
        print(f"workers: {world_size}  train samples: {len(train_set)}  wall time: "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
    dist.destroy_process_group()
    # ---------------------------------------------------------------------------------------------
    return accuracy


if __name__ == "__main__":
    main()
