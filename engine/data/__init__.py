"""engine.data: datasets, the DataLoader and batched transforms.

    from engine.data import DataLoader, TensorDataset, datasets, transforms
    train = datasets.FashionMNIST(train=True)
    loader = DataLoader(train, batch_size=128, shuffle=True, seed=0)
"""
from . import datasets, distributed, transforms
from .dataloader import DataLoader, default_collate, default_convert, get_worker_info
from .dataset import (ChainDataset, ConcatDataset, Dataset, IterableDataset, Subset, TensorDataset,
                      random_split)
from .datasets import MNIST, DatasetNotFoundError, FashionMNIST
from .idx import IDXFormatError, read_idx, write_idx
from .sampler import (BatchSampler, RandomSampler, Sampler, SequentialSampler, SubsetRandomSampler,
                      WeightedRandomSampler)

__all__ = ["Dataset", "IterableDataset", "TensorDataset", "Subset", "ConcatDataset", "ChainDataset",
           "random_split", "DataLoader", "default_collate", "default_convert", "get_worker_info",
           "Sampler", "SequentialSampler", "RandomSampler", "SubsetRandomSampler",
           "WeightedRandomSampler", "BatchSampler", "datasets", "distributed", "transforms", "MNIST", "FashionMNIST",
           "DatasetNotFoundError", "IDXFormatError", "read_idx", "write_idx"]
