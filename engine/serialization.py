"""engine.save / engine.load: one safetensors file, no pickle.

What is stored: a (nested) dict / list / tuple whose leaves are engine Tensors,
numpy (or cupy) arrays, numpy scalars, and JSON scalars (str, int, float, bool,
None).  Dict keys may be str, int, float, bool or None (optimizer state dicts use
int keys) and keep their type.

File layout: a standard safetensors file.  Every array leaf is one safetensors
tensor named by its key path ("model.fc.weight", "optim.state.0.exp_avg"; a
"#n" suffix only on a collision).  The structure, with a reference in place of
every array, is JSON in the safetensors metadata under "dptrain.structure",
next to "dptrain.format" (version) and "dptrain.sha256" (a digest of all array
bytes in key order, so a flipped bit is caught, not only a short file).  Any
safetensors reader can open the arrays; `engine.load` rebuilds the structure and
returns numpy arrays where arrays were saved and Tensors where Tensors were
saved (requires_grad is restored; Parameters come back as plain Tensors).

Writes are atomic: a temporary file in the target directory, fsync, rename,
fsync of the directory.  A reader never sees a half-written checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile

import numpy as np

__all__ = ["save", "load", "CheckpointFormatError", "FORMAT_VERSION"]

FORMAT_NAME = "dptrain-checkpoint"
FORMAT_VERSION = 2          # 2: the checksum covers the structure JSON too (1: arrays only; still read)
_META_STRUCT = "dptrain.structure"
_META_FORMAT = "dptrain.format"
_META_DIGEST = "dptrain.sha256"


class CheckpointFormatError(ValueError):
    """The file is not a complete, intact dptrain checkpoint."""


def _is_tensor(x):
    from .tensor import Tensor
    return isinstance(x, Tensor)


def _to_numpy(a):
    if type(a).__module__.startswith("cupy"):
        a = a.get()
    a = np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    return a if a.flags.c_contiguous else a.copy(order="C")   # (ascontiguousarray makes 0-d 1-d)


_KEY_TYPES = (str, int, float, bool, type(None))


class _Encoder:
    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}

    def _name(self, path):
        base = ".".join(path) if path else "root"
        name, n = base, 1
        while name in self.arrays:
            name = f"{base}#{n}"
            n += 1
        return name

    def encode(self, obj, path):
        if _is_tensor(obj):
            name = self._name(path)
            self.arrays[name] = _to_numpy(obj.data)
            return {"$tensor": name, "requires_grad": bool(obj.requires_grad)}
        if isinstance(obj, np.ndarray) or type(obj).__module__.startswith("cupy"):
            if getattr(obj, "dtype", None) is not None and obj.dtype.kind in "OUSV":
                raise TypeError(f"engine.save: array at {'.'.join(path) or 'root'} has dtype {obj.dtype}; "
                                "only numeric and bool arrays can be saved")
            name = self._name(path)
            self.arrays[name] = _to_numpy(obj)
            return {"$array": name}
        if isinstance(obj, np.generic):
            name = self._name(path)
            self.arrays[name] = _to_numpy(np.asarray(obj))
            return {"$scalar": name}
        if obj is None or isinstance(obj, (bool, int, str)):
            return obj
        if isinstance(obj, float):
            if math.isfinite(obj):
                return obj
            return {"$float": repr(obj)}          # nan / inf / -inf, kept out of the JSON text
        if isinstance(obj, dict):
            items = []
            for k, v in obj.items():
                if not isinstance(k, _KEY_TYPES) or (isinstance(k, float) and not math.isfinite(k)):
                    raise TypeError(f"engine.save: dict key {k!r} at {'.'.join(path) or 'root'} has type "
                                    f"{type(k).__name__}; keys must be str, int, finite float, bool or None")
                items.append([k, self.encode(v, path + [str(k)])])
            return {"$dict": items}
        if isinstance(obj, (list, tuple)):
            enc = [self.encode(v, path + [str(i)]) for i, v in enumerate(obj)]
            return {"$tuple": enc} if isinstance(obj, tuple) else enc
        if hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict"):
            # torch.save(model, f) pickles the whole object; we never pickle (a checkpoint cannot run
            # code when loaded), so say what to save instead of only that this type is refused
            kind = type(obj).__name__
            raise TypeError(
                f"engine.save: cannot store a whole {kind} object at {'.'.join(path) or 'root'} (torch.save "
                f"pickles it; dptrain files hold no pickle). Save its state instead: "
                f"engine.save(obj.state_dict(), f), and to load, build the {kind} again and call "
                f".load_state_dict(engine.load(f))")
        raise TypeError(f"engine.save: cannot store {type(obj).__name__} at {'.'.join(path) or 'root'}; "
                        "use Tensors, arrays, dicts, lists, tuples and JSON scalars (no pickle)")


def _digest(arrays: dict, structure: str | None = None) -> str:
    """sha256 of every array (name, dtype, shape, bytes) and, from format 2 on, of the structure
    JSON: a flipped byte in a Keras model's architecture is corruption too, not a different model."""
    h = hashlib.sha256()
    if structure is not None:
        h.update(structure.encode())
    for name in sorted(arrays):
        a = arrays[name]
        h.update(name.encode())
        h.update(str(a.dtype.str).encode() + str(a.shape).encode())
        a = a if a.flags.c_contiguous else a.copy(order="C")
        h.update(a.reshape(-1).view(np.uint8))
    return h.hexdigest()


def _fsync_dir(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _is_file(f) -> bool:
    """A binary file object (torch.save / torch.load accept one: `with open(p, 'wb') as f:
    torch.save(model.state_dict(), f)` is the word-language-model example's idiom)."""
    return hasattr(f, "write") or hasattr(f, "read")


def save(obj, path) -> None:
    """Write `obj` to `path` atomically as safetensors + JSON metadata. `path` may also be a
    binary file object opened for writing; the bytes are then written to it (not atomically:
    the caller owns that file)."""
    from safetensors.numpy import save as save_bytes, save_file
    enc = _Encoder()
    structure = enc.encode(obj, [])
    struct_text = json.dumps(structure, separators=(",", ":"), allow_nan=False)
    metadata = {
        _META_FORMAT: f"{FORMAT_NAME}/{FORMAT_VERSION}",
        _META_STRUCT: struct_text,
        _META_DIGEST: _digest(enc.arrays, struct_text),
    }
    if _is_file(path):
        path.write(save_bytes(enc.arrays, metadata=metadata))
        return
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        save_file(enc.arrays, tmp, metadata=metadata)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(directory)


class _Decoder:
    def __init__(self, arrays, device, path):
        self.arrays, self.device, self.path = arrays, device, path

    def _get(self, name):
        if name not in self.arrays:
            raise CheckpointFormatError(f"{self.path}: structure refers to missing array {name!r}")
        return self.arrays[name]

    def decode(self, node):
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if not isinstance(node, dict):
            return node
        if "$dict" in node:
            return {k: self.decode(v) for k, v in node["$dict"]}
        if "$tuple" in node:
            return tuple(self.decode(v) for v in node["$tuple"])
        if "$array" in node:
            a = self._get(node["$array"])
            if self.device not in (None, "cpu"):
                from .backend import to_device
                a = to_device(a, self.device)
            return a
        if "$tensor" in node:
            from .tensor import Tensor
            return Tensor(self._get(node["$tensor"]), requires_grad=node.get("requires_grad", False),
                          device=self.device)
        if "$scalar" in node:
            return self._get(node["$scalar"])[()]
        if "$float" in node:
            return float(node["$float"])
        raise CheckpointFormatError(f"{self.path}: unknown structure node {sorted(node)}")


def _read_bytes(data: bytes):
    """(metadata, arrays) of a safetensors file held in memory (safe_open wants a path)."""
    from safetensors.numpy import load as load_bytes
    n = int.from_bytes(data[:8], "little")
    if len(data) < 8 + n:
        raise ValueError("header runs past the end of the data")
    meta = json.loads(data[8:8 + n].decode()).get("__metadata__") or {}
    return meta, load_bytes(data)


def load(path, device=None, verify: bool = True, map_location=None, weights_only=None):
    """Read a file written by `save` (a path, or a binary file object as torch.load takes).
    Arrays come back as numpy arrays (on `device` if given), Tensors as Tensors. verify=False
    skips the checksum (saves one pass over the data)."""
    from safetensors import safe_open
    # torch.load(path, map_location=...): a device string / torch-style device; weights_only is
    # always true here (nothing but arrays and JSON is ever read)
    if device is None and map_location is not None and not callable(map_location) \
            and not isinstance(map_location, dict):
        device = str(map_location)
    if _is_file(path):
        data = path.read()
        path = getattr(path, "name", "<file object>")
        try:
            meta, arrays = _read_bytes(data)
        except Exception as e:
            raise CheckpointFormatError(
                f"{path}: not a readable checkpoint ({len(data)} bytes; {type(e).__name__}: {e}); the "
                "file is truncated or corrupt - use an earlier checkpoint") from None
    else:
        path = os.fspath(path)
        if os.path.isdir(path):
            raise IsADirectoryError(f"{path} is a directory; give the saved file inside it (e.g. {path}/model.keras)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        try:
            with safe_open(path, framework="np") as f:
                meta = f.metadata() or {}
                arrays = {k: f.get_tensor(k) for k in f.keys()}
        except CheckpointFormatError:
            raise
        except Exception as e:   # SafetensorError, OSError, ValueError, ...: all mean "not intact"
            size = os.path.getsize(path)
            raise CheckpointFormatError(
                f"{path}: not a readable checkpoint ({size} bytes; {type(e).__name__}: {e}); the file is "
                "truncated or corrupt - use an earlier checkpoint") from None
    fmt = meta.get(_META_FORMAT, "")
    if not fmt.startswith(FORMAT_NAME + "/"):
        raise CheckpointFormatError(
            f"{path}: a safetensors file but not a dptrain checkpoint (no {_META_FORMAT} metadata); "
            "read it with safetensors.numpy.load_file instead")
    version = fmt.split("/", 1)[1]
    if version not in ("1", str(FORMAT_VERSION)):
        raise CheckpointFormatError(f"{path}: checkpoint format version {version}, this dptrain reads "
                                    f"versions 1 to {FORMAT_VERSION}")
    if verify:
        want = meta.get(_META_DIGEST)
        got = _digest(arrays, meta.get(_META_STRUCT, "") if version != "1" else None)
        if want != got:
            raise CheckpointFormatError(f"{path}: contents do not match their checksum (corrupt file); "
                                        "use an earlier checkpoint or save again")
    try:
        structure = json.loads(meta[_META_STRUCT])
    except (KeyError, ValueError) as e:
        raise CheckpointFormatError(f"{path}: structure metadata is missing or not valid JSON ({e})") from None
    return _Decoder(arrays, device, path).decode(structure)
