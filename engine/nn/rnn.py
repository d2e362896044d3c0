"""RNN, LSTM and GRU modules and their one-step cells: PyTorch's arguments, parameter names, shapes and return values.

Each (layer, direction) runs as one fused autodiff node (functional.lstm_layer / gru_layer /
rnn_layer) that loops over time internally.  Multi-layer stacks, batch_first, initial
states, dropout between layers and bidirectional=True are handled here.

A PackedSequence input runs as its padded, time-major, longest-first batch with the layer nodes told
the batch_sizes: each sequence's state freezes after its last step (and, in the reverse direction,
holds h_0 until its last step comes), so every layer keeps one node over the whole batch and h_n is
each sequence's own final state.  States enter and leave in the caller's order (sorted_indices /
unsorted_indices), as torch's permute_hidden does.
"""
from __future__ import annotations

import math

from .. import ops as _ops
from ..tensor import Tensor
from . import functional as F
from . import init
from ._factory import new_param
from .functional import ShapeError
from .module import Module
from .utils.rnn import PackedSequence, packed_to_padded, take_positions

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class _Packing:
    """A PackedSequence input's bookkeeping: the input itself, where its rows sit in the padded batch,
    and batch_sizes as ints for the layer loops."""

    def __init__(self, seq, index):
        self.seq, self.index = seq, index
        self.batch_sizes = [int(b) for b in seq.batch_sizes.tolist()]


class RNNBase(Module):
    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None):
        super().__init__()
        if proj_size:
            raise NotImplementedError(f"{type(self).__name__}: proj_size is not supported")
        if not 0 <= dropout <= 1 or isinstance(dropout, bool):
            raise ValueError("dropout should be a number in range [0, 1] representing the probability of an "
                             "element being zeroed")
        if hidden_size <= 0 or num_layers <= 0:
            raise ValueError("hidden_size and num_layers must be positive")
        self.mode = mode
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.num_layers, self.bias = int(num_layers), bool(bias)
        self.batch_first, self.dropout = bool(batch_first), float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), 0
        gate = _GATES[mode] * hidden_size
        dirs = 2 if bidirectional else 1
        self._flat_weights_names = []
        for layer in range(num_layers):
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                in_size = input_size if layer == 0 else hidden_size * dirs
                names = [("weight_ih" + sfx, (gate, in_size)), ("weight_hh" + sfx, (gate, hidden_size))]
                if bias:
                    names += [("bias_ih" + sfx, (gate,)), ("bias_hh" + sfx, (gate,))]
                for name, shape in names:
                    setattr(self, name, new_param(shape, device, dtype))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    def reset_parameters(self):
        stdv = 1.0 / math.sqrt(self.hidden_size) if self.hidden_size > 0 else 0
        for p in self.parameters():
            init.uniform_(p, -stdv, stdv)

    @property
    def all_weights(self):
        return [getattr(self, n) for n in self._flat_weights_names]

    def flatten_parameters(self):
        """Accepted and does nothing, as torch's does on the CPU: it packs weights into one cuDNN
        buffer, and every layer here already runs as one fused node over its own arrays.  Ported
        code calls it after loading a model and at the top of forward()."""

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if self.bias is not True:
            s += f", bias={self.bias}"
        if self.batch_first is not False:
            s += f", batch_first={self.batch_first}"
        if self.dropout != 0:
            s += f", dropout={self.dropout}"
        if self.bidirectional is not False:
            s += f", bidirectional={self.bidirectional}"
        return s

    # ------------------------------------------------------------ forward plumbing
    def _prepare_input(self, input):
        """-> (time-major x (T, N, I), unbatched, _Packing or None)."""
        if isinstance(input, PackedSequence):
            return self._unpack_input(input)
        x = input if isinstance(input, Tensor) else Tensor(input)
        if x.ndim not in (2, 3) or x.shape[-1] != self.input_size:
            layout = "(N, L, {I}) with batch_first=True" if self.batch_first else "(L, N, {I})"
            raise ShapeError(f"{self!r}: expected input of shape {layout.format(I=self.input_size)} "
                             f"or unbatched (L, {self.input_size}), got {x.shape}")
        unbatched = x.ndim == 2
        if unbatched:
            x = _ops.unsqueeze(x, 1)
        elif self.batch_first:
            x = _ops.transpose(x, (1, 0, 2))
        return x, unbatched, None

    def _unpack_input(self, seq):
        """A PackedSequence -> its padded (T, B, I) batch in packed (longest-first) order; batch_first does
        not apply, as in torch."""
        data = seq.data if isinstance(seq.data, Tensor) else Tensor(seq.data)
        if data.ndim != 2 or data.shape[-1] != self.input_size:
            raise ShapeError(f"{self!r}: expected a PackedSequence with data of shape (sum of lengths, "
                             f"{self.input_size}), got {data.shape}")
        x, index = packed_to_padded(seq._replace(data=data))
        return x, False, _Packing(seq, index)

    @staticmethod
    def _permute_state(h, packing, which):
        """torch's permute_hidden: states follow the sequences into (sorted_indices) and out of
        (unsorted_indices) the packed order.  Nothing to do unpacked or already sorted."""
        order = None if packing is None or h is None else getattr(packing.seq, which)
        if order is None:
            return h
        return take_positions(h, (slice(None), order.numpy()))

    def _check_state(self, h, name, n_batch, unbatched):
        if h is None:
            return None
        h = h if isinstance(h, Tensor) else Tensor(h)
        dirs = 2 if self.bidirectional else 1
        expect = (self.num_layers * dirs, self.hidden_size) if unbatched else \
            (self.num_layers * dirs, n_batch, self.hidden_size)
        if h.shape != expect:
            raise ShapeError(f"{self!r}: expected {name} of shape {expect}, got {h.shape}")
        return _ops.unsqueeze(h, 1) if unbatched else h

    def _layer_params(self, layer, d):
        sfx = f"_l{layer}" + ("_reverse" if d else "")
        w_ih, w_hh = getattr(self, "weight_ih" + sfx), getattr(self, "weight_hh" + sfx)
        b_ih = getattr(self, "bias_ih" + sfx) if self.bias else None
        b_hh = getattr(self, "bias_hh" + sfx) if self.bias else None
        return w_ih, w_hh, b_ih, b_hh

    def _run(self, x, states, step, packing=None):
        """Run every layer/direction; `step(x, states_for_cell, params, batch_sizes)` -> (output, final_states).

        batch_sizes (None unpacked) is reversed with the time axis for the reverse direction: there the
        short sequences start late and hold their initial state until then."""
        dirs = 2 if self.bidirectional else 1
        sizes = None if packing is None else packing.batch_sizes
        finals = []
        for layer in range(self.num_layers):
            outs = []
            for d in range(dirs):
                k = layer * dirs + d
                st = [None if s is None else s[k] for s in states]
                xin = x if d == 0 else x[::-1]
                bs = sizes if d == 0 or sizes is None else sizes[::-1]
                out, fin = step(xin, st, self._layer_params(layer, d), bs)
                outs.append(out if d == 0 else out[::-1])
                finals.append(fin)
            x = outs[0] if dirs == 1 else _ops.concat(outs, axis=2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        return x, finals

    def _finish(self, out, unbatched, packing=None):
        if packing is not None:
            seq = packing.seq
            return PackedSequence(take_positions(out, packing.index), seq.batch_sizes, seq.sorted_indices,
                                  seq.unsorted_indices)
        if unbatched:
            return _ops.squeeze(out, 1)
        if self.batch_first:
            return _ops.transpose(out, (1, 0, 2))
        return out


class RNN(RNNBase):
    """Elman RNN: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), act = tanh or relu."""

    def __init__(self, input_size, hidden_size, num_layers=1, nonlinearity="tanh", bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}, use 'tanh' or 'relu'")
        self.__dict__["nonlinearity"] = nonlinearity
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, 0, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        x, unbatched, packing = self._prepare_input(input)
        h0 = self._permute_state(self._check_state(hx, "hx", x.shape[1], unbatched), packing, "sorted_indices")

        def step(xin, st, params, batch_sizes):
            w_ih, w_hh, b_ih, b_hh = params
            return F.rnn_layer(xin, st[0], w_ih, w_hh, b_ih, b_hh, self.nonlinearity, batch_sizes=batch_sizes)

        out, finals = self._run(x, [h0], step, packing)
        h_n = self._permute_state(_ops.stack(finals, axis=0), packing, "unsorted_indices")
        return self._finish(out, unbatched, packing), (_ops.squeeze(h_n, 1) if unbatched else h_n)


class LSTM(RNNBase):
    """LSTM with gates i, f, g, o; returns (output, (h_n, c_n)) like PyTorch."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, proj_size=0, device=None, dtype=None):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, device, dtype)

    def forward(self, input, hx=None):
        x, unbatched, packing = self._prepare_input(input)
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{self!r}: hx must be a tuple (h_0, c_0)")
            h0 = self._permute_state(self._check_state(hx[0], "h_0", x.shape[1], unbatched), packing,
                                     "sorted_indices")
            c0 = self._permute_state(self._check_state(hx[1], "c_0", x.shape[1], unbatched), packing,
                                     "sorted_indices")

        def step(xin, st, params, batch_sizes):
            w_ih, w_hh, b_ih, b_hh = params
            out, h, c = F.lstm_layer(xin, st[0], st[1], w_ih, w_hh, b_ih, b_hh, batch_sizes=batch_sizes)
            return out, (h, c)

        out, finals = self._run(x, [h0, c0], step, packing)
        h_n = self._permute_state(_ops.stack([f[0] for f in finals], axis=0), packing, "unsorted_indices")
        c_n = self._permute_state(_ops.stack([f[1] for f in finals], axis=0), packing, "unsorted_indices")
        if unbatched:
            h_n, c_n = _ops.squeeze(h_n, 1), _ops.squeeze(c_n, 1)
        return self._finish(out, unbatched, packing), (h_n, c_n)


class GRU(RNNBase):
    """GRU with gates r, z, n (n = tanh(W_in x + b_in + r * (W_hn h + b_hn))); returns (output, h_n)."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False, dropout=0.0,
                 bidirectional=False, device=None, dtype=None):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         0, device, dtype)

    def forward(self, input, hx=None):
        x, unbatched, packing = self._prepare_input(input)
        h0 = self._permute_state(self._check_state(hx, "hx", x.shape[1], unbatched), packing, "sorted_indices")

        def step(xin, st, params, batch_sizes):
            w_ih, w_hh, b_ih, b_hh = params
            return F.gru_layer(xin, st[0], w_ih, w_hh, b_ih, b_hh, batch_sizes=batch_sizes)

        out, finals = self._run(x, [h0], step, packing)
        h_n = self._permute_state(_ops.stack(finals, axis=0), packing, "unsorted_indices")
        return self._finish(out, unbatched, packing), (_ops.squeeze(h_n, 1) if unbatched else h_n)


# ------------------------------------------------------------------------------------------ cells


class RNNCellBase(Module):
    """One time step of an RNN / LSTM / GRU with PyTorch's parameter names (weight_ih, weight_hh,
    bias_ih, bias_hh), gate layouts and init U(-1/sqrt(hidden), 1/sqrt(hidden)).

    A step runs through the same fused layer node as the full-sequence modules (a sequence of
    length 1), so a cell and its sequence module compute bit-for-bit the same step and share one
    tested backward.
    """

    def __init__(self, input_size: int, hidden_size: int, bias: bool, num_chunks: int, device=None, dtype=None):
        super().__init__()
        self.input_size, self.hidden_size, self.bias = int(input_size), int(hidden_size), bool(bias)
        self.weight_ih = new_param((num_chunks * hidden_size, input_size), device, dtype)
        self.weight_hh = new_param((num_chunks * hidden_size, hidden_size), device, dtype)
        if bias:
            self.bias_ih = new_param((num_chunks * hidden_size,), device, dtype)
            self.bias_hh = new_param((num_chunks * hidden_size,), device, dtype)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    reset_parameters = RNNBase.reset_parameters

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if getattr(self, "nonlinearity", "tanh") != "tanh":
            s += f", nonlinearity={self.nonlinearity}"
        return s

    def _input(self, input):
        """(N, I) or unbatched (I,) -> a (1, N, I) sequence of one step, and whether it was unbatched."""
        x = input if isinstance(input, Tensor) else Tensor(input)
        if x.ndim not in (1, 2) or x.shape[-1] != self.input_size:
            raise ShapeError(f"{self!r}: expected input of shape (N, {self.input_size}) or ({self.input_size},), "
                             f"got {x.shape}")
        unbatched = x.ndim == 1
        return _ops.reshape(x, (1, 1 if unbatched else x.shape[0], self.input_size)), unbatched

    def _state(self, h, name, n, unbatched):
        if h is None:
            return None
        h = h if isinstance(h, Tensor) else Tensor(h)
        expect = (self.hidden_size,) if unbatched else (n, self.hidden_size)
        if h.shape != expect:
            raise ShapeError(f"{self!r}: expected {name} of shape {expect}, got {h.shape}")
        return _ops.unsqueeze(h, 0) if unbatched else h

    @staticmethod
    def _out(h, unbatched):
        return _ops.squeeze(h, 0) if unbatched else h


class RNNCell(RNNCellBase):
    """h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh), act = tanh or relu."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, nonlinearity: str = "tanh",
                 device=None, dtype=None):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"unknown nonlinearity {nonlinearity!r}, use 'tanh' or 'relu'")
        super().__init__(input_size, hidden_size, bias, 1, device, dtype)
        self.nonlinearity = nonlinearity

    def forward(self, input, hx=None):
        x, unbatched = self._input(input)
        h0 = self._state(hx, "hx", x.shape[1], unbatched)
        _, h = F.rnn_layer(x, h0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh, self.nonlinearity)
        return self._out(h, unbatched)


class LSTMCell(RNNCellBase):
    """One LSTM step (gates i, f, g, o); forward(input, (h, c)) -> (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 4, device, dtype)

    def forward(self, input, hx=None):
        x, unbatched = self._input(input)
        h0 = c0 = None
        if hx is not None:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(f"{self!r}: hx must be a tuple (h, c)")
            h0 = self._state(hx[0], "h", x.shape[1], unbatched)
            c0 = self._state(hx[1], "c", x.shape[1], unbatched)
        _, h, c = F.lstm_layer(x, h0, c0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return self._out(h, unbatched), self._out(c, unbatched)


class GRUCell(RNNCellBase):
    """One GRU step (gates r, z, n); forward(input, h) -> h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True, device=None, dtype=None):
        super().__init__(input_size, hidden_size, bias, 3, device, dtype)

    def forward(self, input, hx=None):
        x, unbatched = self._input(input)
        h0 = self._state(hx, "hx", x.shape[1], unbatched)
        _, h = F.gru_layer(x, h0, self.weight_ih, self.weight_hh, self.bias_ih, self.bias_hh)
        return self._out(h, unbatched)
