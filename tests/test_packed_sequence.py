"""torch.nn.utils.rnn's PackedSequence API (pack_padded_sequence, pad_packed_sequence, pack_sequence,
unpack_sequence, unpad_sequence) and nn.RNN / LSTM / GRU on packed input.

float64 finite-difference checks of pack -> layer -> unpack (padding positions must get exactly zero
gradient); when PyTorch is installed, float32 cross-checks against torch with the same weights --
packed data, padded outputs, h_n / c_n and every gradient -- for unsorted lengths, both layouts, two
layers, bidirectional, with and without an initial state; torch's errors for bad lengths; and the
fused GPU glue (engine.kernels.rnn_step, run through its numpy twins) on a packed batch.
"""
import numpy as np
import pytest

import engine
import engine.nn as nn
from engine.kernels import _runtime as rt
from engine.kernels import rnn_step as R
from engine.nn import _rnn
from engine.nn.functional import ShapeError
from engine.nn.utils import rnn as U
from rnn_cases import close

RTOL, ATOL = 1e-4, 1e-5
LENGTHS = [3, 5, 1, 4]                  # unsorted, all different: torch and we sort them the same way
MODES = ["LSTM", "GRU", "RNN"]


def rnd(*shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def t64(a):
    return engine.tensor(np.asarray(a, dtype=np.float64), dtype="float64", requires_grad=True)


def padded_input(lengths, features, batch_first, seed=0, pad=np.nan):
    """A padded batch whose padding is `pad` (NaN by default: any use of it would show)."""
    T, B = max(lengths), len(lengths)
    x = rnd(B, T, features, seed=seed)
    for b, n in enumerate(lengths):
        x[b, n:] = pad
    return x if batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))


def _module(lib, mode, batch_first, bidirectional, num_layers=2, I=3, H=4):
    return getattr(lib, mode)(I, H, num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional)


def _states(mode, module, batch, seed):
    shape = (module.num_layers * (2 if module.bidirectional else 1), batch, module.hidden_size)
    return [rnd(*shape, seed=seed)] + ([rnd(*shape, seed=seed + 1)] if mode == "LSTM" else [])


def _hx(mode, states):
    if not states:
        return None
    return tuple(states) if mode == "LSTM" else states[0]


def _flat_state(h):
    return list(h) if isinstance(h, tuple) else [h]


# ------------------------------------------------------------------------------------------ pack / unpack


@pytest.mark.parametrize("batch_first", [False, True])
def test_pack_then_pad_roundtrip(batch_first):
    x = padded_input(LENGTHS, 2, batch_first, pad=0.0)
    packed = U.pack_padded_sequence(engine.tensor(x), LENGTHS, batch_first=batch_first, enforce_sorted=False)
    assert packed.batch_sizes.tolist() == [4, 3, 3, 2, 1]
    assert packed.sorted_indices.tolist() == [1, 3, 0, 2]
    assert packed.unsorted_indices.tolist() == [2, 0, 3, 1]
    assert packed.data.shape == (sum(LENGTHS), 2)
    padded, lengths = U.pad_packed_sequence(packed, batch_first=batch_first)
    assert lengths.tolist() == LENGTHS
    np.testing.assert_array_equal(padded.numpy(), x)
    longer, _ = U.pad_packed_sequence(packed, batch_first=batch_first, padding_value=-2.0, total_length=7)
    assert longer.shape == ((4, 7, 2) if batch_first else (7, 4, 2))
    tail = longer.numpy()[:, 5:] if batch_first else longer.numpy()[5:]
    assert tail.size and np.all(tail == -2.0)


def test_sequences_roundtrip_and_sorted_input():
    seqs = [engine.tensor(rnd(n, 3, seed=n)) for n in (4, 2, 2, 1)]
    packed = U.pack_sequence(seqs)                               # already sorted: no permutation
    assert packed.sorted_indices is None and packed.unsorted_indices is None
    assert packed.batch_sizes.tolist() == [4, 3, 1, 1]
    for a, b in zip(U.unpack_sequence(packed), seqs):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    padded = U.pad_sequence(seqs, batch_first=True)
    for a, b in zip(U.unpad_sequence(padded, [4, 2, 2, 1], batch_first=True), seqs):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_packed_sequence_is_torchs_namedtuple():
    packed = U.pack_sequence([engine.tensor(rnd(n, 2)) for n in (1, 3)], enforce_sorted=False)
    data, batch_sizes, sorted_indices, unsorted_indices = packed
    assert packed._fields == ("data", "batch_sizes", "sorted_indices", "unsorted_indices")
    assert batch_sizes.dtype == np.int64 and sorted_indices.tolist() == [1, 0]
    rebuilt = U.PackedSequence(data, batch_sizes, sorted_indices)     # unsorted_indices derived
    assert rebuilt.unsorted_indices.tolist() == [1, 0]
    assert packed.double().data.dtype == np.float64 and not packed.is_cuda
    assert U.invert_permutation(engine.tensor(np.array([2, 0, 1]))).tolist() == [1, 2, 0]


def test_pack_and_unpack_gradients_skip_the_padding():
    x = t64(padded_input(LENGTHS, 2, False, pad=0.0))
    assert engine.gradcheck(lambda a: U.pack_padded_sequence(a, LENGTHS, enforce_sorted=False).data, [x])
    packed = U.pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    data = engine.tensor(packed.data.numpy(), dtype="float64", requires_grad=True)
    again = U.PackedSequence(data, packed.batch_sizes, packed.sorted_indices)
    assert engine.gradcheck(lambda d: U.pad_packed_sequence(again._replace(data=d), padding_value=3.0)[0], [data])
    x.grad = None
    (U.pad_packed_sequence(U.pack_padded_sequence(x, LENGTHS, enforce_sorted=False))[0] * 2).sum().backward()
    grad = x.grad.numpy()
    for b, n in enumerate(LENGTHS):
        assert np.all(grad[:n, b] == 2) and np.all(grad[n:, b] == 0)


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("lengths,enforce_sorted,match", [
    ([3, 0, 2, 1], False, r"greater than 0.*lengths=\[3, 0, 2, 1\]"),
    ([3, 2, 1, -1], True, "greater than 0"),
    ([6, 5, 2, 1], True, r"lengths\[0\] = 6 is longer than the padded input, which has 5 time steps"),
    ([2, 6, 1, 4], False, r"lengths\[1\] = 6 is longer"),
    ([3, 5, 1, 4], True, r"must be sorted in decreasing order.*enforce_sorted=False.*lengths=\[3, 5, 1, 4\]"),
    ([3, 2, 1], False, r"Expected `len\(lengths\)` to be equal to batch_size, but got 3 \(batch_size=4\)"),
])
def test_bad_lengths_are_named(lengths, enforce_sorted, match):
    x = engine.tensor(np.zeros((4, 5, 2), np.float32))          # batch 4, 5 steps
    with pytest.raises(RuntimeError, match=match):
        U.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)


def test_unsorted_sequences_need_enforce_sorted_false():
    with pytest.raises(RuntimeError, match="sorted in decreasing order"):
        U.pack_sequence([engine.tensor(rnd(n, 2)) for n in (1, 3)])
    with pytest.raises(RuntimeError, match="empty list"):
        U.pack_sequence([])


def test_short_total_length_and_bad_packed_input():
    packed = U.pack_sequence([engine.tensor(rnd(n, 3)) for n in (4, 2)])
    with pytest.raises(ValueError, match="total_length=3 and max sequence length being 4"):
        U.pad_packed_sequence(packed, total_length=3)
    with pytest.raises(ShapeError, match=r"sum of lengths, 5"):
        nn.GRU(5, 2)(packed)
    with pytest.raises(ShapeError, match=r"h_0 of shape \(1, 2, 2\)"):
        nn.LSTM(3, 2)(packed, (engine.zeros(1, 3, 2), engine.zeros(1, 3, 2)))


# ------------------------------------------------------------------------------------------ recurrent layers


def _packed_run(module, x, states, lengths, batch_first, enforce_sorted=False):
    """pack -> module -> unpack: the padded output and h_n (and c_n) as one flat list."""
    packed = U.pack_padded_sequence(x, lengths, batch_first=batch_first, enforce_sorted=enforce_sorted)
    out, h = module(packed, _hx(type(module).__name__, states))
    assert isinstance(out, U.PackedSequence) and out.batch_sizes is packed.batch_sizes
    padded, got_lengths = U.pad_packed_sequence(out, batch_first=batch_first)
    assert got_lengths.tolist() == list(lengths)
    return [padded] + _flat_state(h), out


GRADCHECK = [("LSTM", True, True), ("LSTM", False, False), ("GRU", True, False), ("GRU", False, True),
             ("RNN", True, True), ("RNN", False, False)]


@pytest.mark.parametrize("mode,bidirectional,with_state", GRADCHECK)
def test_packed_layers_gradcheck(mode, bidirectional, with_state):
    """float64 finite differences through pack -> 2-layer layer -> unpack, w.r.t. the padded input (its
    padding included: those gradients must be exactly zero), the initial states and every weight."""
    engine.manual_seed(0)
    module = _module(nn, mode, False, bidirectional, I=2, H=3).double()
    lengths = [2, 4, 1]
    x = t64(padded_input(lengths, 2, False, pad=0.5))
    states = [t64(s) for s in _states(mode, module, 3, seed=3)] if with_state else []
    params = list(module.parameters())

    def fn(a, *rest):
        outs, _ = _packed_run(module, a, list(rest[:len(states)]), lengths, False)
        return engine.concat([o.reshape(-1) for o in outs])
    assert engine.gradcheck(fn, [x] + states + params)
    for t in [x] + states + params:
        t.grad = None
    engine.concat([o.reshape(-1) for o in fn(x, *states)]).sum().backward()
    for b, n in enumerate(lengths):
        assert np.all(x.grad.numpy()[n:, b] == 0)


CROSS = [(mode, bf, bid, st) for mode in MODES for bf, bid, st in
         [(False, True, True), (True, True, False), (True, False, True), (False, False, False)]]


@pytest.mark.parametrize("mode,batch_first,bidirectional,with_state", CROSS)
def test_packed_layers_match_torch(mode, batch_first, bidirectional, with_state):
    torch = pytest.importorskip("torch")
    from torch.nn.utils import rnn as TU
    torch.manual_seed(0)
    tmod = _module(torch.nn, mode, batch_first, bidirectional)
    emod = _module(nn, mode, batch_first, bidirectional)
    emod.load_state_dict({k: v.detach().numpy().copy() for k, v in tmod.state_dict().items()})
    arrays = [padded_input(LENGTHS, 3, batch_first)] + (_states(mode, emod, 4, seed=5) if with_state else [])
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    es = [engine.tensor(a, requires_grad=True) for a in arrays]
    tp = TU.pack_padded_sequence(ts[0], LENGTHS, batch_first=batch_first, enforce_sorted=False)
    tout, th = tmod(tp, _hx(mode, ts[1:]))
    tpadded, _ = TU.pad_packed_sequence(tout, batch_first=batch_first)
    touts = [tpadded] + _flat_state(th)
    eouts, eout = _packed_run(emod, es[0], es[1:], LENGTHS, batch_first)
    np.testing.assert_allclose(eout.data.numpy(), tout.data.detach().numpy(), rtol=RTOL, atol=ATOL)
    for name, a, b in (("sorted", eout.sorted_indices, tout.sorted_indices),
                       ("unsorted", eout.unsorted_indices, tout.unsorted_indices),
                       ("batch_sizes", eout.batch_sizes, tout.batch_sizes)):
        assert a.tolist() == b.tolist(), name
    rng = np.random.default_rng(1)
    lt = le = 0
    for a, b in zip(touts, eouts):
        assert tuple(a.shape) == tuple(b.shape)
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=RTOL, atol=ATOL)
        g = rng.standard_normal(tuple(a.shape)).astype(np.float32)
        lt, le = lt + (a * torch.tensor(g)).sum(), le + (b * engine.tensor(g)).sum()
    lt.backward()
    le.backward()
    for i, (a, b) in enumerate(zip(ts, es)):
        np.testing.assert_allclose(b.grad.numpy(), a.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"input {i}")
    ours = dict(emod.named_parameters())
    for name, p in tmod.named_parameters():
        np.testing.assert_allclose(ours[name].grad.numpy(), p.grad.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("mode", MODES)
def test_sorted_packing_and_sequences_match_torch(mode):
    """enforce_sorted=True (no permutation) and pack_sequence / unpack_sequence around a layer."""
    torch = pytest.importorskip("torch")
    from torch.nn.utils import rnn as TU
    torch.manual_seed(1)
    tmod, emod = getattr(torch.nn, mode)(3, 4), getattr(nn, mode)(3, 4)
    emod.load_state_dict({k: v.detach().numpy().copy() for k, v in tmod.state_dict().items()})
    seqs = [rnd(n, 3, seed=n) for n in (5, 3, 3, 1)]
    tout, th = tmod(TU.pack_sequence([torch.tensor(s) for s in seqs]))
    eout, eh = emod(U.pack_sequence([engine.tensor(s) for s in seqs]))
    for a, b in zip(TU.unpack_sequence(tout), U.unpack_sequence(eout)):
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=RTOL, atol=ATOL)
    for a, b in zip(_flat_state(th), _flat_state(eh)):
        np.testing.assert_allclose(b.numpy(), a.detach().numpy(), rtol=RTOL, atol=ATOL)


def test_pack_utilities_match_torch():
    torch = pytest.importorskip("torch")
    from torch.nn.utils import rnn as TU
    for batch_first in (False, True):
        x = padded_input(LENGTHS, 2, batch_first)
        tp = TU.pack_padded_sequence(torch.tensor(x), LENGTHS, batch_first=batch_first, enforce_sorted=False)
        ep = U.pack_padded_sequence(engine.tensor(x), LENGTHS, batch_first=batch_first, enforce_sorted=False)
        for a, b in zip(tp, ep):
            np.testing.assert_array_equal(b.numpy(), a.numpy())
        tpad, tl = TU.pad_packed_sequence(tp, batch_first, padding_value=-1.0, total_length=6)
        epad, el = U.pad_packed_sequence(ep, batch_first, padding_value=-1.0, total_length=6)
        np.testing.assert_array_equal(epad.numpy(), tpad.numpy())
        assert el.tolist() == tl.tolist()


# ------------------------------------------------------------------------------------------ layer internals


def test_full_batch_sizes_change_nothing():
    """batch_sizes that never shrink must give bit-for-bit the unpacked result (no step is frozen)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3, 2))
    h0, c0 = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    w_ih, w_hh, b = rng.standard_normal((16, 2)), rng.standard_normal((16, 4)), rng.standard_normal(16)
    ref, _ = _rnn.lstm_forward(x, h0, c0, w_ih, w_hh, b)
    got, _ = _rnn.lstm_forward(x, h0, c0, w_ih, w_hh, b, batch_sizes=[3] * 5)
    np.testing.assert_array_equal(got, ref)
    with pytest.raises(ValueError, match="4 entries for 5 time steps"):
        _rnn.gru_forward(x, h0, w_ih[:12], w_hh[:12], None, None, batch_sizes=[3] * 4)


@pytest.mark.parametrize("mode", MODES)
def test_packed_layers_through_the_fused_path(monkeypatch, mode):
    """The GPU glue (engine.kernels.rnn_step; its numpy twins stand in for the kernels) must freeze the
    finished rows as the numpy path does: outputs, states and every gradient."""
    engine.manual_seed(0)
    module = _module(nn, mode, True, True)
    x = padded_input(LENGTHS, 3, True, pad=0.0)
    states = _states(mode, module, 4, seed=2)

    def run():
        ts = [engine.tensor(a, requires_grad=True) for a in [x] + states]
        outs, _ = _packed_run(module, ts[0], ts[1:], LENGTHS, True)
        loss = sum((o * engine.tensor(rnd(*o.shape, seed=9))).sum() for o in outs)
        module.zero_grad()
        loss.backward()
        return [o.numpy() for o in outs] + [t.grad.numpy() for t in ts] + \
            [p.grad.numpy() for p in module.parameters()]

    ref = run()
    launcher = R.TwinLauncher()
    monkeypatch.setattr(rt, "LAUNCHER", launcher)
    monkeypatch.setattr(_rnn, "_fused", lambda a: R)
    got = run()
    assert {R.LSTM_BWD.name, R.GRU_BWD.name, R.RNN_BWD.name} & set(launcher.launches), "fused backward did not run"
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        close(a, b, 1e-6)


# ------------------------------------------------------------------ step masks (Keras masking)
# The same held-state machinery, given a (T, N) mask with padded steps anywhere (Keras' left
# padding, holes) instead of a packed batch's finished tail.

def _masked_layer(mode, x, h0, c0, params, keep):
    from engine.nn import functional as F
    if mode == "LSTM":
        out, h, c = F.lstm_layer(x, h0, c0, *params, mask=keep)
        return out, h, c
    if mode == "GRU":
        return F.gru_layer(x, h0, *params, mask=keep)
    return F.rnn_layer(x, h0, *params, mask=keep)


def _masked_case(mode, dtype=np.float32):
    T, N, I, H = 5, 4, 3, 4
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[mode] * H
    keep = np.array([[1, 0, 1, 1], [1, 0, 1, 0], [0, 1, 1, 1], [1, 1, 0, 1], [1, 1, 1, 0]], dtype=bool)
    arrays = [rnd(T, N, I, seed=1), rnd(N, H, seed=2), rnd(N, H, seed=3), rnd(G, I, seed=4) * 0.5,
              rnd(G, H, seed=5) * 0.5, rnd(G, seed=6), rnd(G, seed=7)]
    return keep, [engine.tensor(a.astype(dtype), requires_grad=True) for a in arrays]


@pytest.mark.parametrize("mode", MODES)
def test_a_step_mask_holds_the_state_like_dropping_those_steps(mode):
    """Each column's final state equals running only its kept steps, wherever the padding sits."""
    keep, (x, h0, c0, *params) = _masked_case(mode, np.float64)
    got = _masked_layer(mode, x, h0, c0 if mode == "LSTM" else None, params, keep)
    for n in range(keep.shape[1]):
        steps = np.nonzero(keep[:, n])[0]
        xs = engine.tensor(x.numpy()[steps, n:n + 1])
        ref = _masked_layer(mode, xs, engine.tensor(h0.numpy()[n:n + 1]),
                            engine.tensor(c0.numpy()[n:n + 1]) if mode == "LSTM" else None, params, None)
        close(got[1].numpy()[n:n + 1], ref[1].numpy(), 1e-12)
        if mode == "LSTM":
            close(got[2].numpy()[n:n + 1], ref[2].numpy(), 1e-12)
        close(got[0].numpy()[steps, n:n + 1], ref[0].numpy(), 1e-12)   # outputs at the kept steps


@pytest.mark.parametrize("mode", MODES)
def test_step_mask_gradcheck_and_fused_path(monkeypatch, mode):
    from engine.gradcheck import gradcheck
    keep, ts = _masked_case(mode, np.float64)
    c0 = ts[2] if mode == "LSTM" else None
    inputs = [ts[0], ts[1]] + ([c0] if c0 is not None else []) + ts[3:]

    def fn(*a):
        x, h0 = a[0], a[1]
        c = a[2] if mode == "LSTM" else None
        params = a[3:] if mode == "LSTM" else a[2:]
        outs = _masked_layer(mode, x, h0, c, params, keep)
        return sum((o * engine.tensor(rnd(*o.shape, seed=9).astype(np.float64))).sum() for o in outs)

    assert gradcheck(fn, inputs)

    def run(ts):
        for t in ts:
            t.grad = None
        fn(*[t for t in inputs]).backward()
        return [t.grad.numpy().copy() for t in inputs]

    keep32, ts32 = _masked_case(mode)
    inputs = [ts32[0], ts32[1]] + ([ts32[2]] if mode == "LSTM" else []) + ts32[3:]
    ref = run(inputs)
    launcher = R.TwinLauncher()
    monkeypatch.setattr(rt, "LAUNCHER", launcher)
    monkeypatch.setattr(_rnn, "_fused", lambda a: R)
    got = run(inputs)
    assert launcher.launches, "the fused glue did not run"
    for a, b in zip(got, ref):
        close(a, b, 1e-5)
