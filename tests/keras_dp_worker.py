"""Rank program for test_keras_distributed.py: a Keras model trained data-parallel with cluster.keras."""
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cluster  # noqa: E402
from cluster import keras as dpk  # noqa: E402
from engine import keras  # noqa: E402
from engine.keras import layers  # noqa: E402


def main():
    out = sys.argv[1]
    ctx = cluster.init()
    keras.utils.set_random_seed(100 + ctx.rank)      # different on every rank: distribute() must fix it
    if "--unused" in sys.argv:
        class WithSpare(keras.Model):                 # a built layer the loss never uses
            def __init__(self):
                super().__init__()
                self.hidden = layers.Dense(16, activation="relu")
                self.out = layers.Dense(3, activation="softmax")
                self.spare = layers.Dense(2)

            def call(self, x, training=False):
                return self.out(self.hidden(x))
        model = WithSpare()
        model(np.zeros((1, 8), np.float32))
        model.spare(np.zeros((1, 8), np.float32))
    elif "--augment" in sys.argv:                     # random layers: every rank must draw as one worker
        model = keras.Sequential([keras.Input((8,)), layers.Reshape((2, 4, 1)), layers.RandomFlip("horizontal"),
                                  layers.RandomTranslation(0.25, 0.25, fill_mode="constant"), layers.Flatten(),
                                  layers.Dense(16, activation="relu"), layers.Dropout(0.3),
                                  layers.Dense(3, activation="softmax")])
    elif "--regularized" in sys.argv:                 # penalties join each rank's loss; constraints after each step
        model = keras.Sequential([keras.Input((8,)),
                                  layers.Dense(16, activation="relu", kernel_regularizer=keras.regularizers.L2(0.01),
                                               activity_regularizer=keras.regularizers.L1(0.01),
                                               kernel_constraint=keras.constraints.MaxNorm(0.7)),
                                  layers.Dense(3, activation="softmax", kernel_regularizer="l1")])
    else:
        model = keras.Sequential([layers.Dense(16, activation="relu", input_shape=(8,)),
                                  layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    dpk.distribute(model, ctx.comm)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8)).astype(np.float32)       # 200: not a multiple of 3 or 4 ranks
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + (x[:, 2] > 1).astype(np.int64)
    xl, yl = dpk.shard(x, y, comm=ctx.comm)
    global_batch = 24
    h = model.fit(xl, yl, batch_size=global_batch // ctx.size, epochs=3, shuffle=False, verbose=0,
                  callbacks=[dpk.MetricAverageCallback(ctx.comm)])
    weights = model.get_weights()
    digest = hashlib.sha256(b"".join(w.tobytes() for w in weights)).hexdigest()
    if ctx.rank == 0 and "--unused" not in sys.argv:
        np.savez(out + ".npz", *weights)
    with open(f"{out}.rank{ctx.rank}.json", "w") as fh:
        json.dump({"rank": ctx.rank, "size": ctx.size, "rows": len(xl), "history": h.history,
                   "digest": digest, "backend": getattr(ctx.comm, "backend", "?")}, fh)


if __name__ == "__main__":
    main()
