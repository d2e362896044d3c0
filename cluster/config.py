"""The dptrain YAML config: schema, defaults, dotted overrides and validation.

Why this module exists: a training job touches several machines and minutes of
compute, so every mistake in the config must be found *before* anything starts,
all at once, each message naming the exact place (`cluster.nodes.1.slots`) and
the fix.  The schema is declared once (``SCHEMA``) and drives validation,
defaults and the reference documentation (``schema_reference()``), so the three
can never disagree.

Public API::

    cfg = load_config("configs/local.yaml", overrides=["job.epochs=1"])
    cfg.job.optimizer.lr          # attribute access ...
    cfg["job"]["epochs"]          # ... or plain dict access
    cfg.world_size                # sum of node slots
    cfg.to_dict()                 # plain nested dict (what config.yaml holds)

``ConfigError.errors`` is the list of every problem found.
The loader only uses ``yaml.safe_load`` (after refusing duplicate keys on the composed node tree);
values of overrides too.
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import os
import re
import socket
from typing import Any, Callable, Iterable, Mapping

import yaml

__all__ = [
    "Config", "ConfigError", "load_config", "resolve_config", "parse_overrides",
    "SCHEMA", "schema_reference", "dump_config", "is_local_host", "MODEL_ZOO", "auto_resources",
]

MODEL_ZOO = ("seed_cnn", "seed_lstm", "mlp", "mlp_bn")
_MISSING = object()


class ConfigError(Exception):
    """A config could not be loaded; ``errors`` lists every problem (dotted path first)."""

    def __init__(self, errors: Iterable[str], source: str | None = None):
        self.errors = list(errors)
        self.source = source
        super().__init__(self.format())

    def format(self) -> str:
        where = f" {self.source}" if self.source else ""
        n = len(self.errors)
        lines = [f"invalid config{where}: {n} error{'s' if n != 1 else ''}"]
        lines += [f"  - {e}" for e in self.errors]
        return "\n".join(lines)


# --------------------------------------------------------------------------- schema DSL
def _type_word(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    if isinstance(v, dict):
        return "mapping"
    return type(v).__name__


def _show(v: Any) -> str:
    """Short YAML-like rendering of a bad value for error messages."""
    if isinstance(v, str):
        s = repr(v)
    elif v is None:
        s = "null"
    elif isinstance(v, bool):
        s = "true" if v else "false"
    elif isinstance(v, (int, float)):
        s = repr(v)
    else:
        try:
            s = json.dumps(v, default=str)
        except (TypeError, ValueError):
            s = repr(v)
    if len(s) > 60:
        s = s[:57] + "..."
    if isinstance(v, (list, dict)):
        s += f" ({_type_word(v)})"
    return s


class Spec:
    """One value in the schema: how to check it, its default and its documentation."""

    def __init__(self, default: Any = _MISSING, doc: str = ""):
        self.default = default
        self.doc = doc

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    def describe(self) -> str:  # the type column of the reference
        raise NotImplementedError

    def check(self, value: Any, path: str, errors: list[str]) -> Any:
        """Return the (coerced) value, or append messages to `errors`."""
        raise NotImplementedError

    def fill(self, value: Any) -> Any:
        """Insert defaults without validating (used before overrides are applied)."""
        return value


class Int(Spec):
    def __init__(self, default=_MISSING, doc="", min: int | None = None, max: int | None = None):
        super().__init__(default, doc)
        self.min, self.max = min, max

    def _expect(self) -> str:
        if self.min is not None and self.max is not None:
            return f"an integer between {self.min} and {self.max}"
        if self.min == 1:
            return "a positive integer"
        if self.min == 0:
            return "a non-negative integer"
        if self.min is not None:
            return f"an integer >= {self.min}"
        return "an integer"

    def describe(self) -> str:
        return "int" + (f" >= {self.min}" if self.min is not None and self.max is None else "") + (
            f" in [{self.min}, {self.max}]" if self.max is not None else "")

    def check(self, value, path, errors):
        if isinstance(value, float) and value.is_integer() and not isinstance(value, bool):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            errors.append(f"{path}: expected {self._expect()}, got {_show(value)} ({_type_word(value)})")
            return value
        if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
            errors.append(f"{path}: expected {self._expect()}, got {value}")
        return value


class IntOrAuto(Int):
    """An integer, or `auto`: measured when the config is resolved (this machine at once; a remote
    node only when the caller can reach it, see `resolve_config(measure=...)`)."""

    def describe(self) -> str:
        return super().describe() + " or `auto`"

    def check(self, value, path, errors):
        if value == "auto":
            return value
        if isinstance(value, str):
            errors.append(f"{path}: expected {self._expect()} or 'auto', got {_show(value)}")
            return value
        return super().check(value, path, errors)


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


class Float(Spec):
    def __init__(self, default=_MISSING, doc="", min: float | None = None, max: float | None = None,
                 min_exclusive: bool = False):
        super().__init__(default, doc)
        self.min, self.max, self.min_exclusive = min, max, min_exclusive

    def _expect(self) -> str:
        if self.min == 0 and self.min_exclusive and self.max is None:
            return "a positive number"
        if self.min == 0 and not self.min_exclusive and self.max is None:
            return "a non-negative number"
        lo = "" if self.min is None else (f"> {self.min}" if self.min_exclusive else f">= {self.min}")
        hi = "" if self.max is None else f"<= {self.max}"
        return "a number" + (" " + " and ".join(x for x in (lo, hi) if x) if (lo or hi) else "")

    def describe(self) -> str:
        if self.min is not None and self.max is not None:
            return f"float in {'(' if self.min_exclusive else '['}{self.min:g}, {self.max:g}]"
        if self.min is not None:
            return f"float {'>' if self.min_exclusive else '>='} {self.min:g}"
        return "float"

    def check(self, value, path, errors):
        if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            errors.append(f"{path}: expected {self._expect()}, got {_show(value)} ({_type_word(value)})")
            return value
        value = float(value)
        if value != value or value in (float("inf"), float("-inf")):
            errors.append(f"{path}: expected {self._expect()}, got {value}")
            return value
        bad_lo = self.min is not None and (value <= self.min if self.min_exclusive else value < self.min)
        bad_hi = self.max is not None and value > self.max
        if bad_lo or bad_hi:
            errors.append(f"{path}: expected {self._expect()}, got {value:g}")
        return value


class Str(Spec):
    def __init__(self, default=_MISSING, doc="", pattern: str | None = None, hint: str = ""):
        super().__init__(default, doc)
        self.pattern, self.hint = pattern, hint

    def describe(self) -> str:
        return "str"

    def check(self, value, path, errors):
        if not isinstance(value, str):
            errors.append(f"{path}: expected a string, got {_show(value)} ({_type_word(value)})")
            return value
        if not value.strip():
            errors.append(f"{path}: expected a non-empty string")
        elif self.pattern and not re.fullmatch(self.pattern, value):
            errors.append(f"{path}: {self.hint or 'invalid value'}, got {_show(value)}")
        return value


class Bool(Spec):
    def describe(self) -> str:
        return "bool"

    def check(self, value, path, errors):
        if not isinstance(value, bool):
            errors.append(f"{path}: expected true or false, got {_show(value)} ({_type_word(value)})")
        return value


class Enum(Spec):
    def __init__(self, choices: tuple[str, ...], default=_MISSING, doc=""):
        super().__init__(default, doc)
        self.choices = choices

    def describe(self) -> str:
        return " \\| ".join(self.choices)

    def check(self, value, path, errors):
        if not isinstance(value, str) or value not in self.choices:
            opts = ", ".join(repr(c) for c in self.choices)
            msg = f"{path}: expected one of {opts}, got {_show(value)}"
            if isinstance(value, str):
                near = difflib.get_close_matches(value, self.choices, n=1)
                if near:
                    msg += f" (did you mean {near[0]!r}?)"
            errors.append(msg)
        return value


class AutoBool(Spec):
    """`auto`, `true` or `false` (YAML booleans): decided at run time unless forced."""

    def describe(self) -> str:
        return "auto \\| true \\| false"

    def check(self, value, path, errors):
        if isinstance(value, bool) or value == "auto":
            return value
        if value in ("true", "false"):
            return value == "true"
        errors.append(f"{path}: expected auto, true or false, got {_show(value)}")
        return value


class Nullable(Spec):
    """`inner` or null (YAML `~` / `null`)."""

    def __init__(self, inner: Spec, default=None, doc=""):
        super().__init__(default, doc)
        self.inner = inner

    def describe(self) -> str:
        return self.inner.describe() + " or null"

    def check(self, value, path, errors):
        return None if value is None else self.inner.check(value, path, errors)


class ListOf(Spec):
    def __init__(self, item: Spec, default=_MISSING, doc="", min_len: int = 0, length: int | None = None):
        super().__init__(default, doc)
        self.item, self.min_len, self.length = item, min_len, length

    def describe(self) -> str:
        inner = "mapping" if isinstance(self.item, Section) else self.item.describe()
        return f"list of {inner}" + (f" (exactly {self.length})" if self.length else "")

    def fill(self, value):
        if isinstance(value, list):
            return [self.item.fill(v) for v in value]
        return value

    def check(self, value, path, errors):
        if not isinstance(value, list):
            errors.append(f"{path}: expected a list, got {_show(value)} ({_type_word(value)})")
            return value
        if self.length is not None and len(value) != self.length:
            errors.append(f"{path}: expected a list of exactly {self.length} items, got {len(value)}")
        elif len(value) < self.min_len:
            errors.append(f"{path}: expected at least {self.min_len} item{'s' if self.min_len > 1 else ''}, "
                          f"got {len(value)}")
        return [self.item.check(v, f"{path}.{i}", errors) for i, v in enumerate(value)]


class NodeList(ListOf):
    """cluster.nodes: a list of nodes, or `slurm` (replaced by the allocation's before the check)."""

    def describe(self) -> str:
        return super().describe() + " or `slurm`"


class FreeMap(Spec):
    """A mapping with string keys whose contents are passed through (e.g. model arguments)."""

    def describe(self) -> str:
        return "mapping"

    def check(self, value, path, errors):
        if not isinstance(value, dict):
            errors.append(f"{path}: expected a mapping, got {_show(value)} ({_type_word(value)})")
            return value
        for k in value:
            if not isinstance(k, str):
                errors.append(f"{path}: keys must be strings, got {_show(k)}")
        return copy.deepcopy(value)


class Section(Spec):
    """A mapping with a fixed set of keys; unknown keys are errors."""

    def __init__(self, fields: dict[str, Spec], doc: str = "", default=_MISSING):
        super().__init__({} if default is _MISSING else default, doc)
        self.fields = fields

    def describe(self) -> str:
        return "mapping"

    def fill(self, value):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            return value
        out = dict(value)
        for key, spec in self.fields.items():
            if key not in out:
                if spec.required:
                    continue
                out[key] = copy.deepcopy(spec.default)
            out[key] = spec.fill(out[key])
        return out

    def check(self, value, path, errors):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            errors.append(f"{path or 'config'}: expected a mapping, got {_show(value)} ({_type_word(value)})")
            return value
        out: dict[str, Any] = {}
        prefix = f"{path}." if path else ""
        for key in value:
            if key not in self.fields:
                msg = f"{prefix}{key}: unknown key"
                near = difflib.get_close_matches(str(key), list(self.fields), n=1)
                if near:
                    msg += f" (did you mean {near[0]!r}?)"
                msg += "; allowed keys: " + ", ".join(self.fields)
                errors.append(msg)
        for key, spec in self.fields.items():
            if key in value:
                out[key] = spec.check(value[key], prefix + key, errors)
            elif spec.required:
                errors.append(f"{prefix}{key}: required key is missing")
            else:
                out[key] = spec.check(copy.deepcopy(spec.default), prefix + key, []) \
                    if isinstance(spec, Section) else copy.deepcopy(spec.default)
        return out


# --------------------------------------------------------------------------- the schema
NODE = Section({
    "host": Str(doc="Host name or IP address of the node (`localhost` for this machine)."),
    "slots": IntOrAuto(1, "Worker processes (ranks) to start on this node; `auto`: one per GPU when it has "
                          "GPUs, else usable CPU cores // `job.threads` (measured when the config is loaded on "
                          "this machine; on a remote node only by `dptrain mpirun`, which runs a probe there "
                          "before the launch).", min=1),
    "gpus": IntOrAuto(0, "GPUs on this node; workers get GPU `local_rank % gpus`, none when 0; `auto`: the GPUs "
                         "CUDA_VISIBLE_DEVICES / nvidia-smi report on that node (remote nodes: `dptrain mpirun` "
                         "only, as for slots).", min=0),
})

SCHEMA = Section({
    "name": Str("dptrain", "Run name; the default output directory is `runs/<name>`.",
                pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*", hint="expected letters, digits, '.', '_' or '-'"),
    "cluster": Section({
        "nodes": NodeList(NODE, [{"host": "localhost", "slots": 1, "gpus": 0}],
                        "Machines of the job, in node-rank order; or `slurm`: the nodes, tasks per node and GPUs "
                        "of the Slurm allocation the command runs in (`salloc`, `sbatch`).", min_len=1),
        "placement": Enum(("block", "cyclic"), "block",
                          "`block`: fill node 0's slots, then node 1's...; `cyclic`: one rank per node in turn."),
        "backend": Enum(("auto", "mpi", "zmq"), "auto",
                        "Communication backend. `auto`: MPI when an mpiexec and mpi4py are available (`dptrain run` "
                        "then starts the local workers through mpiexec), else ZeroMQ."),
        "allreduce": Enum(("ring", "native"), "ring",
                          "All-reduce algorithm: our ring, or the backend's native collective (MPI only)."),
        "master_port": Int(0, "Port of rank 0's ZeroMQ rendezvous; 0 picks a free port.", min=0, max=65535),
        "coordinator": Section({
            "host": Nullable(Str(), None,
                             "Address workers use to reach the coordinator; null: 127.0.0.1 when all nodes are "
                             "local, else this machine's name, or its address on the route to "
                             "the remote nodes when the name resolves to a loopback address."),
            "port": Int(0, "Coordinator TCP port; 0 picks a free port.", min=0, max=65535),
        }, "The coordinator (registration, heartbeats, checkpoints) runs on the launching machine."),
        "mpi": Section({
            "mpiexec": Nullable(Str(), None,
                                "mpiexec to use; null: the one next to the Python interpreter, else the PATH."),
            "extra_args": ListOf(Str(), [], "Extra arguments inserted after `mpiexec`."),
        }, "Settings for `dptrain mpirun` / `dptrain script`."),
        "python": Nullable(Str(), None, "Python interpreter for workers; null: the launcher's own."),
    }, "Where the workers run."),
    "job": Section({
        "model": Str("seed_cnn",
                     "Model: a zoo name (`seed_cnn`, `seed_lstm`, `mlp`, `mlp_bn` = mlp with BatchNorm and Dropout) "
                     "or `package.module:factory`.",
                     pattern=r"(seed_cnn|seed_lstm|mlp|mlp_bn|[A-Za-z_][\w.]*:[A-Za-z_]\w*)",
                     hint="expected one of 'seed_cnn', 'seed_lstm', 'mlp', 'mlp_bn' or 'package.module:factory'"),
        "model_args": FreeMap({}, "Keyword arguments for the model factory (e.g. `hidden: 128`)."),
        "script": Nullable(Str(), None,
                           "A user Python file run as every worker instead of the built-in loop "
                           "(it reads its rank from the environment / `cluster.init()`)."),
        "script_args": ListOf(Str(), [], "Command-line arguments for `job.script`."),
        "dataset": Section({
            "name": Enum(("fashion_mnist", "mnist", "synthetic"), "fashion_mnist", "Dataset."),
            "root": Nullable(Str(), None,
                             "Directory with the IDX files; null searches `$DPTRAIN_DATA`, `~/.cache/dptrain`, "
                             "`/usr/share/datasets/<name>`, then downloads them (unless `DPTRAIN_OFFLINE` is "
                             "set), then (fashion_mnist only) uses the subset embedded in the package."),
            "train_subset": Nullable(Int(min=1), None,
                                     "Use only the first N training samples (for `synthetic`: the size)."),
            "test_subset": Nullable(Int(min=1), None, "Use only the first N test samples (for `synthetic`: the size)."),
        }),
        "optimizer": Section({
            "name": Enum(("sgd", "adam", "adamw", "rmsprop"), "adam", "Optimizer (PyTorch update rules)."),
            "lr": Float(0.001, "Peak learning rate.", min=0, min_exclusive=True),
            "momentum": Float(0.0, "Momentum (sgd, rmsprop).", min=0, max=1),
            "nesterov": Bool(False, "Nesterov momentum (sgd)."),
            "weight_decay": Float(0.0, "Weight decay (decoupled for adamw).", min=0),
            "betas": ListOf(Float(min=0, max=1), [0.9, 0.999], "Adam/AdamW betas.", length=2),
            "eps": Float(1e-8, "Denominator epsilon (adam, adamw, rmsprop).", min=0, min_exclusive=True),
            "alpha": Float(0.99, "Smoothing constant (rmsprop).", min=0, max=1),
            "shard": AutoBool("auto", "ZeRO stage 1 (`cluster.ZeroRedundancyOptimizer`): each rank updates and "
                                      "stores 1/N of the optimizer state, same results. `auto`: when world size > 1 "
                                      "on CPU over MPI, or over ZeroMQ when all workers share one host (same-host "
                                      "shared buffers); across hosts over ZeroMQ the extra collectives cost more "
                                      "than they save."),
        }),
        "schedule": Section({
            "name": Enum(("none", "step", "cosine"), "none",
                         "Learning-rate schedule after warmup: constant, step decay, cosine to `min_lr`."),
            "warmup_steps": Int(0, "Linear warmup from 0 to `lr` over this many optimizer steps.", min=0),
            "step_size": Int(1000, "`step`: multiply the rate by `gamma` every this many steps.", min=1),
            "gamma": Float(0.1, "`step`: decay factor.", min=0, max=1, min_exclusive=True),
            "min_lr": Float(0.0, "`cosine`: final learning rate.", min=0),
        }),
        "epochs": Int(1, "Passes over the training set.", min=1),
        "max_steps": Nullable(Int(min=1), None, "Stop after this many optimizer steps (a cap on `epochs`)."),
        "global_batch_size": Int(128, "Samples per optimizer step summed over all ranks; must be divisible by "
                                      "the world size (each rank gets `global_batch_size / world_size`). Used by "
                                      "the built-in loop; a `job.script` picks its own batches.", min=1),
        "eval_batch_size": Int(1000, "Per-rank batch size for evaluation.", min=1),
        "seed": Int(0, "Seed of parameter init, shuffling and dropout (same on all ranks).", min=0),
        "threads": Int(1, "Threads per worker (OMP/OpenBLAS/MKL_NUM_THREADS).", min=1),
        "device": Enum(("auto", "cpu", "cuda"), "auto",
                       "`auto`: the worker's GPU when its node has `gpus` > 0 and CuPy works, else CPU."),
        "log_every": Int(50, "Write a metrics line every N optimizer steps.", min=1),
        "clip_grad_norm": Nullable(Float(min=0, min_exclusive=True), None, "Clip the global gradient norm."),
        "sync_batchnorm": Bool(True, "Synchronise BatchNorm statistics across ranks (world size > 1)."),
        "bucket_cap_mb": Float(25.0, "DistributedDataParallel gradient bucket size (MB).", min=0,
                               min_exclusive=True),
        "ddp_overlap": AutoBool("auto", "Start bucket reductions inside backward; `auto`: only when a CPU core "
                                        "is left over for them, or on GPU."),
        "ddp_compression": Enum(("none", "fp16", "bf16"), "none",
                                "Gradients travel in 16 bits (half the bytes; for links between hosts) and are "
                                "widened back to float32 after the reduction: `fp16` as torch's "
                                "fp16_compress_hook and Horovod's Compression.fp16; `bf16` as torch's "
                                "bf16_compress_hook, added in float32 inside the ring (cheaper on CPUs)."),
    }, "What to train."),
    "checkpoint": Section({
        "dir": Nullable(Str(), None, "Checkpoint directory; null: `<output.dir>/checkpoints`."),
        "interval": Int(200, "Checkpoint every N optimizer steps (and always at the end); 0: only at the end.",
                        min=0),
        "keep": Int(3, "How many newest checkpoints to keep.", min=1),
        "resume": Str("auto", "`auto`: resume from the newest valid checkpoint in `dir` if any; `never`; "
                              "or the path of a checkpoint."),
    }),
    "output": Section({
        "dir": Nullable(Str(), None, "Run directory (config, metrics, logs, summary); null: `runs/<name>`."),
        "console": Enum(("all", "rank0"), "all", "Which ranks' output lines the launcher prints (all go to logs)."),
        "progress": Bool(True, "Show rank 0's progress bar."),
    }),
    "fault_tolerance": Section({
        "max_restarts": Int(0, "Restart the whole worker group up to N times after a failure.", min=0),
        "min_workers": Nullable(Int(min=1), None,
                                "Elastic restarts: leave the failed worker's node (one node: one of its slots) "
                                "out of the next attempt while at least this many workers remain and they divide "
                                "the global batch; null: always restart on the same nodes."),
        "heartbeat_interval": Float(2.0, "Seconds between worker heartbeats.", min=0, min_exclusive=True),
        "heartbeat_timeout": Float(30.0, "A worker silent this long (seconds) is declared dead.", min=0,
                                   min_exclusive=True),
        "startup_timeout": Float(120.0, "Seconds workers may take to register.", min=0, min_exclusive=True),
        "grace_period": Float(5.0, "Seconds between SIGTERM and SIGKILL when stopping workers.", min=0),
        "stop_timeout": Float(60.0, "After SIGTERM to the launcher: seconds the built-in training loop gets to "
                                    "save a checkpoint and stop cleanly before the workers are stopped "
                                    "anyway (0: stop at once, as on Ctrl-C).", min=0),
    }),
})

LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}


def is_loopback_host(host: str) -> bool:
    """`localhost`, 127.x, ::1 or 0.0.0.0: this machine, but only as seen from itself."""
    return host in LOCAL_HOSTS or host.startswith("127.")


def is_local_host(host: str) -> bool:
    """True when `host` names this machine (so workers can be started without ssh)."""
    if is_loopback_host(host):
        return True
    me = socket.gethostname()   # no DNS lookups: this runs during validation, maybe offline
    return host == me or host.split(".")[0] == me.split(".")[0]


# --------------------------------------------------------------------------- config object
class _Node(dict):
    """A dict that also allows attribute reads: ``cfg.job.optimizer.lr``."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key {key!r}") from None

    def __setattr__(self, key, value):
        raise AttributeError("config sections are dicts: assign with cfg[...][...] = value")

    def __deepcopy__(self, memo):
        return type(self)._wrap(copy.deepcopy(_plain(self), memo))

    @classmethod
    def _wrap(cls, value):
        if isinstance(value, dict):
            node = _Node()
            for k, v in value.items():
                dict.__setitem__(node, k, cls._wrap(v))
            return node
        if isinstance(value, list):
            return [cls._wrap(v) for v in value]
        return value


def _plain(value):
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class Config(_Node):
    """The resolved config: a nested dict with attribute access and a few derived values."""

    def __init__(self, data: dict, source: str | None = None):
        super().__init__()
        for k, v in data.items():
            dict.__setitem__(self, k, _Node._wrap(v))
        object.__setattr__(self, "source", source)

    def __deepcopy__(self, memo):
        return Config(copy.deepcopy(_plain(self), memo), self.source)

    def to_dict(self) -> dict:
        """Plain nested dict/list/scalars (safe for yaml.safe_dump / json.dumps)."""
        return _plain(self)

    @property
    def world_size(self) -> int:
        return sum(int(n["slots"]) for n in self["cluster"]["nodes"])

    @property
    def per_rank_batch_size(self) -> int:
        return self["job"]["global_batch_size"] // self.world_size

    @property
    def all_local(self) -> bool:
        return all(is_local_host(n["host"]) for n in self["cluster"]["nodes"])

    @property
    def run_dir(self) -> str:
        return self["output"]["dir"]

    @property
    def checkpoint_dir(self) -> str:
        return self["checkpoint"]["dir"]

    @property
    def hash(self) -> str:
        """Fingerprint of what decides the training trajectory: the `job` section and the world size.

        Stored in checkpoint metadata so a resume with a different job can be noticed.
        """
        blob = json.dumps({"job": _plain(self["job"]), "world_size": self.world_size},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def dump_config(cfg: Config | dict) -> str:
    """The YAML text of a resolved config (what RUN_DIR/config.yaml holds)."""
    data = cfg.to_dict() if isinstance(cfg, Config) else _plain(cfg)
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


# --------------------------------------------------------------------------- overrides
def parse_overrides(texts: Iterable[str], errors: list[str]) -> list[tuple[list[str], Any, str]]:
    """Split `key.path=value` strings; values are parsed with yaml.safe_load (so `4` is an int)."""
    out = []
    for text in texts:
        if "=" not in text:
            errors.append(f"override {text!r}: expected KEY=VALUE with a dotted key, e.g. job.epochs=1")
            continue
        key, _, raw = text.partition("=")
        key = key.strip()
        parts = key.split(".")
        if not key or any(not p for p in parts):
            errors.append(f"override {text!r}: bad key {key!r}; use dotted names like cluster.nodes.0.slots")
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            errors.append(f"override {text!r}: value is not valid YAML ({str(e).splitlines()[0]})")
            continue
        out.append((parts, value, text))
    return out


def _apply_override(data: dict, parts: list[str], value: Any, text: str, errors: list[str]) -> None:
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        here = ".".join(parts[:i]) or "config"
        if isinstance(node, dict):
            if last:
                node[part] = value
                return
            if part not in node or node[part] is None:
                node[part] = [] if parts[i + 1].isdigit() else {}
            node = node[part]
        elif isinstance(node, list):
            if not part.isdigit():
                errors.append(f"override {text!r}: {here} is a list; use a number index, got {part!r}")
                return
            idx = int(part)
            if idx > len(node):
                errors.append(f"override {text!r}: {here} has {len(node)} items; index {idx} is out of range "
                              f"(use {len(node)} to append)")
                return
            if idx == len(node):
                node.append({} if not last else None)
            if last:
                node[idx] = value
                return
            if node[idx] is None:
                node[idx] = {}
            node = node[idx]
        else:
            errors.append(f"override {text!r}: {here} is not a mapping (it is {_show(node)})")
            return


# --------------------------------------------------------------------------- loading
def auto_resources(node: dict, cpus: int, gpus_found: int | None, threads: int) -> tuple[int, int]:
    """(slots, gpus) of a node whose `slots` and/or `gpus` may be `auto`, from what its machine has.

    The one rule for this machine and for measured remote nodes: `gpus: auto` is the GPUs found;
    `slots: auto` is one worker per GPU when the node has GPUs, else usable cores // threads (at
    least 1).  gpus_found is only read when `gpus` is `auto`."""
    gpus = node.get("gpus")
    if gpus == "auto":
        gpus = int(gpus_found or 0)
    gpus = gpus if isinstance(gpus, int) and not isinstance(gpus, bool) else 0
    slots = node.get("slots")
    if slots == "auto":
        slots = gpus if gpus > 0 else max(1, int(cpus) // max(1, threads))
    return slots, gpus


def _threads(cfg: dict) -> int:
    threads = cfg["job"].get("threads")
    return threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0 else 1


def _resolve_auto_resources(cfg: dict, errors: list[str], defer_remote: bool = False) -> list[int]:
    """Replace `slots: auto` / `gpus: auto` by what this machine offers; returns the indices of
    remote `auto` nodes left for the caller to measure (only with defer_remote).

    Only nodes that are this machine are measured here: the launcher cannot see a remote node's
    cores before it starts something there, and a guess would silently misplace work.  Without
    defer_remote (validate, run, script) a remote `auto` is an error naming `dptrain mpirun`,
    which does start a probe there."""
    from .resources import local_gpu_count, usable_cpu_count
    nodes = cfg["cluster"].get("nodes")
    if not isinstance(nodes, list):
        return []
    threads = _threads(cfg)
    pending = []
    for i, n in enumerate(nodes):
        if not isinstance(n, dict) or "auto" not in (n.get("slots"), n.get("gpus")):
            continue
        host = n.get("host")
        if not (isinstance(host, str) and is_local_host(host)):
            if defer_remote and isinstance(host, str) and host:
                pending.append(i)
                continue
            for key in ("slots", "gpus"):
                if n.get(key) == "auto":
                    errors.append(f"cluster.nodes.{i}.{key}: 'auto' is measured on this machine, but node {i} "
                                  f"is {host!r}; `dptrain mpirun` measures remote nodes (a probe through "
                                  f"mpiexec), other commands cannot: give its number of "
                                  f"{'workers' if key == 'slots' else 'GPUs'}")
            continue
        n["slots"], n["gpus"] = auto_resources(n, usable_cpu_count(),
                                               local_gpu_count() if n.get("gpus") == "auto" else None, threads)
    return pending


def _world_checks(cfg: dict, errors: list[str], measured: bool = False) -> None:
    """Checks on the world size (sum of slots); skipped while a slot count is still `auto`."""
    nodes = cfg["cluster"]["nodes"] if isinstance(cfg["cluster"].get("nodes"), list) else []
    if any(isinstance(n, dict) and n.get("slots") == "auto" for n in nodes):
        return
    job = cfg["job"]
    world = sum(n["slots"] for n in nodes if isinstance(n, dict) and isinstance(n.get("slots"), int)
                and not isinstance(n.get("slots"), bool) and n["slots"] > 0)
    gbs = job.get("global_batch_size")
    # the built-in loop splits the global batch; a job.script chooses its own batches
    uses_gbs = not (isinstance(job.get("script"), str) and job.get("script", "").strip())
    if uses_gbs and world > 0 and isinstance(gbs, int) and not isinstance(gbs, bool) and gbs > 0 and gbs % world:
        lo = max(world, gbs - gbs % world)
        where = "sum of cluster.nodes.*.slots, `auto` ones as measured" if measured else \
            "sum of cluster.nodes.*.slots"
        errors.append(f"job.global_batch_size: {gbs} is not divisible by the world size {world} "
                      f"({where}); use a multiple such as {lo} or {lo + world}")


def _cross_checks(cfg: dict, errors: list[str], base_dir: str) -> None:
    """Checks that span several keys; only run on values that passed their own checks."""
    cluster, job = cfg["cluster"], cfg["job"]
    nodes = cluster["nodes"] if isinstance(cluster.get("nodes"), list) else []
    seen: dict[str, int] = {}
    for i, n in enumerate(nodes):
        if not isinstance(n, dict):
            continue
        host = n.get("host")
        if isinstance(host, str) and host:
            key = "localhost" if is_local_host(host) else host      # `localhost` and this machine's name too
            if key in seen:
                errors.append(f"cluster.nodes.{i}.host: {host!r} is already cluster.nodes.{seen[key]}; "
                              f"list each machine once and raise its slots")
            else:
                seen[key] = i
    _world_checks(cfg, errors)
    ft = cfg["fault_tolerance"]
    hi, ht = ft.get("heartbeat_interval"), ft.get("heartbeat_timeout")
    if isinstance(hi, float) and isinstance(ht, float) and hi > 0 and ht <= hi:
        errors.append(f"fault_tolerance.heartbeat_timeout: {ht:g} s must be longer than "
                      f"fault_tolerance.heartbeat_interval ({hi:g} s); at least 3x is sensible")
    cp, mp = cluster["coordinator"].get("port"), cluster.get("master_port")
    if isinstance(cp, int) and isinstance(mp, int) and cp and cp == mp:
        errors.append(f"cluster.master_port: {mp} is also cluster.coordinator.port; use two different ports")
    if cluster.get("allreduce") == "native" and cluster.get("backend") == "zmq":
        errors.append("cluster.allreduce: 'native' needs MPI collectives but cluster.backend is 'zmq'; "
                      "use allreduce: ring or backend: mpi/auto")
    resume = cfg["checkpoint"].get("resume")
    if isinstance(resume, str) and resume not in ("auto", "never") and resume.strip():
        p = _abspath(resume, base_dir)
        if not os.path.exists(p):
            errors.append(f"checkpoint.resume: expected 'auto', 'never' or an existing checkpoint path, "
                          f"{p!r} does not exist")
        else:
            from .checkpoint import CheckpointError, verify_resume_path
            try:
                verify_resume_path(p)
            except CheckpointError as e:
                errors.append(f"checkpoint.resume: {e}")
    py = cluster.get("python")
    all_local = all(isinstance(n, dict) and isinstance(n.get("host"), str) and is_local_host(n["host"])
                    for n in nodes)
    any_local = any(isinstance(n, dict) and isinstance(n.get("host"), str) and is_local_host(n["host"])
                    for n in nodes)
    script = job.get("script")  # needed here only when a rank runs here; remote ranks check it themselves
    if isinstance(script, str) and script.strip() and (any_local or not nodes):
        p = _abspath(script, base_dir)
        if os.path.isdir(p):
            errors.append(f"job.script: {p!r} is a directory; give the Python file to run")
        elif not os.path.isfile(p):
            errors.append(f"job.script: file {p!r} does not exist")
    ds = job.get("dataset") if isinstance(job.get("dataset"), dict) else {}
    root = ds.get("root")       # on remote nodes the path may exist only there: checked where it is read
    if all_local and isinstance(root, str) and root.strip() and not os.path.isdir(_abspath(root, base_dir)):
        errors.append(f"job.dataset.root: {_abspath(root, base_dir)!r} is not a directory; give the folder "
                      f"that holds the dataset (or null to search the default places)")
    if isinstance(py, str) and py.strip() and all_local:
        exe = os.path.expanduser(py)
        if os.sep in exe and not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            errors.append(f"cluster.python: {exe!r} is not an executable file; give the worker Python "
                          f"(or null for the launcher's own)")


def _abspath(p: str, base_dir: str) -> str:
    p = os.path.expanduser(os.path.expandvars(p))
    return os.path.normpath(p if os.path.isabs(p) else os.path.join(base_dir, p))


def _resolve_paths(cfg: dict, base_dir: str) -> None:
    out = cfg["output"]
    out["dir"] = _abspath(out["dir"] or os.path.join("runs", cfg["name"]), base_dir)
    ck = cfg["checkpoint"]
    ck["dir"] = _abspath(ck["dir"] or os.path.join(out["dir"], "checkpoints"), base_dir)
    if ck["resume"] not in ("auto", "never"):
        ck["resume"] = _abspath(ck["resume"], base_dir)
    job = cfg["job"]
    if job["script"]:
        job["script"] = _abspath(job["script"], base_dir)
    if job["dataset"]["root"]:
        job["dataset"]["root"] = _abspath(job["dataset"]["root"], base_dir)
    mpi = cfg["cluster"]["mpi"]
    if mpi["mpiexec"] and os.sep in mpi["mpiexec"]:
        mpi["mpiexec"] = _abspath(mpi["mpiexec"], base_dir)


MeasureFn = Callable[[dict, list[int]], Mapping[int, Mapping[str, Any]]]


def resolve_config(raw: Any, overrides: Iterable[str] = (), source: str | None = None,
                   base_dir: str | None = None, measure: MeasureFn | None = None) -> Config:
    """Validate a raw config (as read from YAML), apply overrides and defaults; raise ConfigError.

    Relative paths are resolved against `base_dir` (default: the current directory), so the
    resolved config only holds absolute paths and reads the same on every node.

    measure: how to see remote nodes whose `slots`/`gpus` are `auto` (`dptrain mpirun` passes a
    probe through mpiexec; see launcher/measure.py).  It is called only once the config is
    otherwise valid, as measure(cfg, node_indices) with the resolved dict, and returns for each
    index {"cpus": usable cores, "gpus": GPUs}; it raises its own error when a node cannot be
    measured.  Without it a remote `auto` is a config error.
    """
    errors: list[str] = []
    pending: list[int] = []
    base_dir = os.path.abspath(base_dir or os.getcwd())
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError([f"config: the top level must be a mapping of sections, got {_type_word(raw)}"], source)
    data = SCHEMA.fill(copy.deepcopy(raw))
    for parts, value, text in parse_overrides(overrides, errors):
        _apply_override(data, parts, value, text, errors)
    if isinstance(data.get("cluster"), dict) and data["cluster"].get("nodes") == "slurm":
        from .slurm import allocation_nodes        # the nodes of the Slurm allocation we run in
        nodes = allocation_nodes(os.environ, errors)
        if nodes is None:
            raise ConfigError(errors, source)
        data["cluster"]["nodes"] = nodes
    resolved = SCHEMA.check(data, "", errors)
    if isinstance(resolved, dict) and all(isinstance(resolved.get(s), dict) for s in
                                          ("cluster", "job", "checkpoint", "output", "fault_tolerance")):
        pending = _resolve_auto_resources(resolved, errors, defer_remote=measure is not None)
        _cross_checks(resolved, errors, base_dir)
    if errors:
        raise ConfigError(errors, source)
    _resolve_paths(resolved, base_dir)
    if pending:     # everything else is valid: only now is anything started on the remote nodes
        found = measure(resolved, list(pending))
        threads = _threads(resolved)
        for i in pending:
            n = resolved["cluster"]["nodes"][i]
            n["slots"], n["gpus"] = auto_resources(n, found[i]["cpus"], found[i]["gpus"], threads)
        _world_checks(resolved, errors, measured=True)
        if errors:
            raise ConfigError(errors, source)
    return Config(resolved, source)


def _refuse_duplicate_keys(text: str) -> None:
    """Raise a yaml MarkedYAMLError for a key given twice in one mapping: yaml.safe_load keeps only
    the last one, so a second `job:` section would silently drop every setting of the first.
    Works on the composed node tree (nothing is constructed), before yaml.safe_load reads the text."""
    stack = [yaml.compose(text, Loader=yaml.SafeLoader)]
    while stack:
        node = stack.pop()
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, value_node in node.value:
                stack.append(value_node)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                first = seen.setdefault((key_node.tag, key_node.value), key_node)
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r} (first given at line "
                        f"{first.start_mark.line + 1}); YAML would keep only the last one: merge the two into one",
                        key_node.start_mark)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def load_config(path: str | os.PathLike, overrides: Iterable[str] = (), base_dir: str | None = None,
                measure: MeasureFn | None = None) -> Config:
    """Read a YAML config with yaml.safe_load, apply `key=value` overrides, validate, fill defaults
    (measure: see resolve_config)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ConfigError([f"config file {path!r} not found"], path) from None
    except OSError as e:
        raise ConfigError([f"config file {path!r} cannot be read: {e.strerror}"], path) from None
    except UnicodeDecodeError as e:
        raise ConfigError([f"config file {path!r} is not UTF-8 text (byte {e.start}); save it as UTF-8 "
                           f"YAML"], path) from None
    try:
        _refuse_duplicate_keys(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError([f"{path}: not valid YAML{where}: {problem}"], path) from None
    return resolve_config(raw, overrides, source=path, base_dir=base_dir, measure=measure)


# --------------------------------------------------------------------------- documentation
def schema_reference() -> str:
    """The config reference as a Markdown table, generated from SCHEMA."""
    rows: list[tuple[str, str, str, str]] = []

    def walk(spec: Spec, path: str) -> None:
        if isinstance(spec, Section):
            for key, sub in spec.fields.items():
                walk(sub, f"{path}.{key}" if path else key)
            return
        if isinstance(spec, ListOf) and isinstance(spec.item, Section):
            rows.append((path, spec.describe(), _fmt_default(spec), spec.doc))
            walk(spec.item, f"{path}.N")
            return
        rows.append((path, spec.describe(), _fmt_default(spec), spec.doc))

    walk(SCHEMA, "")
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {t} | {d} | {m} |" for k, t, d, m in rows]
    return "\n".join(lines)


def _fmt_default(spec: Spec) -> str:
    if spec.required:
        return "required"
    d = spec.default
    if d is None:
        return "null"
    text = json.dumps(d) if not isinstance(d, str) else d
    if isinstance(d, bool):
        text = "true" if d else "false"
    return f"`{text}`"
