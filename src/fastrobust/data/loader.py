"""Batched augmentation and a loader that keeps a whole split on the device."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

import torch

from ..errors import ConfigError
from .core import Split


def _draw(n: int, crop_pad: int, flip: bool, generator: torch.Generator | None,
          device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random crop offsets (rows, columns, in [0, 2*crop_pad]) and flip flags for ``n`` examples,
    drawn on the generator's device (``device`` if no generator) in a fixed order."""
    if generator is not None:
        device = generator.device
    offsets = torch.randint(0, 2 * crop_pad + 1, (2, n), generator=generator, device=device)
    flips = torch.rand(n, generator=generator, device=device) < 0.5 if flip else torch.zeros(n, dtype=torch.bool, device=device)
    return offsets[0], offsets[1], flips


def _crop_flip(x: torch.Tensor, crop_pad: int, dy: torch.Tensor, dx: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Crop each image of ``x`` from its zero-padded version at offset (dy, dx), mirrored where ``flips``:
    one gather on x's device."""
    b, c, h, w = x.shape
    if dy.device != x.device:
        dy, dx, flips = dy.to(x.device), dx.to(x.device), flips.to(x.device)
    padded = torch.nn.functional.pad(x, (crop_pad,) * 4)
    rows = dy[:, None] + torch.arange(h, device=x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)
    cols = dx[:, None] + torch.where(flips[:, None], cols.flip(1), cols)
    return padded[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(c, device=x.device)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def augment(x: torch.Tensor, crop_pad: int, flip: bool, generator: torch.Generator | None) -> torch.Tensor:
    """Randomly crop (with ``crop_pad`` pixels of zero padding) and horizontally flip a batch.

    ``x`` is a float (B, C, H, W) batch on any device; the work is batched
    tensor operations on that device. Each example gets its own random offset
    and, if ``flip``, a flip with probability 1/2. The random numbers come
    from ``generator``, which may live on x's device or on the CPU (the draws
    are then moved to x's device); None uses torch's default generator for
    x's device. With ``crop_pad=0`` and ``flip=False``, ``x`` is returned as is.
    """
    if crop_pad == 0 and not flip:
        return x
    return _crop_flip(x, crop_pad, *_draw(x.shape[0], crop_pad, flip, generator, x.device))


def _upload(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """CPU tensor ``t`` on ``device``, copied without making the host wait for the device (pinned first on
    CUDA); ``t`` itself when it is there already."""
    if t.device == device:
        return t
    if device.type == "cuda":
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _shard(n: int, rank: int, world_size: int) -> slice:
    """The rank-th of ``world_size`` contiguous, near-equal parts of range(n)."""
    q, r = divmod(n, world_size)
    start = rank * q + min(rank, r)
    return slice(start, start + q + (rank < r))


def _generator(seed: int, *stream: object) -> torch.Generator:
    """A CPU generator whose seed is a hash of ``seed`` and ``stream``."""
    digest = hashlib.sha256(repr((seed, *stream)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


class DeviceLoader:
    """Iterates minibatches of a Split held whole on the device, as float [0,1] tensors.

    The permutation and the augmentation of an epoch are drawn from CPU
    generators seeded by (seed, epoch) only, so they do not depend on the
    device and a run resumed at epoch e sees exactly the batches of an
    uninterrupted run. Both are copied to the device once per epoch, without
    blocking: iterating needs no host-device synchronisation.

    Distributed use: every rank draws the same global permutation, cut into
    global batches of ``batch_size``; rank r gets the r-th of ``world_size``
    contiguous shards of each global batch. Augmentation is drawn for the
    whole global batch too, so the union of the ranks' batches equals the
    single-process batch, augmentation included. When a final partial global
    batch (``drop_last=False``) has fewer examples than ranks, some ranks get
    an empty batch: all ranks always yield the same number of batches.

    With ``with_index=True`` each minibatch is ``(x, y, index)``: ``index`` holds the split's row of each
    example (int64, on the device, sliced from the epoch's order uploaded once: no synchronisation), for
    methods that keep state per training example. Without it, ``(x, y)``.
    """

    def __init__(self, split: Split, batch_size: int, *, shuffle: bool, device: torch.device | str = "cpu",
                 seed: int = 0, crop_pad: int = 0, flip: bool = False, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, with_index: bool = False) -> None:
        if batch_size < 1:
            raise ConfigError(f"the batch size must be at least 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not valid for world size {world_size}")
        if batch_size % world_size:
            raise ConfigError(f"the batch size {batch_size} must be divisible by the number of processes ({world_size})")
        if crop_pad < 0:
            raise ConfigError(f"the crop padding must be 0 or more, got {crop_pad}")
        self.split = self._place(split, device)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.crop_pad, self.flip, self.drop_last = crop_pad, flip, drop_last
        self.rank, self.world_size = rank, world_size
        self.with_index = with_index
        self.epoch = 0

    def _place(self, split: Split, device) -> Split:
        return split.to(device)

    def _order(self) -> torch.Tensor:
        """The epoch's order of the examples (a CPU tensor): a function of (seed, epoch) only."""
        n = len(self.split)
        return torch.randperm(n, generator=_generator(self.seed, self.epoch, "order")) if self.shuffle else torch.arange(n)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation and augmentation the next iteration uses."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = len(self.split)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _augmentation(self) -> torch.Tensor:
        """The epoch's crop offsets and flips, ``(3, n)`` (rows, columns, flip) in the epoch's order: drawn on
        the CPU minibatch by minibatch (the numbers do not depend on the device), for all minibatches at once."""
        aug_gen = _generator(self.seed, self.epoch, "augment")
        n, size = len(self.split), self.batch_size
        draws = [_draw(len(range(n)[i * size:(i + 1) * size]), self.crop_pad, self.flip, aug_gen, torch.device("cpu"))
                 for i in range(len(self))]
        return torch.stack([torch.cat([d[j].long() for d in draws]) for j in range(3)])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        # The epoch's order and augmentation are copied to the device once, without blocking: the
        # minibatches then need no host-device synchronisation.
        device = self.split.x.device
        order = _upload(self._order(), device)
        augmenting = self.crop_pad > 0 or self.flip
        aug = _upload(self._augmentation(), device) if augmenting else None
        for i in range(len(self)):
            rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
            batch = order[rows]
            shard = _shard(len(batch), self.rank, self.world_size)
            idx = batch[shard]
            x = self.split.x[idx].float().div_(255)
            if augmenting:
                dy, dx, flips = aug[:, rows][:, shard]
                x = _crop_flip(x, self.crop_pad, dy, dx, flips.bool())
            yield (x, self.split.y[idx], idx) if self.with_index else (x, self.split.y[idx])
