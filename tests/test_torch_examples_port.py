"""Canonical PyTorch programs ported by changing their imports: what pytorch/examples' mnist and
word_language_model, the "Training a Classifier" tutorial and the DDP tutorial call that was
missing or different (Adadelta, torch.backends / torch.accelerator / torch.utils.data,
Tensor.type / narrow / t / __index__, `p.data.add_(...)`, nn.Transformer, torch.save to a file
object, flatten_parameters, torch.max(outputs.data, 1), silent log(0)).

Each test runs without torch; where torch is installed the numbers are checked against it too.
"""
import io
import math
import warnings

import numpy as np
import pytest

import engine as torch
from engine import nn, optim


# ---------------------------------------------------------------- Adadelta (mnist/main.py)
def _adadelta_reference(p, grads, lr=1.0, rho=0.9, eps=1e-6, wd=0.0):
    """torch's documented Adadelta update, written out in float64."""
    p = p.astype(np.float64).copy()
    v, u = np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g + wd * p
        v = rho * v + (1 - rho) * g * g
        delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
        u = rho * u + (1 - rho) * delta * delta
        p = p - lr * delta
    return p


@pytest.mark.parametrize("kw", [{}, {"lr": 0.5, "rho": 0.8, "eps": 1e-4, "weight_decay": 0.1}])
def test_adadelta_follows_the_documented_update(kw):
    rng = np.random.default_rng(0)
    start = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(5)]
    p = torch.tensor(start.copy(), requires_grad=True)
    opt = optim.Adadelta([p], **kw)
    assert opt.defaults == {"lr": 1.0, "rho": 0.9, "eps": 1e-6, "weight_decay": 0.0, **kw}
    for g in grads:
        p.grad = torch.tensor(g)
        opt.step()
    ref = _adadelta_reference(start, grads, **{"wd" if k == "weight_decay" else k: v for k, v in kw.items()})
    np.testing.assert_allclose(p.data, ref, rtol=1e-12)
    assert set(opt.state_dict()["state"][0]) == {"step", "square_avg", "acc_delta"}
    with pytest.raises(ValueError, match="rho"):
        optim.Adadelta([p], rho=1.5)


def test_adadelta_with_steplr_matches_torch():
    t = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in [(5, 3), (3,)]]
    grads = [[rng.standard_normal(a.shape).astype(np.float32) for a in arrays] for _ in range(6)]
    ours = [torch.tensor(a.copy(), requires_grad=True) for a in arrays]
    theirs = [t.tensor(a.copy(), requires_grad=True) for a in arrays]
    opt, topt = optim.Adadelta(ours, lr=1.0), t.optim.Adadelta(theirs, lr=1.0)
    s, ts = optim.lr_scheduler.StepLR(opt, 1, gamma=0.7), t.optim.lr_scheduler.StepLR(topt, 1, gamma=0.7)
    for gs in grads:
        for p, q, g in zip(ours, theirs, gs):
            p.grad, q.grad = torch.tensor(g.copy()), t.tensor(g.copy())
        opt.step(), topt.step(), s.step(), ts.step()
    for p, q in zip(ours, theirs):
        np.testing.assert_allclose(p.data, q.detach().numpy(), rtol=1e-5, atol=1e-7)
    assert set(opt.state_dict()["state"][0]) == set(topt.state_dict()["state"][0])


# ---------------------------------------------------------------- device selection, torch.utils.data
def test_backends_accelerator_and_utils_data():
    assert torch.backends.mps.is_available() is False and torch.backends.mps.is_built() is False
    torch.backends.cudnn.benchmark = True          # accepted, changes nothing
    torch.backends.cudnn.deterministic = True
    assert torch.accelerator.is_available() == torch.cuda.is_available()
    if not torch.accelerator.is_available():
        assert torch.accelerator.current_accelerator() is None
    import engine.utils.data
    from engine.utils.data import DataLoader, Subset, TensorDataset
    assert torch.utils.data is engine.utils.data is torch.data
    ds = Subset(TensorDataset(torch.arange(10)), range(4))
    assert [int(b[0].sum()) for b in torch.utils.data.DataLoader(ds, batch_size=2)] == [1, 5]
    assert DataLoader is torch.data.DataLoader


# ---------------------------------------------------------------- tensor methods the programs call
def test_type_narrow_t_and_index():
    x = torch.arange(12).float().view(3, 4)
    assert x.type() == "torch.FloatTensor" and torch.tensor([1, 2]).type() == "torch.LongTensor"
    assert torch.tensor([1, 2]).type(torch.int64).dtype == np.int64           # data.py's tokeniser
    assert x.type("torch.DoubleTensor").dtype == np.float64
    assert x.narrow(1, 1, 2).numpy().tolist() == [[1, 2], [5, 6], [9, 10]]
    assert torch.narrow(x, 0, -1, 1).numpy().tolist() == [[8, 9, 10, 11]]
    with pytest.raises(IndexError, match="exceeds dimension size"):
        x.narrow(0, 2, 2)
    assert x.t().shape == (4, 3) and torch.ones(3).t().shape == (3,)
    with pytest.raises(RuntimeError, match="<= 2 dimensions"):
        torch.ones(2, 3, 4).t()
    # batchify: data.view(bsz, -1).t().contiguous() keeps every column a contiguous stream
    data = torch.arange(10)
    b = data.narrow(0, 0, 9).view(3, -1).t().contiguous()
    assert b.numpy().tolist() == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]
    classes = ("a", "b", "c")
    labels = torch.tensor([2, 0])
    assert classes[labels[0]] == "c" and [1, 2, 3][labels[1]] == 1
    with pytest.raises(TypeError, match="0-d integer"):
        classes[torch.tensor([1])]
    assert np.arange(5)[torch.tensor([1])].shape == (1,)      # a 1-element index stays an array


def test_type_cast_is_differentiable_to_floats():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    (x.type(torch.float64) * 3).sum().backward()
    assert x.grad.numpy().tolist() == [3.0, 3.0]


def test_uniform_and_normal_in_place_are_seeded():
    torch.manual_seed(3)
    a = torch.empty(1000).uniform_(-0.1, 0.1)
    torch.manual_seed(3)
    b = torch.empty(1000).uniform_(-0.1, 0.1)
    assert np.array_equal(a.numpy(), b.numpy()) and a.dtype == np.float32
    assert -0.1 <= a.numpy().min() and a.numpy().max() <= 0.1
    n = torch.zeros(20000).normal_(1.0, 0.02)
    assert abs(n.numpy().mean() - 1.0) < 1e-3 and abs(n.numpy().std() - 0.02) < 1e-3
    w = nn.Parameter(torch.zeros(3))
    with pytest.raises(RuntimeError, match="in-place"):
        w.uniform_()
    with torch.no_grad():
        w.uniform_()


def test_top_level_functions_take_the_data_array():
    """`_, predicted = torch.max(outputs.data, 1)` (the classifier tutorial): .data is the array."""
    out = torch.tensor([[0.1, 2.0, 0.3], [5.0, 0.0, 1.0]])
    _, predicted = torch.max(out.data, 1)
    assert predicted.numpy().tolist() == [1, 0]
    assert float(torch.sum(out.data)) == pytest.approx(8.4)
    assert torch.exp(out.data).shape == (2, 3) and torch.argmax(out.data, 1).numpy().tolist() == [1, 0]


def test_log_of_zero_is_silent_minus_inf():
    """The word-language-model Transformer's mask is torch.log(torch.tril(torch.ones(n, n)))."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = torch.log(torch.tril(torch.ones(3, 3)))
    assert m.numpy().tolist() == [[0, -math.inf, -math.inf], [0, 0, -math.inf], [0, 0, 0]]


# ---------------------------------------------------------------- p.data in-place (manual SGD, init)
def test_parameter_data_has_torchs_in_place_methods():
    torch.manual_seed(0)
    lin = nn.Linear(4, 3)
    lin(torch.randn(5, 4)).sum().backward()
    w0, g = lin.weight.numpy().copy(), lin.weight.grad.numpy().copy()
    for p in lin.parameters():
        p.data.add_(p.grad, alpha=-0.5)                      # word_language_model's update
    np.testing.assert_allclose(lin.weight.numpy(), w0 - 0.5 * g, rtol=1e-6)
    lin.weight.data.uniform_(-0.1, 0.1)                      # the old model.py's init_weights
    lin.bias.data.fill_(0)
    assert np.abs(lin.weight.numpy()).max() <= 0.1 and not lin.bias.numpy().any()
    lin.weight.data.normal_(0.0, 0.02).mul_(2).clamp_(-0.01, 0.01)
    assert np.abs(lin.weight.numpy()).max() <= 0.01
    other = nn.Linear(4, 3)
    other.weight.data.copy_(lin.weight.data)                 # target-network sync
    assert np.array_equal(other.weight.numpy(), lin.weight.numpy())
    other.weight.data.zero_().addcmul_(torch.ones(3, 4), torch.full((3, 4), 2.0), value=0.5)
    assert np.all(other.weight.numpy() == 1.0)
    other.weight.data = torch.zeros(3, 4)                    # torch's `p.data = t`
    assert not other.weight.numpy().any() and hasattr(other.weight.data, "add_")
    # arithmetic on the array is a plain ndarray: the methods stay on parameter storage
    assert type(lin.weight.data * 2) is np.ndarray and type(lin.weight.numpy()) is np.ndarray
    assert type(lin(torch.ones(1, 4)).data) is np.ndarray


def test_manual_sgd_with_tied_weights_matches_torch():
    """Embedding/decoder weight tying + clip_grad_norm_ + p.data.add_: the shared weight is one
    parameter (updated once), as in torch."""
    t = pytest.importorskip("torch")

    def build(lib):
        class M(lib.nn.Module):
            def __init__(self):
                super().__init__()
                self.enc = lib.nn.Embedding(7, 4)
                self.dec = lib.nn.Linear(4, 7)
                self.dec.weight = self.enc.weight

            def forward(self, x):
                return self.dec(self.enc(x))
        return M()

    ours, theirs = build(torch), build(t)
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    assert len(list(ours.parameters())) == len(list(theirs.parameters())) == 2
    x, y = np.array([[1, 2, 3], [4, 5, 6]]), np.array([2, 3, 4, 5, 6, 0])
    for model, lib in ((ours, torch), (theirs, t)):
        for _ in range(3):
            model.zero_grad()
            out = model(lib.tensor(x)).view(-1, 7)
            lib.nn.functional.cross_entropy(out, lib.tensor(y)).backward()
            lib.nn.utils.clip_grad_norm_(model.parameters(), 0.25)
            for p in model.parameters():
                p.data.add_(p.grad, alpha=-20)
    np.testing.assert_allclose(ours.enc.weight.numpy(), theirs.enc.weight.detach().numpy(), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- save / load
def test_save_and_load_through_file_objects(tmp_path):
    model = nn.Linear(3, 2)
    with open(tmp_path / "model.pt", "wb") as f:
        torch.save(model.state_dict(), f)
    with open(tmp_path / "model.pt", "rb") as f:
        sd = torch.load(f, weights_only=False)
    assert np.array_equal(sd["weight"].numpy(), model.weight.numpy())
    assert np.array_equal(torch.load(tmp_path / "model.pt")["bias"].numpy(), model.bias.numpy())
    buf = io.BytesIO()
    torch.save({"epoch": 3, "w": model.weight}, buf)
    buf.seek(0)
    assert torch.load(buf)["epoch"] == 3
    broken = io.BytesIO(buf.getvalue()[:40])
    with pytest.raises(torch.serialization.CheckpointFormatError, match="truncated or corrupt"):
        torch.load(broken)


def test_whole_model_save_is_refused_with_the_workaround(tmp_path):
    with pytest.raises(TypeError, match=r"whole Linear object.*state_dict\(\).*load_state_dict"):
        torch.save(nn.Linear(2, 2), tmp_path / "m.pt")
    assert not (tmp_path / "m.pt").exists()


def test_rnn_flatten_parameters_is_accepted():
    lstm = nn.LSTM(3, 4, 2)
    assert lstm.flatten_parameters() is None


# ---------------------------------------------------------------- nn.Transformer
def test_transformer_structure_init_and_mask():
    torch.manual_seed(0)
    m = nn.Transformer(d_model=16, nhead=2, num_encoder_layers=2, num_decoder_layers=1, dim_feedforward=32)
    keys = list(m.state_dict())
    assert "encoder.norm.weight" in keys and "decoder.layers.0.multihead_attn.in_proj_weight" in keys
    assert "decoder.layers.0.norm3.bias" in keys and "decoder.layers.1.norm1.weight" not in keys
    w = m.encoder.layers[0].linear1.weight.numpy()          # xavier_uniform_: bound sqrt(6 / (16 + 32))
    assert np.abs(w).max() <= math.sqrt(6 / 48) and np.abs(w).max() > 0.9 * math.sqrt(6 / 48)
    mask = nn.Transformer.generate_square_subsequent_mask(3).numpy()
    assert mask.tolist() == [[0, -math.inf, -math.inf], [0, 0, -math.inf], [0, 0, 0]]
    out = m(torch.randn(5, 2, 16), torch.randn(3, 2, 16), tgt_mask=nn.Transformer.generate_square_subsequent_mask(3))
    assert out.shape == (3, 2, 16)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(RuntimeError, match="batch number"):
        m(torch.randn(5, 2, 16), torch.randn(3, 4, 16))


def test_transformer_subclass_as_in_word_language_model():
    """TransformerModel(nn.Transformer) uses self.encoder with a float mask and replaces decoder."""
    class TransformerModel(nn.Transformer):
        def __init__(self, ntoken, ninp, nhead, nhid, nlayers):
            super().__init__(d_model=ninp, nhead=nhead, dim_feedforward=nhid, num_encoder_layers=nlayers)
            self.input_emb = nn.Embedding(ntoken, ninp)
            self.decoder = nn.Linear(ninp, ntoken)

        def forward(self, src):
            mask = torch.log(torch.tril(torch.ones(len(src), len(src))))
            return nn.functional.log_softmax(self.decoder(self.encoder(self.input_emb(src), mask=mask)), dim=-1)

    m = TransformerModel(11, 8, 2, 16, 2)
    out = m(torch.randint(0, 11, (6, 3)))
    assert out.shape == (6, 3, 11)
    out.sum().backward()
    assert all(p.grad is not None for p in m.parameters())


@pytest.mark.parametrize("batch_first,norm_first", [(False, False), (True, True)])
def test_transformer_matches_torch(batch_first, norm_first):
    t = pytest.importorskip("torch")
    t.manual_seed(0)
    kw = dict(d_model=16, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, dropout=0.0,
              batch_first=batch_first, norm_first=norm_first)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = t.nn.Transformer(**kw).eval()
    ours = nn.Transformer(**kw).eval()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict({k: v.numpy() for k, v in theirs.state_dict().items()})
    rng = np.random.default_rng(0)
    src = rng.standard_normal((3, 5, 16) if batch_first else (5, 3, 16)).astype(np.float32)
    tgt = rng.standard_normal((3, 4, 16) if batch_first else (4, 3, 16)).astype(np.float32)
    kpm = np.zeros((3, 5), bool)
    kpm[1, 3:] = True
    with t.no_grad():
        want = theirs(t.tensor(src), t.tensor(tgt), tgt_mask=t.nn.Transformer.generate_square_subsequent_mask(4),
                      src_key_padding_mask=t.tensor(kpm), memory_key_padding_mask=t.tensor(kpm)).numpy()
    got = ours(torch.tensor(src), torch.tensor(tgt), tgt_mask=nn.Transformer.generate_square_subsequent_mask(4),
               src_key_padding_mask=kpm, memory_key_padding_mask=kpm).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
