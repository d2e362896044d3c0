"""What the example scripts share: command-line flags and where the data is.

The seed programs themselves are kept as close to their Keras / PyTorch originals as
possible; everything that is not part of them (flags for quick runs, finding the
full Fashion-MNIST) lives here.
"""
from __future__ import annotations

import argparse
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKSPACE_COPY = os.path.join(REPO, "..", "shared", "datasets", "fashion-mnist")


def parse_args(description, epochs, batch_size, lr=None, argv=None):
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--epochs", type=int, default=epochs, help=f"training epochs (default {epochs})")
    p.add_argument("--batch-size", type=int, default=batch_size, help=f"default {batch_size}")
    if lr is not None:
        p.add_argument("--lr", type=float, default=lr, help=f"learning rate (default {lr})")
    p.add_argument("--limit", type=int, default=None, help="train on the first N training samples only")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test samples only")
    p.add_argument("--data", default=None,
                   help="directory with the Fashion-MNIST IDX files (default: $DPTRAIN_DATA, then "
                        "../shared/datasets/fashion-mnist next to the repository, ~/.cache/dptrain, "
                        "/usr/share/datasets/fashion-mnist, a download, else the embedded subset)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2), help="progress output")
    args = p.parse_args(argv)
    for name in ("epochs", "batch_size", "limit", "test_limit"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive, got {v}")
    return args


def data_root(cli_value=None):
    """--data, else None when $DPTRAIN_DATA is set (engine.data searches it), else the workspace
    copy next to the repository when it exists, else None (engine.data's own search order)."""
    if cli_value:
        if not os.path.isdir(cli_value):
            raise SystemExit(f"--data {cli_value}: no such directory")
        return cli_value
    if os.environ.get("DPTRAIN_DATA"):
        return None
    if os.path.isdir(WORKSPACE_COPY):
        return os.path.normpath(WORKSPACE_COPY)
    return None
