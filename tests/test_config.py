"""Config schema: defaults, every kind of error with its dotted path, overrides, CLI exit code 2."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from cluster.config import (SCHEMA, Config, ConfigError, Section, ListOf, dump_config, load_config,
                            resolve_config, schema_reference)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def errors_of(raw, overrides=(), base_dir=None):
    with pytest.raises(ConfigError) as ei:
        resolve_config(raw, overrides, base_dir=base_dir)
    return ei.value.errors


# ---------------------------------------------------------------- defaults and shipped configs
def test_empty_config_gets_defaults(tmp_path):
    cfg = load_config(write(tmp_path, ""), base_dir=str(tmp_path))
    assert isinstance(cfg, Config)
    assert cfg.world_size == 1
    assert cfg.job.model == "seed_cnn" and cfg.job.epochs == 1 and cfg.job.global_batch_size == 128
    assert cfg.job.optimizer.name == "adam" and cfg.job.optimizer.lr == pytest.approx(1e-3)
    assert cfg.cluster.nodes[0].host == "localhost" and cfg.cluster.nodes[0].gpus == 0
    assert cfg.checkpoint.resume == "auto" and cfg.fault_tolerance.max_restarts == 0
    # paths are resolved against base_dir and absolute
    assert cfg.output.dir == os.path.join(str(tmp_path), "runs", "dptrain")
    assert cfg.checkpoint.dir == os.path.join(cfg.output.dir, "checkpoints")


def test_minimal_config_fills_node_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "cluster:\n  nodes:\n    - host: a\n    - {host: b, slots: 3, gpus: 2}\n"
                                      "job: {global_batch_size: 64}\n"))
    assert [n["slots"] for n in cfg.cluster.nodes] == [1, 3]
    assert [n["gpus"] for n in cfg.cluster.nodes] == [0, 2]
    assert cfg.world_size == 4 and cfg.per_rank_batch_size == 16


@pytest.mark.parametrize("name", ["local", "cluster", "lstm"])
def test_shipped_configs_validate(name):
    cfg = load_config(os.path.join(CONFIGS, f"{name}.yaml"))
    assert cfg.job.global_batch_size % cfg.world_size == 0
    if name == "local":
        assert cfg.world_size == 2 and cfg.all_local
        assert cfg.job.model == "seed_cnn" and cfg.job.dataset.name == "fashion_mnist"
        assert cfg.job.schedule.name != "none"
    if name == "cluster":
        assert [n.host for n in cfg.cluster.nodes] == ["node1", "node2"] and cfg.cluster.backend == "mpi"
        assert not cfg.all_local
    if name == "lstm":
        assert cfg.job.model == "seed_lstm"


# ---------------------------------------------------------------- errors
def test_impossible_value_message_is_exact():
    errs = errors_of({"cluster": {"nodes": [{"host": "a", "slots": 1}, {"host": "b", "slots": -2}]}})
    assert "cluster.nodes.1.slots: expected a positive integer, got -2" in errs


def test_all_errors_are_collected_with_dotted_paths():
    raw = {
        "foo": 1,
        "cluster": {"nodes": [{"host": "a", "slot": 2}, {"slots": 0}], "placement": "cyclik", "backend": 3},
        "job": {"epochs": "ten", "optimizer": {"name": "adamx", "lr": 0, "betas": [0.9]},
                "dataset": {"name": "mnist", "train_subset": 0}, "threads": True, "extra": None},
        "checkpoint": {"interval": -1, "keep": 0},
        "fault_tolerance": {"heartbeat_interval": "fast"},
    }
    errs = errors_of(raw)
    text = "\n".join(errs)
    expected = [
        "foo: unknown key",
        "cluster.nodes.0.slot: unknown key (did you mean 'slots'?)",
        "cluster.nodes.1.host: required key is missing",
        "cluster.nodes.1.slots: expected a positive integer, got 0",
        "cluster.placement: expected one of 'block', 'cyclic', got 'cyclik' (did you mean 'cyclic'?)",
        "cluster.backend: expected one of 'auto', 'mpi', 'zmq', got 3",
        "job.epochs: expected a positive integer, got 'ten' (string)",
        "job.optimizer.name: expected one of 'sgd', 'adam', 'adamw', 'rmsprop', got 'adamx'",
        "job.optimizer.lr: expected a positive number, got 0",
        "job.optimizer.betas: expected a list of exactly 2 items, got 1",
        "job.dataset.train_subset: expected a positive integer, got 0",
        "job.threads: expected a positive integer, got true (boolean)",
        "job.extra: unknown key",
        "checkpoint.interval: expected a non-negative integer, got -1",
        "checkpoint.keep: expected a positive integer, got 0",
        "fault_tolerance.heartbeat_interval: expected a positive number, got 'fast' (string)",
    ]
    for e in expected:
        assert any(x.startswith(e) for x in errs), f"missing {e!r} in:\n{text}"
    assert len(errs) == len(expected)


@pytest.mark.parametrize("raw, fragment", [
    ({"cluster": {"nodes": "localhost"}}, "cluster.nodes: expected a list, got 'localhost'"),
    ({"cluster": {"nodes": []}}, "cluster.nodes: expected at least 1 item, got 0"),
    ({"cluster": {"nodes": [{"host": "a", "slots": 1.5}]}},
     "cluster.nodes.0.slots: expected a positive integer, got 1.5"),
    ({"cluster": {"master_port": 70000}}, "cluster.master_port: expected an integer between 0 and 65535, got 70000"),
    ({"job": "x"}, "job: expected a mapping, got 'x'"),
    ({"job": {"model": "resnet"}},
     "job.model: expected one of 'seed_cnn', 'seed_lstm', 'mlp', 'mlp_bn' or 'package.module:factory'"),
    ({"job": {"optimizer": {"momentum": 1.5}}}, "job.optimizer.momentum: expected a number >= 0 and <= 1, got 1.5"),
    ({"job": {"schedule": {"gamma": 0}}}, "job.schedule.gamma: expected a number > 0 and <= 1, got 0"),
    ({"name": "my run"}, "name: expected letters, digits"),
    ({"job": {"seed": -1}}, "job.seed: expected a non-negative integer, got -1"),   # numpy refuses it in every worker
    ({"output": {"console": "some"}}, "output.console: expected one of 'all', 'rank0', got 'some'"),
])
def test_wrong_types_and_values(raw, fragment):
    errs = errors_of(raw)
    assert any(fragment in e for e in errs), errs


def test_this_machine_listed_under_two_names_is_one_host():
    import socket
    errs = errors_of({"cluster": {"nodes": [{"host": "localhost", "slots": 1},
                                            {"host": socket.gethostname(), "slots": 1}]}})
    assert any("cluster.nodes.1.host" in e and "is already cluster.nodes.0" in e for e in errs), errs


def test_cross_field_checks(tmp_path):
    errs = errors_of({
        "cluster": {"nodes": [{"host": "localhost", "slots": 2}, {"host": "127.0.0.1", "slots": 1}],
                    "master_port": 5000, "coordinator": {"port": 5000}},
        "job": {"global_batch_size": 100, "script": "nope.py"},
        "checkpoint": {"resume": "missing/ckpt"},
        "fault_tolerance": {"heartbeat_interval": 5, "heartbeat_timeout": 5},
    }, base_dir=str(tmp_path))
    text = "\n".join(errs)
    assert "cluster.nodes.1.host: '127.0.0.1' is already cluster.nodes.0" in text
    # a job.script picks its own batches: the built-in loop's divisibility rule does not apply to it
    assert "job.global_batch_size" not in text
    assert "job.global_batch_size: 100 is not divisible by the world size 3" in "\n".join(errors_of({
        "cluster": {"nodes": [{"host": "localhost", "slots": 3}]}, "job": {"global_batch_size": 100}}))
    assert "fault_tolerance.heartbeat_timeout: 5 s must be longer than fault_tolerance.heartbeat_interval" in text
    assert "cluster.master_port: 5000 is also cluster.coordinator.port" in text
    assert f"job.script: file {str(tmp_path / 'nope.py')!r} does not exist" in text
    assert "checkpoint.resume: expected 'auto', 'never' or an existing checkpoint path" in text


def test_native_allreduce_needs_mpi():
    errs = errors_of({"cluster": {"backend": "zmq", "allreduce": "native"}})
    assert errs[0].startswith("cluster.allreduce: 'native' needs MPI")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError) as ei:
        load_config(str(tmp_path / "nope.yaml"))
    assert "not found" in ei.value.errors[0]
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "job:\n  epochs: [1\n"))
    assert "not valid YAML at line" in ei.value.errors[0]
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "- a\n- b\n"))
    assert "top level must be a mapping" in ei.value.errors[0]
    # the exception text lists every error, one per line
    assert str(ei.value).startswith("invalid config")


def test_duplicate_keys_are_refused_not_silently_dropped(tmp_path):
    # plain yaml.safe_load keeps the last `job:` and drops epochs: 5 without a word
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "job:\n  epochs: 5\njob:\n  max_steps: 2\n"))
    assert "line 3" in ei.value.errors[0] and "duplicate key 'job' (first given at line 1)" in ei.value.errors[0]
    with pytest.raises(ConfigError) as ei:
        load_config(write(tmp_path, "job:\n  model_args: {hidden: 3, hidden: 4}\n"))
    assert "duplicate key 'hidden'" in ei.value.errors[0]
    # a YAML merge key may still be overridden by the mapping that merges it
    cfg = load_config(write(tmp_path, "job:\n  model_args:\n    <<: {hidden: 3}\n    hidden: 4\n"))
    assert cfg.job.model_args == {"hidden": 4}


def test_user_model_path_and_script(tmp_path):
    (tmp_path / "train.py").write_text("print('hi')\n")
    cfg = resolve_config({"job": {"model": "mypkg.models:build", "script": "train.py"}}, base_dir=str(tmp_path))
    assert cfg.job.model == "mypkg.models:build"
    assert cfg.job.script == str(tmp_path / "train.py")


# ---------------------------------------------------------------- overrides
def test_overrides_apply_with_yaml_values(tmp_path):
    path = write(tmp_path, "cluster:\n  nodes:\n    - {host: localhost, slots: 2}\n")
    cfg = load_config(path, ["job.epochs=3", "cluster.nodes.0.slots=4", "job.optimizer.lr=3e-3",
                             "job.optimizer.betas=[0.8, 0.9]", "output.progress=false", "job.script_args=[a, b]",
                             "cluster.nodes.1.host=node2", "job.dataset.root=", "name=abc",
                             "job.global_batch_size=125"])
    assert cfg.job.epochs == 3 and cfg.cluster.nodes[0].slots == 4
    assert cfg.job.optimizer.lr == pytest.approx(3e-3)
    assert cfg.job.optimizer.betas == [0.8, 0.9]
    assert cfg.output.progress is False and cfg.job.script_args == ["a", "b"]
    assert cfg.cluster.nodes[1] == {"host": "node2", "slots": 1, "gpus": 0}   # appended, defaults filled
    assert cfg.world_size == 5 and cfg.per_rank_batch_size == 25
    assert cfg.job.dataset.root is None and cfg.name == "abc"


def test_override_on_default_nodes(tmp_path):
    cfg = load_config(write(tmp_path, ""), ["cluster.nodes.0.slots=2"])
    assert cfg.cluster.nodes[0].host == "localhost" and cfg.world_size == 2


def test_bad_overrides_are_reported_with_the_rest(tmp_path):
    path = write(tmp_path, "job: {epochs: 0}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(path, ["job.epochs", "cluster.nodes.5.slots=1", "job.epochs.x=1", "job.seed=[1",
                           "job.unknown=1", "cluster.nodes.0.slots=-2"])
    errs = ei.value.errors
    text = "\n".join(errs)
    assert "override 'job.epochs': expected KEY=VALUE" in text
    assert "cluster.nodes has 1 items; index 5 is out of range" in text
    assert "override 'job.epochs.x=1': job.epochs is not a mapping (it is 0)" in text
    assert "override 'job.seed=[1': value is not valid YAML" in text
    assert "job.unknown: unknown key" in text
    assert "cluster.nodes.0.slots: expected a positive integer, got -2" in text
    # job.epochs=0 from the file is still reported
    assert "job.epochs: expected a positive integer, got 0" in text


# ---------------------------------------------------------------- resolved config
def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(os.path.join(CONFIGS, "local.yaml"), ["job.epochs=1"], base_dir=str(tmp_path))
    text = dump_config(cfg)
    assert yaml.safe_load(text) == cfg.to_dict()
    p = tmp_path / "resolved.yaml"
    p.write_text(text)
    again = load_config(str(p), base_dir="/")
    assert again.to_dict() == cfg.to_dict()
    assert again.hash == cfg.hash
    assert load_config(str(p), ["job.seed=1"]).hash != cfg.hash
    assert load_config(str(p), ["output.progress=false"]).hash == cfg.hash  # output does not change training


def test_config_is_a_plain_dict_with_attribute_access(tmp_path):
    cfg = load_config(write(tmp_path, "job: {epochs: 2}\n"))
    assert cfg["job"]["epochs"] == cfg.job.epochs == 2
    plain = cfg.to_dict()
    assert type(plain) is dict and type(plain["cluster"]["nodes"][0]) is dict
    json.dumps(plain)
    yaml.safe_dump(plain)
    with pytest.raises(AttributeError):
        cfg.job.nope
    with pytest.raises(AttributeError):
        cfg.job.epochs = 3
    cfg["job"]["epochs"] = 3
    assert cfg.job.epochs == 3


def _schema_paths(spec, path=""):
    if isinstance(spec, Section):
        for k, sub in spec.fields.items():
            yield from _schema_paths(sub, f"{path}.{k}" if path else k)
    elif isinstance(spec, ListOf) and isinstance(spec.item, Section):
        yield path
        yield from _schema_paths(spec.item, f"{path}.N")
    else:
        yield path


def test_reference_documents_every_key():
    ref = schema_reference()
    paths = list(_schema_paths(SCHEMA))
    assert len(paths) > 40
    for p in paths:
        assert f"| `{p}` |" in ref, p


def test_the_readme_config_reference_is_the_schema():
    """The README's table is `dptrain reference` pasted in: regenerate it when the schema changes."""
    readme = open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")).read()
    assert schema_reference().strip() in readme, "README's Config reference differs: paste `dptrain reference`"


# ---------------------------------------------------------------- CLI
def _cli(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "launcher", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


@pytest.mark.timeout(60)
def test_cli_validate_exit_codes(tmp_path):
    bad = write(tmp_path, "cluster:\n  nodes:\n    - {host: a, slots: 2}\n    - {host: b, slots: -2}\n"
                          "job: {epochs: x}\n")
    r = _cli(["validate", bad], tmp_path)
    assert r.returncode == 2
    assert "cluster.nodes.1.slots: expected a positive integer, got -2" in r.stderr
    assert "job.epochs: expected a positive integer, got 'x' (string)" in r.stderr
    assert "2 errors" in r.stderr
    # nothing was started or created for a run either
    r = _cli(["run", bad, "output.dir=out"], tmp_path)
    assert r.returncode == 2 and not (tmp_path / "out").exists()
    assert not (tmp_path / "runs").exists()
    good = write(tmp_path, "job: {epochs: 2}\n", "good.yaml")
    r = _cli(["validate", good, "--json", "job.epochs=5"], tmp_path)   # overrides may follow options
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["job"]["epochs"] == 5
    r = _cli(["validate", good, "job.epochs=0"], tmp_path)
    assert r.returncode == 2 and "job.epochs: expected a positive integer, got 0" in r.stderr
    r = _cli(["reference"], tmp_path)
    assert r.returncode == 0 and "| `cluster.nodes.N.slots` |" in r.stdout


# ---------------------------------------------------------------- slots/gpus: auto
def test_auto_slots_use_this_machines_cores_divided_by_threads(monkeypatch, tmp_path):
    import cluster.resources as res
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(res, "usable_cpu_count", lambda: 8)
    monkeypatch.setattr(res, "local_gpu_count", lambda: 0)
    raw = {"cluster": {"nodes": [{"host": "localhost", "slots": "auto", "gpus": "auto"}]},
           "job": {"threads": 2, "global_batch_size": 64}}
    cfg = resolve_config(raw, base_dir=str(tmp_path))
    assert cfg.cluster.nodes[0].slots == 4 and cfg.cluster.nodes[0].gpus == 0 and cfg.world_size == 4


def test_auto_slots_give_one_worker_per_visible_gpu(monkeypatch, tmp_path):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2,3")
    raw = {"cluster": {"nodes": [{"host": "127.0.0.1", "slots": "auto", "gpus": "auto"}]},
           "job": {"global_batch_size": 96}}
    cfg = resolve_config(raw, base_dir=str(tmp_path))
    assert cfg.cluster.nodes[0].gpus == 3 and cfg.cluster.nodes[0].slots == 3


def test_auto_is_refused_for_remote_nodes_and_other_words_are_errors():
    errs = errors_of({"cluster": {"nodes": [{"host": "localhost"}, {"host": "gpu7", "slots": "auto"}]}})
    assert errs == ["cluster.nodes.1.slots: 'auto' is measured on this machine, but node 1 is 'gpu7'; "
                    "`dptrain mpirun` measures remote nodes (a probe through mpiexec), other commands cannot: "
                    "give its number of workers"]
    errs = errors_of({"cluster": {"nodes": [{"host": "localhost", "gpus": "many"}]}})
    assert errs == ["cluster.nodes.0.gpus: expected a non-negative integer or 'auto', got 'many'"]


def test_usable_cpus_and_gpu_count_probes(monkeypatch):
    from cluster.resources import local_gpu_count, usable_cpu_count
    assert usable_cpu_count() >= 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpu_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert local_gpu_count() == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert local_gpu_count() == 1


def test_paths_that_cannot_work_are_refused_before_anything_starts(tmp_path):
    """A dataset root, worker Python or resume checkpoint that is not there fails validation (exit 2),
    rather than silently training on the embedded subset or failing on every rank after a start."""
    errs = errors_of({"job": {"dataset": {"root": str(tmp_path / "nowhere")}}})
    assert any(e.startswith("job.dataset.root:") and "is not a directory" in e for e in errs)
    errs = errors_of({"cluster": {"python": str(tmp_path / "bin/python3")}})
    assert any(e.startswith("cluster.python:") and "not an executable file" in e for e in errs)
    (tmp_path / "model.safetensors").write_bytes(b"x")
    errs = errors_of({"checkpoint": {"resume": str(tmp_path / "model.safetensors")}})
    assert any("is a file, not a checkpoint" in e for e in errs)
    errs = errors_of({"checkpoint": {"resume": str(tmp_path)}})
    assert any("holds no checkpoint" in e for e in errs)
    errs = errors_of({"job": {"script": str(tmp_path)}})
    assert any(e.startswith("job.script:") and "is a directory" in e for e in errs)
    # a script for remote nodes only may exist only there (checked by the worker on each node)
    cfg = resolve_config({"cluster": {"nodes": [{"host": "node1", "slots": 1}]},
                          "job": {"script": str(tmp_path / "on-the-cluster.py")}})
    assert cfg.job.script == str(tmp_path / "on-the-cluster.py")
    # a corrupt explicit checkpoint is named before any worker starts
    from cluster.checkpoint import save_checkpoint
    import numpy as np
    ck = save_checkpoint(str(tmp_path / "ck"), 5, {"w": np.ones(3, np.float32)}, {})
    with open(os.path.join(ck, "arrays.safetensors"), "ab") as fh:
        fh.write(b"junk")
    errs = errors_of({"checkpoint": {"resume": ck}})
    assert any(e.startswith("checkpoint.resume:") and "step-00000005" in e for e in errs)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(str(bad))
