"""MultiheadAttention, TransformerEncoderLayer, TransformerEncoder, TransformerDecoderLayer,
TransformerDecoder and Transformer with PyTorch's arguments, parameter names (in_proj_weight /
in_proj_bias / out_proj, linear1 / linear2 / norm1 / norm2 / norm3, encoder / decoder),
initialisation and mask conventions, so a torch transformer's state_dict loads unchanged.

Composed from existing autodiff nodes (linear, matmul, softmax, dropout, layer_norm): attention
is a handful of batched matmuls whose gradients come for free, and one (N, heads, L, S) score
tensor per call -- fine for the sequence lengths ported scripts train on the CPU.
"""
from __future__ import annotations

import copy

import numpy as np

from .. import ops as _ops
from ..tensor import Tensor
from . import functional as F
from . import init
from ._factory import new_param
from .dropout import Dropout
from .functional import ShapeError
from .linear import Linear
from .module import Module, ModuleList
from .normalization import LayerNorm


class MultiheadAttention(Module):
    """Multi-head attention: forward(query, key, value, key_padding_mask=None, need_weights=True,
    attn_mask=None, average_attn_weights=True, is_causal=False) -> (output, weights or None).

    Masks follow MultiheadAttention's convention: bool True = NOT allowed to attend, float = added
    to the scores.  key_padding_mask is (N, S); attn_mask is (L, S) or (N * num_heads, L, S).
    Inputs are (L, N, E), or (N, L, E) with batch_first=True, or unbatched (L, E).
    """

    def __init__(self, embed_dim, num_heads, dropout=0.0, bias=True, add_bias_kv=False, add_zero_attn=False,
                 kdim=None, vdim=None, batch_first=False, device=None, dtype=None):
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be positive, got {embed_dim} and {num_heads}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} must be divisible by num_heads {num_heads}")
        if add_bias_kv or add_zero_attn:
            raise NotImplementedError("MultiheadAttention: add_bias_kv / add_zero_attn are not supported")
        self.embed_dim, self.num_heads = int(embed_dim), int(num_heads)
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout, self.batch_first = float(dropout), bool(batch_first)
        self.head_dim = embed_dim // num_heads
        if self._qkv_same_embed_dim:
            self.in_proj_weight = new_param((3 * embed_dim, embed_dim), device, dtype)
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = new_param((embed_dim, embed_dim), device, dtype)
            self.k_proj_weight = new_param((embed_dim, self.kdim), device, dtype)
            self.v_proj_weight = new_param((embed_dim, self.vdim), device, dtype)
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = new_param((3 * embed_dim,), device, dtype)
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, device=device, dtype=dtype)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self):
        """torch's: xavier_uniform_ projections, zero biases (out_proj.weight keeps Linear's init)."""
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def extra_repr(self):
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"

    def _project(self, query, key, value):
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[0:E], b[E:2 * E], b[2 * E:])
        if self._qkv_same_embed_dim:
            W = self.in_proj_weight
            if query is key and key is value:           # self-attention: one (3E, E) projection
                qkv = F.linear(query, W, b)
                return qkv[..., 0:E], qkv[..., E:2 * E], qkv[..., 2 * E:]
            wq, wk, wv = W[0:E], W[E:2 * E], W[2 * E:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        q_in, k_in, v_in = (t if isinstance(t, Tensor) else Tensor(t) for t in (query, key, value))
        if q_in.ndim not in (2, 3) or q_in.shape[-1] != self.embed_dim:
            raise ShapeError(f"{self!r}: expected query of shape (L, N, {self.embed_dim}) "
                             f"({'(N, L, E) with batch_first' if self.batch_first else 'batch_first=False'}) "
                             f"or unbatched (L, {self.embed_dim}), got {q_in.shape}")
        same_kv = k_in is v_in
        self_attn = q_in is k_in and same_kv
        unbatched = q_in.ndim == 2
        if unbatched:
            q_in, k_in, v_in = (_ops.unsqueeze(t, 1) for t in (q_in, k_in, v_in))
            if key_padding_mask is not None:
                kpm = key_padding_mask.data if isinstance(key_padding_mask, Tensor) else key_padding_mask
                key_padding_mask = (kpm if hasattr(kpm, "shape") else np.asarray(kpm))[None]
        elif self.batch_first:          # to (L, N, E), as torch does internally
            q_in, k_in, v_in = (_ops.transpose(t, (1, 0, 2)) for t in (q_in, k_in, v_in))
        if self_attn:
            k_in = v_in = q_in
        elif same_kv:
            v_in = k_in
        L, N, _ = q_in.shape
        S = k_in.shape[0]
        H, D = self.num_heads, self.head_dim
        q, k, v = self._project(q_in, k_in, v_in)

        def heads(t, n):                 # (n, N, E) -> (N, H, n, D)
            return _ops.transpose(_ops.reshape(t, (n, N, H, D)), (1, 2, 0, 3))

        q, k, v = heads(q, L), heads(k, S), heads(v, S)
        mask_add = self._mask(attn_mask, key_padding_mask, is_causal, q, L, S, N)
        p = self.dropout if self.training else 0.0
        out, w = F._attention(q, k, v, mask_add, p)
        out = _ops.reshape(_ops.transpose(out, (2, 0, 1, 3)), (L, N, self.embed_dim))
        out = self.out_proj(out)
        if unbatched:
            out = _ops.squeeze(out, 1)
        elif self.batch_first:
            out = _ops.transpose(out, (1, 0, 2))
        if not need_weights:
            return out, None
        if average_attn_weights:
            w = _ops.mean(w, axis=1)
        if unbatched:
            w = _ops.squeeze(w, 0)
        return out, w

    def _mask(self, attn_mask, key_padding_mask, is_causal, like, L, S, N):
        """attn_mask and key_padding_mask merged into one additive array broadcastable to (N, H, L, S)."""
        from ..backend import get_array_module
        xp = get_array_module(like.data)
        if is_causal and attn_mask is None:
            attn_mask = ~xp.tril(xp.ones((L, S), dtype=bool))       # torch requires the mask; we build it
        total = None
        if attn_mask is not None:
            m = F._additive_mask(attn_mask, like, true_means_masked=True)
            if m.ndim == 3:
                if m.shape != (N * self.num_heads, L, S):
                    raise ShapeError(f"{self!r}: 3-D attn_mask must be {(N * self.num_heads, L, S)}, got {m.shape}")
                m = m.reshape(N, self.num_heads, L, S)
            elif m.shape != (L, S):
                raise ShapeError(f"{self!r}: attn_mask must be {(L, S)} or {(N * self.num_heads, L, S)}, "
                                 f"got {m.shape}")
            total = m
        if key_padding_mask is not None:
            m = F._additive_mask(key_padding_mask, like, true_means_masked=True)
            if m.shape != (N, S):
                raise ShapeError(f"{self!r}: key_padding_mask must be {(N, S)}, got {m.shape}")
            m = m.reshape(N, 1, 1, S)
            total = m if total is None else total + m
        return total


def _activation_fn(activation):
    if isinstance(activation, str):
        if activation == "relu":
            return F.relu
        if activation == "gelu":
            return F.gelu
        raise RuntimeError(f"activation should be relu/gelu, not {activation}")
    return activation


class TransformerEncoderLayer(Module):
    """Self-attention + feed-forward block (post-norm by default, pre-norm with norm_first=True),
    torch's submodule names: self_attn, linear1, dropout, linear2, norm1, norm2, dropout1, dropout2."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, device=None, dtype=None):
        super().__init__()
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            device=device, dtype=dtype)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, device=device, dtype=dtype)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, device=device, dtype=dtype)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, device=device, dtype=dtype)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation_fn(activation)     # a Module activation is registered as a child

    def forward(self, src, src_mask=None, src_key_padding_mask=None, is_causal=False):
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x):
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)


class TransformerEncoder(Module):
    """num_layers deep copies of encoder_layer (layers.0, layers.1, ...) and an optional final norm."""

    def __init__(self, encoder_layer, num_layers, norm=None, enable_nested_tensor=True, mask_check=True):
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src, mask=None, src_key_padding_mask=None, is_causal=None):
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=bool(is_causal))
        return self.norm(x) if self.norm is not None else x


class TransformerDecoderLayer(Module):
    """Self-attention, cross-attention over the encoder's memory, then feed-forward (post-norm by
    default, pre-norm with norm_first=True); torch's submodule names: self_attn, multihead_attn,
    linear1, dropout, linear2, norm1, norm2, norm3, dropout1, dropout2, dropout3."""

    def __init__(self, d_model, nhead, dim_feedforward=2048, dropout=0.1, activation="relu", layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first, **kw)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                                 batch_first=batch_first, **kw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **kw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **kw)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.norm3 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _activation_fn(activation)

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=False, memory_is_causal=False):
        x = tgt
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha_block(self.norm2(x), memory, memory_mask, memory_key_padding_mask, memory_is_causal)
            x = x + self._ff_block(self.norm3(x))
        else:
            x = self.norm1(x + self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal))
            x = self.norm2(x + self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal))
            x = self.norm3(x + self._ff_block(x))
        return x

    def _sa_block(self, x, attn_mask, key_padding_mask, is_causal):
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask, need_weights=False,
                           is_causal=bool(is_causal))[0]
        return self.dropout1(x)

    def _mha_block(self, x, mem, attn_mask, key_padding_mask, is_causal):
        x = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                need_weights=False, is_causal=bool(is_causal))[0]
        return self.dropout2(x)

    def _ff_block(self, x):
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout3(x)


class TransformerDecoder(Module):
    """num_layers deep copies of decoder_layer (layers.0, layers.1, ...) and an optional final norm."""

    def __init__(self, decoder_layer, num_layers, norm=None):
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(decoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None, tgt_is_causal=None, memory_is_causal=False):
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                      tgt_is_causal=bool(tgt_is_causal), memory_is_causal=memory_is_causal)
        return self.norm(x) if self.norm is not None else x


class Transformer(Module):
    """torch.nn.Transformer: encoder (num_encoder_layers, final LayerNorm) + decoder
    (num_decoder_layers, final LayerNorm); every parameter with more than one dimension is then
    re-initialised with xavier_uniform_, as torch's _reset_parameters does, so a seeded model has
    torch's initial distribution and a torch state_dict loads key for key.

    forward(src, tgt, ...) -> decoder output.  Subclasses (the word-language-model example's
    TransformerModel) often use only `self.encoder` and replace `self.decoder`."""

    def __init__(self, d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048,
                 dropout=0.1, activation="relu", custom_encoder=None, custom_decoder=None, layer_norm_eps=1e-5,
                 batch_first=False, norm_first=False, bias=True, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                                            batch_first, norm_first, bias, **kw)
            self.encoder = TransformerEncoder(layer, num_encoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw))
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                                            batch_first, norm_first, bias, **kw)
            self.decoder = TransformerDecoder(layer, num_decoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw))
        self._reset_parameters()
        self.d_model, self.nhead, self.batch_first = d_model, nhead, batch_first

    def _reset_parameters(self):
        for p in self.parameters():
            if p.ndim > 1:
                init.xavier_uniform_(p)

    def forward(self, src, tgt, src_mask=None, tgt_mask=None, memory_mask=None, src_key_padding_mask=None,
                tgt_key_padding_mask=None, memory_key_padding_mask=None, src_is_causal=None, tgt_is_causal=None,
                memory_is_causal=False):
        batched = src.ndim == 3
        bdim = 0 if self.batch_first else 1
        if batched and src.shape[bdim] != tgt.shape[bdim]:
            raise RuntimeError("the batch number of src and tgt must be equal")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise RuntimeError("the feature number of src and tgt must be equal to d_model")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask,
                              is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask,
                            memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                            memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz, device=None, dtype=None):
        """(sz, sz) float mask: 0 on and below the diagonal, -inf above (a causal mask)."""
        m = np.triu(np.full((sz, sz), -np.inf, dtype=np.dtype(dtype or "float32")), k=1)
        return Tensor(m, device=device)
