"""Keras' confusion-matrix metrics (Precision, Recall, AUC, TruePositives / FalsePositives /
TrueNegatives / FalseNegatives) and the top-k accuracies in the facade.  The references are NumPy
transcriptions of Keras 3's formulas (keras/src/metrics/confusion_metrics.py, metrics_utils.py,
accuracy_metrics.py); the facade was also compared with Keras 3.15.1 itself (equal to float32 noise,
except torch's own choice among exactly tied scores in Precision / Recall(top_k=...))."""
import numpy as np
import pytest

from engine import keras
from engine.keras import callbacks, layers, metrics


# ------------------------------------------------------------------ NumPy references (Keras' formulas)

def np_counts(y, p, thresholds, w=None):
    """{tp, fp, tn, fn} per threshold: a prediction above the threshold is a positive, a nonzero label
    is a positive; a sample's weight counts for each of its predictions."""
    y, p = np.asarray(y, np.float64), np.asarray(p, np.float64)
    if y.size == p.size:
        y = y.reshape(p.shape)
    ww = np.ones(p.shape) if w is None else np.broadcast_to(np.asarray(w, np.float64).reshape(
        (-1,) + (1,) * (p.ndim - 1)), p.shape)
    pos, ww, p = (y != 0).reshape(-1), ww.reshape(-1), p.reshape(-1)
    above = p[None, :] > np.asarray(thresholds, np.float64)[:, None]
    return {"tp": (ww * (above & pos)).sum(1), "fp": (ww * (above & ~pos)).sum(1),
            "tn": (ww * (~above & ~pos)).sum(1), "fn": (ww * (~above & pos)).sum(1)}


def div(a, b):
    return np.where(b == 0, 0.0, a / np.where(b == 0, 1, b))


def auc_thresholds(n=200):
    return [-1e-7] + [(i + 1) / (n - 1) for i in range(n - 2)] + [1 + 1e-7]


def np_auc(y, p, w=None, n=200, curve="ROC", method="interpolation"):
    # evenly spaced thresholds: Keras' bucketed path, which clips the scores to [0, 1] first
    c = np_counts(y, np.clip(p, 0, 1), auc_thresholds(n), w)
    tp, fp, tn, fn = c["tp"], c["fp"], c["tn"], c["fn"]
    if curve == "PR" and method == "interpolation":      # Davis & Goadrich, as Keras' interpolate_pr_auc
        dtp = tp[:-1] - tp[1:]
        pp = tp + fp
        dp = pp[:-1] - pp[1:]
        slope = div(dtp, np.maximum(dp, 0))
        intercept = tp[1:] - slope * pp[1:]
        ratio = np.where((pp[:-1] > 0) & (pp[1:] > 0), div(pp[:-1], np.maximum(pp[1:], 0)), 1.0)
        return float(div(slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0)).sum())
    recall = div(tp, tp + fn)
    x, yy = (div(fp, fp + tn), recall) if curve == "ROC" else (recall, div(tp, tp + fp))
    heights = {"interpolation": (yy[:-1] + yy[1:]) / 2, "minoring": np.minimum(yy[:-1], yy[1:]),
               "majoring": np.maximum(yy[:-1], yy[1:])}[method]
    return float(((x[:-1] - x[1:]) * heights).sum())


def np_in_top_k(labels, p, k):
    kth = np.sort(p, axis=-1)[..., -k]
    return p[np.arange(len(p)), labels] >= kth


def _binary(seed=0, n=80):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 1)) > 0.45).astype(np.float32)
    p = np.clip(0.35 * y + 0.65 * rng.random((n, 1)), 0, 1).astype(np.float32)
    w = rng.uniform(0, 2, n).astype(np.float32)
    return y, p, w


def _update(m, y, p, w=None, batches=(0, 30, 80)):
    for a, b in zip(batches[:-1], batches[1:]):          # several batches: the counts accumulate
        m.update_state(y[a:b], p[a:b], sample_weight=None if w is None else w[a:b])
    return np.asarray(m.result(), dtype=np.float64)


# ------------------------------------------------------------------ standalone

@pytest.mark.parametrize("weighted", [False, True])
def test_confusion_counts_precision_recall(weighted):
    y, p, w = _binary()
    w = w if weighted else None
    ref = np_counts(y, p, [0.5], w)
    for cls, key in ((metrics.TruePositives, "tp"), (metrics.FalsePositives, "fp"),
                     (metrics.TrueNegatives, "tn"), (metrics.FalseNegatives, "fn")):
        assert _update(cls(), y, p, w) == pytest.approx(ref[key][0], rel=1e-6)
    precision = ref["tp"][0] / (ref["tp"][0] + ref["fp"][0])
    assert _update(metrics.Precision(), y, p, w) == pytest.approx(precision, rel=1e-6)
    assert _update(metrics.Recall(), y, p, w) == pytest.approx(ref["tp"][0] / (ref["tp"][0] + ref["fn"][0]), rel=1e-6)
    # several thresholds: one value each; y given as (N,) against predictions (N, 1)
    thr = [0.2, 0.5, 0.8]
    ref = np_counts(y, p, thr, w)
    np.testing.assert_allclose(_update(metrics.Precision(thresholds=thr), y[:, 0], p, w),
                               div(ref["tp"], ref["tp"] + ref["fp"]), rtol=1e-6)
    np.testing.assert_allclose(_update(metrics.FalseNegatives(thresholds=thr), y, p, w), ref["fn"], rtol=1e-6)
    # evenly spaced thresholds take Keras' bucketed path: the same counts
    np.testing.assert_allclose(_update(metrics.TruePositives(thresholds=[0.0, 0.5, 1.0]), y, p, w),
                               np_counts(y, p, [0.0, 0.5, 1.0], w)["tp"], rtol=1e-6)


def test_precision_recall_top_k_and_class_id():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 50)
    y = np.eye(4, dtype=np.float32)[labels]
    p = rng.dirichlet(np.ones(4), 50).astype(np.float32)
    # class_id: the one column
    ref = np_counts(y[:, 1], p[:, 1], [0.5])
    assert _update(metrics.Precision(class_id=1), y, p, batches=(0, 20, 50)) == pytest.approx(
        ref["tp"][0] / (ref["tp"][0] + ref["fp"][0]))
    # top_k: the k highest scores of each row are the positives
    top2 = np.argsort(-p, axis=1)[:, :2]
    hit = np.zeros_like(p, dtype=bool)
    np.put_along_axis(hit, top2, True, axis=1)
    tp = (hit & (y == 1)).sum()
    assert _update(metrics.Precision(top_k=2), y, p, batches=(0, 20, 50)) == pytest.approx(tp / hit.sum())
    assert _update(metrics.Recall(top_k=2), y, p, batches=(0, 20, 50)) == pytest.approx(tp / 50)


@pytest.mark.parametrize("curve,method", [("ROC", "interpolation"), ("PR", "interpolation"),
                                          ("ROC", "minoring"), ("ROC", "majoring"), ("PR", "majoring")])
@pytest.mark.parametrize("weighted", [False, True])
def test_auc_matches_keras_formula(curve, method, weighted):
    y, p, w = _binary(2)
    w = w if weighted else None
    got = _update(metrics.AUC(curve=curve, summation_method=method), y, p, w)
    assert got == pytest.approx(np_auc(y, p, w, curve=curve, method=method), rel=1e-5, abs=1e-6)
    got = _update(metrics.AUC(num_thresholds=37, curve=curve, summation_method=method), y, p, w)
    assert got == pytest.approx(np_auc(y, p, w, n=37, curve=curve, method=method), rel=1e-5, abs=1e-6)


def test_auc_roc_approaches_the_rank_statistic_and_other_options():
    y, p, w = _binary(3, n=400)
    pos, neg = p[y == 1], p[y == 0]
    rank_auc = ((pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean())
    assert _update(metrics.AUC(num_thresholds=2000), y, p, batches=(0, 400)) == pytest.approx(rank_auc, abs=2e-3)
    # explicit thresholds (not evenly spaced): [-eps] + thresholds + [1 + eps]
    thr = [0.1, 0.3, 0.35, 0.9]
    m = metrics.AUC(thresholds=thr)
    c = np_counts(y, p, [-1e-7] + thr + [1 + 1e-7])
    tpr, fpr = div(c["tp"], c["tp"] + c["fn"]), div(c["fp"], c["fp"] + c["tn"])
    ref = float(((fpr[:-1] - fpr[1:]) * (tpr[:-1] + tpr[1:]) / 2).sum())
    assert _update(m, y, p, batches=(0, 400)) == pytest.approx(ref, rel=1e-6)
    # from_logits: the sigmoid of the scores first
    z = np.log(np.clip(p, 1e-4, 1 - 1e-4) / (1 - np.clip(p, 1e-4, 1 - 1e-4))).astype(np.float32)
    assert _update(metrics.AUC(from_logits=True), y, z, batches=(0, 400)) == pytest.approx(
        np_auc(y, 1 / (1 + np.exp(-z.astype(np.float64)))), rel=1e-5)
    # multi_label: one curve per column, averaged (or weighted by label_weights)
    rng = np.random.default_rng(4)
    ym = (rng.random((100, 3)) > 0.5).astype(np.float32)
    pm = np.clip(0.3 * ym + 0.7 * rng.random((100, 3)), 0, 1).astype(np.float32)
    per = [np_auc(ym[:, j], pm[:, j]) for j in range(3)]
    assert _update(metrics.AUC(multi_label=True), ym, pm, batches=(0, 40, 100)) == pytest.approx(np.mean(per), rel=1e-5)
    lw = np.array([0.2, 1.0, 0.5])
    assert _update(metrics.AUC(multi_label=True, label_weights=lw), ym, pm, batches=(0, 100)) == pytest.approx(
        (np.array(per) * lw).sum() / lw.sum(), rel=1e-5)
    m = metrics.AUC()
    _update(m, y, p)
    m.reset_state()
    assert float(m.result()) == 0.0 and float(np.asarray(m.true_positives).sum()) == 0.0


def test_top_k_accuracies():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 6, 60)
    p = rng.random((60, 6)).astype(np.float32)
    p[0] = 0.5                                             # a tie: counts as in the top k (Keras' in_top_k)
    w = rng.uniform(0, 2, 60).astype(np.float32)
    for k in (1, 2, 5):
        hits = np_in_top_k(labels, p, k)
        m = metrics.TopKCategoricalAccuracy(k=k)
        assert _update(m, np.eye(6, dtype=np.float32)[labels], p, batches=(0, 25, 60)) == pytest.approx(hits.mean())
        s = metrics.SparseTopKCategoricalAccuracy(k=k)
        assert _update(s, labels[:, None], p, w, batches=(0, 25, 60)) == pytest.approx((hits * w).sum() / w.sum(),
                                                                                     rel=1e-6)
    assert metrics.TopKCategoricalAccuracy().k == 5 and metrics.SparseTopKCategoricalAccuracy().k == 5
    with pytest.raises(ValueError, match="k=5"):
        metrics.TopKCategoricalAccuracy().update_state(np.eye(3)[[0, 1]], np.eye(3)[[0, 1]])


def test_names_directions_and_serialization():
    names = {"precision": metrics.Precision, "recall": metrics.Recall, "auc": metrics.AUC,
             "true_positives": metrics.TruePositives, "false_positives": metrics.FalsePositives,
             "true_negatives": metrics.TrueNegatives, "false_negatives": metrics.FalseNegatives,
             "top_k_categorical_accuracy": metrics.TopKCategoricalAccuracy,
             "sparse_top_k_categorical_accuracy": metrics.SparseTopKCategoricalAccuracy}
    for name, cls in names.items():
        assert cls().name == name
        m = metrics.get(name, None, None)
        assert type(m) is cls and m.name == name
        assert type(metrics.get(cls.__name__, None, None)) is cls       # Keras also takes the class name
    assert metrics.get("AUC", None, None).name == "AUC"                 # ... and logs it as written
    for cls in (metrics.Precision, metrics.Recall, metrics.AUC, metrics.TopKCategoricalAccuracy,
                metrics.SparseTopKCategoricalAccuracy):
        assert cls._direction == "up"
    assert metrics.TruePositives()._direction is None                  # Keras gives the counts none
    for m in (metrics.AUC(curve="PR", num_thresholds=50, name="pr_auc"), metrics.Precision(thresholds=[0.3, 0.6]),
              metrics.Recall(class_id=2), metrics.TopKCategoricalAccuracy(k=3, name="top3"),
              metrics.FalsePositives(thresholds=0.7), metrics.AUC(thresholds=[0.2, 0.4], multi_label=True)):
        again = metrics.get(metrics.serialize(m), None, None)
        assert type(again) is type(m) and again.get_config() == m.get_config()


# ------------------------------------------------------------------ in compile / fit / evaluate

def _model(out=1, activation="sigmoid", seed=0):
    keras.utils.set_random_seed(seed)
    return keras.Sequential([layers.Dense(8, activation="tanh", input_shape=(4,)),
                             layers.Dense(out, activation=activation)])


def _xy(seed=0, n=96):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, :1] + 0.7 * rng.normal(size=(n, 1)) > 0).astype(np.float32)
    return x, y, rng.uniform(0.2, 2, n).astype(np.float32)


def test_compiled_metrics_log_keras_names_and_values():
    x, y, _ = _xy()
    m = _model()
    m.compile(optimizer=keras.optimizers.Adam(0.01), loss=keras.losses.BinaryCrossentropy(label_smoothing=0.1),
              metrics=["precision", "recall", "auc", "AUC", metrics.AUC(curve="PR", name="pr_auc"),
                       metrics.TruePositives(), "false_negatives", metrics.Precision(thresholds=0.3, name="p03")])
    h = m.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0, validation_data=(x[:32], y[:32]))
    expected = ["precision", "recall", "auc", "AUC", "pr_auc", "true_positives", "false_negatives", "p03"]
    assert sorted(h.history) == sorted(["loss", "val_loss"] + expected + ["val_" + n for n in expected])
    # the metrics see the probabilities (the model trains on the logits under the fused loss)
    logs = m.evaluate(x, y, batch_size=16, verbose=0, return_dict=True)
    p = m.predict(x, verbose=0)
    c = np_counts(y, p, [0.5])
    assert logs["precision"] == pytest.approx(c["tp"][0] / (c["tp"][0] + c["fp"][0]), rel=1e-6)
    assert logs["recall"] == pytest.approx(c["tp"][0] / (c["tp"][0] + c["fn"][0]), rel=1e-6)
    assert logs["true_positives"] == c["tp"][0] and logs["false_negatives"] == c["fn"][0]
    assert logs["auc"] == pytest.approx(np_auc(y, p), rel=1e-5) and logs["AUC"] == logs["auc"]
    assert logs["pr_auc"] == pytest.approx(np_auc(y, p, curve="PR"), rel=1e-5)
    c3 = np_counts(y, p, [0.3])
    assert logs["p03"] == pytest.approx(c3["tp"][0] / (c3["tp"][0] + c3["fp"][0]), rel=1e-6)
    # the counts of each epoch are its own (logged as numbers, not views of the running state)
    assert h.history["true_positives"][0] != h.history["val_true_positives"][0] or \
        h.history["true_positives"][1] != h.history["val_true_positives"][1]


def test_weighted_metrics_take_the_sample_weights():
    x, y, w = _xy(1)
    m = _model()
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["precision", "auc"],
              weighted_metrics=["precision", "auc", "true_positives"])
    logs = m.evaluate(x, y, batch_size=32, sample_weight=w, verbose=0, return_dict=True)
    assert sorted(logs) == sorted(["loss", "precision", "auc", "weighted_precision", "weighted_auc",
                                   "true_positives"])
    p = m.predict(x, verbose=0)
    c, cw = np_counts(y, p, [0.5]), np_counts(y, p, [0.5], w)
    assert logs["precision"] == pytest.approx(c["tp"][0] / (c["tp"][0] + c["fp"][0]), rel=1e-6)
    assert logs["weighted_precision"] == pytest.approx(cw["tp"][0] / (cw["tp"][0] + cw["fp"][0]), rel=1e-6)
    assert logs["true_positives"] == pytest.approx(cw["tp"][0], rel=1e-6)
    assert logs["auc"] == pytest.approx(np_auc(y, p), rel=1e-5)
    assert logs["weighted_auc"] == pytest.approx(np_auc(y, p, w), rel=1e-5)


def test_top_k_metrics_in_compile():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    labels = rng.integers(0, 6, 64)
    m = _model(out=6, activation="softmax")
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy",
              metrics=["sparse_top_k_categorical_accuracy", metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
    logs = m.evaluate(x, labels, batch_size=16, verbose=0, return_dict=True)
    p = m.predict(x, verbose=0)
    assert logs["sparse_top_k_categorical_accuracy"] == pytest.approx(np_in_top_k(labels, p, 5).mean())
    assert logs["top2"] == pytest.approx(np_in_top_k(labels, p, 2).mean())
    m = _model(out=6, activation="softmax")
    m.compile(optimizer="adam", loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
              metrics=["top_k_categorical_accuracy"])
    h = m.fit(x, np.eye(6, dtype=np.float32)[labels], batch_size=16, epochs=1, verbose=0)
    assert set(h.history) == {"loss", "top_k_categorical_accuracy"}


def test_auc_from_logits_on_a_logits_model():
    x, y, _ = _xy(3)
    m = _model(activation=None)
    m.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(from_logits=True),
              metrics=[metrics.AUC(from_logits=True, name="auc_l"), "auc"])
    logs = m.evaluate(x, y, batch_size=32, verbose=0, return_dict=True)
    z = m.predict(x, verbose=0).astype(np.float64)
    assert logs["auc_l"] == pytest.approx(np_auc(y, 1 / (1 + np.exp(-z))), rel=1e-5)
    assert logs["auc"] == pytest.approx(np_auc(y, z), rel=1e-5)   # as Keras: the raw scores, clipped to [0, 1]


def test_callbacks_auto_mode_from_the_metric_direction():
    x, y, _ = _xy(4)
    m = _model()
    m.compile(optimizer="adam", loss="binary_crossentropy", metrics=["auc", "true_positives"])
    es = callbacks.EarlyStopping(monitor="val_auc", patience=5)
    m.fit(x, y, epochs=1, verbose=0, validation_data=(x, y), callbacks=[es])
    assert es._m.mode == "max"
    with pytest.raises(ValueError, match="maximized or minimized"):
        m.fit(x, y, epochs=1, verbose=0, validation_data=(x, y),
              callbacks=[callbacks.EarlyStopping(monitor="val_true_positives")])


def test_save_and_load_with_the_new_metrics(tmp_path):
    x, y, _ = _xy(5)
    m = _model()
    m.compile(optimizer="adam", loss=keras.losses.BinaryCrossentropy(label_smoothing=0.05),
              metrics=["auc", "precision", "recall", metrics.TruePositives()])
    m.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    m.save(path)
    back = keras.models.load_model(path)
    a = m.evaluate(x, y, verbose=0, return_dict=True)
    b = back.evaluate(x, y, verbose=0, return_dict=True)
    assert list(a) == list(b) == ["loss", "auc", "precision", "recall", "true_positives"]
    for k in a:
        assert b[k] == pytest.approx(a[k], rel=1e-6)
    assert back.loss.label_smoothing == 0.05


def test_metric_objects_keep_their_settings_through_save_and_load(tmp_path):
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile("adam", "binary_crossentropy",
              metrics=[keras.metrics.AUC(curve="PR", name="pr_auc"), keras.metrics.Precision(thresholds=0.3),
                       keras.metrics.MeanAbsoluteError(name="mymae"), "accuracy"])
    x = np.random.default_rng(0).random((32, 4)).astype(np.float32)
    y = (x[:, :1] > 0.5).astype(np.float32)
    m.fit(x, y, epochs=1, verbose=0)
    m.save(tmp_path / "m.keras")
    back = keras.models.load_model(tmp_path / "m.keras")
    assert back.evaluate(x, y, verbose=0, return_dict=True) == m.evaluate(x, y, verbose=0, return_dict=True)
    auc, prec = back._metrics[0], back._metrics[1]
    assert auc.curve == "PR" and list(prec.thresholds) == [0.3]


def test_a_multi_threshold_metric_logs_a_list_and_averages_over_ranks():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, activation="sigmoid")])
    m.compile("adam", "binary_crossentropy", metrics=[keras.metrics.Precision(thresholds=[0.3, 0.6])])
    x = np.random.default_rng(0).random((32, 4)).astype(np.float32)
    y = (x[:, :1] > 0.5).astype(np.float32)
    h = m.fit(x, y, epochs=1, verbose=0)
    assert len(h.history["precision"][0]) == 2                    # Keras logs one value per threshold
    assert len(m.evaluate(x, y, verbose=0, return_dict=True)["precision"]) == 2

    class TwoRanks:                                               # rank 1 reports 1.0 everywhere
        size, backend = 2, "test"

        def allreduce(self, arr, op="sum", algorithm="ring"):
            arr += 1.0
            return arr

    from cluster.keras import MetricAverageCallback
    logs = {"loss": 0.5, "precision": [0.2, 0.4]}
    MetricAverageCallback(TwoRanks()).on_epoch_end(0, logs)
    assert logs == {"loss": pytest.approx(0.75), "precision": [pytest.approx(0.6), pytest.approx(0.7)]}
