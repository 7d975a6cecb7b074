"""The shipped imagenet-deat suite: its plan (--dry-run), its per-run configurations for torchrun
(--print-config), and one epoch of each of its runs (ResNet-50, Free-4, M+DEAT) on a tiny generated
image folder, trained the way the suite documents for GPUs: one run with `fastrobust train --config`,
the others and the evaluation by `fastrobust bench`."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from fastrobust.bench import load_suite
from fastrobust.cli import main
from fastrobust.config import TrainConfig, load_yaml


def make_image_folder(root: Path, classes=2, train=8, test=4, size=64, seed=0) -> Path:
    """root/train/<class>/*.png and root/test/<class>/*.png: noise images whose brightness is set by the class."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("test", test)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"   # ImageNet-like class folder names (wnids)
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 100, (size, size, 3)) + c * 120
                Image.fromarray(pixels.astype(np.uint8), "RGB").save(folder / f"{i}.png")
    return root


def test_dry_run_shows_the_papers_imagenet_setting(capsys):
    assert main(["bench", "imagenet-deat", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 runs" in out and "evaluation: clean, pgd10" in out
    assert "free-4 (free: replays 4, start carry)" in out
    assert "mdeat-1.01 (mdeat: gamma 1.01, start carry)" in out and "mdeat-1.1 (mdeat: gamma 1.1, start carry)" in out
    suite = load_suite("imagenet-deat")
    assert suite.reference == "free-4"
    c = suite.common
    assert (c["dataset"], c["model"], c["eps"], c["alpha"]) == ("imagefolder", "resnet50", 4 / 255, 4 / 255)
    assert (c["optimizer"], c["batch_size"], c["epochs"], c["lr_milestones"]) == ("sgd", 256, 23, [8, 16])


def test_print_config_gives_a_train_config_per_run(tmp_path, capsys):
    assert main(["bench", "imagenet-deat", "--print-config", "mdeat-1.1", "--data-dir", "/data/imagenet",
                 "--out", str(tmp_path / "b")]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "mdeat.yaml"
    path.write_text(text)
    cfg = TrainConfig().update(load_yaml(path), str(path))
    assert (cfg.method, cfg.method_params) == ("mdeat", {"gamma": 1.1, "start": "carry"})
    assert (cfg.model, cfg.dataset, cfg.data_dir, cfg.out) == ("resnet50", "imagefolder", "/data/imagenet",
                                                               str(tmp_path / "b" / "mdeat-1.1"))
    assert cfg.eps == pytest.approx(4 / 255) and cfg.amp == "bf16" and cfg.channels_last


@pytest.mark.parametrize("argv,match", [
    (["--print-config", "pgd"], "'pgd' is not a run of suite 'imagenet-deat'; its runs: free-4, mdeat-1.01"),
    (["--print-config", "free-4", "--seeds", "2"], "one seed"),
])
def test_print_config_refuses_bad_input(argv, match, capsys):
    assert main(["bench", "imagenet-deat", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fastrobust: error:") and match in err and "Traceback" not in err


@pytest.mark.slow
def test_one_epoch_of_every_run_on_a_tiny_image_folder(tmp_path, capsys):
    """The suite's recipe (ResNet-50 at full width, its methods, optimiser and eps) shrunk only in size: one
    epoch, a batch of 8, 64x64 images, fp32 on the CPU. free-4 is trained as on GPUs under torchrun
    (--print-config, then train --config); bench adopts it, trains the M+DEAT runs and evaluates all three."""
    data = make_image_folder(tmp_path / "imagenet")
    suite = yaml.safe_load(load_suite("imagenet-deat").text)
    suite["common"].update(epochs=1, batch_size=8, val_size=4, lr_milestones=[0.5], amp="none", val_steps=2,
                           test_steps=2)
    suite["evaluation"]["attacks"] = ["clean", "pgd2"]
    suite_file = tmp_path / "imagenet-tiny.yaml"
    suite_file.write_text(yaml.safe_dump(suite, sort_keys=False))
    out = tmp_path / "bench"

    assert main(["bench", str(suite_file), "--print-config", "free-4", "--data-dir", str(data), "--device", "cpu",
                 "--out", str(out)]) == 0
    config = tmp_path / "free-4.yaml"
    config.write_text(capsys.readouterr().out)
    assert main(["train", "--config", str(config), "--no-progress"]) == 0
    assert (out / "free-4" / "summary.json").is_file()

    assert main(["bench", str(suite_file), "--data-dir", str(data), "--device", "cpu", "--out", str(out),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "[1/3] free-4 (free: replays 4, start carry): trained; evaluating" in printed
    for run, passes in (("free-4", 4.0), ("mdeat-1.01", 1.0), ("mdeat-1.1", 1.0)):
        saved = load_yaml(out / run / "config.yaml")
        assert saved["model"] == "resnet50" and saved["eps"] == pytest.approx(4 / 255)
        summary = json.loads((out / run / "summary.json").read_text())
        assert summary["passes_per_example"] == pytest.approx(passes)
        ev = json.loads((out / run / "eval.json").read_text())
        assert ev["n"] == 8 and set(ev["attacks"]) == {"clean", "pgd2"}
    records = [json.loads(line) for line in (out / "mdeat-1.1" / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1 and records[0]["r"] == 1   # M+DEAT's first epoch replays once
    table = (out / "results.md").read_text()
    assert all(run in table for run in ("free-4", "mdeat-1.01", "mdeat-1.1"))
