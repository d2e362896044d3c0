"""LSTM / GRU / SimpleRNN dropout, recurrent_dropout, return_state and initial_state (Keras 3).

Dropout follows keras.src.layers.rnn (Keras >= 3.8): masks drawn once per call and used at every
step, in training only; `dropout` alone is one (batch, features) mask shared by the gates, with
`recurrent_dropout` every gate gets its own input mask and its own (batch, units) mask on h_{t-1}
(Keras' implementation 1).  The recurrences are checked against NumPy references of the Keras cells
given the same masks, against torch.nn.LSTM / GRU / RNN with initial states, and by float64
gradchecks; seq2seq and dropout models train, save and load."""
import numpy as np
import pytest

import engine
from engine import backend, keras
from engine.keras import layers
from engine.keras.functional import Functional
from engine.keras.layers import recurrent as R
from test_keras_masking import _random_layer as _layer  # a built layer with non-trivial weights

RECURRENT = [layers.LSTM, layers.GRU, layers.SimpleRNN]
N_STATES = {layers.LSTM: 2, layers.GRU: 1, layers.SimpleRNN: 1}
GATES = {layers.LSTM: 4, layers.GRU: 3, layers.SimpleRNN: 1}


def _sig(v):
    return 1 / (1 + np.exp(-v))




def _fixed_masks(cls, n, features, units, rate_in, rate_rec, seed=7):
    """Masks as Keras draws them (0 or 1/(1-rate)); per gate when recurrent_dropout is set."""
    rng = np.random.default_rng(seed)
    count = GATES[cls] if rate_rec else 1

    def draw(shape, rate):
        return ((rng.random(shape) >= rate) / (1 - rate)).astype(np.float32)
    inp = [draw((n, features), rate_in) for _ in range(count)] if rate_in else None
    rec = [draw((n, units), rate_rec) for _ in range(count)] if rate_rec else None
    return inp, rec


def _use_masks(layer, masks):
    """Make the layer use the given masks (a test seam: the draw is the layer's _dropout_masks)."""
    layer._dropout_masks = lambda n, f, xp, dtype, training: masks if training else (None, None)


# ------------------------------------------------------------------ NumPy references of the Keras cells
def _split(w, n):
    u = w.shape[-1] // n
    return [w[..., g * u:(g + 1) * u] for g in range(n)]


def _per_gate(v, masks, n):
    return [v * m for m in masks] if masks is not None and len(masks) > 1 else \
        [v * masks[0] if masks is not None else v] * n


def _lstm_cell(kernel, recurrent, bias, in_m, rec_m):
    ks, rs, bs = _split(kernel, 4), _split(recurrent, 4), _split(bias, 4)

    def step(x, states):
        h, c = states
        xs, hs = _per_gate(x, in_m, 4), _per_gate(h, rec_m, 4)
        i, f, g, o = (xs[k] @ ks[k] + hs[k] @ rs[k] + bs[k] for k in range(4))
        c = _sig(f) * c + _sig(i) * np.tanh(g)                 # the carry is not dropped
        h = _sig(o) * np.tanh(c)
        return h, [h, c]
    return step


def _gru_cell(kernel, recurrent, bias, in_m, rec_m):
    ks, rs = _split(kernel, 3), _split(recurrent, 3)
    bi, br = _split(bias[0], 3), _split(bias[1], 3)

    def step(x, states):
        h = states[0]
        xs, hs = _per_gate(x, in_m, 3), _per_gate(h, rec_m, 3)
        xz, xr, xh = (xs[k] @ ks[k] + bi[k] for k in range(3))
        hz, hr, hh = (hs[k] @ rs[k] + br[k] for k in range(3))
        z, r = _sig(xz + hz), _sig(xr + hr)
        h = z * h + (1 - z) * np.tanh(xh + r * hh)               # mixed with the undropped h
        return h, [h]
    return step


def _rnn_cell(kernel, recurrent, bias, in_m, rec_m):
    def step(x, states):
        xd = x * in_m[0] if in_m is not None else x
        hd = states[0] * rec_m[0] if rec_m is not None else states[0]
        h = np.tanh(xd @ kernel + bias + hd @ recurrent)
        return h, [h]
    return step


CELLS = {layers.LSTM: _lstm_cell, layers.GRU: _gru_cell, layers.SimpleRNN: _rnn_cell}


def _reference(cls, weights, x, masks=(None, None), keep=None, go_backwards=False, states=None):
    """Keras' RNN loop (keras.src.backend.*.rnn) in float64: masked steps hold the states and
    repeat the previous output -> (sequence in processing order, final states)."""
    f64 = [w.astype(np.float64) for w in weights]
    in_m = None if masks[0] is None else [m.astype(np.float64) for m in masks[0]]
    rec_m = None if masks[1] is None else [m.astype(np.float64) for m in masks[1]]
    step = CELLS[cls](*f64, in_m, rec_m)
    n, t, _ = x.shape
    u = weights[1].shape[0]
    states = [np.zeros((n, u)) for _ in range(N_STATES[cls])] if states is None else \
        [s.astype(np.float64) for s in states]
    keep = np.ones((n, t), bool) if keep is None else keep
    xs, ks = (x[:, ::-1], keep[:, ::-1]) if go_backwards else (x, keep)
    prev, outs = np.zeros((n, u)), []
    for s in range(t):
        out, new = step(xs[:, s].astype(np.float64), states)
        k = ks[:, s][:, None]
        prev = np.where(k, out, prev)
        states = [np.where(k, a, b) for a, b in zip(new, states)]
        outs.append(prev)
    return np.stack(outs, axis=1), states


# ------------------------------------------------------------------ dropout
@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", RECURRENT)
def test_rate_zero_and_inference_are_the_plain_layer_bit_for_bit(cls):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 3)).astype(np.float32)
    mask = rng.random((4, 6)) > 0.3
    plain = _layer(cls, return_sequences=True)
    zero = _layer(cls, return_sequences=True, dropout=0.0, recurrent_dropout=0.0)
    dropped = _layer(cls, return_sequences=True, dropout=0.4, recurrent_dropout=0.3)
    want = plain(x, mask=mask, training=True).numpy()
    np.testing.assert_array_equal(zero(x, mask=mask, training=True).numpy(), want)
    np.testing.assert_array_equal(dropped(x, mask=mask, training=False).numpy(), want)
    # the fused node itself, as before these options existed
    if cls is layers.LSTM:
        ref = R.lstm_sequence(engine.tensor(x), plain.kernel, plain.recurrent_kernel, plain.bias, True)
        np.testing.assert_array_equal(plain(x, training=True).numpy(), ref.numpy())


@pytest.mark.timeout(60)
def test_predict_and_evaluate_do_not_drop():
    keras.utils.set_random_seed(1)
    x = np.random.default_rng(1).normal(size=(32, 7, 3)).astype(np.float32)
    y = np.random.default_rng(2).normal(size=(32, 4)).astype(np.float32)
    m = keras.Sequential([keras.Input(shape=(7, 3)), layers.LSTM(4, dropout=0.5, recurrent_dropout=0.5)])
    plain = keras.Sequential([keras.Input(shape=(7, 3)), layers.LSTM(4)])
    plain.set_weights(m.get_weights())
    m.compile(optimizer="adam", loss="mse")
    p = m.predict(x, verbose=0)
    np.testing.assert_array_equal(p, m.predict(x, verbose=0))
    np.testing.assert_array_equal(p, plain.predict(x, verbose=0))
    assert m.evaluate(x, y, verbose=0) == pytest.approx(float(((p - y) ** 2).mean()), rel=1e-5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", RECURRENT)
def test_input_dropout_drops_the_same_features_at_every_step(cls):
    """dropout alone: one (batch, features) mask for all steps and gates, applied to the whole
    sequence before the fused node; the gradient reaching x is zero exactly at the dropped features."""
    layer = _layer(cls, units=6, features=8, return_sequences=True, dropout=0.5)
    x = engine.tensor(np.random.default_rng(3).normal(size=(5, 9, 8)).astype(np.float32), requires_grad=True)
    engine.manual_seed(11)
    y = layer(x, training=True)
    (y * y).sum().backward()
    zero = x.grad.numpy() == 0                                    # (N, T, F)
    assert (zero.all(axis=1) | ~zero.any(axis=1)).all()           # a feature is dropped at every step or none
    assert 0 < zero[:, 0].mean() < 1
    engine.manual_seed(11)                                        # the same draw, by hand
    (inp,), rec = layer._dropout_masks(5, 8, np, np.float32, True)
    assert rec is None and set(np.unique(inp)) <= {0.0, 2.0}
    np.testing.assert_array_equal(zero[:, 0], inp == 0)
    ref = layer(engine.tensor(x.numpy() * inp[:, None, :]), training=False)
    np.testing.assert_array_equal(y.numpy(), ref.numpy())


@pytest.mark.timeout(60)
def test_masks_are_drawn_per_call_and_per_gate_with_keras_scaling():
    layer = _layer(layers.LSTM, units=64, features=32, dropout=0.25, recurrent_dropout=0.5)
    engine.manual_seed(0)
    inp, rec = layer._dropout_masks(50, 32, np, np.float32, True)
    assert len(inp) == len(rec) == 4                              # Keras' implementation 1: one per gate
    assert all(m.shape == (50, 32) for m in inp) and all(m.shape == (50, 64) for m in rec)
    assert set(np.unique(np.concatenate(inp))) == {0.0, np.float32(1 / 0.75)}
    assert abs(np.mean([(m == 0).mean() for m in inp]) - 0.25) < 0.03
    assert abs(np.mean([(m == 0).mean() for m in rec]) - 0.5) < 0.03
    assert not np.array_equal(inp[0], inp[1])
    inp2, _ = layer._dropout_masks(50, 32, np, np.float32, True)
    assert not np.array_equal(inp[0], inp2[0])                    # a new draw each call
    assert layer._dropout_masks(50, 32, np, np.float32, False) == (None, None)
    a = layers.GRU(4, dropout=0.5, seed=3)._dropout_masks(6, 5, np, np.float32, True)
    b = layers.GRU(4, dropout=0.5, seed=3)._dropout_masks(6, 5, np, np.float32, True)
    np.testing.assert_array_equal(a[0][0], b[0][0])               # seed= fixes the layer's draws


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cls", RECURRENT)
@pytest.mark.parametrize("go_backwards,masked", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("rates", [(0.3, 0.4), (0.0, 0.4), (0.3, 0.0), (0.0, 0.0)])
def test_dropout_and_initial_state_match_the_keras_cells(cls, go_backwards, masked, rates):
    """recurrent_dropout runs the step loop, the rest the fused node; both against Keras' cells and
    loop (masked steps hold the states, outputs start at zero even with an initial state)."""
    n, t, f, u = 4, 6, 3, 5
    layer = _layer(cls, units=u, features=f, return_sequences=True, return_state=True, go_backwards=go_backwards,
                   dropout=rates[0], recurrent_dropout=rates[1])
    masks = _fixed_masks(cls, n, f, u, *rates)
    _use_masks(layer, masks)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(n, t, f)).astype(np.float32)
    keep = rng.random((n, t)) > 0.35 if masked else None
    if masked:
        keep[0, :3] = False                                     # leading masked steps with an initial state
    init = [rng.normal(size=(n, u)).astype(np.float32) for _ in range(N_STATES[cls])]
    got = layer(x, mask=keep, initial_state=init, training=True)
    seq, states = _reference(cls, layer.get_weights(), x, masks, keep, go_backwards, init)
    np.testing.assert_allclose(got[0].numpy(), seq, rtol=1e-5, atol=1e-6)
    for g, s in zip(got[1:], states):
        np.testing.assert_allclose(g.numpy(), s, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", RECURRENT)
def test_step_loop_with_all_ones_masks_is_the_fused_recurrence(cls):
    """The recurrent_dropout path with nothing dropped gives the fused path's values and gradients."""
    layer = _layer(cls, units=4, return_sequences=True, return_state=True, recurrent_dropout=0.5)
    rng = np.random.default_rng(5)
    xa = rng.normal(size=(3, 5, 3)).astype(np.float32)
    keep = rng.random((3, 5)) > 0.3
    ones = [np.ones((3, 4), np.float32)] * GATES[cls]
    results = []
    for masks in ((None, None), (None, ones)):
        _use_masks(layer, masks)
        x = engine.tensor(xa, requires_grad=True)
        outs = layer(x, mask=keep, training=True)
        sum((o * o).sum() for o in outs).backward()
        results.append([o.numpy() for o in outs] + [x.grad.numpy()] + [w.grad.numpy() for w in layer.weights])
        for w in layer.weights:
            w.grad = None
    for fused, steps in zip(*results):
        np.testing.assert_allclose(steps, fused, rtol=1e-5, atol=1e-6)


@pytest.mark.timeout(120)
def test_step_loops_and_initial_state_gradcheck_in_float64():
    rng = np.random.default_rng(6)
    n, t, f, u = 2, 3, 3, 2

    def t64(*shape, scale=0.5):
        return engine.tensor(scale * rng.normal(size=shape), dtype="float64", requires_grad=True)

    def m64(shape, rate=0.5):
        return list(((rng.random((4,) + shape) >= rate) / (1 - rate)).astype(np.float64))
    keep = np.array([[True, True], [False, True], [True, False]])         # (T, N) processing order
    sig, tanh = keras.activations.sigmoid, keras.activations.tanh
    x, h0, c0 = t64(n, t, f), t64(n, u), t64(n, u)
    k4, r4, b4 = t64(f, 4 * u), t64(u, 4 * u), t64(4 * u, scale=0.1)
    in4, rec4 = m64((n, f)), m64((n, u))

    def lstm(x, h0, c0, k, r, b):
        outs, (h, c) = R._lstm_steps(x, k, r, b, h0, c0, keep, tanh, sig, in4, rec4)
        return engine.concat(outs + [h, c], axis=1)
    assert engine.gradcheck(lstm, [x, h0, c0, k4, r4, b4])
    k3, r3, b3 = t64(f, 3 * u), t64(u, 3 * u), t64(2, 3 * u, scale=0.1)

    def gru(x, h0, k, r, b):
        outs, (h,) = R._gru_steps(x, k, r, b[0], b[1], h0, keep, tanh, sig, in4[:3], rec4[:3])
        return engine.concat(outs + [h], axis=1)
    assert engine.gradcheck(gru, [x, h0, k3, r3, b3])
    k1, r1, b1 = t64(f, u), t64(u, u), t64(u, scale=0.1)

    def rnn(x, h0, k, r, b):
        outs, (h,) = R._rnn_steps(x, k, r, b, h0, keep, tanh, rec4[:1])
        return engine.concat(outs + [h], axis=1)
    assert engine.gradcheck(rnn, [x, h0, k1, r1, b1])

    def fused(x, h0, c0, k, r, b):                         # the fused node's initial-state gradients
        y, h, c = R.lstm_sequence(x, k, r, b, True, False, keep, initial_state=[h0, c0], return_state=True)
        return engine.concat([y.reshape(n, -1), h, c], axis=1)
    assert engine.gradcheck(fused, [x, h0, c0, k4, r4, b4])


# ------------------------------------------------------------------ return_state / initial_state
@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", RECURRENT)
@pytest.mark.parametrize("go_backwards", [False, True])
def test_final_states_are_the_last_outputs(cls, go_backwards):
    layer = _layer(cls, return_sequences=True, return_state=True, go_backwards=go_backwards)
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 6, 3)).astype(np.float32)
    outs = layer(x)
    assert isinstance(outs, list) and len(outs) == 1 + N_STATES[cls]
    seq, h = outs[0].numpy(), outs[1].numpy()
    np.testing.assert_array_equal(h, seq[:, -1])                  # the last step in processing order
    ref_seq, ref_states = _reference(cls, layer.get_weights(), x, go_backwards=go_backwards)
    for got, want in zip(outs[1:], ref_states):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)
    # a mask: each sequence's state at its last unmasked step (holes and a fully masked row too)
    keep = rng.random((5, 6)) > 0.4
    keep[0], keep[1, -1] = False, False
    seq, h = (o.numpy() for o in layer(x, mask=keep)[:2])
    order = keep[:, ::-1] if go_backwards else keep
    for i in range(5):
        kept = np.flatnonzero(order[i])
        np.testing.assert_array_equal(h[i], seq[i, kept[-1]] if kept.size else np.zeros(5))
    # without return_sequences the output is h itself
    last = _layer(cls, return_state=True, go_backwards=go_backwards)(x, mask=keep)
    np.testing.assert_array_equal(last[0].numpy(), last[1].numpy())
    np.testing.assert_array_equal(last[1].numpy(), h)


def _torch_module(cls, layer, torch):
    k, r, b = layer.get_weights()
    f, u = k.shape[0], r.shape[0]
    if cls is layers.LSTM:
        mod, w = torch.nn.LSTM(f, u, batch_first=True), (k.T, r.T, b, np.zeros_like(b))
    elif cls is layers.GRU:
        order = np.r_[u:2 * u, 0:u, 2 * u:3 * u]                   # Keras z, r, h -> torch r, z, n
        mod, w = torch.nn.GRU(f, u, batch_first=True), (k[:, order].T, r[:, order].T, b[0][order], b[1][order])
    else:
        mod, w = torch.nn.RNN(f, u, batch_first=True), (k.T, r.T, b, np.zeros_like(b))
    mod = mod.double()
    with torch.no_grad():
        for p, a in zip((mod.weight_ih_l0, mod.weight_hh_l0, mod.bias_ih_l0, mod.bias_hh_l0), w):
            p.copy_(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)))
    return mod


@pytest.mark.torch
@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", RECURRENT)
def test_initial_state_matches_torch_with_gradients(cls):
    torch = pytest.importorskip("torch")
    n, t, f, u = 3, 5, 3, 4
    layer = _layer(cls, units=u, features=f, return_sequences=True, return_state=True)
    rng = np.random.default_rng(8)
    xa = rng.normal(size=(n, t, f)).astype(np.float32)
    sa = [rng.normal(size=(n, u)).astype(np.float32) for _ in range(N_STATES[cls])]
    x = engine.tensor(xa, requires_grad=True)
    states = [engine.tensor(s, requires_grad=True) for s in sa]
    outs = layer(x, initial_state=states if len(states) > 1 else states[0])
    proj = [rng.normal(size=o.shape) for o in outs]
    sum((o * engine.tensor(p.astype(np.float32))).sum() for o, p in zip(outs, proj)).backward()

    mod = _torch_module(cls, layer, torch)
    tx = torch.tensor(xa.astype(np.float64), requires_grad=True)
    ts = [torch.tensor(s[None].astype(np.float64), requires_grad=True) for s in sa]
    seq, fin = mod(tx, tuple(ts) if len(ts) > 1 else ts[0])
    fin = list(fin) if isinstance(fin, tuple) else [fin]
    t_outs = [seq] + [s[0] for s in fin]
    sum((o * torch.from_numpy(p)).sum() for o, p in zip(t_outs, proj)).backward()
    for got, want in zip(outs, t_outs):
        np.testing.assert_allclose(got.numpy(), want.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-4, atol=1e-5)
    for s, ts_ in zip(states, ts):
        np.testing.assert_allclose(s.grad.numpy(), ts_.grad.numpy()[0], rtol=1e-4, atol=1e-5)


@pytest.mark.timeout(60)
def test_functional_return_state_shapes_summary_and_outputs():
    keras.utils.set_random_seed(9)
    inp = keras.Input(shape=(6, 3))
    lstm = layers.LSTM(8, return_state=True, name="enc")
    out, h, c = lstm(inp)
    assert out.shape == h.shape == c.shape == (None, 8)
    assert lstm.compute_output_shape((None, 6, 3)) == [(None, 8), (None, 8), (None, 8)]
    seq_h = layers.GRU(4, return_sequences=True, return_state=True)(inp)
    assert [t.shape for t in seq_h] == [(None, 6, 4), (None, 4)]
    m = keras.Model(inp, [out, h, c])
    assert m.output_names == ["enc", "enc_1", "enc_2"]
    lines = []
    m.summary(print_fn=lines.append)
    row = "\n".join(lines[lines.index(next(r for r in lines if r.startswith(" enc (LSTM)"))):][:3])
    assert "[(None, 8)," in row and "(None, 8)]" in row and "384" in row
    x = np.random.default_rng(9).normal(size=(4, 6, 3)).astype(np.float32)
    po, ph, pc = m.predict(x, verbose=0)
    np.testing.assert_array_equal(po, ph)
    eager = lstm(x)                                              # eager: a list of tensors too
    np.testing.assert_allclose(eager[2].numpy(), pc, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match=r'"enc" \(LSTM\) has several outputs .* Sequential'):
        keras.Sequential([keras.Input(shape=(6, 3)), lstm])


@pytest.mark.timeout(60)
def test_bad_initial_state_and_rates_name_the_layer_expected_and_received():
    inp = keras.Input(shape=(5, 3))
    h = keras.Input(shape=(8,))
    lstm = layers.LSTM(8, name="dec")
    with pytest.raises(ValueError, match=r'"dec" \(LSTM\) expects initial_state with 2 tensor\(s\) \[h, c\] of shape '
                                         r'\(None, 8\), got 1: \(None, 8\)'):
        lstm(inp, initial_state=[h])
    with pytest.raises(ValueError, match=r'"dec" \(LSTM\): initial_state c must have shape \(None, 8\), got '
                                         r'\(None, 7\)'):
        lstm(inp, initial_state=[h, keras.Input(shape=(7,))])
    x = np.zeros((2, 5, 3), np.float32)
    with pytest.raises(ValueError, match=r'"dec" \(LSTM\): initial_state h must have shape \(2, 8\), got \(3, 8\)'):
        lstm(x, initial_state=[np.zeros((3, 8)), np.zeros((2, 8))])
    with pytest.raises(ValueError, match="all be symbolic"):
        layers.GRU(8)(inp, initial_state=np.zeros((2, 8)))
    for bad in (-0.1, 1.0, "x"):
        with pytest.raises(ValueError, match=r'"g" \(GRU\): recurrent_dropout must be a fraction in \[0, 1\)'):
            layers.GRU(4, recurrent_dropout=bad, name="g")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", RECURRENT)
def test_config_round_trips_the_new_arguments(cls):
    layer = cls(3, dropout=0.25, recurrent_dropout=0.125, return_state=True, seed=5, name="r")
    cfg = layer.get_config()
    assert (cfg["dropout"], cfg["recurrent_dropout"], cfg["return_state"], cfg["seed"]) == (0.25, 0.125, True, 5)
    again = cls.from_config(cfg)
    assert again.get_config() == cfg


@pytest.mark.timeout(60)
def test_functional_config_records_states_and_output_indices_and_reads_older_files():
    keras.utils.set_random_seed(12)
    inp = keras.Input(shape=(4, 2), name="x")
    _, h = layers.GRU(3, return_state=True, name="enc")(inp)
    out = layers.GRU(3, name="dec")(inp, initial_state=h)
    m = keras.Model(inp, out)
    cfg = m.get_config()
    assert cfg["nodes"][1] == {"layer": "dec", "inbound": [["x", 0, 0]], "initial_state": [["enc", 0, 1]]}
    x = np.random.default_rng(12).normal(size=(2, 4, 2)).astype(np.float32)
    again = Functional.from_config(cfg)
    again.set_weights(m.get_weights())
    np.testing.assert_array_equal(again.predict(x, verbose=0), m.predict(x, verbose=0))
    plain = keras.Model(inp, layers.Dense(2, name="d")(layers.Flatten(name="f")(inp))).get_config()
    for node in plain["nodes"]:                                 # files written before the output index
        node["inbound"] = [k[:2] for k in node["inbound"]]
    plain["outputs"] = [k[:2] for k in plain["outputs"]]
    assert Functional.from_config(plain).output_shape == (None, 2)


# ------------------------------------------------------------------ models
def _copy_task(n=256, t=6, vocab=5, seed=0):
    """Reproduce the encoder's one-hot sequence; the decoder sees it shifted by one (teacher forcing)."""
    ids = np.random.default_rng(seed).integers(1, vocab, size=(n, t))
    onehot = np.eye(vocab, dtype=np.float32)[ids]
    dec_in = np.concatenate([np.zeros((n, 1, vocab), np.float32), onehot[:, :-1]], axis=1)
    return onehot, dec_in, ids


@pytest.mark.timeout(180)
def test_seq2seq_encoder_states_feed_the_decoder_train_save_and_load(tmp_path):
    keras.utils.set_random_seed(10)
    vocab, units = 5, 24
    enc_x, dec_x, ids = _copy_task(vocab=vocab)
    enc_in, dec_in = keras.Input(shape=(None, vocab), name="enc_in"), keras.Input(shape=(None, vocab), name="dec_in")
    _, h, c = layers.LSTM(units, return_state=True, name="encoder")(enc_in)
    dec_lstm = layers.LSTM(units, return_sequences=True, return_state=True, name="decoder")
    dec_seq, _, _ = dec_lstm(dec_in, initial_state=[h, c])
    dense = layers.Dense(vocab, activation="softmax", name="probs")
    model = keras.Model([enc_in, dec_in], dense(dec_seq))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy")
    enc_kernel = model.get_layer("encoder").get_weights()[0].copy()
    hist = model.fit([enc_x, dec_x], ids, epochs=6, batch_size=32, verbose=0).history["loss"]
    assert hist[-1] < 0.7 * hist[0], hist
    assert not np.allclose(model.get_layer("encoder").get_weights()[0], enc_kernel)   # trained through the states
    pred = model.predict([enc_x[:16], dec_x[:16]], verbose=0)

    model.save(tmp_path / "s2s.keras")
    loaded = keras.models.load_model(tmp_path / "s2s.keras")
    np.testing.assert_array_equal(loaded.predict([enc_x[:16], dec_x[:16]], verbose=0), pred)

    # Keras' inference models: the encoder alone, and the decoder (a second call of the same layers)
    # fed the states as inputs; together they reproduce the training model
    encoder = keras.Model(enc_in, [h, c])
    h_in, c_in = keras.Input(shape=(units,), name="h_in"), keras.Input(shape=(units,), name="c_in")
    seq2, h2, c2 = dec_lstm(dec_in, initial_state=[h_in, c_in])
    decoder = keras.Model([dec_in, h_in, c_in], [dense(seq2), h2, c2])
    states = encoder.predict(enc_x[:16], verbose=0)
    probs, _, _ = decoder.predict([dec_x[:16]] + states, verbose=0)
    np.testing.assert_allclose(probs, pred, rtol=1e-5, atol=1e-6)
    decoder.save(tmp_path / "decoder.keras")
    again = keras.models.load_model(tmp_path / "decoder.keras")
    for a, b in zip(again.predict([dec_x[:16]] + states, verbose=0), decoder.predict([dec_x[:16]] + states, verbose=0)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.timeout(180)
def test_lstm_with_dropout_and_recurrent_dropout_trains_and_predicts_deterministically(tmp_path):
    keras.utils.set_random_seed(11)
    rng = np.random.default_rng(11)
    x = rng.normal(size=(256, 8, 2)).astype(np.float32)
    y = (x[:, :, 0].sum(axis=1) > 0).astype(np.int64)
    m = keras.Sequential([keras.Input(shape=(8, 2)), layers.LSTM(16, dropout=0.2, recurrent_dropout=0.2),
                          layers.Dense(2, activation="softmax")])
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    hist = m.fit(x, y, epochs=8, batch_size=32, verbose=0).history
    assert hist["loss"][-1] < 0.6 * hist["loss"][0], hist["loss"]
    p = m.predict(x, verbose=0)
    np.testing.assert_array_equal(p, m.predict(x, verbose=0))
    assert (p.argmax(1) == y).mean() > 0.85
    m.save(tmp_path / "drop.keras")
    loaded = keras.models.load_model(tmp_path / "drop.keras")
    cfg = loaded.layers[0].get_config()
    assert (cfg["dropout"], cfg["recurrent_dropout"]) == (0.2, 0.2)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), p)


@pytest.mark.gpu
@pytest.mark.timeout(120)
@pytest.mark.skipif(not backend.gpu_available(), reason="needs cupy and a CUDA device")
@pytest.mark.parametrize("cls", RECURRENT)
def test_dropout_and_states_on_the_gpu_match_the_cpu(cls):
    from engine.keras import backend as K
    n, f, u = 4, 3, 5
    cpu = _layer(cls, units=u, features=f, return_sequences=True, return_state=True, dropout=0.3,
                 recurrent_dropout=0.4)
    K.set_device("cuda")
    try:
        gpu = _layer(cls, units=u, features=f, return_sequences=True, return_state=True, dropout=0.3,
                     recurrent_dropout=0.4)
    finally:
        K.set_device(None)
    gpu.set_weights(cpu.get_weights())
    rng = np.random.default_rng(12)
    x = rng.normal(size=(n, 6, f)).astype(np.float32)
    keep = rng.random((n, 6)) > 0.3
    init = [rng.normal(size=(n, u)).astype(np.float32) for _ in range(N_STATES[cls])]
    masks = _fixed_masks(cls, n, f, u, 0.3, 0.4)
    _use_masks(cpu, masks)
    import cupy
    _use_masks(gpu, tuple(None if ms is None else [cupy.asarray(m) for m in ms] for ms in masks))
    for training in (True, False):
        a, b = cpu(x, mask=keep, initial_state=init, training=training), \
            gpu(x, mask=keep, initial_state=init, training=training)
        for p, q in zip(a, b):
            np.testing.assert_allclose(q.numpy(), p.numpy(), rtol=1e-4, atol=1e-5)
    del gpu.__dict__["_dropout_masks"]                           # the real draw, moved to the GPU
    engine.manual_seed(0)
    out = gpu(x, training=True)
    assert out[0].device == gpu.kernel.device and np.isfinite(out[0].numpy()).all()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [layers.LSTM, layers.GRU, layers.SimpleRNN])
def test_bidirectional_return_state_gives_both_directions_states(cls, tmp_path):
    """Keras: [merged output, forward states..., backward states...]; each direction's h is its own
    last output (the backward one's at step 0 once re-reversed), held over the padding."""
    n_states = 2 if cls is layers.LSTM else 1
    inp = keras.Input(shape=(None, 3))
    masked = layers.Masking(0.0)(inp)
    outs = layers.Bidirectional(cls(4, return_sequences=True, return_state=True), name="bi")(masked)
    assert len(outs) == 1 + 2 * n_states
    assert [t.shape for t in outs] == [(None, None, 8)] + [(None, 4)] * (2 * n_states)
    model = keras.Model(inp, outs)
    x = np.random.default_rng(0).random((3, 6, 3), dtype=np.float32)
    x[0, 4:] = 0.0                                                     # a right-padded sequence
    seq, *states = model.predict(x, verbose=0)
    h_fw, h_bw = states[0], states[n_states]
    np.testing.assert_allclose(h_fw[1:], seq[1:, -1, :4], rtol=1e-6)
    np.testing.assert_allclose(h_fw[0], seq[0, 3, :4], rtol=1e-6)      # held over the padding
    np.testing.assert_allclose(h_bw, seq[:, 0, 4:], rtol=1e-6)
    # the same as the two directions run as separate layers with the wrapper's weights
    bi = model.get_layer("bi")
    fw = cls(4, return_state=True)
    bw = cls(4, return_state=True, go_backwards=True)
    fw(x), bw(x)
    fw.set_weights(bi.forward_layer.get_weights())
    bw.set_weights(bi.backward_layer.get_weights())
    ref = fw(x, mask=x.any(-1))[1:] + bw(x, mask=x.any(-1))[1:]
    for got, want in zip(states, ref):
        np.testing.assert_allclose(got, want.numpy(), rtol=1e-6)
    path = str(tmp_path / "bi.keras")
    model.save(path)
    for got, want in zip(keras.models.load_model(path).predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [layers.LSTM, layers.GRU, layers.SimpleRNN])
def test_stateful_layer_carries_its_states_from_batch_to_batch(cls, tmp_path):
    """Keras' stateful=True: a sequence fed in chunks gives the outputs of the whole sequence at
    once; reset_states() starts again from zeros (or from given states)."""
    x = np.random.default_rng(0).random((4, 9, 3), dtype=np.float32)
    whole = _layer(cls, return_sequences=True, return_state=True)
    y_whole, *s_whole = whole(x)
    stateful = cls(5, return_sequences=True, return_state=True, stateful=True)
    stateful(x[:, :1])
    stateful.set_weights(whole.get_weights())
    stateful.reset_states()
    chunks = [stateful(x[:, a:b]) for a, b in ((0, 4), (4, 7), (7, 9))]
    np.testing.assert_allclose(np.concatenate([c[0].numpy() for c in chunks], axis=1), y_whole.numpy(),
                               rtol=1e-5, atol=1e-6)
    for got, want in zip(chunks[-1][1:], s_whole):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
    stateful.reset_states()                                    # zeros again: the first chunk repeats
    np.testing.assert_array_equal(stateful(x[:, :4])[0].numpy(), chunks[0][0].numpy())
    mid = [s.numpy() for s in _layer(cls, return_state=True)(x[:, :4])[1:]]
    stateful.reset_states(mid)                                 # or given states
    np.testing.assert_allclose(stateful(x[:, 4:])[1].numpy(), whole(x[:, 4:], initial_state=mid)[1].numpy(),
                               rtol=1e-6)
    with pytest.raises(ValueError, match=r"carries states for 4 sequences into a batch of 3.*reset_states"):
        stateful(x[:3, :2])
    with pytest.raises(ValueError, match="is not stateful"):
        whole.reset_states()


@pytest.mark.timeout(60)
def test_stateful_model_trains_predicts_and_round_trips(tmp_path):
    x = np.random.default_rng(1).random((8, 6, 3), dtype=np.float32)
    y = np.random.default_rng(2).random((8, 1), dtype=np.float32)
    model = keras.Sequential([keras.Input(shape=(6, 3), batch_size=4), layers.GRU(6, stateful=True, name="g"),
                              layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    losses = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0).history["loss"]
    assert all(np.isfinite(losses))
    model.reset_states()
    first = model.predict(x[:4], verbose=0)
    assert not np.allclose(model.predict(x[:4], verbose=0), first)   # the second call starts from the states
    model.reset_states()
    np.testing.assert_array_equal(model.predict(x[:4], verbose=0), first)
    path = str(tmp_path / "st.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("g").stateful
    np.testing.assert_array_equal(loaded.predict(x[:4], verbose=0), first)


@pytest.mark.timeout(60)
def test_bidirectional_initial_state_is_forward_states_then_backward_states(tmp_path):
    x = np.random.default_rng(3).random((3, 5, 2), dtype=np.float32)
    states = [np.random.default_rng(4 + i).random((3, 4), dtype=np.float32) for i in range(4)]
    bi = layers.Bidirectional(layers.LSTM(4, return_sequences=True, return_state=True))
    out = bi(x, initial_state=states)
    fw = layers.LSTM(4, return_sequences=True, return_state=True)
    bw = layers.LSTM(4, return_sequences=True, return_state=True, go_backwards=True)
    fw(x), bw(x)
    fw.set_weights(bi.forward_layer.get_weights())
    bw.set_weights(bi.backward_layer.get_weights())
    f, b = fw(x, initial_state=states[:2]), bw(x, initial_state=states[2:])
    np.testing.assert_allclose(out[0].numpy(), np.concatenate([f[0].numpy(), b[0].numpy()[:, ::-1]], -1), rtol=1e-6)
    for got, want in zip(out[1:], f[1:] + b[1:]):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match=r"\(Bidirectional\) expects initial_state with 4 tensors.*got 3"):
        bi(x, initial_state=states[:3])
    inp, s_in = keras.Input(shape=(5, 2)), [keras.Input(shape=(4,)) for _ in range(4)]
    model = keras.Model([inp] + s_in, layers.Bidirectional(layers.LSTM(4))(inp, initial_state=s_in))
    path = str(tmp_path / "bi.keras")
    model.save(path)
    np.testing.assert_array_equal(keras.models.load_model(path).predict([x] + states, verbose=0),
                                  model.predict([x] + states, verbose=0))


def test_misuse_of_the_recurrent_wrappers_gives_one_clear_error():
    x = np.random.default_rng(0).random((2, 3, 4), dtype=np.float32)
    with pytest.raises(ValueError, match=r"backward_layer must be an LSTM, GRU or SimpleRNN layer, got str"):
        layers.Bidirectional(layers.LSTM(2), backward_layer="x")
    with pytest.raises(ValueError, match=r"backward_layer must match the forward layer's units"):
        layers.Bidirectional(layers.LSTM(2), backward_layer=layers.LSTM(3, go_backwards=True), merge_mode="sum")
    with pytest.raises(ValueError, match=r'TimeDistributed wraps a layer with one output; "lstm_td" has several'):
        layers.TimeDistributed(layers.LSTM(2, return_state=True, name="lstm_td"))
    with pytest.raises(ValueError, match=r"LSTM: seed must be a non-negative integer or None, got 'abc'"):
        layers.LSTM(2, seed="abc")
    with pytest.raises(TypeError, match=r"got strings .*token ids first \(layers.TextVectorization"):
        layers.LSTM(2)(np.array([[["a"] * 4] * 3]))
    bi = layers.Bidirectional(layers.GRU(2, stateful=True, return_sequences=True))
    first = bi(x).numpy()
    assert bi.stateful and not np.allclose(bi(x).numpy(), first)      # carried
    bi.reset_states()
    np.testing.assert_array_equal(bi(x).numpy(), first)
