"""The Fashion-MNIST subset shipped inside the package, and how it was built.

A fresh clone with no network and no system dataset must still train and test
end to end, so `engine/data/_embedded/` holds a real, stratified slice of
Fashion-MNIST (600 training and 100 test images per class, 7000 in all, the
first ones of each class in the original order) as IDX .gz files, with
`SOURCE.json` recording the upstream sha256 of each source file and of each
embedded file.  `build_embedded_subset` is the exact code that produced it:

    python -c "from engine.data.embedded import build_embedded_subset as b; \
               b('/usr/share/datasets/fashion-mnist')"
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np

from .idx import read_idx, write_idx

EMBEDDED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_embedded")
PER_CLASS = {"train": 600, "t10k": 100}
UPSTREAM = "https://github.com/zalandoresearch/fashion-mnist"


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _payload_sha256(path: str) -> str:
    """sha256 of the decompressed IDX bytes: independent of how the .gz was written."""
    import gzip
    h = hashlib.sha256()
    with gzip.open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stratified_first(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` samples of every class, in original order."""
    picks = [np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)]
    for c, p in zip(np.unique(labels), picks):
        if len(p) < per_class:
            raise ValueError(f"class {c} has only {len(p)} samples, {per_class} requested")
    return np.sort(np.concatenate(picks))


def build_embedded_subset(src_dir: str, dst_dir: str = EMBEDDED_DIR) -> dict:
    """Write the stratified subset of the full Fashion-MNIST in `src_dir` to `dst_dir`."""
    os.makedirs(dst_dir, exist_ok=True)
    source = {
        "dataset": "fashion-mnist",
        "upstream": UPSTREAM,
        "license": "MIT (Expat), Copyright 2017 Zalando SE",
        "selection": "per split, the first N samples of each of the 10 classes in the original "
                     "file order (train N=600, test N=100), kept in original order",
        "builder": "engine.data.embedded.build_embedded_subset",
        "source_copy": "Debian package dataset-fashion-mnist; its .gz files differ from the upstream "
                       "downloads only in the gzip header (no file name), the IDX payload is the same "
                       "(see uncompressed_sha256)",
        "source_files": {},
        "files": {},
    }
    for split, n in PER_CLASS.items():
        img_src = os.path.join(src_dir, f"{split}-images-idx3-ubyte.gz")
        lab_src = os.path.join(src_dir, f"{split}-labels-idx1-ubyte.gz")
        images = read_idx(img_src, expect_ndim=3)
        labels = read_idx(lab_src, expect_ndim=1)
        idx = stratified_first(labels, n)
        for src, arr, kind in ((img_src, images, "images"), (lab_src, labels, "labels")):
            name = os.path.basename(src)
            dst = os.path.join(dst_dir, name)
            write_idx(dst, arr[idx])
            source["source_files"][name] = {"sha256": _sha256(src), "count": int(arr.shape[0]),
                                            "uncompressed_sha256": _payload_sha256(src)}
            source["files"][name] = {"sha256": _sha256(dst), "count": int(len(idx)),
                                     "bytes": os.path.getsize(dst)}
    with open(os.path.join(dst_dir, "SOURCE.json"), "w") as f:
        json.dump(source, f, indent=2, sort_keys=True)
        f.write("\n")
    return source


def embedded_available(name: str) -> bool:
    return name == "fashion-mnist" and os.path.isfile(os.path.join(EMBEDDED_DIR, "SOURCE.json"))


def verify_embedded() -> None:
    """Check every embedded file against SOURCE.json (raises ValueError on a mismatch)."""
    with open(os.path.join(EMBEDDED_DIR, "SOURCE.json")) as f:
        source = json.load(f)
    for name, info in source["files"].items():
        path = os.path.join(EMBEDDED_DIR, name)
        got = _sha256(path)
        if got != info["sha256"]:
            raise ValueError(f"embedded dataset file {path} is corrupt: sha256 {got}, "
                             f"SOURCE.json says {info['sha256']}; reinstall dptrain")
