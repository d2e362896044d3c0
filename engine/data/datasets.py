"""MNIST and Fashion-MNIST from IDX files: found locally, downloaded, or embedded.

Where the files are looked for, in order (first directory holding both files of
the split wins; each directory D is tried as D, D/<name> and D/<TorchName>/raw):

1. `root=` passed to the constructor,
2. `$DPTRAIN_DATA` (one or more directories separated by os.pathsep),
3. `~/.cache/dptrain`,
4. `/usr/share/datasets/<name>` (Debian/Ubuntu: `apt install dataset-fashion-mnist`).

<name> is `fashion-mnist` or `mnist`; file names are the upstream ones,
`train-images-idx3-ubyte(.gz)`, `train-labels-idx1-ubyte(.gz)`, `t10k-...`.
If nothing is found and downloading is allowed (`download=True` and
`DPTRAIN_OFFLINE` unset), the files are downloaded and verified into
`<root or $DPTRAIN_DATA or ~/.cache/dptrain>/<name>/`.  Failing that,
FashionMNIST falls back to the subset embedded in the package (6000 train /
1000 test images, stratified; `.subset` is True and a warning says so) unless
`allow_embedded=False`; otherwise a DatasetNotFoundError lists every place
searched and how to get the data.
"""
from __future__ import annotations

import hashlib
import os
import sys
import warnings

import numpy as np

from . import download as _dl
from .dataset import Dataset
from .embedded import EMBEDDED_DIR, embedded_available
from .idx import IDXFormatError, read_idx

__all__ = ["MNIST", "FashionMNIST", "DatasetNotFoundError", "search_dirs", "find_dataset_dir"]

SYSTEM_DIR = "/usr/share/datasets"
_SPLITS = {True: "train", False: "t10k"}


def _first_caller_outside_engine() -> int:
    """warnings' stacklevel of the first frame outside this package: the user's line that loaded
    the data, whether through engine.data, the Keras datasets or the runtime."""
    engine_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(engine_dir):
        frame, level = frame.f_back, level + 1
    return level


class DatasetNotFoundError(FileNotFoundError):
    pass


def _file_candidates(prefix: str, kind: str):
    ndim = 3 if kind == "images" else 1
    base = f"{prefix}-{kind}-idx{ndim}-ubyte"
    return [base + ".gz", base, f"{prefix}-{kind}.idx{ndim}-ubyte", f"{prefix}-{kind}.idx{ndim}-ubyte.gz"]


def search_dirs(name: str, root=None, torch_name: str | None = None) -> list[str]:
    """Every directory examined, in order (duplicates removed)."""
    bases = []
    if root is not None:
        bases.append(os.path.expanduser(os.fspath(root)))
    env = os.environ.get("DPTRAIN_DATA", "")
    bases += [os.path.expanduser(p) for p in env.split(os.pathsep) if p.strip()]
    bases.append(os.path.expanduser(os.path.join("~", ".cache", "dptrain")))
    out = []
    for b in bases:                       # the name-specific places first, the bare directory last
        out.append(os.path.join(b, name))
        if torch_name:
            out.append(os.path.join(b, torch_name, "raw"))
        out.append(b)
    out.append(os.path.join(SYSTEM_DIR, name))
    seen, uniq = set(), []
    for d in out:
        key = os.path.abspath(d)
        if key not in seen:
            seen.add(key)
            uniq.append(d)
    return uniq


def _split_files(directory: str, prefix: str):
    found = []
    for kind in ("images", "labels"):
        hit = next((os.path.join(directory, f) for f in _file_candidates(prefix, kind)
                    if os.path.isfile(os.path.join(directory, f))), None)
        if hit is None:
            return None
        found.append(hit)
    return tuple(found)


def _payload_sha256(path: str) -> str:
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        import gzip
        raw = gzip.decompress(raw)
    return hashlib.sha256(raw).hexdigest()


def _belongs_elsewhere(name: str, directory: str, labels_path: str) -> bool:
    """A bare directory (not .../<name>) may hold another dataset's files under the same
    file names; reject labels whose digest is a known one of a *different* dataset."""
    if os.path.basename(os.path.normpath(directory)) in (name, "raw"):
        return False
    foreign = {spec.get("payload_sha256") for cls in _DATASETS if cls.name != name
               for fname, spec in cls.file_specs.items() if "labels" in fname}
    foreign.discard(None)
    return bool(foreign) and _payload_sha256(labels_path) in foreign


def find_dataset_dir(name: str, train: bool = True, root=None, torch_name=None):
    """(directory, (images_path, labels_path)) of the first complete copy, or None."""
    prefix = _SPLITS[bool(train)]
    for d in search_dirs(name, root, torch_name):
        files = _split_files(d, prefix)
        if files and not _belongs_elsewhere(name, d, files[1]):
            return d, files
    return None


def incomplete_copy(name: str, train: bool = True, root=None, torch_name=None, until: str | None = None):
    """A message about the first searched directory (before `until`) that holds only part of a split
    (its images but not its labels, or a directory / broken link where a file should be), else None.
    Such a copy is broken data, not absent data: falling back to a later place or to the embedded
    subset would train on something else than the user pointed at."""
    prefix = _SPLITS[bool(train)]
    stop = os.path.abspath(until) if until else None
    for d in search_dirs(name, root, torch_name):
        if stop is not None and os.path.abspath(d) == stop:
            return None
        state = {}
        for kind in ("images", "labels"):
            paths = [os.path.join(d, f) for f in _file_candidates(prefix, kind)]
            if any(os.path.isfile(p) for p in paths):
                state[kind] = None
            else:
                state[kind] = next((p for p in paths if os.path.lexists(p)), False)
        if all(v is False for v in state.values()) or all(v is None for v in state.values()):
            continue                                            # nothing here, or a complete copy
        problems = []
        for kind, v in state.items():
            if v is False:
                problems.append(f"{_file_candidates(prefix, kind)[0]} is missing")
            elif v is not None:
                problems.append(f"{v} is not a readable file")
        return (f"{d} holds an incomplete copy of the {name} {'training' if train else 'test'} split: "
                f"{' and '.join(problems)}; restore the file (or remove the incomplete copy to use another "
                f"place); the other split's files and the embedded subset are not used in its stead")
    return None


_warned_embedded = set()


class _IDXImageDataset(Dataset):
    """28x28 grayscale images + int labels read from IDX; samples are (image, label).

    .data     uint8 (N, 28, 28)     .targets  int64 (N,)
    dataset[i]            -> (float32 (1, 28, 28) in [0, 1], or transform(image); int label)
    get_batch(indices)    -> (float32 (B, 1, 28, 28) transformed, int64 (B,))  [DataLoader fast path]
    arrays()              -> the whole split as (float32 images, int64 labels)
    """

    name = ""
    torch_name = ""
    mean = 0.0
    std = 1.0
    classes: list = []
    mirrors: list = []
    file_specs: dict = {}
    embedded_ok = False

    def __init__(self, root=None, train: bool = True, transform=None, download: bool = True,
                 allow_embedded: bool = True):
        self.train = bool(train)
        self.transform = transform
        self.root = root
        self.subset = False
        prefix = _SPLITS[self.train]
        hit = find_dataset_dir(self.name, self.train, root, self.torch_name)
        broken = incomplete_copy(self.name, self.train, root, self.torch_name, until=hit[0] if hit else None)
        if broken:
            raise DatasetNotFoundError(broken)
        download_error = None
        if hit is None and download and not _dl.offline():
            try:
                hit = self._download(prefix)
            except _dl.DownloadError as e:
                download_error = str(e)
        if hit is None and allow_embedded and self.embedded_ok and embedded_available(self.name):
            hit = (EMBEDDED_DIR, _split_files(EMBEDDED_DIR, prefix))
            self.subset = True
            if self.name not in _warned_embedded:
                _warned_embedded.add(self.name)
                env = os.environ.get("DPTRAIN_DATA", "")
                bad_env = (f" DPTRAIN_DATA={env} is not a directory (check it);" if env and not os.path.isdir(env)
                           else "")
                warnings.warn(
                    f"{type(self).__name__}:{bad_env} no full copy found (searched: "
                    f"{', '.join(search_dirs(self.name, root, self.torch_name))}); using the subset "
                    "embedded in the package (6000 train / 1000 test images). Accuracy figures on it "
                    f"are not comparable with the full dataset. {self._how_to_get()}",
                    stacklevel=_first_caller_outside_engine())
        if hit is None:
            raise DatasetNotFoundError(self._not_found_message(prefix, download, download_error))
        self.source_dir, (img_path, lab_path) = hit
        self.data = read_idx(img_path, expect_shape=(None, 28, 28))
        self.targets = read_idx(lab_path, expect_ndim=1).astype(np.int64)
        if self.data.dtype != np.uint8:
            raise ValueError(f"{img_path}: expected uint8 images, found {self.data.dtype}")
        if len(self.data) != len(self.targets):
            raise IDXFormatError(f"{img_path} has {len(self.data)} images but {lab_path} has "
                                 f"{len(self.targets)} labels; the files belong to different splits or one is "
                                 f"damaged: delete both and download them again")
        if self.targets.size and (self.targets.min() < 0 or self.targets.max() >= len(self.classes)):
            raise IDXFormatError(f"{lab_path}: labels outside 0..{len(self.classes) - 1}; the file is damaged "
                                 f"or belongs to another dataset: delete it and download it again")

    # ---------------------------------------------------------------- locating
    @classmethod
    def _how_to_get(cls):
        return ("To get the full data: set DPTRAIN_DATA (or pass root=) to a directory holding the "
                "IDX files, or let it download (network, download=True, DPTRAIN_OFFLINE unset).")

    def _not_found_message(self, prefix, download, download_error):
        places = "\n  ".join(search_dirs(self.name, self.root, self.torch_name))
        files = " + ".join(_file_candidates(prefix, k)[0] for k in ("images", "labels"))
        if not download:
            dl = "download=False"
        elif _dl.offline():
            dl = "DPTRAIN_OFFLINE is set"
        else:
            dl = f"failed: {download_error}"
        apt = (f" or `apt install dataset-{self.name}` (installs to {SYSTEM_DIR}/{self.name})"
               if self.name == "fashion-mnist" else "")
        return (f"{type(self).__name__} ({'train' if self.train else 'test'} split) not found: "
                f"need {files} in one of:\n  {places}\nDownload: {dl}.\nFix: put the files in one of "
                f"those directories{apt}, set DPTRAIN_DATA=/path/to/dir, pass root=, or allow the "
                f"download from {self.mirrors[0] if self.mirrors else 'the upstream site'}.")

    def _download_root(self):
        if self.root is not None:
            return os.path.expanduser(os.fspath(self.root))
        env = [p for p in os.environ.get("DPTRAIN_DATA", "").split(os.pathsep) if p.strip()]
        if env:
            return os.path.expanduser(env[0])
        return os.path.expanduser(os.path.join("~", ".cache", "dptrain"))

    def _download(self, prefix):
        target = os.path.join(self._download_root(), self.name)
        paths = []
        for kind in ("images", "labels"):
            fname = _file_candidates(prefix, kind)[0]
            dest = os.path.join(target, fname)
            if not os.path.isfile(dest):
                _dl.download_file([m + fname for m in self.mirrors], dest, self.file_specs[fname])
            paths.append(dest)
        return target, tuple(paths)

    # ---------------------------------------------------------------- access
    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        img = self.data[index].astype(np.float32)[None]
        img *= np.float32(1.0 / 255.0)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def get_batch(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        x = self.data[idx].astype(np.float32)[:, None]
        x *= np.float32(1.0 / 255.0)
        if self.transform is not None:
            if getattr(self.transform, "batched", False):
                x = self.transform(x)
            else:
                x = np.stack([self.transform(s) for s in x])
        return x, self.targets[idx]

    def arrays(self, normalize: bool = False, layout: str = "NCHW"):
        """All samples as (float32 images in [0, 1] - or standardized with the dataset's
        mean/std when normalize=True - and int64 labels). layout: NCHW, NHWC, NHW or flat.
        The dataset's transform is not applied."""
        x = self.data.astype(np.float32)
        x *= np.float32(1.0 / 255.0)
        if normalize:
            x -= np.float32(self.mean)
            x *= np.float32(1.0 / self.std)
        shapes = {"NCHW": (-1, 1, 28, 28), "NHWC": (-1, 28, 28, 1), "NHW": (-1, 28, 28), "flat": (-1, 784)}
        if layout not in shapes:
            raise ValueError(f"layout must be one of {sorted(shapes)}, got {layout!r}")
        return x.reshape(shapes[layout]), self.targets.copy()

    def normalized(self, layout: str = "NCHW"):
        """arrays(normalize=True): images standardized with the training-set mean/std."""
        return self.arrays(normalize=True, layout=layout)

    def __repr__(self):
        return (f"{type(self).__name__}(split={'train' if self.train else 'test'}, n={len(self)}, "
                f"source={self.source_dir!r}{', embedded subset' if self.subset else ''})")


class FashionMNIST(_IDXImageDataset):
    name = "fashion-mnist"
    torch_name = "FashionMNIST"
    mean, std = 0.2860, 0.3530
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
               "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    mirrors = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
    # sha256 of the decompressed IDX payload (the .gz bytes differ between mirrors/repacks)
    file_specs = {
        "train-images-idx3-ubyte.gz": {"payload_sha256": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"},
        "train-labels-idx1-ubyte.gz": {"payload_sha256": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"},
        "t10k-images-idx3-ubyte.gz": {"payload_sha256": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"},
        "t10k-labels-idx1-ubyte.gz": {"payload_sha256": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"},
    }
    embedded_ok = True


class MNIST(_IDXImageDataset):
    name = "mnist"
    torch_name = "MNIST"
    mean, std = 0.1307, 0.3081
    classes = [str(i) for i in range(10)]
    mirrors = ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"]
    # md5 + size of the .gz as served by these mirrors (the values torchvision checks);
    # upstream publishes no sha256 for MNIST.
    file_specs = {
        "train-images-idx3-ubyte.gz": {"md5": "f68b3c2dcbeaaa9fbdd348bbdeb94873", "size": 9912422},
        "train-labels-idx1-ubyte.gz": {"md5": "d53e105ee54ea40749a09fcbcd1e9432", "size": 28881},
        "t10k-images-idx3-ubyte.gz": {"md5": "9fb629c4189551a2d022fa330f9573f3", "size": 1648877},
        "t10k-labels-idx1-ubyte.gz": {"md5": "ec29112dd5afa0611ce80d1b7f02629c", "size": 4542},
    }

    def __init__(self, root=None, train: bool = True, transform=None, download: bool = True,
                 allow_embedded: bool = False):
        super().__init__(root, train, transform, download, allow_embedded=False)


_DATASETS = (FashionMNIST, MNIST)
