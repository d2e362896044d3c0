"""The worker's built-in training loop, driven entirely by the resolved config.

Every rank builds the same model from the same seed, wraps it in
DistributedDataParallel, reads its share of each global batch through a
DistributedSampler and steps its own optimizer on the averaged gradients, so
all ranks hold identical parameters after every step.  Rank 0 writes metrics,
checkpoints (model, optimizer, sampler position, step, RNG state) and the
summary.  A run restarted on the same output directory resumes from the newest
valid checkpoint and continues exactly where the checkpoint left off.
"""
from __future__ import annotations

import math
import os
import sys
import time

import numpy as np

import engine
from engine import nn
from engine.nn import functional as F
from engine.nn.module import StateDictError
from engine.random import batch_shard

from .ddp import DistributedDataParallel, average_metrics
from .sampler import DistributedSampler
from .state import flatten_state, unflatten_state
from .sync_batchnorm import convert_sync_batchnorm
from .zoo import build_model


class WorkerError(RuntimeError):
    pass


# ---------------------------------------------------------------- building blocks


def build_datasets(ds_cfg, seed=0):
    """(train, test) as TensorDatasets of float32 NCHW images in [0, 1] and int64 labels."""
    from engine.data import TensorDataset, datasets
    name = ds_cfg.name
    if name == "synthetic":
        n_train = ds_cfg.train_subset or 2048
        n_test = ds_cfg.test_subset or 512
        # Ten fixed random "prototype" images; a sample is its class's prototype under heavy noise.
        # Classes are equally likely and learnable from a few hundred samples, so accuracy means
        # something (chance: 10 %).
        protos = np.random.default_rng(1234).random((10, 1, 28, 28), dtype=np.float32)

        def make(n, r):
            y = r.integers(0, 10, n).astype(np.int64)
            x = np.float32(0.1) * protos[y] + np.float32(0.9) * r.random((n, 1, 28, 28), dtype=np.float32)
            return TensorDataset(x, y)
        return make(n_train, np.random.default_rng(1)), make(n_test, np.random.default_rng(2)), False
    cls = datasets.FashionMNIST if name == "fashion_mnist" else datasets.MNIST
    train = cls(root=ds_cfg.root, train=True)
    test = cls(root=ds_cfg.root, train=False)
    subset = bool(getattr(train, "subset", False))

    def to_arrays(ds, limit):
        x = np.asarray(ds.data, dtype=np.float32)[:limit] / np.float32(255.0)
        y = np.asarray(ds.targets, dtype=np.int64)[:limit]
        return TensorDataset(x.reshape(-1, 1, 28, 28), y)
    return to_arrays(train, ds_cfg.train_subset), to_arrays(test, ds_cfg.test_subset), subset


def build_optimizer(opt_cfg, params):
    from engine import optim
    name = opt_cfg.name
    if name == "sgd":
        return optim.SGD(params, lr=opt_cfg.lr, momentum=opt_cfg.momentum, nesterov=opt_cfg.nesterov,
                         weight_decay=opt_cfg.weight_decay)
    if name == "adam":
        return optim.Adam(params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                          weight_decay=opt_cfg.weight_decay)
    if name == "adamw":
        return optim.AdamW(params, lr=opt_cfg.lr, betas=tuple(opt_cfg.betas), eps=opt_cfg.eps,
                           weight_decay=opt_cfg.weight_decay)
    if name == "rmsprop":
        return optim.RMSprop(params, lr=opt_cfg.lr, alpha=opt_cfg.alpha, eps=opt_cfg.eps,
                             momentum=opt_cfg.momentum, weight_decay=opt_cfg.weight_decay)
    raise ValueError(f"job.optimizer.name: unknown optimizer {name!r}")


def lr_at(step: int, base_lr: float, sched, total_steps: int) -> float:
    """The learning rate of optimizer step `step` (0-based): a pure function of the step,
    so a resumed run needs nothing but the step count to continue the schedule."""
    warm = sched.warmup_steps
    if warm and step < warm:
        return base_lr * (step + 1) / warm
    t = step - warm
    if sched.name == "step":
        return base_lr * sched.gamma ** (t // sched.step_size)
    if sched.name == "cosine":
        span = max(total_steps - warm, 1)
        return sched.min_lr + (base_lr - sched.min_lr) * 0.5 * (1 + math.cos(math.pi * min(t, span) / span))
    return base_lr


def select_device(job_cfg) -> str:
    want = job_cfg.device
    gpu = os.environ.get("DPTRAIN_GPU", "")
    if want == "cpu" or (want == "auto" and gpu in ("", "none")):
        return "cpu"
    if not engine.backend.gpu_available():
        if want == "cuda":
            raise WorkerError("job.device is 'cuda' but no GPU is usable here (cupy missing or no device); "
                              "install cupy-cuda12x (pip install -e '.[gpu]') or set job.device=cpu")
        return "cpu"
    return f"cuda:{int(gpu) if gpu.isdigit() else 0}"


# ---------------------------------------------------------------- the run


class Trainer:
    """One worker's share of a run: build, (resume), train, evaluate, report."""

    def __init__(self, cfg, comm, run_dir=None, coordinator=None, log=print):
        self.cfg, self.comm, self.log = cfg, comm, log
        self.rank, self.size = comm.rank, comm.size
        self.run_dir = run_dir
        self.coordinator = coordinator
        job = cfg.job
        if job.global_batch_size % self.size:
            raise WorkerError(f"job.global_batch_size={job.global_batch_size} is not divisible by the world "
                              f"size {self.size}; pick a multiple of {self.size}")
        self.local_batch = job.global_batch_size // self.size
        self.device = select_device(job)
        engine.manual_seed(job.seed)
        import warnings
        with warnings.catch_warnings(record=True) as caught:   # said once, by rank 0, in run()
            warnings.simplefilter("always")
            self.train_set, self.test_set, self.embedded = build_datasets(job.dataset, job.seed)
        self.data_notes = sorted({str(w.message) for w in caught})
        try:
            model = build_model(job.model, **dict(job.model_args or {}))
        except TypeError as e:     # a misspelt or missing model_args key
            raise WorkerError(f"job.model_args do not fit the model {job.model!r}: {e}; fix job.model_args "
                              f"in the config (or override it: job.model_args.NAME=VALUE)") from None
        except ValueError as e:
            if not str(e).startswith("job.model"):
                raise
            raise WorkerError(str(e)) from None
        if self.device != "cpu":
            model.to(self.device)
        if job.get("sync_batchnorm", True):      # also at size 1: same arithmetic at every size
            model = convert_sync_batchnorm(model, comm)
        self.model = model
        self.ddp = DistributedDataParallel(model, comm, bucket_cap_mb=job.bucket_cap_mb,
                                           overlap=job.get("ddp_overlap", "auto"),
                                           compression=job.get("ddp_compression", "none"))
        shard = job.optimizer.get("shard", "auto")
        if shard == "auto":   # ZeRO doubles the collectives per step: worth it where they are cheap
            shard = getattr(comm, "backend", "") == "mpi" or (
                self.size > 1 and all(comm.is_shared(b.flat) for b in self.ddp.buckets))
        self.sharded = bool(shard) and self.size > 1 and self.ddp._nccl is None
        if self.sharded:
            from .zero import ZeroRedundancyOptimizer
            self.optimizer = ZeroRedundancyOptimizer(
                self.ddp, lambda params, **kw: build_optimizer(job.optimizer, params))
        else:
            self.optimizer = build_optimizer(job.optimizer, model.parameters())
        self.sampler = DistributedSampler(self.train_set, self.rank, self.size, shuffle=True, seed=job.seed,
                                          drop_last=True)
        from engine.data import DataLoader
        self.loader = DataLoader(self.train_set, batch_size=self.local_batch, sampler=self.sampler,
                                 drop_last=True, device=self.device)
        self.steps_per_epoch = len(self.sampler) // self.local_batch
        if self.steps_per_epoch == 0:
            raise WorkerError(f"the training set has {len(self.train_set)} samples, fewer than one global batch "
                              f"({job.global_batch_size}), so an epoch would have no step; lower "
                              f"job.global_batch_size or use more data (job.dataset.train_subset)")
        self.total_steps = self.steps_per_epoch * job.epochs
        max_steps = job.get("max_steps")
        if max_steps:
            self.total_steps = min(self.total_steps, int(max_steps))
        self.step = 0
        self.epoch = 0
        self.restarts = int(os.environ.get("DPTRAIN_RESTART_COUNT", "0"))
        self.stopped = False     # the launcher asked for a checkpoint and a clean stop (SIGTERM)
        self.last_checkpoint = None
        self._checkpoint_step = None
        ck = cfg.checkpoint
        self.ckpt_dir = ck.dir or (os.path.join(run_dir, "checkpoints") if run_dir else None)

    # ---------------------------------------------------------- checkpoints
    def _state(self, optimizer_state: dict) -> dict:
        return {
            "model": {k: v for k, v in self.model.state_dict().items()},
            "optimizer": optimizer_state,
            "sampler": self.sampler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "rng": engine.random.get_state(),
            "world_size": self.size,
            "optimizer_name": self.cfg.job.optimizer.name,
        }

    def save_checkpoint(self):
        if self.ckpt_dir is None:
            return
        opt_state = self.optimizer.state_dict()     # collective when the optimizer is sharded
        if self.rank == 0:
            from .checkpoint import save_checkpoint
            arrays, skeleton = flatten_state(self._state(opt_state))
            path = save_checkpoint(self.ckpt_dir, self.step, arrays, {"state": skeleton},
                                   keep=self.cfg.checkpoint.keep)
            self.last_checkpoint = str(path)
            if self.coordinator is not None:
                self.coordinator.report_checkpoint(self.step, str(path))
                # the coordinator now counts a pending request as served; do not act on it again before
                # the next heartbeat says so
                self.coordinator.checkpoint_pending = False
        self.last_checkpoint = self.comm.broadcast_obj(self.last_checkpoint, root=0)
        self._checkpoint_step = self.step

    def maybe_resume(self):
        ck = self.cfg.checkpoint
        if self.ckpt_dir is None:
            return False
        from .checkpoint import latest_valid_checkpoint, list_checkpoints, load_checkpoint
        # Every rank must resume from the same file: rank 0 decides (and alone warns about bad ones).
        have_dir = os.path.isdir(self.ckpt_dir) and self.rank == 0
        if ck.resume == "auto":
            path = latest_valid_checkpoint(self.ckpt_dir) if have_dir else None
            if path is None and have_dir and list_checkpoints(self.ckpt_dir):
                # never start over silently where a run's progress was (corrupt disk, wrong copy)
                raise WorkerError(f"{self.ckpt_dir} holds checkpoints but none is valid (see the warnings "
                                  f"above); restore them, or start over with checkpoint.resume=never")
        else:
            # A restart after a failure continues from this launch's own newest checkpoint, also
            # with `never` (start over, then keep the progress) or an explicit path (which was
            # the starting point, not the place to fall back to).
            path = None
            since = os.environ.get("DPTRAIN_LAUNCH_STARTED")
            if self.restarts and since and have_dir:
                path = latest_valid_checkpoint(self.ckpt_dir, since=float(since) - 2.0)
            if path is None and ck.resume != "never":
                path = ck.resume
        path = self.comm.broadcast_obj(str(path) if path else None, root=0)
        if not path:
            return False
        arrays, meta = load_checkpoint(path)
        state = unflatten_state(arrays, meta["state"])
        start_over = (f"resume with the job.model / job.model_args / job.optimizer.name that wrote it, or start "
                      f"over with checkpoint.resume=never (or another output.dir)")
        try:
            self.model.load_state_dict(state["model"])
        except StateDictError as e:
            raise WorkerError(f"checkpoint {path} does not fit job.model={self.cfg.job.model!r} "
                              f"(job.model_args={dict(self.cfg.job.model_args)}): "
                              f"{str(e).replace(chr(10) + '  (pass strict=False to load the matching keys only)', '')}"
                              f"\n{start_over}") from e
        # An optimizer's state only fits an optimizer of the same kind (Adam's moments are not SGD's
        # momentum): refuse before training, or the first step dies with a KeyError.  A setting the
        # saved groups lack is fine (a checkpoint from before it existed); one this optimizer does
        # not have means another kind of optimizer wrote it.
        saved_keys = {k for g in state["optimizer"].get("param_groups", []) for k in g} - {"params"}
        own_keys = {k for g in self.optimizer.param_groups for k in g} - {"params"}
        if not saved_keys <= own_keys:
            by = state.get("optimizer_name")
            raise WorkerError(f"checkpoint {path} holds the state of {'a ' + repr(by) if by else 'another'} "
                              f"optimizer (settings {', '.join(sorted(saved_keys))}), not of "
                              f"job.optimizer.name={self.cfg.job.optimizer.name!r}; {start_over}")
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.epoch = int(state["step"]), int(state["epoch"])
        # The step counter is in units of the global batch; the sampler position is in samples.
        # Resumed at another job.global_batch_size, count steps back from the epoch's end (the
        # rest of the epoch is len(sampler) // local_batch whole batches, drop_last), or the run
        # would train past its last epoch (or stop short of it).
        at = (self.epoch + 1) * self.steps_per_epoch - len(self.sampler) // self.local_batch
        if at != self.step:
            if self.rank == 0:
                self.log(f"note: the checkpoint counted {self.step} steps at another global batch size; at "
                         f"global batch {self.cfg.job.global_batch_size} the same position is step {at} of "
                         f"{self.total_steps}")
            self.step = at
        engine.random.set_state(state["rng"])
        self.last_checkpoint = path
        self._checkpoint_step = self.step
        if self.rank == 0:
            self.log(f"resumed from {path} at step {self.step} (epoch {self.epoch})")
            written_by = int(state["sampler"].get("num_replicas", self.size))
            if written_by != self.size:
                self.log(f"the checkpoint was written by {written_by} worker(s); continuing on {self.size} "
                         f"with the same global batch {self.cfg.job.global_batch_size}")
        return True

    # ---------------------------------------------------------- loop
    def train(self):
        job, cfg = self.cfg.job, self.cfg
        interval = cfg.checkpoint.interval
        crash_at = int(os.environ.get("DPTRAIN_FAULT_CRASH_AT_STEP", "0") or 0)   # fault injection (tests)
        bar = None
        if self.rank == 0 and cfg.output.progress and self.step < self.total_steps:
            from tqdm import tqdm
            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step",
                       dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
        t0 = time.perf_counter()
        self.model.train()
        try:
            return self._train_loop(job, interval, crash_at, bar, t0)
        finally:
            if bar is not None:      # also on an error: its message must start on a line of its own
                bar.close()

    def _train_loop(self, job, interval, crash_at, bar, t0):
        samples = 0
        window_loss, window_correct, window_n = 0.0, 0, 0
        while self.step < self.total_steps:
            self.loader.set_epoch(self.epoch)        # the sampler keeps its position on resume
            for x, y in self.loader:
                loss, out = self._train_step(x, y, job)
                samples += self.local_batch * self.size
                window_loss += float(loss.item()) * self.local_batch
                window_correct += int((out.data.argmax(axis=1) == y.data).sum())
                window_n += self.local_batch
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss.item():.4f}", epoch=self.epoch)
                if self.coordinator is not None:
                    self.coordinator.update(step=self.step, epoch=self.epoch)
                requested = False
                if self.step % job.log_every == 0 or self.step == self.total_steps:
                    # The metrics all-reduce also carries rank 0's "coordinator asked for a
                    # checkpoint" flag, so every rank agrees without an extra collective.
                    asked = float(self.rank == 0 and self.coordinator is not None
                                  and bool(getattr(self.coordinator, "checkpoint_pending", False)))
                    stop = float(self.rank == 0 and self.coordinator is not None
                                 and bool(getattr(self.coordinator, "stop_pending", False)))
                    m = average_metrics(self.comm, {"loss": window_loss / window_n,
                                                    "accuracy": window_correct / window_n,
                                                    "checkpoint_request": asked, "stop_request": stop})
                    requested = m.pop("checkpoint_request") > 0
                    self.stopped = m.pop("stop_request") > 0
                    self._metrics({"step": self.step, "epoch": self.epoch, "attempt": self.restarts,
                                   "lr": self.optimizer.param_groups[0]["lr"], **m,
                                   "samples_per_s": samples / (time.perf_counter() - t0)})
                    window_loss, window_correct, window_n = 0.0, 0, 0
                if self.step < self.total_steps and (requested or (interval and self.step % interval == 0)):
                    self.save_checkpoint()
                if crash_at and self.step == crash_at and self.rank == self.size - 1 \
                        and self.restarts == 0:
                    self.log(f"fault injection: rank {self.rank} exits at step {self.step}")
                    os._exit(17)
                if self.step >= self.total_steps or self.stopped:
                    break
            else:
                self.epoch += 1                      # the epoch was used up
                continue
            break
        elapsed = time.perf_counter() - t0
        return samples / elapsed if elapsed > 0 and samples else 0.0

    def _train_step(self, x, y, job):
        lr = lr_at(self.step, job.optimizer.lr, job.schedule, self.total_steps)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        with batch_shard(self.rank, self.size):
            out = self.ddp(x)
        loss = F.cross_entropy(out, y)
        self.optimizer.zero_grad()
        loss.backward()                              # DDP has averaged the gradients when this returns
        if job.clip_grad_norm:
            if self.sharded:                         # the averaged gradient exists only as shards
                self.optimizer.clip_grad_norm_(job.clip_grad_norm)
            else:
                nn.utils.clip_grad_norm_(self.model.parameters(), job.clip_grad_norm)
        self.optimizer.step()
        self.step += 1
        self.sampler.advance(self.local_batch)
        return loss, out

    def evaluate(self):
        """Loss and accuracy on the whole test set, each rank scoring a contiguous shard."""
        self.model.eval()
        n = len(self.test_set)
        lo, hi = n * self.rank // self.size, n * (self.rank + 1) // self.size
        loss_sum, correct = 0.0, 0
        bs = self.cfg.job.eval_batch_size
        with engine.no_grad():
            for s in range(lo, hi, bs):
                idx = np.arange(s, min(s + bs, hi))
                x, y = self.test_set.get_batch(idx)
                xt, yt = engine.tensor(x, device=self.device), engine.tensor(y, device=self.device)
                out = self.model(xt)
                loss_sum += float(F.cross_entropy(out, yt, reduction="sum").item())
                correct += int((out.data.argmax(axis=1) == yt.data).sum())
        tot = np.array([loss_sum, correct, hi - lo], dtype=np.float64)
        if self.size > 1:
            self.comm.allreduce(tot, op="sum")
        self.model.train()
        return float(tot[0] / max(tot[2], 1)), float(tot[1] / max(tot[2], 1))

    def _stopped_summary(self, sps) -> dict:
        """The launcher asked for a clean stop (SIGTERM: preemption, a time limit, `kill`): the
        checkpoint is written; skip the evaluation and leave, so the run resumes from here."""
        summary = {"world_size": self.size, "epochs": self.cfg.job.epochs, "steps": self.step,
                   "samples_per_s": sps, "restarts": self.restarts, "last_checkpoint": self.last_checkpoint,
                   "model": self.cfg.job.model, "embedded_dataset": self.embedded, "stopped_early": True}
        if self.rank == 0:
            if self.run_dir:
                from .rundir import RunDir
                RunDir(self.run_dir).write_summary(summary)
            self.log(f"stopped on request at step {self.step} of {self.total_steps}; checkpoint "
                     f"{self.last_checkpoint}: run the same command again to continue from it")
        return summary

    def _metrics(self, record):
        if self.rank == 0 and self.run_dir:
            from .rundir import RunDir
            RunDir(self.run_dir).append_metrics(record)

    def run(self) -> dict:
        resumed = self.maybe_resume()
        if self.rank == 0:
            for note in self.data_notes:
                self.log(f"note: {note}")
        if self.rank == 0:
            self.log(f"training {self.cfg.job.model} on {self.size} worker(s): global batch "
                     f"{self.cfg.job.global_batch_size} ({self.local_batch} per worker), {self.total_steps} "
                     f"steps, device {self.device}" + (", optimizer sharded (ZeRO-1)" if self.sharded else "")
                     + (", gradients reduced in same-host shared memory" if self.size > 1 and all(
                         self.comm.is_shared(b.flat) for b in self.ddp.buckets) else "")
                     + (", two-level ring across hosts" if getattr(self.comm, "hierarchical", False) else "")
                     + (" (resumed)" if resumed else ""))
        finished_before = resumed and self.step >= self.total_steps
        if finished_before and self.rank == 0:
            self.log(f"note: the checkpoint at step {self.step} already completes this run's {self.total_steps} "
                     f"steps, so there is nothing to train: evaluating only. To train again from the start "
                     f"add checkpoint.resume=never (or use another output.dir); to train longer raise job.epochs "
                     f"(or job.max_steps)")
        sps = self.train()
        if self._checkpoint_step != self.step:
            self.save_checkpoint()
        if self.stopped:
            return self._stopped_summary(sps)
        test_loss, test_acc = self.evaluate()
        summary = {
            "world_size": self.size, "epochs": self.cfg.job.epochs, "steps": self.step,
            "test_accuracy": test_acc, "test_loss": test_loss,
            "samples_per_s": None if finished_before else sps, "evaluated_only": finished_before,
            "restarts": self.restarts, "last_checkpoint": self.last_checkpoint,
            "model": self.cfg.job.model, "embedded_dataset": self.embedded,
        }
        if self.rank == 0:
            if self.run_dir:
                from .rundir import RunDir
                RunDir(self.run_dir).write_summary(summary)
                engine.save(self.model.state_dict(), os.path.join(self.run_dir, "model.safetensors"))
            self.log(f"test accuracy {100 * test_acc:.2f}%  test loss {test_loss:.4f}  "
                     + ("(evaluated only)" if finished_before else f"({sps:.0f} samples/s)"))
            if self.run_dir:
                self.log(f"output directory: {self.run_dir}")
        return summary
