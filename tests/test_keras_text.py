"""Keras 3's text preprocessing layers (TextVectorization, StringLookup, IntegerLookup) on NumPy.

Expected values are derived by hand from Keras' documented rules (cited at each test) and from the
examples in Keras' own docstrings (keras/src/layers/preprocessing/string_lookup.py,
integer_lookup.py, text_vectorization.py)."""
import hashlib
import json
import math
import re

import numpy as np
import pytest

from engine import keras
from engine.keras import layers

pytestmark = pytest.mark.timeout(120)

# Four documents with ties in the counts.  After "lower_and_strip_punctuation" and whitespace split:
#   "the cat sat" | "the dog sat" | "a cat a dog" | "émile saw the cat"
# token counts: the 3, cat 3, sat 2, dog 2, a 2, émile 1, saw 1
# document counts: the 3, cat 3, sat 2, dog 2, a 1, émile 1, saw 1
CORPUS = ["The cat sat.", "the dog sat", "A cat, a DOG!", "émile  saw\tthe cat"]
# Keras (index_lookup.finalize_state): "sort our tokens by count and break ties by sorting the tokens
# themselves": np.lexsort((tokens, counts))[::-1], i.e. count descending, then token descending
# (StringLookup.adapt's docstring: "ties broken by sort order of the tokens (high to low)").
#   count 3: "the" > "cat";  count 2: "sat" > "dog" > "a";  count 1: "émile" (U+00E9) > "saw"
LEARNED = ["the", "cat", "sat", "dog", "a", "émile", "saw"]


def arr(t):
    return np.asarray(t)


def tokens_after(text, **kwargs):
    """The token sequence TextVectorization(**kwargs) makes of `text`, read back through its vocabulary."""
    vec = layers.TextVectorization(**kwargs)
    vec.adapt([text])
    vocab = vec.get_vocabulary()
    return [vocab[i] for i in arr(vec([text]))[0]]


# ---------------------------------------------------------------- vocabulary order and indices
def test_adapt_orders_by_count_then_descending_token():
    vec = layers.TextVectorization()
    vec.adapt(CORPUS)
    assert vec.get_vocabulary() == ["", "[UNK]"] + LEARNED
    assert vec.get_vocabulary(include_special_tokens=False) == LEARNED
    assert vec.vocabulary_size() == 9
    out = vec(["the cat", "saw a zebra"])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(arr(out), [[2, 3, 0], [8, 6, 1]])    # padded to the longest row with 0


def test_max_tokens_keeps_the_most_frequent_including_special_indices():
    vec = layers.TextVectorization(max_tokens=6)           # "", "[UNK]" + 4 learned tokens
    vec.adapt(CORPUS)
    assert vec.get_vocabulary() == ["", "[UNK]", "the", "cat", "sat", "dog"]
    np.testing.assert_array_equal(arr(vec(["a dog saw"])), [[1, 5, 1]])
    lookup = layers.StringLookup(max_tokens=3)              # "[UNK]" + 2
    lookup.adapt([["b", "a", "c"], ["c", "a", "d"]])        # a 2, c 2, b 1, d 1 -> c, a
    assert lookup.get_vocabulary() == ["[UNK]", "c", "a"]


def test_string_lookup_matches_keras_docstring_examples():
    data = [["a", "c", "d"], ["d", "z", "b"]]
    layer = layers.StringLookup()
    layer.adapt(data)
    assert layer.get_vocabulary() == ["[UNK]", "d", "z", "c", "b", "a"]
    np.testing.assert_array_equal(arr(layer(data)), [[5, 3, 1], [1, 2, 4]])
    layer = layers.StringLookup(vocabulary=["a", "b", "c", "d"])
    np.testing.assert_array_equal(arr(layer(data)), [[1, 3, 4], [4, 0, 2]])


def test_integer_lookup_adapt_ties_mask_and_floormod_oov():
    layer = layers.IntegerLookup()
    layer.adapt(np.array([[3, 3, 7], [7, 1, 2]]))          # 3: 2, 7: 2, 1: 1, 2: 1 -> 7, 3, 2, 1
    assert layer.get_vocabulary() == [-1, 7, 3, 2, 1]
    np.testing.assert_array_equal(arr(layer(np.array([7, 1, 99]))), [1, 4, 0])
    # Keras' docstring: vocab [12, 36, 1138, 42], two OOV indices -> 37 % 2 = 1, 1000 % 2 = 0 (floormod)
    layer = layers.IntegerLookup(vocabulary=[12, 36, 1138, 42], num_oov_indices=2)
    np.testing.assert_array_equal(arr(layer(np.array([[12, 1138, 42], [37, 1000, 36]]))), [[2, 4, 5], [1, 0, 3]])
    masked = layers.IntegerLookup(vocabulary=[12, 36], mask_token=0)
    assert masked.get_vocabulary() == [0, -1, 12, 36]
    np.testing.assert_array_equal(arr(masked(np.array([36.0, 0.0, 5.0], np.float32))), [3, 0, 1])


# ---------------------------------------------------------------- OOV, mask, invert
def test_mask_token_takes_index_0_in_int_mode_and_is_dropped_otherwise():
    lookup = layers.StringLookup(vocabulary=["a", "b"], mask_token="[MASK]")
    assert lookup.get_vocabulary() == ["[MASK]", "[UNK]", "a", "b"]
    np.testing.assert_array_equal(arr(lookup(["a", "[MASK]", "q"])), [2, 0, 1])
    hot = layers.StringLookup(vocabulary=["a", "b"], mask_token="", output_mode="multi_hot")
    assert hot.get_vocabulary() == ["[UNK]", "a", "b"]
    np.testing.assert_array_equal(arr(hot([["a", "", ""], ["b", "z", ""]])), [[0, 1, 0], [1, 0, 1]])


def test_several_oov_indices_hash_strings_with_blake2b():
    lookup = layers.StringLookup(vocabulary=["a", "b"], num_oov_indices=3)
    words = ["m", "zebra", "naïve", "a"]
    expected = [int.from_bytes(hashlib.blake2b(w.encode(), digest_size=8).digest(), "little") % 3 for w in words[:3]]
    np.testing.assert_array_equal(arr(lookup(words)), expected + [3])
    np.testing.assert_array_equal(arr(lookup(words)), arr(layers.StringLookup(vocabulary=["a", "b"],
                                                                              num_oov_indices=3)(words)))


def test_no_oov_indices_rejects_unknown_values():
    lookup = layers.StringLookup(vocabulary=["a"], num_oov_indices=0)
    np.testing.assert_array_equal(arr(lookup(["a"])), [0])
    with pytest.raises(ValueError, match=r"StringLookup .*'zz'.*num_oov_indices=1"):
        lookup(["a", "zz"])


def test_invert_round_trip_with_mask_and_oov():
    fwd = layers.StringLookup(vocabulary=["a", "b", "c"], mask_token="")
    inv = layers.StringLookup(vocabulary=fwd.get_vocabulary(), mask_token="", invert=True)
    data = np.array([["a", "c", ""], ["zz", "b", "a"]])
    back = inv(fwd(data))
    assert isinstance(back, np.ndarray)
    np.testing.assert_array_equal(back, [["a", "c", ""], ["[UNK]", "b", "a"]])
    ints = layers.IntegerLookup(vocabulary=[12, 36, 1138, 42])
    inv_ints = layers.IntegerLookup(vocabulary=ints.get_vocabulary(), invert=True)
    np.testing.assert_array_equal(arr(inv_ints(ints(np.array([[12, 1138, 42], [42, 1000, 36]])))),
                                  [[12, 1138, 42], [42, -1, 36]])


# ---------------------------------------------------------------- multi_hot / count / one_hot / tf_idf
def test_multi_hot_count_one_hot_by_hand():
    vocab = ["a", "b", "c", "d"]                            # indices: [UNK] 0, a 1, b 2, c 3, d 4
    data = [["a", "c", "d", "d"], ["d", "z", "b", "z"]]
    hot = layers.StringLookup(vocabulary=vocab, output_mode="multi_hot")(data)
    count = layers.StringLookup(vocabulary=vocab, output_mode="count")(data)
    assert hot.dtype == np.float32 and count.dtype == np.float32
    np.testing.assert_array_equal(arr(hot), [[0, 1, 0, 1, 1], [1, 0, 1, 0, 1]])
    np.testing.assert_array_equal(arr(count), [[0, 1, 0, 1, 2], [2, 0, 1, 0, 1]])
    one = layers.StringLookup(vocabulary=vocab, output_mode="one_hot")
    np.testing.assert_array_equal(arr(one(["a", "z"])), [[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    assert one(np.array([["a"], ["b"]])).shape == (2, 5)      # a last axis of 1 is encoded in place
    vec = layers.TextVectorization(output_mode="count")
    vec.adapt(CORPUS)                                      # [UNK], the, cat, sat, dog, a, émile, saw
    np.testing.assert_array_equal(arr(vec(["The cat, the CAT!", "a zebra"])),
                                  [[0, 2, 2, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 1, 0, 0]])
    padded = layers.TextVectorization(output_mode="multi_hot", max_tokens=12, pad_to_max_tokens=True)
    padded.adapt(CORPUS)
    assert padded(["the"]).shape == (1, 12)


def test_tf_idf_adapt_uses_keras_idf_formula():
    vec = layers.TextVectorization(output_mode="tf_idf")
    vec.adapt(CORPUS)
    assert vec.get_vocabulary() == ["[UNK]"] + LEARNED     # no padding index outside 'int' mode
    # Keras: idf = log(1 + num_documents / (1 + token_document_count)), 4 documents
    df = {"the": 3, "cat": 3, "sat": 2, "dog": 2, "a": 1, "émile": 1, "saw": 1}
    idf = [math.log(1 + 4 / (1 + df[t])) for t in LEARNED]
    unk = np.mean(np.float32(idf))                          # OOV gets the mean idf (Keras' padding)
    out = arr(vec(["the cat the", "zebra a a"]))
    expected = np.zeros((2, 8), np.float32)
    expected[0, 1], expected[0, 2] = 2 * idf[0], idf[1]
    expected[1, 0], expected[1, 5] = unk, 2 * idf[4]
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_tf_idf_with_given_weights_matches_keras_docstring():
    data = [["a", "c", "d", "d"], ["d", "z", "b", "z"]]
    layer = layers.StringLookup(output_mode="tf_idf")
    layer.set_vocabulary(["a", "b", "c", "d"], idf_weights=[0.25, 0.75, 0.6, 0.4])
    np.testing.assert_allclose(arr(layer(data)), [[0, 0.25, 0, 0.6, 0.8], [1.0, 0, 0.75, 0, 0.4]], rtol=1e-6)
    layer = layers.StringLookup(output_mode="tf_idf", vocabulary=["[UNK]", "a", "b", "c", "d"],
                                idf_weights=[0.9, 0.25, 0.75, 0.6, 0.4])
    np.testing.assert_allclose(arr(layer(data)), [[0, 0.25, 0, 0.6, 0.8], [1.8, 0, 0.75, 0, 0.4]], rtol=1e-6)


# ---------------------------------------------------------------- standardize / split / ngrams
def test_standardize_follows_tensorflow_string_ops():
    # tf.strings.lower (default encoding) lowers ASCII only; Keras' punctuation class is ASCII only
    assert tokens_after("ÉCOLE Ünïcode, Hello!!") == ["École", "Ünïcode", "hello"]
    assert tokens_after("don't stop—now…¿ok? (yes)") == ["dont", "stop—now…¿ok", "yes"]
    assert tokens_after("A-B.c", standardize="lower") == ["a-b.c"]
    assert tokens_after("A-B.c", standardize="strip_punctuation") == ["ABc"]
    assert tokens_after("A-B.c", standardize=None) == ["A-B.c"]
    keras_regex = r'[!"#$%&()\*\+,-\./:;<=>?@\[\\\]^_`{|}~\']'    # Keras' pattern, as the reference
    ascii_chars = "".join(map(chr, range(32, 127)))
    assert tokens_after("x" + ascii_chars.replace(" ", "") + "x", standardize="strip_punctuation") == \
        [re.sub(keras_regex, "", "x" + ascii_chars.replace(" ", "") + "x")]
    shout = layers.TextVectorization(standardize=lambda a: np.array([s.upper() for s in a.ravel()],
                                                                    dtype=object).reshape(a.shape))
    shout.adapt(["ab cd"])
    assert shout.get_vocabulary(include_special_tokens=False) == ["CD", "AB"]


def test_split_whitespace_character_callable():
    # tf.strings.split: runs of ASCII whitespace, no empty tokens; "\xa0" is not a separator
    assert tokens_after("  a \t b\n\nc\xa0d  ", standardize=None) == ["a", "b", "c\xa0d"]
    assert tokens_after("añb c", split="character") == ["a", "ñ", "b", " ", "c"]
    assert tokens_after("a,b;c", standardize=None, split=lambda a: [s.split(",") for s in a]) == ["a", "b;c"]
    whole = layers.TextVectorization(split=None)
    whole.adapt(["Hello World", "hello world."])
    assert whole.get_vocabulary() == ["", "[UNK]", "hello world"]
    np.testing.assert_array_equal(arr(whole(["HELLO WORLD", "x"])), [2, 1])


def test_ngrams_int_and_tuple():
    assert tokens_after("a b c", ngrams=2) == ["a", "b", "c", "a b", "b c"]
    assert tokens_after("a b c", ngrams=(2, 3)) == ["a b", "b c", "a b c"]
    vec = layers.TextVectorization(ngrams=(2,), vocabulary=["a b"])
    np.testing.assert_array_equal(arr(vec(["a", "a b"])), [[0], [2]])   # "a" is too short for a bigram


def test_bytes_and_shapes_of_input():
    vec = layers.TextVectorization(output_sequence_length=3)
    vec.adapt(np.array([b"caf\xc3\xa9 ok", b"ok"]))
    assert vec.get_vocabulary() == ["", "[UNK]", "ok", "café"]
    np.testing.assert_array_equal(arr(vec([["café ok"], ["ok"]])), [[3, 2, 0], [2, 0, 0]])   # (batch, 1)
    np.testing.assert_array_equal(arr(vec("ok café ok ok")), [2, 3, 2])                    # one string
    with pytest.raises(ValueError, match=r"TextVectorization .*shape \(batch,\) or \(batch, 1\)"):
        vec(np.array([["a", "b"]]))


def test_output_sequence_length_pads_and_truncates_at_the_end():
    vec = layers.TextVectorization(output_sequence_length=4, vocabulary=LEARNED)
    out = vec(["the cat sat on the mat", "dog", ""])
    np.testing.assert_array_equal(arr(out), [[2, 3, 4, 1], [5, 0, 0, 0], [0, 0, 0, 0]])
    free = layers.TextVectorization(vocabulary=LEARNED)
    assert free(["dog", "a dog sat"]).shape == (2, 3)
    assert layers.TextVectorization(vocabulary=LEARNED, output_sequence_length=0)(["a"]).shape == (1, 0)


# ---------------------------------------------------------------- vocabulary= / files / set_vocabulary
def test_vocabulary_list_file_and_set_vocabulary(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("earth\r\nwind\nand\nfire\n".encode())
    vec = layers.TextVectorization(vocabulary=str(path))
    assert vec.get_vocabulary() == ["", "[UNK]", "earth", "wind", "and", "fire"]
    vec2 = layers.TextVectorization()
    vec2.set_vocabulary(vec.get_vocabulary())               # the special tokens at the start are recognised
    assert vec2.get_vocabulary() == vec.get_vocabulary()
    (tmp_path / "ints.txt").write_text("12\n36\n")
    assert layers.IntegerLookup(vocabulary=str(tmp_path / "ints.txt")).get_vocabulary() == [-1, 12, 36]


# ---------------------------------------------------------------- errors name the layer and the fix
def test_errors_name_the_layer_and_the_fix():
    with pytest.raises(TypeError, match=r'TextVectorization "tv_err".*must hold strings.*only the texts'):
        layers.TextVectorization(name="tv_err").adapt(np.array([1, 2, 3]))
    with pytest.raises(TypeError, match=r"StringLookup .*must hold strings.*IntegerLookup"):
        layers.StringLookup().adapt([1, 2])
    with pytest.raises(TypeError, match=r"IntegerLookup .*must hold integers.*StringLookup"):
        layers.IntegerLookup().adapt(["a"])
    with pytest.raises(TypeError, match=r"TextVectorization .*wrap it in a list"):
        layers.TextVectorization().adapt("one text")
    with pytest.raises(ValueError, match=r"TextVectorization: output_mode must be one of 'int'.*'bogus'"):
        layers.TextVectorization(output_mode="bogus")
    with pytest.raises(ValueError, match=r"StringLookup: output_mode must be one of"):
        layers.StringLookup(output_mode="ints")
    with pytest.raises(ValueError, match=r'TextVectorization "tv_dup".*repeats \[\'a\'\].*deduplicate'):
        layers.TextVectorization(vocabulary=["a", "b", "a"], name="tv_dup")
    with pytest.raises(ValueError, match=r"StringLookup .*mask token '' at index 1.*order"):
        layers.StringLookup(vocabulary=["a", ""], mask_token="")
    with pytest.raises(ValueError, match=r"TextVectorization .*cannot adapt a layer created with a fixed vocabulary"):
        layers.TextVectorization(vocabulary=["a"]).adapt(["b"])
    with pytest.raises(RuntimeError, match=r"StringLookup .*call adapt\(data\) or pass vocabulary="):
        layers.StringLookup(output_mode="multi_hot")(["a"])
    with pytest.raises(ValueError, match=r"TextVectorization: output_sequence_length is only used with"):
        layers.TextVectorization(output_mode="count", output_sequence_length=3)
    with pytest.raises(ValueError, match=r"ragged=True is not supported"):
        layers.TextVectorization(ragged=True)
    with pytest.raises(ValueError, match=r"StringLookup .*different lengths.*pad"):
        layers.StringLookup(vocabulary=["a"])([["a", "a"], ["a"]])
    with pytest.raises(ValueError, match=r"TextVectorization .*needs idf_weights="):
        layers.TextVectorization(output_mode="tf_idf", vocabulary=["a"])
    hot = layers.StringLookup(vocabulary=["a", "b"], output_mode="multi_hot")
    hot(["a"])
    with pytest.raises(RuntimeError, match=r"vocabulary size cannot change after the layer has been called"):
        hot.set_vocabulary(["a", "b", "c"])


def test_adapt_from_batches_with_steps_and_batch_size():
    vec = layers.TextVectorization()
    vec.adapt(iter([["b b a"], ["c c c"]]), steps=1)        # only the first batch counts
    assert vec.get_vocabulary(include_special_tokens=False) == ["b", "a"]
    chunked = layers.TextVectorization()
    chunked.adapt(CORPUS, batch_size=1)
    assert chunked.get_vocabulary(include_special_tokens=False) == LEARNED
    idf_a = layers.TextVectorization(output_mode="tf_idf")
    idf_a.adapt(CORPUS, batch_size=3)
    idf_b = layers.TextVectorization(output_mode="tf_idf")
    idf_b.adapt(CORPUS)
    np.testing.assert_allclose(arr(idf_a(CORPUS)), arr(idf_b(CORPUS)))


# ---------------------------------------------------------------- models: vectorize first
def test_inside_a_model_is_one_clear_error():
    vec = layers.TextVectorization(output_sequence_length=4, vocabulary=["a"])
    with pytest.raises(ValueError, match=r"cannot be a layer of a model.*x = vectorize_layer\(texts\)"):
        keras.Sequential([vec, layers.Embedding(3, 2)])
    with pytest.raises(ValueError, match=r"cannot be a layer of a model"):
        vec(keras.Input(shape=(1,)))
    with pytest.raises(ValueError, match=r"keras.Input\(dtype='string'\).*x = vectorize_layer\(texts\)"):
        keras.Input(shape=(1,), dtype="string")
    with pytest.raises(ValueError, match=r"StringLookup .*cannot be a layer of a model.*x = lookup\(values\)"):
        keras.Sequential([keras.Input(shape=(3,)), layers.StringLookup(vocabulary=["a"])])
    model = keras.Sequential([keras.Input(shape=(1,)), layers.Dense(1)])
    model.compile(optimizer="adam", loss="mse")
    with pytest.raises(TypeError, match=r"strings.*TextVectorization"):
        model.fit(np.array([["a b"], ["c"]]), np.zeros(2), verbose=0)


def test_text_classification_from_scratch_flow():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    pos, neg, filler = ["great", "fun", "loved", "superb"], ["awful", "boring", "hated", "dull"], \
        ["the", "movie", "was", "plot", "and", "it"]
    texts, labels = [], []
    for i in range(160):
        label = i % 2
        words = list(rng.choice(filler, 5)) + list(rng.choice(pos if label else neg, 2))
        rng.shuffle(words)
        texts.append(" ".join(words).capitalize() + "!")
        labels.append(label)
    vectorize_layer = layers.TextVectorization(max_tokens=20, output_mode="int", output_sequence_length=10)
    vectorize_layer.adapt(np.array(texts))
    x, y = vectorize_layer(np.array(texts)), np.array(labels)
    assert x.shape == (160, 10) and x.dtype == np.int64
    inputs = keras.Input(shape=(None,), dtype="int64")
    h = layers.Embedding(vectorize_layer.vocabulary_size(), 16)(inputs)
    h = layers.GlobalAveragePooling1D()(h)
    outputs = layers.Dense(1, activation="sigmoid")(h)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy", metrics=["accuracy"])
    loss = model.fit(x, y, epochs=6, batch_size=16, verbose=0).history["loss"]
    assert all(b < a for a, b in zip(loss, loss[1:])), loss
    assert loss[-1] < 0.8 * loss[0]
    probs = model.predict(vectorize_layer(["Superb and great fun", "dull, boring, hated it"]), verbose=0)
    assert probs[0, 0] > probs[1, 0]


# ---------------------------------------------------------------- config round trip
@pytest.mark.parametrize("kwargs", [
    dict(max_tokens=8, output_sequence_length=5),
    dict(output_mode="tf_idf", ngrams=(1, 2)),
    dict(output_mode="multi_hot", max_tokens=12, pad_to_max_tokens=True, split="character", ngrams=2),
    dict(output_mode="count", standardize="lower"),
])
def test_text_vectorization_config_round_trip(kwargs):
    vec = layers.TextVectorization(**kwargs)
    vec.adapt(CORPUS)
    spec = json.loads(json.dumps(layers.serialize(vec)))   # the config is plain JSON, vocabulary included
    assert spec["config"]["vocabulary"] == vec.get_vocabulary()
    back = layers.deserialize(spec)
    assert type(back) is layers.TextVectorization and back.name == vec.name
    assert back.get_vocabulary() == vec.get_vocabulary()
    probe = ["the cat sat on émile", "A DOG!", ""]
    np.testing.assert_array_equal(arr(back(probe)), arr(vec(probe)))
    fresh = layers.deserialize(spec)                       # an adapted layer stays adaptable after loading
    fresh.adapt(["x y"])
    assert "x" in fresh.get_vocabulary() and "the" not in fresh.get_vocabulary()


def test_lookup_configs_and_custom_standardize_round_trip():
    for layer in (layers.StringLookup(vocabulary=["a", "b"], mask_token="", num_oov_indices=2),
                  layers.IntegerLookup(output_mode="tf_idf", vocabulary=[5, 9], idf_weights=[0.5, 0.25]),
                  layers.StringLookup(vocabulary=["a", "b"], invert=True)):
        back = layers.deserialize(json.loads(json.dumps(layers.serialize(layer))))
        assert back.get_vocabulary() == layer.get_vocabulary()
        probe = np.array([0, 2, 3]) if layer.invert else (["a", "", "q"] if isinstance(layer, layers.StringLookup)
                                                          else np.array([[5, 9, 9, 7]]))
        np.testing.assert_array_equal(np.asarray(back(probe)), np.asarray(layer(probe)))

    def shout(a):
        return np.array([s.upper() for s in a.ravel()], dtype=object).reshape(a.shape)

    vec = layers.TextVectorization(standardize=shout, vocabulary=["AB"])
    spec = json.loads(json.dumps(layers.serialize(vec)))
    with pytest.raises(ValueError, match=r"custom_objects=\{'shout': shout\}"):
        layers.deserialize(spec)
    back = layers.deserialize(spec, custom_objects={"shout": shout})
    np.testing.assert_array_equal(arr(back(["ab"])), [[2]])


def test_a_number_in_a_string_vocabulary_is_refused_and_an_empty_batch_is_empty():
    with pytest.raises(TypeError, match=r"vocabulary must hold strings \(str or bytes\), found a int \(5\)"):
        layers.TextVectorization(vocabulary=["the", 5])
    assert layers.TextVectorization(vocabulary=["a", "b"])([]).shape[0] == 0             # no rows, no error
