"""What the pieces of an attack cost on this machine, in units of one attack pass.

fastrobust counts cost in passes (METHODS.md): a forward+backward of one example is 1, a forward
alone 1/3. That is a convention; this script measures the real ratios for a model, so that a gap
between "passes saved" and "time saved" (GAAT's check forwards, its sub-batch refreshes) can be
read off. Every piece runs on the same minibatch, interleaved, ``--repeats`` times; the medians
of CPU seconds (``time.process_time``) are printed, divided by the attack pass's.

    python benchmarks/pass_costs.py                                       # CIFAR-10 shape, preact-resnet18 width 16, batch 32
    python benchmarks/pass_costs.py --model mnist-cnn --dataset mnist --batch-size 100
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from fastrobust.data import DATASETS
from fastrobust.engine.checkpoint import build_model, model_spec


def main(argv=None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="preact-resnet18")
    ap.add_argument("--width", type=int, default=16, help="model width option (models that have one; 0: none)")
    ap.add_argument("--dataset", default="cifar10", help="only its image shape and class count are used")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--sub-batch", type=int, default=10, help="size of the sub-batch refresh measured")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = DATASETS[args.dataset]
    model = build_model(model_spec(args.model, info, {"width": args.width} if args.width else {})).train()
    x = torch.rand(args.batch_size, info.channels, *info.image_size)
    y = torch.randint(0, info.num_classes, (args.batch_size,))

    def attack_pass(n=args.batch_size):      # what PGD pays per step: forward, backward to the input only
        xa = x[:n].clone().requires_grad_(True)
        torch.autograd.grad(F.cross_entropy(model(xa), y[:n], reduction="sum"), xa)

    def forward_graph():                     # GAAT's check forward, graph kept for a possible full backward
        return F.cross_entropy(model(x.clone().requires_grad_(True)), y, reduction="none")

    def forward_no_graph():
        with torch.no_grad():
            model(x)

    def weight_step():                       # the training step's forward and full backward (no optimizer)
        F.cross_entropy(model(x), y).backward()
        model.zero_grad(set_to_none=True)

    pieces = {
        f"attack pass, batch {args.batch_size}": attack_pass,
        f"attack pass, sub-batch {args.sub_batch}": lambda: attack_pass(args.sub_batch),
        "forward with graph": forward_graph,
        "forward without graph": forward_no_graph,
        "weight step (forward + full backward)": weight_step,
    }
    times: dict[str, list[float]] = {k: [] for k in pieces}
    for _ in range(args.repeats + 3):
        for name, fn in pieces.items():
            t = time.process_time()
            fn()
            times[name].append(time.process_time() - t)
    med = {k: statistics.median(v[3:]) for k, v in times.items()}   # the first 3 rounds warm up
    base = med[f"attack pass, batch {args.batch_size}"]
    print(f"{args.model} ({args.dataset} shape), batch {args.batch_size}, {args.threads} thread(s), torch {torch.__version__}; "
          f"median CPU ms of {args.repeats} repeats, and as a fraction of one attack pass of the batch:")
    for name, t in med.items():
        print(f"  {name:40s} {1e3 * t:8.2f} ms  {t / base:5.2f}")
    per_example = med[f"attack pass, sub-batch {args.sub_batch}"] / args.sub_batch / (base / args.batch_size)
    print(f"  a sub-batch refresh costs {per_example:.2f} attack passes per example refreshed")
    return {k: t / base for k, t in med.items()}


if __name__ == "__main__":
    main()
