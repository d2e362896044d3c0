"""torch.distributed.algorithms.join: the Join context for uneven inputs (see cluster/join.py)."""
from ...join import Join, JoinError

__all__ = ["Join", "JoinError"]
