"""keras.preprocessing: Keras 3 keeps `keras.preprocessing.timeseries_dataset_from_array` as an alias of
keras.utils'; the keras.io forecasting examples call it by this name."""
from .data_utils import timeseries_dataset_from_array

__all__ = ["timeseries_dataset_from_array"]
