"""The process group as the engine sees it: rank, world size, reductions, and the DDP model.

With one process every reduction is the identity and nothing here talks to
another process. Under ``torchrun`` (the environment holds WORLD_SIZE > 1)
the engine joins the process group (NCCL on CUDA, each process on
``cuda:LOCAL_RANK``; Gloo on the CPU) and wraps the model in
DistributedDataParallel. Methods only ever see ``MethodContext.all_reduce_sum``
and the model, so they run unchanged.

How attacks coexist with DDP. Methods get the DDP-wrapped model for every
forward, attack forwards included. DDP is built with forward buffer syncing
off, so a forward does no communication at all: a method may run any number
of forwards, of any size, in any mode, and processes may differ in that
number (FAT's early stop, GAAT's per-example work). An attack takes
``torch.autograd.grad(loss, input)``, which runs no parameter's gradient
hook, so DDP's reducer is left with nothing pending and the next forward
proceeds. The only collective of a training step is the gradient all-reduce
inside the backward of the engine's ``step`` (one per call, on every
process), followed by the engine's averaging of BatchNorm statistics
(:meth:`Dist.average_buffers`). With ``--sync-bn`` every train-mode forward
of a BatchNorm layer is itself a collective, so there every process must run
the same train-mode forwards.

Failures. Setup work (checking the output folder, loading data, writing
checkpoints) runs through :meth:`Dist.agree`: if it fails on one process, that
process raises its own error and every other raises :class:`PeerFailed`,
which the CLI does not print, so the message appears once and every process
exits non-zero. A failure in the middle of an epoch (a method raising) makes
the failing process abort the process group on its way out; the others, blocked
in the next collective, fail at once with :class:`PeerLost` instead of waiting.
The process group's timeout (``--dist-timeout``) bounds any other wait, and
torchrun also stops the remaining processes when one exits non-zero.
"""

from __future__ import annotations

import copy as _copy

import datetime
import hashlib
import inspect
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ConfigError, FastrobustError

T = TypeVar("T")


class PeerFailed(FastrobustError):
    """Raised on the processes where a shared step did NOT fail, when it failed on another one.

    The failing process reports its own error; ``quiet`` tells the CLI not to print this one.
    """

    quiet = True


class PeerLost(FastrobustError):
    """A collective failed because another process of the job is gone (or the wait timed out)."""


def derived_seed(*parts: object) -> int:
    """A 63-bit seed that is a hash of ``parts`` (the same on every process and machine)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")   # where small tensors for collectives live
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    # ---- reductions --------------------------------------------------------
    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_reduce_max(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return tensor

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, obj: T, src: int = 0) -> T:
        """``obj`` of process ``src`` on every process (pickled)."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def gather_objects(self, obj: Any) -> list:
        """Every process's ``obj``, in rank order, on every process (pickled; tensors moved to the CPU)."""
        obj = to_cpu(obj)
        if not self.enabled:
            return [obj]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_module(self, module: nn.Module, src: int = 0) -> None:
        """Copy the parameters and buffers of ``module`` on process ``src`` to every process."""
        if self.enabled:
            with torch.no_grad():
                for tensor in module.state_dict().values():
                    dist.broadcast(tensor, src=src)

    def average_buffers(self, module: nn.Module) -> None:
        """Average the running statistics of the normalisation layers over the processes (one collective).

        Each process updates BatchNorm statistics from its own shard; their mean is
        what one process would hold after the same global minibatches (the mean is
        exact, the variance misses the spread between shards). A no-op with one
        process or a model without such layers.
        """
        if not self.enabled:
            return
        tensors = _norm_buffers(module)
        if not tensors:
            return
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat /= self.world_size
        offset = 0
        with torch.no_grad():
            for t in tensors:
                part = flat[offset:offset + t.numel()].view_as(t)
                t.copy_(part.round() if not t.is_floating_point() else part)
                offset += t.numel()

    # ---- agreeing on failures ------------------------------------------------
    def agree(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on this process; if it raised on any process, raise on every process.

        The lowest-ranked process whose ``fn`` raised re-raises its own error (so is
        every other one whose error is not a :class:`FastrobustError`, i.e. a bug
        with a traceback); the others raise :class:`PeerFailed`, which the CLI does
        not print. So a setup error, the same on every process, shows once, and no
        process is left waiting for another.
        """
        error: BaseException | None = None
        result = None
        try:
            result = fn()
        except Exception as exc:   # noqa: BLE001 - re-raised below
            error = exc
        if not self.enabled:
            if error is not None:
                raise error
            return result
        flags = torch.zeros(self.world_size, device=self.device)
        flags[self.rank] = float(error is not None)
        failed = self.all_reduce_sum(flags).nonzero().flatten().tolist()
        if not failed:
            return result
        if error is not None and (failed[0] == self.rank or not isinstance(error, FastrobustError)):
            raise error
        raise PeerFailed(f"process(es) {', '.join(map(str, failed))} of this job failed; the error is shown above")

    def main_only(self, fn: Callable[[], T]) -> T | None:
        """``fn()`` run on the main process only (``None`` elsewhere); an error in it raises on every process."""
        return self.agree(fn if self.is_main else (lambda: None))

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on the main process only, its result given to every process."""
        return self.broadcast_object(self.main_only(fn))

    def local_main_first(self, fn: Callable[[], T]) -> T:
        """``fn()`` on every process, first on each machine's local rank 0 (which may download or
        write caches), then on the others (which find the files ready)."""
        first = self.local_rank == 0
        result = self.agree(fn if first else (lambda: None))
        later = self.agree((lambda: None) if first else fn)
        return result if first else later

    # ---- the model -----------------------------------------------------------
    def wrap(self, model: nn.Module, device: torch.device, sync_bn: bool = False) -> tuple[nn.Module, nn.Module]:
        """``(raw, wrapped)``: with several processes ``wrapped`` is the DDP model (and ``raw``'s BatchNorm
        layers SyncBatchNorm if ``sync_bn``); with one process both are ``model``."""
        if not self.enabled:
            return model, model
        if sync_bn:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        kwargs: dict[str, Any] = {"device_ids": [device.index] if device.type == "cuda" else None}
        # no buffer broadcast in forwards: attack forwards stay communication-free (see the module docstring)
        if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters:
            kwargs["forward_sync_buffers"] = False
        else:
            kwargs["broadcast_buffers"] = False
        return model, nn.parallel.DistributedDataParallel(model, **kwargs)

    # ---- the end -------------------------------------------------------------
    def shutdown(self, failed: bool = False) -> None:
        """Leave the process group if this process created it. After a failure the group is
        aborted, so processes blocked in a collective with this one fail at once."""
        if not (self.owns_group and dist.is_initialized()):
            return
        if failed:
            abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
            try:
                if abort is not None and dist.get_backend() == "nccl":
                    abort()
                else:
                    dist.destroy_process_group()
            except Exception:   # noqa: BLE001 - already failing; the original error matters
                pass
        else:
            dist.destroy_process_group()


def to_cpu(obj: Any, copy: bool = False) -> Any:
    """``obj`` with every tensor (in nested dicts, lists and tuples) on the CPU; ``copy``: a deep copy that
    shares no memory with ``obj`` even where a tensor is already on the CPU (a snapshot)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=copy)
    if isinstance(obj, dict):
        return {k: to_cpu(v, copy) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v, copy) for v in obj)
    return _copy.deepcopy(obj) if copy else obj


def _norm_buffers(module: nn.Module) -> list[torch.Tensor]:
    """Running statistics of normalisation layers that track them (not SyncBatchNorm, already global)."""
    out = []
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase) and not isinstance(m, nn.SyncBatchNorm):
            out.extend(b for b in m.buffers(recurse=False) if b is not None)
    return out


def env_world_size() -> int:
    """WORLD_SIZE as set by torchrun (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number; launch with torchrun") from None


def init_from_env(device: torch.device, timeout_s: float = 1800.0) -> tuple[Dist, torch.device]:
    """Join the process group if launched by torchrun, else a single process.

    Returns the :class:`Dist` and the device this process trains on: with CUDA,
    ``cuda:LOCAL_RANK``. The backend is NCCL on CUDA and Gloo on the CPU;
    ``timeout_s`` bounds every collective wait.
    """
    world = env_world_size()
    if world <= 1:
        return Dist(device=device), device
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ConfigError(f"dist_timeout must be a number of seconds > 0, got {timeout_s!r}")
    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing and not dist.is_initialized():
        raise ConfigError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: launch several processes with "
                          "`torchrun --nproc_per_node=N -m fastrobust train ...`")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(f"process with LOCAL_RANK {local_rank} has no GPU: only {count} visible on this machine; "
                              f"use torchrun --nproc_per_node={count} (or fewer)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return Dist(dist.get_rank(), dist.get_world_size(), local_rank, device, owns), device


def is_peer_loss(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another process died or the wait timed out."""
    kinds = tuple(k for k in (getattr(dist, "DistBackendError", None), getattr(dist, "DistNetworkError", None),
                              getattr(dist, "DistStoreError", None)) if k is not None)
    if kinds and isinstance(exc, kinds):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(s in text for s in (
        "Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "NCCL communicator was aborted"))


PEER_LOSS_GRACE_S = 3.0   # see peer_lost()


def peer_lost(exc: BaseException, group: Dist, timeout_s: float) -> PeerLost | None:
    """A lost contact with the other processes (not this one's own error) as a :class:`PeerLost`, else None.

    Under torchrun, waits :data:`PEER_LOSS_GRACE_S` so that the process that failed exits first (torchrun
    reports the first as the root cause); the message is printed now in case this one is stopped."""
    if not isinstance(exc, Exception) or isinstance(exc, FastrobustError) or not is_peer_loss(exc):
        return None
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lost = PeerLost(f"process {group.rank} of {group.world_size} lost contact with the others: another process "
                    f"probably failed (its error is shown above) or the wait exceeded --dist-timeout "
                    f"({timeout_s:g} s). ({first})")
    if "TORCHELASTIC_RUN_ID" in os.environ:
        print(f"fastrobust: error: {lost}", file=sys.stderr, flush=True)
        lost.quiet = True
        time.sleep(PEER_LOSS_GRACE_S)
    return lost


def shard_weight(n_local: int, n_global: int, world_size: int) -> float:
    """Factor on a process's mean minibatch loss so that DDP's average of the processes' gradients is the
    gradient of the mean loss over the whole global minibatch (1 when the shards are equal)."""
    return world_size * n_local / n_global if n_global else 0.0


def global_batch_sizes(n: int, batch_size: int) -> list[int]:
    """The size of each global minibatch of an epoch of ``n`` examples (the last one may be smaller)."""
    return [min(batch_size, n - i * batch_size) for i in range(math.ceil(n / batch_size))]
