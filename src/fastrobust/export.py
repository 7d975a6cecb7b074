"""``fastrobust export``: a trained model as ``model.safetensors`` + ``config.json``.

The weights are the bare network's (the module the model factory returned,
without fastrobust's normalisation wrapper), so plain torch + safetensors can
load them into the architecture; ``config.json`` says how to build it, what
input it takes (shape, [0, 1] range, the normalisation to apply), the threat
model it was trained for, and its measured accuracies, with a ``model_info``
block shaped like RobustBench's model cards. :func:`fastrobust.load_model`
loads such a folder back.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path

from .engine.checkpoint import (EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_WEIGHTS, atomic_write_bytes, atomic_write_text,
                                load_checkpoint, require_safetensors)
from .errors import ConfigError, FastrobustError
from . import trust
from .evaluation.runs import file_sha256
from .factories import is_factory_ref, resolve
from .runfolder import BEST, EVAL, SUMMARY, RunFolder

FORMATS = ("safetensors",)


def export_run(run: str | Path, fmt: str = "safetensors", out: str | Path | None = None,
               trust_code: bool = False) -> Path:
    """Write ``model.safetensors`` and ``config.json`` for a run directory (its ``best.pt``) or a
    checkpoint into ``out`` (default ``RUN/export``); returns the folder.

    A model built by a ``package.module:factory`` is exported only when that code is trusted
    (``trust_code``, see :mod:`fastrobust.trust`): its signature is read to record how to call it."""
    if fmt not in FORMATS:
        raise ConfigError(f"export format {fmt!r} is not supported; choose one of {', '.join(FORMATS)}")
    save = require_safetensors().save
    run = Path(run)
    if not run.exists():
        raise FastrobustError(f"{run} does not exist: give a run directory of `fastrobust train` or a checkpoint")
    ckpt = RunFolder(run).best if run.is_dir() else run
    run_dir = run if run.is_dir() else run.parent
    payload = load_checkpoint(ckpt)
    spec, state = payload["model_spec"], payload["model"]
    trust.require({"model factory": spec["name"]}, run_dir, trust_code)
    weights = {k[len("net."):]: v.detach().cpu().clone().contiguous() for k, v in state.items() if k.startswith("net.")}
    if not weights:
        raise FastrobustError(f"{ckpt}: the checkpoint holds no network weights (net.*); is it damaged?")
    config = export_config(payload, run_dir, ckpt)
    target = Path(out) if out is not None else run_dir / "export"
    blob = save(weights, metadata={"format": "pt", "producer": "fastrobust", "model": spec["name"]})
    atomic_write_bytes(target / EXPORT_WEIGHTS, blob)
    atomic_write_text(target / EXPORT_CONFIG, json.dumps(config, indent=2) + "\n")
    trust.remember(target, [spec["name"]])   # exported by the user who trusts the run
    return target


def _kwargs(spec: dict) -> dict | None:
    """The keyword arguments the run's model factory was called with (None when it cannot be imported here)."""
    if not is_factory_ref(spec["name"]):
        return None
    try:
        params = inspect.signature(resolve(spec["name"], "--model")).parameters
    except (FastrobustError, TypeError, ValueError):
        return None
    provided = {"num_classes": spec["num_classes"], "in_channels": spec["in_channels"],
                "image_size": list(spec["image_size"])}
    return {**{k: v for k, v in provided.items() if k in params and k not in spec["options"]}, **spec["options"]}


def _same_checkpoint(evaluation: dict, ckpt: Path, epoch) -> bool:
    """Whether an eval.json was written for the checkpoint file ``ckpt`` (by its hash; by the epoch for an
    eval.json without one)."""
    if evaluation.get("checkpoint_sha256"):
        return evaluation["checkpoint_sha256"] == file_sha256(ckpt)
    return evaluation.get("epoch") == epoch


def _accuracies(run_dir: Path, ckpt: Path, epoch) -> dict:
    """Clean, robust and AutoAttack accuracy of the exported checkpoint: from eval.json (when it evaluated
    this checkpoint), else the training run's final test evaluation in summary.json."""
    result: dict = {}
    summary_path, eval_path = RunFolder(run_dir).summary, RunFolder(run_dir).eval
    if summary_path.is_file() and ckpt.name == BEST:
        s = json.loads(summary_path.read_text())
        result = {"clean_acc": s.get("test_clean_acc"), "robust_acc": s.get("test_robust_acc"),
                  "robust_attack": s.get("test_attack"), "n": s.get("test_examples"), "eps": s.get("eps"),
                  "norm": "linf", "source": SUMMARY}
    if eval_path.is_file():
        e = json.loads(eval_path.read_text())
        if Path(e.get("checkpoint", "")).name == ckpt.name and not _same_checkpoint(e, ckpt, epoch):
            result["note"] = (f"{eval_path} evaluated another {ckpt.name} (epoch {e.get('epoch')}, this one is of "
                              f"epoch {epoch}): its figures are not used; run `fastrobust eval {run_dir}` again")
        elif Path(e.get("checkpoint", "")).name == ckpt.name:
            attacks = e.get("attacks", {})
            aa = attacks.get("aa")
            result = {"clean_acc": e.get("clean_accuracy"), "robust_acc": e.get("robust_accuracy"),
                      "robust_attack": "worst case over " + ", ".join(a for a in e.get("order", []) if a != "clean"),
                      "n": e.get("n"), "eps": e.get("eps"), "norm": e.get("norm"), "source": EVAL}
            if aa is not None:
                # cascaded: AutoAttack ran on the examples earlier attacks left, so this is the worst case
                # over those attacks and AutoAttack (at most AutoAttack's own accuracy)
                result["autoattack_acc"] = aa["worst_case_accuracy"] if e.get("cascade", True) else aa["accuracy"]
    return result


def _eps_text(eps) -> str | None:
    if eps is None:
        return None
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) > 0 else f"{eps:g}"


def _pct(v) -> str | None:
    return None if v is None else f"{100 * v:.2f}"


def export_config(payload: dict, run_dir: Path, ckpt: Path) -> dict:
    spec = payload["model_spec"]
    train_cfg = payload.get("config") or {}
    acc = _accuracies(run_dir, ckpt, payload.get("epoch"))
    eps = acc.get("eps", train_cfg.get("eps"))
    norm = {"linf": "Linf", "l2": "L2"}.get(acc.get("norm", "linf"), "Linf")
    from . import __version__

    return {
        "format": EXPORT_FORMAT, "format_version": 1, "fastrobust_version": __version__,
        "model": {"name": spec["name"], "options": spec["options"], "kwargs": _kwargs(spec),
                  "num_classes": spec["num_classes"], "in_channels": spec["in_channels"],
                  "image_size": list(spec["image_size"])},
        "input": {"shape": [spec["in_channels"], *spec["image_size"]], "range": [0.0, 1.0],
                  "mean": list(spec["mean"]), "std": list(spec["std"]),
                  "note": "logits = net((x - mean) / std) for x: float images (N, C, H, W) in [0, 1]"},
        "threat_model": norm, "eps": eps,
        "training": {k: train_cfg.get(k) for k in ("method", "method_params", "dataset", "epochs", "eps", "alpha",
                                                    "seed")} | {"epoch": payload.get("epoch"),
                                                                "checkpoint": str(ckpt)},
        "accuracy": acc,
        "model_info": {   # the fields of a RobustBench model card; link/name/authors/venue/reported are yours to fill
            "link": "", "name": "", "authors": "", "additional_data": False, "number_forward_passes": 1,
            "dataset": train_cfg.get("dataset"), "venue": "", "architecture": spec["name"], "eps": _eps_text(eps),
            "clean_acc": _pct(acc.get("clean_acc")), "reported": "", "autoattack_acc": _pct(acc.get("autoattack_acc")),
        },
    }


def load_instructions(folder: Path, config: dict) -> str:
    """How to load the exported model with plain torch + safetensors (printed by ``fastrobust export``)."""
    model = config["model"]
    if is_factory_ref(model["name"]):
        module, attr = model["name"].split(":", 1)
        kwargs = model["kwargs"] if model["kwargs"] is not None else model["options"]
        call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        build = (f"# the run's model factory: this imports and calls {model['name']} (read it first if the\n"
                 f"# folder came from someone else)\n"
                 f"from {module} import {attr.split('.')[0]}\n"
                 f"net = {attr}({call})")
    else:
        build = (f"import fastrobust.models  # the built-in architecture {model['name']!r}\n"
                 f"net = fastrobust.models.create_model({model['name']!r}, num_classes={model['num_classes']}, "
                 f"in_channels={model['in_channels']}, image_size={tuple(model['image_size'])}, "
                 f"**{model['options']!r}).net")
    return (f"load it with plain torch + safetensors:\n\n"
            f"import json, torch\n"
            f"from safetensors.torch import load_file\n"
            f"{build}\n"
            f"net.load_state_dict(load_file({str(folder / EXPORT_WEIGHTS)!r}))\n"
            f"cfg = json.load(open({str(folder / EXPORT_CONFIG)!r}))\n"
            f"mean = torch.tensor(cfg['input']['mean']).view(1, -1, 1, 1)\n"
            f"std = torch.tensor(cfg['input']['std']).view(1, -1, 1, 1)\n"
            f"logits = net.eval()((x - mean) / std)   # x: float images (N, C, H, W) in [0, 1]\n\n"
            f"or with fastrobust: fastrobust.load_model({str(folder)!r})")
