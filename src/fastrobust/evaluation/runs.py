"""Evaluating a training run or a checkpoint on its data set's test split (``fastrobust eval``)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import numbers
from pathlib import Path

from ..config import recipe_ratio
from .. import trust
from ..errors import ConfigError, FastrobustError
from ..runfolder import RunFolder
from .core import check_count, check_norm, evaluate
from .specs import parse_attacks


def output_path(path: str | Path, out: str | Path | None = None) -> Path:
    """Where :func:`evaluate_checkpoint` writes: ``out``, else ``RUN_DIR/eval.json`` for a run
    directory, else ``NAME.eval.json`` next to a checkpoint file ``NAME.pt``."""
    if out is not None:
        return Path(out)
    path = Path(path)
    return RunFolder(path).eval if path.is_dir() else path.with_name(path.stem + ".eval.json")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (identifies the checkpoint an eval.json belongs to)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _locate(path: Path) -> tuple[Path, Path | None]:
    """(checkpoint file, run directory or None)."""
    if not path.exists():
        raise FastrobustError(f"{path} does not exist: give a run directory written by `fastrobust train --out DIR` "
                              "or a fastrobust .pt checkpoint")
    if path.is_dir():
        if not RunFolder(path).best.is_file():
            raise FastrobustError(f"{path} holds no best.pt: is it a run directory of `fastrobust train`? (A run "
                                  "stopped before its first epoch ended has no checkpoint yet.)")
        return RunFolder(path).best, path
    return path, None


def _run_config(payload: dict, run_dir: Path | None, dataset: str | None = None) -> dict:
    from ..config import load_yaml
    from ..fitting import DATA_REF

    config = dict(payload.get("config") or {})
    if run_dir is not None and RunFolder(run_dir).config.is_file():
        config.update(load_yaml(RunFolder(run_dir).config))
    if dataset:
        config.update(dataset=dataset, data_dir=None, test_subset=None, stream=False)
    elif config.get("dataset") == DATA_REF:
        raise FastrobustError("this run was trained with fastrobust.fit on data given from Python, which is not "
                              "stored with the run: name its test data with --dataset NAME_or_package.module:factory "
                              "(and --data-dir DIR), or in Python evaluate_checkpoint(run, dataset=...)")
    if not config.get("dataset"):
        raise FastrobustError("the checkpoint names no data set in its configuration; evaluate its model with "
                              "fastrobust.evaluation.evaluate(fastrobust.load_model(path), x, y, eps=...) instead")
    return config


def evaluate_checkpoint(
    path: str | Path,
    *,
    attacks=("clean", "pgd20"),
    eps=None,
    norm: str | None = None,
    test_subset: int | None = None,
    batch_size: int = 500,
    device=None,
    data_dir: str | None = None,
    out: str | Path | None = None,
    progress: bool | None = None,
    seed: int = 0,
    cascade: bool = True,
    dataset: str | None = None,
    trust_code: bool = False,
) -> dict:
    """Evaluate a run directory (its ``best.pt``) or a fastrobust checkpoint on the test split of
    the data set it was trained on, and write the result as JSON (see :func:`output_path`).

    ``norm`` and ``eps`` default to the run's (give ``eps`` for a norm other than the run's).
    ``test_subset=N`` takes the same N test images as ``fastrobust train --test-subset N``
    (seeded by the run's seed); by default the run's own test split is used. PGD steps follow
    the data set's recipe (2/255 on CIFAR/SVHN, 0.01 on MNIST, or 2.5 eps/K for few steps).
    ``dataset`` (with ``data_dir``): evaluate on this data set's test split instead of the run's (a run of
    :func:`fastrobust.fit`, whose data is not stored, needs it). ``trust_code``: import the model or data
    factory (``package.module:callable``) the folder names, which runs its code (see :mod:`fastrobust.trust`).
    A run folder is evaluated under its lock (refused while training writes there).
    Returns the dict of :func:`fastrobust.evaluation.evaluate` with ``checkpoint``, ``checkpoint_sha256``,
    ``dataset``, ``test_subset``, ``model``, ``method`` and ``epoch`` added.
    """
    from ..engine.checkpoint import folder_of, load_checkpoint
    from ..engine.lock import RunLock

    names = parse_attacks(attacks)          # refuse bad input before loading anything
    if norm is not None:
        norm = check_norm(norm)
    check_count("batch_size", batch_size)
    if test_subset is not None and (isinstance(test_subset, bool) or not isinstance(test_subset, numbers.Integral)
                                    or test_subset < 1):
        raise ConfigError(f"test_subset must be an integer >= 1 (or unset for the run's test split), got {test_subset!r}")
    checkpoint, run_dir = _locate(Path(path))
    lock = RunLock(run_dir, "fastrobust eval") if run_dir is not None else contextlib.nullcontext()
    with lock:   # training replaces best.pt and writes the folder: one writer at a time
        payload = load_checkpoint(checkpoint)
        digest = file_sha256(checkpoint)
        config = _run_config(payload, run_dir, dataset)
        folder = folder_of(checkpoint)
        trust.require({"data set factory": config["dataset"], "model factory": payload["model_spec"]["name"]},
                      folder, trust_code, given=[dataset] if dataset else [])
        with trust.reading(folder, trust_code, given=[dataset] if dataset else []):
            return _evaluate_run(path, checkpoint, payload, digest, config, names, eps, norm, test_subset, batch_size,
                                 device, data_dir, out, progress, seed, cascade)


def _evaluate_run(path, checkpoint, payload, digest, config, names, eps, norm, test_subset, batch_size, device,
                  data_dir, out, progress, seed, cascade) -> dict:
    from ..data import Split, load_dataset, take_subset
    from ..engine.checkpoint import atomic_write_text, check_writable, model_from_checkpoint
    from ..engine.device import pick_device

    run_norm = config.get("norm", "linf")
    norm = norm or run_norm
    if eps is None:
        if norm != run_norm:
            raise ConfigError(f"give --eps for norm {norm}: the run's eps ({config.get('eps')}) is an "
                              f"{'L2' if run_norm == 'l2' else 'L-inf'} radius")
        eps = config.get("eps")
    target = output_path(path, out)
    check_writable(target)   # before any attack runs
    dev = pick_device("auto" if device is None else str(device))
    # a streamed run's data is opened without decoding its training images; the test images are read
    stream = bool(config.get("stream"))
    data = load_dataset(config["dataset"], data_dir or config.get("data_dir"), stream=stream)
    subset = test_subset if test_subset is not None else config.get("test_subset")
    test = take_subset(data.test, subset, seed=int(config.get("seed", 0)))
    if stream:
        test = Split(test.x[:], test.y)
    try:
        model = model_from_checkpoint(payload, dev)
    except (KeyError, RuntimeError) as exc:
        raise FastrobustError(f"{checkpoint}: the model in the checkpoint cannot be rebuilt ({type(exc).__name__}: "
                              f"{exc}); the file is damaged or from an incompatible fastrobust") from None
    result = evaluate(model, test.x, test.y, attacks=names, eps=eps, norm=norm, batch_size=batch_size, device=dev,
                      seed=seed, progress=progress, alpha_ratio=recipe_ratio(norm, data.info) or None, cascade=cascade)
    result = {"checkpoint": str(checkpoint), "checkpoint_sha256": digest, "dataset": config["dataset"], "test_subset": subset,
              "model": config.get("model"), "method": config.get("method"), "epoch": payload.get("epoch"), **result}
    atomic_write_text(target, json.dumps(result, indent=2) + "\n")
    return result


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"   # None: no example left to measure


def format_report(result: dict) -> str:
    """The result as a Markdown table, the worst case and the flags, for the terminal."""
    head = ["attack", "accuracy %", "measured on", "newly fooled", "worst case %", "seconds"]
    rows = [[name, _pct(a["accuracy"]), str(a["n_measured"]), str(a["n_fooled"]), _pct(a["worst_case_accuracy"]),
             f"{a['seconds']:.1f}"] for name, a in result["attacks"].items()]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    norm = "L-inf" if result["norm"] == "linf" else "L2"
    where = f"{result['dataset']} test, " if result.get("dataset") else ""
    lines = [f"{where}{result['n']} images, {norm} eps {result['eps']:.4g}",
             line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows), ""]
    robust = ("the model is broken (non-finite logits): no accuracy is reported" if result.get("broken") else
              "no attack was run" if result["robust_accuracy"] is None else
              f"robust accuracy (per-example worst case over every attack) {_pct(result['robust_accuracy'])}%")
    lines.append(f"{result['n']} images: clean accuracy {_pct(result['clean_accuracy'])}%, {robust}")
    lines.append("accuracy: on the examples no earlier attack had fooled (clean errors count as errors); "
                 "attacks run cheapest first" + ("" if result.get("cascade", True) else "; every attack on every example"))
    for f in result["flags"]:
        lines.append(f"WARNING ({f['check']}): {f['message']}")
    return "\n".join(lines)
