"""The parts of benchmarks/gpu_check.sh (which prepares the data and calls this): every question about a GPU
in one run, each part timed, one JSON file of results and a printed table.

    python benchmarks/gpu_check.py --device cuda --dataset imagefolder --data-dir DIR --work DIR [--folder DIR]
    python benchmarks/gpu_check.py --dry-run ...     # every part on the CPU, tiny sizes (CI)

Parts (``--parts`` picks some; all by default):

* ``options``: PGD-AT, one epoch: the fp32 eager baseline (``amp none``, contiguous), then each option alone
  (bf16 autocast; channels_last; ``--compile``; ``--stream``), then the defaults (on CUDA bf16 +
  channels_last); images per second of the last epoch, against the baseline. ``--compile`` runs two epochs:
  its row is the second epoch's (the first compiles), and the first epoch's seconds are in the JSON.
* ``overhead``: ``fastrobust train`` against a hand-written PGD-10 loop on the same device
  (benchmarks/engine_overhead.py --device): the engine's images per second / the loop's.
* ``methods``: one epoch of each method family with the defaults: pgd, fgsm-rs, n-fgsm, free, trades,
  mart, fat, gaat, and mdeat at a later epoch's strength (r = 4 from the start).
* ``syncs``: host-device synchronisations inside a training iteration (the loader's minibatch and the
  method's work with its optimizer step), for pgd, fat and gaat: on CUDA with
  ``torch.cuda.set_sync_debug_mode("warn")`` (each warning counted), on the CPU with the counter of
  tests/test_syncs.py; the most of any iteration after the first (which may hold the epoch's
  once-per-epoch work) against the budget (0; GAAT one per check step), and the first's apart.
* ``distributed``: PGD-AT with 2 processes (torchrun, NCCL) when 2 GPUs are there, against 1 process;
  skipped with a message on one GPU; the dry run runs 2 CPU processes (Gloo).
* ``agreement``: the same fixed-seed fp32 run (PGD-AT, mnist-cnn on the MNIST subset shipped with the
  package) on the CPU and on the device: test accuracies within 3 points agree (the dry run compares the
  CPU with itself).
* ``autoattack``: ``fastrobust eval --attacks aa`` of the baseline PGD-AT model.

Every row has the run's peak memory (summary.json: peak_memory_mb; CUDA max_memory_allocated, or the
process's peak RSS on the CPU: runs in this process share it, so on the CPU it only grows).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
PARTS = ("options", "overhead", "methods", "syncs", "distributed", "agreement", "autoattack")
METHODS = ("pgd", "fgsm-rs", "n-fgsm", "free", "trades", "mart", "fat", "gaat", "mdeat")
METHOD_PARAMS = {"mdeat": {"r_start": 4}}   # M+DEAT at a later epoch's strength (its first epoch is r = 1)
#: seconds each part is expected to take on one H100 (10,000 CIFAR-10 training images per run; printed
#: before the parts run, next to each part's measured time)
ESTIMATE_H100 = {"options": 150, "overhead": 25, "methods": 110, "syncs": 30, "distributed": 40, "agreement": 25,
                 "autoattack": 45}
TARGET_S = 480


def log(line: str = "") -> None:
    print(line, flush=True)


class Check:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.device = "cpu" if self.dry else args.device
        self.work = Path(args.work)
        self.rows, self.parts = [], {}
        data = dict(dataset=args.dataset, data_dir=args.data_dir)
        if self.dry:   # 16 training and 4 test images per class, PreActResNet-18 at width 8, short evaluations
            self.size = dict(val_size=32, test_subset=40, batch_size=32, model_options={"width": 8}, val_steps=2,
                             test_steps=2)
        else:
            self.size = dict(train_subset=args.train_subset, val_size=1000, test_subset=1000, val_steps=10,
                             test_steps=10)
        self.common = dict(**data, **self.size, epochs=1, device=self.device, seed=0)

    # ---- one training run ---------------------------------------------------------------------------------
    def train(self, part: str, label: str, method: str = "pgd", **kw) -> dict:
        from fastrobust.config import TrainConfig
        from fastrobust.engine import train

        out = self.work / "runs" / f"{part}-{label}-{method}".replace("+", "_")
        if out.exists():
            import shutil
            shutil.rmtree(out)
        cfg = TrainConfig(**{**self.common, "method": method, "method_params": dict(METHOD_PARAMS.get(method, {})),
                             **kw, "out": str(out)})
        t = time.perf_counter()
        s = train(cfg, progress=False, echo=lambda line: None)
        wall = time.perf_counter() - t
        import yaml

        resolved = yaml.safe_load((out / "config.yaml").read_text())
        epochs = [json.loads(r)["epoch_seconds"] for r in (out / "metrics.jsonl").read_text().splitlines()]
        row = {"part": part, "label": label, "method": method, "run": str(out),
               "images_per_s": s["train_examples"] / epochs[-1], "passes_per_image": s["passes_per_example"] / len(epochs),
               "epoch_seconds": epochs, "train_seconds": s["train_seconds"], "wall_seconds": wall,
               "peak_memory_mb": s.get("peak_memory_mb"), "test_clean_acc": s["test_clean_acc"],
               "test_robust_acc": s["test_robust_acc"], "amp": resolved["amp"],
               "channels_last": resolved["channels_last"], "compile": resolved["compile"], "stream": resolved["stream"],
               "train_examples": s["train_examples"]}
        self.rows.append(row)
        log(f"   {label:18s} {method:8s} {row['images_per_s']:9.0f} images/s  {row['passes_per_image']:5.2f} passes/image  "
            f"peak {row['peak_memory_mb']} MiB  ({wall:.1f} s)")
        return row

    # ---- the parts ----------------------------------------------------------------------------------------
    def options(self):
        base = self.train("options", "fp32-eager", amp="none", channels_last=False)
        self.train("options", "bf16", amp="bf16", channels_last=False)
        self.train("options", "channels_last", amp="none", channels_last=True)
        from fastrobust.engine import compile as compile_mod
        if self.dry and os.environ.get("FASTROBUST_DRY_COMPILE") != "1":
            # inductor generates C++ on the CPU: minutes per run. The dry run traces the same graphs with
            # aot_eager (dynamo's guards and AOT graphs, no code generation); FASTROBUST_DRY_COMPILE=1: inductor
            compile_mod.BACKEND = "aot_eager"
            label = "compile(aot_eager)"
        else:
            label = "compile"
        before = compile_mod.compile_counts()
        row = self.train("options", label, amp="none", channels_last=False, compile=True, epochs=2)
        after = compile_mod.compile_counts()
        row["compiles"] = after["compiles"] - before["compiles"]
        compile_mod.BACKEND = "inductor"
        if self.args.folder:
            self.train("options", "stream", amp="none", channels_last=False, stream=True)
        else:
            log("   stream: skipped (the streaming loader reads image folders; pass --data with the JPEG copy or "
                "an image folder)")
            self.rows.append({"part": "options", "label": "stream", "method": "pgd", "skipped": "not an image folder"})
        self.train("options", "defaults", amp="auto", channels_last=None)
        for r in self.rows:
            if r["part"] == "options" and "images_per_s" in r:
                r["vs_baseline"] = r["images_per_s"] / base["images_per_s"]

    def overhead(self):
        sys.path.insert(0, str(HERE))
        import engine_overhead

        out = self.work / "overhead.json"
        argv = ["--device", self.device, "--json", str(out)] + \
            (["--steps", "1", "--epochs", "1", "--rounds", "1"] if self.dry else ["--steps", "10", "--epochs", "2", "--rounds", "2"])
        with contextlib.redirect_stdout(sys.stderr):
            engine_overhead.main(argv)
        result = json.loads(out.read_text())
        log(f"   engine / hand-written PGD-{result['steps']} loop on {self.device}: {result['ratio_wall']:.3f} "
            f"(wall), {result['ratio_cpu']:.3f} (CPU seconds)")
        self.rows.append({"part": "overhead", "label": f"engine/hand PGD-{result['steps']}", "method": "pgd",
                          "ratio": result["ratio_wall"], "ratio_cpu": result["ratio_cpu"],
                          "images_per_s": max(result["engine_passes_per_s"]) / (result["steps"] + 1),
                          "hand_images_per_s": max(result["hand_passes_per_s"]) / (result["steps"] + 1)})

    def methods(self):
        for m in self.args.methods:
            self.train("methods", "defaults" if m not in METHOD_PARAMS else "r=4", m, amp="auto", channels_last=None)

    def syncs(self):
        for m in ("pgd", "fat", "gaat"):
            if self.device == "cuda":
                counts = self._cuda_syncs(m)
                how = "torch.cuda.set_sync_debug_mode"
            else:
                counts = self._cpu_syncs(m)
                how = "tests/test_syncs.py's counter"
            # the first iteration of an epoch may hold once-per-epoch work (the loader's permutation): apart
            later = counts[1:] or counts
            worst, allowed = (max(later) if later else 0), sync_budget(m)
            first = counts[0] if counts else 0
            log(f"   {m:8s} syncs per iteration: at most {worst} over iterations 2-{len(counts)} (budget {allowed}), "
                f"{first} in the first ({how})")
            self.rows.append({"part": "syncs", "label": how, "method": m, "max_syncs_per_iteration": worst,
                              "first_iteration_syncs": first, "budget": allowed, "iterations": len(counts),
                              "per_iteration": counts})

    def _cuda_syncs(self, method: str) -> list[int]:
        from fastrobust.config import TrainConfig
        from fastrobust.data import DeviceLoader
        from fastrobust.engine import loop, train

        counts, current = [], []

        def watched(fn):
            def call(*a, **k):
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        return fn(*a, **k)
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                        current.append(sum("synchroniz" in str(w.message) for w in caught))
            return call

        original_batch, original_iter = loop._train_batch, DeviceLoader.__iter__

        def batch(*a, **k):
            out = watched(original_batch)(*a, **k)
            counts.append(sum(current))
            current.clear()
            return out

        def iterate(self):
            it = original_iter(self)
            while True:
                try:
                    yield watched(next)(it)
                except StopIteration:
                    current.clear()
                    return

        loop._train_batch, DeviceLoader.__iter__ = batch, iterate
        try:
            train(TrainConfig(**{**self.common, "method": method, "method_params": dict(METHOD_PARAMS.get(method, {})),
                                 "train_subset": 2048, "val_size": 100, "test_subset": 100, "test_steps": 2,
                                 "out": str(self.work / "runs" / f"syncs-{method}")}), progress=False,
                  echo=lambda line: None)
        finally:
            loop._train_batch, DeviceLoader.__iter__ = original_batch, original_iter
        return counts

    def _cpu_syncs(self, method: str) -> list[int]:
        import pytest

        sys.path.insert(0, str(HERE.parent / "tests"))
        import test_syncs

        with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as mp:
            its, _ = test_syncs.count_syncs(mp, Path(tmp), method, "mnist")
        return [sum(c.values()) for c in its]

    def distributed(self):
        gpus = torch.cuda.device_count() if self.device == "cuda" else 0
        if self.device == "cuda" and gpus < 2:
            log(f"   skipped: {gpus} GPU visible; the 2-process NCCL run needs 2")
            self.rows.append({"part": "distributed", "label": "2 processes", "method": "pgd",
                              "skipped": f"{gpus} GPU"})
            return
        out = self.work / "runs" / "distributed-2proc-pgd"
        if out.exists():
            import shutil
            shutil.rmtree(out)
        flags = ["--method", "pgd", "--epochs", "1", "--device", self.device, "--no-progress", "--out", str(out),
                 "--dataset", self.args.dataset, "--seed", "0"]
        flags += ["--data-dir", self.args.data_dir] if self.args.data_dir else []
        for key, value in self.size.items():
            if key == "model_options":
                flags += [f for k, v in value.items() for f in ("--model-opt", f"{k}={v}")]
            else:
                flags += ["--" + key.replace("_", "-"), str(value)]
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "fastrobust", "train", *flags]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"the 2-process run failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
        s = json.loads((out / "summary.json").read_text())
        epochs = [json.loads(r)["epoch_seconds"] for r in (out / "metrics.jsonl").read_text().splitlines()]
        one = next((r for r in self.rows if r.get("label") == "defaults" and r["method"] == "pgd"), None)
        row = {"part": "distributed", "label": f"2 processes ({'NCCL' if self.device == 'cuda' else 'Gloo'})",
               "method": "pgd", "images_per_s": s["train_examples"] / epochs[-1],
               "passes_per_image": s["passes_per_example"], "peak_memory_mb": s.get("peak_memory_mb"),
               "world_size": s["world_size"], "test_clean_acc": s["test_clean_acc"],
               "test_robust_acc": s["test_robust_acc"]}
        if one:
            row["vs_one_process"] = row["images_per_s"] / one["images_per_s"]
        self.rows.append(row)
        log(f"   2 processes: {row['images_per_s']:.0f} images/s (world size {s['world_size']})"
            + (f", {row['vs_one_process']:.2f}x one process with the defaults" if one else ""))

    def agreement(self):
        from fastrobust.config import TrainConfig
        from fastrobust.engine import train

        common = dict(method="pgd", dataset="mnist-subset", train_subset=1000 if self.dry else 3000, val_size=200,
                      test_subset=500, epochs=2, eps=0.1, seed=0, amp="none", channels_last=False,
                      val_steps=3, test_steps=5, method_params={"steps": 3})
        got = {}
        for where in ("cpu", self.device) if self.device != "cpu" else ("cpu", "cpu again"):
            out = self.work / "runs" / f"agreement-{where.replace(' ', '-')}"
            if out.exists():
                import shutil
                shutil.rmtree(out)
            s = train(TrainConfig(**common, device=where.split()[0], out=str(out)), progress=False,
                      echo=lambda line: None)
            got[where] = (s["test_clean_acc"], s["test_robust_acc"])
        (a, b) = got.values()
        agree = abs(a[0] - b[0]) <= 0.03 and abs(a[1] - b[1]) <= 0.03
        log(f"   fixed seed, fp32: " + ", ".join(f"{w} clean {c:.1%} PGD-5 {r:.1%}" for w, (c, r) in got.items())
            + f": {'agree' if agree else 'DISAGREE'} (within 3 points"
            + ("; fp32 on CUDA with TF32 matmuls and convolutions allowed, fastrobust's setting there)"
               if self.device == "cuda" else ")"))
        self.rows.append({"part": "agreement", "label": " vs ".join(got), "method": "pgd", "accuracies": got,
                          "agree": agree})

    def autoattack(self):
        base = next((r for r in self.rows if r.get("label") == "fp32-eager"), None) or \
            next((r for r in self.rows if "run" in r), None)
        if base is None:
            base = self.train("autoattack", "fp32-eager", amp="none", channels_last=False)
        n = 20 if self.dry else 500
        out = self.work / "aa-eval.json"
        cmd = [sys.executable, "-m", "fastrobust", "eval", base["run"], "--attacks", "aa", "--test-subset", str(n),
               "--device", self.device, "--no-progress", "--out", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        if done.returncode != 0 or not out.is_file():
            raise RuntimeError(f"fastrobust eval failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        e = json.loads(out.read_text())
        log(f"   AutoAttack on {e['n']} test images: {e['n'] / e['seconds']:.0f} images/s ({e['seconds']:.1f} s)")
        self.rows.append({"part": "autoattack", "label": "eval AutoAttack", "method": base["method"],
                          "images_per_s": e["n"] / e["seconds"], "seconds": e["seconds"], "n": e["n"]})


def sync_budget(method: str) -> int:
    """Syncs allowed per iteration (as tests/test_syncs.py): GAAT one per check step of its K - 1 later steps."""
    from fastrobust.methods import get_method

    params = get_method(method).resolve_params(dict(METHOD_PARAMS.get(method, {})))
    return max(params.get("steps", 0) - 1, 0) // params["check_every"] if "check_every" in params else 0


def table(rows: list[dict]) -> str:
    head = ("part", "label", "method", "images/s", "vs base", "passes/img", "peak MiB", "clean %", "robust %", "note")
    lines = []
    for r in rows:
        note = r.get("skipped") and f"skipped: {r['skipped']}" or ""
        if "ratio" in r:
            note = f"engine/hand {r['ratio']:.3f} (CPU s {r['ratio_cpu']:.3f})"
        if "max_syncs_per_iteration" in r:
            note = f"max {r['max_syncs_per_iteration']} syncs/iteration (budget {r['budget']})"
        if "agree" in r:
            note = "agree" if r["agree"] else "DISAGREE"
        if "compiles" in r:
            note = f"{r['compiles']} compiles; epoch 1 {r['epoch_seconds'][0]:.1f} s"
        if "vs_one_process" in r:
            note = f"{r['vs_one_process']:.2f}x one process"
        fmt = lambda key, f: (f.format(r[key]) if r.get(key) is not None else "-")   # noqa: E731
        lines.append((r["part"], r["label"], r["method"], fmt("images_per_s", "{:.0f}"), fmt("vs_baseline", "{:.2f}"),
                      fmt("passes_per_image", "{:.2f}"), fmt("peak_memory_mb", "{:.0f}"),
                      fmt("test_clean_acc", "{:.1%}").rstrip("%"), fmt("test_robust_acc", "{:.1%}").rstrip("%"), note))
    widths = [max(len(x[i]) for x in [head, *lines]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i < 3 or i == 9 else c.rjust(w) for i, (c, w) in enumerate(zip(x, widths)))
                     .rstrip() for x in [head, *lines])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data-dir")
    ap.add_argument("--folder", help="the image folder (enables the streaming loader's row)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--train-subset", type=int, default=10000, help="training images per run on the GPU (default 10000)")
    ap.add_argument("--methods", default=" ".join(METHODS))
    ap.add_argument("--parts", default=" ".join(PARTS))
    ap.add_argument("--json", help="results file (default WORK/gpu_check.json)")
    args = ap.parse_args(argv)
    args.methods, parts = args.methods.split(), args.parts.split()
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; the parts: {', '.join(PARTS)}")
    check = Check(args)
    check.work.mkdir(parents=True, exist_ok=True)
    estimate = sum(ESTIMATE_H100[p] for p in parts)
    log(f"parts: {', '.join(parts)}; estimated on one H100: " + ", ".join(f"{p} {ESTIMATE_H100[p]} s" for p in parts)
        + f": {estimate} s (target {TARGET_S} s)")
    start, failed = time.perf_counter(), []
    for part in parts:
        log(f"== {part}")
        t = time.perf_counter()
        try:
            getattr(check, part)()
        except Exception as exc:   # one part's failure is reported; the others still run
            failed.append(part)
            log(f"   FAILED: {type(exc).__name__}: {exc}")
        check.parts[part] = {"seconds": round(time.perf_counter() - t, 1), "estimate_h100_s": ESTIMATE_H100[part],
                             "failed": part in failed}
        log(f"   [{part}: {check.parts[part]['seconds']:.1f} s]")
    total = time.perf_counter() - start
    where = "DRY RUN on the CPU, not GPU figures" if check.dry else \
        f"{torch.cuda.get_device_name(0) if check.device == 'cuda' else check.device}"
    result = {"device": check.device, "where": where, "dry_run": check.dry, "torch": torch.__version__,
              "parts": check.parts, "total_seconds": round(total, 1), "estimate_h100_s": estimate,
              "target_s": TARGET_S, "rows": check.rows, "failed": failed}
    path = Path(args.json or check.work / "gpu_check.json")
    path.write_text(json.dumps(result, indent=1, default=str))
    log()
    log(f"gpu_check results ({where}):")
    log(table(check.rows))
    log("time per part: " + ", ".join(f"{p} {v['seconds']:.0f} s" for p, v in check.parts.items()))
    log(f"total {total:.0f} s (estimate on one H100: {estimate} s; target {TARGET_S} s) -> {path}")
    if failed:
        log(f"FAILED parts: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
