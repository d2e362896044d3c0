"""Checkpoint storage: round trip, keep-K, atomic writes, corrupt/truncated checkpoints skipped."""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from cluster import checkpoint as ck
from cluster.checkpoint import (CheckpointError, CheckpointWarning, checkpoint_digest, latest_valid_checkpoint,
                                list_checkpoints, load_checkpoint, save_checkpoint)


def arrays(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model.conv.weight": rng.standard_normal((4, 1, 3, 3)).astype(np.float32),
        "model.fc.bias": rng.standard_normal(10).astype(np.float64),
        "opt.step": np.array(17, dtype=np.int64),
        "mask": rng.random(5) > 0.5,
        "half": rng.standard_normal(3).astype(np.float16),
        "bytes": np.arange(7, dtype=np.uint8),
        "empty": np.zeros((0, 3), np.float32),
        "strided": np.arange(12, dtype=np.float32).reshape(3, 4).T,   # not contiguous
    }


def meta(step):
    g = np.random.default_rng(123)
    g.standard_normal(3)
    return {"epoch": 1, "sampler": {"epoch": 1, "position": 640}, "rng": g.bit_generator.state,
            "optimizer": {"lr": 0.003, "betas": [0.9, 0.999]}, "config_hash": "abc", "loss": 0.25, "step": step}


def test_round_trip(tmp_path):
    a = arrays()
    path = save_checkpoint(str(tmp_path), 200, a, meta(200), keep=3)
    assert os.path.basename(path) == "step-00000200"
    got, m = load_checkpoint(path)
    assert set(got) == set(a)
    for k in a:
        assert got[k].dtype == a[k].dtype and got[k].shape == a[k].shape
        np.testing.assert_array_equal(got[k], a[k])
    assert m["step"] == 200 and m["epoch"] == 1 and m["sampler"]["position"] == 640
    # the RNG state (128-bit ints) survives JSON and restores the generator exactly
    g = np.random.default_rng()
    g.bit_generator.state = m["rng"]
    ref = np.random.default_rng(123)
    ref.standard_normal(3)
    np.testing.assert_array_equal(g.standard_normal(4), ref.standard_normal(4))
    # plain safetensors + JSON on disk, no pickle
    st = load_file(os.path.join(path, "arrays.safetensors"))
    np.testing.assert_array_equal(st["model.conv.weight"], a["model.conv.weight"])
    with open(os.path.join(path, "meta.json")) as f:
        assert json.load(f)["format"] == ck.FORMAT
    with open(os.path.join(path, "arrays.safetensors"), "rb") as f:
        assert checkpoint_digest(path) == hashlib.sha256(f.read()).hexdigest()
    manifest = json.load(open(tmp_path / "manifest.json"))
    assert manifest["checkpoints"][0]["files"]["arrays.safetensors"]["sha256"] == checkpoint_digest(path)


def test_keep_last_k(tmp_path):
    for step in (10, 20, 30, 40, 50):
        save_checkpoint(str(tmp_path), step, arrays(step), {"epoch": 0}, keep=2)
    assert [e["step"] for e in list_checkpoints(str(tmp_path))] == [40, 50]
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("step-")) == ["step-00000040", "step-00000050"]
    assert latest_valid_checkpoint(str(tmp_path)).endswith("step-00000050")
    # saving the same step again replaces it
    save_checkpoint(str(tmp_path), 50, {"x": np.ones(2)}, {}, keep=2)
    got, _ = load_checkpoint(os.path.join(tmp_path, "step-00000050"))
    assert list(got) == ["x"]
    assert [e["step"] for e in list_checkpoints(str(tmp_path))] == [40, 50]


def _two(tmp_path):
    save_checkpoint(str(tmp_path), 100, arrays(1), meta(100), keep=5)
    newest = save_checkpoint(str(tmp_path), 200, arrays(2), meta(200), keep=5)
    return newest, os.path.join(str(tmp_path), "step-00000100")


def test_truncated_checkpoint_is_skipped(tmp_path):
    newest, older = _two(tmp_path)
    f = os.path.join(newest, "arrays.safetensors")
    size = os.path.getsize(f)
    with open(f, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.warns(CheckpointWarning, match="step-00000200.*truncated"):
        assert latest_valid_checkpoint(str(tmp_path)) == older
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(newest)
    got, m = load_checkpoint(older)
    assert m["step"] == 100


def test_bit_flip_is_skipped(tmp_path):
    newest, older = _two(tmp_path)
    f = os.path.join(newest, "arrays.safetensors")
    with open(f, "r+b") as fh:
        fh.seek(os.path.getsize(f) - 5)
        b = fh.read(1)
        fh.seek(-1, os.SEEK_CUR)
        fh.write(bytes([b[0] ^ 0x01]))
    with pytest.warns(CheckpointWarning, match="checksum mismatch"):
        assert latest_valid_checkpoint(str(tmp_path)) == older
    with pytest.raises(CheckpointError, match="checksum mismatch.*corrupt"):
        load_checkpoint(newest)


def test_corrupt_meta_is_skipped(tmp_path):
    newest, older = _two(tmp_path)
    with open(os.path.join(newest, "meta.json"), "r+b") as fh:
        fh.truncate(20)
    with pytest.warns(CheckpointWarning):
        assert latest_valid_checkpoint(str(tmp_path)) == older
    with pytest.raises(CheckpointError, match="meta.json"):
        load_checkpoint(newest)
    os.remove(os.path.join(newest, "meta.json"))
    with pytest.raises(CheckpointError, match="cannot read meta.json"):
        load_checkpoint(newest)


def test_missing_arrays_and_missing_dir(tmp_path):
    newest, older = _two(tmp_path)
    os.remove(os.path.join(newest, "arrays.safetensors"))
    with pytest.warns(CheckpointWarning):
        assert latest_valid_checkpoint(str(tmp_path)) == older
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(str(tmp_path / "step-00000999"))
    assert latest_valid_checkpoint(str(tmp_path / "nothing-here")) is None


def test_corrupt_manifest_falls_back_to_scan(tmp_path):
    newest, _ = _two(tmp_path)
    (tmp_path / "manifest.json").write_text('{"checkpoints": [')
    with pytest.warns(CheckpointWarning, match="manifest"):
        assert latest_valid_checkpoint(str(tmp_path)) == newest
    # the next save rewrites a good manifest
    with pytest.warns(CheckpointWarning):
        save_checkpoint(str(tmp_path), 300, arrays(3), {}, keep=5)
    assert [e["step"] for e in list_checkpoints(str(tmp_path))][-1] == 300


def test_all_corrupt_gives_none(tmp_path):
    newest, older = _two(tmp_path)
    for p in (newest, older):
        with open(os.path.join(p, "arrays.safetensors"), "ab") as fh:
            fh.write(b"junk")
    with pytest.warns(CheckpointWarning):
        assert latest_valid_checkpoint(str(tmp_path)) is None
    with pytest.warns(CheckpointWarning), pytest.raises(CheckpointError, match="no valid checkpoint"):
        load_checkpoint(str(tmp_path))


def test_load_from_checkpoint_root_picks_newest(tmp_path):
    newest, _ = _two(tmp_path)
    _, m = load_checkpoint(str(tmp_path))
    assert m["step"] == 200


def test_crash_during_save_leaves_previous_intact(tmp_path, monkeypatch):
    save_checkpoint(str(tmp_path), 100, arrays(1), {}, keep=3)
    real_write = ck._write_file
    calls = []

    def dying_write(path, data):
        calls.append(path)
        if path.endswith("meta.json"):
            real_write(path, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(ck, "_write_file", dying_write)
    with pytest.raises(CheckpointError, match="cannot write checkpoint step 200 .*No space left on device; free "
                                              "disk space there or set checkpoint.dir"):
        save_checkpoint(str(tmp_path), 200, arrays(2), {}, keep=3)
    monkeypatch.setattr(ck, "_write_file", real_write)
    assert calls and all(".tmp-" in c for c in calls)        # only ever wrote into the temporary dir
    assert not (tmp_path / "step-00000200").exists()
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    assert latest_valid_checkpoint(str(tmp_path)).endswith("step-00000100")
    assert [e["step"] for e in list_checkpoints(str(tmp_path))] == [100]


def test_checkpoint_dir_replaced_by_a_file_is_a_checkpoint_error(tmp_path):
    # a full disk or a checkpoint dir that became a file mid-run: one readable CheckpointError (the
    # worker prints it as one line), not a bare OSError traceback
    target = tmp_path / "checkpoints"
    target.write_text("x")
    with pytest.raises(CheckpointError, match=f"cannot write checkpoint step 5 in {target}: File exists"):
        save_checkpoint(str(target), 5, arrays(1), {}, keep=3)
    assert target.read_text() == "x"


def test_a_manifest_that_lies_is_named_not_the_file(tmp_path):
    save_checkpoint(str(tmp_path), 100, arrays(1), {}, keep=3)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["checkpoints"][0]["files"]["arrays.safetensors"]["sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.warns(CheckpointWarning, match="manifest.json lists sha256 000000000000... for arrays.safetensors, "
                                               "but the file and meta.json agree"):
        assert latest_valid_checkpoint(str(tmp_path)) is None


def test_stale_tmp_dirs_are_ignored_and_cleaned(tmp_path):
    save_checkpoint(str(tmp_path), 100, arrays(1), {}, keep=3)
    # a writer that died (pid that cannot exist) before the rename
    stale = tmp_path / ".tmp-step-00000200-999999999-abcd1234"
    stale.mkdir()
    (stale / "arrays.safetensors").write_bytes(b"partial")
    assert latest_valid_checkpoint(str(tmp_path)).endswith("step-00000100")
    save_checkpoint(str(tmp_path), 150, arrays(1), {}, keep=3)
    assert not stale.exists()


def test_unlisted_but_valid_checkpoint_is_found(tmp_path):
    """Crash after the rename but before the manifest update: the directory verifies itself."""
    newest, older = _two(tmp_path)
    manifest = json.load(open(tmp_path / "manifest.json"))
    manifest["checkpoints"] = [e for e in manifest["checkpoints"] if e["step"] != 200]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    assert latest_valid_checkpoint(str(tmp_path)) == newest


def test_bad_inputs(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(str(tmp_path), 1, {"a": np.ones(1)}, {"obj": object()})
    with pytest.raises(CheckpointError, match="dtype object"):
        save_checkpoint(str(tmp_path), 1, {"a": np.array([object()])}, {})
    with pytest.raises(CheckpointError, match="step"):
        save_checkpoint(str(tmp_path), -1, {}, {})
    with pytest.raises(CheckpointError, match="keep"):
        save_checkpoint(str(tmp_path), 1, {}, {}, keep=0)
    assert latest_valid_checkpoint(str(tmp_path)) is None   # nothing half-written was left behind


def test_newest_means_most_recently_written(tmp_path, monkeypatch):
    """A run started over (resume: never) in a directory holding an older run's later steps keeps
    its own checkpoints through the rotation, and resuming picks its own, not the older run's."""
    clock = [1000.0]
    monkeypatch.setattr(ck.time, "time", lambda: clock[0])
    for step in (30, 40):                     # the older run
        save_checkpoint(str(tmp_path), step, arrays(step), meta(step), keep=2)
        clock[0] += 10
    newer = save_checkpoint(str(tmp_path), 8, arrays(8), meta(8), keep=2)    # the run started over
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "step-00000008", "step-00000040"]
    assert latest_valid_checkpoint(str(tmp_path)) == newer
    assert latest_valid_checkpoint(str(tmp_path), since=1015.0) == newer
    assert latest_valid_checkpoint(str(tmp_path), since=1025.0) is None


def test_checkpoint_step_reads_the_directory_name(tmp_path):
    from cluster.checkpoint import checkpoint_step
    path = save_checkpoint(str(tmp_path), 800, {"w": np.zeros(2, np.float32)}, {})
    assert checkpoint_step(path) == 800 and checkpoint_step(path + "/") == 800
    assert checkpoint_step(str(tmp_path)) is None and checkpoint_step(None) is None
