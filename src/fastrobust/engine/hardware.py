"""A run's hardware settings from its device (:func:`setup_hardware`: bf16 and channels_last on CUDA, fp32 on
the CPU, cuDNN autotuning, TF32), the optimizer's options (:func:`optimizer_options`: fp16 without a sync per
step) and its peak memory (:func:`peak_memory`, in summary.json and the bench tables)."""

from __future__ import annotations

import sys

import torch


def setup_hardware(cfg, device: torch.device) -> None:
    """Resolve the hardware defaults of a run's configuration from its device, in place (config.yaml records
    the result, so a resumed run keeps it), and set the backend flags for fast static-shape training.

    * ``amp: auto``: bf16 autocast on a CUDA GPU that supports it, ``none`` (fp32) elsewhere (the CPU);
    * ``channels_last`` unset: on on a CUDA GPU unless amp is ``none`` (so ``--amp none`` is the plain fp32
      baseline), off on the CPU;
    * on CUDA: ``cudnn.benchmark`` (every epoch has the same minibatch shapes: each is tuned once), TF32
      matmuls and convolutions, and the peak memory counter reset (see :func:`peak_memory`).
    A configuration saved before these defaults (``amp: none``, ``channels_last: false``) is kept as it is.
    """
    cuda = device.type == "cuda"
    if cfg.amp == "auto":
        cfg.amp = "bf16" if cuda and torch.cuda.is_bf16_supported() else "none"
    if cfg.channels_last is None:
        cfg.channels_last = cuda and cfg.amp != "none"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.set_float32_matmul_precision("high")
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory(device: torch.device) -> dict:
    """The process's peak memory so far, for summary.json and the bench tables: on CUDA the most memory
    tensors held on the GPU (``torch.cuda.max_memory_allocated``, since :func:`setup_hardware`), elsewhere
    the process's peak resident set size (``getrusage``'s ``ru_maxrss``: all of its memory, the
    interpreter and the data included). ``peak_memory_mb``: in MiB; ``peak_memory_kind``: which of the two."""
    if device.type == "cuda":
        peak, kind = torch.cuda.max_memory_allocated(device), "cuda max_memory_allocated"
    else:   # ru_maxrss: KiB on Linux, bytes on macOS
        try:
            import resource
        except ImportError:   # Windows
            return {"peak_memory_mb": None, "peak_memory_kind": None}
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak, kind = rss if sys.platform == "darwin" else rss * 1024, "peak RSS"
    return {"peak_memory_mb": round(peak / 2**20, 1), "peak_memory_kind": kind}


def optimizer_options(cfg, device: torch.device) -> dict:
    """Keyword arguments of the run's optimizer: with fp16 on CUDA the fused SGD/Adam, which takes the loss
    scaler's scale and inf check as device tensors (``GradScaler.step`` otherwise reads the inf check on the
    host: one sync per optimizer step); nothing otherwise (the same arithmetic as before)."""
    return {"fused": True} if cfg.amp == "fp16" and device.type == "cuda" else {}
