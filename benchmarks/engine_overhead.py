"""Engine overhead: passes per second of ``fastrobust train --method pgd`` against a minimal
hand-written PGD-AT loop with the same model, batch size, optimizer and data, in one process.

    python benchmarks/engine_overhead.py                 # mnist-subset, mnist-cnn, PGD-3, 3 epochs, 3 rounds
    python benchmarks/engine_overhead.py --steps 5 --epochs 2 --rounds 5 --threads 2
    python benchmarks/engine_overhead.py --device cuda --steps 10 --json overhead.json   # on a GPU

The engine's figure is its own ``train_seconds`` (the training loop only: validation, test
evaluation and checkpoint writes are outside it); the hand loop is timed the same way. Both
run back to back, ``--rounds`` times (alternating which goes first); the ratio printed is the
median over rounds of engine passes/s / hand-loop passes/s within a round (1.0 = no overhead;
the target is >= 0.95 on the CPU). CPU seconds (``time.process_time``) are compared too: on a
shared machine they move less than wall time. ``--device``: where both run (the data held there, fp32,
contiguous memory format for both: ``--amp none --no-channels-last``); on CUDA the clock is read after
``torch.cuda.synchronize``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from fastrobust.timing import sync

from fastrobust.config import TrainConfig, resolve
from fastrobust.data import DATASETS, load_dataset
from fastrobust.engine import train
from fastrobust.engine.checkpoint import build_model, model_spec
from fastrobust.engine.device import pick_device
from fastrobust.methods import get_method


def hand_loop(cfg: TrainConfig, x_all: torch.Tensor, y_all: torch.Tensor,
              device: torch.device = torch.device("cpu")) -> tuple[float, float, float, list[float]]:
    """Minimal PGD-AT: K signed-gradient steps from a uniform start (model in train mode, as the
    engine's default), then one Adam step on x+delta. Returns (passes, wall s, CPU s, wall s per epoch)."""
    torch.manual_seed(cfg.seed)
    info = DATASETS[cfg.dataset]
    model = build_model(model_spec(cfg.model, info, {})).to(device)
    x_all, y_all = x_all.to(device), y_all.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    eps, alpha, steps, bs, n = cfg.eps, cfg.alpha, cfg.method_params["steps"], cfg.batch_size, len(y_all)
    model.train()
    sync(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    epochs = []
    for _ in range(cfg.epochs):
        epoch_start = time.perf_counter()
        order = torch.randperm(n, device=device)
        for i in range(0, n, bs):
            idx = order[i:i + bs]
            x = x_all[idx].float().div_(255.0)
            y = y_all[idx]
            delta = (torch.rand_like(x) * 2 - 1).mul_(eps)
            delta = ((x + delta).clamp_(0, 1) - x).requires_grad_(True)
            for _ in range(steps):
                loss = F.cross_entropy(model(x + delta), y)
                (grad,) = torch.autograd.grad(loss, delta)
                with torch.no_grad():
                    delta += alpha * grad.sign()
                    delta.clamp_(-eps, eps)
                    delta.copy_((x + delta).clamp_(0, 1) - x)
            loss = F.cross_entropy(model((x + delta).detach()), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync(device)
        epochs.append(time.perf_counter() - epoch_start)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return float(cfg.epochs * n * (steps + 1)), wall, cpu, epochs


def engine_run(cfg: TrainConfig, root: Path, k: int) -> tuple[float, float, float, list[float]]:
    """One ``fastrobust train`` run; returns (passes per example, train wall s, train CPU s, wall s per epoch)."""
    run = dataclasses.replace(cfg, out=str(root / f"engine-{k}"), method_params=dict(cfg.method_params))
    s = train(run, progress=False, echo=lambda line: None)
    epochs = [json.loads(line)["epoch_seconds"] for line in (Path(run.out) / "metrics.jsonl").read_text().splitlines()]
    return s["passes_per_example"], s["train_seconds"], s["train_cpu_seconds"], epochs


def main(argv=None) -> float:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3, help="K of PGD-K (default 3)")
    ap.add_argument("--epochs", type=int, default=3, help="epochs per run (default 3; 60 batches each)")
    ap.add_argument("--rounds", type=int, default=3, help="runs of each, alternating (default 3)")
    ap.add_argument("--batch-size", type=int, default=100)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                    help="where both loops run (default cpu; auto: cuda when available)")
    ap.add_argument("--json", metavar="PATH", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = TrainConfig(method="pgd", dataset="mnist-subset", model="mnist-cnn", epochs=args.epochs,
                      batch_size=args.batch_size, optimizer="adam", lr=1e-3, eps=0.3, val_size=0,
                      test_subset=100, method_params={"steps": args.steps}, seed=0, device=args.device, amp="none",
                      channels_last=False)
    device = pick_device(args.device)
    cfg.alpha = resolve(cfg, DATASETS[cfg.dataset], get_method("pgd")).alpha   # the engine's default step
    data = load_dataset(cfg.dataset)
    x_all, y_all = data.train.x, data.train.y
    n = len(y_all)
    print(f"engine overhead: PGD-{args.steps} AT (alpha {cfg.alpha:.4g}), mnist-cnn, mnist-subset ({n} training images, val_size 0), "
          f"batch {args.batch_size}, {args.epochs} epochs x {-(-n // args.batch_size)} batches per run, "
          f"{args.rounds} rounds, torch {torch.__version__}, {torch.get_num_threads()} threads, {device}")
    engine, hand, engine_epochs, hand_epochs = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            if k % 2 == 0:
                per_example, wall, cpu, e_ep = engine_run(cfg, Path(tmp), k)
                passes, hwall, hcpu, h_ep = hand_loop(cfg, x_all, y_all, device)
            else:   # odd rounds: the hand loop first, so that order effects cancel
                passes, hwall, hcpu, h_ep = hand_loop(cfg, x_all, y_all, device)
                per_example, wall, cpu, e_ep = engine_run(cfg, Path(tmp), k)
            engine_epochs += e_ep
            hand_epochs += h_ep
            engine.append((per_example * n / wall, per_example * n / cpu))
            hand.append((passes / hwall, passes / hcpu))
            print(f"  round {k + 1}: engine {engine[-1][0]:8.0f} passes/s ({wall:.2f} s, CPU {cpu:.2f} s) | "
                  f"hand loop {hand[-1][0]:8.0f} passes/s ({hwall:.2f} s, CPU {hcpu:.2f} s)")
    paired = statistics.median(e[0] / h[0] for e, h in zip(engine, hand))
    paired_cpu = statistics.median(e[1] / h[1] for e, h in zip(engine, hand))
    best = max(e[0] for e in engine) / max(h[0] for h in hand)
    print("ratio engine / hand loop, median over rounds of the pair run back to back:")
    print(f"  wall time:   {paired:.3f}")
    print(f"  CPU seconds: {paired_cpu:.3f}   (moves less than wall time when other jobs share the machine)")
    print(f"  (best round of each, wall: {best:.3f})")
    fastest = min(hand_epochs) / min(engine_epochs)
    print(f"  fastest epoch of each ({len(engine_epochs)} epochs each; the same work): hand loop {min(hand_epochs):.3f} s, "
          f"engine {min(engine_epochs):.3f} s, ratio {fastest:.3f}")
    print(f"  (epoch-to-epoch spread, wall: engine {min(engine_epochs):.3f} to {max(engine_epochs):.3f} s, "
          f"hand loop {min(hand_epochs):.3f} to {max(hand_epochs):.3f} s)")
    print(f"target >= 0.95: {'met' if paired >= 0.95 else 'NOT met'} (wall), "
          f"{'met' if paired_cpu >= 0.95 else 'NOT met'} (CPU seconds)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "device": str(device), "steps": args.steps, "epochs": args.epochs, "rounds": args.rounds,
            "engine_passes_per_s": [e[0] for e in engine], "hand_passes_per_s": [h[0] for h in hand],
            "ratio_wall": paired, "ratio_cpu": paired_cpu, "ratio_fastest_epoch": fastest}, indent=1))
    return paired


if __name__ == "__main__":
    main()
