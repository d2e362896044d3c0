"""Saving Keras models through engine.save: one safetensors file, JSON config, no pickle.

File content (engine.save structure):
    format      "dptrain-keras/1"
    class_name  "Sequential"
    config      the architecture as JSON (layer class names + constructor configs)
    weights     {layer name: {weight name: array}}   (Keras layouts; any safetensors
                reader sees them as "weights.<layer>.<weight>"); a nested model's
                layers one level down, under its name ("weights.<model>.<layer>.<weight>")
    compile     optimizer / loss / metrics configs, or None
    optimizer   the optimizer state (moments, step counts), or None

A model reloaded with load_model() predicts bit-identically (same float32 weights,
same code path) and, with its optimizer state, continues training where it stopped.
"""
from __future__ import annotations

import inspect
import os
import warnings

import numpy as np

from .. import serialization
from . import losses as losses_mod
from . import optimizers as optimizers_mod

__all__ = ["save_model", "load_model", "save_weights", "load_weights", "layer_to_json", "layer_from_json"]

FORMAT = "dptrain-keras/1"


def layer_to_json(layer) -> dict:
    return {"class_name": type(layer).__name__, "config": layer.get_config()}


def layer_from_json(spec, custom_objects=None):
    from .layers import _registry
    from .models import Functional, Sequential
    classes = {**_registry(), "Sequential": Sequential, "Functional": Functional, **(custom_objects or {})}
    name = spec.get("class_name")
    cls = classes.get(name)
    if cls is None:
        raise ValueError(f"unknown layer class {name!r} in the saved model; pass it as "
                         f"custom_objects={{{name!r}: {name}}} to load_model")
    cfg = spec.get("config", {})
    if name in ("Sequential", "Functional") or _takes_custom_objects(cls):    # holds other layers
        return cls.from_config(cfg, custom_objects)
    return cls.from_config(cfg)


def _takes_custom_objects(cls):
    try:
        return "custom_objects" in inspect.signature(cls.from_config).parameters
    except (TypeError, ValueError):
        return False


def _weight_entries(model):
    """(key path, layer) for every layer with weights, in Keras' weight order.  A nested model's layers
    sit under the model's name (("feature_extractor", "dense")), so two sub-models may have layers of
    the same name; a wrapper's layers (Bidirectional, TimeDistributed) sit where the wrapper is."""
    return [(scope + (layer.name,), layer) for scope, layer in model._weight_layer_paths() if layer.weights]


def _weights_dict(model):
    """{layer name: {weight name: array}}, with a nested {layer name: ...} per sub-model."""
    out = {}
    for path, layer in _weight_entries(model):
        node = out
        for name in path[:-1]:
            node = node.setdefault(name, {})
        if path[-1] in node:
            raise ValueError(f'two layers are named "{"/".join(path)}"; give them unique names to save')
        node[path[-1]] = {n: np.array(w.numpy(), copy=True) for n, w in layer._weight_paths()}
    return out


def _saved_layers(weights, scope=()):
    """Key path -> {weight name: array} of a saved weights dict (a layer's entry holds arrays)."""
    out = {}
    for name, v in weights.items():
        if isinstance(v, dict) and v and all(isinstance(a, dict) for a in v.values()):
            out.update(_saved_layers(v, scope + (name,)))
        else:
            out[scope + (name,)] = v
    return out


def _apply_weights(model, weights, path):
    saved = _saved_layers(weights)
    found, missing = [], []
    for key, layer in _weight_entries(model):
        # files written before models nested their weights keep a sub-model's layers at the top level
        k = key if key in saved else (key[-1],) if (key[-1],) in saved else None
        if k is None:
            missing.append("/".join(key))
        found.append((k, layer))
    extra = ["/".join(k) for k in saved if k not in {k for k, _ in found}]
    if missing or extra:
        raise ValueError(f"{path}: saved weights do not match the model: missing layers {missing}, "
                         f"unexpected layers {extra}")
    for k, layer in found:
        names = [n for n, _ in layer._weight_paths()]
        lost = [n for n in names if n not in saved[k]]
        if lost or len(saved[k]) != len(names):
            raise ValueError(f"{path}: saved weights of layer \"{'/'.join(k)}\" do not match it: it has "
                             f"{names}, the file has {sorted(saved[k])}")
        layer.set_weights([saved[k][n] for n in names])


def _check_overwrite(filepath, overwrite):
    if not overwrite and os.path.exists(filepath):
        raise FileExistsError(f"{filepath} exists; pass overwrite=True to replace it")


def save_model(model, filepath, overwrite=True, include_optimizer=True):
    filepath = os.fspath(filepath)
    _check_overwrite(filepath, overwrite)
    if not model.built:
        raise ValueError(f'model "{model.name}" is not built, so it has no weights to save yet; '
                         "give the first layer input_shape= or call the model on data first")
    if not hasattr(type(model), "from_config") or type(model).__name__ not in ("Sequential", "Functional"):
        raise NotImplementedError(
            f"model.save() stores the architecture of Sequential and functional models only; for the subclassed "
            f"model {type(model).__name__} use model.save_weights(path) and rebuild it in code")
    compile_cfg = opt_state = None
    if include_optimizer and model.compiled:
        compile_cfg = model.get_compile_config()
        if getattr(model, "_optimizer_built", False):
            opt_state = model.optimizer.state_dict()
    serialization.save({"format": FORMAT, "class_name": type(model).__name__, "config": model.get_config(),
                        "weights": _weights_dict(model), "compile": compile_cfg, "optimizer": opt_state},
                       filepath)


def _read(filepath):
    obj = serialization.load(os.fspath(filepath))
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{filepath} is a dptrain checkpoint but not a Keras model saved with model.save() "
                         f"(format {obj.get('format') if isinstance(obj, dict) else type(obj).__name__!r})")
    return obj


def compile_from_config(model, cc):
    """model.compile(...) from get_compile_config()'s dict (Keras' Model.compile_from_config): a
    fresh optimizer of the same class and settings, the losses and metrics."""
    loss = [None if v is None else losses_mod.get(v) for v in cc["loss"]] if isinstance(cc["loss"], list) \
        else (None if cc["loss"] is None else losses_mod.get(cc["loss"]))
    model.compile(optimizer=optimizers_mod.get(cc["optimizer"]), loss=loss,
                  metrics=cc.get("metrics") or None, loss_weights=cc.get("loss_weights"),
                  weighted_metrics=cc.get("weighted_metrics") or None)


def load_model(filepath, custom_objects=None, compile=True):
    obj = _read(filepath)
    model = layer_from_json({"class_name": obj["class_name"], "config": obj["config"]}, custom_objects)
    _apply_weights(model, obj["weights"], filepath)
    cc = obj.get("compile")
    if compile and cc:
        compile_from_config(model, cc)
        if obj.get("optimizer") is not None:
            model._resolve_metrics()
            model._ensure_optimizer()
            try:
                model.optimizer.load_state_dict(obj["optimizer"])
            except ValueError as e:
                # Keras does the same: the rebuilt model's weights do not line up with the saved
                # optimizer's (a layer shared inside a user layer comes back as two), so the weights
                # load and the optimizer starts afresh, said out loud.
                warnings.warn(f"{filepath}: the optimizer state was not restored ({e}); the model's weights "
                              "are loaded and training continues with a fresh optimizer", stacklevel=2)
    return model


def save_weights(model, filepath, overwrite=True):
    filepath = os.fspath(filepath)
    _check_overwrite(filepath, overwrite)
    serialization.save({"format": FORMAT, "weights": _weights_dict(model)}, filepath)


def load_weights(model, filepath):
    obj = _read(filepath)
    if not model.built:
        raise ValueError(f'build model "{model.name}" (call it on data or build(input_shape)) before '
                         "load_weights, so its weights exist")
    _apply_weights(model, obj["weights"], filepath)


def save_training_state(model, filepath, extra=None):
    """Weights, optimizer state, the engine's random state and `extra` (JSON-able) of any built model
    (also subclassed ones): what BackupAndRestore needs to continue a fit exactly."""
    from .. import random as _random
    opt = model.optimizer.state_dict() if getattr(model, "_optimizer_built", False) else None
    # positional, not by layer name: a model rebuilt in the same process gets new automatic names
    serialization.save({"format": FORMAT, "weight_list": [np.asarray(w) for w in model.get_weights()],
                        "optimizer": opt, "rng": _random.get_state(), "extra": extra or {}}, os.fspath(filepath))


def load_training_state(model, filepath) -> dict:
    """Put a save_training_state file back into `model` (built and compiled); returns its `extra`."""
    from .. import random as _random
    obj = _read(filepath)
    saved, have = obj["weight_list"], model.get_weights()
    if len(saved) != len(have) or any(np.shape(a) != np.shape(b) for a, b in zip(saved, have)):
        raise ValueError(f"{filepath}: the backup holds {len(saved)} weights of shapes "
                         f"{[tuple(np.shape(a)) for a in saved]}, the model has {len(have)} of shapes "
                         f"{[tuple(np.shape(b)) for b in have]}: it is another architecture")
    model.set_weights([np.asarray(a) for a in saved])
    if obj.get("optimizer") is not None and getattr(model, "_optimizer_built", False):
        model.optimizer.load_state_dict(obj["optimizer"])
    if obj.get("rng") is not None:
        _random.set_state(obj["rng"])
    return dict(obj.get("extra") or {})
