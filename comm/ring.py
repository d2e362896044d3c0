"""Ring collectives written once over the point-to-point `Transport`.

All-reduce is a reduce-scatter followed by an all-gather over `size` chunks.
Rank r sends to r+1 and receives from r-1.  Each chunk moves in segments; a
received segment is reduced and immediately forwarded, so sends, receives and
additions of consecutive segments overlap, and the two phases run as one
continuous pipeline.

Determinism: chunk c is summed in the fixed order the ring visits the ranks (the
local value on the left of each addition), whatever the timing; after the
all-gather every rank holds the owner's bytes, so results are bit-identical on
all ranks.

Schedule for rank r (n ranks):
  reduce-scatter step s = 0..n-2: send chunk r-s-1, receive chunk r-s-2, reduce;
      after the last step rank r owns the fully reduced chunk r.
  all-gather step t = 0..n-2: send chunk r-t, receive chunk r-t-1 into place.
A segment received at any step except the last all-gather step is forwarded to
the right right away; that forward is exactly the next step's send.
"""

from __future__ import annotations

from collections import deque
from typing import Callable, List, Optional, Sequence

import numpy as np

from .transport import Deadline, Request, Transport

REDUCE, COPY = 0, 1
DEFAULT_SEGMENT_BYTES = 1 << 20
DEFAULT_DEPTH = 4


def _pieces(chunks, seg_elems: int) -> List[List[tuple]]:
    """The segments each chunk travels in, identical on sender and receiver.

    `chunks` is n+1 offsets (chunk c = [b[c], b[c+1])), or n lists of (lo, hi) spans when a
    chunk is scattered over the buffer (the hierarchical all-reduce's per-host chunks).  Offset
    chunks are cut into the same number of near-equal segments (the longest chunk decides);
    span chunks cut each span into segments of at most `seg_elems`."""
    if chunks and not isinstance(chunks[0], (list, tuple)):
        bounds = chunks
        n = len(bounds) - 1
        nseg = max(1, -(-max(bounds[c + 1] - bounds[c] for c in range(n)) // seg_elems))
        return [[(bounds[c] + (bounds[c + 1] - bounds[c]) * k // nseg,
                  bounds[c] + (bounds[c + 1] - bounds[c]) * (k + 1) // nseg) for k in range(nseg)]
                for c in range(n)]
    out = []
    for spans in chunks:
        segs = []
        for lo, hi in spans:
            k = max(1, -(-(hi - lo) // seg_elems))
            segs += [(lo + (hi - lo) * j // k, lo + (hi - lo) * (j + 1) // k) for j in range(k)]
        out.append(segs)
    return out


def _bytes(buf):
    return buf.view(np.uint8) if buf.dtype != np.uint8 else buf


def ring_pass(tp: Transport, buf, bounds: Sequence[int], *, deadline: Deadline, context: str, tag: int,
              reduce: Optional[Callable] = None, do_rs: bool = False, do_ag: bool = False,
              on_owned: Optional[Callable] = None, seg_bytes: int = DEFAULT_SEGMENT_BYTES,
              depth: int = DEFAULT_DEPTH, sync: Optional[Callable] = None, xp=None) -> None:
    """Run reduce-scatter and/or all-gather in place on the 1-D contiguous `buf`.

    bounds: n+1 element offsets (chunk c is buf[bounds[c]:bounds[c+1]]), or n lists of
    (lo, hi) element spans (chunk c is the union of its spans).
    reduce: in-place ufunc for the reduce-scatter (fn(a, b, out=a)).
    on_owned: applied to each segment of this rank's own chunk once fully reduced (mean).
    sync: called before sending device memory (waits for pending GPU kernels).
    """
    n, r = tp.size, tp.rank
    if n == 1:
        if do_rs and on_owned is not None:
            for a, b in _pieces(bounds, max(1, buf.size)):
                if b > a:
                    on_owned(buf[a:b])
        return
    item = buf.itemsize
    b8 = _bytes(buf)
    pieces = _pieces(bounds, max(1, seg_bytes // item))
    right, left = (r + 1) % n, (r - 1) % n

    sends: List[Request] = []
    # Reduce-scatter sends per chunk: the all-gather later receives into those same chunks.
    rs_sends: dict = {}

    def send(c: int, a: int, b: int, reduce_phase: bool) -> None:
        if sync is not None:
            sync()
        req = tp.isend(right, b8[a * item:b * item], tag)
        sends.append(req)
        if reduce_phase:
            rs_sends.setdefault(c, []).append(req)

    first = (r - 1) % n if do_rs else r
    for a, b in pieces[first]:
        if b > a:
            send(first, a, b, do_rs)

    plan = []  # (chunk, a, b, mode, forward, owned), in the order the left neighbour sends them
    if do_rs:
        for s in range(n - 1):
            c = (r - s - 2) % n
            for a, b in pieces[c]:
                if b > a:
                    plan.append((c, a, b, REDUCE, s < n - 2 or do_ag, s == n - 2))
    if do_ag:
        for t in range(n - 1):
            c = (r - t - 1) % n
            for a, b in pieces[c]:
                if b > a:
                    plan.append((c, a, b, COPY, t < n - 2, False))

    posted: deque = deque()
    nposted = 0

    def post(i: int) -> None:
        c, a, b, mode, _, _ = plan[i]
        if mode == COPY:
            # Data lands where this rank sent from during the reduce-scatter.  Causality already
            # protects those sends: the value coming back went round the ring through the right
            # neighbour, who had received our copy.  MPI's rules still want them complete, and that
            # wait is safe: the right neighbour receives them in its reduce-scatter, which never waits
            # on anything we hold.  (All-gather forwards of this chunk must not be waited for here: the
            # neighbour takes them only in a later step, a deadlock under MPI's rendezvous protocol.)
            # ZeroMQ skips the wait: its bounded shared-memory slots could deadlock it too.
            pending = rs_sends.pop(c, None)
            if pending and tp.strict_send_buffers:
                tp.wait_all(pending, deadline, context)
            posted.append(tp.irecv(left, (b - a) * item, tag, into=b8[a * item:b * item]))
        else:
            posted.append(tp.irecv(left, (b - a) * item, tag, xp=xp))

    for i, (c, a, b, mode, forward, owned) in enumerate(plan):
        while nposted < len(plan) and nposted < i + depth:
            post(nposted)
            nposted += 1
        req = posted.popleft()
        tp.wait(req, deadline, context)
        if mode == REDUCE:
            dst = buf[a:b]
            reduce(dst, req.data[:(b - a) * item].view(buf.dtype), out=dst)
            tp.release(req)
            if owned and on_owned is not None:
                on_owned(dst)
        if forward:
            send(c, a, b, mode == REDUCE)
    tp.wait_all(sends, deadline, context)


def ring_allreduce(tp: Transport, flat, reduce: Callable, *, deadline: Deadline, context: str, tag: int,
                   mean: bool = False, small_bytes: int = 0, **kw) -> None:
    """In-place all-reduce of the 1-D contiguous array `flat`.

    Arrays of at most `small_bytes` are latency-bound: they take one ring all-gather
    (n-1 hops instead of 2(n-1)) and every rank reduces the n contributions itself in
    rank order, which is just as deterministic and identical on every rank.
    """
    n = tp.size
    if n > 1 and flat.nbytes <= small_bytes:
        xp = kw.get("xp") or np
        size = flat.size
        gathered = xp.empty(n * size, dtype=flat.dtype)
        gathered[tp.rank * size:(tp.rank + 1) * size] = flat
        ring_pass(tp, gathered, [i * size for i in range(n + 1)], deadline=deadline, context=context, tag=tag,
                  do_ag=True, **kw)
        acc = gathered[:size]
        for i in range(1, n):
            reduce(acc, gathered[i * size:(i + 1) * size], out=acc)
        if mean:
            acc /= n
        flat[...] = acc
        return
    bounds = [flat.size * i // n for i in range(n + 1)]
    on_owned = None
    if mean:
        def on_owned(seg):  # noqa: E306 - divide once, on the owner, before it is gathered
            seg /= n
    ring_pass(tp, flat, bounds, deadline=deadline, context=context, tag=tag, reduce=reduce,
              do_rs=True, do_ag=True, on_owned=on_owned, **kw)


def ring_broadcast(tp: Transport, b8, root: int, *, deadline: Deadline, context: str, tag: int,
                   seg_bytes: int = DEFAULT_SEGMENT_BYTES, depth: int = DEFAULT_DEPTH,
                   sync: Optional[Callable] = None) -> None:
    """Pipelined chain broadcast of the uint8 buffer `b8` from `root` around the ring."""
    n, r = tp.size, tp.rank
    if n == 1 or b8.size == 0:
        return
    pos = (r - root) % n
    right, left = (r + 1) % n, (r - 1) % n
    nseg = max(1, -(-b8.size // seg_bytes))
    segs = [(b8.size * k // nseg, b8.size * (k + 1) // nseg) for k in range(nseg)]
    sends: List[Request] = []
    if pos == 0:
        if sync is not None:
            sync()
        for a, b in segs:
            sends.append(tp.isend(right, b8[a:b], tag))
    else:
        forward = pos < n - 1
        posted: deque = deque()
        nposted = 0
        for i, (a, b) in enumerate(segs):
            while nposted < nseg and nposted < i + depth:
                pa, pb = segs[nposted]
                posted.append(tp.irecv(left, pb - pa, tag, into=b8[pa:pb]))
                nposted += 1
            tp.wait(posted.popleft(), deadline, context)
            if forward:
                sends.append(tp.isend(right, b8[a:b], tag))
    tp.wait_all(sends, deadline, context)


def ring_allgather_bytes(tp: Transport, b8, bounds: Sequence[int], *, deadline: Deadline, context: str,
                         tag: int, **kw) -> None:
    """All-gather of variable-size byte blocks: block i = b8[bounds[i]:bounds[i+1]] comes from rank i."""
    ring_pass(tp, b8, bounds, deadline=deadline, context=context, tag=tag, do_ag=True, **kw)


def exchange_records(tp: Transport, record: bytes, *, deadline: Deadline, context: str, tag: int) -> list:
    """Every rank's fixed-size record, in rank order (the fingerprint exchange; also a barrier).

    The same ring all-gather as `ring_pass(do_ag=True)`, written out flat: it runs before
    every collective, so its latency is the floor of every call.
    """
    n, r, size = tp.size, tp.rank, len(record)
    buf = np.zeros(n * size, dtype=np.uint8)
    buf[r * size:(r + 1) * size] = np.frombuffer(record, dtype=np.uint8)
    if n > 1:
        right, left = (r + 1) % n, (r - 1) % n
        sends = []
        c = r
        for _ in range(n - 1):
            nxt = (c - 1) % n
            req = tp.irecv(left, size, tag, into=buf[nxt * size:(nxt + 1) * size])
            sends.append(tp.isend(right, buf[c * size:(c + 1) * size], tag))
            tp.wait(req, deadline, context)
            c = nxt
        tp.wait_all(sends, deadline, context)
    return [bytes(buf[i * size:(i + 1) * size]) for i in range(n)]
