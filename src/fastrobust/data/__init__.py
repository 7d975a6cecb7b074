"""Data sets for adversarial training: loading (MNIST, Fashion-MNIST, CIFAR-10/100,
SVHN, image folders and the embedded MNIST subset), downloading, seeded
splitting, batched on-device augmentation and the device-resident loader."""

from .core import Data, DatasetInfo, Split, split_validation, take_subset
from .files import default_data_dir
from .loader import DeviceLoader, augment
from .registry import DATASETS, list_datasets, load_dataset

__all__ = [
    "DATASETS",
    "Data",
    "DatasetInfo",
    "DeviceLoader",
    "Split",
    "augment",
    "default_data_dir",
    "list_datasets",
    "load_dataset",
    "split_validation",
    "take_subset",
]
