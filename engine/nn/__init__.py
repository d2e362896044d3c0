"""engine.nn: layers, losses and containers with PyTorch's names, arguments, parameter names and
state_dict keys, built on fused autodiff ops (engine.nn.functional)."""
from ._memory import tune_malloc as _tune_malloc

_tune_malloc()   # reuse freed activation memory instead of page-faulting it back every step

from . import functional, init
from .parameter import Parameter
from .module import (Module, Sequential, ModuleList, ModuleDict, ParameterList, ParameterDict, StateDictError,
                     IncompatibleKeys)
from .linear import Identity, Linear, Flatten, Unflatten
from .conv import Conv1d, Conv2d
from .pooling import MaxPool2d, AvgPool2d, AdaptiveAvgPool2d
from .activation import (ReLU, LeakyReLU, Tanh, Sigmoid, GELU, Softmax, LogSoftmax, SiLU, ELU, Softplus, Hardtanh,
                         ReLU6)
from .dropout import Dropout, Dropout1d, Dropout2d, Dropout3d
from .normalization import BatchNorm1d, BatchNorm2d, LayerNorm, GroupNorm
from .sparse import Embedding
from .rnn import RNNBase, RNN, LSTM, GRU, RNNCellBase, RNNCell, LSTMCell, GRUCell
from .transformer import (MultiheadAttention, TransformerEncoderLayer, TransformerEncoder, TransformerDecoderLayer,
                          TransformerDecoder, Transformer)
from .loss import (CrossEntropyLoss, NLLLoss, MSELoss, L1Loss, BCEWithLogitsLoss, BCELoss, SmoothL1Loss, HuberLoss,
                   KLDivLoss)
from .functional import ShapeError

try:                      # clip_grad_norm_ & co. (written separately; optional while it is absent)
    from . import utils   # noqa: F401
except ModuleNotFoundError as _e:  # pragma: no cover
    if _e.name != __name__ + ".utils":
        raise

__all__ = [
    "functional", "init", "Parameter", "Module", "Sequential", "ModuleList", "ModuleDict", "StateDictError",
    "IncompatibleKeys", "Identity", "Linear", "Flatten", "Unflatten", "Conv2d", "MaxPool2d", "AvgPool2d",
    "ReLU", "LeakyReLU", "Tanh", "Sigmoid", "GELU", "Softmax", "LogSoftmax", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
    "BatchNorm1d",
    "BatchNorm2d", "LayerNorm", "Embedding", "RNNBase", "RNN", "LSTM", "GRU", "CrossEntropyLoss", "NLLLoss",
    "MSELoss", "L1Loss", "ShapeError", "utils",
    "ParameterList", "ParameterDict", "Conv1d", "AdaptiveAvgPool2d", "SiLU", "ELU", "Softplus", "Hardtanh", "ReLU6",
    "GroupNorm", "RNNCellBase", "RNNCell", "LSTMCell", "GRUCell", "MultiheadAttention", "TransformerEncoderLayer",
    "TransformerEncoder", "TransformerDecoderLayer", "TransformerDecoder", "Transformer", "BCEWithLogitsLoss",
    "BCELoss", "SmoothL1Loss", "HuberLoss", "KLDivLoss",
]
