"""torch.nn.utils.rnn.pad_sequence: batch variable-length sequences for the recurrent layers.

Each sequence is padded with F.pad and the results stacked, so gradients flow back to every
sequence's own rows (the padding positions get none).  PackedSequence / pack_padded_sequence
are not provided: the recurrent layers here run the whole padded batch; mask the padded steps
(or pick each sequence's last real step) instead.
"""
from __future__ import annotations

from ... import ops
from ...tensor import Tensor

__all__ = ["pad_sequence"]


def pad_sequence(sequences, batch_first: bool = False, padding_value: float = 0.0, padding_side: str = "right"):
    """List of (L_i, *) tensors -> (L_max, B, *) (or (B, L_max, *) with batch_first=True),
    padded with padding_value on the right (or the left with padding_side='left')."""
    from .. import functional as F
    if padding_side not in ("right", "left"):
        raise ValueError(f"pad_sequence: padding_side must be 'right' or 'left', got {padding_side!r}")
    seqs = [s if isinstance(s, Tensor) else Tensor(s) for s in sequences]
    if not seqs:
        raise ValueError("pad_sequence: received an empty list of sequences")
    trailing = seqs[0].shape[1:]
    for s in seqs:
        if s.ndim == 0 or s.shape[1:] != trailing:
            raise ValueError(f"pad_sequence: every sequence must be (L, *{trailing}), got shapes "
                             f"{[tuple(t.shape) for t in seqs]}")
    longest = max(s.shape[0] for s in seqs)
    padded = []
    for s in seqs:
        extra = longest - s.shape[0]
        amounts = (0, 0) * (s.ndim - 1) + ((0, extra) if padding_side == "right" else (extra, 0))
        padded.append(F.pad(s, amounts, value=padding_value) if extra else s)
    return ops.stack(padded, axis=0 if batch_first else 1)
