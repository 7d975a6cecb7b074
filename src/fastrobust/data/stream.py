"""Streaming data: images read when needed, through a standard ``torch.utils.data.DataLoader``.

The default path holds a split whole on the device (:class:`~.loader.DeviceLoader`). Data that does
not fit goes through a :class:`LazySplit`, whose images stay where they are (files of an image
folder, a user's Dataset) and are decoded when a batch needs them, and a :class:`StreamLoader`:
a DataLoader with worker processes, pinned memory (on CUDA) and non-blocking copies to the device.

The :class:`StreamLoader` yields exactly the minibatches of the :class:`DeviceLoader` on the same
data: the epoch's order is the same permutation of (seed, epoch), each process (under torchrun)
reads its shard of every global minibatch, and the random crop and flip are drawn in the main
process from the same (seed, epoch) generator. A user's Dataset may draw its own random
transforms in the workers: torch's, numpy's and Python's generators are seeded from
(seed, epoch, example) before each of its items is read, so those draws do not depend on the
number of workers or processes either.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError, FastrobustError
from .loader import DeviceLoader, _crop_flip, _draw, _generator, _shard, _upload

STATS_SAMPLE = 512   # images whose pixels give a streamed data set's mean and std (evenly spaced)


class LazySplit:
    """A split whose images are read on demand: ``source.image(i)`` gives image i as a uint8 (C, H, W)
    tensor; the labels ``y`` are held (int64). Indexing ``x`` with a slice or indices reads those images
    (as a :class:`~.core.Split`'s ``x``), so validation and test evaluation work on it unchanged."""

    def __init__(self, source, y: torch.Tensor, indices: torch.Tensor | None = None) -> None:
        self.source = source
        self._y = y
        self.indices = torch.arange(len(y)) if indices is None else indices

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def y(self) -> torch.Tensor:
        return self._y[self.indices]

    @property
    def x(self) -> _LazyImages:
        return _LazyImages(self)

    def image(self, i: int) -> torch.Tensor:
        return self.source.image(int(self.indices[i]))

    def subset(self, idx: torch.Tensor | slice) -> LazySplit:
        """The examples at ``idx`` (indices or a slice), as a new LazySplit on the same source."""
        return LazySplit(self.source, self._y, self.indices[idx])

    def sample(self, n: int = STATS_SAMPLE) -> torch.Tensor:
        """Up to ``n`` evenly spaced images (uint8 (n, C, H, W)), e.g. for the channel statistics."""
        if len(self) == 0:
            return torch.zeros(0, *self.source.shape, dtype=torch.uint8)
        picks = torch.linspace(0, len(self) - 1, min(n, len(self))).round().long().unique()
        return self.x[picks]


class _LazyImages:
    """``split.x`` of a :class:`LazySplit`: reads the images it is indexed with."""

    dtype = torch.uint8

    def __init__(self, split: LazySplit) -> None:
        self.split = split

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.split), *self.split.source.shape)

    def __getitem__(self, idx) -> torch.Tensor:
        picks = torch.arange(len(self.split))[idx]
        if picks.dim() == 0:
            return self.split.image(int(picks))
        if len(picks) == 0:
            return torch.zeros(0, *self.split.source.shape, dtype=torch.uint8)
        return torch.stack([self.split.image(int(i)) for i in picks])


class TensorImages:
    """Images already in memory (uint8 (N, C, H, W)), e.g. a built-in data set streamed."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x
        self.shape = tuple(x.shape[1:])

    def image(self, i: int) -> torch.Tensor:
        return self.x[i]


class FolderImages:
    """The image files of a folder, decoded with PIL when read. The paths are held as one byte array
    (relative to ``root``), not as Python objects, so memory barely grows with the number of files."""

    def __init__(self, root: Path, names: np.ndarray, mode: str, size: tuple[int, int]) -> None:
        self.root, self.names, self.mode = Path(root), names, mode
        self.shape = (1 if mode == "L" else 3, *size)

    def image(self, i: int) -> torch.Tensor:
        path = self.root / os.fsdecode(self.names[i])
        try:
            with Image.open(path) as im:
                a = np.array(im.convert(self.mode))
        except Exception as e:  # PIL reports bad files in many exception types
            raise DataError(f"cannot decode image {path} ({type(e).__name__}: {e}): fix or remove the file") from None
        if a.shape[:2] != self.shape[1:]:
            raise DataError(f"{path} is {a.shape[0]}x{a.shape[1]} (HxW) but the data set's images are "
                            f"{self.shape[1]}x{self.shape[2]}: all images must have the same size; resize them first")
        t = torch.from_numpy(a)
        return t[None] if a.ndim == 2 else t.permute(2, 0, 1).contiguous()


class _Items(torch.utils.data.Dataset):
    """What the DataLoader's workers read: (image, label) of a :class:`LazySplit`, asked for as
    (position in the split, epoch).

    For a source that draws random numbers itself (a user's Dataset with random transforms:
    ``source.random = True``), torch's, numpy's and Python's random generators are seeded from
    (seed, epoch, example) before each item is read, so its draws do not depend on the workers."""

    def __init__(self, split: LazySplit, seed: int) -> None:
        self.split, self.y, self.seed = split, split.y, seed
        self.random = bool(getattr(split.source, "random", False))

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key: tuple[int, int]):
        i, epoch = key
        if not self.random:
            return self.split.image(i), self.y[i]
        example = int(self.split.indices[i])
        in_worker = torch.utils.data.get_worker_info() is not None
        saved = None if in_worker else (torch.get_rng_state(), random.getstate(), np.random.get_state())
        try:   # reading in the training process: its own random streams are put back afterwards
            item_seed = _generator(self.seed, epoch, "item", example).initial_seed() % 2**32
            torch.manual_seed(item_seed)
            random.seed(item_seed)
            np.random.seed(item_seed)
            return self.split.image(i), self.y[i]
        finally:
            if saved is not None:
                torch.set_rng_state(saved[0])
                random.setstate(saved[1])
                np.random.set_state(saved[2])


class _Batches:
    """The batch sampler: this process's shard of each global minibatch of the epoch, in order, as
    (position, epoch) keys; ``batches`` is replaced each epoch (the workers persist)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def default_workers() -> int:
    """Worker processes when none are asked for: half the CPU cores this process may use, 1 to 8."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(1, min(8, cores // 2))


class StreamLoader(DeviceLoader):
    """Minibatches of a :class:`LazySplit` read by a DataLoader's ``workers`` processes; the same batches
    (order, sharding among processes, crop and flip) as a :class:`DeviceLoader` on the same data.

    The uint8 images are read and stacked in the workers, pinned (on CUDA), copied to ``device``
    without blocking, and converted and augmented there. ``workers=0`` reads in this process.
    The workers start once and persist over the epochs; :meth:`set_epoch` has them start reading
    the epoch's first minibatches (like the in-memory path's copy of the data to the device,
    starting them is not part of an epoch's training time).
    """

    def __init__(self, split: LazySplit, batch_size: int, *, shuffle: bool, device: torch.device | str = "cpu",
                 seed: int = 0, crop_pad: int = 0, flip: bool = False, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, workers: int | None = None, with_index: bool = False) -> None:
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
            raise ConfigError(f"workers must be an integer >= 0 (0: read in the training process), got {workers!r}")
        self.device = torch.device(device)
        self.workers = default_workers() if workers is None else workers
        super().__init__(split, batch_size, shuffle=shuffle, device="cpu", seed=seed, crop_pad=crop_pad, flip=flip,
                         drop_last=drop_last, rank=rank, world_size=world_size, with_index=with_index)
        shape = split.source.shape

        def collate(items):
            if not items:   # this process's shard of a final global minibatch smaller than the processes
                return torch.zeros(0, *shape, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
            return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])

        self._sampler = _Batches()
        self._loader = torch.utils.data.DataLoader(
            _Items(split, seed), batch_sampler=self._sampler, num_workers=self.workers, collate_fn=collate,
            pin_memory=self.device.type == "cuda", persistent_workers=self.workers > 0,
            # keeps the DataLoader from drawing its workers' base seed from the training process's random stream
            generator=_generator(seed, "workers", rank))
        self._started: tuple | None = None   # (epoch, batch iterator, global sizes, the epoch's order)

    def _place(self, split, device):
        return split   # the images stay where they are

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._started = self._start()

    def _start(self):
        order, sizes, shards = self._order(), [], []
        for i in range(len(self)):
            batch = order[i * self.batch_size:(i + 1) * self.batch_size]
            sizes.append(len(batch))
            shards.append([(j, self.epoch) for j in batch[_shard(len(batch), self.rank, self.world_size)].tolist()])
        self._sampler.batches = shards
        return self.epoch, iter(self._loader), sizes, order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        started, self._started = self._started, None
        epoch, batches, sizes, order = started if started is not None and started[0] == self.epoch else self._start()
        augmenting = self.crop_pad > 0 or self.flip
        aug_gen = _generator(self.seed, self.epoch, "augment")
        # the rows, as DeviceLoader gives them: the epoch's order copied to the device once, without blocking
        order = _upload(order, self.device) if self.with_index else None
        for i, n_global in enumerate(sizes):
            try:
                xb, yb = next(batches)
            except FastrobustError as exc:
                raise _from_worker(exc) from None
            x = xb.to(self.device, non_blocking=True).float().div_(255)
            y = yb.to(self.device, non_blocking=True)
            if augmenting:
                params = _draw(n_global, self.crop_pad, self.flip, aug_gen, torch.device("cpu"))
                x = _crop_flip(x, self.crop_pad, *(p[_shard(n_global, self.rank, self.world_size)] for p in params))
            if self.with_index:
                rows = order[i * self.batch_size:(i + 1) * self.batch_size]
                yield x, y, rows[_shard(n_global, self.rank, self.world_size)]
            else:
                yield x, y


def _from_worker(exc: FastrobustError) -> FastrobustError:
    """An error raised in a worker process, as a one-line error of the same kind (the DataLoader adds
    the worker's traceback to the message)."""
    text = str(exc)
    if "Traceback" not in text:
        return exc
    last = [line for line in text.splitlines() if line.strip()][-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return type(exc)(last[len(prefix):] if last.startswith(prefix) else last)


def lazy(split) -> LazySplit:
    """An in-memory :class:`~.core.Split` (or a LazySplit, returned as is) as a LazySplit."""
    return split if isinstance(split, LazySplit) else LazySplit(TensorImages(split.x), split.y)
