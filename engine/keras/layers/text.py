"""keras.layers.TextVectorization on NumPy and Python strings: standardize -> split -> ngrams ->
vocabulary lookup (a StringLookup with mask_token "", so index 0 is padding and 1 is "[UNK]").

Why these exact string rules: a model trained on ids from Keras' layer must see the same ids here,
so the steps reproduce TensorFlow's string ops, not Python's look-alikes:
* "lower" is tf.strings.lower with its default encoding, which lowercases ASCII A-Z only
  ("ÉCOLE" -> "École"); Python's str.lower() would change "É" too.
* "strip_punctuation" removes Keras' regex class  [!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~']  (the 32
  ASCII punctuation characters of string.punctuation); other punctuation ("¿", "—", "…") stays.
* "whitespace" is tf.strings.split(): runs of ASCII whitespace (space, \\t \\n \\v \\f \\r) separate
  tokens and never produce empty ones; Python's str.split() would also split on "\\xa0", "\\u3000",
  "\\x1c"..."\\x1f".  "character" splits into Unicode code points (tf.strings.unicode_split).
* ngrams is tf.strings.ngrams(separator=" "): for each width in order, every run of that many
  tokens joined by one space; a sequence shorter than a width gives none of that width.

See lookup.py for the vocabulary rules (adapt order, tf_idf) and for why these layers run on the data
before a model rather than inside it.
"""
from __future__ import annotations

import re
import string

import numpy as np

from ...tensor import Tensor
from .lookup import DataPipelineLayer, StringLookup, iter_adapt_batches, strings_of

__all__ = ["TextVectorization"]

_STANDARDIZE = ("lower_and_strip_punctuation", "lower", "strip_punctuation")
_SPLIT = ("whitespace", "character")
_MODES = ("int", "multi_hot", "count", "tf_idf")
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_PUNCTUATION = re.compile("[" + re.escape(string.punctuation) + "]")
_ASCII_WORD = re.compile(r"[^ \t\n\v\f\r]+")


def ascii_lower(s: str) -> str:
    return s.lower() if s.isascii() else s.translate(_ASCII_LOWER)


def ngrams_of(tokens, widths):
    """tf.strings.ngrams(tokens, widths, separator=" ") for one sequence."""
    out = []
    for w in widths:
        out.extend(" ".join(tokens[i:i + w]) for i in range(len(tokens) - w + 1))
    return out


def _function_config(fn):
    """A callable standardize / split in a config: Keras' {"class_name": "function", ...} record; it
    comes back through custom_objects={name: fn} (or a registered Keras serializable in Keras)."""
    return {"module": getattr(fn, "__module__", None), "class_name": "function",
            "config": getattr(fn, "__name__", repr(fn)), "registered_name": getattr(fn, "__name__", None)}


def _function_from_config(value, what, custom_objects):
    if not isinstance(value, dict):
        return value
    name = value.get("config")
    fn = (custom_objects or {}).get(name) or (custom_objects or {}).get(value.get("registered_name"))
    if fn is None:
        raise ValueError(f"TextVectorization.from_config: {what} is the function {name!r}; pass it when loading, "
                         f"custom_objects={{{name!r}: {name}}}")
    return fn


class TextVectorization(DataPipelineLayer):
    """keras.layers.TextVectorization: a batch of strings -> int64 token ids (batch, length) or
    float32 multi_hot / count / tf_idf vectors (batch, vocabulary size).

    TextVectorization(max_tokens=None, standardize="lower_and_strip_punctuation",
    split="whitespace", ngrams=None, output_mode="int", output_sequence_length=None,
    pad_to_max_tokens=False, vocabulary=None, idf_weights=None, sparse=False, ragged=False,
    encoding="utf-8").  `adapt(texts)` learns the vocabulary; calling the layer on a list / array
    of str or bytes (shape (batch,) or (batch, 1)) vectorizes it.  In 'int' mode each row is padded
    with 0 (or truncated, keeping its first tokens) to `output_sequence_length`, or to the batch's
    longest row when that is None.  A callable `standardize` gets a NumPy object array of str of
    the input's shape and returns one of the same shape; a callable `split` gets a 1-D array of
    str and returns one sequence of tokens per string.

    Use it on the data, before the model: `x = vectorize_layer(texts); model.fit(x, y)`."""

    def __init__(self, max_tokens=None, standardize="lower_and_strip_punctuation", split="whitespace", ngrams=None,
                 output_mode="int", output_sequence_length=None, pad_to_max_tokens=False, vocabulary=None,
                 idf_weights=None, sparse=False, ragged=False, encoding="utf-8", name=None, **kwargs):
        cls = type(self).__name__
        if not (standardize is None or callable(standardize) or standardize in _STANDARDIZE):
            raise ValueError(f"{cls}: standardize must be None, a callable or one of {', '.join(map(repr, _STANDARDIZE))}, "
                             f"got {standardize!r}")
        if not (split is None or callable(split) or split in _SPLIT):
            raise ValueError(f"{cls}: split must be None, a callable, 'whitespace' or 'character', got {split!r}")
        output_mode = {"binary": "multi_hot", "tf-idf": "tf_idf"}.get(output_mode, output_mode)
        if output_mode not in _MODES:
            extra = (" (one_hot encodes single tokens: use StringLookup(output_mode='one_hot') on split tokens)"
                     if output_mode == "one_hot" else "")
            raise ValueError(f"{cls}: output_mode must be one of {', '.join(map(repr, _MODES))}, got "
                             f"output_mode={output_mode!r}{extra}")
        if isinstance(ngrams, list):
            ngrams = tuple(ngrams)
        if not (ngrams is None or (isinstance(ngrams, int) and not isinstance(ngrams, bool) and ngrams >= 1)
                or (isinstance(ngrams, tuple) and ngrams and all(isinstance(n, int) and n >= 1 for n in ngrams))):
            raise ValueError(f"{cls}: ngrams must be None, a positive integer (all widths up to it) or a tuple of "
                             f"positive integers, got ngrams={ngrams!r}")
        if output_sequence_length is not None:
            if output_mode != "int":
                raise ValueError(f"{cls}: output_sequence_length is only used with output_mode='int', got "
                                 f"output_mode={output_mode!r}")
            if not isinstance(output_sequence_length, (int, np.integer)) or output_sequence_length < 0:
                raise ValueError(f"{cls}: output_sequence_length must be None or a non-negative integer, got "
                                 f"{output_sequence_length!r}")
        if ragged:
            raise ValueError(f"{cls}: ragged=True is not supported (dptrain has no ragged tensors); leave it False "
                             "and set output_sequence_length for a fixed length (rows are padded with 0)")
        if sparse:
            raise ValueError(f"{cls}: sparse=True is not supported (dptrain has no sparse tensors); leave "
                             "sparse=False for a dense output")
        if max_tokens is not None and int(max_tokens) <= 1:
            raise ValueError(f"{cls}: max_tokens must be greater than 1 (it counts the padding and OOV indices "
                             f"too), got max_tokens={max_tokens}")
        if pad_to_max_tokens and max_tokens is None:
            raise ValueError(f"{cls}: pad_to_max_tokens=True needs max_tokens (the width to pad to)")
        has_input_vocabulary = kwargs.pop("has_input_vocabulary", vocabulary is not None)
        kwargs.pop("vocabulary_size", None)          # implied by the vocabulary (Keras' config key)
        super().__init__(name=name, **kwargs)
        self._standardize, self._split = standardize, split
        self._ngrams_arg = ngrams
        self._ngrams = tuple(range(1, ngrams + 1)) if isinstance(ngrams, int) else ngrams
        self._output_mode = output_mode
        self._output_sequence_length = None if output_sequence_length is None else int(output_sequence_length)
        self._encoding = encoding
        lookup = StringLookup(max_tokens=max_tokens, mask_token="", output_mode=output_mode,
                              pad_to_max_tokens=pad_to_max_tokens, encoding=encoding, name=f"{self.name}_lookup",
                              has_input_vocabulary=has_input_vocabulary)
        lookup.__dict__["_owner"] = self       # its errors name this layer
        self._lookup_layer = lookup
        if vocabulary is not None:
            lookup.set_vocabulary(vocabulary, idf_weights)
        elif idf_weights is not None:
            raise ValueError(f'{self._who()}: idf_weights= needs vocabulary= (one weight per entry)')

    # ------------------------------------------------------------------ the string steps
    def _strings(self, data, what="the input"):
        return strings_of(data, self._who(), what, self._encoding,
                          hint="; TextVectorization takes the raw texts (a list or array of str); for a data set "
                               "of (text, label) pairs pass only the texts, e.g. adapt([t for t, _ in pairs])")

    def _standardized(self, shape, flat):
        mode = self._standardize
        if mode in ("lower", "lower_and_strip_punctuation"):
            flat = [ascii_lower(s) for s in flat]
        if mode in ("strip_punctuation", "lower_and_strip_punctuation"):
            flat = [_PUNCTUATION.sub("", s) for s in flat]
        if callable(mode):
            arr = np.empty(len(flat), dtype=object)
            arr[:] = flat
            out_shape, flat = self._strings(mode(arr.reshape(shape)), "the output of the standardize callable")
            if tuple(out_shape) != tuple(shape):
                raise ValueError(f"{self._who()}: the standardize callable must return an array of the input's "
                                 f"shape {tuple(shape)}, got {tuple(out_shape)}")
        return flat

    def _split_rows(self, shape, flat):
        """The token sequence of each string (rank 1 input, or rank 2 with a last axis of 1)."""
        if len(shape) > 1 and shape[-1] != 1:
            raise ValueError(f"{self._who()}: to split strings the input must have shape (batch,) or (batch, 1), "
                             f"got shape {tuple(shape)}; pass one string per sample (for (text, label) pairs, only the texts)")
        if self._split == "whitespace":
            return [_ASCII_WORD.findall(s) for s in flat]
        if self._split == "character":
            return [list(s) for s in flat]
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        out = self._split(arr)
        out = out.tolist() if isinstance(out, np.ndarray) else list(out)
        if len(out) != len(flat):
            raise ValueError(f"{self._who()}: the split callable must return one token sequence per string "
                             f"({len(flat)}), got {len(out)}")
        return [self._strings(list(r), "a token sequence from the split callable")[1] for r in out]

    def _preprocess(self, data):
        """-> (rows, shape, scalar): the token rows of a split input (shape None), or the flat
        standardized strings and the input shape when split is None."""
        shape, flat = self._strings(data)
        flat = self._standardized(shape, flat)
        scalar = len(shape) == 0
        if self._split is None:
            if self._ngrams is None:
                return flat, tuple(shape), scalar
            cols = shape[-1] if len(shape) > 1 else 1
            rows = [flat[i:i + cols] for i in range(0, len(flat), cols)] if cols else [[] for _ in range(len(flat))]
        else:
            rows = self._split_rows(shape, flat)
        if self._ngrams is not None:
            rows = [ngrams_of(r, self._ngrams) for r in rows]
        return rows, None, scalar

    # ------------------------------------------------------------------ call
    def call(self, inputs):
        lookup = self._lookup_layer
        rows, shape, scalar = self._preprocess(inputs)
        if shape is not None:                       # split=None, no ngrams: one token per string
            ids = lookup._ids(rows)
            if self._output_mode == "int":
                out = ids.reshape(shape)
                if self._output_sequence_length is not None:
                    out = _fit_length(out.reshape(-1, 1) if out.ndim < 2 else out, self._output_sequence_length)
                return Tensor(out)
            return lookup._encode(ids, shape if len(shape) > 1 else shape + (1,))
        lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
        ids = lookup._ids([t for r in rows for t in r])
        rows_of = np.repeat(np.arange(len(rows)), lengths)
        if self._output_mode == "int":
            width = self._output_sequence_length
            if width is None:
                width = int(lengths.max()) if len(lengths) else 0
            pos = np.arange(len(ids)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            keep = pos < width
            out = np.zeros((len(rows), width), dtype=np.int64)
            out[rows_of[keep], pos[keep]] = ids[keep]
        else:
            out = lookup._count_rows(ids, rows_of, len(rows), lookup._depth())
        return Tensor(out[0] if scalar else out)

    def compute_output_shape(self, input_shape):
        if self._output_mode == "int":
            return (input_shape[0], self._output_sequence_length)
        depth = self._lookup_layer.max_tokens if self._lookup_layer.pad_to_max_tokens else self.vocabulary_size()
        return (input_shape[0], depth)

    # ------------------------------------------------------------------ vocabulary
    def adapt(self, data, batch_size=None, steps=None):
        """Learn the vocabulary (and idf weights in 'tf_idf' mode) from texts: a list / array of
        strings (each one document; `batch_size` only sets how many are processed at a time) or an
        iterable of batches of strings (at most `steps` batches).  Order: most frequent token first,
        ties by descending token; the vocabulary keeps max_tokens entries, "" and "[UNK]" included."""
        lookup = self._lookup_layer
        lookup._check_adaptable()
        lookup.reset_state()
        for batch in iter_adapt_batches(data, batch_size, steps, self._who(), self._adapt_rows):
            self.update_state(batch)
        self.finalize_state()

    def _adapt_rows(self, data):
        shape, flat = self._strings(data, "adapt() data")
        arr = np.empty(len(flat), dtype=object)
        arr[:] = flat
        return arr.reshape((1,) if not shape else shape)

    def update_state(self, data):
        """Count the tokens of one batch of texts (each string one document)."""
        self._lookup_layer._check_adaptable()
        rows, shape, _ = self._preprocess(data)
        if shape is not None:                       # split=None: each (row of) string(s) is a document
            cols = shape[-1] if len(shape) > 1 else 1
            rows = [rows[i:i + cols] for i in range(0, len(rows), cols)] if cols else []
        self._lookup_layer._count_documents(rows)

    def finalize_state(self):
        self._lookup_layer.finalize_state()

    def reset_state(self):
        self._lookup_layer.reset_state()

    def get_vocabulary(self, include_special_tokens=True):
        """Token per index: '' (padding, 0) and '[UNK]' (1) first in 'int' mode, '[UNK]' first otherwise."""
        return self._lookup_layer.get_vocabulary(include_special_tokens)

    def vocabulary_size(self):
        return self._lookup_layer.vocabulary_size()

    def set_vocabulary(self, vocabulary, idf_weights=None):
        """Replace the vocabulary (list / array / text file path) and, for 'tf_idf', the idf weights."""
        self._lookup_layer.set_vocabulary(vocabulary, idf_weights)

    # ------------------------------------------------------------------ config
    def get_config(self):
        lookup = self._lookup_layer
        vocab, idf = lookup._vocab_config()
        std, split = self._standardize, self._split
        return {**super().get_config(), "max_tokens": lookup.max_tokens,
                "standardize": _function_config(std) if callable(std) else std,
                "split": _function_config(split) if callable(split) else split,
                "ngrams": list(self._ngrams_arg) if isinstance(self._ngrams_arg, tuple) else self._ngrams_arg,
                "output_mode": self._output_mode, "output_sequence_length": self._output_sequence_length,
                "pad_to_max_tokens": lookup.pad_to_max_tokens, "sparse": False, "ragged": False,
                "vocabulary": vocab, "idf_weights": idf, "encoding": self._encoding,
                "vocabulary_size": self.vocabulary_size(), "has_input_vocabulary": lookup._has_input_vocabulary}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        for key in ("standardize", "split"):
            if key in config:
                config[key] = _function_from_config(config[key], key, custom_objects)
        return cls(**config)


def _fit_length(ids, length):
    """Pad the last axis with 0 or truncate it (keeping the first entries) to `length`."""
    if ids.shape[-1] >= length:
        return ids[..., :length]
    pad = np.zeros(ids.shape[:-1] + (length - ids.shape[-1],), dtype=ids.dtype)
    return np.concatenate([ids, pad], axis=-1)
