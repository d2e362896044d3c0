"""Training state <-> (flat arrays, JSON skeleton), the shape checkpoints are stored in.

A checkpoint holds nested dicts (model state_dict, optimizer state with integer
keys, sampler position, RNG state).  Arrays go to safetensors under dotted keys;
everything else stays in a JSON skeleton where each array is replaced by
{"__array__": key}.  Integer dict keys survive the JSON round trip as
{"__int_keys__": ...} so an optimizer's per-parameter state comes back as it left.
"""
from __future__ import annotations

import numpy as np

from engine.tensor import Tensor


def flatten_state(obj, prefix=""):
    arrays: dict[str, np.ndarray] = {}

    def enc(node, path):
        if isinstance(node, Tensor):
            node = node.numpy()
        if hasattr(node, "__cuda_array_interface__") and hasattr(node, "get"):
            node = node.get()
        if isinstance(node, np.ndarray):
            key = path or "value"
            arrays[key] = node if node.flags.c_contiguous else node.copy()   # (ascontiguousarray makes 0-d 1-d)
            return {"__array__": key}
        if isinstance(node, np.generic):
            return node.item()
        if isinstance(node, dict):
            int_keys = [k for k in node if isinstance(k, (int, np.integer))]
            out = {str(k): enc(v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
            if int_keys:
                out["__int_keys__"] = [int(k) for k in int_keys]
            return out
        if isinstance(node, (list, tuple)):
            return [enc(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(node)]
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        raise TypeError(f"cannot store a {type(node).__name__} at {path!r} in a checkpoint")

    skeleton = enc(obj, prefix)
    return arrays, skeleton


def unflatten_state(arrays: dict, skeleton):
    def dec(node):
        if isinstance(node, dict):
            if set(node) == {"__array__"}:
                return arrays[node["__array__"]]
            int_keys = set(node.get("__int_keys__", ()))
            out = {}
            for k, v in node.items():
                if k == "__int_keys__":
                    continue
                out[int(k) if k.lstrip("-").isdigit() and int(k) in int_keys else k] = dec(v)
            return out
        if isinstance(node, list):
            return [dec(v) for v in node]
        return node
    return dec(skeleton)
