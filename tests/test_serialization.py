"""engine.save / engine.load: bit-identical round trips, no pickle, clear errors on damaged files."""
import json
import os
import struct

import numpy as np
import pytest

import engine
from engine.serialization import CheckpointFormatError


def _checkpoint():
    rng = np.random.default_rng(0)
    model = {
        "fc.weight": engine.tensor(rng.standard_normal((4, 3)).astype(np.float32), requires_grad=True),
        "fc.bias": engine.tensor(rng.standard_normal(4).astype(np.float32), requires_grad=True),
        "bn.running_mean": engine.tensor(np.zeros(4, np.float32)),
        "bn.num_batches_tracked": engine.tensor(np.array(7, dtype=np.int64)),
    }
    optim_sd = {
        "state": {0: {"step": 3, "exp_avg": rng.standard_normal((4, 3)).astype(np.float32)},
                  1: {"step": 3, "exp_avg": rng.standard_normal(4).astype(np.float32)}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False,
                          "fused": None, "params": [0, 1]}],
    }
    return {
        "model": model,
        "optim": optim_sd,
        "epoch": 3,
        "name": "run-1",
        "loss_history": [0.5, 0.25, float("nan"), float("inf")],
        "rng": rng.bit_generator.state["state"]["state"],          # a big Python int
        "f64": rng.standard_normal((2, 2)),
        "f16": np.arange(6, dtype=np.float16).reshape(2, 3),
        "i8": np.array([-1, 2], np.int8), "u8": np.arange(5, dtype=np.uint8), "flags": np.array([True, False]),
        "empty": np.zeros((0, 5), np.float32),
        "scalar0d": np.array(2.5, np.float64),
        "npscalar": np.float32(1.5),
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        "keys": {1: "int", "1": "str", 2.5: "float", True: "bool", None: "none"},
        "nested": [{"a": (1, 2, [3, {"b": None}])}],
    }


def _assert_same(a, b, path="root"):
    if isinstance(a, engine.Tensor):
        assert isinstance(b, engine.Tensor), path
        assert a.requires_grad == b.requires_grad, path
        _assert_same(a.data, b.data, path)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape, path
        assert a.tobytes() == np.ascontiguousarray(b).tobytes(), path     # bit-identical
    elif isinstance(a, np.generic):
        assert type(a) is type(b) and a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a.keys()) == list(b.keys()), path
        for k in a:
            assert type(k) is type(next(kk for kk in b if kk == k and type(kk) is type(k))), path
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{path}.{i}")
    elif isinstance(a, float) and np.isnan(a):
        assert isinstance(b, float) and np.isnan(b), path
    else:
        assert type(a) is type(b) and a == b, path


def test_round_trip_bit_identical(tmp_path):
    obj = _checkpoint()
    path = tmp_path / "ck.safetensors"
    engine.save(obj, path)
    _assert_same(obj, engine.load(path))
    # what load returns can be saved again unchanged (a resumed run re-saves restored state)
    engine.save(engine.load(path), tmp_path / "again.safetensors")
    _assert_same(obj, engine.load(tmp_path / "again.safetensors"))


def test_file_is_plain_safetensors_without_pickle(tmp_path):
    from safetensors.numpy import load_file
    path = tmp_path / "ck.safetensors"
    engine.save(_checkpoint(), path)
    raw = path.read_bytes()
    assert b"\x80\x04" not in raw[:16] and b"pickle" not in raw
    arrays = load_file(str(path))
    np.testing.assert_array_equal(arrays["model.fc.weight"], _checkpoint()["model"]["fc.weight"].data)
    assert "optim.state.0.exp_avg" in arrays
    n = struct.unpack("<Q", raw[:8])[0]
    meta = json.loads(raw[8:8 + n])["__metadata__"]
    assert meta["dptrain.format"] == f"dptrain-checkpoint/{engine.serialization.FORMAT_VERSION}"
    json.loads(meta["dptrain.structure"])                # strict JSON (no NaN literals)


def test_key_collisions_kept_apart(tmp_path):
    obj = {"a.b": np.ones(2), "a": {"b": np.zeros(2)}}
    engine.save(obj, tmp_path / "c.safetensors")
    _assert_same(obj, engine.load(tmp_path / "c.safetensors"))


def test_unsupported_values_rejected_before_writing(tmp_path):
    path = tmp_path / "bad.safetensors"
    for bad in ({"f": lambda x: x}, {"s": {1, 2}}, {"o": np.array([object()])}, {(1, 2): 3}):
        with pytest.raises(TypeError):
            engine.save(bad, path)
    assert not path.exists() and os.listdir(tmp_path) == []


def test_truncated_file_gives_clear_error(tmp_path):
    path = tmp_path / "ck.safetensors"
    engine.save(_checkpoint(), path)
    raw = path.read_bytes()
    for cut in (0, 5, 100, len(raw) // 2, len(raw) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(raw[:cut])
        with pytest.raises(CheckpointFormatError, match=str(bad.name)) as e:
            engine.load(bad)
        assert isinstance(e.value, ValueError)


def test_flipped_data_byte_detected_by_checksum(tmp_path):
    path = tmp_path / "ck.safetensors"
    engine.save(_checkpoint(), path)
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0xFF                              # inside the last array's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointFormatError, match="checksum"):
        engine.load(path)
    engine.load(path, verify=False)              # structure still readable when asked not to verify


def test_garbage_and_foreign_files(tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(os.urandom(256))
    with pytest.raises(CheckpointFormatError, match="junk"):
        engine.load(junk)
    from safetensors.numpy import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.ones(3, np.float32)}, str(foreign))
    with pytest.raises(CheckpointFormatError, match="not a dptrain checkpoint"):
        engine.load(foreign)
    with pytest.raises(FileNotFoundError, match="missing"):
        engine.load(tmp_path / "missing.safetensors")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ck.safetensors"
    engine.save({"v": np.arange(3)}, path)
    before = path.read_bytes()
    import safetensors.numpy

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        engine.save({"v": np.arange(4)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.safetensors"]          # no temp file left behind


def test_model_and_optimizer_state_round_trip(tmp_path):
    from engine import optim
    params = [engine.tensor(np.ones((3, 2), np.float32), requires_grad=True),
              engine.tensor(np.zeros(2, np.float32), requires_grad=True)]
    opt = optim.AdamW(params, lr=0.01)
    for p in params:
        p.grad = engine.tensor(np.full(p.shape, 0.5, np.float32))
    opt.step()
    ck = {"model": {"w": params[0], "b": params[1]}, "optim": opt.state_dict(), "epoch": 1}
    engine.save(ck, tmp_path / "ck.safetensors")
    back = engine.load(tmp_path / "ck.safetensors")
    _assert_same(ck, back)
    assert back["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)


def test_an_edited_structure_is_corruption_too_and_format_1_files_still_load(tmp_path):
    """The checksum covers the structure JSON (format 2): a changed hyperparameter in a saved Keras
    model is reported, not loaded as a different model.  Files of format 1 (arrays only) still load."""
    import json
    from safetensors.numpy import save_file
    from engine import serialization as S
    path = tmp_path / "ck.safetensors"
    engine.save({"w": np.arange(4, dtype=np.float32), "cfg": {"epsilon": 0.001}}, path)
    raw = path.read_bytes()
    edited = raw.replace(b"0.001", b"0.007")
    assert edited != raw and len(edited) == len(raw)
    path.write_bytes(edited)
    with pytest.raises(CheckpointFormatError, match="checksum"):
        engine.load(path)
    old = tmp_path / "v1.safetensors"               # what format 1 wrote: the digest of the arrays only
    arrays = {"w": np.arange(3, dtype=np.float32)}
    structure = {"$dict": [["w", {"$array": "w"}]]}
    save_file(arrays, str(old), metadata={S._META_FORMAT: f"{S.FORMAT_NAME}/1", S._META_STRUCT: json.dumps(structure),
                                          S._META_DIGEST: S._digest(arrays)})
    np.testing.assert_array_equal(engine.load(old)["w"], arrays["w"])
