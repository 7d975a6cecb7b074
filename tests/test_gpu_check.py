"""benchmarks/gpu_check.sh --dry-run: every part of the GPU check on the CPU (about 100 s here)."""

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
METHODS = ("pgd", "fgsm-rs", "n-fgsm", "free", "trades", "mart", "fat", "gaat", "mdeat")
PARTS = ("options", "overhead", "methods", "syncs", "distributed", "agreement", "autoattack")


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
    results = json.loads((work / "gpu_check.json").read_text())
    assert results["dry_run"] and results["device"] == "cpu" and not results["failed"]
    for part in PARTS:   # every part ran, and said how long it took
        assert re.search(rf"^   \[{part}: \d+\.\d s\]$", out, re.M), part
        assert results["parts"][part]["seconds"] > 0 and results["parts"][part]["estimate_h100_s"] > 0
    assert results["estimate_h100_s"] < 480   # the check's own estimate on one H100
    rows = {(r["part"], r["label"], r["method"]): r for r in results["rows"]}
    options = {label: r for (part, label, _), r in rows.items() if part == "options"}
    assert set(options) == {"fp32-eager", "bf16", "channels_last", "compile(aot_eager)", "stream", "defaults"}
    settings = {label: (r.get("amp"), r.get("channels_last"), r.get("compile"), r.get("stream"))
                for label, r in options.items()}
    assert settings["fp32-eager"] == ("none", False, False, False)   # the baseline, then each option alone
    assert settings["bf16"] == ("bf16", False, False, False)
    assert settings["channels_last"] == ("none", True, False, False)
    assert settings["compile(aot_eager)"] == ("none", False, True, False)
    assert settings["defaults"] == ("none", False, False, False)     # the CPU's defaults: fp32
    assert settings["stream"] == ("none", False, False, True) or "skipped" in options["stream"]
    assert options["fp32-eager"]["vs_baseline"] == 1.0
    assert options["compile(aot_eager)"]["compiles"] > 0 and len(options["compile(aot_eager)"]["epoch_seconds"]) == 2
    for method in METHODS:   # every method family, with its images per second, passes and peak memory
        row = next(r for (part, _, m), r in rows.items() if part == "methods" and m == method)
        summary = json.loads((Path(row["run"]) / "summary.json").read_text())
        assert row["passes_per_image"] == pytest.approx(summary["passes_per_example"])
        assert row["peak_memory_mb"] == summary["peak_memory_mb"] > 0
        assert re.search(rf"^methods\s+\S+\s+{re.escape(method)}\s+\d+\s", out, re.M), method
    mdeat = next(r for (part, _, m), r in rows.items() if part == "methods" and m == "mdeat")
    assert mdeat["passes_per_image"] == pytest.approx(4.0)   # r = 4: a later epoch's strength
    overhead = next(r for (part, *_), r in rows.items() if part == "overhead")
    assert overhead["ratio"] > 0 and overhead["hand_images_per_s"] > 0
    syncs = [r for (part, *_), r in rows.items() if part == "syncs"]
    assert {r["method"] for r in syncs} == {"pgd", "fat", "gaat"}
    assert all(r["max_syncs_per_iteration"] <= r["budget"] for r in syncs)
    assert [r["budget"] for r in syncs if r["method"] != "gaat"] == [0, 0]
    dist = next(r for (part, *_), r in rows.items() if part == "distributed")
    assert dist["world_size"] == 2 and dist["images_per_s"] > 0   # 2 CPU processes (Gloo) in the dry run
    agreement = next(r for (part, *_), r in rows.items() if part == "agreement")
    assert agreement["agree"]
    aa = json.loads((work / "aa-eval.json").read_text())
    assert aa["n"] == 20 and "aa" in aa["attacks"]
    assert re.search(r"^autoattack\s+eval AutoAttack\s+pgd\s+\d+", out, re.M)
    assert re.search(r"^total \d+ s \(estimate on one H100: \d+ s; target 480 s\)", out, re.M)


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


def test_the_cuda_sync_check_counts_each_iteration(tmp_path, monkeypatch):
    """The CUDA part's wiring, on the CPU: set_sync_debug_mode faked to warn once per call of the watched
    code (the loader's minibatch, the method's work), so that every iteration counts 2."""
    import warnings

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    modes = []

    def fake_mode(mode):
        modes.append(mode)
        if mode == "warn":
            warnings.warn("called a synchronizing CUDA operation")

    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", fake_mode)
    args = gpu_check.main.__globals__["argparse"].Namespace(
        dry_run=True, device="cpu", work=str(tmp_path), dataset="mnist-subset", data_dir=None, folder=None,
        train_subset=None, methods=["pgd"])
    check = gpu_check.Check(args)
    check.common.update(model_options={}, batch_size=512)   # mnist-subset: 2048 training images, 4 minibatches
    counts = check._cuda_syncs("pgd")
    # 4 iterations of 2 watched calls, and the loader's last next() (StopIteration: no iteration)
    assert counts == [2, 2, 2, 2] and modes.count("warn") == 9 and modes[-1] == "default"
    assert gpu_check.sync_budget("gaat") == 4 and gpu_check.sync_budget("pgd") == 0
