"""torch.utils for ported code: `torch.utils.data` is engine.data.

`torch.utils.data.DataLoader(...)`, `from torch.utils.data import Dataset, Subset` and
`torch.utils.data.random_split` appear in the body of nearly every PyTorch training script, not
only in its imports, so `import engine as torch` needs the same path.
"""
import sys

from .. import data

sys.modules[__name__ + ".data"] = data      # `import engine.utils.data` / `from engine.utils.data import ...`
for _name in ("distributed", "dataloader", "dataset", "sampler", "datasets", "transforms"):
    # `import engine.utils.data.distributed` must find the same module, not load a second copy
    sys.modules[f"{__name__}.data.{_name}"] = getattr(data, _name)

__all__ = ["data"]
