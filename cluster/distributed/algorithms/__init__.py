"""torch.distributed.algorithms for ported scripts: `from cluster.distributed.algorithms.join import Join`."""
