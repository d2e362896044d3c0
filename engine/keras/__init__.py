"""engine.keras: the Keras facade over the engine.

Keras programs run with only their import changed:

    from engine.keras import layers, models, datasets
    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation='relu', input_shape=(28, 28, 1)),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation='relu'),
        layers.Dense(10, activation='softmax')])
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    model.fit(x_train, y_train, epochs=5, batch_size=32)

Also `from engine import keras` with keras.Sequential / keras.layers / keras.Input, and
`from engine.keras.models import Sequential, load_model`.  Layers are channels-last
like Keras', initialised like Keras' (glorot_uniform kernels, zero biases), and the
optimizers have Keras' defaults.  Models are engine.nn.Modules.
"""
from . import (activations, backend, callbacks, constraints, datasets, initializers, layers, losses, metrics,
               models, ops, optimizers, preprocessing, regularizers, utils)
from .callbacks import Callback, History
from .layers import Input, InputLayer
from .models import Model, Sequential, load_model
from .utils import set_random_seed, to_categorical

__version__ = "3.0-dptrain"

__all__ = ["activations", "backend", "callbacks", "constraints", "regularizers", "datasets", "initializers", "layers", "losses",
           "metrics", "models", "ops", "optimizers", "preprocessing", "utils", "Callback", "History", "Input", "InputLayer",
           "Model", "Sequential", "load_model", "set_random_seed", "to_categorical"]
