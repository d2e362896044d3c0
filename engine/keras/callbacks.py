"""Callbacks: History (returned by fit), the tqdm progress bar, and the ones Keras scripts use most:
EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, LearningRateScheduler, CSVLogger, TerminateOnNaN.

The hook names and the `logs` dicts follow Keras, so simple user callbacks port
unchanged.  The progress bar is a tqdm bar per epoch (verbose=1) or one line per
epoch (verbose=2); off a terminal it refreshes rarely so logs stay readable.
"""
from __future__ import annotations

import csv
import json
import math
import os
import sys
import time
import warnings

import numpy as np

__all__ = ["Callback", "History", "ProgbarLogger", "EarlyStopping", "ModelCheckpoint", "BackupAndRestore", "ReduceLROnPlateau",
           "LearningRateScheduler", "CSVLogger", "TerminateOnNaN", "LambdaCallback", "CallbackList"]


class Callback:
    def __init__(self):
        self.model = None
        self.params = {}

    def set_model(self, model):
        self.model = model

    def set_params(self, params):
        self.params = params

    def on_train_begin(self, logs=None): pass
    def on_train_end(self, logs=None): pass
    def on_epoch_begin(self, epoch, logs=None): pass
    def on_epoch_end(self, epoch, logs=None): pass
    # Keras: the train-batch hooks call the older on_batch_* names, so either spelling works
    def on_train_batch_begin(self, batch, logs=None): self.on_batch_begin(batch, logs=logs)
    def on_train_batch_end(self, batch, logs=None): self.on_batch_end(batch, logs=logs)
    def on_batch_begin(self, batch, logs=None): pass
    def on_batch_end(self, batch, logs=None): pass
    def on_test_begin(self, logs=None): pass
    def on_test_end(self, logs=None): pass
    def on_test_batch_begin(self, batch, logs=None): pass
    def on_test_batch_end(self, batch, logs=None): pass
    def on_predict_begin(self, logs=None): pass
    def on_predict_end(self, logs=None): pass
    def on_predict_batch_begin(self, batch, logs=None): pass
    def on_predict_batch_end(self, batch, logs=None): pass


class History(Callback):
    """`history.history` maps 'loss', 'accuracy', 'val_loss', ... to one value per epoch."""

    def __init__(self):
        super().__init__()
        self.history = {}
        self.epoch = []

    def on_train_begin(self, logs=None):
        self.epoch = []
        self.history = {}

    def on_epoch_end(self, epoch, logs=None):
        self.epoch.append(epoch)
        for k, v in (logs or {}).items():
            self.history.setdefault(k, []).append(v)

    def __repr__(self):
        return f"<History epochs={len(self.epoch)} keys={list(self.history)}>"


def _num(v):
    """A log value for the progress output: 4 decimals, a list of them for a multi-value metric."""
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(f"{x:.4f}" for x in v) + "]"
    return f"{v:.4f}"


def _fmt(logs):
    return " - ".join(f"{k}: {_num(v)}" for k, v in logs.items())


class ProgbarLogger(Callback):
    """verbose=1: a tqdm bar per epoch with the running loss/metrics; verbose=2: one line."""

    def __init__(self, verbose=1, file=None):
        super().__init__()
        self.verbose = verbose
        self.file = file or sys.stdout
        self.bar = None
        self._last_postfix = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        epochs = self.params.get("epochs", 1)
        if self.verbose == 1:
            from tqdm.auto import tqdm
            tty = hasattr(self.file, "isatty") and self.file.isatty()
            self.bar = tqdm(total=self.params.get("steps"), desc=f"Epoch {epoch + 1}/{epochs}",
                            unit="step", file=self.file, dynamic_ncols=True, leave=True,
                            mininterval=0.1 if tty else 30.0, ascii=not tty)

    def on_train_batch_end(self, batch, logs=None):
        if self.bar is None:
            return
        self.bar.update(1)
        now = time.perf_counter()
        if now - self._last_postfix > 0.25 and logs:
            self._last_postfix = now
            self.bar.set_postfix({k: _num(v) for k, v in logs.items()}, refresh=False)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        dt = time.perf_counter() - self.t0
        if self.bar is not None:
            self.bar.set_postfix({k: _num(v) for k, v in logs.items()}, refresh=False)
            self.bar.close()
            self.bar = None
        elif self.verbose == 2:
            steps = self.params.get("steps") or 1
            print(f"Epoch {epoch + 1}/{self.params.get('epochs', 1)} - {dt:.0f}s "
                  f"{1000 * dt / steps:.0f}ms/step - {_fmt(logs)}", file=self.file, flush=True)


class _Monitor:
    """Which way `monitor` should move, and whether a value beats the best so far (Keras 3's
    MonitorCallback: an unknown mode warns and means 'auto'; 'auto' is decided at the first epoch
    end: min for a loss, else the direction of the compiled metric of that name, else an error)."""

    def __init__(self, owner, monitor, mode, min_delta):
        if mode not in ("auto", "min", "max"):
            warnings.warn(f"{owner} mode '{mode}' is unknown, fallback to auto mode.", stacklevel=3)
            mode = "auto"
        self.owner, self.monitor, self.mode, self.min_delta = owner, monitor, mode, abs(min_delta)
        self.best = None

    def resolve(self, model) -> None:
        """Settle 'auto' (Keras: once the model's metrics exist, at the first epoch end)."""
        if self.mode != "auto":
            return
        name = self.monitor[4:] if self.monitor.startswith("val_") else self.monitor
        direction = "down" if name == "loss" else None
        for m in list(getattr(model, "_metrics", None) or []):
            if getattr(m, "name", None) == name and getattr(m, "_direction", None) in ("up", "down"):
                direction = m._direction
        if direction is None:
            raise ValueError(f"{self.owner} callback received monitor={self.monitor}, but Keras isn't able to "
                             "automatically determine whether that metric should be maximized or minimized. "
                             "Pass `mode='max'` in order to monitor based on the highest metric value, or pass "
                             "`mode='min'` in order to use the lowest value.")
        self.mode = "max" if direction == "up" else "min"

    def value(self, logs, what):
        """The monitored value, or None with Keras' warning when the logs do not have it."""
        value = (logs or {}).get(self.monitor)
        if value is None:
            warnings.warn(f"{what} conditioned on metric `{self.monitor}` which is not available. Available "
                          f"metrics are: {','.join(list((logs or {}).keys()))}", stacklevel=3)
        return value

    def improved(self, value, reference=None) -> bool:
        """Keras' _is_improvement against `reference` (the best so far when None): no reference yet
        is an improvement (even NaN, as in Keras); a NaN afterwards never is."""
        ref = self.best if reference is None else reference
        if value is None:
            return False
        if ref is None:
            return True
        if self.mode == "min":
            return value + self.min_delta < ref
        return value - self.min_delta > ref


class EarlyStopping(Callback):
    """Stop when `monitor` has not improved by `min_delta` for `patience` epochs (Keras 3 rules:
    `baseline` must be beaten to reset the wait, epochs before `start_from_epoch` are ignored, and
    restore_best_weights=True puts the best epoch's weights back at the end of training, whether
    or not it stopped early)."""

    def __init__(self, monitor="val_loss", min_delta=0.0, patience=0, verbose=0, mode="auto",
                 baseline=None, restore_best_weights=False, start_from_epoch=0):
        super().__init__()
        self._m = _Monitor("EarlyStopping", monitor, mode, min_delta)
        self.monitor, self.min_delta, self.patience, self.mode = monitor, self._m.min_delta, patience, self._m.mode
        self.restore_best_weights, self.verbose = restore_best_weights, verbose
        self.baseline, self.start_from_epoch = baseline, int(start_from_epoch)

    @property
    def best(self):
        return self._m.best

    def on_train_begin(self, logs=None):
        self.wait = 0
        self._m.best = None
        self.best_weights = None
        self.best_epoch = 0
        self.stopped_epoch = 0

    def on_epoch_end(self, epoch, logs=None):
        self._m.resolve(self.model)
        value = self._m.value(logs, "Early stopping")
        if value is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights, self.best_epoch = self.model.get_weights(), epoch
        self.wait += 1
        if self._m.improved(value):
            self._m.best, self.best_epoch = value, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            # Keras 3: an improving epoch never stops training; it resets the wait only when it
            # also beats the baseline
            if self.baseline is None or self._m.improved(value, float(self.baseline)):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs=None):
        if self.stopped_epoch > 0 and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping", flush=True)
        if self.restore_best_weights and self.best_weights is not None:
            if self.verbose:
                print(f"Restoring model weights from the end of the best epoch: {self.best_epoch + 1}.",
                      flush=True)
            self.model.set_weights(self.best_weights)


class ModelCheckpoint(Callback):
    """Save the model (or its weights) after every epoch, or only when `monitor` improved.

    filepath may hold format fields filled from the epoch (1-based) and the logs, as in Keras:
    "ckpt-{epoch:02d}-{val_loss:.3f}.keras".  Files are written by model.save / save_weights
    (safetensors + JSON, no pickle; engine.save writes a temporary file and renames it, so a crash
    never leaves a half-written checkpoint under the final name)."""

    def __init__(self, filepath, monitor="val_loss", verbose=0, save_best_only=False, save_weights_only=False,
                 mode="auto", save_freq="epoch", initial_value_threshold=None):
        super().__init__()
        if save_freq != "epoch" and (not isinstance(save_freq, int) or isinstance(save_freq, bool)):
            raise ValueError(f"Unrecognized save_freq: {save_freq}. Expected save_freq are 'epoch' or integer values")
        self.filepath, self.verbose = os.fspath(filepath), verbose
        self.save_best_only, self.save_weights_only = save_best_only, save_weights_only
        self.save_freq = save_freq
        self._m = _Monitor("ModelCheckpoint", monitor, mode, 0.0)
        # Keras: the best value starts at initial_value_threshold and is kept across fit() calls
        self._m.best = None if initial_value_threshold is None else float(initial_value_threshold)
        self.monitor, self.initial_value_threshold = monitor, initial_value_threshold
        self._epoch, self._batches_since_save, self._last_batch = 0, 0, None

    @property
    def best(self):
        return self._m.best

    def _path(self, epoch, batch, logs):
        logs = logs or {}
        try:
            if batch is None or "batch" in logs:
                return self.filepath.format(epoch=epoch + 1, **logs)
            return self.filepath.format(epoch=epoch + 1, batch=batch + 1, **logs)
        except KeyError as e:
            raise KeyError(f"ModelCheckpoint: filepath {self.filepath!r} names {e.args[0]!r}, which is not "
                           f"in the epoch logs {sorted(logs)}") from None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        """save_freq=N: save after every N batches, counted across epochs (Keras)."""
        if self.save_freq == "epoch":
            return
        new_epoch = self._last_batch is None or batch <= self._last_batch
        self._batches_since_save += batch + 1 if new_epoch else batch - self._last_batch
        self._last_batch = batch
        if self._batches_since_save >= self.save_freq:
            self._batches_since_save = 0
            self._save(self._epoch, batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._m.resolve(self.model)
        if self.save_freq == "epoch":
            self._save(epoch, None, logs)

    def _save(self, epoch, batch, logs):
        if self.save_best_only:
            self._m.resolve(self.model)
            value = (logs or {}).get(self.monitor)
            best = "None" if self._m.best is None else f"{self._m.best:.5f}"
            if value is None:           # Keras: warn and save
                warnings.warn(f"Can save best model only with {self.monitor} available.", stacklevel=3)
            elif not self._m.improved(value):
                if self.verbose:
                    print(f"Epoch {epoch + 1}: {self.monitor} did not improve from {best}", flush=True)
                return
            else:
                if self.verbose:
                    print(f"Epoch {epoch + 1}: {self.monitor} improved from {best} to {value:.5f}", flush=True)
                self._m.best = value
        path = self._path(epoch, batch, logs)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if self.save_weights_only:
            self.model.save_weights(path, overwrite=True)
        else:
            self.model.save(path, overwrite=True)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saving model to {path}", flush=True)


#: Installed by a dptrain worker (cluster/worker.py): stop_check(comm) -> True once the launcher asked
#: the job to save and stop (SIGTERM, a time limit), agreed by every rank of `comm`; None elsewhere.
#: The engine cannot import the cluster layer, so the cluster layer hands this in.
stop_check = None


class BackupAndRestore(Callback):
    """Keras' fault-tolerance callback: back the training state up during fit, and when fit starts
    again after an interruption (a crash, a restart by `fault_tolerance.max_restarts`, a requeued
    batch job), continue from the last backup instead of from epoch 0.

    As in Keras 3: `backup_dir/latest.weights` plus `training_metadata.json` ({"epoch", "batch"}),
    written at every epoch end (`save_freq="epoch"`) or every `save_freq` batches (then fit
    restarts the interrupted epoch from its first batch, with the weights of the backup); the
    previous backup is kept as `_latest.*` and used when the newest cannot be read; the directory is
    removed when fit completes (`delete_checkpoint=True`).  Here the backup also holds the
    optimizer state and the engine's random state, so with `save_freq="epoch"` the resumed fit
    ends with exactly the weights of an uninterrupted one.  Under data parallelism
    (cluster.keras.distribute, or any dptrain worker) only rank 0 writes; every rank restores.
    """

    #: batches between two looks at the launcher's stop request (a one-number all-reduce when data-parallel)
    stop_check_every = 10

    def __init__(self, backup_dir, save_freq="epoch", double_checkpoint=False, delete_checkpoint=True):
        super().__init__()
        if not backup_dir:
            raise ValueError("BackupAndRestore: empty backup_dir")
        if save_freq != "epoch" and (isinstance(save_freq, bool) or not isinstance(save_freq, int) or save_freq < 1):
            raise ValueError(f"BackupAndRestore: save_freq must be 'epoch' or a positive number of batches, got "
                             f"{save_freq!r}")
        self.backup_dir, self.save_freq = os.fspath(backup_dir), save_freq
        self.double_checkpoint, self.delete_checkpoint = bool(double_checkpoint), bool(delete_checkpoint)
        self._state_path = os.path.join(self.backup_dir, "latest.weights")
        self._meta_path = os.path.join(self.backup_dir, "training_metadata.json")
        self._current_epoch, self._since_save, self._batches = 0, 0, 0

    def _rank(self) -> int:
        ddp = getattr(self.model, "_dptrain_ddp", None)
        if ddp is not None:
            return int(ddp.comm.rank)
        raw = os.environ.get("DPTRAIN_RANK", "0")
        return int(raw) if raw.isdigit() else 0

    def on_train_begin(self, logs=None):
        if not getattr(self.model, "built", False):
            raise ValueError(f"BackupAndRestore: model {self.model.name!r} must be built before fit() (give the "
                             f"first layer input_shape= or call it on a batch)")
        self._since_save = self._batches = 0
        if stop_check is not None:
            ddp = getattr(self.model, "_dptrain_ddp", None)
            stop_check(ddp.comm if ddp is not None else None)   # tells the launcher this job can stop cleanly
        for state, meta in ((self._state_path, self._meta_path), (self._prev(self._state_path),
                                                                   self._prev(self._meta_path))):
            if not os.path.exists(state):
                continue
            try:
                from .saving import load_training_state
                load_training_state(self.model, state)
                with open(meta, encoding="utf-8") as f:
                    epoch = int(json.load(f)["epoch"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                print(f"warning: BackupAndRestore: cannot restore from {state} ({e}); trying the previous backup",
                      file=sys.stderr, flush=True)
                continue
            self.model._initial_epoch = self._current_epoch = epoch
            if self._rank() == 0:
                print(f"BackupAndRestore: resuming at epoch {epoch + 1} from {self.backup_dir}", flush=True)
            return

    @staticmethod
    def _prev(path):
        head, tail = os.path.split(path)
        return os.path.join(head, "_" + tail)

    def on_epoch_begin(self, epoch, logs=None):
        self._current_epoch = epoch

    def on_epoch_end(self, epoch, logs=None):
        self._current_epoch = epoch + 1
        if self.save_freq == "epoch":
            self._save(batch=0)

    def on_train_batch_end(self, batch, logs=None):
        self._batches += 1
        if stop_check is not None and self._batches % self.stop_check_every == 0:
            ddp = getattr(self.model, "_dptrain_ddp", None)
            if stop_check(ddp.comm if ddp is not None else None):
                self._save(batch=batch + 1)
                if self._rank() == 0:
                    print(f"BackupAndRestore: the launcher asked the job to stop; backed up at epoch "
                          f"{self._current_epoch + 1}, batch {batch + 1} in {self.backup_dir}; run it again to "
                          f"resume", flush=True)
                raise SystemExit(0)       # leave the script: the backup stays for the next run
        if self.save_freq == "epoch":
            return
        self._since_save += 1
        if self._since_save >= self.save_freq:
            self._since_save = 0
            self._save(batch=batch + 1)

    def _save(self, batch):
        if self._rank() != 0:
            return
        from .saving import save_training_state
        os.makedirs(self.backup_dir, exist_ok=True)
        for path in (self._state_path, self._meta_path):      # the previous backup stays readable
            if os.path.exists(path):
                os.replace(path, self._prev(path))
        save_training_state(self.model, self._state_path)
        tmp = self._meta_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"epoch": self._current_epoch, "batch": batch}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._meta_path)

    def on_train_end(self, logs=None):
        if self.delete_checkpoint and self._rank() == 0 and os.path.isdir(self.backup_dir):
            import shutil
            shutil.rmtree(self.backup_dir, ignore_errors=True)


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by `factor` when `monitor` has not improved for `patience` epochs."""

    def __init__(self, monitor="val_loss", factor=0.1, patience=10, verbose=0, mode="auto", min_delta=1e-4,
                 cooldown=0, min_lr=0.0, **kwargs):
        super().__init__()
        if kwargs:
            raise TypeError(f"ReduceLROnPlateau: unsupported arguments {sorted(kwargs)}")
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau does not support a factor >= 1.0. Received factor={factor}")
        self._m = _Monitor("ReduceLROnPlateau", monitor, mode, min_delta)
        self.monitor, self.factor, self.patience, self.verbose = monitor, float(factor), patience, verbose
        self.cooldown, self.min_lr = cooldown, float(min_lr)

    def on_train_begin(self, logs=None):
        self._m.best = None
        self.wait, self.cooldown_counter = 0, 0

    def on_epoch_end(self, epoch, logs=None):
        self._m.resolve(self.model)
        logs = logs if logs is not None else {}
        opt = self.model.optimizer
        logs["learning_rate"] = opt.learning_rate
        value = self._m.value(logs, "Learning rate reduction")
        if value is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._m.improved(value):
            self._m.best, self.wait = value, 0
            return
        if self.cooldown_counter > 0:
            return
        self.wait += 1
        if self.wait >= self.patience:
            old = opt.learning_rate
            if old > float(np.float32(self.min_lr)):            # Keras' test, in float32
                new = max(old * self.factor, self.min_lr)
                opt.learning_rate = new
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to {new:g}.", flush=True)
                self.cooldown_counter, self.wait = self.cooldown, 0


class LearningRateScheduler(Callback):
    """Set the learning rate at the start of every epoch to schedule(epoch) or schedule(epoch, lr)."""

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def on_epoch_begin(self, epoch, logs=None):
        opt = self.model.optimizer
        try:
            lr = self.schedule(epoch, opt.learning_rate)
        except TypeError:               # the one-argument form
            lr = self.schedule(epoch)
        lr = float(lr)
        if not math.isfinite(lr):
            raise ValueError(f"LearningRateScheduler: the schedule returned {lr} for epoch {epoch}")
        opt.learning_rate = lr
        if self.verbose:
            print(f"Epoch {epoch + 1}: LearningRateScheduler setting learning rate to {lr:g}.", flush=True)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = self.model.optimizer.learning_rate


class CSVLogger(Callback):
    """One CSV row per epoch (epoch, then the log keys in sorted order), flushed as it goes."""

    def __init__(self, filename, separator=",", append=False):
        super().__init__()
        self.filename, self.sep, self.append = os.fspath(filename), separator, append
        self._fh = self._writer = self._keys = None

    def on_train_begin(self, logs=None):
        exists = self.append and os.path.exists(self.filename) and os.path.getsize(self.filename) > 0
        self._fh = open(self.filename, "a" if self.append else "w", newline="", encoding="utf-8")
        self._keys = None
        self._has_header = exists

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        if self._keys is None:
            self._keys = sorted(logs)
            if self._keys and not any(k.startswith("val_") for k in self._keys):
                self._keys += [f"val_{k}" for k in self._keys]      # Keras: NA columns for them
            self._writer = csv.writer(self._fh, delimiter=self.sep)
            if not self._has_header:
                self._writer.writerow(["epoch"] + self._keys)
        self._writer.writerow([epoch] + [logs.get(k, "NA") for k in self._keys])
        self._fh.flush()

    def on_train_end(self, logs=None):
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class TerminateOnNaN(Callback):
    """Stop training as soon as a batch loss is NaN or infinite (raise_error=True: raise instead)."""

    def __init__(self, raise_error: bool = False):
        super().__init__()
        self.raise_error = raise_error

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            if self.raise_error:
                raise RuntimeError(f"NaN or Inf loss encountered at batch {batch}. Loss value: {loss}. "
                                   "Terminating training immediately.")
            print(f"Batch {batch}: Invalid loss, terminating training", flush=True)
            self.model.stop_training = True


class LambdaCallback(Callback):
    def __init__(self, on_epoch_begin=None, on_epoch_end=None, on_train_begin=None, on_train_end=None,
                 on_train_batch_begin=None, on_train_batch_end=None, on_batch_begin=None, on_batch_end=None):
        super().__init__()
        for name, fn in list(locals().items()):
            if name.startswith("on_") and fn is not None:
                setattr(self, name, fn)


class CallbackList:
    def __init__(self, callbacks, model, params):
        self.callbacks = list(callbacks)
        for cb in self.callbacks:
            cb.set_model(model)
            cb.set_params(params)

    def __getattr__(self, hook):
        if not hook.startswith("on_"):
            raise AttributeError(hook)

        # Keras always hands `logs` over (a dict, {} when there is nothing yet), positionally, so user
        # callbacks written as `def on_train_begin(self, logs):` work
        n_index = 1 if hook.startswith("on_epoch_") or "batch" in hook else 0

        def call(*args, **kwargs):
            if len(args) <= n_index and "logs" not in kwargs:
                args = args + ({},)
            elif "logs" in kwargs:
                args = args + (kwargs.pop("logs") or {},)
            elif args[n_index] is None:
                args = args[:n_index] + ({},) + args[n_index + 1:]
            for cb in self.callbacks:
                getattr(cb, hook)(*args, **kwargs)
        return call
