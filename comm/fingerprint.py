"""The fingerprint every collective exchanges before moving data.

A fingerprint is (call number, collective, op, dtype, shape, root, algorithm)
packed with msgpack into a fixed 64-byte record.  All ranks allgather their
records first (a few bytes per rank), so a rank that called a different
collective, or the same one with another shape or dtype, is caught on every rank
before any buffer is touched, instead of hanging or summing garbage.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import msgpack
import numpy as np

from .errors import CollectiveMismatchError, CommError

RECORD_BYTES = 64


_KINDS = ("allreduce", "broadcast", "allgather", "reduce_scatter", "barrier", "broadcast_obj", "allgather_obj")
_OPS = ("", "sum", "mean", "max", "min", "bf16_sum")   # append only: the index travels
_ALGOS = ("", "ring", "native", "shared", "hierarchical")


def _code(value: str, table: tuple):
    """Small int for a known name (keeps the record short), the name itself otherwise."""
    return table.index(value) if value in table else value


def _name(value, table: tuple) -> str:
    return table[value] if isinstance(value, int) and 0 <= value < len(table) else str(value)


@dataclass(frozen=True)
class Fingerprint:
    seq: int
    kind: str
    op: str = ""
    dtype: str = ""
    shape: Optional[tuple] = None
    root: int = -1
    algorithm: str = ""
    segment: int = 0  # ring segment size: ranks must cut messages alike
    small: int = 0    # all-reduce small-array threshold: ranks must pick the same path
    buffer: int = -1  # which Communicator.alloc buffer (allocation order, equal on every rank)

    def encode(self) -> bytes:
        shape: object = list(self.shape) if self.shape is not None else None
        fields = [self.seq, _code(self.kind, _KINDS), _code(self.op, _OPS), self.dtype, shape, self.root,
                  _code(self.algorithm, _ALGOS), self.segment, self.small, self.buffer]
        body = msgpack.packb(fields, use_bin_type=True)
        if len(body) > RECORD_BYTES - 1 and self.shape is not None:
            # Long shapes travel as (ndim, element count, crc) so the record stays fixed-size.
            nelem = 1
            for d in self.shape:
                nelem = (nelem * int(d)) & 0xFFFFFFFFFFFFFFFF
            digest = zlib.crc32(repr(tuple(self.shape)).encode())
            fields[4] = ["#", len(self.shape), nelem, digest]
            body = msgpack.packb(fields, use_bin_type=True)
        if len(body) > RECORD_BYTES - 1:
            raise CommError(f"fingerprint of {self.kind} does not fit in {RECORD_BYTES} bytes")
        return bytes([len(body)]) + body + bytes(RECORD_BYTES - 1 - len(body))

    @staticmethod
    def decode(record: bytes) -> "Fingerprint":
        n = record[0]
        if n == 0 or n > RECORD_BYTES - 1:
            raise CommError("received a malformed collective fingerprint (protocol error)")
        try:
            seq, kind, op, dtype, shape, root, algorithm, segment, small, buffer = msgpack.unpackb(
                bytes(record[1:1 + n]), raw=False, max_bin_len=RECORD_BYTES, max_str_len=RECORD_BYTES,
                max_array_len=RECORD_BYTES, max_map_len=0)
        except Exception as exc:  # noqa: BLE001 - any decode failure is a protocol error
            raise CommError(f"received a malformed collective fingerprint ({exc})") from None
        return Fingerprint(seq, _name(kind, _KINDS), _name(op, _OPS), dtype,
                           tuple(shape) if shape is not None else None, root, _name(algorithm, _ALGOS),
                           segment, small, buffer)

    def describe(self, settings: bool = False) -> str:
        """Readable form; settings=True adds the segment / small-array settings."""
        parts = []
        if self.op:
            parts.append(f"op={self.op}")
        if self.dtype:
            try:
                dtype = np.dtype(self.dtype).name  # recorded as the compact dtype.str ("<f4")
            except TypeError:
                dtype = self.dtype
            parts.append(f"dtype={dtype}")
        if self.shape is not None:
            if self.shape and self.shape[0] == "#":
                parts.append(f"shape=<{self.shape[1]}-d, {self.shape[2]} elements, crc {self.shape[3]:08x}>")
            else:
                parts.append(f"shape={tuple(self.shape)}")
        if self.root >= 0:
            parts.append(f"root={self.root}")
        if self.algorithm:
            parts.append(f"algorithm={self.algorithm}")
        if self.buffer >= 0:
            parts.append(f"alloc buffer #{self.buffer}")
        if settings:
            parts.append(f"DPTRAIN_COMM_SEGMENT_BYTES={self.segment}")
            parts.append(f"DPTRAIN_COMM_SMALL_BYTES={self.small}")
        return f"{self.kind} #{self.seq} ({', '.join(parts)})"


def _ranks(ranks: Sequence[int]) -> str:
    return ("rank " if len(ranks) == 1 else "ranks ") + ", ".join(str(r) for r in ranks)


def check_records(records: Sequence[bytes], me: int) -> None:
    """Raise CollectiveMismatchError (identically on every rank) unless all records agree."""
    if all(rec == records[0] for rec in records):
        return
    groups: dict = {}
    for rank, rec in enumerate(records):
        groups.setdefault(bytes(rec), []).append(rank)
    # Order groups by their lowest rank so every rank prints the same message.
    ordered = sorted(groups.items(), key=lambda kv: kv[1][0])
    decoded = []
    for rec, ranks in ordered:
        try:
            decoded.append((Fingerprint.decode(rec), ranks))
        except CommError:
            decoded.append((None, ranks))
    # When only the settings differ, show them (otherwise they are noise).
    plain = {fp.describe() for fp, _ in decoded if fp is not None}
    settings = len(plain) == 1 and all(fp is not None for fp, _ in decoded)
    lines = [f"{_ranks(ranks)} called " + (fp.describe(settings) if fp is not None else "<unreadable fingerprint>")
             for fp, ranks in decoded]
    fix = ("Every rank must call the same collectives in the same order with the same shape, dtype and "
           "op; nothing was exchanged.")
    algos = {fp.algorithm for fp, _ in decoded if fp is not None}
    if len(algos) > 1 and len({(fp.kind, fp.shape, fp.dtype, fp.op) for fp, _ in decoded if fp is not None}) == 1:
        fix = ("The ranks chose different algorithms for the same call: set DPTRAIN_COMM_HIERARCHICAL and "
               "DPTRAIN_COMM_SHM alike on every rank (and pass shared alloc() buffers on all or none); "
               "nothing was exchanged.")
    raise CollectiveMismatchError(f"collective mismatch seen by rank {me}: " + "; ".join(lines) + ". " + fix)
