"""Layers that wrap other computations: Bidirectional (a recurrent layer run both ways),
TimeDistributed (a layer applied to every time step) and Lambda (an arbitrary function as a layer)."""
from __future__ import annotations

from .base import CF, CL, InputShapeError, Layer, shape_str, to_channels_last

__all__ = ["Bidirectional", "TimeDistributed", "Lambda"]


class Bidirectional(Layer):
    """Bidirectional(LSTM(u), GRU(u) or SimpleRNN(u), merge_mode='concat'): the layer runs forwards
    and a copy with go_backwards flipped runs backwards; with return_sequences the backward output
    is reversed back so step t of both halves lines up, as in Keras.  Weights: forward then backward.

    A mask goes to both directions.  As Keras does, the wrapper sets zero_output_for_mask =
    return_sequences on both layers: a padded step outputs zeros in both halves rather than each
    direction's previous output, which would differ between the halves.

    With return_state=True on the wrapped layer the result is Keras' list [merged output, forward
    states..., backward states...] (an LSTM: output, h_fw, c_fw, h_bw, c_bw), e.g. the states of a
    bidirectional seq2seq encoder, concatenated by the caller for the decoder; initial_state takes
    the same order (forward states, then backward ones)."""

    input_ndim = 3
    supports_masking = True

    def __init__(self, layer, merge_mode="concat", weights=None, backward_layer=None, **kwargs):
        from .recurrent import _Recurrent
        if not isinstance(layer, _Recurrent):
            raise ValueError(f"Bidirectional wraps an LSTM, GRU or SimpleRNN layer, got {type(layer).__name__}")
        if merge_mode not in ("concat", "sum", "mul", "ave"):
            raise ValueError(f"Bidirectional: merge_mode must be 'concat', 'sum', 'mul' or 'ave', got "
                             f"{merge_mode!r} (merge_mode=None, two outputs, is not supported)")
        if weights is not None:
            raise ValueError("Bidirectional: weights= is not supported; call set_weights() after building")
        if "batch_input_shape" not in kwargs and "input_shape" not in kwargs and layer._batch_input_shape:
            kwargs["batch_input_shape"] = layer._batch_input_shape
        super().__init__(**kwargs)
        cfg = layer.get_config()
        cfg.pop("batch_input_shape", None)
        if backward_layer is None:
            backward_layer = type(layer).from_config({**cfg, "name": "backward_" + layer.name,
                                                      "go_backwards": not layer.go_backwards})
        elif not isinstance(backward_layer, _Recurrent):
            raise ValueError(f"Bidirectional: backward_layer must be an LSTM, GRU or SimpleRNN layer, got "
                             f"{type(backward_layer).__name__}")
        elif backward_layer.go_backwards == layer.go_backwards:
            raise ValueError("Bidirectional: backward_layer must have go_backwards != the forward layer's")
        elif (backward_layer.units, backward_layer.return_sequences, backward_layer.return_state) != (
                layer.units, layer.return_sequences, layer.return_state):
            raise ValueError("Bidirectional: backward_layer must match the forward layer's units, "
                             "return_sequences and return_state (got "
                             f"{(backward_layer.units, backward_layer.return_sequences, backward_layer.return_state)} "
                             f"vs {(layer.units, layer.return_sequences, layer.return_state)})")
        if layer.name == cfg["name"] and not layer.name.startswith("forward_"):
            layer.name = "forward_" + layer.name
        for sub in (layer, backward_layer):
            sub.zero_output_for_mask = sub.return_sequences
        self.forward_layer, self.backward_layer = layer, backward_layer
        self.merge_mode = merge_mode
        self.return_sequences = layer.return_sequences

    # weights: the two sub-layers', forward first (Keras' order)
    def _weight_sublayers(self):
        return [self.forward_layer, self.backward_layer]

    @property
    def weights(self):
        return self.forward_layer.weights + self.backward_layer.weights

    @property
    def trainable_weights(self):
        return (self.forward_layer.trainable_weights + self.backward_layer.trainable_weights) if self.trainable else []

    @property
    def non_trainable_weights(self):
        return self.weights if not self.trainable else []

    def set_weights(self, weights):
        weights = list(weights)
        k = len(self.forward_layer.weights)
        if len(weights) != len(self.weights):
            raise ValueError(f'layer "{self.name}" (Bidirectional) has {len(self.weights)} weights, got '
                             f"{len(weights)} arrays")
        self.forward_layer.set_weights(weights[:k])
        self.backward_layer.set_weights(weights[k:])

    def count_params(self):
        return int(sum(w.size for w in self.weights))

    def __setattr__(self, key, value):
        if key == "trainable" and "_modules" in self.__dict__:
            for sub in (self.__dict__["_modules"].get("forward_layer"), self.__dict__["_modules"].get("backward_layer")):
                if sub is not None:
                    sub.trainable = value
        super().__setattr__(key, value)

    def build(self, input_shape):
        self.forward_layer._build_for(input_shape)
        self.backward_layer._build_for(input_shape)

    def expected_input_shape(self):
        return self.forward_layer.expected_input_shape()

    @property
    def return_state(self):
        return self.forward_layer.return_state

    def __call__(self, inputs, initial_state=None, training=None, mask=None, **kwargs):
        """Keras: initial_state is the forward layer's states followed by the backward layer's."""
        if initial_state is None:
            return super().__call__(inputs, training=training, mask=mask, **kwargs)
        from .recurrent import call_with_states
        return call_with_states(self, inputs, initial_state, training, mask)

    def reset_states(self, states=None):
        """stateful layers: reset both directions (states: forward ones, then backward ones)."""
        fw, bw = self._split_states(list(states)) if states is not None else (None, None)
        self.forward_layer.reset_states(fw)
        self.backward_layer.reset_states(bw)

    reset_state = reset_states

    @property
    def stateful(self):
        return self.forward_layer.stateful

    def _split_states(self, states):
        k = len(self.forward_layer._state_names)
        return states[:k], states[k:]

    def _check_states(self, shapes, batch):
        shapes = list(shapes)
        n = 2 * len(self.forward_layer._state_names)
        if len(shapes) != n:
            raise ValueError(f'layer "{self.name}" (Bidirectional) expects initial_state with {n} tensors (the '
                             f"forward layer's states, then the backward layer's), got {len(shapes)}")
        fw, bw = self._split_states(shapes)
        self.forward_layer._check_states(fw, batch)
        self.backward_layer._check_states(bw, batch)

    def _n_states(self):
        return len(self.forward_layer._state_names) if self.return_state else 0

    def compute_output_shape(self, input_shape):
        shapes = self.forward_layer.compute_output_shape(input_shape)
        out = list(shapes[0] if self.return_state else shapes)
        if self.merge_mode == "concat":
            out[-1] = 2 * out[-1]
        if self.return_state:          # [output, forward states..., backward states...]
            return [tuple(out)] + list(shapes[1:]) * 2
        return tuple(out)

    def compute_mask(self, inputs, mask=None):
        out = mask if self.return_sequences else None
        return [out] + [None] * (2 * self._n_states()) if self.return_state else out

    def call(self, inputs, training=False, mask=None, initial_state=None):
        from ... import ops
        fw = bw = None
        if initial_state is not None:
            self._check_states([tuple(s.shape) for s in initial_state], inputs.shape[0])
            fw, bw = self._split_states(list(initial_state))
        y_f = self.forward_layer.call(inputs, training=training, mask=mask, initial_state=fw)
        y_b = self.backward_layer.call(inputs, training=training, mask=mask, initial_state=bw)
        states = []
        if self.return_state:
            (y_f, *states_f), (y_b, *states_b) = y_f, y_b
            states = states_f + states_b
        if self.return_sequences:
            y_b = y_b[:, ::-1]
        if self.merge_mode == "concat":
            y = ops.concat([y_f, y_b], axis=-1)
        elif self.merge_mode == "sum":
            y = y_f + y_b
        elif self.merge_mode == "mul":
            y = y_f * y_b
        else:
            y = (y_f + y_b) * 0.5
        return [y] + states if self.return_state else y

    def get_config(self):
        from ..saving import layer_to_json
        return {**super().get_config(), "layer": layer_to_json(self.forward_layer),
                "backward_layer": layer_to_json(self.backward_layer), "merge_mode": self.merge_mode}

    @classmethod
    def from_config(cls, config):
        from ..saving import layer_from_json
        config = dict(config)
        layer = layer_from_json(config.pop("layer"))
        backward = layer_from_json(config.pop("backward_layer")) if "backward_layer" in config else None
        if "batch_input_shape" in config and config["batch_input_shape"] is not None:
            config["batch_input_shape"] = tuple(config["batch_input_shape"])
        return cls(layer, backward_layer=backward, **config)


class TimeDistributed(Layer):
    """TimeDistributed(layer): the same layer, with one set of weights, applied to every time step of
    (batch, time, ...) input; the output is (batch, time, ...) with the layer's per-step output shape.
    E.g. TimeDistributed(Conv2D(16, 3)) on (N, T, H, W, C) video, TimeDistributed(Dense(8)) on (N, T, F).

    Why folding: the T steps go through the layer as one batch of N*T samples (reshape in, reshape
    out: one layer call instead of T), which equals a loop over the steps for every layer whose
    samples do not interact.  The exception is BatchNormalization while training: it normalizes with
    the statistics of all N*T samples, where Keras 3's loop uses those of each step's N samples.

    Masks (Keras 3): a mask (batch, time) passes on unchanged; the wrapped layer is not given it.
    Weights, trainable, get/set_weights and the saved weights are the wrapped layer's."""

    supports_masking = True

    def __init__(self, layer, **kwargs):
        if not isinstance(layer, Layer):
            raise TypeError(f"TimeDistributed wraps a keras layer (or model), got {type(layer).__name__}")
        if getattr(layer, "return_state", False) or getattr(layer, "_multi", False):
            raise ValueError(f'TimeDistributed wraps a layer with one output; "{layer.name}" has several '
                             "(return_state / several model outputs)")
        super().__init__(**kwargs)
        self.layer = layer
        if not self.trainable:
            layer.trainable = False

    # weights: the wrapped layer's
    def _weight_sublayers(self):
        return [self.layer]

    @property
    def weights(self):
        return self.layer.weights

    @property
    def trainable_weights(self):
        return self.layer.trainable_weights if self.trainable else []

    @property
    def non_trainable_weights(self):
        return self.layer.non_trainable_weights if self.trainable else self.weights

    def set_weights(self, weights):
        self.layer.set_weights(weights)

    def __setattr__(self, key, value):
        if key == "trainable" and "layer" in self.__dict__.get("_modules", {}):
            self._modules["layer"].trainable = value
        super().__setattr__(key, value)

    # shapes: (batch, time, ...) outside, (batch * time, ...) for the wrapped layer
    def _step_shape(self, shape):
        if len(shape) < 3:
            raise InputShapeError(
                f'layer "{self.name}" (TimeDistributed) applies "{self.layer.name}" ({type(self.layer).__name__}) '
                f"to every time step of (batch, time, ...) input, but got shape {shape_str(shape)}, which has no "
                f"time axis. Pass sequences (batch, time, ...) (one step: x[:, None]), or use the layer without "
                f"TimeDistributed")
        return (None,) + tuple(shape[2:])

    def check_input_shape(self, shape, built=True):
        shape = tuple(shape)
        step = self._step_shape(shape)
        try:
            self.layer.check_input_shape(step, built=built and self.layer.built)
        except InputShapeError as e:
            raise InputShapeError(f'layer "{self.name}" (TimeDistributed) gives "{self.layer.name}" one time step '
                                  f"of its input {shape_str(shape)} at a time, of shape {shape_str(step)}: "
                                  f"{e}") from None

    def _shape_hint(self, shape):
        return "; TimeDistributed needs (batch, time, ...) input" if len(shape) < 3 else ""

    def build(self, input_shape):
        self.layer._build_for(self._step_shape(input_shape))

    def compute_output_shape(self, input_shape):
        out = self.layer._build_for(self._step_shape(input_shape))
        return (input_shape[0], input_shape[1]) + tuple(out[1:])

    def output_activation(self):
        return self.layer.output_activation()       # a final softmax still fuses with the loss

    # calling
    def call_internal(self, x, layout, training, final_logits=False):
        if layout == CF:
            x = to_channels_last(x)
        return self._each_step(x, training, final_logits), CL

    def call(self, inputs, training=False):
        return self._each_step(inputs, training)

    def _each_step(self, x, training, final_logits=False):
        n, t = x.shape[0], x.shape[1]
        folded = x.reshape((n * t,) + tuple(x.shape[2:]))
        y, layout, _ = self.layer.call_internal_masked(folded, None, CL, bool(training), final_logits)
        if layout == CF:
            y = to_channels_last(y)
        return y.reshape((n, t) + tuple(y.shape[1:]))

    def get_config(self):
        from ..saving import layer_to_json
        return {**super().get_config(), "layer": layer_to_json(self.layer)}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        from ..saving import layer_from_json
        config = dict(config)
        layer = layer_from_json(config.pop("layer"), custom_objects)
        if config.get("batch_input_shape") is not None:
            config["batch_input_shape"] = tuple(config["batch_input_shape"])
        return cls(layer, **config)


class Lambda(Layer):
    """Lambda(fn): wraps an expression on tensors (engine Tensor methods and operators:
    `lambda t: t * 2`, `lambda t: t.mean(axis=1)`).  The output shape comes from output_shape= or
    from calling fn on a small probe batch.  Models with a Lambda cannot be saved whole (Keras
    needs safe_mode=False for that too); use save_weights()."""

    def __init__(self, function, output_shape=None, mask=None, arguments=None, **kwargs):
        super().__init__(**kwargs)
        # Keras 3: a Lambda passes a mask on only when given mask= (a callable (inputs, mask) -> mask,
        # or a fixed mask); otherwise it drops the mask with Keras' warning
        self.mask = mask
        self.supports_masking = mask is not None
        if not callable(function):
            raise TypeError(f"Lambda needs a callable, got {type(function).__name__}")
        self.function, self.arguments = function, dict(arguments or {})
        self._output_shape = output_shape

    def compute_output_shape(self, input_shape):
        if callable(self._output_shape):
            return tuple(self._output_shape(tuple(input_shape)))
        if self._output_shape is not None:
            return (input_shape[0],) + tuple(self._output_shape)
        return self._infer_output_shape(input_shape)

    def compute_mask(self, inputs, mask=None):
        return self.mask(inputs, mask) if callable(self.mask) else self.mask

    def call(self, inputs, training=False):
        return self.function(inputs, **self.arguments)

    def get_config(self):
        raise TypeError(f'layer "{self.name}" (Lambda) holds Python code, which is not saved; save the '
                        "weights with model.save_weights() and rebuild the model in code")
