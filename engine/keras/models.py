"""keras.models: Sequential, Model, load_model."""
from __future__ import annotations

from .layers.base import (CF, CL, InputShapeError, Layer, name_scope, shape_str, shapes_compatible, to_channels_last,
                          warn_mask_dropped, _as_shape)
from .layers.core import InputLayer
from .training import Model
from .functional import Functional

__all__ = ["Sequential", "Model", "Functional", "load_model", "clone_model"]


class Sequential(Model):
    """A linear stack of layers: Sequential([layers.Conv2D(...), ..., layers.Dense(10)])."""

    def __init__(self, layers=None, name=None, trainable=True, **kwargs):
        super().__init__(name=name, trainable=trainable, **kwargs)
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------ structure
    @property
    def layers(self):
        return [m for m in self._modules.values() if isinstance(m, Layer)]

    def add(self, layer):
        from .functional import KerasTensor
        if isinstance(layer, KerasTensor) and isinstance(layer._layer, InputLayer):
            layer = layer._layer                # keras.Input(...) as the first entry
        if isinstance(layer, InputLayer):
            if self.layers:
                raise ValueError("an Input / InputLayer can only be the first entry of a Sequential model")
            self._batch_input_shape = layer._batch_input_shape
            self._maybe_build()
            return
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential.add expects a keras layer, got {type(layer).__name__}"
                            + (" (engine.nn modules are PyTorch-style: use engine.nn.Sequential for them)"
                               if hasattr(layer, "parameters") else ""))
        if getattr(layer, "_data_pipeline_only", False):      # TextVectorization / StringLookup / IntegerLookup
            raise layer.in_model_error()
        if layer.name in self._modules:
            raise ValueError(f'all layers in a Sequential model need unique names; "{layer.name}" is used '
                             "twice (the same layer object added twice?)")
        if isinstance(layer, Model) and (layer._n_inputs() > 1 or getattr(layer, "_multi", False)):
            raise ValueError(f'model "{layer.name}" has {layer._n_inputs()} input(s) and '
                             f"{len(getattr(layer, 'output_names', [0]))} output(s); every layer of a Sequential "
                             "model takes one tensor and gives one. Use the functional API (keras.Model(inputs, "
                             "outputs)) around it instead")
        if not self.layers and self._batch_input_shape is None and layer._batch_input_shape is not None:
            self._batch_input_shape = layer._batch_input_shape
        elif self.layers and layer._batch_input_shape is not None and self.built:
            pass                                # Keras ignores input_shape on later layers
        self.add_module(layer.name, layer)
        self.built = False
        self._maybe_build()

    def pop(self):
        if not self.layers:
            raise TypeError("there are no layers in the model")
        last = self.layers[-1]
        del self._modules[last.name]
        self.built = False
        self._maybe_build()
        return last

    def _maybe_build(self):
        if self._batch_input_shape is not None and self.layers:
            self.build(self._batch_input_shape)

    def build(self, input_shape=None):
        if input_shape is None:
            input_shape = self._batch_input_shape
        if input_shape is None:
            raise ValueError("Sequential.build needs input_shape (e.g. (None, 28, 28, 1))")
        shape = (None,) + tuple(_as_shape(input_shape)[1:])
        self.input_shape_built = shape
        with name_scope(self.name):             # weight paths "sequential/dense/kernel", as Keras 3's
            for layer in self.layers:
                shape = layer._build_for(shape)
                if isinstance(shape, list):
                    raise ValueError(f'layer "{layer.name}" ({type(layer).__name__}) has several outputs '
                                     f"{shape_str(shape)}; every layer of a Sequential model needs a single "
                                     "output (Keras' rule): build multi-output models (return_state=True) with "
                                     "the functional API")
        self.output_shape_built = shape
        self.built = True

    def _build_for(self, input_shape):
        """Built as (or called as) a layer of another model.  Built already, it keeps its weights, so the
        shape must fit the one it was built for (a shared sub-model gets the same answer at every call)."""
        shape = (None,) + tuple(input_shape[1:])
        if self.built and self.input_shape_built is not None:
            if not shapes_compatible(self.input_shape_built, shape):
                raise self._nested_input_error(self.input_shape_built, shape)
            return self.output_shape_built
        self.build(shape)
        return self.output_shape_built

    def compute_output_shape(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.layers:
            shape = layer.compute_output_shape(shape)
        return shape

    @property
    def input_shape(self):
        return self.input_shape_built

    @property
    def output_shape(self):
        return self.output_shape_built

    def check_input_shape(self, shape, built=True, x_shape=None):
        if not self.built or self.input_shape_built is None:
            if self.layers:
                self.layers[0].check_input_shape(shape, built=False)
            return
        expected = self.input_shape_built
        shape = tuple(shape)
        if not shapes_compatible((None,) + tuple(expected[1:]), (None,) + shape[1:]):
            first = self.layers[0] if self.layers else self
            found = x_shape if x_shape is not None else shape
            hint = first._shape_hint(shape) if hasattr(first, "_shape_hint") else ""
            if not hint and len(shape) + 1 == len(expected) and expected[-1] == 1:
                hint = f"; add the channel axis: x.reshape({shape_str((-1,) + tuple(expected[1:]))})"
            raise InputShapeError(
                f'Input 0 of layer "{first.name}" ({type(first).__name__}) is incompatible with the layer: '
                f"expected shape={shape_str(expected)}, found shape={shape_str(found)}{hint}")

    # ------------------------------------------------------------------ forward
    def _final_activation(self):
        layers = self.layers
        return layers[-1].output_activation() if layers else None

    def _forward(self, x, training, logits=False):
        return self._forward_masked(x, training, logits)[0]

    def _forward_masked(self, x, training, logits=False, mask=None):
        """The forward pass with the mask handed from layer to layer -> (output, its mask)."""
        layout = CL
        layers = self.layers
        last = len(layers) - 1
        i = 0
        while i <= last:
            layer = layers[i]
            if i < last and getattr(layer, "fusable_with_pool", None) is not None \
                    and layer.fusable_with_pool(layers[i + 1]) and not (logits and i + 1 == last):
                if mask is not None:                # a convolution takes no mask (Keras drops it)
                    warn_mask_dropped(layer)
                    mask = None
                x, layout = layer.call_fused_pool(x, layout)
                i += 2
                continue
            x, layout, mask = layer.call_internal_masked(x, mask, layout, training,
                                                         final_logits=logits and i == last)
            i += 1
        return (to_channels_last(x) if layout == CF else x), mask

    def call(self, inputs, training=False):
        return self._forward(inputs, training)

    def output_activation(self):
        return self._final_activation()

    # ------------------------------------------------------------------ config
    def get_config(self):
        from .saving import layer_to_json
        return {"name": self.name, "trainable": self.trainable,
                "build_input_shape": list(self.input_shape_built) if self.input_shape_built else None,
                "layers": [layer_to_json(layer) for layer in self.layers]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from .saving import layer_from_json
        model = cls(name=config.get("name"), trainable=config.get("trainable", True))
        for lc in config["layers"]:
            model.add(layer_from_json(lc, custom_objects))
        shape = config.get("build_input_shape")
        if shape is not None and not model.built:
            model.build(tuple(shape))
        return model


def load_model(filepath, custom_objects=None, compile=True):
    """Rebuild a model saved with model.save(): same architecture, weights and, when it was
    compiled, the same loss / metrics / optimizer state."""
    from .saving import load_model as _load
    return _load(filepath, custom_objects=custom_objects, compile=compile)


def clone_model(model):
    """A new model with the same architecture and freshly initialised weights; compiled like the
    original when that one is (Keras 3 compiles the clone from the original's compile config)."""
    from .saving import compile_from_config, layer_from_json, layer_to_json
    clone = layer_from_json(layer_to_json(model))
    if getattr(model, "compiled", False):
        compile_from_config(clone, model.get_compile_config())
    return clone
