"""Two-level ("hierarchical", 2-D) ring collectives for jobs that span several hosts.

A flat ring over N ranks on H hosts sends 2(N-1)/N of the buffer over every link, and
with block placement one link per host crosses the network; with L ranks per host
that is nearly 2x the buffer leaving each host, and 2(N-1) latency steps.  The
two-level version (Horovod's hierarchical all-reduce, Chainer's two-dimensional
communicator) reduces inside each host first, so each of the L ranks of a host carries
only 1/L of the buffer across hosts, in parallel:

    reduce-scatter inside the host   (L ranks, chunk i -> local rank i)
    all-reduce of chunk i across hosts (the H ranks with local index i)
    all-gather inside the host

Bytes leaving a host: 2(H-1)/H of the buffer instead of 2(N-1)/N; ring steps:
2(L-1) + 2(H-1) instead of 2(N-1).  The same pieces give a reduce-scatter and an
all-gather whose shards are the flat ones (rank r owns chunk r of `bounds`), so
ZeRO's sharded optimizer is unchanged: the per-host chunk of local index i is the
union of the flat chunks owned by the ranks with local index i, one span per host.

Determinism is the ring's: every chunk is reduced once, by its owner, in a fixed order,
and copied to the others, so all ranks hold the same bytes.

Used when every host runs the same number (>= 2) of ranks and there are >= 2 hosts;
`DPTRAIN_COMM_HIERARCHICAL=0` turns it off (every rank must agree; the fingerprint
check says so if they do not).
"""

from __future__ import annotations

import os
from typing import Callable, List, Optional, Sequence

from .errors import CommError
from .ring import ring_pass
from .transport import Deadline, PeerInfo, Request, Transport


def enabled() -> bool:
    """DPTRAIN_COMM_HIERARCHICAL: on unless 0/false/no/off; anything else is an error, not a guess."""
    raw = os.environ.get("DPTRAIN_COMM_HIERARCHICAL", "1").strip().lower()
    if raw in ("1", "true", "yes", "on", ""):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise CommError(f"DPTRAIN_COMM_HIERARCHICAL={os.environ['DPTRAIN_COMM_HIERARCHICAL']!r}: expected 1 or 0 "
                    "(true/false, yes/no, on/off)")


class GroupTransport:
    """A subset of a transport's ranks seen as a world of its own (rank and size within the
    group), so the ring code runs unchanged on one host's ranks or on one rank per host."""

    def __init__(self, tp: Transport, ranks: Sequence[int]):
        self._tp = tp
        self.ranks = list(ranks)
        self.rank = self.ranks.index(tp.rank)
        self.size = len(self.ranks)
        self.strict_send_buffers = tp.strict_send_buffers

    def isend(self, peer: int, data, tag: int) -> Request:
        return self._tp.isend(self.ranks[peer], data, tag)

    def irecv(self, peer: int, nbytes: int, tag: int, into=None, xp=None) -> Request:
        return self._tp.irecv(self.ranks[peer], nbytes, tag, into=into, xp=xp)

    def wait(self, req: Request, deadline: Deadline, context: str) -> None:
        self._tp.wait(req, deadline, context)

    def wait_all(self, reqs: Sequence[Request], deadline: Deadline, context: str) -> None:
        self._tp.wait_all(reqs, deadline, context)

    def release(self, req: Request) -> None:
        self._tp.release(req)


class HostGrid:
    """The job's ranks as hosts x local index: `hosts[h][i]` is the global rank with local index
    i on host h (hosts ordered by their lowest rank, ranks within a host ascending)."""

    def __init__(self, tp: Transport, hosts: List[List[int]]):
        self.hosts = hosts
        self.h = next(h for h, ranks in enumerate(hosts) if tp.rank in ranks)
        self.i = hosts[self.h].index(tp.rank)
        self.local = GroupTransport(tp, hosts[self.h])
        self.cross = GroupTransport(tp, [ranks[self.i] for ranks in hosts])

    @staticmethod
    def of(tp: Transport, peers: Sequence[PeerInfo]) -> Optional["HostGrid"]:
        """The grid when the two-level collectives apply (>= 2 hosts, the same >= 2 ranks on each)."""
        by_host: dict = {}
        for p in sorted(peers, key=lambda p: p.rank):
            by_host.setdefault((p.host, p.boot_id), []).append(p.rank)
        hosts = list(by_host.values())
        if len(hosts) < 2 or len({len(ranks) for ranks in hosts}) != 1 or len(hosts[0]) < 2:
            return None
        return HostGrid(tp, hosts)

    def describe(self) -> str:
        return f"{len(self.hosts)} hosts x {len(self.hosts[0])} ranks"

    def spans(self, bounds: Sequence[int]):
        """(local chunks, cross chunks) over the flat shards `bounds` (rank r owns [b[r], b[r+1])):
        local chunk i = the shards of local index i on every host; cross chunk h = host h's one."""
        def shard(r):
            return (bounds[r], bounds[r + 1])
        local = [[shard(ranks[i]) for ranks in self.hosts] for i in range(len(self.hosts[0]))]
        cross = [[shard(ranks[self.i])] for ranks in self.hosts]
        return local, cross


def grid_pass(grid: HostGrid, buf, bounds: Sequence[int], *, deadline: Deadline, context: str,
              tags: Sequence[int], reduce: Optional[Callable] = None, do_rs: bool = False,
              do_ag: bool = False, on_owned: Optional[Callable] = None, **kw) -> None:
    """`ring_pass` over the whole job in two levels: the same result, shards by `bounds`.

    tags: three distinct message tags (inside the host before, across hosts, inside after)."""
    local, cross = grid.spans(bounds)
    if do_rs:
        ring_pass(grid.local, buf, local, deadline=deadline, context=context, tag=tags[0], reduce=reduce,
                  do_rs=True, **kw)
    ring_pass(grid.cross, buf, cross, deadline=deadline, context=context, tag=tags[1], reduce=reduce,
              do_rs=do_rs, do_ag=do_ag, on_owned=on_owned, **kw)
    if do_ag:
        ring_pass(grid.local, buf, local, deadline=deadline, context=context, tag=tags[2], do_ag=True, **kw)
