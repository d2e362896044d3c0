"""Keras 3's vocabulary lookup layers, StringLookup and IntegerLookup, on NumPy and Python dicts.

Why NumPy: Keras builds these layers on TensorFlow hash tables, and TensorFlow is not a
dependency here.  The semantics follow keras.src.layers.preprocessing.index_lookup:

* Index layout.  In `output_mode="int"` the vocabulary is [mask_token (when set)] +
  [oov_token] * num_oov_indices + the learned tokens; in the other modes the mask token has
  no index (its occurrences are dropped) and the vocabulary starts with the OOV slots.
* adapt() counts every token (mask and OOV tokens excepted) and orders the vocabulary by
  descending count, ties broken by descending token order (Keras: `np.lexsort((tokens,
  counts))[::-1]`; strings compare as their UTF-8 bytes, which is Python's code-point order),
  then keeps the first `max_tokens - (number of special indices)`.
* tf_idf: idf = log(1 + num_documents / (1 + document_count)) per token, where each adapt row
  is a document; the special indices get the mean idf, `pad_to_max_tokens` pads with zeros.

Where this differs from Keras, on purpose and said here:
* num_oov_indices > 1 puts an OOV string in bucket BLAKE2b-64(utf-8 bytes) % num_oov_indices
  (little-endian 8-byte digest, hashlib), since TensorFlow's FarmHash64 is unavailable: the
  buckets are stable across runs and machines but are not the buckets Keras picks.  Integer
  OOV values use Keras' default `oov_method="floormod"` (value % num_oov_indices) exactly;
  `oov_method="farmhash"` hashes the decimal string with the same BLAKE2b stand-in.
* Outputs are dense: int64 engine Tensors for indices, float32 for one_hot / multi_hot /
  count / tf_idf (Keras' declared output dtype), a NumPy array of str for an inverted
  StringLookup; `sparse=True` is refused.
* The vocabulary size of a multi_hot / count / tf_idf layer is frozen at its first call (the
  width downstream layers were built for), not at its first adapt(), so a layer may be
  re-adapted until it is used.
* get_config() stores the whole vocabulary (and the idf weights) in the config, where Keras
  keeps an adapted vocabulary in a separate asset file, so the config alone rebuilds the layer.

These layers run on data outside a model (see DataPipelineLayer): dptrain's models carry
numeric tensors only.
"""
from __future__ import annotations

import collections
import hashlib
import os

import numpy as np

from ...tensor import Tensor
from .base import Layer

__all__ = ["DataPipelineLayer", "StringLookup", "IntegerLookup"]

_OUTPUT_MODES = ("int", "one_hot", "multi_hot", "count", "tf_idf")


class DataPipelineLayer(Layer):
    """Base of the text preprocessing layers: called on raw data (strings, lists), never inside a model.

    dptrain's Sequential and functional models feed float tensors from layer to layer, so strings
    cannot travel through a model; Keras itself recommends running these layers outside the
    compiled model on its JAX and PyTorch backends.  Called on a KerasTensor, or added to a
    Sequential model, such a layer raises one error that says to vectorize the data first."""

    _data_pipeline_only = True

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.built = True                 # no weights to create: count_params() is 0
        self.__dict__["_owner"] = None    # the TextVectorization holding this lookup (named in errors)

    def _who(self) -> str:
        layer = self.__dict__.get("_owner") or self
        return f'{type(layer).__name__} "{layer.name}"'

    def in_model_error(self) -> ValueError:
        if isinstance(self, _IndexLookup):
            fix = ("x = lookup(values), then model.fit(x, y) with a model whose first layer takes the ids "
                   "(or encodings)")
        else:
            fix = ("x = vectorize_layer(texts), then model.fit(x, y) with a model that starts at "
                   "keras.Input(shape=(output_sequence_length,), dtype='int64') -> "
                   "Embedding(vectorize_layer.vocabulary_size(), ...)")
        return ValueError(
            f"{self._who()} cannot be a layer of a model in dptrain's Keras facade: models carry numeric tensors "
            f"only, so it runs on the data before the model (as Keras advises on its JAX and PyTorch backends). "
            f"Vectorize the data first: {fix}")

    def __call__(self, inputs, training=None, mask=None, **kwargs):
        from ..functional import KerasTensor
        if isinstance(inputs, KerasTensor) or (isinstance(inputs, (list, tuple)) and inputs
                                               and isinstance(inputs[0], KerasTensor)):
            raise self.in_model_error()
        if kwargs:
            raise TypeError(f"{self._who()}: unexpected call argument(s) {', '.join(sorted(kwargs))}")
        return self.call(inputs)

    def forward(self, inputs, training=None):
        return self(inputs)

    def _build_for(self, input_shape):
        raise self.in_model_error()


def _numpy(data):
    return data.numpy() if isinstance(data, Tensor) else data


def _as_array(data, who, what):
    """np.asarray(data), with the ragged case (rows of different lengths) explained."""
    try:
        return np.asarray(_numpy(data))
    except ValueError as e:
        raise ValueError(f"{who}: {what} has rows of different lengths ({e}); give every row the same length "
                         "(pad with the mask token) or pass the rows one at a time") from None


def strings_of(data, who, what, encoding="utf-8", hint=""):
    """(shape, flat list of Python str) of an array-like of str / bytes: the one representation the
    string layers work on (dict lookups need Python objects)."""
    if isinstance(data, (str, bytes)):
        data = [data]
        scalar = True
    else:
        scalar = False
    arr = _as_array(data, who, what)
    shape = () if scalar else arr.shape
    if arr.size == 0:                           # np.asarray([]) is float64: nothing to check
        return shape, []
    if isinstance(data, (list, tuple)) and arr.dtype.kind in "US":
        arr = _as_array(np.array(data, dtype=object), who, what)   # numpy would turn ["a", 5] into strings
    if arr.dtype.kind == "U":
        return shape, arr.ravel().tolist()
    if arr.dtype.kind == "S":
        return shape, [b.decode(encoding) for b in arr.ravel().tolist()]
    if arr.dtype.kind == "O":
        out = []
        for v in arr.ravel().tolist():
            if isinstance(v, str):
                out.append(str(v))
            elif isinstance(v, bytes):
                out.append(v.decode(encoding))
            else:
                raise TypeError(f"{who}: {what} must hold strings (str or bytes), found a {type(v).__name__} "
                                f"({v!r:.60}){hint}")
        return shape, out
    raise TypeError(f"{who}: {what} must hold strings (str or bytes), got an array of {arr.dtype}{hint}")


def ints_of(data, who, what, hint=""):
    """(shape, flat list of Python int) of an array-like of integers (integral floats accepted:
    engine Tensors are float32)."""
    scalar = isinstance(data, (int, np.integer))
    arr = _as_array([data] if scalar else data, who, what)
    shape = () if scalar else arr.shape
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype(np.int64)
        except (TypeError, ValueError):
            raise TypeError(f"{who}: {what} must hold integers, found {arr.ravel()[:3].tolist()!r:.80}{hint}") from None
    if arr.dtype.kind in "iu":
        return shape, arr.astype(np.int64).ravel().tolist()
    if arr.dtype.kind in "fb":
        if arr.dtype.kind == "f" and arr.size and not bool(np.all(np.isfinite(arr) & (arr == np.floor(arr)))):
            raise TypeError(f"{who}: {what} must hold integers, got non-integer {arr.dtype} values{hint}")
        return shape, arr.astype(np.int64).ravel().tolist()
    raise TypeError(f"{who}: {what} must hold integers, got an array of {arr.dtype}{hint}")


def _blake2b_bucket(data: bytes, n: int) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") % n


def iter_adapt_batches(data, batch_size, steps, who, to_rows):
    """The batches adapt() counts: an array-like (list, tuple, numpy array, Tensor) is one data set
    whose first-axis entries are the documents (cut into batch_size rows when given; the counts do
    not depend on it), any other iterable yields batches (at most `steps` of them)."""
    if isinstance(data, (str, bytes)):
        raise TypeError(f"{who}: adapt() takes a collection of samples (a list or array), got a single "
                        f"{type(data).__name__}; wrap it in a list: adapt([text])")
    if isinstance(data, (list, tuple, np.ndarray, Tensor)):
        rows = to_rows(data)
        step = int(batch_size) if batch_size else max(1, len(rows))
        for i in range(0, len(rows), step):
            yield rows[i:i + step]
        return
    if not hasattr(data, "__iter__"):
        raise TypeError(f"{who}: adapt() takes a list / array of samples or an iterable of batches, got "
                        f"{type(data).__name__}")
    for i, batch in enumerate(data):
        if steps is not None and i >= int(steps):
            break
        yield batch


class _IndexLookup(DataPipelineLayer):
    """What StringLookup and IntegerLookup share (Keras' IndexLookup).  Subclasses say how to read
    tokens (`_tokens_of`), how to hash an OOV token, and how to read a vocabulary file."""

    _kind = "token"

    def __init__(self, max_tokens=None, num_oov_indices=1, mask_token=None, oov_token=None, vocabulary=None,
                 idf_weights=None, invert=False, output_mode="int", pad_to_max_tokens=False, sparse=False,
                 name=None, has_input_vocabulary=None, vocabulary_size=None, **kwargs):
        cls = type(self).__name__
        if max_tokens is not None and int(max_tokens) <= 1:
            raise ValueError(f"{cls}: max_tokens must be greater than 1 (it counts the mask and OOV indices "
                             f"too), got max_tokens={max_tokens}")
        if pad_to_max_tokens and max_tokens is None:
            raise ValueError(f"{cls}: pad_to_max_tokens=True needs max_tokens (the width to pad to)")
        if int(num_oov_indices) < 0:
            raise ValueError(f"{cls}: num_oov_indices must be >= 0, got {num_oov_indices}")
        output_mode = {"binary": "multi_hot", "tf-idf": "tf_idf"}.get(output_mode, output_mode)
        if output_mode not in _OUTPUT_MODES:
            raise ValueError(f"{cls}: output_mode must be one of {', '.join(map(repr, _OUTPUT_MODES))}, got "
                             f"output_mode={output_mode!r}")
        if invert and output_mode != "int":
            raise ValueError(f"{cls}: invert=True maps indices back to tokens, so output_mode must be 'int', got "
                             f"output_mode={output_mode!r}")
        if sparse:
            raise ValueError(f"{cls}: sparse=True is not supported (dptrain has no sparse tensors); leave "
                             "sparse=False for a dense output")
        if idf_weights is not None and output_mode != "tf_idf":
            raise ValueError(f"{cls}: idf_weights are only used with output_mode='tf_idf', got "
                             f"output_mode={output_mode!r}")
        if has_input_vocabulary is None:
            has_input_vocabulary = vocabulary is not None
        if output_mode == "tf_idf" and has_input_vocabulary and vocabulary is not None and idf_weights is None:
            raise ValueError(f"{cls}: with vocabulary= and output_mode='tf_idf', pass idf_weights= too (one "
                             "weight per vocabulary entry), or leave vocabulary out and adapt() the layer")
        super().__init__(name=name, **kwargs)
        self.max_tokens = None if max_tokens is None else int(max_tokens)
        self.num_oov_indices = int(num_oov_indices)
        self.mask_token, self.oov_token = mask_token, oov_token
        self.invert, self.output_mode = bool(invert), output_mode
        self.pad_to_max_tokens, self.sparse = bool(pad_to_max_tokens), False
        self._has_input_vocabulary = bool(has_input_vocabulary)
        self._tokens: list = []            # the learned / given tokens, in index order
        self._table: dict = {}             # token -> index
        self._idf = None                   # float32 idf per index (vocabulary_size entries), tf_idf only
        self._called_size = None           # vocabulary size when first called (non-int modes)
        # `vocabulary_size` (a key of Keras' config) is implied by the vocabulary, which the config holds
        self.reset_state()
        if vocabulary is not None:
            self.set_vocabulary(vocabulary, idf_weights)

    # ------------------------------------------------------------------ tokens (subclasses)
    def _tokens_of(self, data, what):
        raise NotImplementedError

    def _oov_bucket(self, token) -> int:
        raise NotImplementedError

    def _parse_line(self, line):
        return line

    # ------------------------------------------------------------------ vocabulary
    def _oov_start_index(self) -> int:
        return 1 if self.mask_token is not None and self.output_mode == "int" else 0

    def _token_start_index(self) -> int:
        return self._oov_start_index() + self.num_oov_indices

    def _special_tokens(self) -> list:
        return [self.mask_token] * self._oov_start_index() + [self.oov_token] * self.num_oov_indices

    def vocabulary_size(self) -> int:
        """The number of indices, the mask and OOV indices included (Keras' definition)."""
        return len(self._tokens) + self._token_start_index()

    def get_vocabulary(self, include_special_tokens=True) -> list:
        """Token per index: a token's position in the list is its index in 'int' mode."""
        return (self._special_tokens() if include_special_tokens else []) + list(self._tokens)

    def _read_vocabulary_file(self, path):
        if not os.path.isfile(path):
            raise ValueError(f"{self._who()}: vocabulary file {path} does not exist")
        if self.output_mode == "tf_idf":
            raise ValueError(f"{self._who()}: output_mode 'tf_idf' cannot load a vocabulary from a file (Keras' "
                             "rule); pass the vocabulary as a list together with idf_weights")
        with open(path, encoding="utf-8") as f:
            lines = [line[:-1] if line.endswith("\r") else line for line in f.read().split("\n")]
        while lines and lines[-1] == "":       # a final newline ends the last line, it adds no token
            lines.pop()
        try:
            return [self._parse_line(line) for line in lines]
        except ValueError as e:
            raise ValueError(f"{self._who()}: cannot read vocabulary file {path}: {e}") from None

    def set_vocabulary(self, vocabulary, idf_weights=None):
        """Replace the vocabulary (a list / array of tokens, or a text file with one token per line)
        and, in 'tf_idf' mode, the idf weights.  The special tokens may lead the list in this layer's
        order (get_vocabulary()'s output) or be left out; any other repeat is an error."""
        who = self._who()
        if self.output_mode == "tf_idf" and idf_weights is None:
            raise ValueError(f"{who}: in output_mode='tf_idf' set_vocabulary() needs idf_weights= (one weight per "
                             "vocabulary entry)")
        if self.output_mode != "tf_idf" and idf_weights is not None:
            raise ValueError(f"{who}: idf_weights are only used with output_mode='tf_idf', got "
                             f"output_mode={self.output_mode!r}")
        if isinstance(vocabulary, (str, os.PathLike)):
            vocab = self._read_vocabulary_file(os.fspath(vocabulary))
        else:
            shape, vocab = self._tokens_of(vocabulary, "the vocabulary")
            if len(shape) != 1:
                raise ValueError(f"{who}: the vocabulary must be a flat list of tokens, got shape {shape}")
        if not vocab:
            raise ValueError(f"{who}: cannot set an empty vocabulary")
        start = self._token_start_index()
        special = self._special_tokens()
        found_special = vocab[:start] == special
        tokens = vocab[start:] if found_special else vocab
        repeated = [t for t, c in collections.Counter(tokens).items() if c > 1]
        if repeated:
            raise ValueError(f"{who}: the vocabulary repeats {repeated[:10]!r}; every token may appear once "
                             "(deduplicate it, e.g. list(dict.fromkeys(vocab)))")
        if self.mask_token is not None and self.mask_token in tokens:
            raise ValueError(f"{who}: the vocabulary holds the mask token {self.mask_token!r} at index "
                             f"{len(vocab) - 1 - vocab[::-1].index(self.mask_token)}; leave the mask and OOV tokens "
                             f"out, or put them only at the start in exactly this order: {special!r}")
        if self.invert and self.oov_token is not None and self.oov_token in tokens:
            raise ValueError(f"{who}: the vocabulary holds the OOV token {self.oov_token!r} at index "
                             f"{len(vocab) - 1 - vocab[::-1].index(self.oov_token)}; leave the mask and OOV tokens "
                             f"out, or put them only at the start in exactly this order: {special!r}")
        new_size = start + len(tokens)
        if self.max_tokens is not None and new_size > self.max_tokens:
            raise ValueError(f"{who}: the vocabulary has {new_size} entries (special tokens included) but "
                             f"max_tokens={self.max_tokens}; raise max_tokens or shorten the vocabulary")
        idf = None
        if self.output_mode == "tf_idf":
            w = np.asarray(_numpy(idf_weights), dtype=np.float64)
            if w.ndim != 1:
                raise ValueError(f"{who}: idf_weights must be a 1-D list of numbers, got shape {w.shape}")
            if len(w) != len(vocab):
                raise ValueError(f"{who}: idf_weights has {len(w)} entries but the vocabulary has {len(vocab)}; "
                                 "give one weight per vocabulary entry")
            # special indices without weights of their own get the mean weight (Keras' choice)
            idf = w if found_special else np.concatenate([np.full(start, np.average(w)), w])
        self._check_size_unchanged(new_size)
        self._set_tokens(tokens)
        if idf is not None:
            self._idf = idf.astype(np.float32)

    def _set_tokens(self, tokens):
        start = self._token_start_index()
        self._tokens = list(tokens)
        self._table = {t: i for i, t in enumerate(self._tokens, start)}

    def _check_size_unchanged(self, new_size):
        if self._called_size is not None and new_size != self._called_size:
            raise RuntimeError(f"{self._who()}: with output_mode={self.output_mode!r} and pad_to_max_tokens=False "
                               f"the vocabulary size cannot change after the layer has been called (the output "
                               f"width was {self._called_size}, the new vocabulary has {new_size}); create a new "
                               "layer, or set max_tokens with pad_to_max_tokens=True for a fixed width")

    # ------------------------------------------------------------------ adapt
    def _check_adaptable(self):
        if self._has_input_vocabulary:
            raise ValueError(f"{self._who()}: cannot adapt a layer created with a fixed vocabulary= argument; "
                             "create it without vocabulary= to learn one, or call set_vocabulary() to replace it")

    def reset_state(self):
        """Forget the counts of an adapt() in progress."""
        self._token_counts = collections.Counter()
        self._document_counts = collections.Counter()
        self._num_documents = 0

    def _adapt_rows(self, data):
        """An array-like adapt() argument as an object array whose first-axis entries are documents
        (a flat list: one value per document, as Keras expands it)."""
        shape, flat = self._tokens_of(data, "adapt() data")
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape((1, 1) if not shape else (shape[0], 1) if len(shape) == 1 else shape)

    def adapt(self, data, batch_size=None, steps=None):
        """Learn the vocabulary (and the idf weights in 'tf_idf' mode) from `data`: a list or array of
        values (each first-axis entry one document), or an iterable of such batches (at most `steps`)."""
        self._check_adaptable()
        self.reset_state()
        for batch in iter_adapt_batches(data, batch_size, steps, self._who(), self._adapt_rows):
            self.update_state(batch)
        self.finalize_state()

    def update_state(self, data):
        """Add one batch to the counts; a 1-D batch is one document (Keras' rule)."""
        self._check_adaptable()
        shape, flat = self._tokens_of(data, "adapt() data")
        if len(shape) <= 1:
            docs = [flat]
        else:
            n = int(np.prod(shape[1:]))
            docs = [flat[i:i + n] for i in range(0, len(flat), n)] if n else [[] for _ in range(shape[0])]
        self._count_documents(docs)

    def _count_documents(self, docs):
        for doc in docs:
            self._token_counts.update(doc)
        if self.output_mode == "tf_idf":
            for doc in docs:
                self._document_counts.update(set(doc))
            self._num_documents += len(docs)

    def finalize_state(self):
        """Turn the counts into the vocabulary: most frequent first, ties by descending token."""
        counts = self._token_counts
        for special in (self.mask_token, self.oov_token):
            if special is not None:
                counts.pop(special, None)
        if not counts:               # nothing counted: the vocabulary stays as it was (Keras)
            self.reset_state()
            return
        # Keras: np.lexsort((tokens, counts))[::-1] -> count descending, then token descending
        ranked = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)
        start = self._token_start_index()
        if self.max_tokens:
            ranked = ranked[:self.max_tokens - start]
        tokens = [t for t, _ in ranked]
        self._check_size_unchanged(start + len(tokens))
        self._set_tokens(tokens)
        if self.output_mode == "tf_idf":
            df = np.array([self._document_counts[t] for t in tokens], dtype=np.float64)
            idf = np.log(1.0 + self._num_documents / (1.0 + df)).astype(np.float32)
            self._idf = np.concatenate([np.full(start, idf.mean(dtype=np.float32), np.float32), idf])
        self.reset_state()

    # ------------------------------------------------------------------ lookup
    def _ids(self, flat) -> np.ndarray:
        """Index of each token; the mask token gives 0 in 'int' mode and -1 (dropped) otherwise."""
        n = len(flat)
        table = self._table
        ids = np.fromiter((table.get(t, -1) for t in flat), dtype=np.int64, count=n)
        missing = ids < 0
        is_mask = None
        if self.mask_token is not None and missing.any():
            mask = self.mask_token
            is_mask = np.fromiter((t == mask for t in flat), dtype=bool, count=n)
            missing &= ~is_mask
        if missing.any():
            where = np.nonzero(missing)[0]
            if self.num_oov_indices == 0:
                bad = list(dict.fromkeys(flat[i] for i in where))
                raise ValueError(f"{self._who()}: with num_oov_indices=0 every input must be in the vocabulary; "
                                 f"found out-of-vocabulary values {bad[:10]!r}; set num_oov_indices=1 to map them "
                                 "to an OOV index")
            if self.num_oov_indices == 1:
                ids[where] = self._oov_start_index()
            else:
                cache: dict = {}
                ids[where] = [self._oov_start_index() + cache.setdefault(flat[i], self._oov_bucket(flat[i]))
                              for i in where]
        if is_mask is not None:
            ids[is_mask] = 0 if self.output_mode == "int" else -1
        return ids

    def _depth(self) -> int:
        if self.pad_to_max_tokens:
            return self.max_tokens
        if not self._tokens:
            raise RuntimeError(f"{self._who()}: with output_mode={self.output_mode!r} the vocabulary must be set "
                               "before the layer is called (its size is the output width): call adapt(data) or "
                               "pass vocabulary=")
        size = self.vocabulary_size()
        if self._called_size is None:
            self._called_size = size
        return size

    def _idf_for(self, depth):
        if self._idf is None:
            raise ValueError(f"{self._who()}: output_mode='tf_idf' needs idf weights: adapt() the layer or pass "
                             "vocabulary= with idf_weights=")
        w = self._idf[:depth]
        return np.concatenate([w, np.zeros(depth - len(w), np.float32)]) if len(w) < depth else w

    def _count_rows(self, ids, rows_of, n_rows, depth) -> np.ndarray:
        """(n_rows, depth) float32 encoding of the ids, row by row, in the layer's output mode."""
        keep = ids >= 0
        flat = rows_of[keep] * depth + ids[keep]
        counts = np.bincount(flat, minlength=n_rows * depth).reshape(n_rows, depth).astype(np.float32)
        if self.output_mode == "multi_hot":
            return (counts > 0).astype(np.float32)
        if self.output_mode == "tf_idf":
            return counts * self._idf_for(depth)
        return counts

    def _encode(self, ids, shape):
        """int ids of an input of `shape` -> the output of the layer's mode (Keras' encoding rules)."""
        if self.output_mode == "int":
            return Tensor(ids.reshape(shape))
        depth = self._depth()
        shape = tuple(shape)
        if self.output_mode == "one_hot":
            out_shape = (shape[:-1] if len(shape) > 1 and shape[-1] == 1 else shape) + (depth,)
            out = np.zeros((len(ids), depth), np.float32)
            keep = np.nonzero(ids >= 0)[0]
            out[keep, ids[keep]] = 1.0
            return Tensor(out.reshape(out_shape))
        if len(shape) > 2 and self.output_mode != "multi_hot":
            raise ValueError(f"{self._who()}: output_mode={self.output_mode!r} takes inputs of rank 2 or less (one "
                             f"row per sample), got shape {shape}")
        cols = shape[-1] if shape else 1
        n_rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
        rows_of = np.arange(len(ids)) // max(cols, 1)
        out = self._count_rows(ids, rows_of, n_rows, depth)
        return Tensor(out.reshape(tuple(shape[:-1]) + (depth,)))

    def _invert_lookup(self, inputs):
        shape, idx = ints_of(inputs, self._who(), "the input (indices, as invert=True maps indices to tokens)")
        idx = np.asarray(idx, dtype=np.int64)
        lut = np.empty(self.vocabulary_size(), dtype=object)
        lut[:] = self.get_vocabulary()
        out = np.empty(len(idx), dtype=object)
        out[:] = [self.oov_token] * len(idx)
        known = (idx >= self._token_start_index()) & (idx < len(lut))
        out[known] = lut[idx[known]]
        if self.mask_token is not None:
            out[idx == 0] = self.mask_token
        return out.reshape(shape)

    def call(self, inputs):
        if self.invert:
            return self._invert_output(self._invert_lookup(inputs))
        shape, flat = self._tokens_of(inputs, "the input")
        return self._encode(self._ids(flat), shape)

    def compute_output_shape(self, input_shape):
        input_shape = tuple(input_shape)
        if self.output_mode == "int":
            return input_shape
        depth = self.max_tokens if self.pad_to_max_tokens else self.vocabulary_size()
        if self.output_mode == "one_hot":
            return (input_shape[:-1] if len(input_shape) > 1 and input_shape[-1] == 1 else input_shape) + (depth,)
        return input_shape[:-1] + (depth,)

    # ------------------------------------------------------------------ config
    def _vocab_config(self):
        """The vocabulary and idf weights as saved: the full vocabulary (special tokens first, so
        set_vocabulary recognises them) and one weight per entry."""
        if not self._tokens:
            return None, None
        idf = None
        if self._idf is not None:
            idf = [float(v) for v in self._idf[:self.vocabulary_size()]]
        return self.get_vocabulary(), idf

    def get_config(self):
        vocab, idf = self._vocab_config()
        return {**super().get_config(), "invert": self.invert, "max_tokens": self.max_tokens,
                "num_oov_indices": self.num_oov_indices, "oov_token": self.oov_token, "mask_token": self.mask_token,
                "output_mode": self.output_mode, "sparse": False, "pad_to_max_tokens": self.pad_to_max_tokens,
                "vocabulary": vocab, "idf_weights": idf, "vocabulary_size": self.vocabulary_size(),
                "has_input_vocabulary": self._has_input_vocabulary}


class StringLookup(_IndexLookup):
    """keras.layers.StringLookup: strings -> vocabulary indices, or one_hot / multi_hot / count /
    tf_idf encodings; invert=True maps indices back to strings.

    StringLookup(max_tokens=None, num_oov_indices=1, mask_token=None, oov_token="[UNK]",
    vocabulary=None, idf_weights=None, invert=False, output_mode="int", pad_to_max_tokens=False,
    sparse=False, encoding="utf-8").  Inputs: lists / NumPy arrays of str or bytes (bytes decoded
    with `encoding`), any shape in 'int' mode.  With num_oov_indices > 1 an OOV string goes to
    bucket BLAKE2b-64(its UTF-8 bytes) % num_oov_indices, not Keras' FarmHash64 bucket (see the
    module docstring).  Use it on the data before the model: `ids = lookup(values)`."""

    _kind = "string"

    def __init__(self, max_tokens=None, num_oov_indices=1, mask_token=None, oov_token="[UNK]", vocabulary=None,
                 idf_weights=None, invert=False, output_mode="int", pad_to_max_tokens=False, sparse=False,
                 encoding="utf-8", name=None, **kwargs):
        self.__dict__["encoding"] = encoding
        for arg, value in (("mask_token", mask_token), ("oov_token", oov_token)):
            if value is not None and not isinstance(value, str):
                raise TypeError(f"StringLookup: {arg} must be a string or None, got {value!r}")
        super().__init__(max_tokens=max_tokens, num_oov_indices=num_oov_indices, mask_token=mask_token,
                         oov_token=oov_token, vocabulary=vocabulary, idf_weights=idf_weights, invert=invert,
                         output_mode=output_mode, pad_to_max_tokens=pad_to_max_tokens, sparse=sparse, name=name,
                         **kwargs)

    def _tokens_of(self, data, what):
        return strings_of(data, self._who(), what, self.encoding,
                          hint="; StringLookup maps strings (use IntegerLookup for integer values, or convert "
                               "with np.asarray(x).astype(str))")

    def _oov_bucket(self, token):
        return _blake2b_bucket(token.encode("utf-8"), self.num_oov_indices)

    def _invert_output(self, tokens):
        return tokens.astype(str) if tokens.size else np.zeros(tokens.shape, dtype=str)

    def get_config(self):
        return {**super().get_config(), "encoding": self.encoding}


class IntegerLookup(_IndexLookup):
    """keras.layers.IntegerLookup: integer values (e.g. raw category codes) -> vocabulary indices or
    encodings; invert=True maps indices back to the values.

    IntegerLookup(max_tokens=None, num_oov_indices=1, mask_token=None, oov_token=-1,
    vocabulary=None, vocabulary_dtype="int64", idf_weights=None, invert=False, output_mode="int",
    sparse=False, pad_to_max_tokens=False, oov_method="floormod").  Inputs: int arrays, lists, or
    engine Tensors (float values must be whole numbers).  OOV values with num_oov_indices > 1 go to
    bucket value % num_oov_indices, as Keras' default oov_method="floormod"."""

    _kind = "int"

    def __init__(self, max_tokens=None, num_oov_indices=1, mask_token=None, oov_token=-1, vocabulary=None,
                 vocabulary_dtype="int64", idf_weights=None, invert=False, output_mode="int", sparse=False,
                 pad_to_max_tokens=False, oov_method="floormod", name=None, **kwargs):
        if vocabulary_dtype != "int64":
            raise ValueError(f"IntegerLookup: only vocabulary_dtype='int64' is supported (as in Keras), got "
                             f"{vocabulary_dtype!r}")
        if oov_method not in ("floormod", "farmhash"):
            raise ValueError(f"IntegerLookup: oov_method must be 'floormod' or 'farmhash', got {oov_method!r}")
        for arg, value in (("mask_token", mask_token), ("oov_token", oov_token)):
            if value is not None and not isinstance(value, (int, np.integer)):
                raise TypeError(f"IntegerLookup: {arg} must be an integer or None, got {value!r}")
        self.__dict__["oov_method"] = oov_method
        super().__init__(max_tokens=max_tokens, num_oov_indices=num_oov_indices,
                         mask_token=None if mask_token is None else int(mask_token),
                         oov_token=None if oov_token is None else int(oov_token), vocabulary=vocabulary,
                         idf_weights=idf_weights, invert=invert, output_mode=output_mode,
                         pad_to_max_tokens=pad_to_max_tokens, sparse=sparse, name=name, **kwargs)

    def _tokens_of(self, data, what):
        return ints_of(data, self._who(), what, hint="; IntegerLookup maps integers (use StringLookup for strings)")

    def _parse_line(self, line):
        return int(line)

    def _oov_bucket(self, token):
        if self.oov_method == "floormod":
            return token % self.num_oov_indices            # Python's % is a floor mod, as tf.math.floormod
        return _blake2b_bucket(str(token).encode("ascii"), self.num_oov_indices)

    def _invert_output(self, tokens):
        return Tensor(tokens.astype(np.int64))

    def get_config(self):
        return {**super().get_config(), "vocabulary_dtype": "int64", "oov_method": self.oov_method}
