"""How a DataLoader worker process sends a batch to its loader: msgpack and raw array bytes, no pickle.

The project never unpickles data (see DESIGN.md), and a batch needs nothing pickle offers: it is
numpy arrays inside tuples, lists and dicts, plus numbers and strings.  A message is one msgpack
frame - the structure, with every array replaced by a reference (dtype, shape) - followed by the raw bytes of
every array in it (their sizes are in the frame), written straight from the array's memory and
read straight into a freshly allocated one (os.write / os.readv on the pipe), so an array crosses
the pipe with no copy besides the kernel's and arrives writable, as with num_workers=0.

Types are kept exactly, so a batch is the same object tree on both sides: tuples stay tuples
(msgpack alone would turn them into lists), named tuples come back as their class (looked up in
the modules the loader process has already imported, never imported by name), numpy scalars keep
their dtype, engine Tensors come back as Tensors.  Anything else (a PIL image, a custom object) is
refused with `UnsendableError`, whose message suggests num_workers=0.
"""
from __future__ import annotations

import os
import sys

import msgpack
import numpy as np

__all__ = ["UnsendableError", "encode", "send", "recv", "pack", "unpack"]

_ARRAY, _TUPLE, _NAMEDTUPLE, _SCALAR, _TENSOR = 1, 2, 3, 4, 5


class UnsendableError(TypeError):
    """A value of a type the worker cannot send to its loader process."""


def _sendable_dtype(dtype, what):
    if dtype.hasobject or dtype.fields is not None:
        raise UnsendableError(f"{what} of dtype {dtype} (object or structured arrays cannot be sent)")


def _lookup_class(module, qualname):
    """A class already imported in this process (None if it is not)."""
    obj = sys.modules.get(module)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def encode(obj):
    """(frame bytes, arrays): the msgpack frame for `obj` and the arrays to send after it."""
    from ..tensor import Tensor
    arrays = []

    def pack_inner(value):
        return msgpack.packb(value, default=default, strict_types=True, use_bin_type=True)

    def array_ref(a):
        _sendable_dtype(a.dtype, "a numpy array")
        arrays.append(np.ascontiguousarray(a))
        return msgpack.ExtType(_ARRAY, msgpack.packb([len(arrays) - 1, a.dtype.str, list(a.shape)]))

    def default(o):
        if isinstance(o, np.ndarray):
            if type(o) is not np.ndarray:       # a subclass (np.ma.MaskedArray, np.matrix) would arrive plain
                raise UnsendableError(f"a {type(o).__module__}.{type(o).__name__} (an ndarray subclass: its extra "
                                      "state, e.g. a mask, cannot be sent; return np.asarray(...) or plain arrays)")
            return array_ref(o)
        if isinstance(o, np.generic):
            _sendable_dtype(o.dtype, "a numpy scalar")
            return msgpack.ExtType(_SCALAR, msgpack.packb([o.dtype.str, np.asarray(o).tobytes()],
                                                          use_bin_type=True))
        if isinstance(o, tuple):
            fields = getattr(type(o), "_fields", None)
            if type(o) is not tuple and isinstance(fields, tuple):
                cls = type(o)
                return msgpack.ExtType(_NAMEDTUPLE, pack_inner([cls.__module__, cls.__qualname__, list(o)]))
            return msgpack.ExtType(_TUPLE, pack_inner(list(o)))
        if isinstance(o, Tensor):
            if not isinstance(o.data, np.ndarray):
                raise UnsendableError("an engine Tensor on a GPU (CUDA does not work in forked workers: "
                                      "keep worker output on the CPU and pass device= to the DataLoader)")
            return msgpack.ExtType(_TENSOR, pack_inner([array_ref(o.data), bool(o.requires_grad)]))
        for base in (bool, int, float, str, bytes, list, dict):     # subclasses (IntEnum, OrderedDict)
            if isinstance(o, base):
                return base(o)
        if isinstance(o, (bytearray, memoryview)):
            return bytes(o)
        raise UnsendableError(f"a {type(o).__module__}.{type(o).__qualname__} object")

    try:
        frame = pack_inner(obj)
    except UnsendableError:
        raise
    except (TypeError, ValueError, OverflowError) as e:        # e.g. an int beyond 64 bits
        raise UnsendableError(f"a value msgpack cannot encode ({e})") from None
    return frame, arrays


def send(conn, obj):
    """Encode `obj` completely (so an unsendable value raises before anything is written), then write it."""
    frame, arrays = encode(obj)
    conn.send_bytes(frame)
    fd = conn.fileno()
    for a in arrays:                    # raw bytes after the frame: their sizes are in it
        view = memoryview(a.reshape(-1).view(np.uint8))
        while view:
            view = view[os.write(fd, view):]


def recv(conn, readable=None):
    """Read one message written by send(): the frame, then each array's bytes into a new array.

    readable(fd), when given, is called before every read of array bytes and returns once the pipe
    has data (or raises): the loader's timeout and its check that the worker is still alive then
    hold inside a message too, not only before it starts."""
    slots = {}

    def ext_hook(code, data):
        if code == _ARRAY:
            k, dtype, shape = msgpack.unpackb(data)
            slots[k] = np.empty(shape, dtype=np.dtype(dtype))
            return slots[k]
        if code == _SCALAR:
            dtype, raw = msgpack.unpackb(data, raw=False)
            return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(())[()]
        if code == _TUPLE:
            return tuple(unpack_inner(data))
        if code == _NAMEDTUPLE:
            module, qualname, fields = unpack_inner(data)
            cls = _lookup_class(module, qualname)
            return cls(*fields) if cls is not None and issubclass(cls, tuple) else tuple(fields)
        if code == _TENSOR:
            from ..tensor import Tensor
            arr, requires_grad = unpack_inner(data)     # its bytes arrive later, into this same array
            return Tensor(arr, requires_grad=requires_grad)
        raise ValueError(f"DataLoader worker message: unknown msgpack extension {code}")

    def unpack_inner(data):
        return msgpack.unpackb(data, ext_hook=ext_hook, raw=False, strict_map_key=False, use_list=True)

    obj = unpack_inner(conn.recv_bytes())
    fd = conn.fileno()
    for k in sorted(slots):             # straight into the new array (Connection would copy twice)
        view = memoryview(slots[k].reshape(-1).view(np.uint8))
        while view:
            if readable is not None:
                readable(fd)
            n = os.readv(fd, [view])
            if n == 0:
                raise EOFError("DataLoader worker message ended early (the worker died)")
            view = view[n:]
    return obj


def pack(msg) -> bytes:
    """A small control message (lists of ints, strings, bytes) for the worker's task pipe."""
    return msgpack.packb(msg, use_bin_type=True)


def unpack(data: bytes):
    return msgpack.unpackb(data, raw=False, use_list=True)
