"""engine.data: datasets, the DataLoader and batched transforms.

    from engine.data import DataLoader, TensorDataset, datasets, transforms
    train = datasets.FashionMNIST(train=True)
    loader = DataLoader(train, batch_size=128, shuffle=True, seed=0)
"""
from . import datasets, transforms
from .dataloader import DataLoader, default_collate
from .dataset import Dataset, Subset, TensorDataset, random_split
from .datasets import MNIST, DatasetNotFoundError, FashionMNIST
from .idx import IDXFormatError, read_idx, write_idx

__all__ = ["Dataset", "TensorDataset", "Subset", "random_split", "DataLoader", "default_collate",
           "datasets", "transforms", "MNIST", "FashionMNIST", "DatasetNotFoundError",
           "IDXFormatError", "read_idx", "write_idx"]
