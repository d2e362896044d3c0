"""The Keras seed CNN trained data-parallel: the seed program plus four lines of cluster.keras.

Runs on every worker that `dptrain` starts (one process alone works too):

    .venv/bin/dptrain launch -n 2 examples/keras_data_parallel.py --epochs 1
    .venv/bin/dptrain run configs/local.yaml job.script=examples/keras_data_parallel.py \
        'job.script_args=[--epochs, "1"]'
    python examples/keras_data_parallel.py --epochs 1 --limit 2000     # one process

Every worker takes an interleaved 1/N of the training set and a batch of 32/N, so N workers
take the same steps as the original program at batch 32; gradients are averaged during each
backward (cluster.keras.distribute), the epoch logs are averaged over the workers, and only
rank 0 prints.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from _common import data_root, parse_args  # noqa: E402

import cluster  # noqa: E402
from cluster import keras as dpk  # noqa: E402
from engine.keras import layers, models, datasets  # noqa: E402
from engine.keras.utils import set_random_seed  # noqa: E402


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], epochs=5, batch_size=32, argv=argv)
    ctx = cluster.init()                                               # + data parallelism
    set_random_seed(args.seed)
    t0 = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = datasets.fashion_mnist.load_data(path=data_root(args.data))
    x_train, y_train = x_train[:args.limit], y_train[:args.limit]
    x_test, y_test = x_test[:args.test_limit], y_test[:args.test_limit]
    x_train = x_train.reshape(-1, 28, 28, 1) / 255.0
    x_test = x_test.reshape(-1, 28, 28, 1) / 255.0

    model = models.Sequential([
        layers.Conv2D(32, (3, 3), activation='relu', input_shape=(28, 28, 1)),
        layers.MaxPooling2D((2, 2)),
        layers.Flatten(),
        layers.Dense(128, activation='relu'),
        layers.Dense(10, activation='softmax')
    ])
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    dpk.distribute(model, ctx.comm)                                    # + rank 0's weights, averaged gradients
    x_local, y_local = dpk.shard(x_train, y_train, comm=ctx.comm)      # + this worker's share
    if args.batch_size % ctx.size:
        raise SystemExit(f"--batch-size {args.batch_size} must be divisible by the {ctx.size} workers")
    model.fit(x_local, y_local, epochs=args.epochs, batch_size=args.batch_size // ctx.size,
              verbose=args.verbose if ctx.rank == 0 else 0,
              callbacks=[dpk.MetricAverageCallback(ctx.comm)])         # + global epoch logs
    test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)
    if ctx.rank == 0:
        print(f"Test accuracy: {test_acc:.4f}")
        print(f"Test loss: {test_loss:.4f}  workers: {ctx.size}  train samples: {len(x_train)}  "
              f"wall time: {time.perf_counter() - t0:.1f} s")
    return test_acc


if __name__ == "__main__":
    main()
