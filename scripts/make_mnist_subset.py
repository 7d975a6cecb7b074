"""Make the embedded MNIST subset shipped in src/fastrobust/data/embedded/mnist-subset/.

A seeded, class-stratified random pick of 600 training and 100 test images
per class (6,000 and 1,000 in all), kept in their original order and written
as gzipped IDX files (gzip mtime 0, so the output is byte-reproducible).

    PYTHONPATH=src python scripts/make_mnist_subset.py [MNIST_DIR]

MNIST_DIR holds the four standard MNIST files (default: ../shared/datasets/mnist).
"""

import gzip
import sys
from pathlib import Path

import numpy as np

from fastrobust.data import DATASETS
from fastrobust.data.idx import FILES, encode, load_pair

SEED = 0
PER_CLASS = {"train": 600, "t10k": 100}
ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "fastrobust" / "data" / "embedded" / "mnist-subset"


def main() -> None:
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "datasets" / "mnist"
    rng = np.random.default_rng(SEED)
    OUT.mkdir(parents=True, exist_ok=True)
    for (images, labels), prefix in zip((FILES[:2], FILES[2:]), PER_CLASS):
        split = load_pair(src / f"{images}.gz", src / f"{labels}.gz", DATASETS["mnist"])
        y = split.y.numpy()
        pick = np.sort(np.concatenate([rng.choice(np.flatnonzero(y == c), PER_CLASS[prefix], replace=False) for c in range(10)]))
        for name, array in ((images, split.x.numpy()[pick, 0]), (labels, y[pick].astype(np.uint8))):
            (OUT / f"{name}.gz").write_bytes(gzip.compress(encode(array), compresslevel=9, mtime=0))
        print(f"{prefix}: {len(pick)} images")


if __name__ == "__main__":
    main()
