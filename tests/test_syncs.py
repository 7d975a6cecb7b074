"""Host-device synchronisations per training iteration, for every registered method (issue 26).

A GPU stalls whenever the host reads a device value. On the CPU the same places are found by counting,
inside each training iteration (the loader's next minibatch and the engine's ``_train_batch``), every call
that reads a tensor on the host or moves one between devices: ``item``, ``tolist``, ``cpu``, ``numpy``,
``__bool__``, ``__float__``, ``__int__``, ``__index__``, ``nonzero`` (also ``torch.nonzero``,
``argwhere``, ``masked_select`` and the one-argument ``torch.where``), indexing or assigning with a
boolean mask, a blocking ``.to()`` naming a device, and ``torch.tensor``/``as_tensor`` with a device.
Each is attributed to the nearest fastrobust frame. The optimizer's own step counters (Adam keeps them
on the host) are not counted. The runs go through the real engine (``fastrobust.train``) for one epoch
of MNIST (no augmentation) and of CIFAR-style 3x32x32 data with crop_pad 4 and flips, on the path an
accelerator takes (early-stopped attacks masked, not compacted to sub-batches as on the CPU).

The budget: no sync in any iteration, except GAAT's one per check step (it decides between a full
backward and a sub-batch refresh from how many examples need a true gradient).
"""

from __future__ import annotations

import collections
import contextlib
import importlib
import os
import pkgutil
import sys

import pytest
import torch
from torch import nn

from fastrobust.attacks import kernel
from fastrobust.config import TrainConfig
from fastrobust.data import loader as loader_mod
from fastrobust.engine import loop, trainer
from fastrobust.methods import list_methods

METHODS = [cls.name for cls in list_methods()]
SRC = os.path.dirname(os.path.dirname(os.path.abspath(trainer.__file__))) + os.sep   # .../src/fastrobust/
OPTIM = os.sep + os.path.join("torch", "optim") + os.sep
# the M+ methods start at level 0 (no attack): start them at an attack level, so that the attack is counted
START = {"k_start": 3, "r_start": 2}


class _Stop(Exception):
    """Raised after the first epoch's minibatches: validation and checkpoints are not counted."""


class SyncCounter:
    """Counts host reads and blocking device moves made while :attr:`active`, by fastrobust line."""

    def __init__(self, root: str = SRC) -> None:
        self.root = root             # calls are attributed to the nearest frame of a file under root
        self.active = False
        self.busy = False            # inside a counted call: its own nested calls are not counted again
        self.per_iteration: list[collections.Counter] = []

    @contextlib.contextmanager
    def window(self, new_iteration: bool = False):
        if new_iteration:
            self.per_iteration.append(collections.Counter())
        was, self.active = self.active, True
        try:
            yield
        finally:
            self.active = was

    def hit(self, what: str) -> None:
        if not self.active or self.busy or not self.per_iteration:
            return
        frame = sys._getframe(2)
        while frame is not None:
            name = frame.f_code.co_filename
            if OPTIM in name:
                return           # the optimizer's host-side step counters
            if name.startswith(self.root):
                where = f"{os.path.relpath(name, os.path.dirname(self.root))}:{frame.f_lineno}"
                self.per_iteration[-1][f"{where} {what}"] += 1
                return
            frame = frame.f_back

    def wrap(self, what: str, fn, counts=lambda *a, **k: True):
        counter = self

        def wrapped(*args, **kwargs):
            if counter.active and not counter.busy and counts(*args, **kwargs):
                counter.hit(what)
            if counter.busy:
                return fn(*args, **kwargs)
            counter.busy = True
            try:
                return fn(*args, **kwargs)
            finally:
                counter.busy = False

        return wrapped


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


def _names_device(*args, **kwargs) -> bool:
    """``.to(...)`` naming a device, not non-blocking."""
    if kwargs.get("non_blocking") or (len(args) > 2 and args[2] is True and isinstance(args[1], torch.dtype)):
        return False
    return "device" in kwargs or any(isinstance(a, (torch.device, str)) or
                                     (isinstance(a, torch.Tensor) and a is not args[0]) for a in args[1:2])


def _with_device(*args, **kwargs) -> bool:
    return kwargs.get("device") is not None


def install(monkeypatch, counter: SyncCounter) -> None:
    T = torch.Tensor
    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__", "nonzero",
                 "argwhere", "masked_select"):
        monkeypatch.setattr(T, name, counter.wrap(name, getattr(T, name)))
    monkeypatch.setattr(T, "__getitem__", counter.wrap("bool-mask []", T.__getitem__, lambda t, i: _bool_index(i)))
    monkeypatch.setattr(T, "__setitem__", counter.wrap("bool-mask []=", T.__setitem__,
                                                      lambda t, i, v: _bool_index(i)))
    monkeypatch.setattr(T, "to", counter.wrap("blocking .to(device)", T.to, _names_device))
    for name in ("nonzero", "argwhere", "masked_select"):
        monkeypatch.setattr(torch, name, counter.wrap(f"torch.{name}", getattr(torch, name)))
    monkeypatch.setattr(torch, "where", counter.wrap("torch.where(cond)", torch.where, lambda *a, **k: len(a) == 1))
    for name in ("tensor", "as_tensor"):
        monkeypatch.setattr(torch, name, counter.wrap(f"torch.{name}(device=)", getattr(torch, name), _with_device))

    real_iter = loader_mod.DeviceLoader.__iter__

    def window(fn):
        def counted(*args, **kwargs):
            with counter.window():
                return fn(*args, **kwargs)
        return counted

    def iterate(self):
        it = real_iter(self)
        while True:
            with counter.window(new_iteration=True):   # an iteration starts with the loader's next minibatch
                try:
                    item = next(it)
                except StopIteration:
                    counter.per_iteration.pop()
                    return
            yield item

    monkeypatch.setattr(kernel, "COMPACT_ON_CPU", False)   # what an accelerator runs (masks, not sub-batches)
    for module in engine_modules("_train_batch"):         # the engine's minibatch step, wherever it is defined
        monkeypatch.setattr(module, "_train_batch", window(getattr(module, "_train_batch")))
    monkeypatch.setattr(loader_mod.DeviceLoader, "__iter__", iterate)


def engine_modules(name: str) -> list:
    """The modules of fastrobust.engine that hold ``name``."""
    import fastrobust.engine as engine

    found = []
    for info in pkgutil.iter_modules(engine.__path__):
        module = importlib.import_module(f"fastrobust.engine.{info.name}")
        if hasattr(module, name):
            found.append(module)
    return found


# ---- CIFAR-style data: 3x32x32, random crop with 4 pixels of padding and flips -----------------------------
def cifar_like(n_train: int = 320, n_test: int = 20):
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n_train + n_test, 3, 32, 32), generator=g).float() / 255
    y = torch.arange(n_train + n_test) % 10
    pairs = lambda a, b: torch.utils.data.TensorDataset(x[a:b], y[a:b])   # noqa: E731
    return pairs(0, n_train), pairs(n_train, n_train + n_test), {"num_classes": 10, "eps": 8 / 255, "crop_pad": 4,
                                                                  "flip": True}


def tiny_net(num_classes, in_channels, image_size):
    """A small conv net with BatchNorm (so that train-mode statistics are exercised)."""
    h, w = image_size
    net = nn.Sequential(nn.Conv2d(in_channels, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * ((h + 1) // 2) * ((w + 1) // 2), num_classes))
    net.first_layer = "0"     # as a user's model names its first layer (for yopo)
    return net


DATA = {
    "mnist": dict(dataset="mnist-subset", train_subset=200, val_size=100, batch_size=100),
    "cifar-style": dict(dataset="test_syncs:cifar_like", model="test_syncs:tiny_net", train_subset=200, val_size=100,
                        batch_size=100),
}


def count_syncs(monkeypatch, tmp_path, method: str, data: str, **params) -> tuple[list[collections.Counter], dict]:
    """Per-iteration sync counters of one epoch of ``method`` on ``data``, and the method's parameters."""
    cls = [c for c in list_methods() if c.name == method][0]
    names = {p.name for p in cls.params}
    params = {**{k: v for k, v in START.items() if k in names}, **params}
    counter = SyncCounter()
    cfg = TrainConfig(method=method, method_params=params, epochs=1, out=str(tmp_path / f"{method}-{data}"),
                      device="cpu", test_subset=10, **DATA[data])
    seen = []   # whether each minibatch of the method ran inside a counted window

    def train_batch(self, *args, **kwargs):
        seen.append(counter.active)
        return real_train_batch(self, *args, **kwargs)

    def stop(self, epoch):   # after the epoch's minibatches: validation and checkpoints are not counted
        raise _Stop

    real_train_batch = cls.train_batch
    with monkeypatch.context() as mp:
        install(mp, counter)
        mp.setattr(cls, "train_batch", train_batch)
        mp.setattr(cls, "on_epoch_end", stop)
        with pytest.raises(_Stop):
            trainer.train(cfg, progress=False, echo=lambda s: None)
    assert seen and all(seen), "the method's minibatches ran outside the counted window: update install()"
    return counter.per_iteration, cls.resolve_params(params)


def budget(method: str, params: dict) -> int:
    """Syncs allowed per iteration: GAAT's one per check step (of its K - 1 later steps), else none."""
    if "check_every" in params:
        level = params.get("steps", params.get("k_start", 0))
        return max(level - 1, 0) // params["check_every"]
    return 0


@pytest.mark.parametrize("data", list(DATA))
@pytest.mark.parametrize("method", METHODS)
def test_no_host_sync_inside_a_training_iteration(monkeypatch, tmp_path, method, data):
    iterations, params = count_syncs(monkeypatch, tmp_path, method, data)
    assert len(iterations) == 2
    allowed = budget(method, params)
    for i, found in enumerate(iterations):
        assert sum(found.values()) <= allowed, (f"{method} on {data}, iteration {i}: {sum(found.values())} host "
                                                f"syncs (budget {allowed}): {dict(found)}")


def test_gaat_adapt_adds_no_host_sync(monkeypatch, tmp_path):
    """GAAT's adaptive threshold (--adapt) keeps its state on the device: the same budget as plain GAAT."""
    iterations, params = count_syncs(monkeypatch, tmp_path, "gaat", "mnist", adapt=True)
    assert params["adapt"] and all(sum(found.values()) <= budget("gaat", params) for found in iterations), iterations


def test_the_counter_sees_each_kind_of_sync(monkeypatch):
    counter = SyncCounter(root=os.path.abspath(__file__))
    install(monkeypatch, counter)
    t = torch.arange(4.0)
    with counter.window(new_iteration=True):
        t.sum().item(), t.tolist(), t.cpu(), bool(t[0]), float(t[1]), int(t[2])
        t[t > 1], t.nonzero(), torch.where(t > 1), t.to("cpu"), torch.tensor(1.0, device="cpu")
        t[t > 2] = 0.0
        t.to(torch.float64), torch.where(t > 1, t, 0.0), t[torch.tensor([0, 1])], t[1:], t + 1   # no sync
    kinds = sorted(key.split(" ", 1)[1] for key in counter.per_iteration[0])
    assert kinds == sorted(["item", "tolist", "cpu", "__bool__", "__float__", "__int__", "bool-mask []", "nonzero",
                            "torch.where(cond)", "blocking .to(device)", "torch.tensor(device=)", "bool-mask []="])
    assert sum(counter.per_iteration[0].values()) == 12


def test_fp16_replay_step_reads_no_scale_on_the_host(monkeypatch):
    """With loss scaling (--amp fp16), the input gradient a replay gets back is unscaled on the device: the
    scale is not read on the host (GradScaler.get_scale() would sync at every replay). What remains is the
    scaler's own check for infinities inside ``scaler.step`` (GradScaler's, with an unfused optimizer)."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    dist = SimpleNamespace(enabled=False, average_buffers=lambda m: None)
    step = loop.Stepper(opt, scaler, list(model.parameters()), model, dist)
    x, y = torch.rand(8, 1, 4, 4), torch.arange(8) % 3
    x1 = x.clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(nn.functional.cross_entropy(model(x1), y), x1)
    counter = SyncCounter()
    install(monkeypatch, counter)
    x2 = x.clone().requires_grad_(True)
    with counter.window(new_iteration=True):
        grad = step(nn.functional.cross_entropy(model(x2), y), wrt=x2)
    lines = open(loop.__file__).read().splitlines()
    places = [key.split(" ")[0] for key in counter.per_iteration[0]]
    assert all("scaler.step(opt)" in lines[int(p.rsplit(":", 1)[1]) - 1] for p in places), places
    assert torch.allclose(grad, expected)
