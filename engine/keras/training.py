"""keras.Model: compile / fit / evaluate / predict / save on engine tensors.

The loop is Keras' (running epoch averages in the progress bar, History,
callbacks, validation_split taken from the end before shuffling) and the step is
the engine's (forward, backward, optimizer step).  When the network ends in a
softmax (sigmoid) and the loss is a (binary) cross-entropy, the step runs the
network up to the logits and uses the fused stable loss (see keras.losses);
predict() applies the activation as usual.
"""
from __future__ import annotations

import collections.abc
import math

import numpy as np

from ..backend import get_array_module
from ..tensor import Tensor, no_grad
from ..random import default_generator
from . import callbacks as cbks
from . import losses as losses_mod
from . import metrics as metrics_mod
from . import optimizers as optimizers_mod
from .data_utils import PyDataset
from .epoch_iterator import EpochIterator, check_steps
from .data_adapter import (PeekedIterator, as_array, batch_x, check_xy, is_batch_iterable, num_samples,
                           split_validation, standardize_inputs, take_rows)
from .layers.base import (CF, CL, InputShapeError, Layer, as_tensor_input, forward_pass, shape_str, to_channels_last,
                          training_scope,
                          _takes_mask, _unique_weights)

__all__ = ["Model"]


def loss_value(loss, fused, y, out, w=None):
    """One output's loss: the fused form on logits, else loss().  A mask on the output (`_keras_mask`,
    where Keras keeps it on y_pred) weights the steps as Keras 3 does (losses.apply_mask)."""
    if fused:
        w = losses_mod.apply_mask(w, getattr(out, "_keras_mask", None))
        return loss.call_on_logits(y, out) if w is None else loss.call_on_logits(y, out, w)
    return loss(y, out) if w is None else loss(y, out, sample_weight=w)


def update_metric(metric, y, out, logits, sample_weight=None, fused_activation=None):
    """metric.update_state on one output; a masked output counts its unmasked steps only (Keras 3).
    sample_weight reaches only the metrics compiled as weighted_metrics (Keras' plain metrics ignore it).
    A user's Keras 3 metric gets Tensors, and the probabilities (fused_activation applied) where the model
    trains on logits."""
    mask = getattr(out, "_keras_mask", None)
    w = sample_weight if getattr(metric, "_weighted", False) else None
    if metric._user_api():
        from .activations import get as get_activation
        with no_grad():
            pred = Tensor._wrap(out.data)
            if fused_activation:
                pred = get_activation(fused_activation)(pred)
            xp = get_array_module(out.data)
            yt = Tensor._wrap(xp.asarray(y, dtype=np.float32))
            wt = None if w is None else Tensor._wrap(xp.asarray(w, dtype=np.float32))
            metric.update_state(yt, pred, sample_weight=wt)
        return
    if mask is None and w is None:
        metric.update_state(y, out.data, logits=logits)
    else:
        metric.update_state(y, out.data, logits=logits, mask=mask, sample_weight=w)


def metric_result(metric):
    """metric.result() as a float (a user metric may return a Tensor or one of its variables), or a
    list of floats for a metric with several values (Precision(thresholds=[0.3, 0.6])), as Keras
    logs an array for it."""
    r = metric.result()
    if isinstance(r, Tensor):
        r = r.numpy()
    a = np.asarray(r, dtype=np.float64)
    return float(a) if a.size == 1 else [float(v) for v in a.reshape(-1)]


def _verbosity(verbose):
    if verbose == "auto":
        return 1
    return int(verbose)


def _to_device(arr, device):
    if isinstance(arr, list):                # the inputs of a multi-input model
        return [_to_device(a, device) for a in arr]
    if device in (None, "cpu"):
        return Tensor._wrap(arr) if isinstance(arr, np.ndarray) else Tensor(arr)
    return Tensor(arr, device=device)


class Model(Layer):
    """Base of Sequential; subclass it and define call() for custom models (Keras subclassing API)."""

    def __new__(cls, *args, **kwargs):
        # keras.Model(inputs, outputs) is the functional API: build a Functional model instead
        if cls is Model and (args or "inputs" in kwargs or "outputs" in kwargs):
            from .functional import Functional
            return super().__new__(Functional)
        return super().__new__(cls)

    def __init__(self, *args, name=None, **kwargs):
        if args:
            raise TypeError(f"{type(self).__name__}: unexpected positional arguments; the functional API is "
                            "keras.Model(inputs, outputs)")
        super().__init__(name=name, **kwargs)
        self.optimizer = None
        self.loss = None
        self.compiled = False
        self.stop_training = False
        self.history = None
        self._metric_ids = []
        self._weighted_metric_ids = []
        # called between backward and the optimizer update (cluster.keras: finish the gradient
        # all-reduce even when some weights got no gradient in this step)
        self._before_update = []

    # ------------------------------------------------------------------ structure
    @property
    def layers(self):
        return [m for m in self._modules.values() if isinstance(m, Layer)]

    def __setattr__(self, key, value):
        # model.trainable = False freezes every layer, as in Keras (recompile to take effect)
        if key == "trainable" and "_modules" in self.__dict__:
            for layer in self.layers:
                layer.trainable = value
        super().__setattr__(key, value)

    def _weight_layers(self):
        """Layers that own weights, depth-first, in creation order (Keras' weight order)."""
        return [layer for _, layer in self._weight_layer_paths()]

    def _weight_layer_paths(self):
        """(names of the nested models it sits in, layer) for every layer that can own weights, in
        Keras' weight order: a nested model or a wrapper (Bidirectional, TimeDistributed) stands for
        the layers inside it, and a layer reached twice (a shared layer used in a sub-model and
        directly) counts once.  The save format keys a nested model's weights by these names."""
        out, seen = [], set()

        def walk(layer, scope):
            if isinstance(layer, Model):
                for child in layer.layers:
                    walk(child, scope + (layer.name,))
            elif hasattr(layer, "_weight_sublayers"):
                for child in layer._weight_sublayers():
                    walk(child, scope)
            elif id(layer) not in seen:
                seen.add(id(layer))
                out.append((scope, layer))

        for layer in self.layers:
            walk(layer, ())
        return out

    def _weight_paths(self):
        """A model held by a user layer (`self.ffn = keras.Sequential([...])`): its layers' weights
        keyed by the layer's position, "0/kernel", which stays the same when the model is rebuilt in
        another session with other automatic names."""
        return _unique_weights([(f"{i}/{p}", w) for i, layer in enumerate(self._weight_layers())
                                for p, w in layer._weight_paths()])

    # A layer can be reached twice (used directly and inside a user layer that holds it): its weights
    # count once, as in Keras, or the optimizer would see them twice.
    @property
    def weights(self):
        return _unique_weights([w for layer in self._weight_layers() for w in layer.weights])

    @property
    def trainable_weights(self):
        if not self.trainable:
            return []
        return _unique_weights([w for layer in self._weight_layers() for w in layer.trainable_weights])

    @property
    def non_trainable_weights(self):
        return _unique_weights([w for layer in self._weight_layers() for w in layer.non_trainable_weights])

    def get_weights(self):
        return [np.array(w.numpy(), copy=True) for w in self.weights]

    def reset_states(self):
        """Zero the carried states of every stateful recurrent layer (Keras' model.reset_states())."""
        for layer in self._weight_layers():
            if getattr(layer, "stateful", False):
                layer.reset_states()

    def set_weights(self, weights):
        weights = list(weights)
        unique = self.weights
        if len(weights) != len(unique):
            raise ValueError(f'model "{self.name}" has {len(unique)} weight arrays, set_weights got {len(weights)}')
        value = {id(w): v for w, v in zip(unique, weights)}
        for layer in self._weight_layers():       # each layer converts its own layout (wrappers, devices)
            layer.set_weights([value[id(w)] for w in layer.weights])

    def count_params(self):
        if not self.built:
            raise ValueError(f'model "{self.name}" is not built yet: call build(input_shape), call it on a '
                             "batch of data, or give the first layer input_shape=")
        return int(sum(w.size for w in self.weights))

    def get_layer(self, name=None, index=None):
        if index is not None:
            return self.layers[index]
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ValueError(f'no layer named "{name}" in model "{self.name}"; layers: '
                         + ", ".join(l.name for l in self.layers))

    # ------------------------------------------------------------------ forward
    def _forward(self, x, training, logits=False):
        """Forward pass in Keras layout; logits=True stops before a fused final activation."""
        return self._call_user(x, training)

    def _forward_masked(self, x, training, logits=False, mask=None):
        """-> (output(s), mask(s)).  A subclassed model's call() leaves its output's mask on the output
        tensor (its layers do, as in Keras), and gets `mask` when its signature names it."""
        if mask is not None and _takes_mask(type(self).call):
            out = self._call_user(x, training, mask=mask)
        else:
            out = self._forward(x, training, logits)
        if isinstance(out, list):
            return out, [getattr(o, "_keras_mask", None) for o in out]
        return out, getattr(out, "_keras_mask", None)

    def _forward_tagged(self, x, training, logits=False):
        """The forward pass of fit / evaluate: each output keeps its mask as `_keras_mask`, where the
        loss and the metrics look for it (as Keras' compile_utils do)."""
        out, mask = self._forward_masked(x, training, logits)
        for o, m in zip(out, mask) if isinstance(out, list) else [(out, mask)]:
            o._keras_mask = m
        return out

    def call_internal_masked(self, x, mask, layout, training, final_logits=False):
        """A model called as a layer: the mask runs through its layers, and final_logits reaches its
        last layer (the fused loss of an outer model)."""
        if layout == CF:
            x = to_channels_last(x)
        y, out_mask = self._forward_masked(x, training, final_logits, mask)
        return y, CL, out_mask

    def _nested_input_error(self, expected, found, input_name=None):
        """The message for a model called, as a layer of another model, on tensors of a shape it was not
        built for: which model, both shapes, and the two ways out."""
        which = f'its input "{input_name}"' if input_name else "it"
        return InputShapeError(
            f'model "{self.name}" ({type(self).__name__}) is used as a layer on inputs of shape '
            f"{shape_str(found)}, but {which} was built for shape {shape_str(expected)}. Feed it tensors of "
            f"that shape (e.g. a Reshape or Dense layer in front of it), or build the nested model for the new "
            f"shape (keras.Input(shape={tuple(found[1:])}) as its input)")

    def _final_activation(self):
        return None

    def _n_inputs(self):
        return 1

    def _ensure_built(self, x_sample):
        if self.built:
            return
        with no_grad():
            out = self(x_sample)
        self.output_shape_built = (None,) + tuple(out.shape[1:])

    def _device(self):
        for w in self.weights:
            return w.device
        return None

    def _n_outputs(self):
        shape = self.output_shape_built
        return shape[-1] if shape else None

    # ------------------------------------------------------------------ compile
    def compile(self, optimizer="rmsprop", loss=None, metrics=None, loss_weights=None,
                weighted_metrics=None, run_eagerly=None, steps_per_execution=None, jit_compile=None,
                **kwargs):
        if kwargs:
            raise TypeError(f"compile: unexpected arguments {sorted(kwargs)}")
        if loss_weights is not None:
            raise ValueError("compile: loss_weights are for models with several outputs")
        self.optimizer = optimizers_mod.get(optimizer)
        # loss=None is Keras': the model then trains on its add_loss() terms only (fit says so when
        # there are none)
        self.loss = None if loss is None else losses_mod.get(loss)
        self._metric_ids = _metric_list(metrics, "metrics")
        self._weighted_metric_ids = _metric_list(weighted_metrics, "weighted_metrics")
        self._metrics = None                  # resolved once the output shape is known
        self._optimizer_built = False
        self.compiled = True

    def _require_compiled(self, what):
        if not self.compiled:
            raise RuntimeError(f"You must compile your model before {what}: call "
                               "model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', "
                               "metrics=['accuracy'])")

    @property
    def _fused(self):
        loss = self.loss
        return bool(loss is not None and loss.fused_with and not loss.from_logits
                    and self._final_activation() == loss.fused_with)

    @property
    def _outputs_logits(self):
        return self._fused or bool(self.loss is not None and self.loss.from_logits)

    def _resolve_metrics(self, y=None):
        """The metric objects; 'accuracy' is resolved from the targets' shape when y is given (again
        if it was first resolved without targets, e.g. by load_model), as Keras does."""
        y_shape = None if y is None or isinstance(y, list) else tuple(np.shape(y))
        if self._metrics is None or (y_shape is not None and not getattr(self, "_metrics_from_y", False)):
            def get(ident):
                return metrics_mod.get(ident, getattr(self.loss, "name", None), self.output_shape_built, y_shape)
            self._metrics = metrics_mod.with_log_names(
                [(get(m), "", False) for m in self._metric_ids]
                + [(get(m), "", True) for m in getattr(self, "_weighted_metric_ids", [])])
            self._metrics_from_y = y_shape is not None
        return self._metrics

    def _ensure_optimizer(self):
        if not self._optimizer_built:
            params = [w for w in self.trainable_weights if w.requires_grad]
            if not params:
                raise ValueError(f'model "{self.name}" has no trainable weights to optimize')
            self.optimizer.build(params)
            self._optimizer_built = True

    @property
    def metrics_names(self):
        return ["loss"] + [m.name for m in (self._metrics or [])]

    # ------------------------------------------------------------------ steps
    def _compute_loss(self, out, y, w=None):
        if self.loss is None:
            return None
        if y is None:
            raise ValueError("the model was compiled with a loss, so it needs targets y (or batches of (x, y))")
        return loss_value(self.loss, self._fused, y, out, w)

    def _total_loss(self, out, y, w=None):
        """The compiled loss plus the sum of every add_loss() term of this forward pass (Keras 3's
        Trainer.compute_loss: each term summed, all added), in training and in evaluation alike."""
        loss = self._compute_loss(out, y, w)
        for term in self.losses:
            term = term.sum() if term.ndim else term
            if loss is not None and term.dtype != loss.dtype:
                term = term.to(loss.dtype)
            loss = term if loss is None else loss + term
        if loss is None:
            raise ValueError("No loss to compute. Provide a `loss` argument in `compile()` (or add_loss() terms "
                             "in the model's layers)")
        return loss

    def _forward_pass(self, xb, training, logits=False):
        """One forward pass of fit / evaluate, add_loss() terms collected afresh."""
        with forward_pass(self), training_scope(bool(training)):
            return self._forward_tagged(xb, training=training, logits=logits)

    def _train_step(self, xb, yb, wb=None):
        out = self._forward_pass(xb, training=True, logits=self._fused)
        loss = self._total_loss(out, yb, wb)
        self.optimizer.zero_grad()
        loss.backward()
        for hook in self._before_update:
            hook()
        self.optimizer.step()
        return loss, out

    def _update_metrics(self, out, yb, n, wb=None):
        logits = self._outputs_logits
        act = self._final_activation() if self._fused else None
        for m in self._metrics:
            update_metric(m, yb, out, logits, wb, act)

    def _logs(self, tracker):
        logs = {"loss": tracker.result()}
        for m in self._metrics:
            logs[m.name] = metric_result(m)
        return logs

    def _batches(self, x, y, batch_size, shuffle, device, w=None):
        """Yield (x Tensor, y array or None, n, sample weights or None) for arrays or a
        DataLoader-like iterable (whose batches are x, (x, y) or (x, y, sample_weight))."""
        if is_batch_iterable(x):
            batches = x
            if shuffle and isinstance(x, PyDataset):      # Keras shuffles a PyDataset's batch order
                batches = x.iter_batches(default_generator().permutation(len(x)))
            for batch in batches:
                wb = None
                if isinstance(batch, (tuple, list)):
                    xb = batch[0]
                    yb = batch[1] if len(batch) > 1 else None
                    if len(batch) > 2:
                        wb = batch[2].data if isinstance(batch[2], Tensor) else np.asarray(batch[2])
                else:
                    xb, yb = batch, None
                if self._n_inputs() > 1 and isinstance(xb, (list, tuple)):
                    xt = [as_tensor_input(a, device) for a in xb]
                else:
                    xt = as_tensor_input(xb, device)
                if isinstance(yb, Tensor):
                    yb = yb.data
                elif isinstance(yb, (list, tuple)):         # the targets of a multi-output model
                    yb = [v.data if isinstance(v, Tensor) else np.asarray(v) for v in yb]
                yield xt, yb, (xt[0] if isinstance(xt, list) else xt).shape[0], wb
            return
        n = num_samples(x)
        order = default_generator().permutation(n) if shuffle else None
        for start in range(0, n, batch_size):
            if order is not None:
                idx = order[start:start + batch_size]
            else:
                idx = slice(start, start + batch_size)
            xb = batch_x(x, idx)
            yield (_to_device(xb, device), take_rows(y, idx), (xb[0] if isinstance(xb, list) else xb).shape[0],
                   take_rows(w, idx))

    def _sample_weights(self, x, y, sample_weight, class_weight, what):
        """One weight per sample from sample_weight and/or class_weight (multiplied), or None."""
        if sample_weight is None and class_weight is None:
            return None
        if is_batch_iterable(x):
            raise ValueError(f"{what}: with a DataLoader, put the sample weights in the batches as (x, y, w); "
                             "sample_weight= / class_weight= need array inputs")
        n = num_samples(x)
        w = np.ones(n, dtype=np.float32)
        if sample_weight is not None:
            sw = np.asarray(sample_weight, dtype=np.float32)
            if sw.ndim > 2 or sw.size != n or (sw.ndim == 2 and sw.shape[1] != 1):
                raise ValueError(f"{what}: sample_weight must hold one weight per sample, shape ({n},); got "
                                 f"shape {sw.shape}")
            if not np.all(np.isfinite(sw)) or (sw < 0).any():
                raise ValueError(f"{what}: sample_weight must be finite and >= 0")
            w *= sw.reshape(-1)
        if class_weight is not None:
            if isinstance(y, list):
                raise ValueError(f"{what}: class_weight is not supported for models with several outputs; "
                                 "pass sample_weight instead")
            if not isinstance(class_weight, dict):
                raise TypeError(f"{what}: class_weight must be a dict {{class index: weight}}")
            labels = np.asarray(y)
            if labels.ndim == 2 and labels.shape[1] > 1:
                labels = labels.argmax(axis=1)         # one-hot targets
            elif labels.ndim > 2 or (labels.ndim == 2 and labels.shape[1] != 1):
                raise ValueError(f"{what}: class_weight needs one class per sample; targets have shape "
                                 f"{labels.shape}")
            labels = labels.reshape(-1).astype(np.int64)
            table = {int(k): float(v) for k, v in class_weight.items()}
            # Keras: a class the dict leaves out keeps weight 1.0
            w *= np.array([table.get(c, 1.0) for c in labels], dtype=np.float32)
        return w

    def _prepare(self, x, y, what):
        if is_batch_iterable(x):
            if y is not None:
                raise ValueError(f"{what}: when x is a DataLoader (batches of (x, y)), y must be None")
            return x, None
        if x is None:
            raise ValueError(f"{what} needs x")
        x = self._standardize_x(x, f"{what} x")
        return x, self._standardize_y(x, y, f"{what} y")

    def _standardize_y(self, x, y, what):
        """y as an array checked against the loss (a list for a multi-output model)."""
        y = as_array(y, what)
        if self.loss is not None:
            y = check_xy(x[0] if isinstance(x, list) else x, y, self.loss.name, self._n_outputs())
        return y

    def _standardize_x(self, x, what):
        """x as one array (or a list of arrays for a multi-input model), shapes checked against the model."""
        if self._n_inputs() > 1:
            x = standardize_inputs(x, self.input_names, what)
            self.check_input_shapes([(None,) + tuple(a.shape[1:]) for a in x], [tuple(a.shape) for a in x])
            return x
        x = as_array(x, what)
        self._ensure_built(as_tensor_input(x[:1]))
        self.check_input_shape((None,) + tuple(x.shape[1:]), x_shape=tuple(x.shape))
        return x

    def _first_batch_build(self, data):
        """Build an unbuilt model on the first batch of a loader / generator; -> the data to iterate.
        A one-shot iterator (a Python generator) is wrapped so that the batch read here is not lost."""
        if not is_batch_iterable(data):
            return data
        if isinstance(data, collections.abc.Iterator) and not isinstance(data, PeekedIterator):
            data = PeekedIterator(data)
        if self.built:
            return data
        if isinstance(data, PeekedIterator):
            batch = data.peek()
            batches = [] if batch is PeekedIterator.EMPTY else [batch]
        else:
            batches = data
        for batch in batches:
            xb = batch[0] if isinstance(batch, (tuple, list)) else batch
            self._ensure_built(as_tensor_input(xb))
            break
        return data

    def _epoch_iterator(self, x, y, batch_size, shuffle, device, w=None, steps=None):
        """Keras' EpochIterator over arrays (batch_size None: ceil(n / steps) with steps, else 32, as
        Keras' ArrayDataAdapter) or a loader / PyDataset / generator."""
        steps = check_steps(steps)
        if is_batch_iterable(x):
            bs = None
            n_batches = len(x) if hasattr(x, "__len__") else None
        else:
            n = num_samples(x)
            bs = int(batch_size) if batch_size else (math.ceil(n / steps) if steps else 32)
            if bs <= 0:
                raise ValueError(f"batch_size must be positive, got {batch_size}")
            n_batches = math.ceil(n / bs)
        return EpochIterator(lambda: self._batches(x, y, bs, shuffle, device, w), n_batches, steps)

    # ------------------------------------------------------------------ fit
    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            validation_split=0.0, validation_data=None, shuffle=True, class_weight=None,
            sample_weight=None, initial_epoch=0, steps_per_epoch=None, validation_steps=None,
            validation_batch_size=None, validation_freq=1, **kwargs):
        """Train for `epochs` epochs; returns a History whose .history has one value per epoch."""
        if kwargs:
            raise TypeError(f"fit: unexpected arguments {sorted(kwargs)}")
        self._require_compiled("training it")
        verbose = _verbosity(verbose)
        if batch_size is not None and int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        x = self._first_batch_build(x)
        x, y = self._prepare(x, y, "fit")
        w = self._sample_weights(x, y, sample_weight, class_weight, "fit")
        val_w = None
        if validation_data is None and validation_split:
            if is_batch_iterable(x):
                raise ValueError("fit: validation_split needs array inputs; pass validation_data instead")
            n_all = num_samples(x)
            (x, y), validation_data = split_validation(x, y, validation_split)
            if w is not None:                       # the validation rows keep their weights, as in Keras
                w, val_w = w[:num_samples(x)], w[num_samples(x):n_all]
        val = None
        if validation_data is not None:
            if is_batch_iterable(validation_data):
                val = (self._first_batch_build(validation_data), None, None)
            else:
                if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                    raise ValueError("validation_data must be (x_val, y_val), (x_val, y_val, sample_weight_val) "
                                     "or a DataLoader")
                vx, vy = self._prepare(validation_data[0], validation_data[1], "fit validation_data")
                if len(validation_data) == 3:
                    val_w = self._sample_weights(vx, vy, validation_data[2], None, "fit validation_data")
                val = (vx, vy, val_w)
        self._resolve_metrics(y)
        self._ensure_optimizer()
        device = self._device()
        train_batches = self._epoch_iterator(x, y, batch_size, shuffle, device, w, steps_per_epoch)
        steps = train_batches.num_batches
        history = cbks.History()
        cb_list = list(callbacks or [])
        if verbose:
            cb_list.append(cbks.ProgbarLogger(verbose))
        cb_list.append(history)
        params = {"epochs": int(epochs), "steps": steps, "verbose": verbose, "batch_size": batch_size or 32}
        cb = cbks.CallbackList(cb_list, self, params)
        self.stop_training = False
        tracker = metrics_mod.Mean("loss")
        self._initial_epoch = None
        cb.on_train_begin()
        if self._initial_epoch is not None:        # a callback restored a backup (BackupAndRestore)
            initial_epoch, self._initial_epoch = self._initial_epoch, None
        for epoch in range(int(initial_epoch), int(epochs)):
            self.train()
            tracker.reset_state()
            for m in self._metrics:
                m.reset_state()
            cb.on_epoch_begin(epoch)
            if isinstance(x, PyDataset):
                x.on_epoch_begin()
            ran = 0
            for step, (xb, yb, n, wb) in enumerate(train_batches.epoch()):
                ran += 1
                cb.on_train_batch_begin(step)
                loss, out = self._train_step(xb, yb, wb)
                lv = float(loss.item())
                tracker.update(lv, n)
                self._update_metrics(out, yb, n, wb)
                cb.on_train_batch_end(step, self._logs(tracker))
                if self.stop_training:
                    break
            if isinstance(x, PyDataset):
                x.on_epoch_end()
            logs = self._logs(tracker) if ran else {}      # an epoch that ran no step logs nothing (Keras)
            if val is not None and (epoch + 1) % int(validation_freq) == 0:
                vlogs = self._run_eval(val[0], val[1], validation_batch_size or batch_size, 0, val[2],
                                       steps=validation_steps)
                logs.update({"val_" + k: v for k, v in vlogs.items()})
            cb.on_epoch_end(epoch, logs)
            if self.stop_training:
                break
        cb.on_train_end()
        self.eval()
        self.history = history
        return history

    # ------------------------------------------------------------------ evaluate / predict
    def _run_eval(self, x, y, batch_size, verbose, w=None, steps=None):
        self.eval()
        tracker = metrics_mod.Mean("loss")
        for m in self._metrics:
            m.reset_state()
        device = self._device()
        batches = self._epoch_iterator(x, y, batch_size, False, device, w, steps)
        bar = None
        if verbose == 1:
            from tqdm.auto import tqdm
            bar = tqdm(total=batches.num_batches, desc="Evaluate", unit="step", dynamic_ncols=True)
        with no_grad():
            for xb, yb, n, wb in batches.epoch():
                if yb is None and self.loss is not None:
                    raise ValueError("evaluate needs targets y (or a DataLoader yielding (x, y))")
                out = self._forward_pass(xb, training=False, logits=self._fused)
                tracker.update(float(self._total_loss(out, yb, wb).item()), n)
                self._update_metrics(out, yb, n, wb)
                if bar is not None:
                    bar.update(1)
        logs = self._logs(tracker)
        if bar is not None:
            bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items()}, refresh=False)
            bar.close()
        elif verbose == 2:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()), flush=True)
        return logs

    def evaluate(self, x=None, y=None, batch_size=None, verbose="auto", sample_weight=None, steps=None,
                 callbacks=None, return_dict=False, **kwargs):
        """-> loss, or [loss, metric, ...] when compiled with metrics (return_dict=True: a dict)."""
        if kwargs:
            raise TypeError(f"evaluate: unexpected arguments {sorted(kwargs)}")
        self._require_compiled("evaluating it")
        x = self._first_batch_build(x)
        x, y = self._prepare(x, y, "evaluate")
        w = self._sample_weights(x, y, sample_weight, None, "evaluate")
        if y is None and not is_batch_iterable(x) and self.loss is not None:
            raise ValueError("evaluate needs targets: model.evaluate(x_test, y_test)")
        self._resolve_metrics(y)
        logs = self._run_eval(x, y, batch_size, _verbosity(verbose), w, steps=steps)
        if return_dict:
            return logs
        vals = list(logs.values())
        return vals[0] if len(vals) == 1 else vals

    def predict(self, x, batch_size=None, verbose="auto", steps=None, callbacks=None, **kwargs):
        """Outputs (probabilities for a softmax model) as one numpy array."""
        if kwargs:
            raise TypeError(f"predict: unexpected arguments {sorted(kwargs)}")
        x = self._first_batch_build(x)
        if not is_batch_iterable(x):
            x = self._standardize_x(x, "predict x")
        verbose = _verbosity(verbose)
        self.eval()
        batches = self._epoch_iterator(x, None, batch_size, False, self._device(), None, steps)
        outs = []
        bar = None
        if verbose == 1:
            from tqdm.auto import tqdm
            bar = tqdm(total=batches.num_batches, desc="Predict", unit="step", dynamic_ncols=True)
        with no_grad():
            for xb, *_ in batches.epoch():
                with forward_pass(self), training_scope(False):
                    out = self._forward(xb, training=False)
                outs.append([o.numpy() for o in out] if isinstance(out, list) else out.numpy())
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        shapes = self.output_shape_built
        if isinstance(shapes, list):                 # several outputs: one array each, as Keras returns
            if not outs:
                return [np.zeros((0,) + tuple(sh[1:]), dtype=np.float32) for sh in shapes]
            return [np.concatenate([o[i] for o in outs], axis=0) for i in range(len(shapes))]
        if not outs:
            return np.zeros((0,) + tuple(shapes[1:] or ()), dtype=np.float32)
        return np.concatenate(outs, axis=0)

    def predict_on_batch(self, x):
        return self.predict(x, batch_size=max(1, num_samples(self._standardize_x(x, "predict_on_batch x"))),
                            verbose=0)

    def train_on_batch(self, x, y=None, sample_weight=None, class_weight=None, return_dict=False):
        self._require_compiled("training it")
        x, y = self._prepare(x, y, "train_on_batch")
        w = self._sample_weights(x, y, sample_weight, class_weight, "train_on_batch")
        self._resolve_metrics(y)
        self._ensure_optimizer()
        self.train()
        for m in self._metrics:
            m.reset_state()
        xb = _to_device(batch_x(x, slice(None)), self._device())
        loss, out = self._train_step(xb, y, w)
        self._update_metrics(out, y, num_samples(x), w)
        logs = {"loss": float(loss.item())}
        logs.update({m.name: metric_result(m) for m in self._metrics})
        return logs if return_dict else (list(logs.values()) if len(logs) > 1 else logs["loss"])

    def test_on_batch(self, x, y=None, sample_weight=None, return_dict=False):
        return self.evaluate(x, y, batch_size=max(1, num_samples(self._standardize_x(x, "test_on_batch x"))),
                             verbose=0, sample_weight=sample_weight, return_dict=return_dict)

    # ------------------------------------------------------------------ shape check / summary / save
    def check_input_shape(self, shape, built=True, x_shape=None):
        super().check_input_shape(shape, built)

    def summary(self, line_length=None, positions=None, print_fn=None, **kwargs):
        from .summary import print_summary
        print_summary(self, line_length=line_length, positions=positions, print_fn=print_fn)

    def save(self, filepath, overwrite=True, include_optimizer=True, **kwargs):
        """Architecture (JSON) + weights (+ compile settings and optimizer state) in one
        safetensors file via engine.save. Reload with keras.models.load_model(filepath)."""
        from .saving import save_model
        save_model(self, filepath, overwrite=overwrite, include_optimizer=include_optimizer)

    def save_weights(self, filepath, overwrite=True):
        from .saving import save_weights
        save_weights(self, filepath, overwrite=overwrite)

    def load_weights(self, filepath):
        from .saving import load_weights
        load_weights(self, filepath)

    def compile_from_config(self, config):
        """Keras 3's Model.compile_from_config(get_compile_config())."""
        from .saving import compile_from_config
        compile_from_config(self, config)

    def get_compile_config(self):
        if not self.compiled:
            return None
        return {"optimizer": optimizers_mod.serialize(self.optimizer),
                "loss": None if self.loss is None else losses_mod.serialize(self.loss),
                # metric objects keep their class and settings (AUC(curve="PR"), Precision(thresholds=0.3))
                "metrics": [metrics_mod.serialize(m) for m in self._metric_ids],
                "weighted_metrics": [metrics_mod.serialize(m) for m in self._weighted_metric_ids]}


def _metric_list(metrics, what):
    """compile(metrics=...) / compile(weighted_metrics=...) of a one-output model as a list."""
    if metrics is None:
        return []
    if isinstance(metrics, (str, metrics_mod.Metric)):
        return [metrics]
    if isinstance(metrics, dict):
        raise ValueError(f"compile: per-output {what} dicts are for models with several outputs")
    return list(metrics)
