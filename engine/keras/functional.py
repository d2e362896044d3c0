"""The Keras functional API: keras.Input, layers called on symbolic tensors, keras.Model(inputs, outputs).

Why: most Keras code beyond a plain stack (skip connections, two branches merged with
Add or Concatenate) is written this way.  Calling a layer on a `KerasTensor` builds
the layer for that shape and records a node (layer, inbound tensors); the model keeps
the nodes in topological order and replays them on real tensors.  One input and one
output; a layer may be called more than once (shared weights).
"""
from __future__ import annotations

from .layers.base import CF, InputShapeError, Layer, shape_str, shapes_compatible, to_channels_last
from .layers.core import InputLayer
from .training import Model

__all__ = ["KerasTensor", "Functional", "is_symbolic"]


class KerasTensor:
    """A symbolic tensor: a shape (batch axis None) and the layer call that produces it."""

    _count = 0

    def __init__(self, shape, layer, inbound=()):
        self.shape = tuple(shape)
        self.dtype = "float32"
        self._layer = layer                 # the producing layer (an InputLayer for inputs)
        self._inbound = list(inbound)       # the KerasTensors the layer was called on
        KerasTensor._count += 1
        self._id = KerasTensor._count

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"<KerasTensor shape={shape_str(self.shape)}, from layer '{self._layer.name}'>"


def is_symbolic(x) -> bool:
    if isinstance(x, (list, tuple)):
        return bool(x) and all(isinstance(t, KerasTensor) for t in x)
    return isinstance(x, KerasTensor)


def symbolic_input(input_layer: InputLayer) -> KerasTensor:
    t = KerasTensor((None,) + tuple(input_layer._batch_input_shape[1:]), input_layer)
    input_layer._symbolic_output = t
    return t


def call_symbolic(layer: Layer, inputs):
    """layer(KerasTensor or list of them): build the layer for the shapes, return the output tensor."""
    shapes = [t.shape for t in inputs] if isinstance(inputs, (list, tuple)) else inputs.shape
    if isinstance(inputs, (list, tuple)):
        out_shape = layer._build_for_many(shapes)
    else:
        out_shape = layer._build_for(shapes)
    inbound = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    return KerasTensor(out_shape, layer, inbound)


class Functional(Model):
    """keras.Model(inputs=keras.Input(...), outputs=...): a graph of layer calls."""

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, **kwargs):
        if kwargs:
            raise TypeError(f"Model: unexpected keyword argument(s) {', '.join(sorted(kwargs))}")
        inputs, outputs = _single(inputs, "inputs"), _single(outputs, "outputs")
        super().__init__(name=name, trainable=trainable)
        if not isinstance(inputs._layer, InputLayer):
            raise ValueError("Model(inputs=...): inputs must come from keras.Input(shape=...)")
        self._input_tensor, self._output_tensor = inputs, outputs
        self._nodes = _topological_nodes(inputs, outputs)
        for layer in dict.fromkeys(node[0] for node in self._nodes):   # shared layers once
            if layer.name in self._modules:
                raise ValueError(f'all layers of a model need unique names; "{layer.name}" is used twice')
            self.add_module(layer.name, layer)
        self.input_shape_built = inputs.shape
        self.output_shape_built = outputs.shape
        self._batch_input_shape = inputs._layer._batch_input_shape
        self.built = True

    @property
    def input_shape(self):
        return self.input_shape_built

    @property
    def output_shape(self):
        return self.output_shape_built

    @property
    def inputs(self):
        return [self._input_tensor]

    @property
    def outputs(self):
        return [self._output_tensor]

    def check_input_shape(self, shape, built=True, x_shape=None):
        expected, shape = self.input_shape_built, tuple(shape)
        if not shapes_compatible((None,) + tuple(expected[1:]), (None,) + shape[1:]):
            found = x_shape if x_shape is not None else shape
            raise InputShapeError(f'Input 0 of model "{self.name}" is incompatible with it: expected '
                                  f"shape={shape_str(expected)}, found shape={shape_str(found)}")

    # ------------------------------------------------------------------ forward
    def _final_activation(self):
        return self._output_tensor._layer.output_activation()

    def _forward(self, x, training, logits=False):
        self.check_input_shape(tuple(x.shape))
        values = {self._input_tensor._id: x}
        last = len(self._nodes) - 1
        for i, (layer, inbound, out) in enumerate(self._nodes):
            args = [values[t._id] for t in inbound]
            if i == last and logits:            # stop before the final softmax: the loss is fused
                y, layout = layer.call_internal(args[0], "channels_last", bool(training), final_logits=True)
                values[out._id] = to_channels_last(y) if layout == CF else y
            else:
                values[out._id] = layer(args if len(args) > 1 else args[0], training=training)
        return values[self._output_tensor._id]

    def call(self, inputs, training=False):
        return self._forward(inputs, training)

    def __call__(self, inputs, training=None, **kwargs):
        if is_symbolic(inputs):                 # a functional model used as a layer of another one
            raise NotImplementedError("calling a functional Model on symbolic tensors (nesting models) is not "
                                      "supported; build one model from the layers")
        return super().__call__(inputs, training=training, **kwargs)

    def _build_for(self, input_shape):
        self.check_input_shape(tuple(input_shape))
        return self.output_shape_built

    def compute_output_shape(self, input_shape):
        return self.output_shape_built

    def output_activation(self):
        return self._final_activation()

    # ------------------------------------------------------------------ config
    def get_config(self):
        from .saving import layer_to_json
        key = {self._input_tensor._id: [self._input_tensor._layer.name, 0]}
        nodes, calls = [], {}
        for layer, inbound, out in self._nodes:
            k = calls.get(layer.name, 0)
            calls[layer.name] = k + 1
            key[out._id] = [layer.name, k]
            nodes.append({"layer": layer.name, "inbound": [key[t._id] for t in inbound]})
        layers, seen = [], set()
        for layer, _, _ in self._nodes:
            if layer.name not in seen:
                seen.add(layer.name)
                layers.append(layer_to_json(layer))
        inp = self._input_tensor._layer
        return {"name": self.name, "trainable": self.trainable,
                "input": {"name": inp.name, "shape": list(inp._batch_input_shape[1:])},
                "layers": layers, "nodes": nodes, "output": key[self._output_tensor._id]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from .layers.core import Input
        from .saving import layer_from_json
        inp = Input(shape=tuple(config["input"]["shape"]), name=config["input"]["name"])
        layers = {spec["config"]["name"]: layer_from_json(spec, custom_objects) for spec in config["layers"]}
        tensors = {(config["input"]["name"], 0): inp}
        calls: dict = {}
        for node in config["nodes"]:
            layer = layers[node["layer"]]
            args = [tensors[tuple(k)] for k in node["inbound"]]
            k = calls.get(layer.name, 0)
            calls[layer.name] = k + 1
            tensors[(layer.name, k)] = layer(args if len(args) > 1 else args[0])
        return cls(inputs=inp, outputs=tensors[tuple(config["output"])], name=config.get("name"),
                   trainable=config.get("trainable", True))


def _single(x, what):
    if isinstance(x, (list, tuple)):
        if len(x) != 1:
            raise NotImplementedError(f"Model({what}=...): models with {len(x)} {what} are not supported yet; "
                                      f"use one input and one output (merge branches with layers.Concatenate)")
        x = x[0]
    if isinstance(x, dict):
        raise NotImplementedError(f"Model({what}=...): dicts of tensors are not supported; pass one KerasTensor")
    if not isinstance(x, KerasTensor):
        raise TypeError(f"Model({what}=...) expects a KerasTensor from keras.Input / a layer call, "
                        f"got {type(x).__name__}")
    return x


def _topological_nodes(inputs: KerasTensor, outputs: KerasTensor):
    """(layer, inbound tensors, output tensor) for every call between inputs and outputs, in order."""
    order, state = [], {}

    def visit(t):
        if t is inputs:
            return
        if state.get(t._id) == "done":
            return
        if isinstance(t._layer, InputLayer):
            raise ValueError(f"Model(outputs=...) depends on an input that is not `inputs` "
                             f"({t!r}); a model has one input")
        if state.get(t._id) == "visiting":  # pragma: no cover - layer calls cannot form cycles
            raise ValueError("the layer graph has a cycle")
        state[t._id] = "visiting"
        for src in t._inbound:
            visit(src)
        state[t._id] = "done"
        order.append((t._layer, t._inbound, t))

    visit(outputs)
    if not order:
        raise ValueError("Model(inputs, outputs): outputs is the input itself; add at least one layer")
    return order
