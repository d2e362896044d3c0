"""Wire format between workers and the coordinator: msgpack + HMAC-SHA256, with a schema.

Why: the coordinator listens on a TCP port of the launching machine.  Anything that
connects must prove it knows the per-job secret (HMAC over the exact payload bytes),
cannot make us allocate unbounded memory (size limits checked before decoding and
enforced again by msgpack's own limits) and cannot smuggle unexpected fields
(every message type has a fixed set of fields and types).  No pickle anywhere.

A message travels as two ZeroMQ frames: ``[payload, mac]`` where ``payload`` is a
msgpack map::

    {"v": 1, "type": "heartbeat", "rank": 0, "attempt": 0, "seq": 17, "ts": 1712.3, "body": {...}}

and ``mac = HMAC-SHA256(secret, payload)``.  Replies use the same framing with
type ``reply`` and carry ``re`` (the seq they answer), ``ok`` and ``error``.
"""
from __future__ import annotations

import hashlib
import hmac
import time

import msgpack

__all__ = ["PROTOCOL_VERSION", "MAX_MESSAGE_BYTES", "ProtocolError", "encode", "decode", "make_request",
           "make_reply", "REQUEST_TYPES"]

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024          # a heartbeat is ~300 bytes (~2 KB with its stack); room for error tails
DIGEST_SIZE = hashlib.sha256().digest_size

_NUM = (int, float)
_OPT_INT = (int, type(None))
# type -> (required fields, optional fields); values are accepted Python types after decoding.
REQUEST_TYPES: dict[str, tuple[dict[str, tuple], dict[str, tuple]]] = {
    "register": ({"host": (str,), "pid": (int,), "world_size": (int,)},
                 {"local_rank": _OPT_INT, "node_rank": _OPT_INT, "gpu": _OPT_INT, "backend": (str,)}),
    "heartbeat": ({}, {"step": _OPT_INT, "epoch": _OPT_INT, "resources": (dict,), "comm": (dict,),
                       "where": (list,), "honours_stop": (bool,)}),
    "checkpoint_query": ({"step": (int,)}, {"final": (bool,), "epoch": _OPT_INT}),
    "checkpoint_done": ({"step": (int,), "path": (str,), "sha256": (str,)}, {"epoch": _OPT_INT}),
    "done": ({}, {"status": (str,), "summary": (dict,)}),
    "error": ({"message": (str,)}, {"traceback": (str,)}),
    "timeout": ({"message": (str,), "seq": (int,), "collective": (str,), "timeout_s": _NUM},
                {"waiting_for": (list,)}),
}
_ENVELOPE = {"v": (int,), "type": (str,), "rank": (int,), "attempt": (int,), "seq": (int,), "ts": _NUM,
             "body": (dict,)}
_REPLY = {"v": (int,), "type": (str,), "re": (int,), "ok": (bool,), "error": (str, type(None)),
          "body": (dict,), "ts": _NUM}


class ProtocolError(Exception):
    """A message was refused; `reason` is a short machine-friendly tag, str(e) the explanation."""

    def __init__(self, reason: str, detail: str):
        self.reason = reason
        super().__init__(detail)


def _key(secret: bytes | str) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode()
    if not secret:
        raise ValueError("the job secret is empty; the launcher sets DPTRAIN_JOB_SECRET")
    return secret


def encode(secret: bytes | str, message: dict, max_bytes: int = MAX_MESSAGE_BYTES) -> list[bytes]:
    """msgpack `message` and sign it; refuses to produce a message the peer would reject for size."""
    payload = msgpack.packb(message, use_bin_type=True)
    if len(payload) > max_bytes:
        raise ProtocolError("too_large", f"message of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    mac = hmac.new(_key(secret), payload, hashlib.sha256).digest()
    return [payload, mac]


def decode(secret: bytes | str, frames: list[bytes], max_bytes: int = MAX_MESSAGE_BYTES,
           reply: bool = False) -> dict:
    """Check size, signature, then decode and validate the schema; raise ProtocolError."""
    if len(frames) != 2:
        raise ProtocolError("bad_frames", f"expected 2 frames (payload, mac), got {len(frames)}")
    payload, mac = frames
    if len(payload) > max_bytes:
        raise ProtocolError("too_large", f"message of {len(payload)} bytes exceeds the {max_bytes}-byte limit")
    if len(mac) != DIGEST_SIZE:
        raise ProtocolError("bad_mac", "signature has the wrong length")
    expect = hmac.new(_key(secret), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(expect, mac):
        raise ProtocolError("bad_mac", "signature does not match (wrong DPTRAIN_JOB_SECRET?)")
    try:
        msg = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True,
                              max_str_len=max_bytes, max_bin_len=max_bytes,
                              max_array_len=4096, max_map_len=1024, max_ext_len=0)
    except Exception as e:  # msgpack raises several unrelated types on malformed input
        raise ProtocolError("bad_encoding", f"payload is not valid msgpack: {type(e).__name__}: {e}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_schema", "payload must be a map")
    if msg.get("v") != PROTOCOL_VERSION:
        raise ProtocolError("bad_version", f"protocol version {msg.get('v')!r}, expected {PROTOCOL_VERSION}")
    if reply:
        _check_fields(msg, _REPLY, {}, "reply")
        return msg
    _check_fields(msg, _ENVELOPE, {}, "envelope")
    kind = msg["type"]
    if kind not in REQUEST_TYPES:
        raise ProtocolError("bad_type", f"unknown message type {kind!r}")
    required, optional = REQUEST_TYPES[kind]
    _check_fields(msg["body"], required, optional, kind)
    if msg["rank"] < 0:
        raise ProtocolError("bad_schema", f"rank must be >= 0, got {msg['rank']}")
    return msg


def _check_fields(obj: dict, required: dict, optional: dict, what: str) -> None:
    for key, types in required.items():
        if key not in obj:
            raise ProtocolError("bad_schema", f"{what}: missing field {key!r}")
    for key, value in obj.items():
        types = required.get(key) or optional.get(key)
        if types is None:
            raise ProtocolError("bad_schema", f"{what}: unexpected field {key!r}")
        if isinstance(value, bool) and bool not in types:
            raise ProtocolError("bad_schema", f"{what}: field {key!r} has type bool")
        if not isinstance(value, types):
            raise ProtocolError("bad_schema", f"{what}: field {key!r} has type {type(value).__name__}")


def make_request(kind: str, rank: int, attempt: int, seq: int, body: dict | None = None) -> dict:
    return {"v": PROTOCOL_VERSION, "type": kind, "rank": int(rank), "attempt": int(attempt), "seq": int(seq),
            "ts": time.time(), "body": body or {}}


def make_reply(re_seq: int, ok: bool = True, error: str | None = None, body: dict | None = None) -> dict:
    return {"v": PROTOCOL_VERSION, "type": "reply", "re": int(re_seq), "ok": bool(ok), "error": error,
            "body": body or {}, "ts": time.time()}
