"""keras.layers: the Keras layer classes, channels-last, on engine.nn.Module."""
from .base import Layer, InputShapeError
from .core import InputLayer, Input, Dense, Embedding, Activation, ReLU, Softmax, Dropout, Flatten, Reshape
from .convolutional import (Conv2D, MaxPooling2D, AveragePooling2D, GlobalAveragePooling2D,
                            GlobalMaxPooling2D)
from .normalization import BatchNormalization
from .recurrent import GRU, LSTM
from .merge import Add, Subtract, Multiply, Average, Concatenate

# Keras aliases
Convolution2D = Conv2D
MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D

__all__ = ["Layer", "InputShapeError", "InputLayer", "Input", "Dense", "Embedding", "Activation", "ReLU", "Softmax",
           "Dropout", "Flatten", "Reshape", "Conv2D", "Convolution2D", "MaxPooling2D", "MaxPool2D",
           "AveragePooling2D", "AvgPool2D", "GlobalAveragePooling2D", "GlobalAvgPool2D",
           "GlobalMaxPooling2D", "GlobalMaxPool2D", "BatchNormalization", "LSTM", "GRU", "Add", "Subtract",
           "Multiply", "Average", "Concatenate"]


def _registry():
    """class name -> class, for rebuilding saved models."""
    return {name: obj for name, obj in globals().items()
            if isinstance(obj, type) and issubclass(obj, Layer) and obj is not Layer and not name.startswith("_")}
