"""keras.datasets: fashion_mnist.load_data() and mnist.load_data(), as in Keras.

Backed by engine.data.datasets (IDX files from root / $DPTRAIN_DATA /
~/.cache/dptrain / /usr/share/datasets, a verified download, or - for
Fashion-MNIST only - the subset embedded in the package, with a warning).
"""
from . import fashion_mnist, mnist

__all__ = ["fashion_mnist", "mnist"]
