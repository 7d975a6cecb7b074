"""Data sets defined outside fastrobust, reached through ``--dataset user_data:...`` in the tests."""

import numpy as np
import torch
from PIL import Image


class Pairs(torch.utils.data.Dataset):
    """A plain map-style Dataset of (image, label) pairs."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def separable(n, classes=3, seed=0, shape=(1, 8, 8)):
    """Images on the 8-bit grid whose class sets the brightness of one band of pixels."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randint(0, 70, (n, *shape), generator=g)
    flat = x.view(n, -1)
    d = flat.shape[1]
    for c in range(classes):
        flat[y == c, c * d // classes:(c + 1) * d // classes] += 150
    return x.float() / 255, y


def make_data(data_dir=None, n_train=240, n_test=60):
    xtr, ytr = separable(n_train, seed=0)
    xte, yte = separable(n_test, seed=1)
    return Pairs(xtr, ytr), Pairs(xte, yte)


def make_data_with_facts():
    train, test = make_data()
    return train, test, {"num_classes": 4, "eps": 0.1, "crop_pad": 1}


class PilPairs(torch.utils.data.Dataset):
    def __init__(self, n, seed):
        self.x, self.y = separable(n, seed=seed, shape=(3, 8, 8))

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        arr = (self.x[i] * 255).round().byte().permute(1, 2, 0).numpy()
        return Image.fromarray(arr, "RGB"), np.int64(self.y[i])


def pil_data():
    return PilPairs(90, 0), PilPairs(30, 1)


def tensor_pairs():
    return separable(120, seed=0), separable(30, seed=1)


def wrong_shape():
    train, test = make_data()
    test.x = test.x[:, :, :6]   # 6x8 test images
    return train, test


def label_out_of_range():
    train, test = make_data()
    return train, test, {"num_classes": 2}


def negative_label():
    train, test = make_data()
    train.y = train.y.clone()
    train.y[5] = -1
    return train, test


def not_normalised():
    train, test = make_data()
    train.x = (train.x - 0.5) / 0.25
    return train, test


def one_dataset():
    return make_data()[0]
