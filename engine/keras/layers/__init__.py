"""keras.layers: the Keras layer classes, channels-last, on engine.nn.Module."""
from .base import Layer, InputShapeError
from .core import (InputLayer, Input, Dense, Embedding, Masking, Activation, ReLU, LeakyReLU, Softmax, Dropout, Flatten,
                   Reshape)
from .convolutional import (Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
                            GlobalMaxPooling2D)
from .normalization import BatchNormalization, LayerNormalization
from .attention import AdditiveAttention, Attention, GroupedQueryAttention, MultiHeadAttention

GroupQueryAttention = GroupedQueryAttention     # Keras 3 exports it under this name
from .recurrent import GRU, LSTM, SimpleRNN
from .merge import Add, Subtract, Multiply, Average, Concatenate
from .convolutional_1d import (Conv1D, MaxPooling1D, AveragePooling1D, GlobalAveragePooling1D,
                               GlobalMaxPooling1D)
from .wrappers import Bidirectional, Lambda, TimeDistributed
from .preprocessing import Normalization, Rescaling
from .lookup import IntegerLookup, StringLookup
from .text import TextVectorization
from .separable import DepthwiseConv2D, SeparableConv2D
from .augmentation import RandomFlip, RandomRotation, RandomTranslation, RandomZoom
from .image_preprocessing import CenterCrop, RandomBrightness, RandomContrast, RandomCrop, Resizing

# Keras aliases
Convolution2D = Conv2D
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
Convolution1D = Conv1D
MaxPool1D = MaxPooling1D
AvgPool1D = AveragePooling1D
GlobalAvgPool1D = GlobalAveragePooling1D
GlobalMaxPool1D = GlobalMaxPooling1D
SeparableConvolution2D = SeparableConv2D


def serialize(layer) -> dict:
    """{"class_name", "config"} of a layer: what a user layer's get_config() stores for a layer it holds."""
    from ..saving import layer_to_json
    return layer_to_json(layer)


def deserialize(config, custom_objects=None):
    """The layer `serialize` described (in a user layer's from_config())."""
    from ..saving import layer_from_json
    return layer_from_json(config, custom_objects)


# the functional forms: layers.concatenate([a, b]) == layers.Concatenate()([a, b])
def concatenate(inputs, axis=-1, **kwargs):
    return Concatenate(axis=axis, **kwargs)(inputs)


def add(inputs, **kwargs):
    return Add(**kwargs)(inputs)


def subtract(inputs, **kwargs):
    return Subtract(**kwargs)(inputs)


def multiply(inputs, **kwargs):
    return Multiply(**kwargs)(inputs)


def average(inputs, **kwargs):
    return Average(**kwargs)(inputs)


# Keras layers this facade does not have, with what to do instead (instead of a bare AttributeError)
_MISSING: dict = {}


def __getattr__(name):
    if name in _MISSING:
        raise AttributeError(f"keras.layers.{name} is not available in dptrain's Keras facade: {_MISSING[name]}")
    raise AttributeError(f"module 'engine.keras.layers' has no attribute {name!r} (dptrain's Keras facade "
                         f"implements: {', '.join(sorted(__all__))})")

__all__ = ["Layer", "InputShapeError", "InputLayer", "Input", "Dense", "Embedding", "Masking", "Activation", "ReLU",
           "Softmax", "Dropout", "Flatten", "Reshape", "Conv2D", "Convolution2D", "MaxPooling2D", "MaxPool2D",
           "AveragePooling2D", "AvgPool2D", "GlobalAveragePooling2D", "GlobalAvgPool2D",
           "GlobalMaxPooling2D", "GlobalMaxPool2D", "BatchNormalization", "LayerNormalization",
           "MultiHeadAttention", "GroupQueryAttention", "GroupedQueryAttention", "Attention", "AdditiveAttention", "LSTM", "GRU", "SimpleRNN", "Add",
           "Subtract", "Multiply", "Average", "Concatenate", "Conv1D", "Convolution1D", "MaxPooling1D", "MaxPool1D",
           "AveragePooling1D", "AvgPool1D", "GlobalAveragePooling1D", "GlobalAvgPool1D", "GlobalMaxPooling1D",
           "GlobalMaxPool1D", "Bidirectional", "TimeDistributed", "Lambda", "Normalization", "Rescaling", "LeakyReLU",
           "TextVectorization", "StringLookup", "IntegerLookup",
           "SeparableConv2D", "SeparableConvolution2D", "DepthwiseConv2D",
           "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation",
           "RandomContrast", "RandomBrightness", "RandomCrop", "CenterCrop", "Resizing",
           "concatenate", "add", "subtract", "multiply", "average"]


def _registry():
    """class name -> class, for rebuilding saved models."""
    return {name: obj for name, obj in globals().items()
            if isinstance(obj, type) and issubclass(obj, Layer) and obj is not Layer and not name.startswith("_")}
