"""torch.nn.utils.rnn: batch variable-length sequences for the recurrent layers.

pad_sequence pads each sequence with F.pad and stacks the results, so gradients flow back to every
sequence's own rows (the padding positions get none).

PackedSequence keeps PyTorch's layout -- data (sum of lengths, *) holding step 0 of every sequence,
then step 1 of those still running, ... with the batch sorted longest first -- because ported code
reads .data and .batch_sizes directly.  Packing and unpacking are each one gather (one autodiff node)
over a (step, column) index built from batch_sizes with numpy, never a Python loop over the batch;
their backward is a plain scatter since every position is named once.  nn.RNN / LSTM / GRU take a
PackedSequence by unpacking it to the padded, time-major, longest-first batch and running it with
batch_sizes (engine.nn._rnn freezes each finished sequence's state), so h_n is each sequence's state
at its own last step, as in PyTorch.

Ties in the lengths are ordered stably (first given first); torch's sort is not stable for larger
batches, so with equal lengths sorted_indices (and .data's row order) may differ from torch's while
every unpacked result and h_n agree.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from ... import ops
from ...backend import get_array_module
from ...tensor import Tensor, from_op

__all__ = ["PackedSequence", "invert_permutation", "pack_padded_sequence", "pad_packed_sequence",
           "pad_sequence", "unpad_sequence", "pack_sequence", "unpack_sequence"]

_UNSORTED = ("`lengths` array must be sorted in decreasing order when `enforce_sorted` is True. You can pass "
             "`enforce_sorted=False` to pack_padded_sequence and/or pack_sequence to sidestep this requirement "
             "if you do not need ONNX exportability.")


def _host_ints(a):
    """A 1-D int64 numpy copy of an index/length container (list, array or Tensor, on any device)."""
    if isinstance(a, Tensor):
        a = a.numpy()
    elif hasattr(a, "get"):                      # a cupy array
        a = a.get()
    return np.asarray(a).astype(np.int64)


def _index_tensor(a):
    return Tensor(np.ascontiguousarray(a, dtype=np.int64))


def invert_permutation(permutation):
    """The permutation q with q[p[i]] = i (None stays None): unsorted_indices from sorted_indices."""
    if permutation is None:
        return None
    p = _host_ints(permutation)
    inv = np.empty_like(p)
    inv[p] = np.arange(p.size, dtype=np.int64)
    return _index_tensor(inv)


class PackedSequence(namedtuple("PackedSequence_", ["data", "batch_sizes", "sorted_indices", "unsorted_indices"])):
    """Variable-length sequences packed step by step (see the module docstring); build it with
    pack_padded_sequence / pack_sequence.  batch_sizes[t] is how many sequences are longer than t;
    sorted_indices[j] is the input position of the j-th longest sequence (None when the input was
    already sorted)."""

    __slots__ = ()

    def __new__(cls, data, batch_sizes=None, sorted_indices=None, unsorted_indices=None):
        if batch_sizes is None:                  # PackedSequence((data, batch_sizes)), as torch allows
            data, batch_sizes = data
        if not isinstance(batch_sizes, Tensor):
            batch_sizes = _index_tensor(_host_ints(batch_sizes))
        if sorted_indices is not None and not isinstance(sorted_indices, Tensor):
            sorted_indices = _index_tensor(_host_ints(sorted_indices))
        if unsorted_indices is None:
            unsorted_indices = invert_permutation(sorted_indices)
        elif not isinstance(unsorted_indices, Tensor):
            unsorted_indices = _index_tensor(_host_ints(unsorted_indices))
        return super().__new__(cls, data, batch_sizes, sorted_indices, unsorted_indices)

    def to(self, *args, **kwargs):
        """The data moved/cast; batch_sizes and the indices stay host int64 (they only steer indexing)."""
        data = self.data.to(*args, **kwargs)
        return self if data is self.data else type(self)(data, self.batch_sizes, self.sorted_indices,
                                                         self.unsorted_indices)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, index=0):
        return self.to(f"cuda:{index}")

    def double(self):
        return self.to(dtype="float64")

    def float(self):
        return self.to(dtype="float32")

    @property
    def is_cuda(self):
        return self.data.device != "cpu"


# ------------------------------------------------------------------------------------------ index plumbing


def _steps_index(batch_sizes):
    """(t, j) of every packed row in order: step t, then columns j < batch_sizes[t] of the sorted batch."""
    bs = _host_ints(batch_sizes)
    columns = np.arange(bs[0] if bs.size else 0)
    return np.nonzero(columns[None, :] < bs[:, None])


def _sorted_order(sequence):
    """sorted_indices, or the inverse of unsorted_indices when only that was given; None: already sorted."""
    if sequence.sorted_indices is not None:
        return _host_ints(sequence.sorted_indices)
    if sequence.unsorted_indices is not None:
        return _host_ints(invert_permutation(sequence.unsorted_indices).data)
    return None


def _device_index(xp, index):
    return tuple(i if isinstance(i, slice) else xp.asarray(i) for i in index)


def take_positions(x, index):
    """x[index] as one autodiff node, for an advanced index naming each position at most once: the
    backward is a plain assignment into zeros (the generic getitem pays for np.add.at)."""
    xp = get_array_module(x.data)
    index = _device_index(xp, index)
    shape = x.shape

    def backward(g):
        gx = xp.zeros(shape, dtype=g.dtype)
        gx[index] = g
        return (gx,)
    return from_op(x.data[index], (x,), backward, "take_positions")


def place_positions(data, index, shape, fill=0.0):
    """The inverse of take_positions: a `shape` array filled with `fill`, data written at index."""
    xp = get_array_module(data.data)
    index = _device_index(xp, index)
    out = xp.full(tuple(shape) + data.shape[1:], fill, dtype=data.dtype)
    out[index] = data.data
    return from_op(out, (data,), lambda g: (g[index],), "place_positions")


def packed_to_padded(sequence):
    """(padded (T, B, *) time-major in the packed (longest-first) column order, index of the packed rows).

    What the recurrent layers run on; zeros at the padding, which their frozen steps never use."""
    bs = _host_ints(sequence.batch_sizes)
    t, j = _steps_index(bs)
    return place_positions(sequence.data, (t, j), (bs.size, int(bs[0]))), (t, j)


# ------------------------------------------------------------------------------------------ the torch API


def _check_lengths(lengths, batch, steps, enforce_sorted):
    """Refuse what torch refuses (with its messages), plus lengths past the padded input, which torch
    does not check and reads out of bounds."""
    if lengths.ndim != 1:
        raise RuntimeError(f"'lengths' argument should be a 1D list or int64 tensor, got shape {lengths.shape}")
    if lengths.size != batch:
        raise RuntimeError(f"Expected `len(lengths)` to be equal to batch_size, but got {lengths.size} "
                           f"(batch_size={batch})")
    if (lengths <= 0).any():
        raise RuntimeError("Length of all samples has to be greater than 0, but found an element in 'lengths' "
                           f"that is <= 0 (lengths={lengths.tolist()})")
    if (lengths > steps).any():
        i = int(np.argmax(lengths))
        raise RuntimeError(f"pack_padded_sequence: lengths[{i}] = {int(lengths[i])} is longer than the padded "
                           f"input, which has {steps} time steps (lengths={lengths.tolist()})")
    if enforce_sorted and (np.diff(lengths) > 0).any():
        raise RuntimeError(f"{_UNSORTED} (lengths={lengths.tolist()})")


def pack_padded_sequence(input, lengths, batch_first=False, enforce_sorted=True):
    """Padded (T, B, *) (or (B, T, *) with batch_first) and each sequence's length -> PackedSequence.

    enforce_sorted=True needs the lengths in decreasing order (sorted_indices None); otherwise the
    batch is sorted here and sorted_indices / unsorted_indices record how."""
    x = input if isinstance(input, Tensor) else Tensor(input)
    if x.ndim < 2:
        raise ValueError(f"pack_padded_sequence: expected a padded input of at least 2 dims, got {x.shape}")
    steps, batch = (x.shape[1], x.shape[0]) if batch_first else (x.shape[0], x.shape[1])
    lens = _host_ints(lengths)
    _check_lengths(lens, batch, steps, enforce_sorted)
    order = None if enforce_sorted else np.argsort(-lens, kind="stable")
    sorted_lens = lens if order is None else lens[order]
    batch_sizes = (sorted_lens[None, :] > np.arange(sorted_lens[0])[:, None]).sum(axis=1)
    t, j = _steps_index(batch_sizes)
    b = j if order is None else order[j]
    data = take_positions(x, (b, t) if batch_first else (t, b))
    return PackedSequence(data, _index_tensor(batch_sizes), None if order is None else _index_tensor(order))


def pad_packed_sequence(sequence, batch_first=False, padding_value=0.0, total_length=None):
    """PackedSequence -> (padded (T, B, *) or (B, T, *), lengths), in the order the sequences were given.

    T is the longest length, or total_length (to pad back to the original size, e.g. under DataParallel)."""
    bs = _host_ints(sequence.batch_sizes)
    steps = bs.size
    if total_length is not None:
        if total_length < steps:
            raise ValueError("Expected total_length to be at least the length of the longest sequence in input, "
                             f"but got total_length={total_length} and max sequence length being {steps}")
        steps = int(total_length)
    t, j = _steps_index(bs)
    order = _sorted_order(sequence)
    b = j if order is None else order[j]
    batch = int(bs[0])
    shape, index = ((batch, steps), (b, t)) if batch_first else ((steps, batch), (t, b))
    padded = place_positions(sequence.data, index, shape, padding_value)
    lengths = (bs[None, :] > np.arange(batch)[:, None]).sum(axis=1)       # per sorted column
    if order is not None:
        given = np.empty_like(lengths)
        given[order] = lengths
        lengths = given
    return padded, _index_tensor(lengths)


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


def unpad_sequence(padded_sequences, lengths, batch_first=False):
    """The inverse of pad_sequence: a list of the (L_i, *) sequences, each cut to its length."""
    x = padded_sequences if isinstance(padded_sequences, Tensor) else Tensor(padded_sequences)
    if not batch_first:
        x = ops.transpose(x, (1, 0) + tuple(range(2, x.ndim)))
    return [x[i, :n] for i, n in enumerate(_host_ints(lengths).tolist())]


def pack_sequence(sequences, enforce_sorted=True):
    """A list of (L_i, *) tensors -> PackedSequence (pad_sequence, then pack_padded_sequence)."""
    seqs = [s if isinstance(s, Tensor) else Tensor(s) for s in sequences]
    if not seqs:
        raise RuntimeError("received an empty list of sequences")
    padded = pad_sequence(seqs)
    return pack_padded_sequence(padded, [s.shape[0] for s in seqs], enforce_sorted=enforce_sorted)


def unpack_sequence(packed_sequences):
    """PackedSequence -> the list of its (L_i, *) sequences, in the order they were given."""
    padded, lengths = pad_packed_sequence(packed_sequences, batch_first=True)
    return unpad_sequence(padded, lengths, batch_first=True)
