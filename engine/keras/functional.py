"""The Keras functional API: keras.Input, layers called on symbolic tensors, keras.Model(inputs, outputs).

Why: most Keras code beyond a plain stack (skip connections, two branches merged with
Add or Concatenate) is written this way.  Calling a layer on a `KerasTensor` builds
the layer for that shape and records a node (layer, inbound tensors, output tensors); the model
keeps the nodes in topological order and replays them on real tensors.  A node may have several
outputs (a recurrent layer with return_state=True: `out, h, c = LSTM(8, return_state=True)(x)`;
MultiHeadAttention with return_attention_scores=True), and a recurrent layer's initial_state=[...]
tensors and an attention layer's attention_mask are inbound tensors of its node too.  Several
inputs (a list, or a dict by input name; fit/predict take the arrays the same way) and several outputs (one
loss each, or one for all, with loss_weights; per-output metrics; logs named like Keras'
`<output>_loss` / `<output>_<metric>`); a layer may be called more than once (shared weights).
"""
from __future__ import annotations

import copy

from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optimizers as optimizers_mod
from .data_adapter import check_xy, standardize_inputs
from .layers.base import (CF, InputShapeError, Layer, as_mask, as_tensor_input, attach_mask, forward_pass,
                          resolve_training, training_scope,
                          is_shape_list, shape_str, shapes_compatible, to_channels_last)
from .layers.core import InputLayer
from .training import Model, loss_value, update_metric

__all__ = ["KerasTensor", "Functional", "is_symbolic"]


class Node:
    """One layer call in the graph: the layer, the tensors it was called on (`inputs`, one or a
    list for the merge layers, [query, value(, key)] for attention), the `states` given as
    initial_state (recurrent layers), other call arguments `kwargs` (JSON values such as
    use_causal_mask, or KerasTensors such as attention_mask), and the output tensor(s) it
    produced, in the order the call returns them."""

    def __init__(self, layer, inputs, states=(), kwargs=None):
        self.layer, self.inputs, self.states = layer, list(inputs), list(states)
        self.kwargs = dict(kwargs or {})
        self.outputs: list = []

    @property
    def inbound(self):
        return self.inputs + self.states + [v for v in self.kwargs.values() if isinstance(v, KerasTensor)]


class KerasTensor:
    """A symbolic tensor: a shape (batch axis None) and the layer call (node) that produces it;
    `_index` is its place among that call's outputs (0 unless the layer returns several)."""

    _count = 0

    def __init__(self, shape, layer, node=None, index=0):
        self.shape = tuple(shape)
        self.dtype = "float32"
        self._layer = layer                 # the producing layer (an InputLayer for inputs)
        self._node = node                   # the Node of that call (None for keras.Input)
        self._index = index
        KerasTensor._count += 1
        self._id = KerasTensor._count

    @property
    def _inbound(self):
        """The KerasTensors the producing call consumed."""
        return self._node.inbound if self._node is not None else []

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
    input_layer.built = True                      # model.layers[0] in summary(): shape, 0 params
    input_layer.input_shape_built = input_layer.output_shape_built = t.shape
    return t


def call_symbolic(layer: Layer, inputs, states=(), kwargs=None, output_shape=None):
    """layer(KerasTensor or list of them, initial_state=states, **kwargs): build the layer for the
    shapes (unless the layer did and gives `output_shape`) and return the output tensor, or a list
    of them when the output shape is a list of shapes."""
    if output_shape is not None:
        out_shape = output_shape
    elif isinstance(inputs, (list, tuple)):
        out_shape = layer._build_for_many([t.shape for t in inputs])
    else:
        out_shape = layer._build_for(inputs.shape)
    node = Node(layer, list(inputs) if isinstance(inputs, (list, tuple)) else [inputs], states, kwargs)
    if is_shape_list(out_shape):
        node.outputs = [KerasTensor(s, layer, node, i) for i, s in enumerate(out_shape)]
        return list(node.outputs)
    node.outputs = [KerasTensor(out_shape, layer, node)]
    return node.outputs[0]


class Functional(Model):
    """keras.Model(inputs=keras.Input(...), outputs=...): a graph of layer calls."""

    def __init__(self, inputs=None, outputs=None, name=None, trainable=True, **kwargs):
        if kwargs:
            raise TypeError(f"Model: unexpected keyword argument(s) {', '.join(sorted(kwargs))}")
        inputs, outputs = _input_list(inputs), _output_list(outputs)
        super().__init__(name=name, trainable=trainable)
        self._input_tensors, self._output_tensors = inputs, outputs
        self._nodes = _topological_nodes(inputs, outputs)
        # outputs that also feed another layer cannot stop at their logits (the fused loss path)
        self._consumed = {t._id for node in self._nodes for t in node.inbound}
        for layer in dict.fromkeys(node.layer for node in self._nodes):   # shared layers once
            if layer.name in self._modules:
                raise ValueError(f'all layers of a model need unique names; "{layer.name}" is used twice')
            self.add_module(layer.name, layer)
        names = [t._layer.name for t in inputs]
        if len(set(names)) != len(names):
            raise ValueError(f"Model(inputs=...): input names must be unique, got {names}")
        self.input_names = names
        self.output_names = _unique_names([t._layer.name for t in outputs])
        self.input_shape_built = inputs[0].shape if len(inputs) == 1 else [t.shape for t in inputs]
        self.output_shape_built = outputs[0].shape if len(outputs) == 1 else [t.shape for t in outputs]
        self._batch_input_shape = inputs[0]._layer._batch_input_shape if len(inputs) == 1 else None
        self.built = True

    @property
    def layers(self):
        """Keras' order: the InputLayer(s) first, then the layers (model.layers[1] is the first
        layer after the input, as in Keras)."""
        inputs = [t._layer for t in self.__dict__.get("_input_tensors", ())]
        return inputs + [m for m in self._modules.values() if isinstance(m, Layer) and m not in inputs]

    @property
    def _input_tensor(self):
        return self._input_tensors[0]

    @property
    def _output_tensor(self):
        return self._output_tensors[0]

    @property
    def _multi(self):
        return len(self._output_tensors) > 1

    def _n_inputs(self):
        return len(self._input_tensors)

    @property
    def input_shape(self):
        return self.input_shape_built

    @property
    def output_shape(self):
        return self.output_shape_built

    @property
    def inputs(self):
        return list(self._input_tensors)

    @property
    def outputs(self):
        return list(self._output_tensors)

    def check_input_shape(self, shape, built=True, x_shape=None):
        if self._n_inputs() > 1:
            return self.check_input_shapes([shape], [x_shape])
        return self._check_one(0, shape, x_shape)

    def check_input_shapes(self, shapes, x_shapes=None):
        """One shape per model input (the data of a multi-input model)."""
        if len(shapes) != self._n_inputs():
            raise ValueError(f'model "{self.name}" has {self._n_inputs()} inputs ({", ".join(self.input_names)}) '
                             f"but got {len(shapes)} array(s); pass a list in that order or a dict by input name")
        for i, shape in enumerate(shapes):
            self._check_one(i, shape, (x_shapes or [None] * len(shapes))[i])

    def _check_one(self, i, shape, x_shape=None):
        expected, shape = self._input_tensors[i].shape, tuple(shape)
        if not shapes_compatible((None,) + tuple(expected[1:]), (None,) + shape[1:]):
            found = x_shape if x_shape is not None else shape
            what = f'"{self.input_names[i]}" ' if self._n_inputs() > 1 else ""
            raise InputShapeError(f'Input {i} {what}of model "{self.name}" is incompatible with it: expected '
                                  f"shape={shape_str(expected)}, found shape={shape_str(found)}")

    # ------------------------------------------------------------------ forward
    def _final_activation(self):
        return self._output_tensor._layer.output_activation()

    def _forward(self, x, training, logits=False):
        """logits: for one output a bool, for several one bool per output; True stops that output
        before its final softmax/sigmoid (the loss is fused with it)."""
        return self._forward_masked(x, training, logits)[0]

    def _forward_masked(self, x, training, logits=False, mask=None):
        """The graph replayed with a mask beside every tensor -> (output(s), their mask(s)); `mask`:
        the inputs' masks (one, or a list for several inputs)."""
        xs = list(x) if isinstance(x, (list, tuple)) else [x]
        self.check_input_shapes([tuple(t.shape) for t in xs])
        in_masks = list(mask) if isinstance(mask, (list, tuple)) else [mask] * len(xs)
        values = {t._id: v for t, v in zip(self._input_tensors, xs)}
        masks = {t._id: as_mask(m, v) for t, v, m in zip(self._input_tensors, xs, in_masks)}
        flags = logits if isinstance(logits, (list, tuple)) else [bool(logits)] * len(self._output_tensors)
        stop = {t._id for t, f in zip(self._output_tensors, flags) if f}
        for node in self._nodes:
            layer, outs = node.layer, node.outputs
            args = [values[t._id] for t in node.inputs]
            ms = [masks[t._id] for t in node.inputs]
            if len(outs) == 1 and outs[0]._id in stop:
                y, layout, m = layer.call_internal_masked(args[0], ms[0], "channels_last", bool(training),
                                                          final_logits=True)
                y = to_channels_last(y) if layout == CF else y
            elif node.kwargs:
                kw = {k: values[v._id] if isinstance(v, KerasTensor) else v for k, v in node.kwargs.items()}
                y, m = layer._call_masked(args, training, ms, **kw)
            elif node.states:
                y, m = layer._call_masked(args[0], training, ms[0],
                                          initial_state=[values[t._id] for t in node.states])
            elif len(args) > 1:
                y, m = layer._call_masked(args, training, ms)
            else:
                y, m = layer._call_masked(args[0], training, ms[0])
            if len(outs) > 1:                       # a list of outputs (and of masks, or one None)
                for t, yi, mi in zip(outs, y, m if isinstance(m, list) else [m] * len(outs)):
                    values[t._id], masks[t._id] = yi, mi
            else:
                values[outs[0]._id], masks[outs[0]._id] = y, m
        outs = [(values[t._id], masks[t._id]) for t in self._output_tensors]
        if self._multi:
            return [o for o, _ in outs], [m for _, m in outs]
        return outs[0]

    def call(self, inputs, training=False):
        return self._forward(inputs, training)

    def __call__(self, inputs, training=None, mask=None, **kwargs):
        """A model is a layer: called on KerasTensors it becomes one node of the calling model (the
        same weights at every call: a siamese branch); called on arrays it runs.  Several inputs go
        as a list in `inputs` order."""
        if is_symbolic(inputs):
            return call_symbolic(self, list(inputs) if isinstance(inputs, (list, tuple)) else inputs)
        if isinstance(inputs, (list, tuple)) and self._n_inputs() > 1:
            with forward_pass(self):
                y, out_mask = self._call_masked(list(inputs), training, mask)
            return attach_mask(y, out_mask)
        return super().__call__(inputs, training=training, mask=mask, **kwargs)

    def _call_masked(self, inputs, training, mask):
        """One eager call; a list holds the inputs of a multi-input model (nested, or model([a, b]))."""
        if not isinstance(inputs, (list, tuple)):
            return super()._call_masked(inputs, training, mask)
        device = self._device()
        xs = [as_tensor_input(x, device) for x in inputs]
        training = resolve_training(self, training)
        with training_scope(training):
            return self._forward_masked(xs, training, False, mask)

    def _build_for(self, input_shape):
        return self._build_for_many([input_shape])

    def _build_for_many(self, input_shapes):
        """Called as a layer of another model: the shapes must fit the inputs it was built for."""
        shapes = [tuple(s) for s in input_shapes]
        if len(shapes) == self._n_inputs():
            for t, shape in zip(self._input_tensors, shapes):
                if not shapes_compatible(t.shape, (None,) + shape[1:]):
                    raise self._nested_input_error(t.shape, shape, t._layer.name if len(shapes) > 1 else None)
        self.check_input_shapes(shapes)
        return self.output_shape_built

    def compute_output_shape(self, input_shape):
        return self.output_shape_built

    def output_activation(self):
        return self._final_activation()

    # ------------------------------------------------------------------ several outputs
    # One output goes through Model's code unchanged; the methods below only take over for several.
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None, weighted_metrics=None,
                run_eagerly=None, steps_per_execution=None, jit_compile=None, **kwargs):
        if not self._multi:
            return super().compile(optimizer, loss, metrics, loss_weights, weighted_metrics, run_eagerly,
                                   steps_per_execution, jit_compile, **kwargs)
        if kwargs:
            raise TypeError(f"compile: unexpected arguments {sorted(kwargs)}")
        if loss is None:
            raise ValueError(f"compile needs a loss: one for all outputs, a list, or a dict by output name "
                             f"{self.output_names} (None for an output that is not trained on)")
        # An output whose loss is None is not trained on and gets no `<output>_loss` log (Keras 3's
        # CompileLoss skips it); its metrics still run.
        self._losses = [None if v is None else losses_mod.get(v)
                        for v in self._per_output(loss, "loss", allow_none=True)]
        self._loss_weights = [1.0 if w is None else float(w)
                              for w in self._per_output(loss_weights, "loss_weights", default=1.0)]
        self.optimizer = optimizers_mod.get(optimizer)
        # Model's "is there a loss" checks (None when every output's loss is None: add_loss() terms only)
        self.loss = next((v for v in self._losses if v is not None), None)
        self._metric_ids = self._metrics_per_output(metrics)
        self._weighted_metric_ids = self._metrics_per_output(weighted_metrics, "weighted_metrics")
        self._metrics = None
        self._optimizer_built = False
        self.compiled = True

    def _per_output(self, value, what, default=None, allow_none=False):
        names = self.output_names
        if isinstance(value, dict):
            unknown = [k for k in value if k not in names]
            if unknown:
                raise ValueError(f"compile({what}=...): {unknown} are not outputs of this model; outputs: {names}")
            if (default is None or allow_none) and any(n not in value for n in names):
                raise ValueError(f"compile({what}=...): no {what} for output(s) "
                                 f"{[n for n in names if n not in value]}")
            return [value.get(n, default) for n in names]
        if isinstance(value, (list, tuple)):
            if len(value) != len(names):
                raise ValueError(f"compile({what}=...): {len(value)} entries for {len(names)} outputs {names}")
            return list(value)
        return [default if value is None else value] * len(names)

    def _metrics_per_output(self, metrics, what="metrics"):
        names = self.output_names
        if metrics is None:
            return [[] for _ in names]
        if isinstance(metrics, dict):
            per = self._per_output(metrics, what, default=[])
        elif isinstance(metrics, (list, tuple)) and metrics and all(isinstance(m, (list, tuple)) for m in metrics):
            per = self._per_output(list(metrics), what)
        else:                                       # the same metrics for every output
            per = [metrics] * len(names)
        return [[m] if isinstance(m, (str, metrics_mod.Metric)) else list(m) for m in per]

    @property
    def _fused(self):
        if not self._multi:
            return super()._fused
        return tuple(bool(loss is not None and loss.fused_with and not loss.from_logits
                          and t._id not in self._consumed
                          and t._layer.output_activation() == loss.fused_with)
                     for loss, t in zip(self._losses, self._output_tensors))

    def _resolve_metrics(self, y=None):
        if not self._multi:
            return super()._resolve_metrics(y)
        ys = y if isinstance(y, list) and len(y) == len(self.output_names) else None
        if self._metrics is not None and (ys is None or getattr(self, "_metrics_from_y", False)):
            return self._metrics
        # per-output loss trackers first, then the metrics, then the weighted ones: the order of Keras' logs.
        # Keras 3 tracks `<output>_loss` only for the outputs that have a loss, and only when there are
        # at least two of them (one loss is the total already).
        tracked = [i for i, loss in enumerate(self._losses) if loss is not None]
        tracked = tracked if len(tracked) > 1 else []
        ms = [metrics_mod.Mean(f"{self.output_names[i]}_loss") for i in tracked]
        owner = list(tracked)
        self._n_loss_trackers = len(tracked)
        entries = []
        for weighted, per_output in ((False, self._metric_ids), (True, self._weighted_metric_ids)):
            for i, ids in enumerate(per_output):
                for ident in ids:
                    m = metrics_mod.get(copy.deepcopy(ident) if isinstance(ident, metrics_mod.Metric) else ident,
                                        _loss_name(self._losses[i]), self._output_tensors[i].shape,
                                        None if ys is None or ys[i] is None else tuple(ys[i].shape))
                    entries.append((m, self.output_names[i], weighted))
                    owner.append(i)
        self._metrics, self._metric_owner = ms + metrics_mod.with_log_names(entries), owner
        self._metrics_from_y = ys is not None
        return self._metrics

    def _compute_loss(self, out, y, sw=None):
        if not self._multi:
            return super()._compute_loss(out, y, sw)
        total, self._last_losses = None, []
        for o, yi, loss, w, fused in zip(out, y, self._losses, self._loss_weights, self._fused):
            if loss is None:                           # not trained on (Keras: no loss entry)
                self._last_losses.append(None)
                continue
            if yi is None:
                raise ValueError("the targets of an output with a loss are missing")
            li = loss_value(loss, fused, yi, o, sw)    # sw: one weight per sample, for every output
            self._last_losses.append(float(li.item()))
            term = li if w == 1.0 else li * w
            total = term if total is None else total + term
        return total

    def _update_metrics(self, out, yb, n, wb=None):
        if not self._multi:
            return super()._update_metrics(out, yb, n, wb)
        logits = [f or bool(loss is not None and loss.from_logits) for f, loss in zip(self._fused, self._losses)]
        acts = [t._layer.output_activation() if f else None for t, f in zip(self._output_tensors, self._fused)]
        k = getattr(self, "_n_loss_trackers", len(self.output_names))
        for j, m in enumerate(self._metrics):
            i = self._metric_owner[j]
            if j < k:
                m.update(self._last_losses[i], n)
            else:
                if yb[i] is None:
                    raise ValueError(f'output "{self.output_names[i]}" has metrics but no targets: pass y for it '
                                     "(a list or dict with every output)")
                update_metric(m, yb[i], out[i], logits[i], wb, acts[i])

    def _standardize_y(self, x, y, what):
        if not self._multi:
            return super()._standardize_y(x, y, what)
        if y is None:
            return None
        ys = self._targets_per_output(y, what)
        x0 = x[0] if isinstance(x, list) else x
        return [None if yi is None else check_xy(x0, yi, _loss_name(loss), t.shape[-1] if t.shape else None)
                for yi, loss, t in zip(ys, self._losses, self._output_tensors)]

    def _targets_per_output(self, y, what):
        """y for every output.  As Keras 3's CompileLoss, when some outputs have no loss y may hold only
        the targets of those that have one (a list in output order, or a dict without the others);
        the missing ones are None (an output with metrics needs its targets)."""
        names = self.output_names
        with_loss = [n for n, loss in zip(names, self._losses) if loss is not None]
        if len(with_loss) < len(names):
            if isinstance(y, dict) and all(n in y for n in with_loss) and any(n not in y for n in names):
                present = [n for n in names if n in y]
                arrays = dict(zip(present, standardize_inputs(y, present, what, kind="outputs")))
                return [arrays.get(n) for n in names]
            if isinstance(y, (list, tuple)) and len(y) == len(with_loss) and len(y) != len(names):
                it = iter(standardize_inputs(list(y), with_loss, what, kind="outputs"))
                return [next(it) if loss is not None else None for loss in self._losses]
        return standardize_inputs(y, names, what, kind="outputs")

    def get_compile_config(self):
        if not self._multi or not self.compiled:
            return super().get_compile_config()
        return {"optimizer": optimizers_mod.serialize(self.optimizer),
                "loss": [None if v is None else losses_mod.serialize(v) for v in self._losses],
                "loss_weights": self._loss_weights,
                "metrics": [[metrics_mod.serialize(m) for m in ids] for ids in self._metric_ids],
                "weighted_metrics": [[metrics_mod.serialize(m) for m in ids] for ids in self._weighted_metric_ids]}

    # ------------------------------------------------------------------ config
    def get_config(self):
        from .saving import layer_to_json
        # a tensor is [layer name, call number, output index], as Keras' keras_history
        key = {t._id: [t._layer.name, 0, 0] for t in self._input_tensors}
        nodes, calls = [], {}
        for node in self._nodes:
            name = node.layer.name
            k = calls.get(name, 0)
            calls[name] = k + 1
            for t in node.outputs:
                key[t._id] = [name, k, t._index]
            entry = {"layer": name, "inbound": [key[t._id] for t in node.inputs]}
            if node.states:
                entry["initial_state"] = [key[t._id] for t in node.states]
            if node.kwargs:
                entry["kwargs"] = {k: v for k, v in node.kwargs.items() if not isinstance(v, KerasTensor)}
                entry["tensor_kwargs"] = {k: key[v._id] for k, v in node.kwargs.items() if isinstance(v, KerasTensor)}
            nodes.append(entry)
        layers, seen = [], set()
        for layer in (node.layer for node in self._nodes):
            if layer.name not in seen:
                seen.add(layer.name)
                layers.append(layer_to_json(layer))
        return {"name": self.name, "trainable": self.trainable,
                "inputs": [{"name": t._layer.name, "shape": list(t._layer._batch_input_shape[1:])}
                           for t in self._input_tensors],
                "layers": layers, "nodes": nodes, "outputs": [key[t._id] for t in self._output_tensors]}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from .layers.core import Input
        from .saving import layer_from_json
        specs = config["inputs"] if "inputs" in config else [config["input"]]   # "input": files before 2026-11-25
        inputs = [Input(shape=tuple(spec["shape"]), name=spec["name"]) for spec in specs]
        layers = {spec["config"]["name"]: layer_from_json(spec, custom_objects) for spec in config["layers"]}
        tensors = {(spec["name"], 0, 0): t for spec, t in zip(specs, inputs)}
        calls: dict = {}
        for node in config["nodes"]:
            layer = layers[node["layer"]]
            args = [tensors[_tensor_key(k)] for k in node["inbound"]]
            kwargs = {"initial_state": [tensors[_tensor_key(k)] for k in node["initial_state"]]} \
                if node.get("initial_state") else {}
            kwargs.update(node.get("kwargs", {}))
            kwargs.update({name: tensors[_tensor_key(k)] for name, k in node.get("tensor_kwargs", {}).items()})
            k = calls.get(layer.name, 0)
            calls[layer.name] = k + 1
            if getattr(layer, "_positional_inputs", False):          # mha(query, value, key)
                out = layer(*args, **kwargs)
            else:
                out = layer(args if len(args) > 1 else args[0], **kwargs)
            for i, t in enumerate(out if isinstance(out, list) else [out]):
                tensors[(layer.name, k, i)] = t
        outs = [tensors[_tensor_key(k)]
                for k in (config["outputs"] if "outputs" in config else [config["output"]])]
        return cls(inputs=inputs if len(inputs) > 1 else inputs[0], outputs=outs if len(outs) > 1 else outs[0],
                   name=config.get("name"), trainable=config.get("trainable", True))


def _loss_name(loss):
    return None if loss is None else loss.name


def _tensor_key(k):
    """A saved tensor reference: [layer, call, output index]; files saved before layers could
    have several outputs have no index (it is 0)."""
    return (k[0], int(k[1]), int(k[2]) if len(k) > 2 else 0)


def _unique_names(names):
    """Output names, the repeats of a name (one layer's several outputs, or one layer called
    twice) suffixed _1, _2, ... as tf.keras does, so losses and metrics can be given by name."""
    seen, out = set(), []
    for name in names:
        proposal, i = name, 0
        while proposal in seen:
            i += 1
            proposal = f"{name}_{i}"
        seen.add(proposal)
        out.append(proposal)
    return out


def _tensor_list(x, what):
    """keras.Model(inputs=/outputs=...) as a list of KerasTensors (a tensor, a list, or a dict by name)."""
    if isinstance(x, dict):
        x = list(x.values())
    xs = list(x) if isinstance(x, (list, tuple)) else [x]
    if not xs:
        raise ValueError(f"Model({what}=...) needs at least one tensor")
    for t in xs:
        if not isinstance(t, KerasTensor):
            raise TypeError(f"Model({what}=...) expects KerasTensors from keras.Input / layer calls, "
                            f"got {type(t).__name__}")
    return xs


def _input_list(x):
    xs = _tensor_list(x, "inputs")
    if not all(isinstance(t._layer, InputLayer) for t in xs):
        raise ValueError("Model(inputs=...): inputs must come from keras.Input(shape=...)")
    return xs


def _output_list(x):
    return _tensor_list(x, "outputs")


def _topological_nodes(inputs, outputs):
    """The Node of every call between inputs and outputs, in order (a node with several outputs once)."""
    order, state = [], {}
    given = {t._id for t in inputs}
    used = set()

    def visit(t):
        if t._id in given:
            used.add(t._id)
            return
        if isinstance(t._layer, InputLayer):
            raise ValueError(f"Model(outputs=...) depends on an input that is not in `inputs` ({t!r}); pass "
                             f"every keras.Input the outputs use")
        node = t._node
        if state.get(id(node)) == "done":
            return
        if state.get(id(node)) == "visiting":  # pragma: no cover - layer calls cannot form cycles
            raise ValueError("the layer graph has a cycle")
        state[id(node)] = "visiting"
        for src in node.inbound:
            visit(src)
        state[id(node)] = "done"
        order.append(node)

    for out in outputs:
        if out._id in given:
            raise ValueError("Model(inputs, outputs): an output is an input itself; add at least one layer")
        visit(out)
    unused = [t._layer.name for t in inputs if t._id not in used]
    if unused:
        raise ValueError(f"Model(inputs=...): input(s) {unused} are not used to compute the outputs")
    return order
