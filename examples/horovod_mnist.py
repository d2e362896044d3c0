"""A Horovod PyTorch training script, ported by changing its imports.

The body is Horovod's `examples/pytorch/pytorch_mnist.py`: hvd.init, DistributedSampler with
num_replicas=hvd.size(), the learning rate scaled by hvd.size(), broadcast_parameters and
broadcast_optimizer_state from rank 0, hvd.DistributedOptimizer (optionally with fp16
compression and a gradient predivide factor), and test metrics averaged with hvd.allreduce.
On Fashion-MNIST instead of MNIST (the same 28x28 IDX format).

    .venv/bin/dptrain launch -n 2 examples/horovod_mnist.py --epochs 2   # was: horovodrun -np 2 python ...
    python examples/horovod_mnist.py --epochs 1 --limit 2000              # one process

Besides the imports below, one line of test() drops `.data` (`output.max(1, keepdim=True)` for
`output.data.max(1, keepdim=True)`): here `.data` is the raw NumPy array, without torch's
Tensor methods (README, known limitations).  The imports that differ:

    import torch, torch.nn as nn, torch.nn.functional as F, torch.optim as optim   # was
    import horovod.torch as hvd
    import torch.utils.data.distributed
    from torchvision import datasets, transforms
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import argparse  # noqa: E402

from _common import data_root  # noqa: E402

import engine as torch  # noqa: E402
import engine.nn as nn  # noqa: E402
import engine.nn.functional as F  # noqa: E402
import engine.optim as optim  # noqa: E402
import engine.utils.data.distributed  # noqa: E402,F401
import cluster.horovod as hvd  # noqa: E402
from engine.data import Subset, datasets, transforms  # noqa: E402

parser = argparse.ArgumentParser(description="Horovod's PyTorch MNIST example")
parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="input batch size for training")
parser.add_argument("--test-batch-size", type=int, default=1000, metavar="N", help="input batch size for testing")
parser.add_argument("--epochs", type=int, default=10, metavar="N", help="number of epochs to train")
parser.add_argument("--lr", type=float, default=0.01, metavar="LR", help="learning rate")
parser.add_argument("--momentum", type=float, default=0.5, metavar="M", help="SGD momentum")
parser.add_argument("--no-cuda", action="store_true", default=False, help="disables CUDA training")
parser.add_argument("--seed", type=int, default=42, metavar="S", help="random seed")
parser.add_argument("--log-interval", type=int, default=10, metavar="N", help="batches between log lines")
parser.add_argument("--fp16-allreduce", action="store_true", default=False, help="use fp16 compression")
parser.add_argument("--gradient-predivide-factor", type=float, default=1.0, help="apply gradient predivide factor")
parser.add_argument("--data-dir", help="location of the training dataset")
# for quick runs (not in the original)
parser.add_argument("--limit", type=int, default=None, help="train on the first N training samples only")
parser.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test samples only")
parser.add_argument("--data", dest="data_dir", help=argparse.SUPPRESS)


class Net(nn.Module):
    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5)
        self.conv2_drop = nn.Dropout2d()
        self.fc1 = nn.Linear(320, 50)
        self.fc2 = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2_drop(self.conv2(x)), 2))
        x = x.view(-1, 320)
        x = F.relu(self.fc1(x))
        x = F.dropout(x, training=self.training)
        x = self.fc2(x)
        return F.log_softmax(x)


def train(epoch):
    model.train()
    # Horovod: set epoch to sampler for shuffling.
    train_sampler.set_epoch(epoch)
    for batch_idx, (data, target) in enumerate(train_loader):
        if args.cuda:
            data, target = data.cuda(), target.cuda()
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        if batch_idx % args.log_interval == 0 and hvd.rank() == 0:
            # Horovod: use train_sampler to determine the number of examples in this worker's partition.
            print("Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(
                epoch, batch_idx * len(data), len(train_sampler),
                100. * batch_idx / len(train_loader), loss.item()), flush=True)


def metric_average(val, name):
    tensor = torch.tensor(val)
    avg_tensor = hvd.allreduce(tensor, name=name)
    return avg_tensor.item()


def test():
    model.eval()
    test_loss = 0.
    test_accuracy = 0.
    for data, target in test_loader:
        if args.cuda:
            data, target = data.cuda(), target.cuda()
        output = model(data)
        # sum up batch loss
        test_loss += F.nll_loss(output, target, reduction="sum").item()
        # get the index of the max log-probability
        pred = output.max(1, keepdim=True)[1]          # original: output.data.max(...), target.data
        test_accuracy += pred.eq(target.view_as(pred)).cpu().float().sum()

    # Horovod: use test_sampler to determine the number of examples in this worker's partition.
    test_loss /= len(test_sampler)
    test_accuracy /= len(test_sampler)

    # Horovod: average metric values across workers.
    test_loss = metric_average(test_loss, "avg_loss")
    test_accuracy = metric_average(test_accuracy, "avg_accuracy")

    # Horovod: print output only on first rank.
    if hvd.rank() == 0:
        print("\nTest set: Average loss: {:.4f}, Accuracy: {:.2f}%\n".format(test_loss, 100. * test_accuracy))
        print(f"Test accuracy: {test_accuracy:.4f}", flush=True)     # the line the test suite reads
    return test_accuracy


if __name__ == "__main__":
    args = parser.parse_args()
    args.cuda = not args.no_cuda and torch.cuda.is_available()

    # Horovod: initialize library.
    hvd.init()
    torch.manual_seed(args.seed)

    if args.cuda:
        # Horovod: pin GPU to local rank.
        torch.cuda.set_device(hvd.local_rank())
        torch.cuda.manual_seed(args.seed)

    # Horovod: limit # of CPU threads to be used per worker.
    torch.set_num_threads(1)

    kwargs = {"num_workers": 1, "pin_memory": True} if args.cuda else {}
    data_dir = data_root(args.data_dir)
    train_dataset = datasets.FashionMNIST(data_dir, train=True, download=True, transform=transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]))
    test_dataset = datasets.FashionMNIST(data_dir, train=False, transform=transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.2860,), (0.3530,))]))
    if args.limit:
        train_dataset = Subset(train_dataset, range(args.limit))
    if args.test_limit:
        test_dataset = Subset(test_dataset, range(args.test_limit))
    # Horovod: use DistributedSampler to partition the training data.
    train_sampler = torch.utils.data.distributed.DistributedSampler(
        train_dataset, num_replicas=hvd.size(), rank=hvd.rank())
    train_loader = torch.utils.data.DataLoader(
        train_dataset, batch_size=args.batch_size, sampler=train_sampler, **kwargs)
    # Horovod: use DistributedSampler to partition the test data.
    test_sampler = torch.utils.data.distributed.DistributedSampler(
        test_dataset, num_replicas=hvd.size(), rank=hvd.rank())
    test_loader = torch.utils.data.DataLoader(test_dataset, batch_size=args.test_batch_size,
                                              sampler=test_sampler, **kwargs)

    model = Net()

    # By default, Adasum doesn't need scaling up learning rate.
    lr_scaler = hvd.size()

    if args.cuda:
        # Move model to GPU.
        model.cuda()

    # Horovod: scale learning rate by lr_scaler.
    optimizer = optim.SGD(model.parameters(), lr=args.lr * lr_scaler, momentum=args.momentum)

    # Horovod: broadcast parameters & optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    # Horovod: (optional) compression algorithm.
    compression = hvd.Compression.fp16 if args.fp16_allreduce else hvd.Compression.none

    # Horovod: wrap optimizer with DistributedOptimizer.
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters(),
                                         compression=compression, op=hvd.Average,
                                         gradient_predivide_factor=args.gradient_predivide_factor)

    t0 = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        train(epoch)
        test()
    if hvd.rank() == 0:
        print(f"workers: {hvd.size()}  train samples: {len(train_dataset)}  wall time: "
              f"{time.perf_counter() - t0:.1f} s", flush=True)
