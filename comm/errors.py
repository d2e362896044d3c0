"""Exceptions raised by the comm layer.

Every failure of a collective surfaces as a `CommError` (or a subclass) with one
readable message that names the ranks involved and what to do about it, so a
training script can catch one type and the logs say which process to look at.
"""

from __future__ import annotations


class CommError(RuntimeError):
    """Any failure of the communication layer (bad setup, lost peer, protocol error)."""


class CommTimeoutError(CommError, TimeoutError):
    """A wait ran past its deadline; the message names the rank that was being waited for.

    The same facts travel as attributes for launchers, which gather every rank's view to
    name the rank that never arrived (the one waited for may itself be waiting on it):
    ``seq`` / ``collective``: the call that timed out (None outside a collective);
    ``waiting_for``: world ranks this rank was waiting on; ``timeout``: the deadline in s.
    """

    seq = None
    collective = None
    waiting_for: tuple = ()
    timeout = None


class CollectiveMismatchError(CommError):
    """Ranks called different collectives (or the same one with different shape/dtype/op).

    Raised on every rank of the collective, with the fingerprints of both sides.
    """


class CommSetupError(CommError):
    """The processes cannot form the job the launcher described (e.g. MPI without the process
    manager's PMI, so every rank is alone); the same launch would fail the same way again."""


class PeerFailureError(CommError):
    """A peer process died, disconnected, closed its communicator early, or aborted."""


__all__ = ["CommError", "CommSetupError", "CommTimeoutError", "CollectiveMismatchError", "PeerFailureError"]
