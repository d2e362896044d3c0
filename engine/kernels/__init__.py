"""Fused kernels behind array-module dispatch: every function takes numpy or cupy arrays.

numpy in  -> the vectorised numpy reference implementation (always available, also the test oracle);
cupy in   -> a CuPy kernel (RawKernel from the .cu files here, or an ElementwiseKernel whose body calls
             device functions from the .cuh files), compiled once per (kernel, dtype) and cached.

    available()                       cupy importable and a CUDA device present
    im2col, col2im                    conv / pooling data movement           (conv.py, conv.cu)
    softmax_xent_forward/_backward    fused cross-entropy                    (softmax_xent.py/.cu)
    bias_act_forward/_backward        fused bias + activation                (bias_act.py, act.cuh)
    sgd_momentum, adam                fused multi-tensor optimizer steps     (optim_fused.py/.cu)
    pack, unpack, layout              DDP gradient bucket                    (bucket.py/.cu)
    rnn_step                          fused LSTM/GRU/RNN time steps + GPU    (rnn_step.py/.cuh)
                                      layer loops (used by engine.nn._rnn)
    erf                               vectorised numpy erf (GELU on the CPU) (npmath.py)
"""
from ._runtime import available
from .bias_act import ACT_CODES, bias_act_backward, bias_act_forward
from .bucket import layout, pack, unpack
from .conv import col2im, get_conv_outsize, im2col
from .npmath import erf
from .optim_fused import adam, sgd_momentum
from . import rnn_step
from .softmax_xent import softmax_xent_backward, softmax_xent_forward

__all__ = ["available", "im2col", "col2im", "get_conv_outsize", "softmax_xent_forward", "softmax_xent_backward",
           "bias_act_forward", "bias_act_backward", "ACT_CODES", "sgd_momentum", "adam", "pack", "unpack",
           "layout", "erf", "rnn_step"]
