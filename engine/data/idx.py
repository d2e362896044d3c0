"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

IDX is: two zero bytes, one type byte, one byte with the number of dimensions,
then one big-endian uint32 per dimension, then the values in C order (big-endian
for multi-byte types).  Files are usually gzip-compressed; the reader detects
gzip by its magic bytes, not by the file name, so a renamed file still loads.

Every structural problem (bad magic, unknown type, truncated header or data,
trailing garbage, truncated gzip stream) raises `IDXFormatError` naming the file,
because a silently short dataset is much worse than a crash.
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

__all__ = ["IDXFormatError", "read_idx", "write_idx", "IDX_DTYPES"]

# type byte -> numpy dtype (big-endian as stored in the file)
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {v.newbyteorder("=") if v.itemsize > 1 else v: k for k, v in IDX_DTYPES.items()}

_GZIP_MAGIC = b"\x1f\x8b"


class IDXFormatError(ValueError):
    """The file is not a complete, well-formed IDX file."""


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        head = f.read(2)
        f.seek(0)
        if head != _GZIP_MAGIC:
            return f.read()
        try:
            with gzip.GzipFile(fileobj=f, mode="rb") as gz:
                return gz.read()
        except (EOFError, OSError, zlib.error) as e:
            raise IDXFormatError(
                f"{path}: the gzip stream is truncated or corrupt ({e}); delete the file and "
                "download it again") from None


def read_idx(path, expect_ndim: int | None = None, expect_shape: tuple | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip) into a native-endian numpy array.

    expect_ndim / expect_shape: optional checks (None entries in expect_shape match any size).
    """
    path = os.fspath(path)
    buf = _read_bytes(path)
    if len(buf) < 4:
        raise IDXFormatError(f"{path}: file is {len(buf)} bytes, too short for an IDX header (truncated?)")
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0:
        raise IDXFormatError(
            f"{path}: bad magic {buf[:4].hex()} (IDX files start with two zero bytes); "
            "this is not an IDX file")
    if code not in IDX_DTYPES:
        raise IDXFormatError(f"{path}: unknown IDX element type 0x{code:02x}")
    if ndim == 0:
        raise IDXFormatError(f"{path}: IDX header declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(buf) < header_len:
        raise IDXFormatError(f"{path}: truncated header: {ndim} dimensions need {header_len} bytes, "
                             f"file has {len(buf)}")
    dims = struct.unpack(">" + "I" * ndim, buf[4:header_len])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    have = len(buf) - header_len
    if have < expected:
        raise IDXFormatError(
            f"{path}: truncated data: shape {tuple(dims)} needs {expected} bytes after the header, "
            f"found {have}; the file is incomplete, delete it and download it again")
    if have > expected:
        raise IDXFormatError(f"{path}: {have - expected} unexpected trailing bytes after the data of "
                             f"shape {tuple(dims)}")
    if expect_ndim is not None and ndim != expect_ndim:
        raise IDXFormatError(f"{path}: expected a {expect_ndim}-D IDX array, found shape {tuple(dims)}")
    if expect_shape is not None:
        if len(expect_shape) != ndim or any(e is not None and e != d for e, d in zip(expect_shape, dims)):
            raise IDXFormatError(f"{path}: expected shape {tuple(expect_shape)}, found {tuple(dims)}")
    arr = np.frombuffer(buf, dtype=dtype, count=expected // dtype.itemsize, offset=header_len)
    arr = arr.reshape(dims)
    if dtype.itemsize > 1:
        arr = arr.astype(dtype.newbyteorder("="))
    else:
        # frombuffer over immutable bytes is read-only; give the caller an owned, writable array
        arr = arr.copy()
    return arr


def write_idx(path, array, compress: bool | None = None) -> None:
    """Write `array` as IDX (gzip when compress, default: path ends with .gz).

    The gzip header carries no file name and mtime 0, so the output is byte-for-byte
    reproducible (the embedded subset's sha256 depends on that).
    """
    path = os.fspath(path)
    arr = np.ascontiguousarray(array)
    key = arr.dtype.newbyteorder("=") if arr.dtype.itemsize > 1 else arr.dtype
    if key not in _CODE_OF:
        raise TypeError(f"IDX cannot store dtype {arr.dtype}")
    code = _CODE_OF[key]
    payload = (bytes([0, 0, code, arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape)
               + arr.astype(IDX_DTYPES[code], copy=False).tobytes())
    if compress is None:
        compress = path.endswith(".gz")
    if compress:
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    with open(path, "wb") as f:
        f.write(payload)
