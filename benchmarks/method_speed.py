"""Training speed of methods side by side, from the same weights, on the same minibatches, in one run.

    python benchmarks/method_speed.py RUN_DIR "pgd steps=40 alpha=0.01" "gaat steps=40 alpha=0.01" \
        --batches 60 --rounds 2 --threads 2

Each method starts from RUN_DIR's best.pt (a trained model: the cost of GAAT or FAT depends on
the model's state, so a fresh model would not show the cost of a real run), with a fresh
optimizer of the run's kind, and trains on the same ``--batches`` minibatches of the run's
training data (a seeded permutation, the run's batch size and eps). Methods alternate within
each round; the table shows the median over rounds of wall and CPU seconds, the passes per
example the methods reported, and each method's time as a fraction of the first one's.
Run it on an otherwise idle machine: only ratios measured in one run are comparable.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from fastrobust import load_model
from fastrobust.config import TrainConfig, load_yaml, parse_number
from fastrobust.data import load_dataset
from fastrobust.methods import Batch, MethodContext, get_method


def parse_spec(spec: str) -> tuple[str, dict, float | None]:
    """'gaat steps=40 alpha=0.01' -> ('gaat', {'steps': '40'}, 0.01)."""
    name, *pairs = spec.split()
    params = dict(p.split("=", 1) for p in pairs)
    alpha = params.pop("alpha", None)
    return name, params, None if alpha is None else parse_number(alpha, f"{spec!r}: alpha")


def time_method(run: Path, cfg: TrainConfig, spec: str, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
                num_classes: int, ratio: float, examples: int = 0) -> tuple[float, float, float]:
    """(wall s, CPU s, passes per example) of ``spec`` on ``batches``, from the run's best weights."""
    name, given, alpha = parse_spec(spec)
    cls = get_method(name)
    params = cls.resolve_params(given)
    alpha = cls.default_alpha(cfg.eps, ratio, params) if alpha is None else alpha
    model = load_model(run).train()
    for p in model.parameters():
        p.requires_grad_(True)
    opt = (torch.optim.Adam(model.parameters(), lr=cfg.lr) if cfg.optimizer == "adam" else
           torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay))
    ctx = MethodContext(num_classes=num_classes, input_std=model.input_std, epochs=1, batches_per_epoch=len(batches),
                        examples=examples)
    method = cls(ctx, **params)

    def step(loss, wrt=None):
        opt.zero_grad(set_to_none=True)
        if wrt is not None:
            wrt.grad = None
        loss.backward()
        opt.step()
        return None if wrt is None else wrt.grad.detach()

    torch.manual_seed(cfg.seed)
    passes, seen = 0.0, 0
    start, cpu = time.perf_counter(), time.process_time()
    for x, y, index in batches:   # index: the examples' rows (FGSM-PGI and FGSM-PCO keep a perturbation per row)
        passes += method.train_batch(model, Batch(x, y, cfg.eps, alpha, index), step).passes
        seen += len(y)
    return time.perf_counter() - start, time.process_time() - cpu, passes / seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a run directory of `fastrobust train` (its best.pt and config.yaml)")
    ap.add_argument("methods", nargs="+", help="method specs: 'NAME key=value ...' (alpha=... sets the step)")
    ap.add_argument("--batches", type=int, default=50, help="minibatches per method and round (default 50)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds; the median is shown (default 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--data-dir", default=None, help="the data set's folder (default: the run's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = TrainConfig().update(load_yaml(args.run / "config.yaml"), str(args.run / "config.yaml"))
    data = load_dataset(cfg.dataset, args.data_dir or cfg.data_dir)
    g = torch.Generator().manual_seed(cfg.seed)
    order = torch.randperm(len(data.train), generator=g)[:args.batches * cfg.batch_size]
    batches = [(data.train.x[idx].float().div(255), data.train.y[idx], idx) for idx in order.split(cfg.batch_size)]
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in args.methods}
    for r in range(args.rounds):
        for spec in (args.methods if r % 2 == 0 else args.methods[::-1]):
            results[spec].append(time_method(args.run, cfg, spec, batches, data.info.num_classes,
                                             data.info.alpha / data.info.eps, len(data.train)))
    med = {m: [statistics.median(v[i] for v in rs) for i in range(3)] for m, rs in results.items()}
    ref = med[args.methods[0]]
    print(f"{len(batches)} minibatches of {cfg.batch_size} from {cfg.dataset}, eps {cfg.eps:.4g}, weights of "
          f"{args.run}/best.pt, {torch.get_num_threads()} threads, median of {args.rounds} rounds")
    print("| method | passes/ex | wall s | CPU s | passes / ref | wall / ref | CPU / ref |")
    print("|---|---|---|---|---|---|---|")
    for m, (wall, cpu, passes) in med.items():
        print(f"| {m} | {passes:.2f} | {wall:.1f} | {cpu:.1f} | {passes / ref[2]:.2f} | {wall / ref[0]:.2f} | "
              f"{cpu / ref[1]:.2f} |")


if __name__ == "__main__":
    main()
