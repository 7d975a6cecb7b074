"""Streaming loader vs in-memory loader: training throughput, and memory against the folder's size.

    OMP_NUM_THREADS=1 python benchmarks/loader_speed.py                       # defaults below
    python benchmarks/loader_speed.py --per-class 100 --steps 3 --rounds 9 --sizes 5000,50000

1. Throughput. PGD-AT (``--steps`` steps) with a width-16 PreActResNet-18 on a CIFAR-10 image
   folder (the JPEG copy, ``../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz``, of which the
   first ``--per-class`` training images of each class are unpacked), trained for ``--epochs``
   with the in-memory ``DeviceLoader`` and with ``--stream`` (a DataLoader with ``--workers``
   worker processes decoding the JPEGs), in alternating order, ``--rounds`` times. Throughput is
   training examples per second of the training loop (the engine's ``train_seconds``: validation,
   test evaluation and checkpoints are outside it). Printed: the median over rounds of
   streaming / in-memory (target >= 0.9 on a 2-core CPU).
2. Memory. The peak resident memory (``ru_maxrss``) of a one-epoch streaming run (``--mem-train``
   training images) on generated image folders of each of ``--sizes`` images, each in a fresh
   process, next to the in-memory path's on the same folders: the streaming path's must not grow
   with the folder's size. The workers' peak is printed separately.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"


def unpack_cifar(archive: Path, dest: Path, per_class: int, test_per_class: int) -> Path:
    """The first ``per_class`` training and ``test_per_class`` test images of each class, as an image folder."""
    marker = dest / f".unpacked-{per_class}-{test_per_class}"
    if marker.exists():
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    wanted = {"train": per_class, "test": test_per_class}
    with tarfile.open(archive, "r:gz") as tar:
        members = [m for m in tar.getmembers() if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg", ".png"))]
        by_folder: dict[tuple[str, str], list] = {}
        for m in members:
            parts = Path(m.name).parts
            split = next((p for p in parts if p in wanted), None)
            if split is None:
                continue
            by_folder.setdefault((split, parts[-2]), []).append(m)
        for (split, cls), found in by_folder.items():
            for m in sorted(found, key=lambda m: m.name)[:wanted[split]]:
                target = dest / split / cls / Path(m.name).name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(m).read())
    marker.touch()
    return dest


def generated_folder(dest: Path, n_train: int, classes: int = 10, test: int = 100, distinct: int = 200) -> Path:
    """An image folder of ``n_train`` 32x32 RGB PNGs (hard links to ``distinct`` generated images)."""
    marker = dest / f".generated-{n_train}"
    if marker.exists():
        return dest
    from PIL import Image

    shutil.rmtree(dest, ignore_errors=True)
    pool = dest / ".pool"
    pool.mkdir(parents=True)
    rng = np.random.default_rng(0)
    sources = []
    for i in range(distinct):
        p = pool / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(p)
        sources.append(p)
    for split, n in (("train", n_train), ("test", test)):
        for i in range(n):
            d = dest / split / f"class{i % classes}"
            if i < classes:
                d.mkdir(parents=True)
            os.link(sources[i % distinct], d / f"{i:06d}.png")
    marker.touch()
    return dest


def train_once(folder: Path, out: Path, stream: bool, args) -> dict:
    from fastrobust.config import TrainConfig
    from fastrobust.engine import train

    cfg = TrainConfig(method="pgd", method_params={"steps": args.steps}, dataset="imagefolder", data_dir=str(folder),
                      model="preact-resnet18", model_options={"width": 16}, epochs=args.epochs,
                      batch_size=args.batch_size, val_size=args.val_size, val_steps=1, test_subset=args.val_size,
                      test_steps=1, stream=stream, workers=args.workers, out=str(out), device="cpu")
    shutil.rmtree(out, ignore_errors=True)
    return train(cfg, progress=False, echo=lambda s: None)


def throughput(args, work: Path) -> None:
    if not ARCHIVE.is_file():
        print(f"throughput: skipped ({ARCHIVE} not found)")
        return
    folder = unpack_cifar(ARCHIVE, work / "cifar10-jpeg-part", args.per_class, max(args.val_size // 10 + 1, 10))
    n_train = 10 * args.per_class - args.val_size
    # warm-up: the in-memory path decodes the folder once and caches it (outside the timed loop anyway)
    train_once(folder, work / "warm", False, argparse.Namespace(**{**vars(args), "epochs": 1}))
    ratios, rows = [], []
    for r in range(args.rounds):
        rates = {}
        for stream in ((False, True) if r % 2 == 0 else (True, False)):
            out = work / f"run-{r}-{'stream' if stream else 'memory'}"
            s = train_once(folder, out, stream, args)
            rates[stream] = n_train * args.epochs / s["train_seconds"]
            rows.append((r, "stream" if stream else "memory", s["train_seconds"], rates[stream],
                         s["passes_per_example"]))
        ratios.append(rates[True] / rates[False])
    print(f"throughput: PGD-{args.steps} AT, PreActResNet-18 width 16, CIFAR-10 (JPEG copy) {n_train} training "
          f"images, batch {args.batch_size}, {args.epochs} epoch(s), streaming with {args.workers} worker(s), "
          f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')}")
    for r, kind, secs, rate, passes in rows:
        print(f"  round {r}: {kind:6s} {secs:7.2f} s training loop, {rate:7.1f} images/s, {passes:.1f} passes/example")
    print(f"streaming / in-memory throughput: {statistics.median(ratios):.3f} (median of {args.rounds} rounds: "
          f"{', '.join(f'{x:.3f}' for x in ratios)}; target >= 0.9)")


_RSS_CHILD = """
import json, resource, sys
from fastrobust.config import TrainConfig
from fastrobust.engine import train
folder, out, stream, n, workers = sys.argv[1], sys.argv[2], sys.argv[3] == "1", int(sys.argv[4]), int(sys.argv[5])
cfg = TrainConfig(method="pgd", method_params={"steps": 1}, dataset="imagefolder", data_dir=folder,
                  model="preact-resnet18", model_options={"width": 16}, epochs=1, batch_size=64, train_subset=n,
                  val_size=64, val_steps=1, test_subset=64, test_steps=1, stream=stream, workers=workers, out=out,
                  device="cpu")
train(cfg, progress=False, echo=lambda s: None)
print(json.dumps({"self": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                  "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def memory(args, work: Path) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    results = {}
    for n in sizes:
        folder = generated_folder(work / f"generated-{n}", n)
        for stream in (True, False) if args.memory_path else (True,):
            out = work / f"rss-{n}-{'stream' if stream else 'memory'}"
            shutil.rmtree(out, ignore_errors=True)
            p = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(folder), str(out), "1" if stream else "0",
                                str(args.mem_train), str(args.workers)], capture_output=True, text=True, env=env)
            if p.returncode:
                raise SystemExit(f"memory run failed:\n{p.stderr[-3000:]}")
            rss = json.loads(p.stdout.strip().splitlines()[-1])
            results[(n, stream)] = rss
            print(f"peak RSS, {'streaming' if stream else 'in-memory'} run on {n:,} images "
                  f"({args.mem_train} trained): {rss['self'] / 1024:.0f} MiB"
                  + (f" (workers: {rss['children'] / 1024:.0f} MiB each at most)" if stream else ""))
    if len(sizes) >= 2:
        small, large = sizes[0], sizes[-1]
        a, b = results[(small, True)]["self"], results[(large, True)]["self"]
        print(f"streaming peak RSS, {large:,} / {small:,} images: {b / a:.3f} ({(b - a) / 1024:+.1f} MiB)")
        if args.memory_path:
            a, b = results[(small, False)]["self"], results[(large, False)]["self"]
            print(f"in-memory peak RSS, {large:,} / {small:,} images: {b / a:.3f} ({(b - a) / 1024:+.1f} MiB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-class", type=int, default=40, help="CIFAR training images unpacked per class (default 40)")
    ap.add_argument("--val-size", type=int, default=50, help="validation (and test) images (default 50)")
    ap.add_argument("--steps", type=int, default=3, help="PGD steps of PGD-AT (default 3)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; the median ratio is printed (default 5)")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers of the streaming path (default 1)")
    ap.add_argument("--sizes", default="5000,50000", help="generated folder sizes for the memory check")
    ap.add_argument("--mem-train", type=int, default=256, help="images trained in each memory run (default 256)")
    ap.add_argument("--no-memory-path", dest="memory_path", action="store_false",
                    help="measure only the streaming path's memory")
    ap.add_argument("--skip", choices=["throughput", "memory"], action="append", default=[])
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "fastrobust-loader-speed",
                    help="where the folders are unpacked/generated (kept for reruns)")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    if "throughput" not in args.skip:
        throughput(args, args.work)
    if "memory" not in args.skip:
        memory(args, args.work)


if __name__ == "__main__":
    main()
