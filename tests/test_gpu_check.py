"""benchmarks/gpu_check.sh --dry-run: the GPU readiness check's steps on the CPU (about 45 s here)."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import SHARED

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
ARCHIVE = SHARED / "datasets" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
METHODS = ("pgd", "mdeat", "gaat", "free")


def run_script(*args, cwd=ROOT, timeout=600):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def cifar_like_folder(root: Path) -> Path:
    """A small CIFAR-10-shaped image folder (10 classes of 32x32 JPEGs), for when ../shared is absent."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("test", 4)):
        for c in range(10):
            (root / split / f"class{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 120, (32, 32, 3)) + 12 * c
                Image.fromarray(pixels.astype(np.uint8)).save(root / split / f"class{c}" / f"{i:04d}.jpg")
    return root


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_dry_run(tmp_path):
    work = tmp_path / "work"
    data = [] if ARCHIVE.is_file() else ["--data", str(cifar_like_folder(tmp_path / "cifar"))]
    result = run_script("--dry-run", "--work", str(work), *data)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "DRY RUN on the CPU" in out and "128 training images per epoch" in out
    for method in METHODS:   # one row per method: images per second and passes per image from its summary.json
        row = re.search(rf"^bf16\+channels-last\s+{method}\s+(\d+)\s+(\d+\.\d\d)\s+(\d+\.\d)$", out, re.M)
        assert row, f"no result row for {method} in:\n{out}"
        summary = json.loads((work / "runs" / f"bf16+channels-last-{method}" / "summary.json").read_text())
        assert int(row[1]) == round(128 / summary["train_seconds"])
        assert float(row[2]) == pytest.approx(summary["passes_per_example"], abs=0.005)
        config = (work / "runs" / f"bf16+channels-last-{method}" / "config.yaml").read_text()
        assert "amp: bf16" in config and "channels_last: true" in config and "device: cpu" in config
    assert re.search(r"^\+compile\s+\(skipped in the dry run\)", out, re.M)
    stream = re.search(r"^\+stream\s+(.*)$", out, re.M)
    assert stream and ("skipped" in stream[1] or re.match(r"pgd\s+\d+", stream[1]))
    aa = json.loads((work / "aa-eval.json").read_text())
    assert aa["n"] == 20 and "aa" in aa["attacks"]
    assert re.search(r"^eval AutoAttack\s+pgd\s+\d+\s+-\s+\d+\.\d$", out, re.M)
    assert re.search(r"^total \d+ s \(target on one H100/H200: 480 s; ratio \d+\.\d\d\)$", out, re.M)


@pytest.mark.slow
def test_gpu_check_refuses_bad_input_and_a_machine_without_cuda(tmp_path):
    bad = run_script("--bogus")
    assert bad.returncode == 2 and "unknown argument --bogus" in bad.stderr
    missing = run_script("--data", str(tmp_path / "nothing"))
    assert missing.returncode == 2 and f"no CIFAR-10 at {tmp_path / 'nothing'}" in missing.stderr
    try:
        import torch
        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if not has_cuda:   # checked before the data is read
        no_gpu = run_script("--data", str(tmp_path), "--work", str(tmp_path / "w"))
        assert no_gpu.returncode == 2 and "no CUDA GPU" in no_gpu.stderr and "--dry-run" in no_gpu.stderr
