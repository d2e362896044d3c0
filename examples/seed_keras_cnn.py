"""The Keras seed program (a small CNN on Fashion-MNIST) running on dptrain's engine.

Only the import differs from the TensorFlow/Keras original:

    from tensorflow.keras import layers, models, datasets     # original
    from engine.keras import layers, models, datasets         # here

Full run (5 epochs, batch 32, ~91-92 % test accuracy):   python examples/seed_keras_cnn.py
Quick run:   python examples/seed_keras_cnn.py --epochs 1 --limit 2000 --test-limit 500
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import data_root, parse_args  # noqa: E402

from engine.keras import layers, models, datasets  # noqa: E402
from engine.keras.utils import set_random_seed  # noqa: E402


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], epochs=5, batch_size=32, argv=argv)
    set_random_seed(args.seed)
    t0 = time.perf_counter()

    # --- the seed program -------------------------------------------------------
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
    model.summary()
    model.compile(optimizer='adam', loss='sparse_categorical_crossentropy', metrics=['accuracy'])
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, verbose=args.verbose)
    test_loss, test_acc = model.evaluate(x_test, y_test, verbose=0)
    print(f"Test accuracy: {test_acc:.4f}")
    # -----------------------------------------------------------------------------

    print(f"Test loss: {test_loss:.4f}  train samples: {len(x_train)}  test samples: {len(x_test)}  "
          f"wall time: {time.perf_counter() - t0:.1f} s")
    return test_acc


if __name__ == "__main__":
    main()
