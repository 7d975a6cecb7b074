"""The documentation site builds without a warning: `mkdocs build --strict` (broken links and anchors,
API references that do not resolve, docstrings that name parameters the signature lacks all fail)."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDED = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _missing() -> list[str]:
    missing = []
    for name in NEEDED:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing


@pytest.mark.skipif(bool(_missing()), reason=f"the docs tools are not installed ({', '.join(_missing())}): "
                                             f"pip install -e '.[docs]'")
def test_mkdocs_build_strict(tmp_path):
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    output = proc.stdout + proc.stderr
    warnings = [line for line in output.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0 and not warnings, "mkdocs build --strict failed:\n" + "\n".join(warnings or [output[-3000:]])
    for page in ("index.html", "api/index.html", "results/index.html", "contributing/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("fastrobust.fitting.fit", "fastrobust.engine.trainer.train", "fastrobust.engine.checkpoint.load_model",
                 "fastrobust.evaluation.evaluate", "fastrobust.evaluation.evaluate_checkpoint",
                 "fastrobust.config.TrainConfig", "fastrobust.methods.compose.define", "fastrobust.trust"):
        assert f'id="{name}"' in api, f"the API reference lacks {name}"
